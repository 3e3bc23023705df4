//! A competing consumer of one memory-broker group.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::Shared;
use super::group::{Group, Take};
use crate::broker::{BrokerError, ConsumerHandle, Result};
use crate::event::Delivery;

/// The memory broker's [`ConsumerHandle`]. Dropping it returns its in-flight
/// deliveries to the group.
pub(super) struct MemoryConsumer {
    shared: Arc<Shared>,
    group: Arc<Group>,
    id: u64,
    name: String,
}

impl MemoryConsumer {
    /// A handle for consumer `id`, already registered with `group`.
    pub(super) fn new(shared: Arc<Shared>, group: Arc<Group>, id: u64, name: String) -> Self {
        MemoryConsumer {
            shared,
            group,
            id,
            name,
        }
    }
}

#[async_trait]
impl ConsumerHandle for MemoryConsumer {
    /// # Cancel safety
    /// Cancel safe: deliveries are taken under the group lock in the same
    /// poll that returns them.
    async fn next(&mut self) -> Result<Vec<Delivery>> {
        loop {
            // Registered before looking, so a wake-up between the look and
            // the wait is not lost.
            let notified = self.group.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.is_closed() {
                return Err(BrokerError::Closed);
            }
            let ids = &self.shared.next_id;
            match self.group.try_take(self.id, ids, Instant::now())? {
                Take::Deliveries(deliveries) => return Ok(deliveries),
                Take::Wait(Some(at)) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                Take::Wait(None) => notified.await,
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        self.group.release_consumer(self.id);
    }
}
