//! The telemetry pipeline: callers hand over records without ever blocking; one worker thread
//! renders them and writes each batch of lines to stdout with a single write call, then passes
//! every event to further sinks (CloudWatch Logs).
//!
//! The queue is bounded by count and by captured bytes, so a slow or stuck stdout costs memory
//! up to a fixed ceiling and then drops (counted, and reported on stderr at most once per
//! interval), instead of slowing traffic.

use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
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
    Record(Record, usize),
    SetAwsMeta(Option<Vec<u8>>),
    Flush(SyncSender<()>),
    Stop,
}

/// How long the worker waits for more records after the first one of a batch.
const GATHER_DELAY: Duration = Duration::from_millis(1);
/// Rendered bytes after which a batch is written without waiting for more.
const MAX_BATCH_BYTES: usize = 256 << 10;

/// Tuning of the pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Most records waiting to be written.
    pub capacity: usize,
    /// Most captured bytes waiting to be written.
    pub max_queued_bytes: usize,
    /// Least time between two stderr reports about drops or write failures.
    pub report_interval: Duration,
    /// What lines contain and how long they may be (default: the original's line).
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
    queued_bytes: AtomicUsize,
    dropped: AtomicU64,
    written: AtomicU64,
    write_failures: AtomicU64,
}

/// A cheap, cloneable handle for emitting records.
#[derive(Clone)]
pub struct Emitter {
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    max_queued_bytes: usize,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").finish_non_exhaustive()
    }
}

impl Emitter {
    /// Queues a record; never blocks. Returns false (and counts a drop) when the queue is full.
    pub fn emit(&self, record: Record) -> bool {
        let bytes = record.approx_bytes();
        let queued = self
            .counters
            .queued_bytes
            .fetch_add(bytes, Ordering::AcqRel);
        if queued + bytes > self.max_queued_bytes {
            self.counters
                .queued_bytes
                .fetch_sub(bytes, Ordering::AcqRel);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match self.tx.try_send(Msg::Record(record, bytes)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters
                    .queued_bytes
                    .fetch_sub(bytes, Ordering::AcqRel);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Replaces the `aws_meta` object of later entries (metadata detection finishes after start).
    pub fn set_aws_meta(&self, meta: Option<Vec<u8>>) {
        // Blocking is fine here: this happens once, off the request path.
        let _ = self.tx.send(Msg::SetAwsMeta(meta));
    }

    /// Records dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Records written to stdout so far.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
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
        let (tx, rx) = mpsc::sync_channel(config.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let worker_counters = Arc::clone(&counters);
        let interval = config.report_interval;
        let output = config.output;
        let observer = config.observer;
        let worker = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                let mut worker = Worker::new(context, out, sinks, diag, worker_counters, interval);
                worker.output = output;
                worker.observer = observer;
                worker.run(&rx)
            })?;

        Ok(Self {
            emitter: Emitter {
                tx,
                counters,
                max_queued_bytes: config.max_queued_bytes,
            },
            worker: Some(worker),
        })
    }

    /// A handle for emitting records.
    pub fn emitter(&self) -> Emitter {
        self.emitter.clone()
    }

    /// Queues a control message behind the records, waiting for room until `deadline`.
    fn send_control(&self, mut msg: Msg, deadline: Instant) -> bool {
        loop {
            match self.emitter.tx.try_send(msg) {
                Ok(()) => return true,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
    }

    /// Writes everything queued so far, waiting at most `budget`. Returns true when done in time.
    pub fn flush(&self, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        self.send_control(Msg::Flush(ack_tx), deadline)
            && ack_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok()
    }

    /// Flushes within `budget` and stops the worker. Records still queued when the budget runs
    /// out are not written; the worker is then left to finish on its own (it never blocks exit).
    pub fn shutdown(mut self, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        let flushed = self.flush(budget);
        if flushed && self.send_control(Msg::Stop, deadline) {
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
    counters: Arc<Counters>,
    interval: Duration,
    buf: Vec<u8>,
    batch_lines: u64,
    acks: Vec<SyncSender<()>>,
    flush_requested: bool,
    scratch: crate::hash::Scratch,
    next_report: Instant,
    reported_drops: u64,
    reported_failures: u64,
    last_error: Option<String>,
}

impl Worker {
    fn new(
        context: Context,
        out: Box<dyn Write + Send>,
        sinks: Vec<Arc<dyn EventSink>>,
        diag: Diag,
        counters: Arc<Counters>,
        interval: Duration,
    ) -> Self {
        Self {
            context,
            output: OutputOptions::ORIGINAL,
            observer: None,
            out,
            sinks,
            diag,
            counters,
            interval,
            buf: Vec::with_capacity(64 << 10),
            batch_lines: 0,
            acks: Vec::new(),
            flush_requested: false,
            scratch: crate::hash::Scratch::new(),
            next_report: Instant::now(),
            reported_drops: 0,
            reported_failures: 0,
            last_error: None,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Msg>) {
        let mut running = true;
        while running {
            let first = match rx.recv_timeout(self.interval) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.report(false);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Under load more records arrive within a moment. Gathering them for up to
            // GATHER_DELAY turns one thread wake-up and one `write` per record into one per batch;
            // senders never wake this thread while it sleeps here instead of in `recv`.
            self.buf.clear();
            self.batch_lines = 0;
            running = self.take(first);
            if running && !self.flush_requested {
                std::thread::sleep(GATHER_DELAY);
                while running && self.buf.len() < MAX_BATCH_BYTES && !self.flush_requested {
                    match rx.try_recv() {
                        Ok(msg) => running = self.take(msg),
                        Err(_) => break,
                    }
                }
            }
            self.write_batch();
            for ack in self.acks.drain(..) {
                let _ = ack.try_send(());
            }
            self.flush_requested = false;
            self.report(false);
        }
        self.write_batch();
        self.report(true);
    }

    /// Handles one message; false when the worker must stop.
    fn take(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record(record, bytes) => {
                self.render(&record);
                drop(record);
                self.counters
                    .queued_bytes
                    .fetch_sub(bytes, Ordering::AcqRel);
            }
            Msg::SetAwsMeta(meta) => self.context.aws_meta = meta,
            Msg::Flush(ack) => {
                self.acks.push(ack);
                self.flush_requested = true;
            }
            Msg::Stop => return false,
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
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    self.reported_drops += 1;
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
        match write_all(&mut self.out, &self.buf) {
            Ok(()) => {
                let _ = self.out.flush();
                self.counters
                    .written
                    .fetch_add(self.batch_lines, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters
                    .write_failures
                    .fetch_add(self.batch_lines, Ordering::Relaxed);
                self.last_error = Some(e.to_string());
            }
        }
        self.buf.clear();
        self.batch_lines = 0;
    }

    fn report(&mut self, last: bool) {
        let now = Instant::now();
        if !last && now < self.next_report {
            return;
        }
        let drops = self.counters.dropped.load(Ordering::Relaxed);
        let failures = self.counters.write_failures.load(Ordering::Relaxed);
        if drops > self.reported_drops {
            self.diag.log(format_args!(
                "dropped {} telemetry records because the queue was full (total dropped: {drops})",
                drops - self.reported_drops
            ));
            self.reported_drops = drops;
            self.next_report = now + self.interval;
        }
        if failures > self.reported_failures {
            self.diag.log(format_args!(
                "failed to write {} log lines to stdout: {} (total failed: {failures})",
                failures - self.reported_failures,
                self.last_error.as_deref().unwrap_or("unknown error")
            ));
            self.reported_failures = failures;
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
