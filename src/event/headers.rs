//! An event's string headers.
//!
//! With tracing on, every event carries a `traceparent`, written when it is
//! published and again in each delivered copy; kept as a map entry it cost
//! a tree node and two strings per write and per copy. A version-00 value
//! has a fixed length (55 bytes), so it is kept inline instead: writing it
//! and copying the event allocate nothing. Every other header (and a
//! `traceparent` of another form, passed along as it came) is an entry of a
//! sorted map. On the wire the headers are one JSON object of strings,
//! sorted by name, whichever way each is kept.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The header carrying an event's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Length of a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// A version-00 `traceparent`, as its bytes.
pub type InlineTraceparent = [u8; TRACEPARENT_LEN];

/// An event's headers: string names to string values, sorted by name.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// `traceparent` when it has the version-00 form; then `other` holds
    /// no entry of that name.
    traceparent: Option<InlineTraceparent>,
    other: BTreeMap<String, String>,
}

/// Whether `value` is kept inline: exactly `00-<32 hex>-<16 hex>-<2 hex>`
/// in lower case (what the W3C specification lets a version-00 sender
/// write). Anything else is kept as it came.
fn inline_form(value: &str) -> Option<InlineTraceparent> {
    let bytes: InlineTraceparent = value.as_bytes().try_into().ok()?;
    let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
    let form = bytes[..2] == *b"00"
        && [2, 35, 52].iter().all(|&i| bytes[i] == b'-')
        && [3..35, 36..52, 53..55]
            .into_iter()
            .all(|range| bytes[range].iter().all(hex));
    form.then_some(bytes)
}

/// The text of inline `traceparent` bytes (always ASCII).
fn text(bytes: &InlineTraceparent) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// The value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        match &self.traceparent {
            Some(inline) if name == TRACEPARENT => Some(text(inline)),
            _ => self.other.get(name).map(String::as_str),
        }
    }

    /// Whether header `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets header `name`, returning the value it replaces.
    pub fn insert(&mut self, name: String, value: String) -> Option<String> {
        if name == TRACEPARENT
            && let Some(inline) = inline_form(&value)
        {
            let old = self.remove(TRACEPARENT);
            self.traceparent = Some(inline);
            return old;
        }
        // A value of another form replaces an inline one.
        let old_inline = if name == TRACEPARENT {
            self.traceparent.take().map(|t| text(&t).to_string())
        } else {
            None
        };
        self.other.insert(name, value).or(old_inline)
    }

    /// Sets `traceparent` to a version-00 value the caller formed (the
    /// trace context writer); nothing is allocated.
    pub fn set_traceparent(&mut self, value: InlineTraceparent) {
        if self.traceparent.is_none() {
            self.other.remove(TRACEPARENT);
        }
        self.traceparent = Some(value);
    }

    /// Removes header `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        match self.traceparent.take() {
            Some(inline) if name == TRACEPARENT => Some(text(&inline).to_string()),
            inline => {
                self.traceparent = inline;
                self.other.remove(name)
            }
        }
    }

    /// How many headers are set.
    pub fn len(&self) -> usize {
        self.other.len() + usize::from(self.traceparent.is_some())
    }

    /// Whether no header is set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The headers, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        fn pair<'a>((k, v): (&'a String, &'a String)) -> (&'a str, &'a str) {
            (k, v)
        }
        // With an inline `traceparent` the map holds no entry of that name:
        // it goes between the entries before and after its place.
        let (before_end, after) = match &self.traceparent {
            Some(_) => (
                Bound::Excluded(TRACEPARENT),
                Some(
                    self.other
                        .range::<str, _>((Bound::Excluded(TRACEPARENT), Bound::Unbounded)),
                ),
            ),
            None => (Bound::Unbounded, None),
        };
        let before = self.other.range::<str, _>((Bound::Unbounded, before_end));
        let inline = self.traceparent.as_ref().map(|t| (TRACEPARENT, text(t)));
        before
            .map(pair)
            .chain(inline)
            .chain(after.into_iter().flatten().map(pair))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(String, String)> for Headers {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in iter {
            headers.insert(name, value);
        }
        headers
    }
}

impl From<BTreeMap<String, String>> for Headers {
    fn from(map: BTreeMap<String, String>) -> Headers {
        map.into_iter().collect()
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, value) in self.iter() {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A header name or value, borrowed from the input when it can be (so
/// that reading `traceparent` allocates nothing).
enum Str<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str::Owned(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str::Owned(v))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

impl Str<'_> {
    fn as_str(&self) -> &str {
        match self {
            Str::Borrowed(s) => s,
            Str::Owned(s) => s,
        }
    }

    fn into_string(self) -> String {
        match self {
            Str::Borrowed(s) => s.to_string(),
            Str::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string headers")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Headers, A::Error> {
                let mut headers = Headers::new();
                while let Some(name) = access.next_key::<Str<'de>>()? {
                    let value = access.next_value::<Str<'de>>()?;
                    // `insert` would find the inline form too, but only
                    // after the name and value were copied into strings.
                    match (name.as_str() == TRACEPARENT)
                        .then(|| inline_form(value.as_str()))
                        .flatten()
                    {
                        Some(inline) => headers.set_traceparent(inline),
                        None => {
                            headers.insert(name.into_string(), value.into_string());
                        }
                    }
                }
                Ok(headers)
            }
        }
        deserializer.deserialize_map(HeadersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_traceparent_is_inline_and_reads_back_as_given() {
        let mut h = Headers::new();
        assert_eq!(h.insert(TRACEPARENT.into(), VALID.into()), None);
        assert!(h.traceparent.is_some() && h.other.is_empty());
        assert_eq!(h.get(TRACEPARENT), Some(VALID));
        assert_eq!(h.len(), 1);
        let other = VALID.replace("-01", "-00");
        assert_eq!(
            h.insert(TRACEPARENT.into(), other.clone()),
            Some(VALID.into())
        );
        assert_eq!(h.remove(TRACEPARENT), Some(other));
        assert!(h.is_empty());
    }

    #[test]
    fn other_traceparent_forms_pass_through_as_strings() {
        for odd in [
            "00-abc-def-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ] {
            let mut h = Headers::new();
            h.insert(TRACEPARENT.into(), odd.into());
            assert!(h.traceparent.is_none(), "{odd}");
            assert_eq!(h.get(TRACEPARENT), Some(odd));
            // An inline one replaces it, and the other way round.
            h.insert(TRACEPARENT.into(), VALID.into());
            assert_eq!(h.len(), 1);
            assert_eq!(h.insert(TRACEPARENT.into(), odd.into()), Some(VALID.into()));
            assert_eq!((h.len(), h.get(TRACEPARENT)), (1, Some(odd)));
        }
    }

    #[test]
    fn iteration_and_json_are_sorted_by_name_whichever_way_each_is_kept() {
        let mut h = Headers::new();
        for name in [
            "zeta",
            "alpha",
            "tracestate",
            "traceparent",
            "tracf",
            "x-tenant",
        ] {
            h.insert(name.into(), format!("{name}-value"));
        }
        h.insert(TRACEPARENT.into(), VALID.into());
        let names: Vec<&str> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            [
                "alpha",
                "traceparent",
                "tracestate",
                "tracf",
                "x-tenant",
                "zeta"
            ]
        );
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"alpha":"alpha-value","traceparent":"{VALID}","tracestate":"tracestate-value","tracf":"tracf-value","x-tenant":"x-tenant-value","zeta":"zeta-value"}}"#
            )
        );
        let back: Headers = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert!(back.traceparent.is_some());
        // Escaped input is read too.
        let escaped: Headers =
            serde_json::from_str(r#"{"trace\u0070arent":"00-abc","k":"a\"b"}"#).unwrap();
        assert_eq!(escaped.get(TRACEPARENT), Some("00-abc"));
        assert_eq!(escaped.get("k"), Some("a\"b"));
    }

    #[test]
    fn non_string_values_are_refused() {
        let error = serde_json::from_str::<Headers>(r#"{"n":1}"#).unwrap_err();
        assert!(error.to_string().contains("a string"), "{error}");
    }
}
