//! A segment trie of patterns: the routing index shared by both brokers.

use std::collections::HashMap;

use regex::RegexSet;

use super::Pattern;

/// Hasher for segment lookups: fast on short keys, seeded per process.
type SegmentMap<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Compiled-size limit of the combined regex set; past it, regexes are
/// matched one by one instead.
const REGEX_SET_SIZE_LIMIT: usize = 8 * 1024 * 1024;

/// Maps patterns to keys (subscription ids) and finds every key whose pattern
/// matches a topic.
///
/// Glob patterns live in a trie keyed by segment, with separate edges for `*`
/// and `#`, so a lookup visits only the branches that the topic's segments
/// select: its cost grows with topic depth (and `#` fan-out), not with the
/// number of patterns. Regex patterns cannot be indexed by segment; they are
/// compiled together into one [`RegexSet`] (rebuilt when one is added or
/// removed), so a topic is matched against all of them in a single pass.
#[derive(Debug)]
pub struct TopicTrie<K> {
    root: Node<K>,
    regexes: Vec<(Pattern, K)>,
    regex_set: Option<RegexSet>,
    len: usize,
}

#[derive(Debug)]
struct Node<K> {
    literal: SegmentMap<Node<K>>,
    star: Option<Box<Node<K>>>,
    hash: Option<Box<Node<K>>>,
    keys: Vec<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            literal: SegmentMap::default(),
            star: None,
            hash: None,
            keys: Vec::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

impl<K> Default for TopicTrie<K> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            regexes: Vec::new(),
            regex_set: None,
            len: 0,
        }
    }
}

impl<K: Clone + Ord> TopicTrie<K> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key` under `pattern`. The same pair may be inserted twice; it
    /// must then be removed twice.
    pub fn insert(&mut self, pattern: &Pattern, key: K) {
        self.len += 1;
        match pattern {
            Pattern::Regex(_) => {
                self.regexes.push((pattern.clone(), key));
                self.rebuild_regex_set();
            }
            Pattern::Glob(glob) => {
                let mut node = &mut self.root;
                for segment in glob.split('.') {
                    node = match segment {
                        "*" => node.star.get_or_insert_with(Box::default),
                        "#" => node.hash.get_or_insert_with(Box::default),
                        lit => node.literal.entry(lit.into()).or_default(),
                    };
                }
                node.keys.push(key);
            }
        }
    }

    /// Removes one `(pattern, key)` entry; returns whether it was present.
    /// Empty branches are pruned so churn does not grow memory.
    pub fn remove(&mut self, pattern: &Pattern, key: &K) -> bool {
        let removed = match pattern {
            Pattern::Regex(_) => {
                let found = self
                    .regexes
                    .iter()
                    .position(|(p, k)| p == pattern && k == key);
                let removed = found.map(|i| self.regexes.remove(i)).is_some();
                if removed {
                    self.rebuild_regex_set();
                }
                removed
            }
            Pattern::Glob(glob) => {
                let segments: Vec<&str> = glob.split('.').collect();
                remove_in(&mut self.root, &segments, key)
            }
        };
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Appends every key whose pattern matches `topic` to `out`, each once,
    /// in ascending order.
    pub fn matches_into(&self, topic: &str, out: &mut Vec<K>) {
        let start = out.len();
        collect(&self.root, Some(topic), out);
        match &self.regex_set {
            Some(set) => out.extend(set.matches(topic).iter().map(|i| self.regexes[i].1.clone())),
            None => out.extend(
                self.regexes
                    .iter()
                    .filter(|(p, _)| p.matches(topic))
                    .map(|(_, k)| k.clone()),
            ),
        }
        if out.len() - start > 1 {
            out[start..].sort_unstable();
            dedup_tail(out, start);
        }
    }

    /// Every key whose pattern matches `topic`, each once, ascending.
    pub fn matches(&self, topic: &str) -> Vec<K> {
        let mut out = Vec::new();
        self.matches_into(topic, &mut out);
        out
    }
}

impl<K> TopicTrie<K> {
    /// Recompiles the combined regex set. A set too large to compile falls
    /// back to matching each regex alone (still correct, only slower).
    fn rebuild_regex_set(&mut self) {
        self.regex_set = if self.regexes.is_empty() {
            None
        } else {
            let sources = self.regexes.iter().map(|(p, _)| match p {
                Pattern::Regex(re) => re.as_str(),
                Pattern::Glob(g) => g.as_str(),
            });
            regex::RegexSetBuilder::new(sources)
                .size_limit(REGEX_SET_SIZE_LIMIT)
                .build()
                .ok()
        };
    }
}

/// Collects keys of patterns matching `rest`, the topic's remaining
/// segments (`None` once all are consumed). Walks the topic in place, so a
/// lookup allocates nothing beyond `out`.
fn collect<K: Clone>(node: &Node<K>, rest: Option<&str>, out: &mut Vec<K>) {
    if let Some(hash) = &node.hash {
        // `#` consumes zero or more segments.
        let mut remaining = rest;
        loop {
            collect(hash, remaining, out);
            match remaining {
                None => break,
                Some(s) => remaining = s.split_once('.').map(|(_, tail)| tail),
            }
        }
    }
    let Some(segments) = rest else {
        out.extend(node.keys.iter().cloned());
        return;
    };
    let (first, tail) = match segments.split_once('.') {
        Some((first, tail)) => (first, Some(tail)),
        None => (segments, None),
    };
    if let Some(child) = node.literal.get(first) {
        collect(child, tail, out);
    }
    if let Some(star) = &node.star {
        collect(star, tail, out);
    }
}

fn remove_in<K: PartialEq>(node: &mut Node<K>, segments: &[&str], key: &K) -> bool {
    let Some((first, rest)) = segments.split_first() else {
        let found = node.keys.iter().position(|k| k == key);
        return found.map(|i| node.keys.swap_remove(i)).is_some();
    };
    match *first {
        "*" | "#" => {
            let slot = if *first == "*" {
                &mut node.star
            } else {
                &mut node.hash
            };
            let Some(child) = slot.as_deref_mut() else {
                return false;
            };
            let removed = remove_in(child, rest, key);
            if child.is_empty() {
                *slot = None;
            }
            removed
        }
        lit => {
            let Some(child) = node.literal.get_mut(lit) else {
                return false;
            };
            let removed = remove_in(child, rest, key);
            if child.is_empty() {
                node.literal.remove(lit);
            }
            removed
        }
    }
}

fn dedup_tail<K: PartialEq>(out: &mut Vec<K>, start: usize) {
    let mut write = start + 1;
    for read in start + 1..out.len() {
        if out[read] != out[write - 1] {
            out.swap(read, write);
            write += 1;
        }
    }
    out.truncate(write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn trie(entries: &[(&str, u32)]) -> TopicTrie<u32> {
        let mut t = TopicTrie::new();
        for (pat, k) in entries {
            t.insert(&p(pat), *k);
        }
        t
    }

    #[test]
    fn finds_literal_star_hash_and_regex_matches() {
        let t = trie(&[
            ("task.created", 1),
            ("task.*", 2),
            ("task.#", 3),
            ("#", 4),
            ("agent.*", 5),
            ("pattern:^task\\.c", 6),
            ("*.created.#", 7),
        ]);
        assert_eq!(t.matches("task.created"), vec![1, 2, 3, 4, 6, 7]);
        assert_eq!(t.matches("task"), vec![3, 4]);
        assert_eq!(t.matches("agent.failed"), vec![4, 5]);
        assert_eq!(t.matches("x.created.y.z"), vec![4, 7]);
    }

    #[test]
    fn reports_each_key_once_even_when_several_patterns_match() {
        let t = trie(&[("a.*", 9), ("a.b", 9), ("#.#", 9), ("a.#", 9)]);
        assert_eq!(t.matches("a.b"), vec![9]);
    }

    #[test]
    fn agrees_with_pattern_matches_on_many_cases() {
        let patterns = [
            "a", "a.b", "a.*", "*.b", "a.#", "#.b", "#", "a.#.c", "*.*.c", "a.*.#",
        ];
        let topics = [
            "a", "b", "a.b", "a.c", "x.b", "a.b.c", "a.x.y.c", "q.w.c", "a.b.c.d",
        ];
        let entries: Vec<(&str, u32)> = patterns
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i as u32))
            .collect();
        let t = trie(&entries);
        for topic in topics {
            let expected: Vec<u32> = entries
                .iter()
                .filter(|(s, _)| p(s).matches(topic))
                .map(|(_, k)| *k)
                .collect();
            assert_eq!(t.matches(topic), expected, "topic {topic}");
        }
    }

    #[test]
    fn remove_prunes_and_forgets() {
        let mut t = trie(&[("a.*.c", 1), ("a.#", 2), ("pattern:^a", 3)]);
        assert!(t.remove(&p("a.*.c"), &1));
        assert!(!t.remove(&p("a.*.c"), &1));
        assert!(t.remove(&p("pattern:^a"), &3));
        assert_eq!(t.matches("a.b.c"), vec![2]);
        assert!(t.remove(&p("a.#"), &2));
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "empty branches are pruned");
    }
}
