//! A stable, seeded, bounded stand-in for the cargo-fuzz targets in
//! `fuzz/` (which need nightly): the same target bodies
//! (`fuzz/common/targets.rs`) run on inputs from a deterministic mutator
//! seeded with the committed corpus.
//!
//! `FUZZ_ITERS` sets the executions per target (default 20 000 here;
//! `scripts/fuzz.sh` runs 1 000 000 per target). `FUZZ_SEED` changes the
//! generator seed. A panicking input is printed (escaped) before the test
//! fails, ready to add to the corpus.

#[path = "../fuzz/common/targets.rs"]
mod targets;

use std::path::Path;

const DEFAULT_ITERS: u64 = 20_000;
/// Longest generated input, in bytes.
const MAX_LEN: usize = 4096;

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens the mutator splices in: JSON syntax, protocol words, filter
/// operators, topic wildcards.
const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e308",
    "1.5",
    "\"op\"",
    "\"type\"",
    "\"id\"",
    "\"event\"",
    "\"events\"",
    "\"topic\"",
    "\"topics\"",
    "\"payload\"",
    "\"pattern\"",
    "\"filter\"",
    "\"group\"",
    "\"token\"",
    "\"publish\"",
    "\"subscribe\"",
    "\"publish_batch\"",
    "\"request\"",
    "\"ack\"",
    "\"nack\"",
    "\"auth\"",
    "\"publish_event\"",
    "\"subscription\"",
    "\"conditions\"",
    "\"priority\"",
    "\"ttl\"",
    "\"$and\"",
    "\"$or\"",
    "\"$not\"",
    "\"$nor\"",
    "\"$eq\"",
    "\"$ne\"",
    "\"$gt\"",
    "\"$gte\"",
    "\"$lt\"",
    "\"$lte\"",
    "\"$in\"",
    "\"$nin\"",
    "\"$exists\"",
    "\"$regex\"",
    "\"$size\"",
    "\"$all\"",
    "\"$elemMatch\"",
    "\"$type\"",
    "\"$mod\"",
    "\"payload.a.b\"",
    ":eq:",
    ":gt:",
    ":in:",
    ":exists:",
    ".",
    "*",
    "#",
    "task",
    "agent",
    "pattern:",
    "^",
    "$",
    "(",
    ")",
    "\\",
    "\n",
    ",",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{fffd}",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(8) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 | 3 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, token.iter().copied());
            }
            4 if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(16)).min(input.len());
                input.drain(start..end);
            }
            5 if !pool.is_empty() => {
                // Splice a piece of another corpus entry.
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let start = rng.below(other.len());
                    let end = (start + 1 + rng.below(64)).min(other.len());
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, other[start..end].iter().copied());
                }
            }
            6 if !input.is_empty() => {
                // Duplicate a slice: deep nesting, long lists.
                let start = rng.below(input.len());
                let end = (start + 1 + rng.below(32)).min(input.len());
                let piece = input[start..end].to_vec();
                let times = 1 + rng.below(8);
                for _ in 0..times {
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, piece.iter().copied());
                }
            }
            _ => {
                let keep = rng.below(input.len() + 1);
                input.truncate(keep);
            }
        }
    }
    input.truncate(MAX_LEN);
}

fn corpus(target: &str, seeds: &[&str]) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut pool: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            if let Ok(bytes) = std::fs::read(&f) {
                pool.push(bytes);
            }
        }
    }
    pool
}

/// Runs `target` on every corpus entry, then on `FUZZ_ITERS` mutants.
/// Returns the number of executions.
fn run(name: &str, target: fn(&[u8]), seeds: &[&str]) -> u64 {
    let iters: u64 = std::env::var("FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ITERS);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_F00D);
    let pool = corpus(name, seeds);
    assert!(!pool.is_empty(), "no corpus for {name}");
    let mut rng = Rng(seed ^ name.len() as u64 ^ 0x9E37_79B9_7F4A_7C15);
    let exec = |input: &[u8]| {
        let result = std::panic::catch_unwind(|| target(input));
        if let Err(panic) = result {
            eprintln!(
                "{name}: input that panicked: {:?}",
                String::from_utf8_lossy(input)
            );
            std::panic::resume_unwind(panic);
        }
    };
    let mut executions = 0u64;
    for input in &pool {
        exec(input);
        executions += 1;
    }
    let started = std::time::Instant::now();
    let mut input = Vec::new();
    for _ in 0..iters {
        // Restart from a corpus entry now and then; otherwise keep
        // mutating the last input.
        if input.is_empty() || rng.below(4) == 0 {
            input.clone_from(&pool[rng.below(pool.len())]);
        }
        mutate(&mut rng, &mut input, &pool);
        exec(&input);
        executions += 1;
    }
    eprintln!(
        "fuzz {name}: {executions} executions in {:.1} s, no panic",
        started.elapsed().as_secs_f64()
    );
    executions
}

#[test]
fn fuzz_ws_frame_v1_and_v2() {
    let n = run(
        "ws_frame",
        targets::ws_frame,
        &[
            r#"{"op":"publish","id":1,"event":{"topic":"task.x","payload":{"a":1}}}"#,
            r#"{"op":"subscribe","id":2,"topics":["task.*"],"filter":{"payload.a":{"$gt":1}}}"#,
            r#"{"type":"publish_event","event":{"type":"task.created","priority":"high","source":"p","payload":{}}}"#,
            r#"{"type":"subscribe","subscription":{"type":"pattern","pattern":"task.*"}}"#,
            r#"{"op":"auth","token":"erk_x"}"#,
        ],
    );
    assert!(n > 0);
}

#[test]
fn fuzz_filter_compiler() {
    let n = run(
        "filter",
        targets::filter,
        &[
            r#"{"payload.n":{"$gte":1},"$or":[{"payload.s":"x"},{"payload.a":{"$size":3}}]}"#,
            "payload.n:gt:1",
            r#"{"payload.s":{"$regex":"^x"}}"#,
        ],
    );
    assert!(n > 0);
}

#[test]
fn fuzz_topic_and_pattern_parser() {
    let n = run(
        "topic",
        targets::topic,
        &[
            "task.*\ntask.#,agent.*\ntask.x\ntask.a.b\nagent.x",
            "#\n*.#\na\na.b",
            "pattern:^task\\.\n#\ntask.x",
        ],
    );
    assert!(n > 0);
}
