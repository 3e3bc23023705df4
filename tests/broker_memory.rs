//! The broker conformance suite (`tests/conformance`) against the embedded
//! [`MemoryBroker`], one fresh broker per case.

mod conformance;

use std::sync::Arc;

use event_router::broker::{Broker, MemoryBroker};

async fn memory_broker() -> Arc<dyn Broker> {
    Arc::new(MemoryBroker::default())
}

conformance::broker_conformance_tests!(memory_broker);
