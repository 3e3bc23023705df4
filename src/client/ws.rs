//! The WebSocket transport: one driver task per client that owns the
//! connection, reconnects it, and keeps what must survive a reconnect.
//!
//! Callers talk to the driver through an unbounded command channel (the
//! publish buffer bound is a semaphore taken before a command is sent, so
//! the channel itself stays small). The driver keeps:
//! - every unconfirmed call (publish, batch, request) in id order; all of
//!   them are (re)sent on each new connection, in order, after the
//!   subscriptions are restored, so that a publish made while disconnected
//!   is flushed exactly once and in order;
//! - every subscription with the frame that opens it; each new connection
//!   subscribes again and maps the new server subscription ids to the same
//!   client-side [`Inbox`].
//!
//! Per connection, a writer task drains an unbounded queue of frames, so
//! that the driver never stops reading while a write waits (which could
//! deadlock with a server that waits for us to read). A ping goes out every
//! heartbeat interval; when nothing at all arrives within the heartbeat
//! timeout after it, the connection is treated as dead.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::error::{ClientError, Result};
use super::subscription::{AckPath, Inbox, Received};
use super::{Config, ConnectionState, SubscribeSpec};
use crate::event::Event;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most frames written before one flush.
const MAX_WRITE_BATCH: usize = 256;
/// Most event frames held for subscriptions whose `ok` has not arrived yet.
const MAX_ORPHANS: usize = 4096;
/// How long closing waits for the close frame to be written.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The reply to a call: the `ok` frame's fields.
pub(crate) type Reply = Result<Map<String, Value>>;

/// What a call sends.
#[derive(Debug)]
pub(crate) enum CallBody {
    /// `publish`, the event already serialized.
    Publish(String),
    /// `publish_batch`, the events serialized as a JSON array.
    Batch {
        /// JSON array text.
        events: String,
        /// All or none.
        atomic: bool,
    },
    /// `request`: the event serialized, and when the caller stops waiting.
    Request {
        /// JSON object text.
        event: String,
        /// The caller's deadline; the server is told what remains of it.
        deadline: Instant,
    },
    /// Any other request op, as a JSON object without `id`.
    Op(serde_json::Map<String, Value>),
}

impl CallBody {
    fn frame(&self, id: u64) -> String {
        match self {
            CallBody::Publish(event) => {
                format!(r#"{{"op":"publish","id":"{id}","event":{event}}}"#)
            }
            CallBody::Batch { events, atomic } => format!(
                r#"{{"op":"publish_batch","id":"{id}","events":{events},"atomic":{atomic}}}"#
            ),
            CallBody::Request { event, deadline } => {
                let ms = deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .max(1);
                format!(r#"{{"op":"request","id":"{id}","event":{event},"timeout_ms":{ms}}}"#)
            }
            CallBody::Op(fields) => {
                let mut fields = fields.clone();
                fields.insert("id".into(), Value::String(id.to_string()));
                Value::Object(fields).to_string()
            }
        }
    }
}

/// A request that waits for an `ok` or `error` reply.
#[derive(Debug)]
pub(crate) struct Call {
    /// Unique per client; the frame's `id`.
    pub(crate) id: u64,
    /// What to send.
    pub(crate) body: CallBody,
    /// Where the reply goes; `None` for `publish_nowait`.
    pub(crate) reply: Option<oneshot::Sender<Reply>>,
    /// The publish buffer slots this call holds until it is answered.
    #[expect(dead_code, reason = "held, never read: dropping it frees the slots")]
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

/// What callers ask of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a call now or after (re)connecting; keep it until answered.
    Call(Call),
    /// The caller stopped waiting for this call: forget it (it is not sent
    /// again).
    Cancel(u64),
    /// Open a subscription, now and on every later connection.
    Subscribe {
        /// Client-side subscription id.
        id: u64,
        /// What to subscribe to.
        spec: SubscribeSpec,
        /// Where its deliveries go.
        inbox: Arc<Inbox>,
        /// Answered with the server's subscription id.
        reply: oneshot::Sender<Result<String>>,
    },
    /// Close a subscription.
    Unsubscribe(u64),
    /// An ack or nack frame; sent only if connected (after a reconnect the
    /// server has already returned the delivery to its group).
    Settle(String),
    /// Answer once every call sent before this one is answered.
    Flush(oneshot::Sender<Result<()>>),
}

/// A frame from the server, as far as the client cares.
///
/// One flat struct rather than an enum tagged by `op`: serde reads a
/// tagged enum by first buffering the whole frame (event included) and
/// then reading it again, which cost more than anything else the client
/// does per delivery.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Incoming {
    op: Op,
    id: Option<Value>,
    subscription_id: Option<String>,
    delivery_id: Option<String>,
    attempt: Option<u32>,
    event: Option<Event>,
    /// A count in `overflow` frames, event ids in `publish_batch` replies.
    dropped: Option<Value>,
    code: Option<String>,
    message: Option<String>,
    // The fields of `ok` replies that callers read.
    event_id: Option<Value>,
    event_ids: Option<Value>,
    status: Option<Value>,
    ignored: Option<Value>,
    response: Option<Value>,
    // Event stream replies (`append`, `read_stream`).
    stream: Option<Value>,
    version: Option<Value>,
    entries: Option<Value>,
}

/// The `op` of a server frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Ok,
    Pong,
    Event,
    Overflow,
    Error,
    /// Anything else (or no `op`): ignored.
    #[default]
    #[serde(other)]
    Other,
}

impl Incoming {
    /// The fields of an `ok` reply, as callers read them.
    fn into_fields(self) -> Map<String, Value> {
        let mut fields = Map::new();
        let named = [
            ("subscription_id", self.subscription_id.map(Value::String)),
            ("event_id", self.event_id),
            ("event_ids", self.event_ids),
            ("dropped", self.dropped),
            ("status", self.status),
            ("ignored", self.ignored),
            ("response", self.response),
            ("stream", self.stream),
            ("version", self.version),
            ("entries", self.entries),
        ];
        for (name, value) in named {
            if let Some(value) = value {
                fields.insert(name.to_string(), value);
            }
        }
        fields
    }
}

/// The numeric request id of a reply, if it is one of ours.
fn request_id(id: Option<&Value>) -> Option<u64> {
    match id? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

struct SubEntry {
    spec: SubscribeSpec,
    inbox: Arc<Inbox>,
    server_id: Option<String>,
    /// The first subscribe's caller, until answered.
    reply: Option<oneshot::Sender<Result<String>>>,
}

/// Why [`Driver::serve`] returned.
enum Exit {
    /// The connection is gone; reconnect.
    Lost(String),
    /// The client is closing.
    Stop,
}

/// The current connection, as the command handlers need it.
struct Conn {
    frames: mpsc::UnboundedSender<Message>,
}

impl Conn {
    fn send(&self, text: String) {
        // A failed send means the writer is gone; the driver notices that
        // through the writer's join handle and reconnects.
        let _ = self.frames.send(Message::text(text));
    }
}

/// Owns the connection; see the module docs.
pub(crate) struct Driver {
    config: Arc<Config>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// For ack paths of deliveries; weak so that the driver alone does not
    /// keep the command channel open.
    handle: mpsc::WeakUnboundedSender<Command>,
    state: watch::Sender<ConnectionState>,
    shutdown: CancellationToken,
    ids: Arc<std::sync::atomic::AtomicU64>,
    calls: BTreeMap<u64, Call>,
    flushes: Vec<(u64, oneshot::Sender<Result<()>>)>,
    subs: BTreeMap<u64, SubEntry>,
    by_server: HashMap<String, u64>,
    /// Subscribe request id → client subscription id, for this connection.
    pending_subs: HashMap<u64, u64>,
    /// Events for subscriptions whose `ok` is still on its way (the server
    /// may start delivering before it replies).
    orphans: Vec<(String, String, u32, Event)>,
    conn: Option<Conn>,
}

impl Driver {
    pub(crate) fn new(
        config: Arc<Config>,
        commands: mpsc::UnboundedReceiver<Command>,
        handle: mpsc::WeakUnboundedSender<Command>,
        state: watch::Sender<ConnectionState>,
        shutdown: CancellationToken,
        ids: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        Driver {
            config,
            commands,
            handle,
            state,
            shutdown,
            ids,
            calls: BTreeMap::new(),
            flushes: Vec::new(),
            subs: BTreeMap::new(),
            by_server: HashMap::new(),
            pending_subs: HashMap::new(),
            orphans: Vec::new(),
            conn: None,
        }
    }

    /// Connects, serves, reconnects, until closed or the policy gives up.
    pub(crate) async fn run(mut self) {
        let end = loop {
            let socket = match self.connect().await {
                Ok(socket) => socket,
                Err(e) => break e,
            };
            match self.serve(socket).await {
                Exit::Stop => break ClientError::Closed,
                Exit::Lost(reason) => {
                    tracing::warn!(url = %self.config.url, %reason, "connection lost; reconnecting");
                    self.lost();
                    if !self.config.reconnect.allows(0) {
                        break ClientError::Connection {
                            url: self.config.url.clone(),
                            reason: format!(
                                "connection lost ({reason}) and reconnecting is disabled"
                            ),
                        };
                    }
                    self.set_state(ConnectionState::Connecting {
                        attempt: 0,
                        last_error: Some(reason),
                    });
                }
            }
        };
        self.finish(end);
    }

    fn set_state(&self, state: ConnectionState) {
        self.state.send_replace(state);
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Tries to connect per the reconnect policy, handling commands while
    /// it waits.
    async fn connect(&mut self) -> Result<Socket> {
        let mut failed = 0u32;
        let config = self.config.clone();
        loop {
            let attempt = tokio::time::timeout(
                config.connect_timeout,
                // Frames are small and latency matters: no Nagle delay, and
                // a read buffer that is not zeroed at 128 KiB per read.
                tokio_tungstenite::connect_async_with_config(
                    config.url.as_str(),
                    Some(
                        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                            .read_buffer_size(crate::server::ws::READ_BUFFER_BYTES),
                    ),
                    true,
                ),
            );
            let reason = match self.offline(attempt).await? {
                Ok(Ok((socket, _))) => return Ok(socket),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no handshake within {:?}", self.config.connect_timeout),
            };
            failed += 1;
            tracing::debug!(url = %self.config.url, attempt = failed, %reason, "connect failed");
            if !self.config.reconnect.allows(failed) {
                return Err(ClientError::Connection {
                    url: self.config.url.clone(),
                    reason: format!("gave up after {failed} failed attempts; last: {reason}"),
                });
            }
            self.set_state(ConnectionState::Connecting {
                attempt: failed,
                last_error: Some(reason),
            });
            let delay = self.config.reconnect.delay(failed, rand::random::<f64>());
            self.offline(tokio::time::sleep(delay)).await?;
        }
    }

    /// Runs `fut` to completion while handling commands (there is no
    /// connection, so calls are kept for later).
    async fn offline<F: Future>(&mut self, fut: F) -> Result<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(ClientError::Closed),
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return Err(ClientError::Closed),
                },
                out = &mut fut => return Ok(out),
            }
        }
    }

    /// Serves one connection until it is lost or the client closes.
    async fn serve(&mut self, socket: Socket) -> Exit {
        let (sink, mut stream) = socket.split();
        let (frames, queue) = mpsc::unbounded_channel();
        let mut writer = tokio::spawn(write_loop(sink, queue));
        self.conn = Some(Conn { frames });
        self.restore();
        let exit = self.read_loop(&mut stream, &mut writer).await;
        let Some(conn) = self.conn.take() else {
            return exit;
        };
        if matches!(exit, Exit::Stop) {
            let _ = conn.frames.send(Message::Close(None));
            drop(conn);
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
        } else {
            writer.abort();
        }
        exit
    }

    async fn read_loop(
        &mut self,
        stream: &mut SplitStream<Socket>,
        writer: &mut tokio::task::JoinHandle<std::result::Result<(), String>>,
    ) -> Exit {
        let heartbeat = !self.config.heartbeat_interval.is_zero();
        let interval = self.config.heartbeat_interval.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        let mut awaiting_pong = false;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Exit::Stop,
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return Exit::Stop,
                },
                message = stream.next() => {
                    awaiting_pong = false;
                    match message {
                        Some(Ok(Message::Text(text))) => self.frame(text.as_str()),
                        Some(Ok(Message::Close(frame))) => {
                            let why = frame.map_or_else(
                                || "closed by the server".to_string(),
                                |f| format!("closed by the server ({}: {})", f.code, f.reason),
                            );
                            return Exit::Lost(why);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Exit::Lost(format!("read failed: {e}")),
                        None => return Exit::Lost("connection closed".into()),
                    }
                }
                result = &mut *writer => {
                    let why = match result {
                        Ok(Err(e)) => format!("write failed: {e}"),
                        _ => "writer stopped".into(),
                    };
                    return Exit::Lost(why);
                }
                _ = ticker.tick(), if heartbeat && !awaiting_pong => {
                    self.send(r#"{"op":"ping"}"#.to_string());
                    awaiting_pong = true;
                    deadline.as_mut().reset(Instant::now() + self.config.heartbeat_timeout);
                }
                () = &mut deadline, if awaiting_pong => {
                    return Exit::Lost(format!(
                        "no reply to ping within {:?}", self.config.heartbeat_timeout
                    ));
                }
            }
        }
    }

    fn send(&self, text: String) {
        if let Some(conn) = &self.conn {
            conn.send(text);
        }
    }

    /// On a new connection: subscribe again, then send every unanswered
    /// call in order.
    fn restore(&mut self) {
        let subs: Vec<u64> = self.subs.keys().copied().collect();
        for id in subs {
            self.send_subscribe(id);
        }
        for (id, call) in &self.calls {
            if let Some(conn) = &self.conn {
                conn.send(call.body.frame(*id));
            }
        }
        if self.pending_subs.is_empty() {
            self.set_state(ConnectionState::Connected);
        }
    }

    /// The connection is gone: forget what belonged to it.
    fn lost(&mut self) {
        self.pending_subs.clear();
        self.by_server.clear();
        self.orphans.clear();
        for entry in self.subs.values_mut() {
            entry.server_id = None;
            entry.inbox.discard_durable();
        }
    }

    fn send_subscribe(&mut self, sub: u64) {
        if self.conn.is_none() {
            return;
        }
        let Some(entry) = self.subs.get(&sub) else {
            return;
        };
        let request = self.next_id();
        let frame = entry.spec.frame(request);
        self.pending_subs.insert(request, sub);
        self.send(frame);
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Call(call) => {
                if let Some(conn) = &self.conn {
                    conn.send(call.body.frame(call.id));
                }
                self.calls.insert(call.id, call);
            }
            Command::Cancel(id) => {
                self.calls.remove(&id);
                self.check_flushes();
            }
            Command::Subscribe {
                id,
                spec,
                inbox,
                reply,
            } => {
                let entry = SubEntry {
                    spec,
                    inbox,
                    server_id: None,
                    reply: Some(reply),
                };
                self.subs.insert(id, entry);
                self.send_subscribe(id);
            }
            Command::Unsubscribe(id) => {
                let Some(entry) = self.subs.remove(&id) else {
                    return;
                };
                entry.inbox.end(None);
                if let Some(server_id) = entry.server_id {
                    self.by_server.remove(&server_id);
                    self.send(unsubscribe_frame(&server_id));
                }
            }
            Command::Settle(frame) => self.send(frame),
            Command::Flush(reply) => {
                let upto = self.ids.load(std::sync::atomic::Ordering::Relaxed);
                self.flushes.push((upto, reply));
                self.check_flushes();
            }
        }
    }

    fn check_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let oldest = self.calls.keys().next().copied();
        let (done, waiting) = std::mem::take(&mut self.flushes)
            .into_iter()
            .partition(|(upto, _)| oldest.is_none_or(|oldest| oldest >= *upto));
        self.flushes = waiting;
        for (_, reply) in done {
            let _ = reply.send(Ok(()));
        }
    }

    fn frame(&mut self, text: &str) {
        let frame = match serde_json::from_str::<Incoming>(text) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring an unexpected frame");
                return;
            }
        };
        match frame.op {
            Op::Ok => {
                if let Some(id) = request_id(frame.id.as_ref()) {
                    self.answered(id, Ok(frame.into_fields()));
                }
            }
            Op::Error => {
                let code = frame.code.unwrap_or_else(|| "unknown".into());
                let message = frame.message.unwrap_or_default();
                match request_id(frame.id.as_ref()) {
                    Some(id) => self.answered(id, Err(ClientError::server(code, message))),
                    None => self.unsolicited_error(frame.subscription_id, code, message),
                }
            }
            Op::Event => match (frame.subscription_id, frame.delivery_id, frame.event) {
                (Some(subscription_id), Some(delivery_id), Some(event)) => {
                    let attempt = frame.attempt.unwrap_or(1);
                    self.event(subscription_id, delivery_id, attempt, event);
                }
                _ => tracing::debug!("ignoring an event frame without its ids or event"),
            },
            Op::Overflow => {
                let Some(subscription_id) = frame.subscription_id else {
                    return;
                };
                let dropped = frame.dropped.as_ref().and_then(Value::as_u64).unwrap_or(0);
                if let Some(entry) = self.entry_of(&subscription_id) {
                    entry.inbox.overflowed(dropped);
                }
                tracing::warn!(subscription = %subscription_id, dropped, "subscriber fell behind");
            }
            Op::Pong | Op::Other => {}
        }
    }

    fn entry_of(&self, server_id: &str) -> Option<&SubEntry> {
        self.by_server
            .get(server_id)
            .and_then(|id| self.subs.get(id))
    }

    fn answered(&mut self, id: u64, reply: Reply) {
        if let Some(call) = self.calls.remove(&id) {
            match call.reply {
                Some(tx) => {
                    let _ = tx.send(reply);
                }
                None => {
                    if let Err(e) = reply {
                        tracing::warn!(error = %e, "a publish_nowait event was rejected");
                    }
                }
            }
            self.check_flushes();
        } else if let Some(sub) = self.pending_subs.remove(&id) {
            self.subscribed(sub, reply);
        }
    }

    fn subscribed(&mut self, sub: u64, reply: Reply) {
        let server_id = reply.and_then(|fields| match fields.get("subscription_id") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ClientError::server(
                "invalid_reply",
                "subscribe reply without a subscription_id",
            )),
        });
        match (server_id, self.subs.get_mut(&sub)) {
            (Ok(server_id), Some(entry)) => {
                entry.server_id = Some(server_id.clone());
                if let Some(reply) = entry.reply.take() {
                    let _ = reply.send(Ok(server_id.clone()));
                }
                self.by_server.insert(server_id.clone(), sub);
                let orphans = std::mem::take(&mut self.orphans);
                for (sid, delivery_id, attempt, event) in orphans {
                    self.event(sid, delivery_id, attempt, event);
                }
            }
            // Unsubscribed while the subscribe was on its way.
            (Ok(server_id), None) => self.send(unsubscribe_frame(&server_id)),
            (Err(e), Some(entry)) => {
                match entry.reply.take() {
                    Some(reply) => {
                        let _ = reply.send(Err(e));
                    }
                    None => {
                        tracing::warn!(error = %e, "a subscription could not be restored");
                        entry.inbox.end(Some(e));
                    }
                }
                self.subs.remove(&sub);
            }
            (Err(_), None) => {}
        }
        if self.pending_subs.is_empty() {
            self.orphans.clear();
            if !matches!(*self.state.borrow(), ConnectionState::Connected) {
                self.set_state(ConnectionState::Connected);
            }
        }
    }

    fn unsolicited_error(
        &mut self,
        subscription_id: Option<String>,
        code: String,
        message: String,
    ) {
        let Some(server_id) = subscription_id else {
            // Acks and nacks are answered only when they fail; nothing waits.
            tracing::debug!(%code, %message, "server error without a request id");
            return;
        };
        if let Some(sub) = self.by_server.remove(&server_id)
            && let Some(entry) = self.subs.remove(&sub)
        {
            tracing::warn!(subscription = %server_id, %code, %message, "subscription ended by the server");
            entry.inbox.end(Some(ClientError::server(code, message)));
        }
    }

    fn event(&mut self, server_id: String, delivery_id: String, attempt: u32, event: Event) {
        let Some(entry) = self.entry_of(&server_id) else {
            if !self.pending_subs.is_empty() && self.orphans.len() < MAX_ORPHANS {
                self.orphans.push((server_id, delivery_id, attempt, event));
            }
            return;
        };
        let path = match (entry.spec.group.is_some(), self.handle.upgrade()) {
            (true, Some(commands)) => AckPath::Ws(commands),
            _ => AckPath::Live,
        };
        let received = Received::new(event, attempt, delivery_id, server_id, path, &entry.inbox);
        entry.inbox.push(received);
    }

    /// The client is done: fail what waits, end every subscription.
    fn finish(mut self, end: ClientError) {
        self.set_state(ConnectionState::Closed(end.clone()));
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            self.command(command);
        }
        let stream_error = (end != ClientError::Closed).then(|| end.clone());
        for (_, call) in std::mem::take(&mut self.calls) {
            match call.reply {
                Some(reply) => {
                    let _ = reply.send(Err(end.clone()));
                }
                None => tracing::warn!(error = %end, "a publish_nowait event was not sent"),
            }
        }
        for (_, reply) in std::mem::take(&mut self.flushes) {
            let _ = reply.send(Err(end.clone()));
        }
        for (_, mut entry) in std::mem::take(&mut self.subs) {
            if let Some(reply) = entry.reply.take() {
                let _ = reply.send(Err(end.clone()));
            }
            entry.inbox.end(stream_error.clone());
        }
    }
}

fn unsubscribe_frame(server_id: &str) -> String {
    serde_json::json!({"op": "unsubscribe", "subscription_id": server_id}).to_string()
}

/// Writes queued frames, flushing once per batch, until the queue closes.
async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    mut queue: mpsc::UnboundedReceiver<Message>,
) -> std::result::Result<(), String> {
    while let Some(first) = queue.recv().await {
        sink.feed(first).await.map_err(|e| e.to_string())?;
        for _ in 1..MAX_WRITE_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            sink.feed(next).await.map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())?;
    }
    sink.close().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_frames_parse_into_what_the_client_needs() {
        let parse = |text: &str| serde_json::from_str::<Incoming>(text).unwrap();
        let ok = parse(r#"{"op":"ok","id":"4","event_id":"e","status":"published"}"#);
        assert_eq!((ok.op, request_id(ok.id.as_ref())), (Op::Ok, Some(4)));
        let fields = ok.into_fields();
        assert_eq!(
            (&fields["event_id"], &fields["status"]),
            (&json!("e"), &json!("published"))
        );
        let batch = parse(r#"{"op":"ok","id":5,"event_ids":["a","b"],"dropped":["b"]}"#);
        assert_eq!(request_id(batch.id.as_ref()), Some(5));
        assert_eq!(batch.into_fields()["event_ids"], json!(["a", "b"]));
        let event = Event::new("a.b", json!({"n": 1})).unwrap();
        let text =
            json!({"op":"event","subscription_id":"s","delivery_id":"d","attempt":2,"event":event})
                .to_string();
        let got = parse(&text);
        assert_eq!(
            (got.op, got.attempt, got.event),
            (Op::Event, Some(2), Some(event))
        );
        let err = parse(r#"{"op":"error","code":"invalid_filter","message":"m"}"#);
        assert_eq!(
            (err.op, err.id, err.code.as_deref()),
            (Op::Error, None, Some("invalid_filter"))
        );
        let overflow = parse(r#"{"op":"overflow","subscription_id":"s","dropped":7}"#);
        assert_eq!(overflow.dropped.and_then(|d| d.as_u64()), Some(7));
        assert_eq!(parse(r#"{"op":"pong"}"#).op, Op::Pong);
        assert_eq!(parse(r#"{"op":"novel","x":1}"#).op, Op::Other);
    }

    #[test]
    fn call_frames_carry_the_id_and_the_remaining_timeout() {
        let publish = CallBody::Publish(r#"{"type":"a"}"#.into()).frame(7);
        let v: Value = serde_json::from_str(&publish).unwrap();
        assert_eq!(v, json!({"op":"publish","id":"7","event":{"type":"a"}}));
        let request = CallBody::Request {
            event: r#"{"type":"a"}"#.into(),
            deadline: Instant::now() + Duration::from_secs(5),
        }
        .frame(8);
        let v: Value = serde_json::from_str(&request).unwrap();
        assert!(v["timeout_ms"].as_u64().unwrap() > 4000);
        let batch = CallBody::Batch {
            events: "[]".into(),
            atomic: true,
        }
        .frame(9);
        assert_eq!(
            serde_json::from_str::<Value>(&batch).unwrap(),
            json!({"op":"publish_batch","id":"9","events":[],"atomic":true})
        );
    }
}
