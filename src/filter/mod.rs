//! Content filters (DESIGN §3): a Mongo-style language compiled once per
//! subscription and evaluated against each candidate event.
//!
//! PLACEHOLDER API — being implemented in parse.rs / eval.rs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;

/// Why a filter was rejected; names the path and operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    /// Placeholder.
    #[error("invalid filter at {path}: {reason}")]
    Invalid {
        /// Field path.
        path: String,
        /// Reason.
        reason: String,
    },
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct Filter {
    source: Value,
}

impl Filter {
    /// Compiles a JSON filter document.
    pub fn compile(source: &Value) -> Result<Filter, FilterError> {
        Ok(Filter {
            source: source.clone(),
        })
    }

    /// Parses `field:op:value` shorthand.
    pub fn parse_shorthand(text: &str) -> Result<Filter, FilterError> {
        Err(FilterError::Invalid {
            path: text.into(),
            reason: "not yet".into(),
        })
    }

    /// Whether `event` passes.
    pub fn matches(&self, _event: &Event) -> bool {
        true
    }

    /// The JSON document this filter was compiled from.
    pub fn source(&self) -> &Value {
        &self.source
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Filter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.source.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Filter::compile(&v).map_err(serde::de::Error::custom)
    }
}
