//! A saga: reserve inventory, then charge; a failed payment compensates
//! (refund, then release) in reverse order. State lives in the event
//! stream `saga.process_order.<order>`, so a restarted agent carries on.
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example saga
//! ```
//!
//! Set `EVENT_ROUTER_URL` to use another router.

use std::time::Duration;

use event_router::Event;
use event_router::client::{self, Client, SagaBuilder, Step};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(client::url_from_env()).await?;
    let reserve = Step::new("reserve", &["order.created"], |mut ctx, event| async move {
        ctx.data.insert("order".into(), event.payload["id"].clone());
        ctx.publish("inventory.reserve", json!({})).await?;
        Ok(ctx)
    })?
    .starts()
    .compensation(|ctx| async move { println!("release inventory of {}", ctx.id) });
    let charge = Step::new("charge", &["inventory.reserved"], |ctx, _| async move {
        Ok(ctx)
    })?
    .compensation(|ctx| async move { println!("refund {}", ctx.id) });
    let failed = Step::new("failed", &["payment.failed"], |mut ctx, _| async move {
        ctx.compensate();
        Ok(ctx)
    })?;
    let saga = SagaBuilder::new(&client, "process_order")
        .step(reserve)
        .step(charge)
        .step(failed)
        .step_timeout(Duration::from_secs(60))
        .start()
        .await?;
    let order = format!("order-{}", std::process::id());
    for topic in ["order.created", "inventory.reserved", "payment.failed"] {
        let mut event = Event::new(topic, json!({"id": order}))?;
        event.correlation_id = Some(order.clone());
        client.publish_with(event).await?;
    }
    let state = saga.wait(&order, Duration::from_secs(10)).await?;
    println!("saga {order}: {}", state.status);
    client.close().await;
    Ok(())
}
