//! PLACEHOLDER — the embedded in-memory broker is being written.

/// Configuration of the in-memory broker.
#[derive(Debug, Clone, Default)]
pub struct MemoryBrokerConfig {}

/// The embedded broker.
#[derive(Debug, Default)]
pub struct MemoryBroker {}
