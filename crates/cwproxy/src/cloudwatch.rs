//! CloudWatch Logs delivery: two sinks (traffic → `LOG_GROUP_NAME`, health →
//! `HEALTH_LOG_GROUP_NAME`) fed from the telemetry pipeline through bounded queues.
//!
//! Each sink is one task. It waits to be activated (region and SDK config are resolved in the
//! background after the listener opened), creates its group and stream (ignoring "already
//! exists", retrying network errors), then batches events by the `PutLogEvents` rules in
//! [`crate::cwlogs`], flushing on size or every second. Throttling, 5xx and network errors are
//! retried with jittered backoff while the queue keeps accepting events; batches that still fail
//! are counted and reported, never dropped silently. A credentials error that retrying cannot fix
//! (no credentials anywhere, a broken profile) is reported once and turns the sink off, so events
//! do not pile up in a queue that will never drain; they stay on stdout.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials};
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client;
use netpolicy::{Backoff, Jitter};
use telemetry::diag::Diag;
use telemetry::entry::{cloudwatch_form, Category};
use telemetry::pipeline::EventSink;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cwlogs::{self, LogEvent, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_EVENT_BYTES};

/// Events a sink queue holds before new ones are dropped (counted).
pub const QUEUE_EVENTS: usize = 16_384;
/// Bytes a sink queue holds before new events are dropped (counted).
pub const QUEUE_BYTES: usize = 64 << 20;
/// Pending events are sent at least this often.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts per batch for retryable errors (throttling, 5xx, network).
pub const MAX_ATTEMPTS: u32 = 10;
/// First retry delay; doubles per attempt up to [`MAX_BACKOFF`] (or [`MAX_SETUP_BACKOFF`]).
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// Largest delay between two attempts of one batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest delay between two attempts to create the group and stream.
pub const MAX_SETUP_BACKOFF: Duration = Duration::from_secs(30);
/// Waits between attempts of one batch. Jittered (each wait a random point in the upper half of
/// the nominal one) so that many sidecars throttled at the same moment do not retry in lock-step.
const BATCH_BACKOFF: Backoff = Backoff::new(BASE_BACKOFF, MAX_BACKOFF).jitter(Jitter::UpperHalf);
/// Waits between attempts to create the group and stream; jittered as [`BATCH_BACKOFF`].
const SETUP_BACKOFF: Backoff =
    Backoff::new(BASE_BACKOFF, MAX_SETUP_BACKOFF).jitter(Jitter::UpperHalf);
/// Time allowed for one API call attempt.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed to connect to the endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Traffic events.
    Traffic,
    /// Health events.
    Health,
}

impl Kind {
    /// `traffic` / `health` (stream names and messages).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Traffic => "traffic",
            Kind::Health => "health",
        }
    }
}

/// Counters of one sink.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events accepted into the queue.
    pub accepted: AtomicU64,
    /// Events CloudWatch accepted.
    pub delivered: AtomicU64,
    /// Events that failed after every retry, or were rejected by CloudWatch.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full or they could not be trimmed.
    pub dropped: AtomicU64,
    /// Batches retried at least once.
    pub retries: AtomicU64,
    /// Batches CloudWatch accepted.
    pub batches: AtomicU64,
    /// Bytes of those batches as `PutLogEvents` counts them (message + 26 per event).
    pub batch_bytes: AtomicU64,
    queued_bytes: AtomicUsize,
    disabled: AtomicBool,
    activated: AtomicBool,
}

/// Where one sink writes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The log group.
    pub group: String,
    /// The log stream.
    pub stream: String,
}

struct Queue {
    kind: Kind,
    tx: mpsc::Sender<LogEvent>,
    stats: Arc<Stats>,
    diag: Diag,
}

impl Queue {
    fn push(&self, timestamp_ms: i64, event: &[u8]) {
        if self.stats.disabled.load(Ordering::Relaxed) {
            return;
        }
        // Rendered lines are JSON produced by telemetry, hence UTF-8 (one copy, no re-encoding);
        // lossy only on the impossible path keeps this total.
        let message = match String::from_utf8(cloudwatch_form(event).into_owned()) {
            Ok(m) => m,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let message = match cwlogs::trim_event(message, MAX_EVENT_BYTES) {
            Ok(m) => m,
            Err(e) => {
                self.drop_one(&format!(
                    "dropping CloudWatch {} event: {e}",
                    self.kind.as_str()
                ));
                return;
            }
        };
        let bytes = message.len();
        let queued = self.stats.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        if queued + bytes > QUEUE_BYTES {
            self.stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.drop_full();
            return;
        }
        match self.tx.try_send(LogEvent {
            timestamp_ms,
            message,
        }) {
            Ok(()) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                self.drop_full();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The sink is off (no region, or it failed to initialize; already reported).
                self.stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
        }
    }

    fn drop_full(&self) {
        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // One line per 100 drops, not one per request.
        if n % 100 == 1 {
            self.diag.log(format_args!(
                "dropping CloudWatch {} log events because the queue is full (total dropped: {n})",
                self.kind.as_str()
            ));
        }
    }

    fn drop_one(&self, message: &str) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.diag.log(message);
    }
}

/// Routes pipeline events to the traffic or health queue.
struct Router {
    traffic: Queue,
    health: Queue,
}

impl EventSink for Router {
    fn deliver(&self, category: Category, timestamp_ms: i64, event: &[u8]) {
        match category {
            Category::Traffic => self.traffic.push(timestamp_ms, event),
            Category::Health => self.health.push(timestamp_ms, event),
        }
    }
}

/// What activates a sink.
pub struct Activation {
    /// The SDK client.
    pub client: Client,
    /// Group and stream.
    pub target: Target,
}

struct SinkTask {
    kind: Kind,
    stats: Arc<Stats>,
    handle: JoinHandle<()>,
}

/// Turns the sinks on once region and SDK configuration are known; dropping it without
/// activating a sink turns that sink off.
pub struct Activator {
    senders: Vec<(Kind, oneshot::Sender<Activation>)>,
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activator").finish_non_exhaustive()
    }
}

impl Activator {
    /// Starts delivery of `kind` to `activation`'s group and stream.
    pub fn activate(&mut self, kind: Kind, activation: Activation) {
        if let Some(i) = self.senders.iter().position(|(k, _)| *k == kind) {
            let (_, tx) = self.senders.swap_remove(i);
            let _ = tx.send(activation);
        }
    }
}

/// Both sinks; created before the pipeline starts so no early event is missed.
pub struct Sinks {
    tasks: Vec<SinkTask>,
    stop: watch::Sender<bool>,
    diag: Diag,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks").finish_non_exhaustive()
    }
}

impl Sinks {
    /// Creates both queues and their (inactive) tasks; the returned sink goes to the pipeline.
    pub fn new(diag: Diag) -> (Self, Activator, Arc<dyn EventSink>) {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut senders = Vec::new();
        let mut queue = |kind: Kind| {
            let (tx, rx) = mpsc::channel(QUEUE_EVENTS);
            let (act_tx, act_rx) = oneshot::channel();
            let stats = Arc::new(Stats::default());
            let handle = tokio::spawn(run(
                kind,
                rx,
                act_rx,
                Arc::clone(&stats),
                stop_rx.clone(),
                diag.clone(),
            ));
            tasks.push(SinkTask {
                kind,
                stats: Arc::clone(&stats),
                handle,
            });
            senders.push((kind, act_tx));
            Queue {
                kind,
                tx,
                stats,
                diag: diag.clone(),
            }
        };
        let traffic = queue(Kind::Traffic);
        let health = queue(Kind::Health);
        let router: Arc<dyn EventSink> = Arc::new(Router { traffic, health });
        (Self { tasks, stop, diag }, Activator { senders }, router)
    }

    /// Counters of one sink.
    pub fn stats(&self, kind: Kind) -> Option<Arc<Stats>> {
        self.tasks
            .iter()
            .find(|t| t.kind == kind)
            .map(|t| Arc::clone(&t.stats))
    }

    /// Sends what is queued and stops, within `budget`. Returns false when the budget ran out
    /// with events still unsent; undelivered events are counted on stderr either way.
    pub async fn close(self, budget: Duration) -> bool {
        // Sinks not activated by now stay off.
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + budget;
        let mut complete = true;
        for task in self.tasks {
            let mut handle = task.handle;
            let timed_out = tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err();
            if timed_out {
                handle.abort();
                let _ = handle.await;
            }
            let s = &task.stats;
            // Failed batches were reported when they failed; this is what never got a verdict.
            let lost = s.accepted.load(Ordering::Relaxed).saturating_sub(
                s.delivered.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed),
            );
            if lost > 0 && s.activated.load(Ordering::Relaxed) {
                let why = if timed_out {
                    format!(
                        "within the {} shutdown budget",
                        gosyntax::format_go_duration(budget)
                    )
                } else {
                    "because the sink never became ready".to_owned()
                };
                self.diag.log(format_args!(
                    "CloudWatch {} sink: {lost} log events not delivered {why} (they are on stdout)",
                    task.kind.as_str(),
                ));
                complete &= !timed_out;
            }
        }
        complete
    }
}

/// Time allowed for the first credentials lookup (IMDS and ECS providers have their own, shorter
/// timeouts; `credential_process` and SSO may take longer). Past it, the sinks start and retry.
pub const CREDENTIALS_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// True for credentials errors that no retry can fix: nothing in the chain has credentials, or a
/// profile is misconfigured. Timeouts and provider failures (a metadata endpoint or a
/// `credential_process` command failing now) may heal and are retried.
fn credentials_error_is_permanent(e: &CredentialsError) -> bool {
    matches!(
        e,
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_)
    )
}

/// The first [`CredentialsError`] in `err`'s chain of causes, if any.
fn credentials_cause<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// The credential chain, remembering a permanent error. The profile provider reports a failed
/// initialisation only to its first caller (later ones get "initialization error already taken",
/// which looks transient), so every caller — the start-up check and both sinks — must see that
/// first verdict.
#[derive(Debug)]
struct RememberPermanent<P> {
    inner: P,
    verdict: std::sync::OnceLock<String>,
}

impl<P: ProvideCredentials> RememberPermanent<P> {
    fn new(inner: P) -> Self {
        Self {
            inner,
            verdict: std::sync::OnceLock::new(),
        }
    }

    async fn load(&self) -> aws_credential_types::provider::Result {
        if let Some(verdict) = self.verdict.get() {
            return Err(CredentialsError::invalid_configuration(verdict.clone()));
        }
        let result = self.inner.provide_credentials().await;
        if let Err(e) = &result {
            if credentials_error_is_permanent(e) {
                let _ = self.verdict.set(one_line(&error_chain(e)));
            }
        }
        result
    }
}

impl<P: ProvideCredentials> ProvideCredentials for RememberPermanent<P> {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.load())
    }
}

/// Why CloudWatch delivery cannot start at all.
#[derive(Debug, thiserror::Error)]
#[error("AWS credentials cannot be loaded, and retrying will not fix it: {0}")]
pub struct PermanentCredentialsError(String);

/// Loads the SDK configuration for `region` and looks the credentials up once. IMDS joins the
/// credential chain only when `imds_allowed` (see [`crate::metadata::imds_allowed`]), so non-EC2
/// hosts never contact it. Profiles (`AWS_PROFILE`, `AWS_CONFIG_FILE`,
/// `AWS_SHARED_CREDENTIALS_FILE`) may use static keys, `credential_process`, SSO or role
/// assumption. A permanent credentials error is returned, so the caller reports it once and
/// leaves the sinks off.
pub async fn load_client(
    region: &str,
    imds_allowed: bool,
) -> Result<Client, PermanentCredentialsError> {
    use aws_config::ecs::EcsCredentialsProvider;
    use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
    use aws_config::imds::credentials::ImdsCredentialsProvider;
    use aws_config::profile::ProfileFileCredentialsProvider;
    use aws_config::provider_config::ProviderConfig;
    use aws_config::web_identity_token::WebIdentityTokenCredentialsProvider;

    // The region cwproxy resolved (possibly from runtime metadata) is also the one STS (role
    // assumption, web identity) and SSO calls use.
    let conf = ProviderConfig::without_region().with_region(Some(Region::new(region.to_owned())));
    let mut chain = CredentialsProviderChain::first_try(
        "Environment",
        EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else(
        "Profile",
        ProfileFileCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "WebIdentityToken",
        WebIdentityTokenCredentialsProvider::builder()
            .configure(&conf)
            .build(),
    )
    .or_else(
        "EcsContainer",
        EcsCredentialsProvider::builder().configure(&conf).build(),
    );
    if imds_allowed {
        chain = chain.or_else(
            "Ec2InstanceMetadata",
            ImdsCredentialsProvider::builder().configure(&conf).build(),
        );
    }
    let provider = RememberPermanent::new(chain);
    match tokio::time::timeout(CREDENTIALS_CHECK_TIMEOUT, provider.provide_credentials()).await {
        Ok(Err(e)) if credentials_error_is_permanent(&e) => {
            return Err(PermanentCredentialsError(one_line(&error_chain(&e))));
        }
        // Found, or possibly transient: the sinks start and their calls retry.
        Ok(_) | Err(_) => {}
    }
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(provider)
        // Retries are ours (jittered, never blocking intake); one attempt per call here.
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(CALL_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    Ok(Client::new(&config))
}

/// How to react to an API error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Retry,
    NotFound,
    AlreadyExists,
    Fatal,
    /// A credentials error no retry can fix: the sink turns off.
    Credentials,
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E>) -> Class {
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            match se.err().code() {
                Some("ResourceAlreadyExistsException") => Class::AlreadyExists,
                Some("ResourceNotFoundException") => Class::NotFound,
                Some(
                    "ThrottlingException"
                    | "ServiceUnavailableException"
                    | "RequestLimitExceeded"
                    | "InternalFailure"
                    | "LimitExceededException",
                ) => Class::Retry,
                _ if status >= 500 || status == 429 => Class::Retry,
                _ => Class::Fatal,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            // Identity resolution fails inside the dispatch; its cause says whether to retry.
            match credentials_cause(err) {
                Some(c) if credentials_error_is_permanent(c) => Class::Credentials,
                _ => Class::Retry,
            }
        }
        _ => Class::Fatal,
    }
}

/// The distinct texts of `err` and its causes, joined by `: `.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// One line: the service's code and message, or the chain of causes (the SDK's own rendering
/// spans lines and embeds Debug dumps, which would break the one-line-per-message stderr log).
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E>) -> String {
    let text = match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let e = se.err();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("{} (HTTP {status})", DisplayErrorContext(e)),
            }
        }
        other => error_chain(other),
    };
    one_line(&text)
}

/// `text` with its lines joined by `; ` (stderr carries one line per message).
fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

async fn create_resources(client: &Client, target: &Target) -> Result<(), (Class, String)> {
    match client
        .create_log_group()
        .log_group_name(&target.group)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e) if classify(&e) == Class::AlreadyExists => {}
        Err(e) => return Err((classify(&e), format!("create log group: {}", describe(&e)))),
    }
    match client
        .create_log_stream()
        .log_group_name(&target.group)
        .log_stream_name(&target.stream)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if classify(&e) == Class::AlreadyExists => Ok(()),
        Err(e) => Err((classify(&e), format!("create log stream: {}", describe(&e)))),
    }
}

async fn run(
    kind: Kind,
    mut rx: mpsc::Receiver<LogEvent>,
    activate: oneshot::Receiver<Activation>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
    diag: Diag,
) {
    let activation = tokio::select! {
        a = activate => a.ok(),
        _ = stop.wait_for(|s| *s) => None,
    };
    let Some(Activation { client, target }) = activation else {
        // Off from the start (no region, bad group name): what was queued is only on stdout,
        // as the stderr line about that cause already said.
        stats.disabled.store(true, Ordering::Relaxed);
        rx.close();
        return;
    };
    stats.activated.store(true, Ordering::Relaxed);
    let sink = Sink {
        kind,
        client,
        target,
        stats,
        diag,
    };
    if !sink.setup(&mut stop).await {
        sink.stats.disabled.store(true, Ordering::Relaxed);
        rx.close();
        return;
    }
    let mut pending: Vec<LogEvent> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = *stop.borrow();
    loop {
        if sink.stats.disabled.load(Ordering::Relaxed) {
            // Turned off by a permanent credentials error (reported once): what is still queued
            // is counted as failed, nothing more is accepted.
            rx.close();
            let mut left = pending.len() as u64;
            while let Ok(ev) = rx.try_recv() {
                sink.take(&ev);
                left += 1;
            }
            sink.stats.failed.fetch_add(left, Ordering::Relaxed);
            return;
        }
        if stopping {
            while let Ok(ev) = rx.try_recv() {
                sink.take(&ev);
                pending.push(ev);
            }
            sink.flush(std::mem::take(&mut pending)).await;
            return;
        }
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    sink.take(&ev);
                    // Full batches: send before this event would overflow one.
                    if pending_bytes + ev.cost() > MAX_BATCH_BYTES {
                        pending_bytes = 0;
                        sink.flush(std::mem::take(&mut pending)).await;
                    }
                    pending_bytes += ev.cost();
                    pending.push(ev);
                    if pending.len() >= MAX_BATCH_EVENTS {
                        pending_bytes = 0;
                        sink.flush(std::mem::take(&mut pending)).await;
                    }
                }
                None => stopping = true,
            },
            _ = ticker.tick() => {
                if !pending.is_empty() {
                    pending_bytes = 0;
                    sink.flush(std::mem::take(&mut pending)).await;
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    stopping = true;
                }
            }
        }
    }
}

struct Sink {
    kind: Kind,
    client: Client,
    target: Target,
    stats: Arc<Stats>,
    diag: Diag,
}

impl Sink {
    fn take(&self, ev: &LogEvent) {
        self.stats
            .queued_bytes
            .fetch_sub(ev.message.len(), Ordering::AcqRel);
    }

    /// Creates group and stream; retries retryable errors until it works or shutdown begins.
    async fn setup(&self, stop: &mut watch::Receiver<bool>) -> bool {
        let mut attempt = 0u32;
        let mut reported = false;
        loop {
            attempt += 1;
            match create_resources(&self.client, &self.target).await {
                Ok(()) => {
                    if reported {
                        self.diag.log(format_args!(
                            "CloudWatch {} sink is ready after {attempt} attempts",
                            self.kind.as_str()
                        ));
                    }
                    return true;
                }
                Err((Class::Retry, e)) => {
                    if !reported {
                        self.diag.log(format_args!(
                            "CloudWatch {} sink is not ready yet (retrying in the background; events are queued): {e}",
                            self.kind.as_str()
                        ));
                        reported = true;
                    }
                    if *stop.borrow() {
                        // Already said once; `close` reports how many events this cost.
                        return false;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(SETUP_BACKOFF.delay(attempt - 1)) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err((Class::Credentials, e)) => {
                    self.credentials_failed(&e);
                    return false;
                }
                Err((_, e)) => {
                    self.diag.log(format_args!(
                        "failed to initialize CloudWatch {} sink: {e}",
                        self.kind.as_str()
                    ));
                    return false;
                }
            }
        }
    }

    /// Reports a permanent credentials error once and turns the sink off: new events are no
    /// longer queued (they stay on stdout) and what is queued is counted as failed.
    fn credentials_failed(&self, e: &str) {
        self.stats.disabled.store(true, Ordering::Relaxed);
        self.diag.log(format_args!(
            "CloudWatch {} sink is off: AWS credentials cannot be loaded, and retrying will not fix it (events stay on stdout only): {e}",
            self.kind.as_str()
        ));
    }

    async fn flush(&self, events: Vec<LogEvent>) {
        for batch in cwlogs::plan_batches(events) {
            if self.stats.disabled.load(Ordering::Relaxed) {
                // Off since an earlier batch (already reported): counted, not sent.
                self.stats
                    .failed
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
            self.send(batch).await;
        }
    }

    async fn send(&self, batch: Vec<LogEvent>) {
        let n = batch.len() as u64;
        let cost: u64 = batch.iter().map(|e| e.cost() as u64).sum();
        let mut input = Vec::with_capacity(batch.len());
        for ev in batch {
            match InputLogEvent::builder()
                .timestamp(ev.timestamp_ms)
                .message(ev.message)
                .build()
            {
                Ok(e) => input.push(e),
                Err(e) => {
                    // Unreachable with both fields set; still accounted for.
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    self.diag
                        .log(format_args!("build CloudWatch log event: {e}"));
                }
            }
        }
        let n_input = input.len() as u64;
        let mut attempt = 0u32;
        let error = loop {
            attempt += 1;
            let result = self
                .client
                .put_log_events()
                .log_group_name(&self.target.group)
                .log_stream_name(&self.target.stream)
                .set_log_events(Some(input.clone()))
                .send()
                .await;
            let err = match result {
                Ok(out) => {
                    let rejected = out
                        .rejected_log_events_info()
                        .map_or(0, |r| rejected_count(r, n_input));
                    self.stats
                        .delivered
                        .fetch_add(n_input - rejected, Ordering::Relaxed);
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.batch_bytes.fetch_add(cost, Ordering::Relaxed);
                    if rejected > 0 {
                        let total =
                            self.stats.failed.fetch_add(rejected, Ordering::Relaxed) + rejected;
                        self.diag.log(format_args!(
                            "CloudWatch rejected {rejected} of {n} log events in {} (too old, too new or expired; total failed: {total})",
                            self.target.group
                        ));
                    }
                    return;
                }
                Err(e) => e,
            };
            let class = classify(&err);
            if class == Class::Credentials {
                let total = self.stats.failed.fetch_add(n_input, Ordering::Relaxed) + n_input;
                self.credentials_failed(&format!(
                    "{} ({n_input} log events not delivered; total failed: {total})",
                    describe(&err)
                ));
                return;
            }
            if attempt >= MAX_ATTEMPTS || class == Class::Fatal || class == Class::AlreadyExists {
                break describe(&err);
            }
            if attempt == 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            if class == Class::NotFound {
                // The group or stream was deleted: recreate both, then resend.
                if let Err((_, e)) = create_resources(&self.client, &self.target).await {
                    if attempt + 1 >= MAX_ATTEMPTS {
                        break e;
                    }
                    tokio::time::sleep(BATCH_BACKOFF.delay(attempt - 1)).await;
                }
                continue;
            }
            tokio::time::sleep(BATCH_BACKOFF.delay(attempt - 1)).await;
        };
        let total = self.stats.failed.fetch_add(n_input, Ordering::Relaxed) + n_input;
        self.diag.log(format_args!(
            "failed to publish {n_input} CloudWatch log events to {} after {attempt} attempts: {error} (total failed: {total})",
            self.target.group
        ));
    }
}

fn rejected_count(info: &aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo, n: u64) -> u64 {
    let idx = |v: Option<i32>| v.and_then(|i| u64::try_from(i).ok());
    let old = idx(info.too_old_log_event_end_index())
        .max(idx(info.expired_log_event_end_index()))
        .map_or(0, |end| end + 1);
    let new = idx(info.too_new_log_event_start_index()).map_or(0, |start| n.saturating_sub(start));
    (old + new).min(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        for (schedule, cap) in [
            (BATCH_BACKOFF, MAX_BACKOFF),
            (SETUP_BACKOFF, MAX_SETUP_BACKOFF),
        ] {
            for n in 0..20 {
                let d = schedule.delay(n);
                let nominal = BASE_BACKOFF.saturating_mul(1 << n.min(15)).min(cap);
                assert!(d <= nominal && d >= nominal / 2, "{n}: {d:?}");
            }
        }
    }

    /// A provider whose answers are scripted: the profile provider's first and later answers.
    #[derive(Debug)]
    struct Scripted(std::sync::Mutex<Vec<CredentialsError>>);

    impl ProvideCredentials for Scripted {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let next = self.0.lock().unwrap().remove(0);
            future::ProvideCredentials::ready(Err(next))
        }
    }

    #[tokio::test]
    async fn a_permanent_credentials_error_is_what_every_later_caller_sees() {
        let provider = RememberPermanent::new(Scripted(std::sync::Mutex::new(vec![
            CredentialsError::invalid_configuration("profile `p`: bad source_profile"),
            CredentialsError::unhandled("initialization error already taken"),
        ])));
        for _ in 0..3 {
            let e = provider.provide_credentials().await.unwrap_err();
            assert!(credentials_error_is_permanent(&e), "{e:?}");
            assert!(error_chain(&e).contains("bad source_profile"), "{e:?}");
        }
        // A transient error is passed on, not remembered.
        let provider = RememberPermanent::new(Scripted(std::sync::Mutex::new(vec![
            CredentialsError::provider_timed_out(Duration::from_secs(1)),
            CredentialsError::not_loaded("nothing configured"),
        ])));
        let first = provider.provide_credentials().await.unwrap_err();
        assert!(!credentials_error_is_permanent(&first), "{first:?}");
        let second = provider.provide_credentials().await.unwrap_err();
        assert!(credentials_error_is_permanent(&second), "{second:?}");
    }

    #[test]
    fn credentials_errors_inside_a_dispatch_failure_are_classified() {
        use aws_sdk_cloudwatchlogs::error::ConnectorError;
        use aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsError;
        let dispatch = |e: CredentialsError| -> SdkError<PutLogEventsError> {
            SdkError::dispatch_failure(ConnectorError::other(Box::new(e), None))
        };
        assert_eq!(
            classify(&dispatch(CredentialsError::not_loaded("none"))),
            Class::Credentials
        );
        assert_eq!(
            classify(&dispatch(CredentialsError::invalid_configuration("bad"))),
            Class::Credentials
        );
        assert_eq!(
            classify(&dispatch(CredentialsError::provider_error("503"))),
            Class::Retry
        );
    }

    #[test]
    fn rejected_counts_cover_old_and_new_ranges() {
        use aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo;
        let info = RejectedLogEventsInfo::builder()
            .too_old_log_event_end_index(2)
            .too_new_log_event_start_index(8)
            .build();
        assert_eq!(rejected_count(&info, 10), 5);
        let none = RejectedLogEventsInfo::builder().build();
        assert_eq!(rejected_count(&none, 10), 0);
    }
}
