//! Event sourcing: appends to an event stream with version checks, then
//! follows it as a read model would, from the start and then live.
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example event_sourcing
//! ```
//!
//! Set `EVENT_ROUTER_URL` to use another router.

use event_router::Event;
use event_router::client::{self, Client};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(client::url_from_env()).await?;
    let stream = format!("order-{}", std::process::id());
    let created = Event::new("order.created", json!({"items": 2}))?;
    client.append(&stream, created, Some(0)).await?;
    let paid = Event::new("order.paid", json!({"amount": 30}))?;
    client.append(&stream, paid.clone(), Some(1)).await?;
    if let Err(e) = client.append(&stream, paid, Some(1)).await {
        println!("conflict: {e}");
    }
    let mut read_model = client.subscribe_stream(&stream, 0)?;
    let shipped = Event::new("order.shipped", json!({"carrier": "ups"}))?;
    client.append(&stream, shipped, None).await?;
    while let Some(entry) = read_model.recv().await {
        let entry = entry?;
        println!(
            "read model: version {} {}",
            entry.version, entry.event.topic
        );
        if entry.event.topic == "order.shipped" {
            break;
        }
    }
    client.close().await;
    Ok(())
}
