//! What an event costs in memory, for the byte bounds of history, live
//! queues and durable queues.
//!
//! The figure is an estimate of the heap an [`Event`] holds (its struct,
//! strings, headers, metadata and payload tree), not an exact allocator
//! count: close enough that a byte bound of N keeps the retained events
//! near N bytes, cheap enough to compute once per published event.

use std::mem::size_of;

use serde_json::Value;

use crate::event::Event;

/// Bytes of bookkeeping charged per map entry (hashing, pointers).
const ENTRY_OVERHEAD: usize = 32;

/// Estimated bytes `event` keeps alive.
pub fn event_footprint(event: &Event) -> usize {
    let strings = [
        Some(&event.id),
        Some(&event.topic),
        event.source.as_ref(),
        event.target.as_ref(),
        event.correlation_id.as_ref(),
        event.causation_id.as_ref(),
        event.reply_to.as_ref(),
        event.key.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(String::len)
    .sum::<usize>();
    let headers = event
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + ENTRY_OVERHEAD)
        .sum::<usize>();
    let metadata = event
        .metadata
        .iter()
        .map(|(k, v)| k.len() + ENTRY_OVERHEAD + value_footprint(v))
        .sum::<usize>();
    size_of::<Event>() + strings + headers + metadata + value_footprint(&event.payload)
}

/// Estimated heap of a JSON value (including its own slot), walked with an
/// explicit stack so that deep documents cannot overflow the thread's.
fn value_footprint(value: &Value) -> usize {
    let mut total = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += size_of::<Value>();
        match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
            Value::String(s) => total += s.len(),
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => {
                for (k, item) in map {
                    total += k.len() + ENTRY_OVERHEAD;
                    stack.push(item);
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_grows_with_the_payload() {
        let small = Event::new("t", serde_json::json!("x")).unwrap();
        let big = Event::new("t", serde_json::json!("x".repeat(1 << 20))).unwrap();
        assert!(event_footprint(&big) >= (1 << 20) + event_footprint(&small) - 1);
        assert!(
            event_footprint(&small) < 1024,
            "{}",
            event_footprint(&small)
        );
    }

    #[test]
    fn nested_documents_count_every_key_and_value() {
        let flat = serde_json::json!({"a": 1});
        let nested = serde_json::json!({"a": {"b": {"c": [1, 2, "three"]}}});
        assert!(value_footprint(&nested) > value_footprint(&flat) + 4 * size_of::<Value>());
    }
}
