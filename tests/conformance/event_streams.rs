//! Conformance cases of event streams (`Broker::append`, `read_stream`,
//! `wait_stream` and `event_stream::follow`).

use std::sync::Arc;
use std::time::Duration;

use event_router::Event;
use event_router::broker::event_stream::follow;
use event_router::broker::{AppendOptions, Broker, BrokerError, StreamRead};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{WAIT, unique};

fn event(n: u64) -> Event {
    Event::new("order.changed", json!({ "n": n })).expect("valid topic")
}

fn expect(version: u64) -> AppendOptions {
    AppendOptions {
        expected_version: Some(version),
    }
}

/// Versions count from 1 without gaps; reads page by version; an unknown
/// stream reads as empty at version 0.
pub async fn event_stream_appends_get_consecutive_versions_and_read_back_in_order(
    broker: Arc<dyn Broker>,
) {
    let stream = unique("order");
    let empty = broker
        .read_stream(&stream, StreamRead::default())
        .await
        .unwrap();
    assert_eq!((empty.version, empty.entries.len()), (0, 0));
    for n in 1..=5 {
        let appended = broker
            .append(&stream, event(n), AppendOptions::default())
            .await
            .unwrap();
        assert_eq!(appended.version, n);
    }
    let all = broker
        .read_stream(&stream, StreamRead::default())
        .await
        .unwrap();
    assert_eq!(all.version, 5);
    let versions: Vec<u64> = all.entries.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let ns: Vec<u64> = all
        .entries
        .iter()
        .map(|e| e.event.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2, 3, 4, 5]);
    let page = broker
        .read_stream(
            &stream,
            StreamRead {
                from_version: 3,
                limit: 2,
            },
        )
        .await
        .unwrap();
    let versions: Vec<u64> = page.entries.iter().map(|e| e.version).collect();
    assert_eq!((page.version, versions), (5, vec![3, 4]));
    let past = broker
        .read_stream(
            &stream,
            StreamRead {
                from_version: 6,
                limit: 0,
            },
        )
        .await
        .unwrap();
    assert!(past.entries.is_empty());
}

/// An append expecting another version fails with `VersionConflict`
/// naming the current version and stores nothing.
pub async fn event_stream_append_with_a_stale_expected_version_conflicts(broker: Arc<dyn Broker>) {
    let stream = unique("order");
    broker.append(&stream, event(1), expect(0)).await.unwrap();
    broker.append(&stream, event(2), expect(1)).await.unwrap();
    let err = broker
        .append(&stream, event(3), expect(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BrokerError::VersionConflict {
            stream: stream.clone(),
            expected: 1,
            current: 2
        }
    );
    let err = broker
        .append(&stream, event(3), expect(7))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "version_conflict");
    let err = broker
        .append(&unique("fresh"), event(1), expect(1))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        BrokerError::VersionConflict { current: 0, .. }
    ));
    let read = broker
        .read_stream(&stream, StreamRead::default())
        .await
        .unwrap();
    assert_eq!(read.version, 2);
    let bad = broker
        .append("no spaces", event(1), AppendOptions::default())
        .await
        .unwrap_err();
    assert_eq!(bad.kind(), "invalid_stream");
}

/// Of many concurrent appends expecting the same version, exactly one wins.
pub async fn event_stream_concurrent_appends_with_the_same_expected_version_have_one_winner(
    broker: Arc<dyn Broker>,
) {
    let stream = unique("order");
    for round in 0..3u64 {
        let attempts = (0..16).map(|n| {
            let broker = broker.clone();
            let stream = stream.clone();
            tokio::spawn(async move { broker.append(&stream, event(n), expect(round)).await })
        });
        let results = futures::future::join_all(attempts).await;
        let (won, lost): (Vec<_>, Vec<_>) = results
            .into_iter()
            .map(|r| r.expect("task"))
            .partition(Result::is_ok);
        assert_eq!(won.len(), 1, "round {round}");
        assert_eq!(won[0].as_ref().unwrap().version, round + 1);
        for e in lost {
            assert!(
                matches!(e, Err(BrokerError::VersionConflict { current, .. }) if current == round + 1)
            );
        }
    }
    let read = broker
        .read_stream(&stream, StreamRead::default())
        .await
        .unwrap();
    assert_eq!(read.version, 3);
}

/// A follower from version 2 gets the appended events from 2 on, then the
/// ones appended while it follows: every version once, in order.
pub async fn event_stream_follow_catches_up_then_goes_live_without_gap_or_duplicate(
    broker: Arc<dyn Broker>,
) {
    let stream = unique("order");
    for n in 1..=3 {
        broker
            .append(&stream, event(n), AppendOptions::default())
            .await
            .unwrap();
    }
    let (tx, mut rx) = mpsc::channel(100);
    let follower = {
        let broker = broker.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            follow(broker, &stream, 2, 2, |entry| {
                let tx = tx.clone();
                async move { tx.send(entry.version).await.is_ok() }
            })
            .await
        })
    };
    let writer = {
        let broker = broker.clone();
        let stream = stream.clone();
        tokio::spawn(async move {
            for n in 4..=20 {
                broker
                    .append(&stream, event(n), AppendOptions::default())
                    .await
                    .unwrap();
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        })
    };
    let mut got = Vec::new();
    while got.len() < 19 {
        let v = timeout(WAIT, rx.recv())
            .await
            .expect("follower fell silent")
            .expect("follower ended");
        got.push(v);
    }
    writer.await.unwrap();
    assert_eq!(got, (2..=20).collect::<Vec<u64>>());
    assert!(
        timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err(),
        "nothing after the last version"
    );
    follower.abort();
}

/// `wait_stream` returns as soon as the stream passes the version, or at
/// its timeout with the current version.
pub async fn event_stream_wait_returns_on_append_or_timeout(broker: Arc<dyn Broker>) {
    let stream = unique("order");
    let v = broker
        .wait_stream(&stream, 0, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(v, 0);
    let waiter = {
        let broker = broker.clone();
        let stream = stream.clone();
        tokio::spawn(async move { broker.wait_stream(&stream, 0, WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker
        .append(&stream, event(1), AppendOptions::default())
        .await
        .unwrap();
    let v = timeout(WAIT, waiter).await.unwrap().unwrap().unwrap();
    assert_eq!(v, 1);
}
