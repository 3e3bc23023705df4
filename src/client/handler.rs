//! Handler tasks: run a function for every delivery of a subscription and
//! settle the delivery by its result ([`Client::on`](super::Client::on),
//! [`Client::respond`](super::Client::respond)).

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::Client;
use super::subscription::{Received, SettleKind, Subscription};
use crate::event::Event;

/// The header a responder sets on its reply when its handler failed; the
/// requester's [`Client::request`](super::Client::request) turns such a
/// reply into [`ClientError::Server`](super::ClientError::Server) with code
/// [`HANDLER_ERROR_CODE`].
pub const ERROR_HEADER: &str = "error";
/// The error code of a reply whose responder failed.
pub const HANDLER_ERROR_CODE: &str = "handler_error";

/// A running handler (see [`Client::on`](super::Client::on)).
///
/// Dropping it leaves the handler running (like a [`JoinHandle`]); it stops
/// on [`HandlerTask::stop`], when its subscription ends, or when the client
/// is closed.
#[derive(Debug)]
pub struct HandlerTask {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl HandlerTask {
    /// Stops taking deliveries and aborts handlers still running; their
    /// deliveries are not settled, so durable ones are redelivered.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether the handler has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the handler has stopped.
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "handler task failed");
        }
    }
}

/// Runs `handler` on each delivery of `subscription`, at most
/// `concurrency` at once; `Ok` acks, `Err` nacks with `nack_delay`.
pub(crate) fn spawn<F, Fut, E>(
    mut subscription: Subscription,
    handler: F,
    concurrency: usize,
    nack_delay: Option<Duration>,
) -> HandlerTask
where
    F: Fn(Received) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let handler = Arc::new(handler);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut running = JoinSet::new();
        let concurrency = concurrency.max(1);
        loop {
            while running.len() >= concurrency {
                reap(running.join_next().await);
            }
            let received = tokio::select! {
                biased;
                () = token.cancelled() => return,
                received = subscription.recv() => match received {
                    Some(r) => r,
                    None => break,
                },
            };
            let handler = handler.clone();
            running.spawn(async move {
                let settle = received.settle_handle();
                let kind = match handler(received).await {
                    Ok(()) => SettleKind::Ack,
                    Err(e) => SettleKind::nack(nack_delay, Some(e.to_string())),
                };
                if let Err(e) = settle.settle(kind).await {
                    tracing::debug!(error = %e, "settling a delivery failed");
                }
            });
        }
        while let Some(result) = running.join_next().await {
            reap(Some(result));
        }
    });
    HandlerTask { stop, task }
}

fn reap(result: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = result {
        tracing::error!(error = %e, "a handler panicked; its delivery was not settled");
    }
}

/// Wraps a request handler: replies on the request's `reply_to` with the
/// same correlation id. A request without `reply_to` is acked and skipped.
pub(crate) fn responder<F, Fut, E>(
    client: Client,
    handler: F,
) -> impl Fn(Received) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
+ Send
+ Sync
+ 'static
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, E>> + Send + 'static,
    E: Display + Send + 'static,
{
    let handler = Arc::new(handler);
    move |received: Received| {
        let client = client.clone();
        let handler = handler.clone();
        Box::pin(async move {
            let request = received.event;
            let Some(reply_to) = request.reply_to.clone() else {
                tracing::debug!(id = %request.id, "request without reply_to; nothing to answer");
                return Ok(());
            };
            let correlation = request
                .correlation_id
                .clone()
                .unwrap_or_else(|| request.id.clone());
            let request_id = request.id.clone();
            let outcome = handler(request).await;
            let mut reply = Event::new(reply_to, Value::Null).map_err(|e| e.to_string())?;
            match outcome {
                Ok(payload) => reply.payload = payload,
                Err(e) => {
                    reply.headers.insert(ERROR_HEADER.into(), e.to_string());
                }
            }
            reply.correlation_id = Some(correlation);
            reply.causation_id = Some(request_id);
            client
                .publish_with(reply)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }
}
