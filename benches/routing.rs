//! Routing throughput: how many events per second one core can match against
//! 10,000 subscriptions of mixed patterns (literal, `*`, `#`, regex) with
//! content filters on a share of them.
//!
//! Run: `cargo bench --bench routing` (add `-- --subscriptions N --events M`).
//! Prints one line per scenario; no assertions (targets live in the notes).

use std::hint::black_box;
use std::time::Instant;

use event_router::Event;
use event_router::selector::Selector;
use event_router::topic::TopicTrie;
use serde_json::json;

struct Args {
    subscriptions: usize,
    events: usize,
}

fn args() -> Args {
    let mut a = Args {
        subscriptions: 10_000,
        events: 2_000_000,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let next = argv.get(i + 1).and_then(|v| v.parse().ok());
        match (argv[i].as_str(), next) {
            ("--subscriptions", Some(n)) => a.subscriptions = n,
            ("--events", Some(n)) => a.events = n,
            _ => {}
        }
        i += 1;
    }
    a
}

/// A deterministic mix: 50% literal, 25% `*`, 15% `#`, 1% regex, and a
/// filter on every 10th subscription.
fn subscription(i: usize) -> Selector {
    let (svc, evt) = (i % 500, i % 37);
    let topic = match i % 100 {
        0 => format!("pattern:^svc{svc}\\.evt[0-9]+$"),
        1..=50 => format!("svc{svc}.evt{evt}"),
        51..=75 => format!("svc{svc}.*"),
        76..=90 => format!("svc{svc}.evt{evt}.#"),
        _ => format!("*.evt{evt}"),
    };
    let filter = (i % 10 == 0)
        .then(|| json!({"priority": {"$gte": 5}, "payload.region": {"$in": ["eu", "us"]}}));
    Selector::parse(&[topic], filter.as_ref()).expect("benchmark selectors are valid")
}

fn main() {
    let args = args();
    let selectors: Vec<Selector> = (0..args.subscriptions).map(subscription).collect();
    let mut trie = TopicTrie::new();
    for (i, s) in selectors.iter().enumerate() {
        for p in s.patterns() {
            trie.insert(p, i as u32);
        }
    }
    let events: Vec<Event> = (0..1024)
        .map(|i| {
            let mut e = Event::new(
                format!("svc{}.evt{}", (i * 7) % 600, (i * 3) % 40),
                json!({"region": "eu", "n": i}),
            )
            .expect("valid topic");
            e.priority = event_router::Priority::new((i % 10 + 1) as u8).expect("1..=10");
            e
        })
        .collect();

    let mut matched = 0usize;
    let mut keys = Vec::with_capacity(64);
    let start = Instant::now();
    for n in 0..args.events {
        let event = &events[n % events.len()];
        keys.clear();
        trie.matches_into(&event.topic, &mut keys);
        for &k in &keys {
            if selectors[k as usize].matches_filter(event) {
                matched += 1;
            }
        }
        black_box(&keys);
    }
    let elapsed = start.elapsed();
    let rate = args.events as f64 / elapsed.as_secs_f64();
    println!(
        "routing: {} subscriptions, {} events in {:.3}s = {:.0} route-matches/s (single core), {:.2} deliveries/event",
        args.subscriptions,
        args.events,
        elapsed.as_secs_f64(),
        rate,
        matched as f64 / args.events as f64
    );

    // The naive baseline the trie replaces: test every subscription per event.
    let naive_events = (args.events / 1000).max(100);
    let start = Instant::now();
    let mut naive_matched = 0usize;
    for n in 0..naive_events {
        let event = &events[n % events.len()];
        naive_matched += selectors.iter().filter(|s| s.matches(event)).count();
    }
    let naive = naive_events as f64 / start.elapsed().as_secs_f64();
    println!(
        "linear scan baseline: {naive:.0} events/s ({:.2} deliveries/event); trie speed-up {:.0}x",
        naive_matched as f64 / naive_events as f64,
        rate / naive
    );
}
