//! [`InstrumentedBroker`]: any [`Broker`] with spans and metrics on the
//! store, deliver, ack and nack steps.
//!
//! The router wraps its broker in one, so every transport and every broker
//! implementation is measured the same way without either knowing.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use jiff::Timestamp;

use super::metrics::metrics;
use super::trace::{self, InFlightSpans};
use crate::broker::{
    AppendOptions, Appended, Broker, BrokerStats, Capabilities, ConsumeOptions, Consumer,
    ConsumerHandle, DeadLetter, DeadLetterQuery, DeadLetterSelection, GroupSpec, HistoryEntry,
    HistoryQuery, LiveStream, LiveSubscription, NackOptions, PublishOptions, Published, Result,
    SharedBroker, StreamPage, StreamRead, SubscriptionInfo,
};
use crate::event::{Delivery, Event};

/// A broker wrapper that records spans and metrics, delegating everything.
pub struct InstrumentedBroker {
    inner: SharedBroker,
    in_flight: Arc<InFlightSpans>,
}

impl std::fmt::Debug for InstrumentedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedBroker").finish_non_exhaustive()
    }
}

impl InstrumentedBroker {
    /// Wraps `inner`.
    pub fn wrap(inner: SharedBroker) -> SharedBroker {
        Arc::new(InstrumentedBroker {
            inner,
            in_flight: Arc::default(),
        })
    }
}

/// Seconds from the event's `time` to now, when not negative.
fn since(event: &Event) -> Option<f64> {
    let elapsed = Timestamp::now().duration_since(event.time);
    let seconds = elapsed.as_secs_f64();
    (seconds >= 0.0).then_some(seconds)
}

struct InstrumentedConsumer {
    inner: Consumer,
    /// Where delivery spans wait for their acks, unless the consumer keeps
    /// them itself (`ConsumeOptions::acks_carry_trace`).
    in_flight: Option<Arc<InFlightSpans>>,
}

#[async_trait]
impl ConsumerHandle for InstrumentedConsumer {
    async fn next(&mut self) -> Result<Vec<Delivery>> {
        let mut deliveries = self.inner.next().await?;
        let m = metrics();
        for d in &mut deliveries {
            let span =
                trace::deliver_span(&d.subscription, &d.delivery_id, d.attempt, &mut d.event);
            m.delivered(&d.subscription, d.attempt, since(&d.event));
            if let Some(in_flight) = &self.in_flight {
                in_flight.insert(&d.subscription, &d.delivery_id, &span);
            }
        }
        Ok(deliveries)
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

#[async_trait]
impl Broker for InstrumentedBroker {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn publish(&self, event: Event, options: PublishOptions) -> Result<Published> {
        let started = Instant::now();
        let result = trace::store_span(1)
            .scope(self.inner.publish(event, options))
            .await;
        if result.is_ok() {
            let m = metrics();
            m.published(1);
            m.publish_duration(started);
        }
        result
    }

    async fn publish_batch(
        &self,
        events: Vec<Event>,
        options: PublishOptions,
    ) -> Result<Vec<Published>> {
        let started = Instant::now();
        let events_len = events.len();
        let result = trace::store_span(events_len)
            .scope(self.inner.publish_batch(events, options))
            .await;
        if let Ok(published) = &result {
            let m = metrics();
            m.published(published.len() as u64);
            m.publish_duration(started);
        }
        result
    }

    async fn subscribe_live(&self, subscription: LiveSubscription) -> Result<LiveStream> {
        self.inner.subscribe_live(subscription).await
    }

    async fn ensure_subscription(&self, spec: GroupSpec) -> Result<()> {
        self.inner.ensure_subscription(spec).await
    }

    async fn delete_subscription(&self, name: &str) -> Result<bool> {
        self.inner.delete_subscription(name).await
    }

    async fn subscription(&self, name: &str) -> Result<SubscriptionInfo> {
        self.inner.subscription(name).await
    }

    async fn subscriptions(&self) -> Result<Vec<SubscriptionInfo>> {
        self.inner.subscriptions().await
    }

    async fn consume(&self, subscription: &str, options: ConsumeOptions) -> Result<Consumer> {
        let in_flight = (!options.acks_carry_trace).then(|| self.in_flight.clone());
        let inner = self.inner.consume(subscription, options).await?;
        Ok(Consumer::new(Box::new(InstrumentedConsumer {
            inner,
            in_flight,
        })))
    }

    async fn ack(&self, subscription: &str, delivery_id: &str) -> Result<()> {
        let parent =
            trace::settling().unwrap_or_else(|| self.in_flight.take(subscription, delivery_id));
        let span = trace::ack_span(subscription, delivery_id, parent);
        let result = span.scope(self.inner.ack(subscription, delivery_id)).await;
        if result.is_ok() {
            metrics().acked(subscription);
        }
        result
    }

    async fn nack(
        &self,
        subscription: &str,
        delivery_id: &str,
        options: NackOptions,
    ) -> Result<()> {
        let parent =
            trace::settling().unwrap_or_else(|| self.in_flight.take(subscription, delivery_id));
        let span = trace::nack_span(subscription, delivery_id, options.reason.as_deref(), parent);
        let result = span
            .scope(self.inner.nack(subscription, delivery_id, options))
            .await;
        if result.is_ok() {
            metrics().nacked(subscription);
        }
        result
    }

    async fn dead_letters(
        &self,
        subscription: &str,
        query: DeadLetterQuery,
    ) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(subscription, query).await
    }

    async fn redrive(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64> {
        trace::redrive_span(subscription)
            .scope(self.inner.redrive(subscription, selection))
            .await
    }

    async fn purge(&self, subscription: &str, selection: DeadLetterSelection) -> Result<u64> {
        self.inner.purge(subscription, selection).await
    }

    async fn history(&self, query: HistoryQuery) -> Result<Vec<HistoryEntry>> {
        self.inner.history(query).await
    }

    async fn replay(&self, subscription: &str, query: HistoryQuery) -> Result<u64> {
        self.inner.replay(subscription, query).await
    }

    async fn purge_history(&self, purge: crate::broker::HistoryPurge) -> Result<u64> {
        self.inner.purge_history(purge).await
    }

    async fn append(&self, stream: &str, event: Event, options: AppendOptions) -> Result<Appended> {
        self.inner.append(stream, event, options).await
    }

    async fn read_stream(&self, stream: &str, read: StreamRead) -> Result<StreamPage> {
        self.inner.read_stream(stream, read).await
    }

    async fn wait_stream(
        &self,
        stream: &str,
        after_version: u64,
        timeout: std::time::Duration,
    ) -> Result<u64> {
        self.inner.wait_stream(stream, after_version, timeout).await
    }

    async fn stats(&self) -> Result<BrokerStats> {
        self.inner.stats().await
    }

    fn discarded(&self) -> crate::broker::Discarded {
        self.inner.discarded()
    }

    async fn ready(&self) -> bool {
        self.inner.ready().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
