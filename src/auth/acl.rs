//! Grants: what one principal may publish, subscribe to, consume and
//! administer, and the pattern containment check behind subscribe.

use std::collections::{BTreeSet, HashSet, VecDeque};

use crate::topic::Pattern;

use super::config::{AclEntry, AuthConfigError};

/// Most (subscription state, allowed-state set) pairs explored by one
/// containment check; past it the subscription is refused.
const MAX_CONTAINMENT_STATES: usize = 20_000;

/// One principal's permissions.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Allowed publish patterns.
    pub publish: Vec<Pattern>,
    /// Allowed subscribe patterns.
    pub subscribe: Vec<Pattern>,
    /// Allowed durable groups (`*`, `prefix*` or exact).
    pub groups: Vec<String>,
    /// Subscription management, DLQ redrive/purge, stats.
    pub admin: bool,
}

impl Grants {
    /// The union of `entries` that apply to `principal`.
    pub fn for_principal(
        entries: &[CompiledEntry],
        principal: &str,
        authenticated: bool,
    ) -> Grants {
        let mut grants = Grants::default();
        for entry in entries {
            let applies = entry.principal == principal || (authenticated && entry.principal == "*");
            if applies {
                grants.publish.extend(entry.publish.iter().cloned());
                grants.subscribe.extend(entry.subscribe.iter().cloned());
                grants.groups.extend(entry.groups.iter().cloned());
                grants.admin |= entry.admin;
            }
        }
        grants
    }

    /// Whether `topic` may be published.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    /// Whether every topic `pattern` can match may be subscribed to.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        covered(pattern, &self.subscribe)
    }

    /// Whether durable group `group` may be consumed.
    pub fn may_use_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| group_matches(g, group))
    }
}

/// An ACL entry with its patterns compiled.
#[derive(Debug, Clone)]
pub struct CompiledEntry {
    principal: String,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    groups: Vec<String>,
    admin: bool,
}

/// Compiles the ACL.
///
/// # Errors
/// [`AuthConfigError::Invalid`] naming the entry and the bad pattern.
pub fn compile(entries: &[AclEntry]) -> Result<Vec<CompiledEntry>, AuthConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if e.principal.is_empty() {
                return Err(AuthConfigError::Invalid(format!(
                    "acl[{i}].principal must not be empty"
                )));
            }
            let patterns = |field: &str, list: &[String]| {
                list.iter()
                    .map(|p| {
                        Pattern::parse(p).map_err(|err| {
                            AuthConfigError::Invalid(format!("acl[{i}].{field}: {err}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok(CompiledEntry {
                principal: e.principal.clone(),
                publish: patterns("publish", &e.publish)?,
                subscribe: patterns("subscribe", &e.subscribe)?,
                groups: e.groups.clone(),
                admin: e.admin,
            })
        })
        .collect()
}

/// `*` matches any group, `prefix*` a prefix, anything else exactly.
pub fn group_matches(allowed: &str, group: &str) -> bool {
    match allowed.strip_suffix('*') {
        Some(prefix) => group.starts_with(prefix),
        None => allowed == group,
    }
}

/// Whether every topic `pattern` matches is matched by one of `allowed`.
///
/// Globs are decided exactly: both sides are segment automata over the
/// literals that appear in either plus one symbol standing for every other
/// segment, and the check is language inclusion by subset construction.
/// A regex subscription is allowed only when the allowed globs cover every
/// topic (e.g. `#`) or the same regex is allowed verbatim; allowed regexes
/// otherwise take no part in containment (conservative: may refuse).
pub fn covered(pattern: &Pattern, allowed: &[Pattern]) -> bool {
    let globs: Vec<Vec<&str>> = allowed
        .iter()
        .filter_map(|p| match p {
            Pattern::Glob(g) => Some(g.split('.').collect()),
            Pattern::Regex(_) => None,
        })
        .collect();
    match pattern {
        Pattern::Regex(re) => {
            allowed
                .iter()
                .any(|a| matches!(a, Pattern::Regex(r) if r.as_str() == re.as_str()))
                || contains(&["#"], &globs)
        }
        Pattern::Glob(g) => {
            let segments: Vec<&str> = g.split('.').collect();
            contains(&segments, &globs)
        }
    }
}

/// Symbols of the finite alphabet: a literal segment, or `None` for "any
/// other segment".
type Symbol<'a> = Option<&'a str>;

/// Epsilon closure of `state` in glob `g`: a `#` may match nothing.
fn close(g: &[&str], mut state: usize, out: &mut BTreeSet<usize>) {
    loop {
        out.insert(state);
        if state < g.len() && g[state] == "#" {
            state += 1;
        } else {
            return;
        }
    }
}

/// States reached from `state` of glob `g` on `symbol` (before closure).
fn step(g: &[&str], state: usize, symbol: Symbol<'_>, out: &mut Vec<usize>) {
    let Some(seg) = g.get(state) else { return };
    match *seg {
        "#" => out.push(state),
        "*" => out.push(state + 1),
        lit => {
            if symbol == Some(lit) {
                out.push(state + 1);
            }
        }
    }
}

fn step_set(g: &[&str], states: &BTreeSet<usize>, symbol: Symbol<'_>) -> BTreeSet<usize> {
    let mut raw = Vec::new();
    for &s in states {
        step(g, s, symbol, &mut raw);
    }
    let mut out = BTreeSet::new();
    for s in raw {
        close(g, s, &mut out);
    }
    out
}

/// L(sub) ⊆ ∪ L(allowed).
fn contains(sub: &[&str], allowed: &[Vec<&str>]) -> bool {
    if allowed.is_empty() {
        return false;
    }
    let mut alphabet: Vec<Symbol<'_>> = vec![None];
    let mut seen = HashSet::new();
    for seg in sub.iter().chain(allowed.iter().flatten()) {
        if *seg != "*" && *seg != "#" && seen.insert(*seg) {
            alphabet.push(Some(seg));
        }
    }
    // A product state: the subscription's NFA state set and, per allowed
    // glob, its state set.
    type State = (BTreeSet<usize>, Vec<BTreeSet<usize>>);
    let start = |g: &[&str]| {
        let mut s = BTreeSet::new();
        close(g, 0, &mut s);
        s
    };
    let initial: State = (start(sub), allowed.iter().map(|g| start(g)).collect());
    // Topics have at least one segment, so acceptance is checked only for
    // states reached after a symbol: the initial state is expanded but not
    // recorded as visited.
    let mut visited: HashSet<State> = HashSet::new();
    let mut queue = VecDeque::new();
    queue.push_back((initial, true));
    while let Some(((s, a), first)) = queue.pop_front() {
        let sub_accepts = s.contains(&sub.len());
        let allowed_accepts = a
            .iter()
            .zip(allowed)
            .any(|(states, g)| states.contains(&g.len()));
        if !first && sub_accepts && !allowed_accepts {
            return false;
        }
        for &symbol in &alphabet {
            let ns = step_set(sub, &s, symbol);
            if ns.is_empty() {
                continue;
            }
            let na: Vec<BTreeSet<usize>> = a
                .iter()
                .zip(allowed)
                .map(|(states, g)| step_set(g, states, symbol))
                .collect();
            let next = (ns, na);
            if !visited.contains(&next) {
                visited.insert(next.clone());
                if visited.len() > MAX_CONTAINMENT_STATES {
                    return false;
                }
                queue.push_back((next, false));
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    fn cov(sub: &str, allowed: &[&str]) -> bool {
        let allowed: Vec<Pattern> = allowed.iter().map(|a| p(a)).collect();
        covered(&p(sub), &allowed)
    }

    #[test]
    fn containment_of_globs() {
        assert!(cov("task.x", &["task.*"]));
        assert!(cov("task.*", &["task.*"]));
        assert!(!cov("#", &["task.*"]));
        assert!(!cov("task.#", &["task.*"]));
        assert!(cov("task.*", &["task.#"]));
        assert!(cov("task.a.b", &["task.#"]));
        assert!(!cov("*.x", &["task.*"]));
        assert!(cov("a.*.c", &["a.#"]));
        assert!(cov("#", &["#"]));
        assert!(cov("a.#", &["*.#"]));
        // Topics are never empty, so `*.#` covers every topic.
        assert!(cov("#", &["*.#"]));
        assert!(!cov("#", &["*.*.#"]));
        assert!(cov("a.#.b", &["a.#"]));
        assert!(!cov("a.#", &["a.*", "a.*.*"]));
        // The union matters: `a` or `a.anything...`.
        assert!(cov("a.#", &["a", "a.#"]));
        assert!(cov("a.#", &["a", "a.*.#"]));
        assert!(!cov("x", &[]));
    }

    #[test]
    fn regex_subscriptions_need_everything_or_the_same_regex() {
        let re = Pattern::parse("pattern:^task\\.").unwrap();
        assert!(!covered(&re, &[p("task.#")]));
        assert!(covered(&re, &[p("#")]));
        assert!(covered(&re, &[Pattern::parse("pattern:^task\\.").unwrap()]));
    }

    #[test]
    fn groups_match_exactly_by_prefix_or_all() {
        assert!(group_matches("*", "x"));
        assert!(group_matches("planners-*", "planners-1"));
        assert!(!group_matches("planners-*", "coders"));
        assert!(group_matches("planners", "planners"));
        assert!(!group_matches("planners", "planners2"));
    }
}
