//! An in-process router on the memory broker, bound to 127.0.0.1:0, and
//! small WebSocket and SSE clients for talking to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use event_router::broker::{MemoryBroker, SharedBroker};
use event_router::server::{self, ServerConfig};
use event_router::{Router, RouterConfig};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// How long any single wait in these helpers may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running in-process server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server task.
    pub handle: JoinHandle<std::io::Result<()>>,
    /// Cancel to shut it down.
    pub token: CancellationToken,
    /// Its router (and through it, the broker).
    pub router: Arc<Router>,
}

/// Starts a router with the default server config on a real `MemoryBroker`.
pub async fn start_router() -> (
    SocketAddr,
    JoinHandle<std::io::Result<()>>,
    CancellationToken,
) {
    let r = start_with(ServerConfig::default()).await;
    (r.addr, r.handle, r.token)
}

/// Starts a router with `config`.
pub async fn start_with(config: ServerConfig) -> Running {
    let broker: SharedBroker = Arc::new(MemoryBroker::default());
    let router = Router::new(broker, RouterConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let token = CancellationToken::new();
    let handle = tokio::spawn(server::run(listener, config, router.clone(), token.clone()));
    Running {
        addr,
        handle,
        token,
        router,
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking JSON text frames.
pub struct WsClient {
    ws: Stream,
}

impl WsClient {
    /// Connects to `ws://{addr}{path}`.
    pub async fn connect(addr: SocketAddr, path: &str) -> WsClient {
        let url = format!("ws://{addr}{path}");
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket handshake");
        WsClient { ws }
    }

    /// Sends a JSON value as one text frame.
    pub async fn send(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    /// Sends raw text as one frame.
    pub async fn send_text(&mut self, text: String) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// The next message of any kind, within [`WAIT`].
    pub async fn next_message(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            Ok(_) => None,
            Err(_) => panic!("no websocket message within {WAIT:?}"),
        }
    }

    /// The next text frame as JSON, within [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).expect("json frame");
                }
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Whether a text frame arrives within `wait`; returns it if so.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => Some(serde_json::from_str(t.as_str()).expect("json")),
            _ => None,
        }
    }

    /// Sends `value` and returns the next frame (the reply).
    pub async fn call(&mut self, value: Value) -> Value {
        self.send(value).await;
        self.recv().await
    }

    /// Subscribes with a v2 frame and returns the subscription id.
    pub async fn subscribe(&mut self, frame: Value) -> String {
        let reply = self.call(frame).await;
        assert_eq!(reply["op"], "ok", "subscribe failed: {reply}");
        reply["subscription_id"]
            .as_str()
            .expect("subscription_id")
            .to_string()
    }

    /// Publishes one event and returns its id.
    pub async fn publish(&mut self, event: Value) -> String {
        let reply = self
            .call(serde_json::json!({"op": "publish", "event": event}))
            .await;
        assert_eq!(reply["op"], "ok", "publish failed: {reply}");
        reply["event_id"].as_str().expect("event_id").to_string()
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// `id:`.
    pub id: Option<String>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` lines joined by newlines.
    pub data: String,
    /// Comment lines (`: ...`), for keep-alives and the `subscribed` notice.
    pub comments: Vec<String>,
}

impl SseEvent {
    /// `data` as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("json data")
    }
}

/// An SSE client over reqwest's chunked body.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    /// Opens `http://{addr}{path_and_query}` with extra headers; panics
    /// unless the status is 200.
    pub async fn open(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let response = Self::request(addr, path_and_query, headers).await;
        assert_eq!(response.status(), 200, "SSE open failed");
        let mut client = SseClient {
            response,
            buffer: String::new(),
        };
        // The server sends `: subscribed <id>` once the subscription is live.
        let first = client.next_raw().await.expect("subscribed notice");
        assert!(
            first.comments.iter().any(|c| c.starts_with("subscribed")),
            "{first:?}"
        );
        client
    }

    /// Sends the request and returns the raw response.
    pub async fn request(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = reqwest::Client::new().get(format!("http://{addr}{path_and_query}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE response in time")
            .expect("SSE request")
    }

    /// The next block (event or comments), `None` at end of stream.
    pub async fn next_raw(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        event.comments.push(c.trim().to_string());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                        match field {
                            "id" => event.id = Some(value),
                            "event" => event.event = Some(value),
                            "data" => data.push(value),
                            _ => {}
                        }
                    }
                }
                event.data = data.join("\n");
                return Some(event);
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("SSE data in time")
                .expect("SSE body")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
    }

    /// The next real event (skipping comment-only blocks).
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            let block = self.next_raw().await.expect("stream open");
            if block.event.is_some() || !block.data.is_empty() {
                return block;
            }
        }
    }

    /// Whether an event arrives within `wait`.
    pub async fn try_next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        tokio::time::timeout(wait, self.next_event()).await.ok()
    }
}

/// A reqwest client and base URL for HTTP calls.
pub fn http(addr: SocketAddr) -> (reqwest::Client, String) {
    (reqwest::Client::new(), format!("http://{addr}"))
}
