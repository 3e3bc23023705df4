//! Windows: the average of `metrics.*` values per one-minute window,
//! sliding every 30 seconds over the events' own time.
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example windows
//! cargo run --release -- publish metrics.cpu '{"value": 42}'
//! ```
//!
//! Set `EVENT_ROUTER_URL` to use another router.

use std::time::Duration;

use event_router::client::{self, Client, WindowConfig, Windows};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(client::url_from_env()).await?;
    let events = client.subscribe("metrics.*").start().await?;
    let shape = WindowConfig::sliding(Duration::from_secs(60), Duration::from_secs(30));
    let mut windows = Windows::new(events, shape)?.on_late(|e| eprintln!("late: {}", e.id));
    println!("windows of metrics.*; Ctrl-C to stop");
    loop {
        let window = tokio::select! {
            () = event_router::shutdown::signal() => break,
            window = windows.next() => window,
        };
        let Some(window) = window else { break };
        let values = window
            .events
            .iter()
            .filter_map(|e| e.payload["value"].as_f64());
        let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
        let avg = if n > 0 { sum / f64::from(n) } else { 0.0 };
        println!(
            "window {} +60s: {} events, avg {avg:.1}",
            window.start,
            window.events.len()
        );
    }
    client.close().await;
    Ok(())
}
