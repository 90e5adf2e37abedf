//! The telemetry pipeline: callers hand over records; one worker thread renders them and writes
//! each batch of lines to stdout with a single write call, then passes every event to further
//! sinks (CloudWatch Logs).
//!
//! The queue is bounded by count and by captured bytes. When it is full, [`Emitter::emit`]
//! waits for room — backpressure onto the connection that produced the record, as nginx's
//! blocking write of its access log does — so a saturated machine loses no line: the proxy
//! slows to the pace at which stdout takes lines. A line is dropped only when stdout stays
//! blocked beyond [`OutputOptions::stdout_timeout`] (a stuck pipe): the emitter that waited that
//! long drops its record, and later ones drop at once without waiting until stdout takes a write
//! again, so the proxy keeps serving. Drops are counted and reported on stderr at most once per
//! interval. Memory stays bounded: the queue, plus the batch the worker is rendering or writing.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::diag::Diag;
use crate::entry::{self, Category, Context};
use crate::observe::Observer;
use crate::output::OutputOptions;
use crate::record::{Exchange, HealthProbe};

/// Receives every rendered event in its stdout form (without the newline), after stdout.
///
/// Implementations must not block: they queue and return.
pub trait EventSink: Send + Sync {
    /// One event of `category` whose EMF/CloudWatch timestamp is `timestamp_ms`.
    fn deliver(&self, category: Category, timestamp_ms: i64, event: &[u8]);
}

/// One unit of work for the pipeline.
#[derive(Debug)]
pub enum Record {
    /// A proxied exchange → traffic line.
    Traffic(Box<Exchange>),
    /// A health probe → health line.
    Health(Box<HealthProbe>),
}

impl Record {
    fn approx_bytes(&self) -> usize {
        match self {
            Record::Traffic(ex) => {
                512 + ex.request_body.bytes().len()
                    + ex.response_body.as_ref().map_or(0, |c| c.bytes().len())
                    + 64 * (ex.request_headers.len() + ex.response_headers.len())
            }
            Record::Health(p) => 512 + p.body.bytes().len() + 64 * p.headers.len(),
        }
    }
}

enum Msg {
    Record(Record),
    SetAwsMeta(Option<Vec<u8>>),
    Flush(std::sync::mpsc::SyncSender<()>),
    Stop,
}

/// How long the worker waits for more records after the first one of a batch.
const GATHER_DELAY: Duration = Duration::from_millis(1);
/// Rendered bytes after which the worker writes what it has rendered so far.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// Tuning of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Most records waiting to be written.
    pub capacity: usize,
    /// Most captured bytes waiting to be written (one record is always accepted).
    pub max_queued_bytes: usize,
    /// Least time between two stderr reports about drops or write failures.
    pub report_interval: Duration,
    /// What lines contain, how long they may be and how long stdout may block (default: the
    /// original's line, waiting for stdout without bound).
    pub output: OutputOptions,
    /// Learns from each traffic exchange on the worker thread (default: none).
    pub observer: Option<Arc<dyn Observer>>,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            max_queued_bytes: 64 << 20,
            report_interval: Duration::from_secs(10),
            output: OutputOptions::ORIGINAL,
            observer: None,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    dropped: AtomicU64,
    blocked_drops: AtomicU64,
    written: AtomicU64,
    write_failures: AtomicU64,
}

/// The queue between emitters and the worker, under one lock.
#[derive(Default)]
struct State {
    queue: VecDeque<Msg>,
    records: usize,
    bytes: usize,
    /// A control message is queued: the worker skips its gather delay.
    urgent: bool,
    /// The worker sleeps on `work` and must be woken.
    worker_waiting: bool,
    /// Emitters sleeping on `room`.
    room_waiters: usize,
    /// An emitter waited the whole stdout timeout: drop instead of waiting until a write succeeds.
    stalled: bool,
    /// The worker has stopped; nothing queued from now on would be written.
    closed: bool,
    /// Blocked drops already reported, and when the next report may come.
    reported_blocked: u64,
    next_blocked_report: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    room: Condvar,
    counters: Counters,
    capacity: usize,
    max_bytes: usize,
    /// How long an emitter waits for room; `None` waits as long as it takes.
    timeout: Option<Duration>,
    diag: Diag,
    report_interval: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn has_room(&self, st: &State, bytes: usize) -> bool {
        st.records < self.capacity && (st.records == 0 || st.bytes + bytes <= self.max_bytes)
    }

    /// Queues a control message behind the records; control messages ignore the bounds.
    fn control(&self, msg: Msg) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.queue.push_back(msg);
        st.urgent = true;
        let wake = std::mem::take(&mut st.worker_waiting);
        drop(st);
        if wake {
            self.work.notify_one();
        }
        true
    }

    /// Moves everything queued into `batch`, waiting up to `wait` for the first message. Returns
    /// false when nothing came.
    fn take_batch(&self, batch: &mut VecDeque<Msg>, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        while st.queue.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                st.worker_waiting = false;
                return false;
            }
            st.worker_waiting = true;
            st = self
                .work
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        st.worker_waiting = false;
        if !st.urgent {
            // Under load more records arrive within a moment. Gathering them for up to
            // GATHER_DELAY turns one thread wake-up and one `write` per record into one per
            // batch; emitters never wake this thread while it sleeps here instead of on `work`.
            drop(st);
            std::thread::sleep(GATHER_DELAY);
            st = self.lock();
        }
        std::mem::swap(&mut st.queue, batch);
        st.records = 0;
        st.bytes = 0;
        st.urgent = false;
        let waiters = st.room_waiters > 0;
        drop(st);
        if waiters {
            self.room.notify_all();
        }
        true
    }

    /// stdout took a write: emitters wait for room again instead of dropping.
    fn progressed(&self) {
        let mut st = self.lock();
        st.stalled = false;
    }

    /// Reports blocked drops not reported yet, at most once per interval. Emitters call it as
    /// they drop, because the worker may itself be stuck in the write that blocks stdout.
    fn report_blocked(&self, force: bool) {
        let now = Instant::now();
        let blocked = self.counters.blocked_drops.load(Ordering::Relaxed);
        let mut st = self.lock();
        if blocked <= st.reported_blocked
            || (!force && st.next_blocked_report.is_some_and(|t| now < t))
        {
            return;
        }
        let new = blocked - st.reported_blocked;
        st.reported_blocked = blocked;
        st.next_blocked_report = Some(now + self.report_interval);
        drop(st);
        let timeout = self.timeout.unwrap_or_default();
        self.diag.log(format_args!(
            "dropped {new} log lines because stdout accepted nothing for {timeout:?} (LOG_STDOUT_TIMEOUT; total dropped: {blocked})"
        ));
    }

    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        drop(st);
        self.room.notify_all();
    }
}

/// A cheap, cloneable handle for emitting records.
#[derive(Clone)]
pub struct Emitter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").finish_non_exhaustive()
    }
}

impl Emitter {
    /// Queues a record. When the queue is full it waits for room, at most the stdout timeout
    /// (and not at all while stdout is known to be stuck). Returns false, counting a drop, when
    /// the record could not be queued.
    pub fn emit(&self, record: Record) -> bool {
        let shared = &*self.shared;
        let bytes = record.approx_bytes();
        let mut st = shared.lock();
        if !shared.has_room(&st, bytes) {
            st = self.wait_for_room(st, bytes);
            if !shared.has_room(&st, bytes) || st.closed {
                let blocked = st.stalled;
                drop(st);
                drop(record);
                shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if blocked {
                    shared.report_blocked(false);
                }
                return false;
            }
        }
        if st.closed {
            drop(st);
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        st.queue.push_back(Msg::Record(record));
        st.records += 1;
        st.bytes += bytes;
        let wake = std::mem::take(&mut st.worker_waiting);
        drop(st);
        if wake {
            shared.work.notify_one();
        }
        true
    }

    /// Sleeps on `room` until the record fits, the worker closes, or the timeout passes (which
    /// marks stdout stalled and counts a blocked drop).
    fn wait_for_room<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        bytes: usize,
    ) -> MutexGuard<'a, State> {
        let shared = &*self.shared;
        if st.stalled || st.closed {
            if st.stalled {
                shared
                    .counters
                    .blocked_drops
                    .fetch_add(1, Ordering::Relaxed);
            }
            return st;
        }
        let deadline = shared.timeout.map(|t| Instant::now() + t);
        st.room_waiters += 1;
        while !shared.has_room(&st, bytes) && !st.closed && !st.stalled {
            st = match deadline {
                None => shared.room.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        st.stalled = true;
                        break;
                    }
                    shared
                        .room
                        .wait_timeout(st, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        st.room_waiters -= 1;
        if st.stalled && !shared.has_room(&st, bytes) {
            shared
                .counters
                .blocked_drops
                .fetch_add(1, Ordering::Relaxed);
        }
        st
    }

    /// Replaces the `aws_meta` object of later entries (metadata detection finishes after start).
    pub fn set_aws_meta(&self, meta: Option<Vec<u8>>) {
        self.shared.control(Msg::SetAwsMeta(meta));
    }

    /// Records dropped so far (stdout blocked beyond its timeout, pipeline stopped, or a line
    /// over the line limit that could not be trimmed).
    pub fn dropped(&self) -> u64 {
        self.shared.counters.dropped.load(Ordering::Relaxed)
    }

    /// Records written to stdout so far.
    pub fn written(&self) -> u64 {
        self.shared.counters.written.load(Ordering::Relaxed)
    }
}

/// The running pipeline; dropping it without [`Pipeline::shutdown`] detaches the worker.
pub struct Pipeline {
    emitter: Emitter,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts the worker thread writing to `out` (normally [`stdout_writer`]).
    pub fn start(
        config: PipelineConfig,
        context: Context,
        out: Box<dyn Write + Send>,
        sinks: Vec<Arc<dyn EventSink>>,
        diag: Diag,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            room: Condvar::new(),
            counters: Counters::default(),
            capacity: config.capacity.max(1),
            max_bytes: config.max_queued_bytes,
            timeout: config.output.stdout_timeout,
            diag: diag.clone(),
            report_interval: config.report_interval,
        });
        let worker_shared = Arc::clone(&shared);
        let interval = config.report_interval;
        let output = config.output;
        let observer = config.observer;
        let worker = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                let mut worker = Worker::new(context, out, sinks, diag, worker_shared, interval);
                worker.output = output;
                worker.observer = observer;
                worker.run();
            })?;

        Ok(Self {
            emitter: Emitter { shared },
            worker: Some(worker),
        })
    }

    /// A handle for emitting records.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    /// Writes everything queued so far, waiting at most `budget`. Returns true when done in time.
    pub fn flush(&self, budget: Duration) -> bool {
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        self.emitter.shared.control(Msg::Flush(ack_tx)) && ack_rx.recv_timeout(budget).is_ok()
    }

    /// Flushes within `budget` and stops the worker. Records still queued when the budget runs
    /// out are not written; the worker is then left to finish on its own (it never blocks exit).
    pub fn shutdown(mut self, budget: Duration) -> bool {
        let flushed = self.flush(budget);
        if flushed && self.emitter.shared.control(Msg::Stop) {
            if let Some(w) = self.worker.take() {
                let _ = w.join();
            }
        }
        flushed
    }
}

/// Standard output as a raw, unbuffered writer, so each batch of lines is one `write` call and
/// never mixes with what other writers of the same descriptor (an inspector child) write.
pub fn stdout_writer() -> Box<dyn Write + Send> {
    Box::new(RawStdout)
}

struct RawStdout;

#[cfg(unix)]
impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: fd 1 stays open for the life of the process (we never close it); `buf` is a
        // valid readable slice of `buf.len()` bytes.
        let n = unsafe { libc::write(libc::STDOUT_FILENO, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Elsewhere std's stdout, written through at once: its line buffer must not hold lines back.
#[cfg(not(unix))]
impl Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        let n = out.write(buf)?;
        out.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

struct Worker {
    context: Context,
    output: OutputOptions,
    observer: Option<Arc<dyn Observer>>,
    out: Box<dyn Write + Send>,
    sinks: Vec<Arc<dyn EventSink>>,
    diag: Diag,
    shared: Arc<Shared>,
    /// Drops while stopping and write failures already reported.
    counters_reported: (u64, u64),
    /// Lines dropped for the line limit (reported as they happen).
    limit_drops: u64,
    interval: Duration,
    buf: Vec<u8>,
    batch_lines: u64,
    scratch: crate::hash::Scratch,
    next_report: Instant,
    last_error: Option<String>,
}

impl Worker {
    fn new(
        context: Context,
        out: Box<dyn Write + Send>,
        sinks: Vec<Arc<dyn EventSink>>,
        diag: Diag,
        shared: Arc<Shared>,
        interval: Duration,
    ) -> Self {
        Self {
            context,
            output: OutputOptions::ORIGINAL,
            observer: None,
            out,
            sinks,
            diag,
            shared,
            counters_reported: (0, 0),
            limit_drops: 0,
            interval,
            buf: Vec::with_capacity(64 << 10),
            batch_lines: 0,
            scratch: crate::hash::Scratch::new(),
            next_report: Instant::now(),
            last_error: None,
        }
    }

    fn run(mut self) {
        let mut batch = VecDeque::new();
        let mut running = true;
        while running {
            if !self.shared.take_batch(&mut batch, self.interval) {
                self.report(false);
                continue;
            }
            for msg in batch.drain(..) {
                if running {
                    running = self.take(msg);
                } else if let Msg::Record(_) = msg {
                    // Emitted after the stop request: never written.
                    self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.write_batch();
            self.report(false);
        }
        self.shared.close();
        // Records that raced the close are counted, not silently lost.
        let late = self.shared.lock().records;
        self.shared
            .counters
            .dropped
            .fetch_add(late as u64, Ordering::Relaxed);
        self.report(true);
    }

    /// Handles one message; false when the worker must stop.
    fn take(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record(record) => {
                self.render(&record);
                drop(record);
                if self.buf.len() >= MAX_BATCH_BYTES {
                    self.write_batch();
                }
            }
            Msg::SetAwsMeta(meta) => self.context.aws_meta = meta,
            Msg::Flush(ack) => {
                self.write_batch();
                let _ = ack.try_send(());
            }
            Msg::Stop => {
                self.write_batch();
                return false;
            }
        }
        true
    }

    /// Renders one record at the end of the batch buffer and hands its events to the sinks.
    fn render(&mut self, record: &Record) {
        let start = self.buf.len();
        let (category, result) = match record {
            Record::Traffic(ex) => (
                Category::Traffic,
                entry::render_traffic_observed(
                    &self.context,
                    &self.output,
                    ex,
                    &mut self.buf,
                    &mut self.scratch,
                    self.observer.as_deref(),
                ),
            ),
            Record::Health(p) => (
                Category::Health,
                entry::render_health_with(
                    &self.context,
                    &self.output,
                    p,
                    &mut self.buf,
                    &mut self.scratch,
                ),
            ),
        };
        if self.scratch.endpoints.take_notice() {
            self.diag.log(format_args!(
                "the Endpoint metric dimension reached its limit of {} distinct values; new paths are reported as Endpoint \"{}\" (raise ENDPOINT_LIMIT or add ENDPOINT_TEMPLATES patterns)",
                self.output.endpoint_limit,
                crate::route::OVERFLOW_ENDPOINT
            ));
        }
        self.bound_lines(start);
        if let Err(e) = result {
            // The line was still written without EMF; say why once per occurrence.
            self.diag.log(format_args!(
                "failed to attach EMF metrics to log entry: {e}"
            ));
        }
        self.batch_lines += 1;
        if self.sinks.is_empty() {
            return;
        }
        let timestamp = match record {
            Record::Traffic(ex) => crate::record::unix_millis(ex.end),
            Record::Health(p) => crate::record::unix_millis(p.end),
        };
        for line in self.buf[start..]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            for sink in &self.sinks {
                sink.deliver(category, timestamp, line);
            }
        }
    }

    /// Trims each line rendered since `start` to `output.line_limit` bytes with the CloudWatch
    /// rule ([`crate::trim::trim_event`]); a line that cannot be trimmed (no body left to
    /// shorten) is replaced by nothing and reported.
    fn bound_lines(&mut self, start: usize) {
        let limit = self.output.line_limit;
        if limit == 0 || self.buf.len() - start <= limit {
            return;
        }
        let rendered = self.buf.split_off(start);
        for line in rendered.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if line.len() <= limit {
                self.buf.extend_from_slice(line);
                self.buf.push(b'\n');
                continue;
            }
            // Rendered lines are UTF-8 (the JSON writer escapes invalid bytes).
            let text = String::from_utf8_lossy(line).into_owned();
            match crate::trim::trim_event(text, limit) {
                Ok(trimmed) => {
                    self.buf.extend_from_slice(trimmed.as_bytes());
                    self.buf.push(b'\n');
                }
                Err(e) => {
                    self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    self.limit_drops += 1;
                    self.diag
                        .log(format_args!("dropped a log line: {e} (LOG_LINE_LIMIT)"));
                }
            }
        }
    }

    /// Writes the gathered lines with one `write` call (more only if the kernel takes part of it).
    /// Lines are whole in the buffer, so no other writer of the descriptor can split one.
    fn write_batch(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let counters = &self.shared.counters;
        match write_all(&mut self.out, &self.buf) {
            Ok(()) => {
                let _ = self.out.flush();
                counters
                    .written
                    .fetch_add(self.batch_lines, Ordering::Relaxed);
            }
            Err(e) => {
                counters
                    .write_failures
                    .fetch_add(self.batch_lines, Ordering::Relaxed);
                self.last_error = Some(e.to_string());
            }
        }
        // The write returned: stdout is not stuck (a failed write frees room all the same).
        self.shared.progressed();
        self.buf.clear();
        self.batch_lines = 0;
    }

    fn report(&mut self, last: bool) {
        let now = Instant::now();
        if !last && now < self.next_report {
            return;
        }
        let counters = &self.shared.counters;
        let blocked = counters.blocked_drops.load(Ordering::Relaxed);
        // Lines over the line limit are reported as they happen; the rest were emitted while
        // the pipeline stopped.
        let stopped = counters
            .dropped
            .load(Ordering::Relaxed)
            .saturating_sub(blocked + self.limit_drops);
        let failures = counters.write_failures.load(Ordering::Relaxed);
        let (reported_stopped, reported_failures) = self.counters_reported;
        self.shared.report_blocked(last);
        let mut logged = false;
        if stopped > reported_stopped {
            self.diag.log(format_args!(
                "dropped {} log lines emitted while telemetry was stopping (total: {stopped})",
                stopped - reported_stopped
            ));
            logged = true;
        }
        if failures > reported_failures {
            self.diag.log(format_args!(
                "failed to write {} log lines to stdout: {} (total failed: {failures})",
                failures - reported_failures,
                self.last_error.as_deref().unwrap_or("unknown error")
            ));
            logged = true;
        }
        self.counters_reported = (stopped, failures);
        if logged {
            self.next_report = now + self.interval;
        }
    }
}

/// `write_all` that retries interrupted writes and gives up on a closed descriptor.
fn write_all(out: &mut Box<dyn Write + Send>, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match out.write(buf) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    ErrorKind::WriteZero,
                    "stdout accepted no bytes",
                ))
            }
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
