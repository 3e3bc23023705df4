//! Durations as people write them (`250ms`, `30s`, `5m`, `1h`), for
//! configuration files, flags and resources. A leaf: it names no other
//! module, so that brokers and the config can both use it.

use std::time::Duration;

/// Parses `250ms`, `30s`, `5m`, `1h`, `1d`, or a bare number of seconds
/// (fractions allowed: `1.5s`, `0.5`).
///
/// # Errors
/// A message naming the text when it is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 250ms, 30s, 5m, 1h"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {other:?} (ms, s, m, h, d)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("invalid duration {text:?}: out of range"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

/// Serde helpers: a `Duration` as `"30s"`; also reads numbers as seconds
/// (`#[serde(with = "crate::duration::as_text")]`).
pub mod as_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serializes as a duration string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    /// Reads a duration string or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Duration::try_from_secs_f64(s).map_err(D::Error::custom),
            Raw::Text(t) => super::parse_duration(&t).map_err(D::Error::custom),
        }
    }
}
