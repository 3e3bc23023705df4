//! A real `event-router` process for end-to-end tests (owned by the CLI work).
