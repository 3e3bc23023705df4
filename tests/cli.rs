//! End-to-end tests of the `event-router` binary: real `serve` processes on
//! loopback ports, driven by the `publish`, `tail`, `status` and `dlq`
//! subcommands. Every wait is bounded and every process is killed on drop.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use common::process::{Child, RouterProcess, Stream, run, run_with_env};
use event_router::config::Config;
use event_router::resources::{Resource, parse_documents};
use serde_json::Value;

/// Deadline of one client command.
const COMMAND: Duration = Duration::from_secs(20);
/// Deadline for a line from a background command.
const LINE: Duration = Duration::from_secs(10);

/// Path of a file under `deploy/examples/`.
fn example(name: &str) -> String {
    format!("{}/deploy/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Writes `text` to a file named after the test under cargo's temp dir.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// A loopback port nothing listens on (bound, then released).
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// `status --json` of `router`, parsed.
fn status_json(router: &RouterProcess) -> Value {
    let out = run(&["status", "--json", "--url", &router.http_url()], COMMAND);
    assert!(out.success(), "status failed: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// The entry of `status --json` for subscription `name`.
fn subscription<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["subscriptions"].as_array()?.iter().find(|s| {
        s.get("name")
            .or_else(|| s.pointer("/spec/name"))
            .and_then(Value::as_str)
            == Some(name)
    })
}

/// Starts `tail ARGS... --url URL` and waits until it reports its subscription.
fn start_tail(router: &RouterProcess, args: &[&str]) -> Child {
    let url = router.http_url();
    let mut argv = vec!["tail"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--url", &url]);
    let tail = Child::spawn(&argv, &[]);
    let subscribed = tail.line_matching(Stream::Stderr, LINE, |l| l.starts_with("subscribed to "));
    assert!(
        subscribed.is_some(),
        "tail did not subscribe; tail output:\n{}\nrouter output:\n{}",
        tail.output(),
        router.output()
    );
    tail
}

#[test]
fn help_of_every_subcommand_exits_zero_and_names_its_flags() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--help"],
            &[
                "serve", "publish", "tail", "monitor", "status", "dlq", "replay", "export", "purge",
            ],
        ),
        (
            &["monitor", "--help"],
            &["--filter", "--group", "--json", "--url", "Examples:"],
        ),
        (
            &["export", "--help"],
            &[
                "--topic",
                "--filter",
                "--from",
                "--to",
                "--format",
                "cloudevents",
                "--output",
                "Examples:",
            ],
        ),
        (
            &["purge", "--help"],
            &["--older-than", "--confirm", "--topic", "Examples:"],
        ),
        (
            &["serve", "--help"],
            &[
                "--listen",
                "--file",
                "--config",
                "--max-payload-bytes",
                "--shutdown-grace",
                "--log-format",
                "--history-max-events",
                "--history-max-age",
                "--live-queue-capacity",
                "EVENT_ROUTER_LISTEN",
                "Examples:",
            ],
        ),
        (
            &["publish", "--help"],
            &[
                "--priority",
                "--source",
                "--key",
                "--ttl",
                "--header",
                "--url",
                "EVENT_ROUTER_URL",
                "Examples:",
            ],
        ),
        (
            &["tail", "--help"],
            &["--filter", "--group", "--json", "--url", "Examples:"],
        ),
        (&["status", "--help"], &["--json", "--url", "Examples:"]),
        (
            &["dlq", "--help"],
            &["list", "redrive", "purge", "Examples:"],
        ),
        (&["dlq", "list", "--help"], &["SUBSCRIPTION", "--url"]),
        (&["dlq", "redrive", "--help"], &["--ids", "--url"]),
        (&["dlq", "purge", "--help"], &["--ids", "--all", "--url"]),
        (
            &["replay", "--help"],
            &[
                "SUBSCRIPTION",
                "--topic",
                "--filter",
                "--from",
                "--to",
                "--limit",
                "Examples:",
            ],
        ),
    ];
    for (args, wanted) in cases {
        let out = run(args, COMMAND);
        assert!(out.success(), "{args:?} failed: {out:?}");
        for flag in *wanted {
            assert!(
                out.stdout.contains(flag),
                "`event-router {}` does not mention {flag}:\n{}",
                args.join(" "),
                out.stdout
            );
        }
    }
}

#[test]
fn serve_exits_zero_on_sigterm_within_the_grace_period() {
    let mut router = RouterProcess::start(&["--shutdown-grace", "2s"]);
    assert_eq!(router.addr().ip().to_string(), "127.0.0.1");
    assert_ne!(router.addr().port(), 0, "the real port is announced");
    router.sigterm();
    let status = router.wait_exit(Duration::from_secs(2 + 5));
    let output = router.output();
    let status = status.unwrap_or_else(|| panic!("still running after SIGTERM:\n{output}"));
    assert!(status.success(), "exit status {status:?}:\n{output}");
    assert!(
        output.contains("in-memory broker"),
        "the in-memory broker warning is printed:\n{output}"
    );
}

#[test]
fn bad_resource_file_fails_startup_naming_file_and_document() {
    let unknown_kind = temp_file(
        "unknown-kind.yaml",
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Gadget\nmetadata: {name: x}\nspec: {}\n",
    );
    let path = unknown_kind.display().to_string();
    let out = run(&["serve", "--listen", "127.0.0.1:0", "-f", &path], COMMAND);
    assert!(!out.success(), "startup must fail: {out:?}");
    assert!(
        out.stderr.contains(&path)
            && out.stderr.contains("document 0")
            && out.stderr.contains("Gadget"),
        "message names file, document and kind: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("listening on"), "{}", out.stderr);

    let bad_pattern = temp_file(
        "bad-pattern.yaml",
        "apiVersion: eventrouter.dev/v1alpha1\nkind: Subscription\nmetadata: {name: broken}\n\
         spec:\n  topics: [\"task..created\"]\n",
    );
    let path = bad_pattern.display().to_string();
    let ok = example("subscription.yaml");
    let out = run(
        &["serve", "--listen", "127.0.0.1:0", "-f", &ok, "-f", &path],
        COMMAND,
    );
    assert!(!out.success(), "startup must fail: {out:?}");
    assert!(
        out.stderr.contains(&path) && out.stderr.contains("Subscription/broken"),
        "message names file and document: {}",
        out.stderr
    );

    let missing = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "-f",
            "/nonexistent/routes.yaml",
        ],
        COMMAND,
    );
    assert!(!missing.success());
    assert!(
        missing.stderr.contains("/nonexistent/routes.yaml"),
        "{}",
        missing.stderr
    );
}

#[test]
fn example_resource_files_parse_into_their_kinds() {
    let read = |name| std::fs::read_to_string(example(name)).expect("example exists");
    let subs = parse_documents(&read("subscription.yaml")).expect("subscription.yaml parses");
    assert!(matches!(&subs[..], [Resource::Subscription(s)] if s.metadata.name == "workers"));
    let routes = parse_documents(&read("eventroute.yaml")).expect("eventroute.yaml parses");
    assert!(matches!(&routes[..], [Resource::EventRoute(_)]));
    let sink = parse_documents(&read("push-sink.yaml")).expect("push-sink.yaml parses");
    assert!(matches!(&sink[..], [Resource::Subscription(s)] if s.spec.sink.is_some()));
}

#[test]
fn example_config_file_holds_the_defaults() {
    let config =
        Config::load(std::path::Path::new(&example("config.yaml"))).expect("config.yaml parses");
    assert_eq!(config, Config::default());
    let out = run(
        &[
            "serve",
            "--config",
            &example("config.yaml"),
            "--print-config",
        ],
        COMMAND,
    );
    assert!(out.success(), "{out:?}");
}

#[test]
fn config_file_env_and_flags_apply_in_precedence_order() {
    let file = temp_file(
        "precedence.yaml",
        "router:\n  max_payload_bytes: 1000\nserver:\n  shutdown_grace: 3s\n  live_queue_capacity: 7\n\
         broker:\n  history_max_age: 5m\n",
    );
    let file = file.display().to_string();
    let out = run_with_env(
        &[
            "serve",
            "--config",
            &file,
            "--live-queue-capacity",
            "9",
            "--print-config",
        ],
        &[
            ("EVENT_ROUTER_SHUTDOWN_GRACE", "4s"),
            ("EVENT_ROUTER_LIVE_QUEUE_CAPACITY", "8"),
        ],
        COMMAND,
    );
    assert!(out.success(), "{out:?}");
    let config = Config::from_yaml(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(
        config.router.max_payload_bytes.get(),
        1000,
        "file over default"
    );
    assert_eq!(
        config.server.shutdown_grace,
        Duration::from_secs(4),
        "env over file"
    );
    assert_eq!(config.server.live_queue_capacity.get(), 9, "flag over env");
    assert_eq!(config.broker.history_max_age, Duration::from_secs(300));
    assert_eq!(
        config.server.sse_keepalive,
        Duration::from_secs(15),
        "default"
    );
}

#[test]
fn invalid_config_is_rejected_naming_the_key() {
    let typo = temp_file("typo.yaml", "server:\n  shutdown_grase: 3s\n");
    let out = run(
        &[
            "serve",
            "--config",
            &typo.display().to_string(),
            "--print-config",
        ],
        COMMAND,
    );
    assert!(!out.success());
    assert!(out.stderr.contains("shutdown_grase"), "{}", out.stderr);

    let out = run(
        &["serve", "--max-payload-bytes", "9000000", "--print-config"],
        COMMAND,
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("server.max_frame_bytes"),
        "{}",
        out.stderr
    );

    let out = run(&["serve", "--shutdown-grace", "soon"], COMMAND);
    assert!(!out.success());
    assert!(out.stderr.contains("soon"), "{}", out.stderr);
}

#[test]
fn client_commands_fail_clearly_when_the_router_is_unreachable() {
    let url = dead_url();
    let commands: &[&[&str]] = &[
        &["publish", "task.created", r#"{"n":1}"#],
        &["status"],
        &["tail", "task.*"],
        &["dlq", "list", "workers"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.extend_from_slice(&["--url", &url]);
        let out = run(&args, COMMAND);
        assert!(!out.success(), "{command:?} must fail: {out:?}");
        assert!(
            out.stderr.contains("cannot reach event-router") && out.stderr.contains(&url[7..]),
            "{command:?}: unclear message: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{command:?}: {}", out.stdout);
    }
}

#[test]
fn publish_rejects_a_payload_that_is_not_json_before_sending() {
    let out = run(
        &["publish", "task.created", "hello", "--url", &dead_url()],
        COMMAND,
    );
    assert!(!out.success());
    assert!(out.stderr.contains("not valid JSON"), "{}", out.stderr);
}

#[test]
fn published_event_reaches_tail() {
    let router = RouterProcess::start(&[]);
    let mut tail = start_tail(&router, &["task.*", "-n", "1"]);
    let out = run(
        &[
            "publish",
            "task.created",
            r#"{"n": 1}"#,
            "--source",
            "cli-test",
            "--priority",
            "high",
            "--url",
            &router.http_url(),
        ],
        COMMAND,
    );
    assert!(out.success(), "publish failed: {out:?}");
    let id = out.stdout.trim();
    assert!(!id.is_empty(), "publish prints the event id");
    let line = tail
        .stdout_line(LINE)
        .unwrap_or_else(|| panic!("tail printed nothing:\n{}", tail.output()));
    let fields: Vec<&str> = line.split("  ").collect();
    assert_eq!(
        fields.len(),
        5,
        "time  priority  topic  source  payload: {line}"
    );
    assert_eq!(
        &fields[1..],
        ["7", "task.created", "cli-test", r#"{"n":1}"#]
    );
    let status = tail.wait_exit(LINE).expect("tail -n 1 exits");
    assert!(status.success(), "{}", tail.output());
}

#[test]
fn serve_applies_resource_files_visible_in_status_json() {
    let router = RouterProcess::start(&[
        "-f",
        &example("subscription.yaml"),
        "-f",
        &example("eventroute.yaml"),
    ]);
    let status = status_json(&router);
    assert_eq!(status["health"]["ok"], Value::Bool(true), "{status:#}");
    assert_eq!(status["ready"]["ok"], Value::Bool(true), "{status:#}");
    let workers = subscription(&status, "workers")
        .unwrap_or_else(|| panic!("subscription `workers` missing: {status:#}"));
    assert_eq!(workers["pending"], 0, "{workers:#}");

    let text = run(&["status", "--url", &router.http_url()], COMMAND);
    assert!(text.success(), "{text:?}");
    assert!(
        text.stdout.contains("SUBSCRIPTION") && text.stdout.contains("workers"),
        "{}",
        text.stdout
    );
    // The v2 design's CLI example.
    for line in [
        "Event Router Status: Running",
        "Events Published: 0",
        "Active Subscriptions: 1",
        "Queue Depth: 0",
    ] {
        assert!(text.stdout.contains(line), "{line:?} in:\n{}", text.stdout);
    }
    assert!(text.stdout.contains("Events/sec: "), "{}", text.stdout);
}

#[test]
fn event_route_from_file_raises_priority_and_copies() {
    let router = RouterProcess::start(&["-f", &example("eventroute.yaml")]);
    let mut tail = start_tail(&router, &["audit.#", "--json", "-n", "1"]);
    let out = run(
        &[
            "publish",
            "agent.failed",
            r#""timeout""#,
            "--url",
            &router.http_url(),
        ],
        COMMAND,
    );
    assert!(out.success(), "{out:?}");
    let line = tail
        .stdout_line(LINE)
        .unwrap_or_else(|| panic!("no copy arrived:\n{}", tail.output()));
    let copy: Value = serde_json::from_str(&line).expect("--json prints JSON");
    assert_eq!(copy["type"], "audit.agent-failed");
    assert_eq!(copy["priority"], 9);
    assert_eq!(copy["causation_id"], out.stdout.trim());
    assert!(tail.wait_exit(LINE).is_some_and(|s| s.success()));
}

#[test]
fn durable_group_tail_receives_stored_event_and_acks_it() {
    let router = RouterProcess::start(&["-f", &example("subscription.yaml")]);
    // Published before any consumer: the durable subscription stores it.
    let out = run(
        &[
            "publish",
            "task.assigned",
            r#"{"task": 7}"#,
            "--url",
            &router.http_url(),
        ],
        COMMAND,
    );
    assert!(out.success(), "{out:?}");
    let id = out.stdout.trim().to_string();
    let mut tail = start_tail(
        &router,
        &["task.*", "--group", "workers", "--json", "-n", "1"],
    );
    let line = tail
        .stdout_line(LINE)
        .unwrap_or_else(|| panic!("no delivery:\n{}", tail.output()));
    let event: Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(event["id"], id.as_str());
    assert!(tail.wait_exit(LINE).is_some_and(|s| s.success()));

    // The ack is processed before the connection closes; allow the server a
    // moment to update counters.
    let deadline = std::time::Instant::now() + LINE;
    loop {
        let status = status_json(&router);
        let workers = subscription(&status, "workers")
            .expect("workers listed")
            .clone();
        if workers["acked"] == 1 && workers["in_flight"] == 0 && workers["pending"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery was not acked: {workers:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn router_errors_are_shown_with_code_and_message() {
    let router = RouterProcess::start(&[]);
    let url = router.http_url();
    let out = run(
        &[
            "publish",
            "task.created",
            "{}",
            "--priority",
            "42",
            "--url",
            &url,
        ],
        COMMAND,
    );
    assert!(!out.success(), "priority 42 is out of range: {out:?}");
    assert!(
        out.stderr.contains("400") && out.stderr.contains("priority"),
        "{}",
        out.stderr
    );

    let out = run(&["dlq", "list", "nobody", "--url", &url], COMMAND);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("404") && out.stderr.contains("nobody"),
        "{}",
        out.stderr
    );
}

#[test]
fn dlq_commands_work_on_an_empty_queue() {
    let router = RouterProcess::start(&["-f", &example("subscription.yaml")]);
    let url = router.http_url();
    let list = run(&["dlq", "list", "workers", "--url", &url], COMMAND);
    assert!(list.success(), "{list:?}");
    assert!(list.stdout.contains("no dead letters"), "{}", list.stdout);
    let redrive = run(&["dlq", "redrive", "workers", "--url", &url], COMMAND);
    assert!(redrive.success(), "{redrive:?}");
    assert!(redrive.stdout.contains('0'), "{}", redrive.stdout);
    let purge = run(&["dlq", "purge", "workers", "--url", &url], COMMAND);
    assert!(!purge.success(), "purge needs --ids or --all");
    let purge = run(
        &["dlq", "purge", "workers", "--all", "--url", &url],
        COMMAND,
    );
    assert!(purge.success(), "{purge:?}");
}

#[test]
fn tail_exits_zero_on_ctrl_c_and_fails_clearly_when_the_router_goes_away() {
    let mut router = RouterProcess::start(&["--shutdown-grace", "2s"]);
    let mut interrupted = start_tail(&router, &["task.*"]);
    interrupted.signal("INT");
    let status = interrupted.wait_exit(LINE);
    assert!(
        status.is_some_and(|s| s.success()),
        "tail must exit 0 on SIGINT: {status:?}\n{}",
        interrupted.output()
    );

    let mut orphan = start_tail(&router, &["task.*"]);
    router.sigterm();
    assert!(router.wait_exit(LINE).is_some_and(|s| s.success()));
    let status = orphan
        .wait_exit(LINE)
        .expect("tail ends when the router stops");
    assert!(!status.success(), "{}", orphan.output());
    let stderr = orphan.captured(Stream::Stderr);
    assert!(
        stderr.contains("closed the connection") || stderr.contains("dropped"),
        "{stderr}"
    );
}

#[test]
fn replay_queues_matching_history_into_a_subscription() {
    let router = RouterProcess::start(&["-f", &example("subscription.yaml")]);
    let url = router.http_url();
    for (topic, priority) in [("task.a", "6"), ("task.b", "9"), ("note.c", "9")] {
        let out = run(
            &[
                "publish",
                topic,
                "{}",
                "--priority",
                priority,
                "--url",
                &url,
            ],
            COMMAND,
        );
        assert!(out.success(), "{out:?}");
    }
    let pending = |router: &RouterProcess| {
        subscription(&status_json(router), "workers").expect("workers listed")["pending"].clone()
    };
    assert_eq!(pending(&router), 2, "task.a and task.b routed on publish");

    let out = run(
        &[
            "replay",
            "workers",
            "--topic",
            "task.*",
            "--filter",
            "priority:gte:8",
            "--url",
            &url,
        ],
        COMMAND,
    );
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout.contains("queued 1 events into workers"),
        "{}",
        out.stdout
    );
    assert_eq!(pending(&router), 3);
    // The subscription's own filter is not applied again: the selection decides.
    let out = run(
        &["replay", "workers", "--topic", "note.*", "--url", &url],
        COMMAND,
    );
    assert!(out.stdout.contains("queued 1 events"), "{out:?}");
    assert_eq!(pending(&router), 4);

    let out = run(
        &["replay", "workers", "--from", "soon", "--url", &url],
        COMMAND,
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("400") && out.stderr.contains("from"),
        "{}",
        out.stderr
    );
    let out = run(&["replay", "nobody", "--url", &url], COMMAND);
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("404") && out.stderr.contains("nobody"),
        "{}",
        out.stderr
    );
}
