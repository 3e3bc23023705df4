//! Tracing overhead benchmark (placeholder; filled in by the observability work).
fn main() {}
