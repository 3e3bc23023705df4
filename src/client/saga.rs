//! Sagas: multi-step processes with compensations, whose state lives in
//! event streams so that a saga survives its client, with the semantics
//! (and the stored format) of the Python SDK's `@client.saga`.
//!
//! - **Identity.** A start step begins a saga whose id is the event's
//!   `correlation_id` (or its id); [`SagaContext::publish`] stamps that id
//!   as `correlation_id`, and later events with it go to the saga.
//! - **State.** Each saga appends its history to the event stream
//!   `saga.<name>.<id>` (started, each step with its data, compensations,
//!   the end) with `expected_version`, so two agents never both advance
//!   one saga; `saga.<name>` lists started and ended sagas.
//!   [`SagaBuilder::start`] reloads unfinished sagas and carries on,
//!   finishing interrupted compensations.
//! - **Compensation.** A step's compensation is registered once the step
//!   succeeded; a failing or timed-out step, a passed `step_timeout` or
//!   [`SagaContext::compensate`] runs the registered ones in reverse, each
//!   once, and ends the saga `compensated`.
//! - **Delivery.** Events arrive through one durable group (`saga.<name>`),
//!   at least once; an event a saga already handled is ignored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Client, ClientError, Received, Result};
use crate::event::Event;
use crate::topic::Pattern;

/// What a step returns: the context (with its data) or why it failed.
pub type StepResult = std::result::Result<SagaContext, Box<dyn std::error::Error + Send + Sync>>;
type StepFn = Arc<dyn Fn(SagaContext, Event) -> BoxFuture<'static, StepResult> + Send + Sync>;
type CompensateFn = Arc<dyn Fn(SagaContext) -> BoxFuture<'static, ()> + Send + Sync>;

/// How often deadlines (`step_timeout`) are checked.
const TICK: Duration = Duration::from_millis(50);

/// One step: the topics that trigger it, its handler and compensation.
pub struct Step {
    name: String,
    topics: Vec<Pattern>,
    start: bool,
    timeout: Option<Duration>,
    run: StepFn,
    compensate: Option<CompensateFn>,
}

impl Step {
    /// A step named `name` (its name in the stored state), run for events
    /// on `topics` (patterns).
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for an invalid pattern.
    pub fn new<F, Fut>(name: &str, topics: &[&str], run: F) -> Result<Step>
    where
        F: Fn(SagaContext, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StepResult> + Send + 'static,
    {
        let topics = topics
            .iter()
            .map(|t| Pattern::parse(t))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Invalid {
                code: "invalid_pattern",
                message: e.to_string(),
            })?;
        Ok(Step {
            name: name.to_string(),
            topics,
            start: false,
            timeout: None,
            run: Arc::new(move |ctx, event| Box::pin(run(ctx, event))),
            compensate: None,
        })
    }

    /// Makes this a start step: it begins a new saga.
    #[must_use]
    pub fn starts(mut self) -> Step {
        self.start = true;
        self
    }

    /// Bounds the handler; running out fails the step.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Step {
        self.timeout = Some(timeout);
        self
    }

    /// Runs `undo` when the saga compensates after this step succeeded.
    #[must_use]
    pub fn compensation<F, Fut>(mut self, undo: F) -> Step
    where
        F: Fn(SagaContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.compensate = Some(Arc::new(move |ctx| Box::pin(undo(ctx))));
        self
    }
}

/// What a step sees: the saga's id and data, and a way to publish in it.
pub struct SagaContext {
    /// The saga id (the `correlation_id` of its events).
    pub id: String,
    /// Data kept across steps (stored after each step).
    pub data: Map<String, Value>,
    client: Client,
    end: Option<&'static str>,
}

impl SagaContext {
    /// Publishes `payload` on `topic` with the saga id as correlation id.
    ///
    /// # Errors
    /// As [`Client::publish_with`].
    pub async fn publish(&self, topic: &str, payload: Value) -> Result<String> {
        let mut event = Event::new(topic, payload).map_err(|e| ClientError::Invalid {
            code: "invalid_event",
            message: e.to_string(),
        })?;
        event.correlation_id = Some(self.id.clone());
        self.client.publish_with(event).await
    }

    /// Ends the saga as `completed` after this step.
    pub fn complete(&mut self) {
        self.end = Some("completed");
    }

    /// Compensates after this step.
    pub fn compensate(&mut self) {
        self.end = Some("compensating");
    }
}

/// One saga's state, as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaState {
    /// The saga id.
    pub id: String,
    /// The version of its stream.
    pub version: u64,
    /// `running`, `compensating`, `completed` or `compensated`.
    pub status: String,
    /// Steps run, in order.
    pub steps: Vec<String>,
    /// Data after the last step.
    pub data: Map<String, Value>,
    /// Steps whose compensation is registered, in order.
    pub compensations: Vec<String>,
    /// Compensations run, in order.
    pub compensated: Vec<String>,
    handled: HashSet<String>,
    /// Seconds since the epoch.
    deadline: Option<f64>,
}

/// Defines a saga; see the [module docs](self).
pub struct SagaBuilder {
    client: Client,
    name: String,
    steps: Vec<Step>,
    step_timeout: Option<Duration>,
}

impl SagaBuilder {
    /// A saga named `name` (a stream name segment) run through `client`.
    pub fn new(client: &Client, name: &str) -> SagaBuilder {
        SagaBuilder {
            client: client.clone(),
            name: name.to_string(),
            steps: Vec::new(),
            step_timeout: None,
        }
    }

    /// Adds a step.
    #[must_use]
    pub fn step(mut self, step: Step) -> SagaBuilder {
        self.steps.push(step);
        self
    }

    /// Compensates a saga that waits longer than this for its next step.
    #[must_use]
    pub fn step_timeout(mut self, timeout: Duration) -> SagaBuilder {
        self.step_timeout = Some(timeout);
        self
    }

    /// Reloads unfinished sagas (finishing interrupted compensations),
    /// then runs: subscribes to the steps' topics in the durable group
    /// `saga.<name>`. Dropping the returned [`Saga`] stops it.
    ///
    /// # Errors
    /// Reading the saga streams or subscribing failed.
    pub async fn start(self) -> Result<Saga> {
        let engine = Arc::new(Engine {
            client: self.client,
            name: self.name,
            steps: self.steps,
            step_timeout: self.step_timeout,
            sagas: Mutex::new(HashMap::new()),
        });
        engine.reload().await?;
        let mut topics: Vec<String> = engine
            .steps
            .iter()
            .flat_map(|s| s.topics.iter().map(Pattern::to_source))
            .collect();
        topics.sort();
        topics.dedup();
        let mut sub = engine
            .client
            .subscribe(topics)
            .group(format!("saga.{}", engine.name))
            .start()
            .await?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let runner = engine.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    received = sub.recv() => match received {
                        Some(received) => runner.delivered(received).await,
                        None => return,
                    },
                    _ = tick.tick() => runner.check_deadlines().await,
                }
            }
        });
        Ok(Saga {
            engine,
            _stop: stop.drop_guard(),
        })
    }
}

/// A running saga definition, from [`SagaBuilder::start`].
pub struct Saga {
    engine: Arc<Engine>,
    _stop: DropGuard,
}

impl Saga {
    /// The state of saga `id` as this agent knows it.
    pub fn state(&self, id: &str) -> Option<SagaState> {
        self.engine.sagas.lock().get(id).cloned()
    }

    /// Waits (at most `timeout`) until saga `id` ended; returns its state.
    ///
    /// # Errors
    /// [`ClientError::Timeout`] when it did not end in time.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<SagaState> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(state) = self.state(id)
                && matches!(state.status.as_str(), "completed" | "compensated")
            {
                return Ok(state);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ClientError::Timeout(timeout));
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// The event stream holding saga `id`'s state.
    pub fn stream(&self, id: &str) -> String {
        self.engine.stream(id)
    }
}

struct Engine {
    client: Client,
    name: String,
    steps: Vec<Step>,
    step_timeout: Option<Duration>,
    sagas: Mutex<HashMap<String, SagaState>>,
}

fn segment(id: &str) -> String {
    let plain = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        return id.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    hex[..32].to_string()
}

fn now_secs() -> f64 {
    jiff::Timestamp::now().as_millisecond() as f64 / 1000.0
}

impl Engine {
    fn stream(&self, id: &str) -> String {
        format!("saga.{}.{}", self.name, segment(id))
    }

    async fn read_all(&self, stream: &str) -> Result<Vec<crate::broker::StreamEntry>> {
        let mut entries = Vec::new();
        loop {
            let page = self
                .client
                .read_stream(stream, entries.len() as u64 + 1, 1000)
                .await?;
            if page.entries.is_empty() {
                return Ok(entries);
            }
            entries.extend(page.entries);
        }
    }

    async fn reload(&self) -> Result<()> {
        let mut started = Vec::new();
        let mut ended = HashSet::new();
        for entry in self.read_all(&format!("saga.{}", self.name)).await? {
            let id = entry.event.payload["saga_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if entry.event.topic == "saga.ended" {
                ended.insert(id);
            } else {
                started.push(id);
            }
        }
        for id in started {
            if ended.contains(&id) {
                continue;
            }
            let mut state = self.load(&id).await?;
            if state.status == "compensating" {
                self.run_compensations(&mut state).await?;
            }
            self.sagas.lock().insert(id, state);
        }
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<SagaState> {
        let mut state = SagaState {
            id: id.to_string(),
            status: "running".into(),
            ..SagaState::default()
        };
        for entry in self.read_all(&self.stream(id)).await? {
            let p = &entry.event.payload;
            state.version = entry.version;
            match entry.event.topic.as_str() {
                "saga.step" => {
                    state
                        .steps
                        .push(p["step"].as_str().unwrap_or_default().into());
                    state
                        .handled
                        .insert(p["event_id"].as_str().unwrap_or_default().into());
                    state.data = p["data"].as_object().cloned().unwrap_or_default();
                    state.compensations = strings(&p["compensations"]);
                    state.deadline = p["deadline"].as_f64();
                }
                "saga.compensating" => state.status = "compensating".into(),
                "saga.compensation_done" => state
                    .compensated
                    .push(p["step"].as_str().unwrap_or_default().into()),
                "saga.completed" => state.status = "completed".into(),
                "saga.compensated" => state.status = "compensated".into(),
                _ => {}
            }
        }
        Ok(state)
    }

    async fn append(&self, state: &mut SagaState, topic: &str, payload: Value) -> Result<()> {
        let mut event = Event::new(topic, payload).map_err(|e| ClientError::Invalid {
            code: "invalid_event",
            message: e.to_string(),
        })?;
        event.correlation_id = Some(state.id.clone());
        let appended = self
            .client
            .append(&self.stream(&state.id), event, Some(state.version))
            .await?;
        state.version = appended.version;
        Ok(())
    }

    async fn index(&self, topic: &str, payload: Value) -> Result<()> {
        let event = Event::new(topic, payload).map_err(|e| ClientError::Invalid {
            code: "invalid_event",
            message: e.to_string(),
        })?;
        self.client
            .append(&format!("saga.{}", self.name), event, None)
            .await?;
        Ok(())
    }

    async fn delivered(&self, received: Received) {
        let id = received
            .event
            .correlation_id
            .clone()
            .unwrap_or_else(|| received.event.id.clone());
        match self.dispatch(&id, received.event.clone()).await {
            Ok(()) => {
                let _ = received.ack().await;
            }
            Err(e) => {
                // Another agent advanced this saga, or the router is away:
                // forget the copy; the event comes back to the reloaded state.
                tracing::warn!(saga = %self.name, %id, error = %e, "saga step not stored");
                self.sagas.lock().remove(&id);
                let _ = received.nack(Some(TICK)).await;
            }
        }
    }

    fn step_for(&self, topic: &str, new: bool) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| s.start == new && s.topics.iter().any(|p| p.matches(topic)))
    }

    async fn dispatch(&self, id: &str, event: Event) -> Result<()> {
        let known = self.sagas.lock().get(id).cloned();
        let mut state = match known {
            Some(state) => state,
            None => self.load(id).await?,
        };
        let Some(step) = self.step_for(&event.topic, state.version == 0) else {
            return Ok(());
        };
        if state.status != "running" || state.handled.contains(&event.id) {
            return Ok(());
        }
        if state.version == 0 {
            self.index("saga.started", json!({"saga_id": id})).await?;
            self.append(&mut state, "saga.started", json!({"saga_id": id}))
                .await?;
        }
        let result = self.run_step(&mut state, step, event).await;
        self.sagas.lock().insert(id.to_string(), state);
        result
    }

    async fn run_step(&self, state: &mut SagaState, step: &Step, event: Event) -> Result<()> {
        let ctx = SagaContext {
            id: state.id.clone(),
            data: state.data.clone(),
            client: self.client.clone(),
            end: None,
        };
        let event_id = event.id.clone();
        let run = (step.run)(ctx, event);
        let outcome = match step.timeout {
            Some(limit) => tokio::time::timeout(limit, run)
                .await
                .unwrap_or_else(|_| Err("step timed out".into())),
            None => run.await,
        };
        let ctx = match outcome {
            Ok(ctx) => ctx,
            Err(e) => {
                tracing::warn!(saga = %self.name, id = %state.id, step = %step.name, error = %e, "saga step failed");
                return self.start_compensation(state).await;
            }
        };
        if step.compensate.is_some() {
            state.compensations.push(step.name.clone());
        }
        state.steps.push(step.name.clone());
        state.handled.insert(event_id.clone());
        state.data = ctx.data;
        state.deadline = self.step_timeout.map(|t| now_secs() + t.as_secs_f64());
        let payload = json!({
            "step": step.name, "event_id": event_id, "data": state.data,
            "compensations": state.compensations, "deadline": state.deadline,
        });
        self.append(state, "saga.step", payload).await?;
        match ctx.end {
            Some("completed") => self.finish(state, "completed").await,
            Some(_) => self.start_compensation(state).await,
            None => Ok(()),
        }
    }

    async fn start_compensation(&self, state: &mut SagaState) -> Result<()> {
        state.status = "compensating".into();
        let payload = json!({"compensations": state.compensations});
        self.append(state, "saga.compensating", payload).await?;
        self.run_compensations(state).await
    }

    async fn run_compensations(&self, state: &mut SagaState) -> Result<()> {
        for name in state.compensations.clone().iter().rev() {
            if state.compensated.contains(name) {
                continue;
            }
            let undo = self.steps.iter().find(|s| &s.name == name);
            if let Some(undo) = undo.and_then(|s| s.compensate.clone()) {
                let ctx = SagaContext {
                    id: state.id.clone(),
                    data: state.data.clone(),
                    client: self.client.clone(),
                    end: None,
                };
                undo(ctx).await;
            }
            state.compensated.push(name.clone());
            self.append(state, "saga.compensation_done", json!({"step": name}))
                .await?;
        }
        self.finish(state, "compensated").await
    }

    async fn finish(&self, state: &mut SagaState, status: &str) -> Result<()> {
        state.status = status.into();
        state.deadline = None;
        let data = Value::Object(state.data.clone());
        self.append(state, &format!("saga.{status}"), json!({"data": data}))
            .await?;
        self.index("saga.ended", json!({"saga_id": state.id, "status": status}))
            .await
    }

    async fn check_deadlines(&self) {
        let now = now_secs();
        let due: Vec<SagaState> = self
            .sagas
            .lock()
            .values()
            .filter(|s| s.status == "running" && s.deadline.is_some_and(|d| now > d))
            .cloned()
            .collect();
        for mut state in due {
            tracing::warn!(saga = %self.name, id = %state.id, "saga timed out");
            if let Err(e) = self.start_compensation(&mut state).await {
                tracing::warn!(saga = %self.name, id = %state.id, error = %e, "saga compensation not stored");
            }
            self.sagas.lock().insert(state.id.clone(), state);
        }
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
