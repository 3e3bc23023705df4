//! Content filters (DESIGN §3): a Mongo-style language compiled once per
//! subscription and evaluated against each candidate event.
//!
//! `parse.rs` turns a JSON document (or `field:op:value` shorthand) into a
//! tree of nodes with paths pre-split and regexes pre-compiled; `eval.rs`
//! walks that tree per event without allocating or failing. The selector
//! (`crate::selector`) holds one [`Filter`] per subscription.
//!
//! # The language
//!
//! A filter is a JSON object. Its keys are field paths or the logical
//! operators `$and`, `$or` and `$not`, and all of them must hold (an empty
//! document matches every event):
//!
//! ```text
//! {"priority": {"$gte": 7}, "payload.status": "failed"}
//! {"$or": [{"source": {"$in": ["billing", "ledger"]}}, {"headers.x-test": {"$exists": true}}]}
//! {"$not": {"type": {"$regex": "^task\\."}}}
//! ```
//!
//! **Fields**: `payload` and `payload.a.b` (dotted path into the payload; a
//! numeric segment such as `payload.items.0.id` indexes an array),
//! `metadata.<path>` (the same, into `metadata`), `headers.<name>` (exact,
//! case-sensitive name), `priority` (a number 1..=10; operands may also be
//! names such as `"high"`), `time` (operands are RFC 3339 strings, compared
//! as instants), and the strings `id`, `type` (alias `topic`), `source`,
//! `target`, `key`, `correlation_id`, `causation_id` and `reply_to`.
//!
//! **Conditions**: a bare value means `$eq`; an object whose keys all start
//! with `$` is an operator object (its operators must all hold); an object
//! without `$` keys is compared for equality as a whole.
//!
//! | operator | operand | holds when the field… |
//! |---|---|---|
//! | `$eq`, `$ne` | any | equals (does not equal) the operand |
//! | `$gt`, `$gte`, `$lt`, `$lte` | any | orders after/before it: numbers numerically, strings by bytes, `time` as instants; other types never |
//! | `$in`, `$nin` | array | equals one (none) of its elements |
//! | `$exists` | bool | is present (absent); a JSON `null` is present |
//! | `$regex` | string ≤ 1 KiB | is a string (or array with a string) the regex matches, unanchored |
//! | `$contains` | any | is a string containing the operand string, or an array with an element equal to it |
//! | `$not` | operator object or value | does not satisfy it (a bare value means `$eq`) |
//!
//! Equality follows Mongo: `1` equals `1.0`, objects compare regardless of key
//! order, a missing field equals only `null`, and an array field equals a
//! value when the whole array or any element equals it (so
//! `{"payload.tags": "urgent"}` matches `["urgent", "billing"]`); `$ne` and
//! `$nin` are the exact negations of `$eq` and `$in`, so they hold for a
//! missing field. Paths do not fan out over arrays: `payload.items.id` does
//! not look inside each element of `items`.
//!
//! **Limits**: more than [`MAX_DEPTH`] levels (each document, field,
//! operator and value nested in an operand adds one) or more than
//! [`MAX_NODES`] nodes (the same things, counted; so an `$in` list holds at
//! most about a thousand values) are rejected, which bounds the work one
//! event costs.
//!
//! # Shorthand
//!
//! URL query strings use `field:op:value`, e.g. `priority:gt:5`,
//! `source:in:a|b|c`, `type:regex:^task\.`, `payload.x:exists:true`. The text
//! splits at its first two colons, so a value may contain more. The value is
//! read as JSON when it parses (`5` is a number, `"5"` a string) and as the
//! raw text otherwise; `in`/`nin` split it at `|` first, `regex` always takes
//! it raw. Several shorthand filters combine with [`Filter::and`].
//!
//! # Examples
//!
//! ```no_run
//! use event_router::{Event, filter::Filter};
//! use serde_json::json;
//!
//! let filter = Filter::compile(&json!({"type": {"$regex": "^task\\."}, "payload.status": "failed"}))?;
//! let urgent = Filter::parse_shorthand("priority:gte:high")?;
//! let both = Filter::and(vec![filter, urgent]);
//! let event = Event::new("task.done", json!({"status": "failed"}))?;
//! assert!(!both.matches(&event)); // priority is 5 (normal)
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod eval;
mod parse;

use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;

/// Deepest accepted nesting: each document, field, operator and value nested
/// in an operand adds one level.
pub const MAX_DEPTH: usize = 32;

/// Most nodes (documents, fields, operators and operand values) in one filter.
pub const MAX_NODES: usize = 1_000;

/// Longest accepted `$regex` source, in bytes.
pub const MAX_REGEX_BYTES: usize = 1024;

/// Compiled-size limit handed to the regex crate, in bytes.
const REGEX_SIZE_LIMIT: usize = 256 * 1024;

/// What the path of a filter document that is not under a field is called.
const ROOT: &str = "(root)";

/// Why a filter was rejected. Every message names the path and operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// An operator that is not part of the language, such as `$gtt`.
    #[error("invalid filter at {path}: unknown operator {op}")]
    UnknownOperator {
        /// The field path, or where the operator sits in the document.
        path: String,
        /// The operator as written.
        op: String,
    },
    /// A path whose first segment no event has, such as `colour`.
    #[error(
        "invalid filter at {path}: unknown field {field} for {op}; \
         fields are id, type, topic, source, target, time, priority, key, \
         correlation_id, causation_id, reply_to, headers.<name>, \
         metadata.<path>, payload.<path>"
    )]
    UnknownField {
        /// The field path as written.
        path: String,
        /// Its unknown first segment.
        field: String,
        /// The first operator applied to it (`$eq` for a bare value).
        op: String,
    },
    /// A known operator with an operand, placement or path it cannot take,
    /// or a filter over the size limits.
    #[error("invalid filter at {path}: {op} {reason}")]
    Invalid {
        /// The field path, or where the operator sits in the document.
        path: String,
        /// The operator.
        op: String,
        /// What is wrong, e.g. `expects an array, got string`.
        reason: String,
    },
    /// A filter document (the whole filter, or an `$and`/`$or`/`$not`
    /// operand) that is not a JSON object.
    #[error("invalid filter at {path}: expected a filter document (an object), got {got}")]
    NotADocument {
        /// Where the document sits, e.g. `$or.1`.
        path: String,
        /// The JSON type found instead.
        got: &'static str,
    },
    /// `field:op:value` shorthand that does not parse or compile.
    #[error("invalid filter shorthand {text:?}: {reason}")]
    Shorthand {
        /// The shorthand as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl FilterError {
    /// Stable `snake_case` code for client-facing errors: `invalid_filter`.
    pub fn code(&self) -> &'static str {
        "invalid_filter"
    }
}

/// A compiled filter: the JSON it came from plus its evaluation tree.
///
/// Cloning is cheap (the tree is shared). Equality, `Serialize` and `Debug`
/// go by the source JSON; `Deserialize` compiles.
#[derive(Clone)]
pub struct Filter {
    source: Value,
    root: Arc<Node>,
}

impl Filter {
    /// Compiles a JSON filter document (see the [module docs](self)).
    ///
    /// # Errors
    /// A [`FilterError`] naming the offending path and operator.
    pub fn compile(source: &Value) -> Result<Filter, FilterError> {
        let root = parse::compile(source)?;
        Ok(Filter {
            source: source.clone(),
            root: Arc::new(root),
        })
    }

    /// Parses `field:op:value` shorthand, e.g. `priority:gt:5`. Its source
    /// is the equivalent document, `{"priority": {"$gt": 5}}`.
    ///
    /// # Errors
    /// [`FilterError::Shorthand`] naming the text.
    pub fn parse_shorthand(text: &str) -> Result<Filter, FilterError> {
        let source = parse::shorthand(text)?;
        let root = parse::compile(&source).map_err(|e| FilterError::Shorthand {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Filter {
            source,
            root: Arc::new(root),
        })
    }

    /// The conjunction of `filters`, with source `{"$and": [...]}` (or `{}`,
    /// matching everything, when `filters` is empty).
    ///
    /// The parts are not compiled again, so the result may exceed
    /// [`MAX_NODES`] or [`MAX_DEPTH`] by what the parts add up to; such a
    /// result works, but its source would not compile back on its own.
    #[must_use]
    pub fn and(filters: Vec<Filter>) -> Filter {
        if filters.is_empty() {
            return Filter {
                source: Value::Object(Map::new()),
                root: Arc::new(Node::And(Vec::new())),
            };
        }
        let (sources, nodes) = filters
            .into_iter()
            .map(|f| (f.source, Arc::unwrap_or_clone(f.root)))
            .unzip();
        let mut source = Map::new();
        source.insert("$and".to_string(), Value::Array(sources));
        Filter {
            source: Value::Object(source),
            root: Arc::new(Node::And(nodes)),
        }
    }

    /// Whether `event` passes. Never fails: a comparison across types is
    /// simply false.
    pub fn matches(&self, event: &Event) -> bool {
        self.root.eval(event)
    }

    /// The JSON document this filter was compiled from.
    pub fn source(&self) -> &Value {
        &self.source
    }
}

/// The conjunction of `filters`; see [`Filter::and`].
#[must_use]
pub fn and(filters: Vec<Filter>) -> Filter {
    Filter::and(filters)
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Filter").field(&self.source).finish()
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

/// A compiled filter document.
#[derive(Debug, Clone)]
enum Node {
    /// Every child holds (true when empty).
    And(Vec<Node>),
    /// Some child holds.
    Or(Vec<Node>),
    /// The child does not hold.
    Not(Box<Node>),
    /// One field, resolved once, satisfies every test.
    Field { field: Field, tests: Vec<Test> },
}

/// Where a condition looks in the event.
#[derive(Debug, Clone)]
enum Field {
    Id,
    Type,
    Source,
    Target,
    Key,
    CorrelationId,
    CausationId,
    ReplyTo,
    Time,
    Priority,
    /// `headers.<name>`.
    Header(Box<str>),
    /// `payload` followed by a path, possibly empty.
    Payload(Box<[Segment]>),
    /// `metadata.<key>` followed by a path, possibly empty.
    Metadata(Box<str>, Box<[Segment]>),
}

/// One segment of a JSON path: an object key, and an array index if the key
/// is a canonical non-negative integer.
#[derive(Debug, Clone)]
struct Segment {
    key: Box<str>,
    index: Option<usize>,
}

/// One operator applied to a resolved field.
#[derive(Debug, Clone)]
enum Test {
    Eq(Literal),
    Ne(Literal),
    Cmp(Cmp, Literal),
    In(Vec<Literal>),
    Nin(Vec<Literal>),
    Exists(bool),
    Regex(Regex),
    Contains(Value),
    /// The tests do not all hold.
    Not(Vec<Test>),
}

/// An ordering operator.
#[derive(Debug, Clone, Copy)]
enum Cmp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// An operand prepared for its field: priority names become numbers and
/// strings compared with `time` become instants.
#[derive(Debug, Clone)]
enum Literal {
    Json(Value),
    Time(Timestamp),
}
