//! Request/response between two agents: a planner answers `agent.plan`
//! requests, and a requester asks it for three plans.
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example request_response
//! ```
//!
//! Both agents live in this process but talk through the router, each over
//! its own connection. Set `EVENT_ROUTER_URL` to use another router.

use std::time::Duration;

use event_router::Event;
use event_router::client::{self, Client};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = client::url_from_env();

    let planner = Client::connect(&url).await?;
    let _answering = planner
        .respond("agent.plan", |request: Event| async move {
            let goal = request.payload["goal"]
                .as_str()
                .ok_or("a plan request needs a goal")?
                .to_string();
            Ok::<_, &str>(json!({"goal": goal, "steps": ["think", "do", "check"]}))
        })
        .await?;

    let requester = Client::connect(&url).await?;
    for goal in ["write tests", "fix the bug", "ship"] {
        let reply = requester
            .request("agent.plan", json!({"goal": goal}), Duration::from_secs(5))
            .await?;
        println!("{goal}: {}", reply.payload["steps"]);
    }
    match requester
        .request("agent.plan", json!({}), Duration::from_secs(5))
        .await
    {
        Err(e) => println!("a request without a goal fails: {e}"),
        Ok(reply) => println!("unexpected reply: {}", reply.payload),
    }
    requester.close().await;
    planner.close().await;
    Ok(())
}
