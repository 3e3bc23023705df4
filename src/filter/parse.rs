//! Compiling filter documents into a [`Node`] tree, and `field:op:value`
//! shorthand into filter documents.
//!
//! All validation happens here, once per subscription, so that evaluation
//! (`eval.rs`) has nothing left to reject. Recursion is bounded by
//! [`MAX_DEPTH`] and work by [`MAX_NODES`], whatever the input.

use jiff::Timestamp;
use regex::RegexBuilder;
use serde_json::{Map, Value};

use super::{
    Cmp, Field, FilterError, Literal, MAX_DEPTH, MAX_NODES, MAX_REGEX_BYTES, Node,
    REGEX_SIZE_LIMIT, ROOT, Segment, Test,
};
use crate::event::{Priority, json_kind};

/// Shorthand operator names and the operators they stand for.
const SHORTHAND_OPS: [(&str, &str); 11] = [
    ("eq", "$eq"),
    ("ne", "$ne"),
    ("gt", "$gt"),
    ("gte", "$gte"),
    ("lt", "$lt"),
    ("lte", "$lte"),
    ("in", "$in"),
    ("nin", "$nin"),
    ("exists", "$exists"),
    ("regex", "$regex"),
    ("contains", "$contains"),
];

/// Compiles a filter document.
pub(super) fn compile(source: &Value) -> Result<Node, FilterError> {
    Compiler { nodes: 0 }.document(source, ROOT, "$and", 1)
}

/// Turns `field:op:value` into the equivalent filter document.
pub(super) fn shorthand(text: &str) -> Result<Value, FilterError> {
    let fail = |reason: String| FilterError::Shorthand {
        text: text.to_string(),
        reason,
    };
    let mut parts = text.splitn(3, ':');
    let (Some(path), Some(op), Some(raw)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(fail("expected field:op:value, e.g. priority:gt:5".into()));
    };
    if path.is_empty() {
        return Err(fail("the field before the first `:` is empty".into()));
    }
    let Some((_, op)) = SHORTHAND_OPS.iter().find(|(name, _)| *name == op) else {
        return Err(fail(format!(
            "unknown operator {op:?}; expected one of eq, ne, gt, gte, lt, lte, in, nin, \
             exists, regex, contains"
        )));
    };
    let value = match *op {
        "$regex" => Value::String(raw.to_string()),
        "$in" | "$nin" => Value::Array(raw.split('|').map(shorthand_value).collect()),
        _ => shorthand_value(raw),
    };
    let mut condition = Map::new();
    condition.insert((*op).to_string(), value);
    let mut document = Map::new();
    document.insert(path.to_string(), Value::Object(condition));
    Ok(Value::Object(document))
}

/// A shorthand value: JSON when it parses, the raw text otherwise.
fn shorthand_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()))
}

/// Compilation state: the node budget used so far.
struct Compiler {
    nodes: usize,
}

impl Compiler {
    /// Counts one node at `depth`, failing past [`MAX_DEPTH`] or [`MAX_NODES`].
    fn enter(&mut self, path: &str, op: &str, depth: usize) -> Result<(), FilterError> {
        if depth > MAX_DEPTH {
            return Err(invalid(
                path,
                op,
                format!("nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(invalid(
                path,
                op,
                format!("makes the filter larger than {MAX_NODES} nodes"),
            ));
        }
        Ok(())
    }

    /// A filter document at `path`, reached through the logical operator `via`.
    fn document(
        &mut self,
        doc: &Value,
        path: &str,
        via: &str,
        depth: usize,
    ) -> Result<Node, FilterError> {
        self.enter(path, via, depth)?;
        let Value::Object(map) = doc else {
            return Err(FilterError::NotADocument {
                path: path.to_string(),
                got: json_kind(doc),
            });
        };
        let mut nodes = Vec::new();
        for (key, value) in map {
            let node = match key.as_str() {
                "$and" | "$or" => self.logical(key, value, path, depth + 1)?,
                "$not" => {
                    let inner = self.document(value, &child(path, key), key, depth + 1)?;
                    Node::Not(Box::new(inner))
                }
                op if op.starts_with('$') => return Err(misplaced_or_unknown(path, op)),
                field => self.field(field, value, depth + 1)?,
            };
            nodes.push(node);
        }
        Ok(match nodes.len() {
            1 => nodes.pop().unwrap_or(Node::And(Vec::new())),
            _ => Node::And(nodes),
        })
    }

    /// `$and`/`$or`: a non-empty array of filter documents.
    fn logical(
        &mut self,
        op: &str,
        operand: &Value,
        path: &str,
        depth: usize,
    ) -> Result<Node, FilterError> {
        self.enter(path, op, depth)?;
        let items = match operand {
            Value::Array(items) if !items.is_empty() => items,
            other => {
                let got = match other {
                    Value::Array(_) => "an empty array",
                    other => json_kind(other),
                };
                return Err(invalid(
                    path,
                    op,
                    format!("expects a non-empty array of filter documents, got {got}"),
                ));
            }
        };
        let at = child(path, op);
        let nodes = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.document(item, &format!("{at}.{i}"), op, depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if op == "$and" {
            Node::And(nodes)
        } else {
            Node::Or(nodes)
        })
    }

    /// A field path and its condition.
    fn field(&mut self, path: &str, value: &Value, depth: usize) -> Result<Node, FilterError> {
        let op = match value {
            Value::Object(map) => map.keys().find(|k| k.starts_with('$')),
            _ => None,
        };
        let op = op.map_or("$eq", String::as_str);
        let field = parse_path(path, op)?;
        self.enter(path, op, depth)?;
        let tests = self.condition(&field, path, value, depth + 1)?;
        Ok(Node::Field { field, tests })
    }

    /// An operator object, or a bare value meaning `$eq`.
    fn condition(
        &mut self,
        field: &Field,
        path: &str,
        value: &Value,
        depth: usize,
    ) -> Result<Vec<Test>, FilterError> {
        let operators = match value {
            Value::Object(map) if map.keys().any(|k| k.starts_with('$')) => map,
            _ => return Ok(vec![self.test(field, path, "$eq", value, depth)?]),
        };
        if let Some(name) = operators.keys().find(|k| !k.starts_with('$')) {
            let op = operators.keys().find(|k| k.starts_with('$'));
            return Err(invalid(
                path,
                op.map_or("$eq", String::as_str),
                format!(
                    "cannot share an object with the field name {name:?}; \
                     write nested fields as one dotted path"
                ),
            ));
        }
        operators
            .iter()
            .map(|(op, operand)| self.test(field, path, op, operand, depth))
            .collect()
    }

    /// One operator and its operand.
    fn test(
        &mut self,
        field: &Field,
        path: &str,
        op: &str,
        operand: &Value,
        depth: usize,
    ) -> Result<Test, FilterError> {
        self.enter(path, op, depth)?;
        let depth = depth + 1;
        Ok(match op {
            "$eq" => Test::Eq(self.literal(field, path, op, operand, depth)?),
            "$ne" => Test::Ne(self.literal(field, path, op, operand, depth)?),
            "$gt" => Test::Cmp(Cmp::Gt, self.literal(field, path, op, operand, depth)?),
            "$gte" => Test::Cmp(Cmp::Gte, self.literal(field, path, op, operand, depth)?),
            "$lt" => Test::Cmp(Cmp::Lt, self.literal(field, path, op, operand, depth)?),
            "$lte" => Test::Cmp(Cmp::Lte, self.literal(field, path, op, operand, depth)?),
            "$in" => Test::In(self.list(field, path, op, operand, depth)?),
            "$nin" => Test::Nin(self.list(field, path, op, operand, depth)?),
            "$exists" => match operand {
                Value::Bool(b) => Test::Exists(*b),
                other => return Err(expects(path, op, "a boolean", other)),
            },
            "$regex" => match operand {
                Value::String(source) => Test::Regex(regex(path, op, source)?),
                other => return Err(expects(path, op, "a string", other)),
            },
            "$contains" => {
                self.measure(path, op, operand, depth)?;
                Test::Contains(operand.clone())
            }
            "$not" => Test::Not(self.condition(field, path, operand, depth)?),
            "$and" | "$or" => {
                return Err(invalid(
                    path,
                    op,
                    "must be at the top of a filter document, not under a field \
                     (write {\"$or\": [{field: ...}, {field: ...}]})",
                ));
            }
            _ => {
                return Err(FilterError::UnknownOperator {
                    path: path.to_string(),
                    op: op.to_string(),
                });
            }
        })
    }

    /// The array operand of `$in`/`$nin`.
    fn list(
        &mut self,
        field: &Field,
        path: &str,
        op: &str,
        operand: &Value,
        depth: usize,
    ) -> Result<Vec<Literal>, FilterError> {
        let Value::Array(items) = operand else {
            return Err(expects(path, op, "an array", operand));
        };
        items
            .iter()
            .map(|item| self.literal(field, path, op, item, depth))
            .collect()
    }

    /// An operand to compare `field` with, prepared for that field.
    fn literal(
        &mut self,
        field: &Field,
        path: &str,
        op: &str,
        operand: &Value,
        depth: usize,
    ) -> Result<Literal, FilterError> {
        self.measure(path, op, operand, depth)?;
        match (field, operand) {
            (Field::Priority, Value::String(_)) => match Priority::from_json(operand) {
                Ok(p) => Ok(Literal::Json(Value::from(p.get()))),
                Err(_) => Err(expects(
                    path,
                    op,
                    "a priority (1..=10 or lowest, low, normal, high, critical, system)",
                    operand,
                )),
            },
            (Field::Time, Value::String(s)) => match s.parse::<Timestamp>() {
                Ok(t) => Ok(Literal::Time(t)),
                Err(e) => Err(invalid(
                    path,
                    op,
                    format!("expects an RFC 3339 timestamp, got {s:?}: {e}"),
                )),
            },
            _ => Ok(Literal::Json(operand.clone())),
        }
    }

    /// Counts every value inside an operand against the depth and node limits.
    fn measure(
        &mut self,
        path: &str,
        op: &str,
        value: &Value,
        depth: usize,
    ) -> Result<(), FilterError> {
        self.enter(path, op, depth)?;
        match value {
            Value::Array(items) => items
                .iter()
                .try_for_each(|v| self.measure(path, op, v, depth + 1)),
            Value::Object(map) => map
                .values()
                .try_for_each(|v| self.measure(path, op, v, depth + 1)),
            _ => Ok(()),
        }
    }
}

/// Resolves a field path; `op` is named in errors.
fn parse_path(path: &str, op: &str) -> Result<Field, FilterError> {
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    let scalar = match head {
        "id" => Field::Id,
        "type" | "topic" => Field::Type,
        "source" => Field::Source,
        "target" => Field::Target,
        "key" => Field::Key,
        "correlation_id" => Field::CorrelationId,
        "causation_id" => Field::CausationId,
        "reply_to" => Field::ReplyTo,
        "time" => Field::Time,
        "priority" => Field::Priority,
        "payload" => return Ok(Field::Payload(segments(path, op, rest)?)),
        "metadata" | "headers" => {
            let Some(rest) = rest else {
                return Err(bad_path(
                    path,
                    op,
                    &format!("{head} needs a name: {head}.<name>"),
                ));
            };
            if head == "headers" {
                return match rest {
                    "" => Err(bad_path(path, op, "empty header name")),
                    name => Ok(Field::Header(name.into())),
                };
            }
            let (key, rest) = match rest.split_once('.') {
                Some((key, rest)) => (key, Some(rest)),
                None => (rest, None),
            };
            if key.is_empty() {
                return Err(bad_path(path, op, "empty path segment"));
            }
            return Ok(Field::Metadata(key.into(), segments(path, op, rest)?));
        }
        "" => return Err(bad_path(path, op, "empty path segment")),
        _ => {
            return Err(FilterError::UnknownField {
                path: path.to_string(),
                field: head.to_string(),
                op: op.to_string(),
            });
        }
    };
    match rest {
        None => Ok(scalar),
        Some(_) => Err(bad_path(path, op, &format!("{head} has no sub-fields"))),
    }
}

/// The segments after `payload.` or `metadata.<key>.`.
fn segments(path: &str, op: &str, rest: Option<&str>) -> Result<Box<[Segment]>, FilterError> {
    let Some(rest) = rest else {
        return Ok(Box::default());
    };
    rest.split('.')
        .map(|key| {
            if key.is_empty() {
                return Err(bad_path(path, op, "empty path segment"));
            }
            let canonical =
                key.bytes().all(|b| b.is_ascii_digit()) && (key == "0" || !key.starts_with('0'));
            Ok(Segment {
                key: key.into(),
                index: canonical.then(|| key.parse().ok()).flatten(),
            })
        })
        .collect()
}

/// Compiles a `$regex` operand with bounded size.
fn regex(path: &str, op: &str, source: &str) -> Result<regex::Regex, FilterError> {
    if source.len() > MAX_REGEX_BYTES {
        return Err(invalid(
            path,
            op,
            format!(
                "pattern is {} bytes, over the limit of {MAX_REGEX_BYTES}",
                source.len()
            ),
        ));
    }
    RegexBuilder::new(source)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // Syntax errors span lines (pattern, caret, reason); keep the reason.
            let text = e.to_string();
            let reason = text
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix("error: "))
                .unwrap_or(&text);
            invalid(path, op, format!("is not a valid regex: {reason}"))
        })
}

/// `path` extended by one segment, without the root placeholder.
fn child(path: &str, segment: &str) -> String {
    if path == ROOT {
        segment.to_string()
    } else {
        format!("{path}.{segment}")
    }
}

fn invalid(path: &str, op: &str, reason: impl Into<String>) -> FilterError {
    FilterError::Invalid {
        path: path.to_string(),
        op: op.to_string(),
        reason: reason.into(),
    }
}

fn bad_path(path: &str, op: &str, reason: &str) -> FilterError {
    invalid(path, op, format!("on an invalid path: {reason}"))
}

fn expects(path: &str, op: &str, what: &str, got: &Value) -> FilterError {
    let got = match got {
        Value::String(s) => format!("string {s:?}"),
        other => json_kind(other).to_string(),
    };
    invalid(path, op, format!("expects {what}, got {got}"))
}

/// A `$` key in a document's field position: known but field-level, or unknown.
fn misplaced_or_unknown(path: &str, op: &str) -> FilterError {
    let field_level = SHORTHAND_OPS.iter().any(|(_, name)| *name == op);
    if field_level {
        invalid(
            path,
            op,
            format!("must be applied to a field, as {{\"<field>\": {{\"{op}\": ...}}}}"),
        )
    } else {
        FilterError::UnknownOperator {
            path: path.to_string(),
            op: op.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Filter;
    use serde_json::json;

    fn error(source: Value) -> String {
        Filter::compile(&source)
            .expect_err("filter should be rejected")
            .to_string()
    }

    #[test]
    fn unknown_operator_names_path_and_operator() {
        assert_eq!(
            error(json!({"payload.score": {"$gtt": 5}})),
            "invalid filter at payload.score: unknown operator $gtt"
        );
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let msg = error(json!({"colour": "red"}));
        assert!(
            msg.starts_with("invalid filter at colour: unknown field colour for $eq"),
            "{msg}"
        );
        let msg = error(json!({"colour.x": {"$gt": 1}}));
        assert!(msg.contains("unknown field colour for $gt"), "{msg}");
    }

    #[test]
    fn wrong_operand_types_are_rejected_naming_the_operator() {
        let cases = [
            (json!({"source": {"$in": "a"}}), "$in expects an array"),
            (json!({"source": {"$nin": 3}}), "$nin expects an array"),
            (
                json!({"source": {"$exists": "yes"}}),
                "$exists expects a boolean",
            ),
            (json!({"source": {"$regex": 5}}), "$regex expects a string"),
            (
                json!({"source": {"$regex": "("}}),
                "$regex is not a valid regex",
            ),
            (json!({"$and": []}), "$and expects a non-empty array"),
            (json!({"$or": {"a": 1}}), "$or expects a non-empty array"),
            (json!({"priority": "urgent"}), "$eq expects a priority"),
            (
                json!({"time": {"$gt": "yesterday"}}),
                "$gt expects an RFC 3339",
            ),
        ];
        for (source, want) in cases {
            let msg = error(source.clone());
            assert!(msg.contains(want), "{source}: {msg}");
            assert!(msg.starts_with("invalid filter at "), "{msg}");
        }
    }

    #[test]
    fn logical_operand_paths_point_into_the_document() {
        assert_eq!(
            error(json!({"$or": [{"type": "a"}, 5]})),
            "invalid filter at $or.1: expected a filter document (an object), got number"
        );
        let msg = error(json!({"$and": [{"$or": []}]}));
        assert!(
            msg.starts_with("invalid filter at $and.0: $or expects"),
            "{msg}"
        );
        assert!(error(json!([1])).starts_with("invalid filter at (root): expected"));
    }

    #[test]
    fn empty_path_segments_and_bad_sub_fields_are_rejected() {
        for path in [
            "",
            "payload..a",
            "payload.",
            ".payload",
            "metadata.",
            "headers.",
        ] {
            let msg = error(json!({ path: 1 }));
            assert!(msg.contains("invalid path"), "{path}: {msg}");
        }
        for path in ["priority.x", "headers", "metadata", "type.a"] {
            let msg = error(json!({ path: 1 }));
            assert!(msg.contains("$eq on an invalid path"), "{path}: {msg}");
        }
    }

    #[test]
    fn field_operators_at_top_level_and_logical_operators_under_fields_are_misplaced() {
        let msg = error(json!({"$gt": 5}));
        assert!(msg.contains("$gt must be applied to a field"), "{msg}");
        let msg = error(json!({"$where": "1"}));
        assert_eq!(msg, "invalid filter at (root): unknown operator $where");
        let msg = error(json!({"payload.x": {"$or": [{"$gt": 1}]}}));
        assert!(msg.contains("payload.x: $or must be at the top"), "{msg}");
    }

    #[test]
    fn operator_objects_cannot_mix_in_field_names() {
        let msg = error(json!({"payload": {"$gt": 1, "a": 2}}));
        assert!(msg.contains("cannot share an object"), "{msg}");
    }

    #[test]
    fn regex_over_one_kib_is_rejected() {
        let msg = error(json!({"type": {"$regex": "a".repeat(MAX_REGEX_BYTES + 1)}}));
        assert!(msg.contains("over the limit"), "{msg}");
        assert!(Filter::compile(&json!({"type": {"$regex": "a".repeat(MAX_REGEX_BYTES)}})).is_ok());
    }

    #[test]
    fn regex_over_the_compiled_size_limit_is_rejected() {
        let msg = error(json!({"type": {"$regex": "\\w{500}\\w{500}"}}));
        assert!(msg.contains("$regex is not a valid regex"), "{msg}");
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_rejected_without_overflowing_the_stack() {
        let mut deep = json!({"priority": 5});
        for _ in 0..1_000 {
            deep = json!({ "$not": deep });
        }
        let msg = error(deep);
        assert!(msg.contains("nests deeper than 32 levels"), "{msg}");
        let mut value = json!(1);
        for _ in 0..40 {
            value = json!([value]);
        }
        let msg = error(json!({"payload.x": value}));
        assert!(msg.contains("payload.x: $eq nests deeper"), "{msg}");
    }

    #[test]
    fn moderate_nesting_compiles() {
        let mut doc = json!({"priority": 5});
        for _ in 0..14 {
            doc = json!({ "$or": [doc] });
        }
        assert!(Filter::compile(&doc).is_ok());
    }

    #[test]
    fn more_than_a_thousand_nodes_is_rejected() {
        let many: Vec<u32> = (0..2_000).collect();
        let msg = error(json!({"payload.n": {"$in": many}}));
        assert!(
            msg.contains("$in makes the filter larger than 1000 nodes"),
            "{msg}"
        );
        let wide: Map<String, Value> = (0..1_000)
            .map(|i| (format!("payload.f{i}"), json!(i)))
            .collect();
        assert!(error(Value::Object(wide)).contains("larger than 1000 nodes"));
        let ok: Vec<u32> = (0..900).collect();
        assert!(Filter::compile(&json!({"payload.n": {"$in": ok}})).is_ok());
    }

    #[test]
    fn shorthand_builds_the_equivalent_document() {
        let cases = [
            ("priority:gt:5", json!({"priority": {"$gt": 5}})),
            (
                "payload.status:eq:failed",
                json!({"payload.status": {"$eq": "failed"}}),
            ),
            ("payload.id:eq:\"5\"", json!({"payload.id": {"$eq": "5"}})),
            (
                "source:in:a|b|c",
                json!({"source": {"$in": ["a", "b", "c"]}}),
            ),
            (
                "payload.n:nin:1|x",
                json!({"payload.n": {"$nin": [1, "x"]}}),
            ),
            (
                "payload.x:exists:true",
                json!({"payload.x": {"$exists": true}}),
            ),
            (
                "type:regex:^task\\.",
                json!({"type": {"$regex": "^task\\."}}),
            ),
            ("type:regex:a:b|5", json!({"type": {"$regex": "a:b|5"}})),
            (
                "payload.s:contains:x:y",
                json!({"payload.s": {"$contains": "x:y"}}),
            ),
            ("source:eq:", json!({"source": {"$eq": ""}})),
        ];
        for (text, want) in cases {
            let filter = Filter::parse_shorthand(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(filter.source(), &want, "{text}");
        }
    }

    #[test]
    fn shorthand_errors_name_the_text() {
        for (text, want) in [
            ("priority", "expected field:op:value"),
            ("priority:gt", "expected field:op:value"),
            (":gt:5", "field before the first `:` is empty"),
            ("priority:gtt:5", "unknown operator \"gtt\""),
            ("colour:eq:red", "unknown field colour for $eq"),
            ("payload.x:exists:maybe", "$exists expects a boolean"),
            ("type:regex:(", "$regex is not a valid regex"),
        ] {
            let err = Filter::parse_shorthand(text).expect_err(text);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("invalid filter shorthand {text:?}: ")),
                "{msg}"
            );
            assert!(msg.contains(want), "{text}: {msg}");
            assert_eq!(err.code(), "invalid_filter");
        }
    }

    #[test]
    fn odd_input_returns_errors_instead_of_panicking() {
        let texts = [
            "::",
            ":::",
            "é:ü:ß",
            "payload.\u{0}:eq:\u{fffd}",
            "a:in:||||",
        ];
        for text in texts {
            let _ = Filter::parse_shorthand(text);
        }
        let long = format!("payload.x:in:{}", "1|".repeat(100_000));
        assert!(Filter::parse_shorthand(&long).is_err());
        let nested = format!("payload.x:eq:{}{}", "[".repeat(200), "]".repeat(200));
        assert!(Filter::parse_shorthand(&nested).is_ok());
        for source in [
            json!(null),
            json!("x"),
            json!({"payload.🦀.é": {"$eq": "\u{202e}"}}),
        ] {
            let _ = Filter::compile(&source);
        }
    }
}
