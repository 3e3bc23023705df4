//! The bodies of the fuzz targets, shared by the cargo-fuzz binaries
//! (`fuzz/fuzz_targets/*.rs`) and the stable, seeded property run
//! (`tests/fuzz_parsers.rs`, `scripts/fuzz.sh`). Each takes arbitrary
//! bytes, must never panic, and checks a few properties with an oracle.

#![allow(dead_code)]

use event_router::Event;
use event_router::auth::acl;
use event_router::filter::Filter;
use event_router::server::protocol::{self, ClientFrame, Parsed};
use event_router::server::session::build_selector;
use event_router::server::{ApiError, ws_v1};
use event_router::topic::{self, Pattern, TopicTrie};
use serde_json::{Value, json};

/// Payload limit used when validating fuzzed events.
const MAX_PAYLOAD: usize = 64 * 1024;

/// WebSocket frames, v2 (`op`) and seed v1 (`type`), and the auth frame:
/// parse, then do what the session would do short of the broker.
pub fn ws_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = event_router::auth::parse_auth_frame(text);
    match protocol::parse(text) {
        Ok(Parsed::V2(frame)) => v2(frame),
        Ok(Parsed::V1(value)) => {
            if let Err(e) = ws_v1::check(value, MAX_PAYLOAD) {
                assert!(!e.code.is_empty());
                let _ = ws_v1::error_frame(&None, &e);
            }
        }
        Err(e) => {
            let e: ApiError = e.into();
            assert!(e.status.is_client_error(), "{e}");
            let _ = protocol::ServerFrame::error(&None, &e);
        }
    }
}

fn v2(frame: ClientFrame) {
    match frame {
        ClientFrame::Publish { event, .. } | ClientFrame::Request { event, .. } => {
            let _ = Event::from_json(event, MAX_PAYLOAD);
        }
        ClientFrame::PublishBatch { events, .. } => {
            for event in events {
                let _ = Event::from_json(event, MAX_PAYLOAD);
            }
        }
        ClientFrame::Subscribe(s) => {
            let _ = build_selector(&s.topics, s.pattern.as_deref(), s.filter.as_ref());
        }
        _ => {}
    }
}

fn sample_events() -> Vec<Event> {
    let payloads = [
        json!({"n": 1, "s": "x", "a": [1, 2, 3], "o": {"k": true, "f": 1.5}}),
        json!({"n": -7, "s": "", "a": [], "o": null}),
        json!(null),
        json!([1, "two", {"three": 3}]),
    ];
    payloads
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| Event::new(format!("task.t{i}"), p).ok())
        .collect()
}

/// The filter compiler: a JSON filter document or shorthand text; a
/// compiled filter is evaluated against a few events.
pub fn filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let events = sample_events();
    if let Ok(f) = Filter::parse_shorthand(text) {
        for e in &events {
            let _ = f.matches(e);
        }
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        match Filter::compile(&value) {
            Ok(f) => {
                for e in &events {
                    let _ = f.matches(e);
                }
                // Compiling what we accepted again gives the same answers.
                if let Ok(again) = Filter::compile(f.source()) {
                    for e in &events {
                        assert_eq!(f.matches(e), again.matches(e));
                    }
                }
            }
            Err(e) => assert!(!e.code().is_empty()),
        }
    }
}

/// Topics and patterns: the first line is a subscription pattern, the
/// second a comma-separated list of allowed patterns, the rest topics.
/// Checks that the trie agrees with direct matching, and that the ACL
/// containment check is sound: when it says a pattern is covered, every
/// topic the pattern matches is matched by an allowed pattern.
pub fn topic(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let sub = lines.next().unwrap_or_default();
    let allowed_line = lines.next().unwrap_or_default();
    let topics: Vec<&str> = lines.collect();
    let sub = Pattern::parse(sub);
    let allowed: Vec<Pattern> = allowed_line
        .split(',')
        .filter_map(|p| Pattern::parse(p).ok())
        .collect();
    let mut trie = TopicTrie::new();
    for (i, p) in allowed.iter().enumerate() {
        trie.insert(p, i);
    }
    let covered = match &sub {
        Ok(p) => {
            let _ = p.to_source();
            let _ = p.is_literal();
            acl::covered(p, &allowed)
        }
        Err(_) => false,
    };
    for t in topics.iter().take(64) {
        let valid = topic::validate_topic(t).is_ok();
        let direct: Vec<usize> = allowed
            .iter()
            .enumerate()
            .filter(|(_, p)| p.matches(t))
            .map(|(i, _)| i)
            .collect();
        if valid {
            let mut via_trie = trie.matches(t);
            via_trie.sort_unstable();
            via_trie.dedup();
            assert_eq!(
                direct, via_trie,
                "trie and direct matching disagree on {t:?}"
            );
        }
        if let Ok(p) = &sub
            && covered
            && valid
            && p.matches(t)
        {
            assert!(
                !direct.is_empty(),
                "{:?} was judged covered by {allowed_line:?} but {t:?} matches none",
                p.to_source()
            );
        }
    }
}
