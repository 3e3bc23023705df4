//! What a subscription selects: topic patterns plus an optional content filter.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;
use crate::filter::{Filter, FilterError};
use crate::topic::{Pattern, TopicError};

/// Why a selector was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectorError {
    /// No topic pattern was given.
    #[error("at least one topic pattern is required")]
    NoTopics,
    /// A pattern is malformed.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The filter does not compile.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

impl SelectorError {
    /// Stable snake_case code for client-facing errors.
    pub fn code(&self) -> &'static str {
        match self {
            SelectorError::NoTopics | SelectorError::Topic(_) => "invalid_pattern",
            SelectorError::Filter(_) => "invalid_filter",
        }
    }
}

/// Topic patterns (any may match) and a filter (must also match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selector {
    topics: Vec<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filter: Option<Filter>,
}

impl Selector {
    /// A selector from parsed parts.
    ///
    /// # Errors
    /// [`SelectorError::NoTopics`] when `topics` is empty.
    pub fn new(topics: Vec<Pattern>, filter: Option<Filter>) -> Result<Selector, SelectorError> {
        if topics.is_empty() {
            return Err(SelectorError::NoTopics);
        }
        Ok(Selector { topics, filter })
    }

    /// Parses pattern strings (`pattern:`-prefixed for regexes) and a JSON filter.
    ///
    /// # Errors
    /// A [`SelectorError`] naming the bad pattern or filter path.
    pub fn parse<S: AsRef<str>>(
        topics: &[S],
        filter: Option<&Value>,
    ) -> Result<Selector, SelectorError> {
        let topics = topics
            .iter()
            .map(|t| Pattern::parse(t.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let filter = match filter {
            None | Some(Value::Null) => None,
            Some(source) => Some(Filter::compile(source)?),
        };
        Selector::new(topics, filter)
    }

    /// Every event (`#`, no filter).
    pub fn all() -> Selector {
        Selector {
            topics: vec![Pattern::Glob("#".into())],
            filter: None,
        }
    }

    /// The topic patterns.
    pub fn patterns(&self) -> &[Pattern] {
        &self.topics
    }

    /// The filter, if any.
    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_ref()
    }

    /// Whether `event` matches a pattern and the filter. Brokers with many
    /// subscriptions match patterns through a [`crate::topic::TopicTrie`] and
    /// then call [`Selector::matches_filter`].
    pub fn matches(&self, event: &Event) -> bool {
        self.topics.iter().any(|p| p.matches(&event.topic)) && self.matches_filter(event)
    }

    /// Whether `event` passes the filter (true without one).
    pub fn matches_filter(&self, event: &Event) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(event))
    }
}
