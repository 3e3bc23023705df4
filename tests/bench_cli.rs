//! `event-router bench` as users run it: the real binary, against a router
//! it starts itself (`--embedded`) and against a separate `serve` process,
//! checking that the JSON report adds up. Counts are small: these tests
//! check behaviour, never speed.

mod common;

use std::time::Duration;

use common::process::{Finished, RouterProcess, run};
use serde_json::Value;

/// Bound of one bench run (its own `--timeout` is shorter).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn bench(args: &[&str]) -> Finished {
    let mut argv = vec!["bench", "--json", "--timeout", "30s"];
    argv.extend_from_slice(args);
    run(&argv, RUN_TIMEOUT)
}

fn report(done: &Finished) -> Value {
    serde_json::from_str(&done.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON report ({e}):\n{}\nstderr:\n{}",
            done.stdout, done.stderr
        )
    })
}

fn n(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("report field {field} is not a count: {report}"))
}

fn ms(report: &Value, field: &str) -> f64 {
    report["latency_ms"][field]
        .as_f64()
        .unwrap_or_else(|| panic!("latency field {field} missing: {report}"))
}

/// What every complete, loss-free report satisfies.
fn assert_complete(report: &Value, events: u64, expected: u64) {
    assert_eq!(n(report, "events"), events, "{report}");
    assert_eq!(n(report, "published"), events, "{report}");
    assert_eq!(n(report, "expected"), expected, "{report}");
    assert_eq!(n(report, "delivered"), expected, "{report}");
    assert_eq!(n(report, "received"), expected, "{report}");
    for zero in ["lost", "duplicates", "dropped", "errors"] {
        assert_eq!(n(report, zero), 0, "{zero}: {report}");
    }
    assert_eq!(report["timed_out"], false, "{report}");
    assert_eq!(report["first_error"], Value::Null, "{report}");
    let latency = &report["latency_ms"];
    assert_eq!(latency["count"].as_u64(), Some(expected), "{report}");
    let order = ["p50", "p90", "p99", "p99.9", "max"].map(|f| ms(report, f));
    assert!(order[0] > 0.0, "latencies are measured: {report}");
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "percentiles are ordered: {order:?}"
    );
    assert!(ms(report, "mean") <= ms(report, "max"), "{report}");
    assert!(n(report, "foreign") == 0, "{report}");
    assert!(
        report["delivery_rate"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    assert!(
        report["elapsed_seconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
}

#[test]
fn embedded_live_bench_delivers_every_event_to_every_subscriber() {
    let done = bench(&[
        "--embedded",
        "--events",
        "2000",
        "--publishers",
        "2",
        "--subscribers",
        "3",
        "--batch",
        "50",
    ]);
    assert!(done.success(), "stderr:\n{}", done.stderr);
    let r = report(&done);
    assert_complete(&r, 2000, 2000 * 3);
    assert_eq!(r["mode"], "live");
    assert_eq!(r["embedded"], true);
    assert!(
        r["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("ws://127.0.0.1:")),
        "{r}"
    );
    assert!(
        done.stderr.contains("bench: published 2000/2000"),
        "a final progress line on stderr:\n{}",
        done.stderr
    );
}

#[test]
fn durable_bench_delivers_each_event_once_to_the_group() {
    let done = bench(&[
        "--embedded",
        "--events",
        "1000",
        "--subscribers",
        "2",
        "--durable",
        "bench-workers",
        "--batch",
        "20",
    ]);
    assert!(done.success(), "stderr:\n{}", done.stderr);
    let r = report(&done);
    assert_complete(&r, 1000, 1000);
    assert_eq!(r["mode"], "durable");
    assert_eq!(r["group"], "bench-workers");
}

#[test]
fn open_loop_bench_keeps_to_the_schedule_and_single_publishes() {
    // 600 events at 2000/s: the last one is due 0.2995 s after the start,
    // so publishing cannot finish earlier than that.
    let done = bench(&[
        "--embedded",
        "--events",
        "600",
        "--rate",
        "2000",
        "--batch",
        "1",
    ]);
    assert!(done.success(), "stderr:\n{}", done.stderr);
    let r = report(&done);
    assert_complete(&r, 600, 600);
    assert_eq!(r["rate"].as_f64(), Some(2000.0));
    let publish_seconds = r["publish_seconds"].as_f64().unwrap();
    assert!(publish_seconds >= 0.2995, "{r}");
}

#[test]
fn in_process_bench_uses_no_socket() {
    let done = bench(&["--embedded", "--in-process", "--events", "1000"]);
    assert!(done.success(), "stderr:\n{}", done.stderr);
    let r = report(&done);
    assert_complete(&r, 1000, 1000);
    assert_eq!(r["target"], "in-process");
}

#[test]
fn bench_drives_a_separately_started_router() {
    let router = RouterProcess::start(&[]);
    let url = router.http_url();
    let done = bench(&[
        "--url",
        &url,
        "--events",
        "1500",
        "--subscribers",
        "2",
        "--batch",
        "30",
    ]);
    assert!(
        done.success(),
        "stderr:\n{}\nrouter:\n{}",
        done.stderr,
        router.output()
    );
    let r = report(&done);
    assert_complete(&r, 1500, 3000);
    assert_eq!(r["embedded"], false);
    assert_eq!(r["target"], router.ws_url());
    // A second run against the same router ignores nothing and loses nothing.
    let again = bench(&[
        "--url",
        &url,
        "--events",
        "500",
        "--durable",
        "g",
        "--batch",
        "10",
    ]);
    assert!(again.success(), "stderr:\n{}", again.stderr);
    assert_complete(&report(&again), 500, 500);
}

#[test]
fn a_run_cut_short_by_the_timeout_reports_what_arrived_and_fails() {
    // 200 events at 20/s need 10 s; the timeout stops it after 1 s.
    let done = run(
        &[
            "bench",
            "--json",
            "--embedded",
            "--events",
            "200",
            "--rate",
            "20",
            "--batch",
            "1",
            "--timeout",
            "1s",
        ],
        RUN_TIMEOUT,
    );
    assert!(!done.success(), "a short run must fail:\n{}", done.stdout);
    let r = report(&done);
    assert_eq!(r["timed_out"], true, "{r}");
    let (delivered, lost) = (n(&r, "delivered"), n(&r, "lost"));
    assert!(delivered > 0 && delivered < 200, "{r}");
    assert_eq!(delivered + lost, 200, "{r}");
    assert_eq!(n(&r, "errors"), 0, "{r}");
    assert!(
        done.stderr.contains("deliveries lost") && done.stderr.contains("--timeout 1s"),
        "the error names the loss and the timeout:\n{}",
        done.stderr
    );
}

#[test]
fn an_unreachable_router_and_bad_flags_fail_with_clear_errors() {
    let done = run(
        &["bench", "--url", "http://127.0.0.1:1", "--events", "10"],
        RUN_TIMEOUT,
    );
    assert!(!done.success());
    assert!(
        done.stderr.contains("cannot connect") && done.stderr.contains("127.0.0.1:1"),
        "{}",
        done.stderr
    );
    assert!(
        done.stdout.is_empty(),
        "no report without a run: {}",
        done.stdout
    );
    for (args, needle) in [
        (vec!["bench", "--embedded", "--events", "0"], "--events"),
        (vec!["bench", "--embedded", "--rate", "0"], "--rate"),
        (vec!["bench", "--in-process"], "--embedded"),
    ] {
        let done = run(&args, RUN_TIMEOUT);
        assert!(!done.success(), "{args:?}");
        assert!(done.stderr.contains(needle), "{args:?}: {}", done.stderr);
    }
}
