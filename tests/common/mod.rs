//! Shared helpers for integration tests. Each test binary uses some of them.
#![allow(dead_code)]

pub mod client;
pub mod inproc;
pub mod process;
pub mod redis;
