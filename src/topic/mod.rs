//! Topics and topic patterns (DESIGN §3).
//!
//! A topic is dot-separated segments of `[A-Za-z0-9_-]+`, at most 255 bytes.
//! A [`Pattern`] is either a glob, where `*` matches exactly one segment and
//! `#` zero or more (RabbitMQ semantics), or a regular expression. A
//! [`TopicTrie`] indexes many patterns so that matching a topic costs time
//! proportional to its depth, not to the number of patterns.

mod pattern;
mod trie;

pub use pattern::Pattern;
pub use trie::TopicTrie;

/// Longest accepted topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;

/// Why a topic or pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The topic or pattern is the empty string.
    #[error("topic must not be empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_BYTES`].
    #[error("{0:?} is longer than {MAX_TOPIC_BYTES} bytes")]
    TooLong(String),
    /// A segment is empty (`a..b`, leading or trailing dot).
    #[error("{0:?} has an empty segment")]
    EmptySegment(String),
    /// A segment holds a character outside `[A-Za-z0-9_-]`.
    #[error("{topic:?} has invalid character {ch:?} (segments are [A-Za-z0-9_-]+)")]
    InvalidChar {
        /// The whole topic or pattern.
        topic: String,
        /// The first offending character.
        ch: char,
    },
    /// A wildcard appears inside a segment (`ab*`) or in a topic.
    #[error("{0:?}: wildcards `*` and `#` must stand alone as a whole segment of a pattern")]
    Wildcard(String),
    /// A regex pattern failed to compile.
    #[error("invalid regex pattern {pattern:?}: {reason}")]
    Regex {
        /// The regex source.
        pattern: String,
        /// The compiler's message.
        reason: String,
    },
}

/// Checks that `topic` is a concrete topic (no wildcards).
///
/// # Errors
/// A [`TopicError`] naming the topic and the problem.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    check_segments(topic, false)
}

/// Checks segments; with `wildcards`, lone `*` and `#` segments are allowed.
fn check_segments(text: &str, wildcards: bool) -> Result<(), TopicError> {
    if text.is_empty() {
        return Err(TopicError::Empty);
    }
    if text.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(truncated(text)));
    }
    for segment in text.split('.') {
        if segment.is_empty() {
            return Err(TopicError::EmptySegment(text.to_string()));
        }
        if segment == "*" || segment == "#" {
            if wildcards {
                continue;
            }
            return Err(TopicError::Wildcard(text.to_string()));
        }
        if let Some(ch) = segment.chars().find(|c| !is_segment_char(*c)) {
            if ch == '*' || ch == '#' {
                return Err(TopicError::Wildcard(text.to_string()));
            }
            return Err(TopicError::InvalidChar {
                topic: text.to_string(),
                ch,
            });
        }
    }
    Ok(())
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn truncated(text: &str) -> String {
    let mut end = 64.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_topics() {
        for t in ["a", "task.created", "agent-1.failed_hard", "A.B.C.D"] {
            validate_topic(t).unwrap();
        }
    }

    #[test]
    fn rejects_malformed_topics_with_reasons() {
        assert_eq!(validate_topic(""), Err(TopicError::Empty));
        assert!(matches!(
            validate_topic("a..b"),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_topic(".a"),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_topic("a."),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_topic("a b"),
            Err(TopicError::InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(
            validate_topic("a.*"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            validate_topic(&"a".repeat(256)),
            Err(TopicError::TooLong(_))
        ));
        assert!(matches!(
            validate_topic("tâche"),
            Err(TopicError::InvalidChar { ch: 'â', .. })
        ));
    }
}
