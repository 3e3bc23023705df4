//! Evaluating a compiled [`Node`] tree against an [`Event`].
//!
//! This runs once per candidate event and subscription, so it neither
//! allocates nor fails: paths were split and regexes compiled by `parse.rs`,
//! and a missing field or a comparison across types is simply false.
//! Recursion is bounded by the compile-time depth limit.

use std::cmp::Ordering;
use std::fmt::{self, Write as _};

use jiff::Timestamp;
use serde_json::{Number, Value};

use super::{Cmp, Field, Literal, Node, Segment, Test};
use crate::event::Event;

impl Node {
    /// Whether `event` satisfies this node.
    pub(super) fn eval(&self, event: &Event) -> bool {
        match self {
            Node::And(nodes) => nodes.iter().all(|n| n.eval(event)),
            Node::Or(nodes) => nodes.iter().any(|n| n.eval(event)),
            Node::Not(node) => !node.eval(event),
            Node::Field { field, tests } => {
                let value = field.resolve(event);
                tests.iter().all(|t| t.eval(&value))
            }
        }
    }
}

/// A field's value in one event, borrowed from it.
enum Resolved<'a> {
    Missing,
    Str(&'a str),
    Priority(u8),
    Time(Timestamp),
    Json(&'a Value),
}

impl Field {
    fn resolve<'a>(&self, event: &'a Event) -> Resolved<'a> {
        let text = |s: &'a Option<String>| s.as_deref().map_or(Resolved::Missing, Resolved::Str);
        match self {
            Field::Id => Resolved::Str(&event.id),
            Field::Type => Resolved::Str(&event.topic),
            Field::Source => text(&event.source),
            Field::Target => text(&event.target),
            Field::Key => text(&event.key),
            Field::CorrelationId => text(&event.correlation_id),
            Field::CausationId => text(&event.causation_id),
            Field::ReplyTo => text(&event.reply_to),
            Field::Time => Resolved::Time(event.time),
            Field::Priority => Resolved::Priority(event.priority.get()),
            Field::Header(name) => event
                .headers
                .get(name)
                .map_or(Resolved::Missing, Resolved::Str),
            Field::Payload(path) => walk(&event.payload, path),
            Field::Metadata(key, path) => event
                .metadata
                .get(&**key)
                .map_or(Resolved::Missing, |v| walk(v, path)),
        }
    }
}

/// Follows `path` into `value`: keys into objects, indexes into arrays.
fn walk<'a>(mut value: &'a Value, path: &[Segment]) -> Resolved<'a> {
    for segment in path {
        let next = match value {
            Value::Object(map) => map.get(&*segment.key),
            Value::Array(items) => segment.index.and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(next) => value = next,
            None => return Resolved::Missing,
        }
    }
    Resolved::Json(value)
}

impl Test {
    fn eval(&self, value: &Resolved<'_>) -> bool {
        match self {
            Test::Eq(literal) => equals(value, literal),
            Test::Ne(literal) => !equals(value, literal),
            Test::Cmp(op, literal) => compare(value, literal).is_some_and(|o| op.accepts(o)),
            Test::In(literals) => literals.iter().any(|l| equals(value, l)),
            Test::Nin(literals) => !literals.iter().any(|l| equals(value, l)),
            Test::Exists(want) => !matches!(value, Resolved::Missing) == *want,
            Test::Regex(re) => match value {
                Resolved::Json(Value::Array(items)) => items
                    .iter()
                    .any(|item| item.as_str().is_some_and(|s| re.is_match(s))),
                _ => with_text(value, |s| re.is_match(s)),
            },
            Test::Contains(operand) => match (value, operand) {
                (Resolved::Json(Value::Array(items)), _) => {
                    items.iter().any(|item| json_eq(item, operand))
                }
                (_, Value::String(needle)) => with_text(value, |s| s.contains(needle.as_str())),
                _ => false,
            },
            Test::Not(tests) => !tests.iter().all(|t| t.eval(value)),
        }
    }
}

impl Cmp {
    fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Cmp::Gt => ordering == Ordering::Greater,
            Cmp::Gte => ordering != Ordering::Less,
            Cmp::Lt => ordering == Ordering::Less,
            Cmp::Lte => ordering != Ordering::Greater,
        }
    }
}

/// `$eq`: a missing field equals only `null`; an array equals a value when
/// it or any of its elements does.
fn equals(value: &Resolved<'_>, literal: &Literal) -> bool {
    match (value, literal) {
        (Resolved::Missing, Literal::Json(lit)) => lit.is_null(),
        (Resolved::Str(s), Literal::Json(Value::String(lit))) => *s == lit,
        (Resolved::Priority(p), Literal::Json(Value::Number(lit))) => {
            Num::of(lit).and_then(|n| Num::Int((*p).into()).cmp(n)) == Some(Ordering::Equal)
        }
        (Resolved::Time(t), Literal::Time(lit)) => t == lit,
        (Resolved::Json(v), Literal::Json(lit)) => {
            json_eq(v, lit)
                || matches!(v, Value::Array(items) if items.iter().any(|item| json_eq(item, lit)))
        }
        _ => false,
    }
}

/// Ordering for `$gt` and friends; `None` across types.
fn compare(value: &Resolved<'_>, literal: &Literal) -> Option<Ordering> {
    match (value, literal) {
        (Resolved::Str(s), Literal::Json(Value::String(lit))) => Some((*s).cmp(lit.as_str())),
        (Resolved::Json(Value::String(s)), Literal::Json(Value::String(lit))) => Some(s.cmp(lit)),
        (Resolved::Priority(p), Literal::Json(Value::Number(lit))) => {
            Num::Int((*p).into()).cmp(Num::of(lit)?)
        }
        (Resolved::Json(Value::Number(n)), Literal::Json(Value::Number(lit))) => {
            Num::of(n)?.cmp(Num::of(lit)?)
        }
        (Resolved::Time(t), Literal::Time(lit)) => Some(t.cmp(lit)),
        _ => None,
    }
}

/// Structural JSON equality where numbers compare by value (`1 == 1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => Num::of(x)
            .zip(Num::of(y))
            .and_then(|(x, y)| x.cmp(y))
            .is_some_and(Ordering::is_eq),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A JSON number, integers kept exact.
#[derive(Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(n: &Number) -> Option<Num> {
        if let Some(i) = n.as_i64() {
            Some(Num::Int(i.into()))
        } else if let Some(u) = n.as_u64() {
            Some(Num::Int(u.into()))
        } else {
            n.as_f64().map(Num::Float)
        }
    }

    fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            (Num::Int(a), Num::Float(b)) => int_cmp_float(a, b),
            (Num::Float(a), Num::Int(b)) => int_cmp_float(b, a).map(Ordering::reverse),
        }
    }
}

/// Exact integer–float ordering. Rounding to `f64` is monotonic, so the
/// rounded integer orders against `f` correctly unless the two are equal;
/// then `f` is a whole number within `i128` range and converts exactly.
fn int_cmp_float(i: i128, f: f64) -> Option<Ordering> {
    match (i as f64).partial_cmp(&f)? {
        Ordering::Equal => Some(i.cmp(&(f as i128))),
        other => Some(other),
    }
}

/// Applies `f` to a string value (a `time` rendered as RFC 3339); false for
/// anything else.
fn with_text(value: &Resolved<'_>, f: impl FnOnce(&str) -> bool) -> bool {
    match value {
        Resolved::Str(s) => f(s),
        Resolved::Json(Value::String(s)) => f(s),
        Resolved::Time(t) => TimeText::new(*t).is_some_and(|text| f(text.as_str())),
        _ => false,
    }
}

/// A timestamp rendered on the stack, as it appears in serialized events.
struct TimeText {
    buf: [u8; 64],
    len: usize,
}

impl TimeText {
    fn new(t: Timestamp) -> Option<TimeText> {
        let mut text = TimeText {
            buf: [0; 64],
            len: 0,
        };
        write!(text, "{t}").ok()?;
        Some(text)
    }

    fn as_str(&self) -> &str {
        // `write_str` only ever appends whole `&str`s, so this is valid UTF-8.
        self.buf
            .get(..self.len)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or_default()
    }
}

impl fmt::Write for TimeText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::event::{DEFAULT_MAX_PAYLOAD_BYTES, Event};
    use crate::filter::Filter;

    fn event(fields: Value) -> Event {
        let mut raw = json!({"type": "task.failed", "time": "2024-05-01T12:00:00Z"});
        if let (Some(raw), Value::Object(fields)) = (raw.as_object_mut(), fields) {
            raw.extend(fields);
        }
        Event::from_json(raw, DEFAULT_MAX_PAYLOAD_BYTES).expect("test event is valid")
    }

    fn matches(filter: Value, event: &Event) -> bool {
        Filter::compile(&filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(event)
    }

    #[test]
    fn bare_values_mean_eq_and_top_level_keys_are_anded() {
        let e = event(json!({"source": "billing", "payload": {"status": "failed"}}));
        assert!(matches(json!({"source": "billing"}), &e));
        assert!(matches(
            json!({"source": "billing", "payload.status": "failed"}),
            &e
        ));
        assert!(!matches(
            json!({"source": "billing", "payload.status": "ok"}),
            &e
        ));
        assert!(matches(
            json!({"type": "task.failed", "topic": "task.failed"}),
            &e
        ));
    }

    #[test]
    fn empty_document_matches_every_event() {
        assert!(matches(json!({}), &event(json!({}))));
    }

    #[test]
    fn numbers_compare_numerically_across_integers_and_floats() {
        let e = event(json!({"payload": {"n": 1, "f": 2.5, "big": 9_007_199_254_740_993_u64}}));
        assert!(matches(json!({"payload.n": 1.0}), &e));
        assert!(matches(json!({"payload.f": {"$gt": 2, "$lt": 3}}), &e));
        assert!(matches(json!({"payload.n": {"$gte": -1, "$lte": 1}}), &e));
        assert!(matches(
            json!({"payload.big": {"$gt": 9_007_199_254_740_992.0}}),
            &e
        ));
        assert!(!matches(
            json!({"payload.big": 9_007_199_254_740_992_u64}),
            &e
        ));
        assert!(matches(json!({"payload.n": {"$lt": u64::MAX}}), &e));
    }

    #[test]
    fn strings_compare_lexicographically() {
        let e = event(json!({"source": "bravo", "payload": {"s": "b"}}));
        assert!(matches(
            json!({"source": {"$gt": "alpha", "$lt": "charlie"}}),
            &e
        ));
        assert!(matches(
            json!({"payload.s": {"$gte": "b", "$lte": "b"}}),
            &e
        ));
        assert!(!matches(json!({"payload.s": {"$gt": "ba"}}), &e));
    }

    #[test]
    fn gt_across_types_is_false() {
        let e = event(json!({"source": "5", "payload": {"n": 5, "b": true, "a": [6]}}));
        for filter in [
            json!({"source": {"$gt": 1}}),
            json!({"payload.n": {"$gt": "1"}}),
            json!({"payload.b": {"$gte": false}}),
            json!({"payload.a": {"$gt": 1}}),
            json!({"payload.n": {"$lt": null}}),
        ] {
            assert!(!matches(filter.clone(), &e), "{filter}");
        }
    }

    #[test]
    fn gt_on_missing_field_is_false() {
        let e = event(json!({}));
        assert!(!matches(json!({"payload.score": {"$gt": 1}}), &e));
        assert!(!matches(json!({"payload.score": {"$lte": 1}}), &e));
        assert!(!matches(json!({"source": {"$eq": "x"}}), &e));
    }

    #[test]
    fn ne_and_nin_hold_for_missing_fields() {
        let e = event(json!({}));
        assert!(matches(json!({"payload.x": {"$ne": 1}}), &e));
        assert!(matches(json!({"source": {"$nin": ["a", "b"]}}), &e));
        assert!(matches(json!({"headers.x": {"$ne": "y"}}), &e));
    }

    #[test]
    fn eq_null_matches_missing_or_null() {
        let e = event(json!({"payload": {"x": null, "y": 0}}));
        assert!(matches(json!({"payload.x": null}), &e));
        assert!(matches(json!({"payload.missing": null}), &e));
        assert!(matches(json!({"source": null}), &e));
        assert!(!matches(json!({"payload.y": null}), &e));
        assert!(matches(json!({"payload.missing": {"$in": [null, 1]}}), &e));
    }

    #[test]
    fn exists_tells_missing_from_null() {
        let e = event(json!({"payload": {"x": null}, "headers": {"h": "v"}}));
        assert!(matches(json!({"payload.x": {"$exists": true}}), &e));
        assert!(matches(json!({"payload.y": {"$exists": false}}), &e));
        assert!(matches(json!({"headers.h": {"$exists": true}}), &e));
        assert!(matches(json!({"target": {"$exists": false}}), &e));
        assert!(!matches(json!({"target": {"$exists": true}}), &e));
    }

    #[test]
    fn array_fields_equal_any_element_for_eq_and_in() {
        let e = event(json!({"payload": {"tags": ["urgent", "billing"]}}));
        assert!(matches(json!({"payload.tags": "urgent"}), &e));
        assert!(matches(json!({"payload.tags": ["urgent", "billing"]}), &e));
        assert!(matches(
            json!({"payload.tags": {"$in": ["x", "billing"]}}),
            &e
        ));
        assert!(!matches(json!({"payload.tags": "other"}), &e));
        assert!(!matches(json!({"payload.tags": {"$ne": "urgent"}}), &e));
        assert!(matches(json!({"payload.tags": {"$ne": "other"}}), &e));
        assert!(!matches(json!({"payload.tags": {"$nin": ["billing"]}}), &e));
        assert!(matches(json!({"payload.tags": {"$nin": ["x", "y"]}}), &e));
    }

    #[test]
    fn objects_compare_whole_and_ignore_key_order() {
        let e = event(json!({"payload": {"o": {"a": 1, "b": [1, 2]}}}));
        assert!(matches(json!({"payload.o": {"b": [1.0, 2], "a": 1}}), &e));
        assert!(!matches(json!({"payload.o": {"a": 1}}), &e));
        assert!(!matches(json!({"payload.o": {"a": 1, "b": [2, 1]}}), &e));
    }

    #[test]
    fn numeric_segments_index_arrays_and_key_objects() {
        let e = event(json!({"payload": {"items": [{"id": "a"}, {"id": "b"}], "m": {"0": "z"}}}));
        assert!(matches(json!({"payload.items.1.id": "b"}), &e));
        assert!(matches(json!({"payload.m.0": "z"}), &e));
        assert!(matches(
            json!({"payload.items.2.id": {"$exists": false}}),
            &e
        ));
        assert!(matches(json!({"payload.items.01": {"$exists": false}}), &e));
        assert!(matches(json!({"payload.items.id": {"$exists": false}}), &e));
    }

    #[test]
    fn regex_matches_strings_unanchored_and_nothing_else() {
        let e =
            event(json!({"source": "svc-billing", "payload": {"n": 42, "tags": [1, "prod-eu"]}}));
        assert!(matches(json!({"type": {"$regex": "^task\\."}}), &e));
        assert!(matches(json!({"source": {"$regex": "billing"}}), &e));
        assert!(matches(json!({"payload.tags": {"$regex": "^prod-"}}), &e));
        assert!(matches(json!({"source": {"$regex": "(?i)BILLING$"}}), &e));
        assert!(!matches(json!({"payload.n": {"$regex": "42"}}), &e));
        assert!(!matches(json!({"payload.missing": {"$regex": ""}}), &e));
    }

    #[test]
    fn contains_is_substring_for_strings_and_membership_for_arrays() {
        let e = event(json!({"source": "svc-billing", "payload": {"ids": [1, 2, {"k": 3}]}}));
        assert!(matches(json!({"source": {"$contains": "bill"}}), &e));
        assert!(!matches(json!({"source": {"$contains": "ledger"}}), &e));
        assert!(matches(json!({"payload.ids": {"$contains": 2.0}}), &e));
        assert!(matches(json!({"payload.ids": {"$contains": {"k": 3}}}), &e));
        assert!(!matches(json!({"payload.ids": {"$contains": 9}}), &e));
        assert!(!matches(json!({"source": {"$contains": 1}}), &e));
    }

    #[test]
    fn priority_compares_as_a_number_and_accepts_names() {
        let e = event(json!({"priority": "high"}));
        assert!(matches(json!({"priority": 7}), &e));
        assert!(matches(json!({"priority": 7.0}), &e));
        assert!(matches(json!({"priority": "high"}), &e));
        assert!(matches(
            json!({"priority": {"$gte": "normal", "$lt": "critical"}}),
            &e
        ));
        assert!(matches(json!({"priority": {"$gt": 6.5}}), &e));
        assert!(matches(json!({"priority": {"$in": ["low", "high"]}}), &e));
        assert!(!matches(json!({"priority": {"$gt": 7}}), &e));
        assert!(!matches(json!({"priority": true}), &e));
    }

    #[test]
    fn time_compares_as_an_instant_across_offsets() {
        let e = event(json!({}));
        assert!(matches(json!({"time": "2024-05-01T14:00:00+02:00"}), &e));
        assert!(matches(
            json!({"time": {"$gt": "2024-05-01T11:59:59.5Z"}}),
            &e
        ));
        assert!(!matches(
            json!({"time": {"$lt": "2024-05-01T12:00:00Z"}}),
            &e
        ));
        assert!(matches(json!({"time": {"$regex": "^2024-05-01T12"}}), &e));
        assert!(matches(json!({"time": {"$contains": "05-01"}}), &e));
        assert!(!matches(json!({"time": 5}), &e));
    }

    #[test]
    fn headers_metadata_and_string_attributes_resolve() {
        let e = event(json!({
            "id": "e-1", "target": "t", "key": "k", "correlation_id": "c",
            "causation_id": "p", "reply_to": "r.x", "headers": {"x-tenant": "acme"},
            "metadata": {"region": {"name": "eu"}}
        }));
        assert!(matches(
            json!({"id": "e-1", "target": "t", "key": "k", "correlation_id": "c",
                   "causation_id": "p", "reply_to": "r.x"}),
            &e
        ));
        assert!(matches(json!({"headers.x-tenant": "acme"}), &e));
        assert!(!matches(json!({"headers.X-Tenant": "acme"}), &e));
        assert!(matches(json!({"metadata.region.name": "eu"}), &e));
        assert!(matches(json!({"metadata.region": {"name": "eu"}}), &e));
    }

    #[test]
    fn or_and_not_combine_documents() {
        let e = event(json!({"source": "a", "priority": 3}));
        assert!(matches(
            json!({"$or": [{"source": "b"}, {"priority": 3}]}),
            &e
        ));
        assert!(!matches(
            json!({"$or": [{"source": "b"}, {"priority": 4}]}),
            &e
        ));
        assert!(matches(
            json!({"$and": [{"source": "a"}, {"priority": 3}]}),
            &e
        ));
        assert!(matches(json!({"$not": {"source": "b"}}), &e));
        assert!(!matches(
            json!({"$not": {"source": "a", "priority": 3}}),
            &e
        ));
        assert!(matches(
            json!({"$not": {"$or": [{"source": "b"}, {"priority": 4}]}}),
            &e
        ));
    }

    #[test]
    fn field_level_not_negates_an_operator_object_or_value() {
        let e = event(json!({"payload": {"x": 3}}));
        assert!(matches(json!({"payload.x": {"$not": {"$gt": 5}}}), &e));
        assert!(!matches(
            json!({"payload.x": {"$not": {"$gt": 1, "$lt": 5}}}),
            &e
        ));
        assert!(matches(json!({"payload.x": {"$not": 4}}), &e));
        assert!(matches(json!({"payload.y": {"$not": {"$gt": 5}}}), &e));
    }

    #[test]
    fn deep_payloads_evaluate_without_overflow() {
        let mut payload = json!("leaf");
        for _ in 0..100 {
            payload = json!({ "a": payload });
        }
        let e = event(json!({ "payload": payload }));
        let path = format!("payload{}", ".a".repeat(100));
        assert!(matches(json!({ path: "leaf" }), &e));
        assert!(!matches(json!({"payload.a": {"a": {"a": 1}}}), &e));
    }

    #[test]
    fn and_combines_filters_under_an_and_source() {
        let e = event(json!({"source": "a", "priority": 8}));
        let both = Filter::and(vec![
            Filter::parse_shorthand("source:eq:a").expect("valid"),
            Filter::parse_shorthand("priority:gt:high").expect("valid"),
        ]);
        assert!(both.matches(&e));
        assert_eq!(
            both.source(),
            &json!({"$and": [{"source": {"$eq": "a"}}, {"priority": {"$gt": "high"}}]})
        );
        assert_eq!(Filter::compile(both.source()).expect("recompiles"), both);
        let none = crate::filter::and(Vec::new());
        assert_eq!(none.source(), &json!({}));
        assert!(none.matches(&e));
        let neither = Filter::and(vec![Filter::parse_shorthand("source:eq:b").expect("valid")]);
        assert!(!neither.matches(&e));
    }

    #[test]
    fn shorthand_filters_match_like_their_documents() {
        let e = event(json!({"source": "b", "priority": 6, "payload": {"x": 1, "id": "5"}}));
        for (text, want) in [
            ("priority:gt:5", true),
            ("priority:lte:normal", false),
            ("source:in:a|b|c", true),
            ("source:nin:a|b|c", false),
            ("payload.x:exists:true", true),
            ("payload.y:exists:true", false),
            ("type:regex:^task\\.", true),
            ("payload.id:eq:5", false),
            ("payload.id:eq:\"5\"", true),
            ("type:contains:fail", true),
        ] {
            let filter = Filter::parse_shorthand(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(filter.matches(&e), want, "{text}");
        }
    }

    #[test]
    fn serde_round_trip_compiles_and_compares_by_source() {
        let filter = Filter::compile(&json!({"priority": {"$gte": 7}})).expect("valid");
        let text = serde_json::to_string(&filter).expect("serializes");
        assert_eq!(text, r#"{"priority":{"$gte":7}}"#);
        let back: Filter = serde_json::from_str(&text).expect("deserializes");
        assert_eq!(back, filter);
        assert!(back.matches(&event(json!({"priority": 9}))));
        let err = serde_json::from_str::<Filter>(r#"{"priority":{"$gtt":7}}"#).expect_err("bad");
        assert!(err.to_string().contains("unknown operator $gtt"), "{err}");
        assert_eq!(
            format!("{filter:?}"),
            r#"Filter(Object {"priority": Object {"$gte": Number(7)}})"#
        );
    }

    #[test]
    fn compiling_and_evaluating_ten_thousand_filters_works() {
        let events: Vec<Event> = (0..10)
            .map(|i| event(json!({"priority": i + 1, "payload": {"n": i, "tags": ["t"]}})))
            .collect();
        let mut matched = 0;
        for i in 0..10_000 {
            let filter = Filter::compile(&json!({
                "priority": {"$gte": i % 10 + 1},
                "payload.n": {"$in": [i % 10, 100]},
                "payload.tags": "t",
                "type": {"$contains": "task."},
            }))
            .expect("valid");
            matched += events.iter().filter(|e| filter.matches(e)).count();
        }
        assert_eq!(matched, 10_000);
    }
}
