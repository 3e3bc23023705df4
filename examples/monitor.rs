//! A monitor: tails every event of priority 7 or more, live, printing one
//! line per event and a notice whenever it fell behind and lost events.
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example monitor            # optionally: monitor 'agent.#'
//! cargo run --release -- publish agent.failed '{"agent": "a1"}' --priority critical
//! ```
//!
//! Set `EVENT_ROUTER_URL` to use another router.

use event_router::client::{self, Client};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pattern = std::env::args().nth(1).unwrap_or_else(|| "#".into());
    let client = Client::connect(client::url_from_env()).await?;
    let mut events = client
        .subscribe(pattern.as_str())
        .filter(json!({"priority": {"$gte": 7}}))
        .start()
        .await?;
    println!("watching {pattern} (priority >= 7); Ctrl-C to stop");
    let mut reported = 0;
    loop {
        let received = tokio::select! {
            () = event_router::shutdown::signal() => break,
            received = events.recv() => received,
        };
        let Some(received) = received else {
            eprintln!("subscription ended: {:?}", events.error());
            break;
        };
        if events.dropped() > reported {
            eprintln!("fell behind: {} events lost", events.dropped() - reported);
            reported = events.dropped();
        }
        let e = &received.event;
        println!("{}  p{}  {}  {}", e.time, e.priority, e.topic, e.payload);
    }
    client.close().await;
    Ok(())
}
