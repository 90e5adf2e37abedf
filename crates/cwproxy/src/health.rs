//! The health runner: probes every resolved `HEALTH_URLS` entry at start and then every
//! `HEALTH_INTERVAL`, concurrently, and emits one HEALTH line with `app/health` EMF per probe.
//!
//! Deliberate differences from the Go original: a failing endpoint is reported on stderr when its
//! state changes (first failure, changed error, recovery), not every interval; probes cut short by
//! shutdown emit nothing (no spurious `HealthStatus 0`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use telemetry::diag::Diag;
use telemetry::pipeline::{Emitter, Record};
use telemetry::{Capture, HealthProbe};
use tokio::sync::watch;

use crate::config::HealthUrl;

/// Total time one probe may take, headers and body (Go's `http.Client.Timeout`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Redirects followed before giving up, as Go's default client.
pub const MAX_REDIRECTS: usize = 10;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Probes health URLs and emits their results.
pub struct HealthRunner {
    urls: Vec<HealthUrl>,
    interval: Duration,
    capture_limit: usize,
    emitter: Emitter,
    diag: Diag,
    client: HttpsClient,
}

/// Builds the probe client: plain HTTP and HTTPS with the system's CA certificates.
fn client(diag: &Diag) -> HttpsClient {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        diag.log(
            "health probes: no CA certificates found on this system; https health probes will fail",
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // aws-lc supports the safe default protocol versions, so the fallback to the process-wide
    // default provider exists only to avoid a panic path.
    let tls = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(PROBE_TIMEOUT));
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Outcome of one probe before it becomes a record.
struct Outcome {
    end: SystemTime,
    latency: Duration,
    status: u16,
    headers: HeaderMap,
    body: Capture,
    error: Option<String>,
}

impl HealthRunner {
    /// A runner for `urls` that emits through `emitter`.
    pub fn new(
        urls: Vec<HealthUrl>,
        interval: Duration,
        capture_limit: usize,
        emitter: Emitter,
        diag: Diag,
    ) -> Self {
        let client = client(&diag);
        Self {
            urls,
            interval,
            capture_limit,
            emitter,
            diag,
            client,
        }
    }

    /// Probes now and then every interval until `shutdown` turns true. A slow round delays the
    /// next one; missed ticks are skipped, as Go's ticker drops them.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failing: Vec<Option<String>> = vec![None; self.urls.len()];
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = wait_true(&mut shutdown) => return,
            }
            let round = futures_round(&self, &mut shutdown).await;
            let Some(results) = round else { return };
            for ((url, outcome), state) in self.urls.iter().zip(results).zip(failing.iter_mut()) {
                self.report_state(url, &outcome, state);
                self.emit(url, outcome);
            }
        }
    }

    fn report_state(&self, url: &HealthUrl, outcome: &Outcome, state: &mut Option<String>) {
        let now_failing = outcome.error.clone().or_else(|| {
            let ok = (200..400).contains(&outcome.status);
            (!ok).then(|| format!("unhealthy status {}", outcome.status))
        });
        match (&*state, &now_failing) {
            (None, Some(e)) => self
                .diag
                .log(format_args!("health check failed for {}: {e}", url.url())),
            (Some(old), Some(e)) if old != e => self
                .diag
                .log(format_args!("health check failed for {}: {e}", url.url())),
            (Some(_), None) => self
                .diag
                .log(format_args!("health check recovered for {}", url.url())),
            _ => {}
        }
        *state = now_failing;
    }

    fn emit(&self, url: &HealthUrl, o: Outcome) {
        let probe = HealthProbe {
            url: url.url(),
            host: url.host.clone(),
            port: url.port,
            path: url.path.clone(),
            raw_query: url.raw_query.clone(),
            start: o.end.checked_sub(o.latency).unwrap_or(o.end),
            end: o.end,
            latency: o.latency,
            status: o.status,
            headers: o.headers,
            body: o.body,
            error: o.error,
        };
        self.emitter.emit(Record::Health(Box::new(probe)));
    }

    async fn probe(&self, url: &HealthUrl) -> Outcome {
        let started = Instant::now();
        let text = url.url();
        match tokio::time::timeout(PROBE_TIMEOUT, self.fetch(&text, started)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome {
                end: SystemTime::now(),
                latency: started.elapsed(),
                status: 0,
                headers: HeaderMap::new(),
                body: Capture::new(self.capture_limit),
                error: Some(format!(
                    "Get \"{text}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            },
        }
    }

    /// GET with redirects; latency is measured to the final response's headers, as in Go.
    async fn fetch(&self, url: &str, started: Instant) -> Outcome {
        let fail = |error: String| Outcome {
            end: SystemTime::now(),
            latency: started.elapsed(),
            status: 0,
            headers: HeaderMap::new(),
            body: Capture::new(self.capture_limit),
            error: Some(error),
        };
        let mut target: Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => return fail(format!("parse \"{url}\": {e}")),
        };
        for _ in 0..=MAX_REDIRECTS {
            let request = match Request::builder()
                .method(Method::GET)
                .uri(target.clone())
                .body(Empty::new())
            {
                Ok(r) => r,
                Err(e) => return fail(format!("Get \"{target}\": {e}")),
            };
            let response = match self.client.request(request).await {
                Ok(r) => r,
                Err(e) => {
                    return fail(format!(
                        "Get \"{target}\": {}",
                        describe_client_error(&e, &target)
                    ))
                }
            };
            let (end, latency) = (SystemTime::now(), started.elapsed());
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                if let Some(next) = redirect_target(&target, response.headers()) {
                    target = next;
                    continue;
                }
            }
            let headers = response.headers().clone();
            // Stop reading once a byte past the limit arrived: that is enough to mark the body
            // truncated, and a huge health body never costs more than one frame past the limit.
            let mut body = Capture::new(self.capture_limit);
            let mut error = None;
            let mut stream = response.into_body();
            while !body.truncated() {
                match stream.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            body.push(data);
                        }
                    }
                    Some(Err(e)) => {
                        let msg = e.to_string();
                        self.diag.log(format_args!(
                            "failed to read health response body for {url}: {msg}"
                        ));
                        error = Some(msg);
                        break;
                    }
                    None => break,
                }
            }
            return Outcome {
                end,
                latency,
                status: status.as_u16(),
                headers,
                body,
                error,
            };
        }
        fail(format!(
            "Get \"{target}\": stopped after {MAX_REDIRECTS} redirects"
        ))
    }
}

/// Probes every URL concurrently; `None` when shutdown interrupted the round.
async fn futures_round(
    runner: &HealthRunner,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Vec<Outcome>> {
    // Probes borrow the runner, so they run concurrently on this task instead of being spawned.
    let all = join_all(runner.urls.iter().map(|u| runner.probe(u)));
    tokio::select! {
        results = all => Some(results),
        _ = wait_true(shutdown) => None,
    }
}

/// Polls futures concurrently on the current task and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn redirect_target(base: &Uri, headers: &HeaderMap) -> Option<Uri> {
    let location = headers.get(header::LOCATION)?.to_str().ok()?;
    let parsed: Uri = location.parse().ok()?;
    if parsed.scheme().is_some() {
        return Some(parsed);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = parsed.path_and_query().cloned();
    Uri::from_parts(parts).ok()
}

/// Renders a client error like Go's `net/http` does for the common cases, so stderr and logged
/// bodies read the same as the original's (`dial tcp 127.0.0.1:8080: connect: connection refused`).
fn describe_client_error(e: &hyper_util::client::legacy::Error, target: &Uri) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            let addr = target
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!("dial tcp {addr}: connect: connection refused")
                }
                std::io::ErrorKind::TimedOut => format!("dial tcp {addr}: i/o timeout"),
                _ => format!("dial tcp {addr}: {io}"),
            };
        }
        source = s.source();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
