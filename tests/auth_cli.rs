//! The binary: `auth hash-key`, `serve --auth FILE`, the loud warning
//! without auth, and client commands sending `EVENT_ROUTER_TOKEN`.

mod common;

use std::time::Duration;

use common::process::{Child, RouterProcess};
use event_router::auth::sha256_hex;

const EXIT: Duration = Duration::from_secs(20);

/// Runs `event-router ARGS` to completion: (success, everything printed).
fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut child = Child::spawn(args, envs);
    let status = child.wait_exit(EXIT).expect("the command exits in time");
    // Let the reader threads drain the pipes.
    std::thread::sleep(Duration::from_millis(50));
    (status.success(), child.output())
}

fn hash_key() -> (String, String) {
    let (ok, out) = run(&["auth", "hash-key", "--name", "planner"], &[]);
    assert!(ok, "{out}");
    let key = out
        .lines()
        .find_map(|l| l.split("key: ").nth(1))
        .expect("a key line")
        .trim()
        .to_string();
    let digest = out
        .lines()
        .find_map(|l| l.split("sha256: ").nth(1))
        .expect("a sha256 line")
        .trim()
        .trim_matches('"')
        .to_string();
    (key, digest)
}

#[test]
fn hash_key_prints_a_fresh_key_and_the_digest_for_the_auth_file() {
    let (key, digest) = hash_key();
    assert!(key.starts_with("erk_"), "{key}");
    assert_eq!(sha256_hex(&key), digest);
    let (other, _) = hash_key();
    assert_ne!(key, other, "keys are random");
}

#[test]
fn serve_with_an_auth_file_enforces_it_and_client_commands_send_the_token() {
    let (key, digest) = hash_key();
    let dir = std::env::temp_dir().join(format!("er-auth-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.yaml");
    std::fs::write(
        &file,
        format!(
            "api_keys:\n  - name: planner\n    sha256: \"{digest}\"\nacl:\n  - principal: planner\n    publish: [\"task.*\"]\n"
        ),
    )
    .unwrap();
    let router = RouterProcess::start(&["--auth", file.to_str().unwrap()]);
    let url = router.http_url();
    let (ok, out) = run(
        &["publish", "--url", &url, "task.created", r#"{"n":1}"#],
        &[],
    );
    assert!(!ok, "published without a token: {out}");
    assert!(out.contains("unauthorized"), "{out}");
    let env = [("EVENT_ROUTER_TOKEN", key.as_str())];
    let (ok, out) = run(
        &["publish", "--url", &url, "task.created", r#"{"n":1}"#],
        &env,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["publish", "--url", &url, "admin.reset", r#"{}"#], &env);
    assert!(!ok, "{out}");
    assert!(
        out.contains("forbidden") && out.contains("admin.reset"),
        "{out}"
    );
    assert!(
        !router.output().contains("NO AUTHENTICATION"),
        "{}",
        router.output()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_without_auth_warns_loudly() {
    let router = RouterProcess::start(&[]);
    let mut warned = false;
    for _ in 0..50 {
        if router.output().contains("NO AUTHENTICATION CONFIGURED") {
            warned = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(warned, "{}", router.output());
}

#[test]
fn a_bad_auth_file_stops_serve_with_its_name() {
    let dir = std::env::temp_dir().join(format!("er-auth-bad-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("auth.yaml");
    std::fs::write(&file, "api_keys:\n  - name: x\n    sha256: nothex\n").unwrap();
    let (ok, out) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    assert!(out.contains("api_keys[0] (x)"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
