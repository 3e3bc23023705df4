//! A worker agent: joins the durable `workers` group on `task.*` and
//! processes each task, acking on success and nacking (for redelivery with
//! backoff) on failure. Start several to see the group share the load.
//!
//! Run against a local router:
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example agent_worker
//! cargo run --release -- publish task.created '{"task": 1}'
//! ```
//!
//! Tasks whose payload has `"fail": true` fail on their first attempt.
//! Set `EVENT_ROUTER_URL` to use another router.

use std::time::Duration;

use event_router::client::{self, Client, Received};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = client::url_from_env();
    let client = Client::connect(&url).await?;
    let worker = client
        .subscribe("task.*")
        .group("workers")
        .max_in_flight(10)
        .concurrency(4)
        .nack_delay(Duration::from_secs(2))
        .handle(|task: Received| async move {
            println!(
                "{} attempt {}: {}",
                task.event.topic, task.attempt, task.event.payload
            );
            if task.event.payload["fail"] == true && task.attempt == 1 {
                return Err(format!("task {} failed; will be retried", task.event.id));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        })
        .await?;
    println!("worker ready on {url}; Ctrl-C to stop");
    tokio::select! {
        () = event_router::shutdown::signal() => {}
        () = worker.join() => eprintln!("the subscription ended"),
    }
    client.close().await;
    Ok(())
}
