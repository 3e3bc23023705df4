//! Event stream ops of a session: `append`, `read_stream` and
//! `subscribe_stream` (see [`crate::broker::event_stream`]).
//! The checks are shared with HTTP in [`crate::server::event_streams`].

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    ApiError, ClientFrame, Dialect, Outgoing, Reply, RequestId, ServerFrame, Session,
    SubscriptionHandle, SubscriptionTag, spawn_until,
};
use crate::broker::event_stream::follow;
use crate::broker::{SharedBroker, StreamRead};
use crate::server::event_streams as streams;

/// Entries a follower reads from the broker at once.
const FOLLOW_PAGE: usize = 100;

impl Session {
    /// Handles an `append`, `read_stream` or `subscribe_stream` frame.
    pub(super) async fn handle_event_stream(&mut self, frame: ClientFrame) {
        let (id, result): (RequestId, Result<Reply, ApiError>) = match frame {
            ClientFrame::Append {
                id,
                stream,
                event,
                expected_version,
            } => {
                let appended =
                    streams::append(&self.router, &self.access, &stream, event, expected_version)
                        .await;
                (id, appended.map(Reply::Appended))
            }
            ClientFrame::ReadStream {
                id,
                stream,
                from_version,
                limit,
            } => {
                let read = StreamRead {
                    from_version,
                    limit,
                };
                let page = streams::read(&self.router, &self.access, &stream, read).await;
                (id, page.map(Reply::StreamRead))
            }
            ClientFrame::SubscribeStream {
                id,
                stream,
                from_version,
            } => match self.subscribe_stream(id.clone(), stream, from_version) {
                // The follower sends the `ok` itself, before any entry.
                Ok(()) => return,
                Err(e) => (id, Err(e)),
            },
            other => (
                other.id().clone(),
                Err(ApiError::bad_request(
                    "bad_request",
                    "not an event stream op",
                )),
            ),
        };
        self.reply(&id, result).await;
    }

    /// Follows `stream` from `from_version`: the `ok` reply to `id` (with
    /// the `subscription_id`), then `stream_event` frames for every entry
    /// from there on, in version order, until `unsubscribe`.
    ///
    /// # Errors
    /// `invalid_stream`, `forbidden`, `too_many_subscriptions`; nothing was
    /// sent then.
    pub fn subscribe_stream(
        &mut self,
        id: RequestId,
        stream: String,
        from_version: u64,
    ) -> Result<(), ApiError> {
        streams::check_read(&self.access, &stream)?;
        if self.subscriptions.len() >= self.config.max_subscriptions {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!(
                    "this connection already holds {} subscriptions, the limit",
                    self.config.max_subscriptions
                ),
            ));
        }
        let tag = Arc::new(SubscriptionTag {
            id: uuid::Uuid::new_v4().simple().to_string(),
            dialect: Dialect::V2,
            group: None,
        });
        let stop = CancellationToken::new();
        let ok = ServerFrame::ok(
            &id,
            &Reply::Subscribed {
                subscription_id: tag.id.clone(),
            },
        );
        let task = forward_stream(
            self.router.broker().clone(),
            (stream, from_version),
            ok,
            tag.clone(),
            self.out.clone(),
        );
        spawn_until(stop.clone(), task);
        self.subscriptions.insert(
            tag.id.clone(),
            SubscriptionHandle {
                tag: tag.clone(),
                patterns: (0, 0),
                // Not a topic subscription: not in the subscribers list.
                _listed: None,
                _stop: stop.drop_guard(),
            },
        );
        Ok(())
    }
}

/// Sends the `ok` reply, then the stream's entries as `stream_event` frames; waits for room in
/// the connection's queue (memory stays bounded by it), and ends the
/// subscription with an error frame when the broker fails.
async fn forward_stream(
    broker: SharedBroker,
    (stream, from_version): (String, u64),
    ok: String,
    tag: Arc<SubscriptionTag>,
    out: mpsc::Sender<Outgoing>,
) {
    if out.send(Outgoing::Reply(ok)).await.is_err() {
        return;
    }
    let result = follow(broker, &stream, from_version, FOLLOW_PAGE, |entry| {
        let text = ServerFrame::StreamEvent {
            subscription_id: &tag.id,
            stream: &stream,
            version: entry.version,
            event: &entry.event,
        }
        .to_text();
        let out = out.clone();
        async move { out.send(Outgoing::Reply(text)).await.is_ok() }
    })
    .await;
    if let Err(e) = result {
        let _ = out
            .send(Outgoing::Ended {
                subscription: tag,
                error: Some(e.into()),
            })
            .await;
    }
}
