//! The WebSocket adapter (`/ws`, and `/` for seed clients).
//!
//! A thin layer over [`Session`]: one reader loop parses text frames (v2 by
//! `op`, seed v1 by `type`, per frame) and hands them to the session; one
//! writer task drains the session's bounded outgoing channel, encoding each
//! item once and batching writes (`feed` everything ready, then one
//! `flush`). [`serve`] is generic over the sink and stream halves so it can
//! be driven by channels in tests.
//!
//! Oversize frames: axum's limits are set above
//! [`ServerConfig::max_frame_bytes`](super::ServerConfig::max_frame_bytes)
//! so that a frame a little too large gets a `frame_too_large` error frame
//! and the connection stays open; one far too large (over
//! [`transport_limit`]) closes it with 1009 (message too big) and a reason
//! naming the limit.
//!
//! On server shutdown the client gets a close frame with 1001 (going away);
//! durable consumers are dropped first, so their in-flight deliveries go
//! back to their groups unacked.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::error::ApiError;
use super::protocol::{self, Parsed, RequestId, ServerFrame};
use super::session::{Dialect, Outgoing, Session};
use super::ws_v1;
use crate::auth::{Access, ConnectionPermit, MaybeAccess};
use axum::response::IntoResponse;

/// Bound of a connection's outgoing channel, in frames.
pub const OUTGOING_QUEUE_FRAMES: usize = 1024;
/// Bytes read from the socket at most per read, on both ends of our
/// WebSocket connections. tungstenite zeroes this much of its buffer before
/// every read (with its default of 128 KiB that memset was the largest
/// single symbol, about 7 % of CPU, in a profile of unbatched events);
/// frames larger than this take several reads.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Most frames written before a flush.
const MAX_WRITE_BATCH: usize = 512;
/// How long closing a connection may take once the session has ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The transport-level message limit for a configured frame limit: high
/// enough that moderately oversize frames reach us and get an error frame.
pub fn transport_limit(max_frame_bytes: usize) -> usize {
    max_frame_bytes
        .saturating_mul(2)
        .max(max_frame_bytes.saturating_add(64 * 1024))
}

/// `GET /ws` and `GET /`: upgrades to a WebSocket session.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "websocket",
    responses((status = 101, description = "Switching to the WebSocket protocol (DESIGN §5 frames)"))
)]
pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    MaybeAccess(access): MaybeAccess,
) -> Response {
    // With credentials on the upgrade request, the connection limit is
    // checked before upgrading (a plain 429); otherwise after the auth frame.
    let permit = match &access {
        Some(access) => match access.connect() {
            Ok(permit) => Some(permit),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let limit = transport_limit(state.config.max_frame_bytes);
    let tasks = state.tasks.clone();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            tasks.track_future(async move {
                let (sink, stream) = socket.split();
                serve_as(sink, stream, state, access, permit).await;
            })
        })
}

/// Runs one WebSocket connection until the client leaves, the transport
/// fails, or the server shuts down, with unrestricted access.
pub async fn serve<W, R, E>(sink: W, stream: R, state: AppState)
where
    W: Sink<Message> + Unpin + Send + 'static,
    W::Error: std::fmt::Display,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + 'static,
{
    serve_as(sink, stream, state, Some(Access::unrestricted()), None).await;
}

/// [`serve`] for a principal: `access` is `None` when the connection must
/// authenticate with its first frame (within [`AUTH_FRAME_TIMEOUT`]);
/// without one it is closed with 1008 and the reason.
pub async fn serve_as<W, R, E>(
    sink: W,
    mut stream: R,
    state: AppState,
    access: Option<Access>,
    permit: Option<ConnectionPermit>,
) where
    W: Sink<Message> + Unpin + Send + 'static,
    W::Error: std::fmt::Display,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let _count = state.connections.websocket();
    let (tx, rx) = mpsc::channel(OUTGOING_QUEUE_FRAMES);
    let (close_tx, close_rx) = oneshot::channel();
    let broken = CancellationToken::new();
    let writer = tokio::spawn(write_loop(sink, rx, close_rx, broken.clone()));
    let mut session = Session::new(state.router.clone(), state.session_config(), tx);
    session.list_in(state.subscribers.clone(), "websocket");
    let (access, _permit, v1) = match access {
        Some(access) => (access, permit, false),
        None => match first_frame_auth(&mut stream, &state, &session).await {
            Ok(authenticated) => authenticated,
            Err(reason) => {
                drop(session);
                let _ = close_tx.send(CloseFrame {
                    code: close_code::POLICY,
                    reason: reason.into(),
                });
                let mut writer = writer;
                if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
                    .await
                    .is_err()
                {
                    writer.abort();
                }
                return;
            }
        },
    };
    session.set_access(access);
    let mut reader = Reader {
        session,
        max_frame_bytes: state.config.max_frame_bytes,
        v1,
    };
    let slow = reader.session.disconnect_token();
    let close = loop {
        let message = tokio::select! {
            biased;
            () = state.shutdown.cancelled() => break Some(CloseFrame {
                code: close_code::AWAY,
                reason: "server shutting down".into(),
            }),
            () = broken.cancelled() => break None,
            () = slow.cancelled() => break Some(CloseFrame {
                code: close_code::POLICY,
                reason: "slow consumer: a subscription with slow_consumer=disconnect fell behind"
                    .into(),
            }),
            Some(answer) = reader.session.next_published() => {
                reader.session.reply_published(answer).await;
                continue;
            }
            message = stream.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => reader.text(text.as_str()).await,
            Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                Ok(text) => reader.text(text).await,
                Err(_) => {
                    let e =
                        ApiError::bad_request("invalid_frame", "binary frame is not UTF-8 JSON");
                    reader.error(&None, &e).await;
                }
            },
            Some(Ok(Message::Close(_))) | None => break None,
            Some(Err(e)) if too_large(&e) => {
                break Some(CloseFrame {
                    code: close_code::SIZE,
                    reason: format!(
                        "message too big: the limit is {} bytes (max_frame_bytes)",
                        state.config.max_frame_bytes
                    )
                    .into(),
                });
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                break None;
            }
            Some(Ok(_)) => {}
        }
    };
    // Publishes under way are answered (the events may be stored already),
    // then subscriptions stop: durable consumers return their in-flight
    // deliveries to their groups before the socket closes.
    reader.session.drain_publishes().await;
    drop(reader);
    match close {
        Some(frame) => {
            let _ = close_tx.send(frame);
        }
        None => drop(close_tx),
    }
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Whether a read failed because a message or frame exceeded the transport
/// limit (tungstenite's capacity error, possibly wrapped by axum). The
/// socket is still writable then, so the client can be told why.
///
/// The rest of the frame is not read: tungstenite ends the stream at its
/// first error. Closing with data unread makes the kernel reset the
/// connection; a client that reads while it writes (as WebSocket libraries
/// do) has the close frame by then, one that writes the whole frame first
/// sees its write fail.
fn too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) =
            e.downcast_ref::<WsError>()
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// How long an unauthenticated connection has to send its auth frame.
pub const AUTH_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for the first frame, which must carry credentials; replies `ok`
/// with the principal. `Err` is the close reason (kept under the 123-byte
/// limit of close frames).
async fn first_frame_auth<R, E>(
    stream: &mut R,
    state: &AppState,
    session: &Session,
) -> Result<(Access, Option<ConnectionPermit>, bool), String>
where
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let auth = &state.config.auth;
    let first = tokio::select! {
        () = state.shutdown.cancelled() => return Err("server shutting down".into()),
        next = tokio::time::timeout(AUTH_FRAME_TIMEOUT, stream.next()) => next,
    };
    let text = match first {
        Err(_) => return Err(short(&auth.unauthorized("no auth frame in time").message)),
        Ok(Some(Ok(Message::Text(text)))) => text.to_string(),
        Ok(Some(Ok(Message::Binary(bytes)))) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(_) => return Err("unauthorized: no auth frame".into()),
    };
    let frame = crate::auth::parse_auth_frame(&text)
        .map_err(|reason| short(&auth.unauthorized(&reason).message))?;
    let access = auth
        .authenticate(&frame.token)
        .map_err(|e| short(&e.message))?;
    let permit = access.connect().map_err(|e| short(&e.message))?;
    let reply = if frame.v1 {
        serde_json::json!({"type": "authenticated", "principal": access.principal()})
    } else {
        let mut reply = serde_json::json!({"op": "ok", "principal": access.principal()});
        if let Some(id) = frame.id {
            reply["id"] = id;
        }
        reply
    };
    session.send_reply(reply.to_string()).await;
    Ok((access, Some(permit), frame.v1))
}

/// A close reason within the 123 bytes a close frame allows.
fn short(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

struct Reader {
    session: Session,
    max_frame_bytes: usize,
    /// Whether the client has spoken v1; its unparseable frames then get
    /// v1-shaped errors.
    v1: bool,
}

impl Reader {
    async fn text(&mut self, text: &str) {
        if text.len() > self.max_frame_bytes {
            let e = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "frame_too_large",
                format!(
                    "frame is {} bytes, over the limit of {} bytes",
                    text.len(),
                    self.max_frame_bytes
                ),
            );
            return self.error(&None, &e).await;
        }
        match protocol::parse(text) {
            Ok(Parsed::V2(frame)) => self.session.handle(frame).await,
            Ok(Parsed::V1(frame)) => {
                self.v1 = true;
                ws_v1::handle(&mut self.session, frame).await;
            }
            Err(e) => {
                let id = e.id.clone();
                self.error(&id, &e.into()).await;
            }
        }
    }

    async fn error(&self, id: &RequestId, e: &ApiError) {
        let text = if self.v1 {
            ws_v1::error_frame(id, e)
        } else {
            ServerFrame::error(id, e)
        };
        self.session.send_reply(text).await;
    }
}

/// Encodes one outgoing item as a text frame; `None` when it has no frame.
pub fn encode(item: Outgoing) -> Option<Message> {
    let text = match item {
        Outgoing::Reply(text) => text,
        Outgoing::Event {
            subscription,
            delivery_id,
            attempt,
            event,
            ..
        } => match subscription.dialect {
            Dialect::V1 => ws_v1::event_frame(&subscription.id, &event),
            Dialect::V2 | Dialect::Sse => ServerFrame::Event {
                subscription_id: &subscription.id,
                delivery_id: delivery_id.as_deref().unwrap_or(&event.id),
                attempt,
                event: &event,
            }
            .to_text(),
        },
        Outgoing::Overflow {
            subscription,
            dropped,
        } => match subscription.dialect {
            Dialect::V1 => ws_v1::overflow_frame(&subscription.id, dropped),
            Dialect::V2 | Dialect::Sse => ServerFrame::Overflow {
                subscription_id: &subscription.id,
                dropped,
            }
            .to_text(),
        },
        Outgoing::Ended {
            subscription,
            error,
        } => {
            let e = error?;
            match subscription.dialect {
                Dialect::V1 => ws_v1::error_frame(&None, &e),
                Dialect::V2 | Dialect::Sse => ServerFrame::Error {
                    id: &None,
                    code: e.code,
                    message: &e.message,
                    subscription_id: Some(&subscription.id),
                    retry_after_ms: None,
                    current_version: None,
                }
                .to_text(),
            }
        }
    };
    Some(Message::Text(text.into()))
}

/// Writes outgoing items until the session ends (`close` resolves) or the
/// transport fails (then `broken` is cancelled so the reader stops too).
async fn write_loop<W>(
    mut sink: W,
    mut rx: mpsc::Receiver<Outgoing>,
    mut close: oneshot::Receiver<CloseFrame>,
    broken: CancellationToken,
) where
    W: Sink<Message> + Unpin,
    W::Error: std::fmt::Display,
{
    let result = loop {
        let first = tokio::select! {
            biased;
            item = rx.recv() => item,
            frame = &mut close => break finish(&mut sink, &mut rx, frame.ok()).await,
        };
        let Some(first) = first else {
            break finish(&mut sink, &mut rx, close.await.ok()).await;
        };
        if let Err(e) = write_batch(&mut sink, &mut rx, first).await {
            break Err(e);
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "websocket write failed");
        broken.cancel();
    }
}

async fn write_batch<W>(
    sink: &mut W,
    rx: &mut mpsc::Receiver<Outgoing>,
    first: Outgoing,
) -> Result<(), W::Error>
where
    W: Sink<Message> + Unpin,
{
    if let Some(message) = encode(first) {
        sink.feed(message).await?;
    }
    for _ in 1..MAX_WRITE_BATCH {
        let Ok(item) = rx.try_recv() else { break };
        if let Some(message) = encode(item) {
            sink.feed(message).await?;
        }
    }
    sink.flush().await
}

/// Writes what is already queued, then the close frame (if any), and
/// closes the sink.
async fn finish<W>(
    sink: &mut W,
    rx: &mut mpsc::Receiver<Outgoing>,
    frame: Option<CloseFrame>,
) -> Result<(), W::Error>
where
    W: Sink<Message> + Unpin,
{
    while let Ok(item) = rx.try_recv() {
        if let Some(message) = encode(item) {
            sink.feed(message).await?;
        }
    }
    if let Some(frame) = frame {
        sink.feed(Message::Close(Some(frame))).await?;
    }
    sink.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::router::{Router, RouterConfig};
    use crate::server::ServerConfig;
    use futures::channel::mpsc as fmpsc;
    use serde_json::{Value, json};
    use std::convert::Infallible;
    use std::sync::Arc;

    async fn next_text(rx: &mut fmpsc::UnboundedReceiver<Message>) -> Value {
        match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
            Ok(Some(Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_over_channels_get_replies_and_shutdown_closes_with_going_away() {
        let router = Router::new(Arc::new(MemoryBroker::default()), RouterConfig::default());
        let config = ServerConfig {
            max_frame_bytes: 100,
            ..ServerConfig::default()
        };
        let state = AppState::new(router, config, CancellationToken::new());
        let (out_tx, mut out_rx) = fmpsc::unbounded::<Message>();
        let (in_tx, in_rx) = fmpsc::unbounded::<Result<Message, Infallible>>();
        let task = tokio::spawn(serve(out_tx, in_rx, state.clone()));
        let send = |text: String| {
            in_tx
                .unbounded_send(Ok(Message::Text(text.into())))
                .unwrap()
        };

        send(json!({"op":"ping","id":1}).to_string());
        assert_eq!(next_text(&mut out_rx).await, json!({"op":"pong","id":1}));
        send("x".repeat(150));
        assert_eq!(next_text(&mut out_rx).await["code"], "frame_too_large");
        send("{oops".into());
        assert_eq!(next_text(&mut out_rx).await["code"], "invalid_json");
        send(json!({"type":"ping"}).to_string());
        assert_eq!(next_text(&mut out_rx).await["type"], "pong");
        send("{oops".into());
        let v1_error = next_text(&mut out_rx).await;
        assert_eq!(
            (v1_error["type"].as_str(), v1_error["code"].as_str()),
            (Some("error"), Some("invalid_json"))
        );
        assert_eq!(state.connections.snapshot().websocket, 1);

        state.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(5), out_rx.next()).await {
            Ok(Some(Message::Close(Some(frame)))) => assert_eq!(frame.code, close_code::AWAY),
            other => panic!("expected a close frame, got {other:?}"),
        }
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(state.connections.snapshot().websocket, 0);
    }
}
