//! The in-process transport: the same client API straight over a
//! [`Router`] and its broker, without a socket.
//!
//! Calls go to the router; each subscription runs a forwarding task from
//! the broker's live stream or durable consumer into the subscription's
//! [`Inbox`], and acks go to the broker. There is no connection to lose, so
//! nothing here reconnects; `publish_nowait` events go through one task
//! that publishes them in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::error::{ClientError, Result};
use super::subscription::{AckPath, Inbox, Received};
use super::{Config, SubscribeSpec};
use crate::broker::{
    BrokerError, ConsumeOptions, Consumer, GroupSpec, LiveItem, LiveStream, LiveSubscription,
};
use crate::event::Event;
use crate::router::Router;
use crate::selector::Selector;

/// An item for the `publish_nowait` task.
enum Nowait {
    Event(Box<Event>, OwnedSemaphorePermit),
    Flush(oneshot::Sender<()>),
}

/// See the module docs.
pub(crate) struct InProcess {
    router: Arc<Router>,
    config: Arc<Config>,
    nowait: mpsc::UnboundedSender<Nowait>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").finish_non_exhaustive()
    }
}

fn broker_error(e: BrokerError) -> ClientError {
    ClientError::server(e.kind(), e.to_string())
}

impl InProcess {
    /// The router calls go to.
    pub(crate) fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Starts the `publish_nowait` task; must run inside a Tokio runtime.
    pub(crate) fn new(
        router: Arc<Router>,
        config: Arc<Config>,
        shutdown: CancellationToken,
    ) -> Self {
        let (nowait, queue) = mpsc::unbounded_channel();
        tokio::spawn(publish_in_order(router.clone(), queue, shutdown.clone()));
        InProcess {
            router,
            config,
            nowait,
            shutdown,
        }
    }

    pub(crate) async fn publish(&self, event: Event) -> Result<String> {
        let receipt = self
            .router
            .publish(event)
            .await
            .map_err(|e| ClientError::from(e).into_publish())?;
        Ok(receipt.event_id().to_string())
    }

    pub(crate) async fn publish_batch(
        &self,
        events: Vec<Event>,
        atomic: bool,
    ) -> Result<Vec<String>> {
        let receipts = self
            .router
            .publish_batch(events, atomic)
            .await
            .map_err(|e| ClientError::from(e).into_publish())?;
        Ok(receipts.iter().map(|r| r.event_id().to_string()).collect())
    }

    pub(crate) fn publish_nowait(&self, event: Event, permit: OwnedSemaphorePermit) -> Result<()> {
        self.nowait
            .send(Nowait::Event(Box::new(event), permit))
            .map_err(|_| ClientError::Closed)
    }

    pub(crate) async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.nowait
            .send(Nowait::Flush(tx))
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    pub(crate) async fn request(&self, event: Event, timeout: Duration) -> Result<Event> {
        Ok(self.router.request(event, timeout).await?)
    }

    /// Opens the subscription and starts forwarding into `inbox`; returns
    /// the server-style subscription id and the token that stops it.
    pub(crate) async fn subscribe(
        &self,
        spec: &SubscribeSpec,
        selector: Selector,
        inbox: Arc<Inbox>,
    ) -> Result<(String, CancellationToken)> {
        let stop = self.shutdown.child_token();
        let broker = self.router.broker();
        let Some(group) = &spec.group else {
            let stream = broker
                .subscribe_live(LiveSubscription {
                    selector,
                    capacity: self.config.queue_capacity,
                    max_bytes: crate::broker::DEFAULT_LIVE_QUEUE_MAX_BYTES,
                })
                .await
                .map_err(broker_error)?;
            let id = uuid::Uuid::new_v4().simple().to_string();
            tokio::spawn(forward_live(stream, id.clone(), inbox, stop.clone()));
            return Ok((id, stop));
        };
        if let Err(BrokerError::UnknownSubscription(_)) = broker.subscription(group).await {
            let spec = GroupSpec::new(group.clone(), selector);
            spec.validate().map_err(broker_error)?;
            broker
                .ensure_subscription(spec)
                .await
                .map_err(broker_error)?;
        }
        let options = ConsumeOptions {
            max_in_flight: spec
                .max_in_flight
                .unwrap_or(ConsumeOptions::default().max_in_flight),
            ..ConsumeOptions::default()
        };
        let consumer = broker.consume(group, options).await.map_err(broker_error)?;
        let path = Forward {
            broker: broker.clone(),
            group: group.clone(),
            inbox,
        };
        tokio::spawn(forward_durable(consumer, path, stop.clone()));
        Ok((group.clone(), stop))
    }
}

async fn publish_in_order(
    router: Arc<Router>,
    mut queue: mpsc::UnboundedReceiver<Nowait>,
    shutdown: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            item = queue.recv() => item,
        };
        match item {
            None => return,
            Some(Nowait::Flush(done)) => {
                let _ = done.send(());
            }
            Some(Nowait::Event(event, _permit)) => {
                if let Err(e) = router.publish(*event).await {
                    tracing::warn!(error = %e, "a publish_nowait event was rejected");
                }
            }
        }
    }
}

async fn forward_live(
    mut stream: LiveStream,
    id: String,
    inbox: Arc<Inbox>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            item = stream.recv() => item,
        };
        match item {
            Some(LiveItem::Event(event)) => {
                let event = Arc::unwrap_or_clone(event);
                let delivery_id = event.id.clone();
                let received =
                    Received::new(event, 1, delivery_id, id.clone(), AckPath::Live, &inbox);
                inbox.push(received);
            }
            Some(LiveItem::Overflow { dropped }) => inbox.overflowed(dropped),
            None => break,
        }
    }
    inbox.end(None);
}

struct Forward {
    broker: crate::broker::SharedBroker,
    group: String,
    inbox: Arc<Inbox>,
}

async fn forward_durable(mut consumer: Consumer, to: Forward, stop: CancellationToken) {
    let error = loop {
        let next = tokio::select! {
            biased;
            () = stop.cancelled() => break None,
            next = consumer.next() => next,
        };
        match next {
            Ok(deliveries) => {
                for d in deliveries {
                    let path = AckPath::InProcess {
                        broker: to.broker.clone(),
                        group: to.group.clone(),
                    };
                    let received = Received::new(
                        d.event,
                        d.attempt,
                        d.delivery_id,
                        to.group.clone(),
                        path,
                        &to.inbox,
                    );
                    to.inbox.push(received);
                }
            }
            Err(BrokerError::Closed) => break None,
            Err(e) => break Some(broker_error(e)),
        }
    };
    // Dropping the consumer returns its un-acked deliveries to the group.
    drop(consumer);
    to.inbox.end(error);
}
