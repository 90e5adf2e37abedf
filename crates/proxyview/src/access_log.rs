//! Per-request access log: the server builds one [`telemetry::Exchange`] per proxied request (with
//! `endpoint` = route name) and hands it, with the serving agent's `clientId`, to an [`AccessSink`].
//!
//! Bodies are observed while they stream (`http1`'s reader and writer call [`tap`]): every byte
//! is counted, at most [`CAPTURE_LIMIT`] bytes are kept, and the record is emitted when the
//! response body ends or fails. Nothing on the request path waits for the sink.

use std::sync::{Arc, Mutex};

use telemetry::{Capture, Exchange};

/// Bytes of each body kept for the log line (the rest is counted, not kept).
pub const CAPTURE_LIMIT: usize = 4 * 1024;

/// One proxied exchange plus the tunnel facts callers may want besides the log line.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// The exchange, `endpoint` set to the route name.
    pub exchange: Exchange,
    /// `clientId` of the agent that served it (`None` when no agent was reached).
    pub client_id: Option<String>,
    /// Server session id of that agent.
    pub session: Option<u64>,
}

/// Where access records go; must never block.
pub trait AccessSink: Send + Sync {
    /// Takes one record.
    fn emit(&self, record: AccessRecord);
}

impl<F: Fn(AccessRecord) + Send + Sync> AccessSink for F {
    fn emit(&self, record: AccessRecord) {
        self(record)
    }
}

/// The access-log switch's sink: telemetry's pipeline (cwproxy's traffic line with EMF, written
/// to stdout by its own worker thread; `emit` waits for a slow stdout, at most
/// [`telemetry::output::DEFAULT_STDOUT_TIMEOUT`], then drops and counts lines while it stays stuck).
///
/// The agent's `clientId` is written as `client_id` after `app_name`.
#[derive(Debug)]
pub struct TelemetrySink {
    emitter: telemetry::pipeline::Emitter,
}

impl TelemetrySink {
    /// Starts telemetry's pipeline on stdout; `app_name` is the `AppName` dimension.
    pub fn start(app_name: &str) -> std::io::Result<(Arc<Self>, telemetry::pipeline::Pipeline)> {
        let ctx = telemetry::entry::Context {
            app_name: app_name.to_string(),
            aws_meta: None,
        };
        let pipeline = telemetry::pipeline::Pipeline::start(
            telemetry::pipeline::PipelineConfig {
                output: telemetry::output::OutputOptions {
                    stdout_timeout: Some(telemetry::output::DEFAULT_STDOUT_TIMEOUT),
                    ..telemetry::output::OutputOptions::ORIGINAL
                },
                ..telemetry::pipeline::PipelineConfig::default()
            },
            ctx,
            telemetry::pipeline::stdout_writer(),
            Vec::new(),
            telemetry::diag::Diag::new("proxyview"),
        )?;
        Ok((
            Arc::new(Self {
                emitter: pipeline.emitter(),
            }),
            pipeline,
        ))
    }
}

impl AccessSink for TelemetrySink {
    fn emit(&self, record: AccessRecord) {
        // A full queue drops and counts inside telemetry; the request never waits.
        let _ = self
            .emitter
            .emit(telemetry::pipeline::Record::Traffic(Box::new(
                record.exchange,
            )));
    }
}

/// Feeds body data seen by `http1`'s reader and writer to a capture.
pub fn tap(c: &Mutex<Capture>) -> impl Fn(&[u8]) + Sync + '_ {
    move |d| c.lock().unwrap_or_else(|p| p.into_inner()).push(d)
}
