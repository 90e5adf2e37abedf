//! Test support: a real upstream on loopback and the real `cwproxy` binary with its stdout captured.

#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub type Body = BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Counters the upstream exposes to assertions.
#[derive(Default)]
pub struct Hits {
    pub flaky: AtomicUsize,
    pub total: AtomicUsize,
    pub uploaded: AtomicUsize,
}

/// A multi-purpose upstream app on 127.0.0.1 (its own runtime thread).
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<Hits>,
    _runtime: tokio::runtime::Runtime,
}

async fn handle(req: Request<Incoming>, hits: Arc<Hits>) -> Result<Response<Body>, Infallible> {
    hits.total.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().as_str().to_owned();
    let response = match path.as_str() {
        "/health" => Response::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"status":"ok"}"#)),
        "/flaky" => {
            if hits.flaky.fetch_add(1, Ordering::SeqCst) == 0 {
                Response::builder().status(503).body(full("try again"))
            } else {
                Response::builder().body(full("ok"))
            }
        }
        "/many-fields" => {
            // More fields than hyper's client accepted by default (100): cookies, links.
            let mut b = Response::builder();
            for i in 0..150 {
                b = b.header("set-cookie", format!("c{i}=v{i}"));
            }
            b.header("link", "</a>; rel=preload").body(full("many"))
        }
        "/echo-host" => {
            let host = req
                .headers()
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
                .unwrap_or_default();
            Response::builder().body(full(host))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Response::builder().body(full("done"))
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
            tokio::spawn(async move {
                for i in 0..3 {
                    let _ = tx
                        .send(Ok(Frame::data(Bytes::from(format!("data: event {i}\n\n")))))
                        .await;
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            });
            let stream = tokio_stream_from(rx);
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
        }
        "/download" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
            tokio::spawn(async move {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                for _ in 0..160 {
                    if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(StreamBody::new(tokio_stream_from(rx)).boxed())
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    n += d.len();
                }
            }
            hits.uploaded.store(n, Ordering::SeqCst);
            Response::builder().body(full(n.to_string()))
        }
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(full(""))
        }
        _ => {
            // The seed's demo app: echoes path, method, query and body as JSON.
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let json = serde_json::json!({
                "path": path,
                "method": method,
                "query": query_map(&query),
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("set-cookie", "demo=upstream")
                .body(full(json.to_string()))
        }
    };
    Ok(response.unwrap())
}

fn query_map(q: &str) -> serde_json::Map<String, serde_json::Value> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), serde_json::Value::String(v.to_owned()))
        })
        .collect()
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Upstream {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let std_listener = StdListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let hits = Arc::new(Hits::default());
        let served = Arc::clone(&hits);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let hits = Arc::clone(&served);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, Arc::clone(&hits)));
                    let mut server =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // An app that takes as many fields as Go's servers (no count limit), so
                    // that what the proxy passes on is what the test sees.
                    server.http1().max_headers(1000);
                    let _ = server
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            _runtime: runtime,
        }
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The cwproxy binary under test, with stdout lines collected.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<String>>,
}

pub fn cwproxy_cmd(env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cwproxy"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // Keep the host's own Kubernetes service account (if any) out of the lines under test.
        .env("CWPROXY_SERVICEACCOUNT_DIR", "/nonexistent/cwproxy-test")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Proxy {
    /// Starts cwproxy in front of the app on `app_port` (health probes on `/health` once an
    /// hour, so they stay out of the way), with `extra` variables.
    pub fn for_app(app_port: u16, extra: &[(&str, &str)]) -> Self {
        let port = app_port.to_string();
        let mut env = vec![
            ("APP_PORT", port.as_str()),
            ("HEALTH_URLS", "/health"),
            ("HEALTH_INTERVAL", "1h"),
        ];
        env.extend_from_slice(extra);
        Proxy::start(&env, &[])
    }

    /// Starts cwproxy and waits until it accepts connections.
    pub fn start(env: &[(&str, &str)], args: &[&str]) -> Self {
        let port = free_port();
        let port_text = port.to_string();
        let mut all: Vec<(&str, &str)> = vec![("PROXY_PORT", &port_text), ("APP_NAME", "e2e")];
        all.extend_from_slice(env);
        let mut child = cwproxy_cmd(&all, args).spawn().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let err_sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "cwproxy did not listen on {port}; stderr: {}",
                    stderr.lock().unwrap()
                );
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "cwproxy exited early with {status}; stderr: {}",
                    stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Proxy {
            child,
            port,
            lines,
            stderr,
        }
    }

    /// Waits until a stdout line satisfies `pred`, returning it.
    pub fn wait_line(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for l in self.lines.lock().unwrap().iter() {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
                if pred(&v) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no matching line; got {:?}; stderr {}",
                self.lines.lock().unwrap(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for `n` traffic lines and returns all of them raw.
    pub fn wait_traffic(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines: Vec<String> = self
                .raw_lines()
                .into_iter()
                .filter(|l| l.contains("\"_t\":\"TRAFFIC\""))
                .collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} traffic lines within {within:?}; stderr {}",
                lines.len(),
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn traffic_lines(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["_t"] == "TRAFFIC")
            .collect()
    }

    pub fn raw_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for exit (bounded) and returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "cwproxy did not exit within {limit:?}; stderr: {}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends one raw HTTP/1.1 request and returns the raw response (connection closed by `Connection: close`).
pub fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
