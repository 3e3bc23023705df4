//! One subscription pattern: a glob over segments or a regular expression.

use std::fmt;

use regex::Regex;

use super::{TopicError, check_segments};

/// Longest accepted regex source, in bytes; keeps compiled automata small.
const MAX_REGEX_BYTES: usize = 1024;

/// Compiled-size limit handed to the regex crate.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// A compiled topic pattern.
#[derive(Clone)]
pub enum Pattern {
    /// Dot-separated segments where `*` matches one segment and `#` zero or more.
    Glob(String),
    /// A regular expression matched against the whole topic string (linear time).
    Regex(Regex),
}

impl Pattern {
    /// Parses a glob pattern such as `task.*` or `agent.#`.
    ///
    /// A string of the form `pattern:REGEX` is parsed as [`Pattern::regex`]
    /// (a colon can never appear in a topic, so the prefix is unambiguous).
    ///
    /// # Errors
    /// A [`TopicError`] naming the pattern and what is wrong with it.
    pub fn parse(text: &str) -> Result<Pattern, TopicError> {
        if let Some(re) = text.strip_prefix("pattern:") {
            return Pattern::regex(re);
        }
        check_segments(text, true)?;
        Ok(Pattern::Glob(text.to_string()))
    }

    /// Compiles a regular expression pattern. It is unanchored unless the
    /// source anchors it, as with the regex crate's `is_match`.
    ///
    /// # Errors
    /// [`TopicError::Regex`] when it does not compile or is too large.
    pub fn regex(source: &str) -> Result<Pattern, TopicError> {
        let fail = |reason: String| TopicError::Regex {
            pattern: source.to_string(),
            reason,
        };
        if source.is_empty() {
            return Err(fail("must not be empty".into()));
        }
        if source.len() > MAX_REGEX_BYTES {
            return Err(fail(format!("longer than {MAX_REGEX_BYTES} bytes")));
        }
        regex::RegexBuilder::new(source)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(Pattern::Regex)
            .map_err(|e| fail(e.to_string()))
    }

    /// Whether `topic` matches. Prefer [`super::TopicTrie`] for many patterns.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Glob(glob) => glob_matches(glob.split('.'), topic.split('.')),
            Pattern::Regex(re) => re.is_match(topic),
        }
    }

    /// The pattern as written (`pattern:`-prefixed for regexes).
    pub fn to_source(&self) -> String {
        match self {
            Pattern::Glob(glob) => glob.clone(),
            Pattern::Regex(re) => format!("pattern:{}", re.as_str()),
        }
    }

    /// Whether this pattern is a glob that matches only one literal topic.
    pub fn is_literal(&self) -> bool {
        matches!(self, Pattern::Glob(g) if !g.split('.').any(|s| s == "*" || s == "#"))
    }
}

fn glob_matches<'a>(
    mut pattern: impl Iterator<Item = &'a str> + Clone,
    mut topic: impl Iterator<Item = &'a str> + Clone,
) -> bool {
    loop {
        match pattern.next() {
            None => return topic.next().is_none(),
            Some("#") => {
                // `#` absorbs zero or more segments: try every split point.
                let mut rest = topic.clone();
                loop {
                    if glob_matches(pattern.clone(), rest.clone()) {
                        return true;
                    }
                    if rest.next().is_none() {
                        return false;
                    }
                }
            }
            Some(seg) => match topic.next() {
                Some(t) if seg == "*" || seg == t => {}
                _ => return false,
            },
        }
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.to_source() == other.to_source()
    }
}

impl Eq for Pattern {}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({})", self.to_source())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_source())
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_source())
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Pattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        assert!(m("task.*", "task.created"));
        assert!(!m("task.*", "task"));
        assert!(!m("task.*", "task.a.b"));
        assert!(m("*.failed", "agent.failed"));
        assert!(m("a.*.c", "a.b.c"));
    }

    #[test]
    fn hash_matches_zero_or_more_segments() {
        assert!(m("task.#", "task"));
        assert!(m("task.#", "task.a"));
        assert!(m("task.#", "task.a.b.c"));
        assert!(m("#", "anything.at.all"));
        assert!(m("#.failed", "failed"));
        assert!(m("#.failed", "a.b.failed"));
        assert!(!m("#.failed", "a.failed.b"));
        assert!(m("a.#.z", "a.z"));
        assert!(m("a.#.z", "a.b.c.z"));
        assert!(m("#.#", "a"));
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        assert!(m("task.created", "task.created"));
        assert!(!m("task.created", "task.created.x"));
        assert!(Pattern::parse("a.b").unwrap().is_literal());
        assert!(!Pattern::parse("a.*").unwrap().is_literal());
    }

    #[test]
    fn regex_patterns() {
        let p = Pattern::parse("pattern:^agent\\.[0-9]+\\.failed$").unwrap();
        assert!(p.matches("agent.42.failed"));
        assert!(!p.matches("agent.x.failed"));
        assert_eq!(p.to_source(), "pattern:^agent\\.[0-9]+\\.failed$");
        let err = Pattern::regex("(unclosed").unwrap_err();
        assert!(err.to_string().contains("(unclosed"), "{err}");
    }

    #[test]
    fn rejects_partial_wildcards() {
        assert!(matches!(
            Pattern::parse("task*"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(matches!(
            Pattern::parse("a.#b"),
            Err(TopicError::Wildcard(_))
        ));
        assert!(Pattern::parse("").is_err());
    }
}
