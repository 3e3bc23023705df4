//! `event-router export` and `event-router purge` against a real router
//! process, on the memory broker and on Redis (a real `redis-server` on a
//! free loopback port): what is published comes back out of `export` in
//! both formats, `purge` refuses without `--confirm`, and with it deletes
//! exactly the events older than the age given.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::process::{Finished, RouterProcess, run};
use common::redis::RedisServer;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

/// Longest a client command may take.
const COMMAND: Duration = Duration::from_secs(30);

async fn publish(router: &RouterProcess, event: Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/events", router.http_url()))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

fn cli(router: &RouterProcess, args: &[&str]) -> Finished {
    let url = router.http_url();
    let mut all = args.to_vec();
    all.extend(["--url", url.as_str()]);
    run(&all, COMMAND)
}

/// `export ARGS` as the ids of the exported lines, in order.
fn exported_ids(router: &RouterProcess, args: &[&str]) -> Vec<String> {
    let mut all = vec!["export"];
    all.extend(args);
    let out = cli(router, &all);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stderr.contains("exported"),
        "progress on stderr: {out:?}"
    );
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn export_and_purge_round_trip(router: &RouterProcess) {
    let now = Timestamp::now();
    let old = now - SignedDuration::from_hours(40 * 24);
    let events = [
        ("old-1", "audit.login", 3, old),
        ("old-2", "audit.login", 8, old),
        ("old-3", "debug.trace", 5, old),
        ("new-1", "audit.login", 8, now),
        ("new-2", "debug.trace", 5, now),
    ];
    for (id, topic, priority, time) in events {
        publish(
            router,
            json!({"id": id, "type": topic, "priority": priority, "time": time.to_string(),
                   "payload": {"id": id}}),
        )
        .await;
    }
    let all = ids(&["old-1", "old-2", "old-3", "new-1", "new-2"]);

    let everything = exported_ids(router, &["--format", "json"]);
    assert_eq!(everything.iter().cloned().collect::<BTreeSet<_>>(), all);
    assert_eq!(everything.len(), 5, "{everything:?}");

    let selected = exported_ids(
        router,
        &["--topic", "audit.*", "--filter", "priority:gte:7"],
    );
    assert_eq!(
        selected.into_iter().collect::<BTreeSet<_>>(),
        ids(&["old-2", "new-1"])
    );
    let cutoff = (now - SignedDuration::from_hours(24)).to_string();
    let before = exported_ids(router, &["--to", &cutoff]);
    assert_eq!(
        before.into_iter().collect::<BTreeSet<_>>(),
        ids(&["old-1", "old-2", "old-3"])
    );

    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "export-{}-{}.jsonl",
        std::process::id(),
        router.addr().port()
    ));
    let file_arg = file.to_str().unwrap();
    let out = cli(
        router,
        &[
            "export",
            "--format",
            "cloudevents",
            "--output",
            file_arg,
            "--limit",
            "4",
        ],
    );
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "events go to the file: {out:?}");
    assert!(out.stderr.contains("exported 4 events"), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let old_2 = lines
        .iter()
        .find(|ce| ce["id"] == "old-2")
        .expect("old-2 exported");
    assert_eq!(old_2["specversion"], "1.0");
    assert_eq!(old_2["type"], "audit.login");
    assert_eq!(old_2["priority"], 8);
    assert_eq!(old_2["data"], json!({"id": "old-2"}));
    let _ = std::fs::remove_file(&file);

    let refused = cli(router, &["purge", "--older-than", "30d"]);
    assert!(!refused.success(), "{refused:?}");
    assert!(refused.stderr.contains("--confirm"), "{refused:?}");
    assert_eq!(
        exported_ids(router, &[]).len(),
        5,
        "nothing deleted without --confirm"
    );

    let only_debug = cli(
        router,
        &[
            "purge",
            "--older-than",
            "30d",
            "--topic",
            "debug.#",
            "--confirm",
        ],
    );
    assert!(only_debug.success(), "{only_debug:?}");
    assert!(
        only_debug.stdout.contains("purged 1 events"),
        "{only_debug:?}"
    );
    let purged = cli(router, &["purge", "--older-than", "30d", "--confirm"]);
    assert!(purged.success(), "{purged:?}");
    assert!(purged.stdout.contains("purged 2 events"), "{purged:?}");
    let left = exported_ids(router, &[]);
    assert_eq!(
        left.into_iter().collect::<BTreeSet<_>>(),
        ids(&["new-1", "new-2"])
    );
}

#[tokio::test]
async fn export_and_purge_round_trip_on_the_memory_broker() {
    let router = RouterProcess::start(&[]);
    export_and_purge_round_trip(&router).await;
}

#[tokio::test]
async fn export_and_purge_round_trip_on_redis() {
    let redis = RedisServer::start();
    let router = RouterProcess::start(&["--redis", &redis.url()]);
    export_and_purge_round_trip(&router).await;
}

#[tokio::test]
async fn export_pages_through_more_than_one_page() {
    let router = RouterProcess::start(&[]);
    let batch: Vec<Value> = (0..2500)
        .map(|n| json!({"type": "bulk.item", "payload": n}))
        .collect();
    for chunk in batch.chunks(500) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v1/events/batch", router.http_url()))
            .json(&json!({"events": chunk}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let exported = exported_ids(&router, &[]);
    assert_eq!(exported.len(), 2500);
    assert_eq!(exported.iter().collect::<BTreeSet<_>>().len(), 2500);
}
