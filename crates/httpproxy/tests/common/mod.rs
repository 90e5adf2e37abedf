//! Test harness: the proxy served on a loopback socket, real upstreams, raw and hyper clients.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use httpproxy::{Proxy, ProxyConfig, ServeError, Upstream};

/// Error type of the test bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use telemetry::diag::Diag;
use telemetry::Exchange;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(15);

pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub struct Harness {
    pub addr: SocketAddr,
    pub exchanges: Arc<Mutex<Vec<Exchange>>>,
    pub logs: Arc<Mutex<Vec<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

/// Defaults of the seed, no retries (tests that need them turn them on).
pub fn config(up: SocketAddr) -> ProxyConfig {
    let mut cfg = ProxyConfig::new(Upstream::Addr(up));
    cfg.retry = httpproxy::RetryPolicy::disabled();
    cfg
}

impl Harness {
    pub async fn start(mut cfg: ProxyConfig) -> Self {
        let exchanges: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = logs.clone();
        // Keep the message only: the assertions compare it whole.
        cfg.logger = Diag::with_target(
            httpproxy::LOG_PREFIX,
            Arc::new(move |line: &str| {
                let msg = line.split_once(": ").map_or(line, |(_, m)| m);
                l.lock()
                    .unwrap()
                    .push(msg.trim_end_matches('\n').to_owned());
            }),
        );
        let e = exchanges.clone();
        let proxy =
            Proxy::new(cfg, Arc::new(move |x: Exchange| e.lock().unwrap().push(x))).unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(4096).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            proxy
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await
        });
        Harness {
            addr,
            exchanges,
            logs,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Waits until at least `n` exchanges were reported, then a little longer to catch extras.
    pub async fn exchanges(&self, n: usize) -> Vec<Exchange> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.exchanges.lock().unwrap().len() >= n {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} exchanges"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.exchanges.lock().unwrap().clone()
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.begin_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap()
    }
}

/// A hyper HTTP/1.1 upstream; returns its address and a count of accepted connections.
pub async fn upstream<F, Fut>(f: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    upstream_on("127.0.0.1:0", f).await
}

pub async fn upstream_on<F, Fut>(bind: &str, f: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let f = f.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(f(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, conns)
}

/// A raw upstream that records every byte received per connection and answers `200 ok` to each
/// request head it sees (bodies are not parsed).
pub async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let idx = {
                let mut g = log2.lock().unwrap();
                g.push(Vec::new());
                g.len() - 1
            };
            let log = log2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut pending = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    log.lock().unwrap()[idx].extend_from_slice(&buf[..n]);
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (addr, log)
}

/// Sends raw bytes, then reads until the proxy closes the connection (bounded by [`WAIT`]).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("proxy never closed the connection");
    out
}

/// An HTTP/1.1 client connection to `addr`.
pub async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<TestBody> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    send
}

/// Resident set size of this process in bytes.
pub fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}
