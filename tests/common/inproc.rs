//! In-process router for tests (owned by the server work).
