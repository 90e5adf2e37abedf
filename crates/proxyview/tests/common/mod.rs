//! Test harness: the real `proxyview` binary as child processes (server and agents), an in-process
//! backend service on loopback, and a small HTTP/1.1 caller that sets any Host header.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proxyview::http_util::{boxed, full, PvBody};
use tokio::net::{TcpListener, TcpStream};

pub const TOKEN_IN: &str = "agent-secret";
pub const TOKEN_OUT: &str = "caller-secret";

/// A child process killed (and reaped) on drop, its stderr (and stdout) in files.
pub struct Proc {
    pub child: Child,
    pub stderr: PathBuf,
    pub stdout: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits until stderr contains `needle`.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.stderr_text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Resident set size now and at its peak, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of pid {} ----\n{}",
                self.pid(),
                self.stderr_text()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(kind: &str, yaml: &str, args: &[&str]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    spawn_with_config(kind, &cfg, dir, args)
}

fn spawn_with_config(kind: &str, cfg: &Path, dir: tempfile::TempDir, args: &[&str]) -> Proc {
    let stderr = dir.path().join("stderr.log");
    let stdout = dir.path().join("stdout.log");
    let child = Command::new(env!("CARGO_BIN_EXE_proxyview"))
        .arg(kind)
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("PROXYVIEW_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Proc {
        child,
        stderr,
        stdout,
        _dir: dir,
    }
}

/// A running server and the ports it bound.
pub struct Server {
    pub proc: Proc,
    pub internal: SocketAddr,
    pub external: SocketAddr,
}

/// Server YAML with both tokens set; `extra_internal` / `extra_external` are indented lines.
pub fn server_yaml(
    host: &str,
    internal: u16,
    external: u16,
    extra_internal: &str,
    extra_external: &str,
    top: &str,
) -> String {
    format!(
        "host: \"{host}\"\ninternal:\n  port: {internal}\n  token: \"{TOKEN_IN}\"\n{extra_internal}external:\n  port: {external}\n  token: \"{TOKEN_OUT}\"\n{extra_external}{top}"
    )
}

pub async fn start_server(yaml: &str) -> Server {
    start_server_args(yaml, &[]).await
}

/// [`start_server`] with extra command-line arguments.
pub async fn start_server_args(yaml: &str, args: &[&str]) -> Server {
    let proc = spawn("server", yaml, args);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = proc.stderr_text();
        // Only whole lines: the one wanted may be read while still half written.
        let whole = text.rfind('\n').map_or("", |i| &text[..i]);
        if let Some(line) = whole.lines().find(|l| l.contains("listening internal=")) {
            let addr = |key: &str| -> SocketAddr {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            return Server {
                internal: addr("internal="),
                external: addr("external="),
                proc,
            };
        }
        assert!(Instant::now() < end, "server did not start: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Agent YAML: `routes` are (name, backend addr) pairs.
pub fn agent_yaml(
    client_id: &str,
    server: SocketAddr,
    token: &str,
    routes: &[(&str, SocketAddr)],
    extra: &str,
) -> String {
    let mut s = format!("clientId: \"{client_id}\"\n{extra}proxyview:\n  url: \"{server}\"\n  token: \"{token}\"\nroutes:\n");
    for (name, addr) in routes {
        s.push_str(&format!(
            "  - name: \"{name}\"\n    value: \"{}\"\n    port: {}\n    type: \"ip\"\n",
            addr.ip(),
            addr.port()
        ));
    }
    s
}

pub fn start_agent(yaml: &str) -> Proc {
    start_agent_args(yaml, &[])
}

/// [`start_agent`] with extra command-line arguments.
pub fn start_agent_args(yaml: &str, args: &[&str]) -> Proc {
    spawn("client", yaml, args)
}

/// Waits until `host` is routed (any answer but the server's own 404/502).
pub async fn wait_route(external: SocketAddr, host: &str, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let last = match get(external, host, "/name").await {
            Ok(r) if r.status() == StatusCode::OK => return,
            Ok(r) => format!("{:?}", r.status()),
            Err(e) => e,
        };
        assert!(
            Instant::now() < end,
            "route {host} never became reachable (last answer: {last})"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Caller
/// Sends `sig` (`-STOP`, `-CONT`, …) to process `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A WebSocket client through the external port `addr` to the backend of `host`, presenting
/// the callers' token; the upgrade must be answered 101.
pub async fn websocket(
    addr: SocketAddr,
    host: &str,
) -> tokio_websockets::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let uri = format!("ws://{host}:{}/ws", addr.port());
    let (ws, resp) = tokio_websockets::ClientBuilder::new()
        .uri(&uri)
        .unwrap()
        .add_header("auth-token".parse().unwrap(), TOKEN_OUT.parse().unwrap())
        .unwrap()
        .connect_on(tcp)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `n` text messages on `ws`, each echoed back (by the backend's `/ws`) within `within`.
pub async fn echo_texts<S>(
    ws: &mut tokio_websockets::WebSocketStream<S>,
    n: usize,
    within: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..n {
        let msg = format!("hello {i}");
        ws.send(tokio_websockets::Message::text(msg.clone()))
            .await
            .unwrap();
        let back = tokio::time::timeout(within, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.as_text(), Some(msg.as_str()));
    }
}

/// Sends one request on a fresh connection with the given Host and the caller token.
pub async fn send(addr: SocketAddr, req: Request<PvBody>) -> Result<Response<Incoming>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, PvBody>(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    tx.send_request(req).await.map_err(|e| e.to_string())
}

pub fn request(method: &str, host: &str, path: &str, body: PvBody) -> Request<PvBody> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host);
    r = r.header("auth-token", TOKEN_OUT);
    r.body(body).unwrap()
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Response<Incoming>, String> {
    send(addr, request("GET", host, path, full(Bytes::new()))).await
}

pub async fn body_bytes(r: Response<Incoming>) -> Bytes {
    r.into_body().collect().await.unwrap().to_bytes()
}

pub async fn get_text(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let r = get(addr, host, path).await.unwrap();
    let s = r.status();
    (
        s,
        String::from_utf8_lossy(&body_bytes(r).await).into_owned(),
    )
}

/// Byte `i` of the test pattern (251 is prime, so chunk boundaries never line up with it).
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// A streaming body of `n` pattern bytes in 64 KiB chunks.
pub fn pattern_body(n: u64) -> PvBody {
    let chunks = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= n {
            return None;
        }
        let len = (n - off).min(64 * 1024);
        let chunk: Vec<u8> = (off..off + len).map(pattern).collect();
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
            off + len,
        ))
    });
    boxed(StreamBody::new(chunks))
}

/// Reads a body to the end, checking every byte against the pattern; returns the length.
pub async fn check_pattern(mut body: Incoming) -> u64 {
    let mut off = 0u64;
    while let Some(f) = body.frame().await {
        let f = f.unwrap();
        if let Some(d) = f.data_ref() {
            for (i, b) in d.iter().enumerate() {
                assert_eq!(*b, pattern(off + i as u64), "byte {}", off + i as u64);
            }
            off += d.len() as u64;
        }
    }
    off
}

// ---------------------------------------------------------------------------------------------
// Backend

/// Starts the backend service named `name` on 127.0.0.1 (a random port).
pub async fn backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    service_fn(
                        move |req| async move { Ok::<_, Infallible>(handle(name, req).await) },
                    );
                // As many fields as Go's servers take (no count limit), so that what the
                // tunnel passes on is what the test sees.
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(1000)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn handle(name: &'static str, mut req: Request<Incoming>) -> Response<PvBody> {
    let path = req.uri().path().to_string();
    let mut resp = match path.as_str() {
        "/name" => Response::new(full(name)),
        "/echo" => Response::new(boxed(req.into_body())),
        "/count" => {
            let mut body = req.into_body();
            let (mut n, mut ok) = (0u64, true);
            while let Some(f) = body.frame().await {
                let Ok(f) = f else { break };
                if let Some(d) = f.data_ref() {
                    ok &= d
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == pattern(n + i as u64));
                    n += d.len() as u64;
                }
            }
            Response::new(full(format!("{n} {ok}")))
        }
        "/headers" => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                    )
                })
                .collect();
            Response::new(full(serde_json::Value::Object(map).to_string()))
        }
        "/sse" => {
            let events = futures_util::stream::unfold(0u32, |i| async move {
                if i >= 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("data: event {i}\n\n")))),
                    i + 1,
                ))
            });
            let mut r = Response::new(boxed(StreamBody::new(events)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        "/ws" => {
            let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut ws = tokio_websockets::ServerBuilder::new().serve(TokioIo::new(up));
                    while let Some(Ok(m)) = ws.next().await {
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut sha = sha1_smol::Sha1::new();
            sha.update(key.as_ref().map(|k| k.as_bytes()).unwrap_or_default());
            sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            use base64::Engine as _;
            let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            r.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            r.headers_mut().insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).unwrap(),
            );
            r
        }
        p if p.starts_with("/bytes/") => {
            let n: u64 = p["/bytes/".len()..].parse().unwrap_or(0);
            let mut r = Response::new(pattern_body(n));
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            r
        }
        p if p.starts_with("/sleep/") => {
            let ms: u64 = p["/sleep/".len()..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slept"))
        }
        _ => {
            let mut r = Response::new(full(
                Full::new(Bytes::from_static(b"nope"))
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes(),
            ));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    resp.headers_mut()
        .insert("x-backend", HeaderValue::from_static(name));
    resp
}

/// Server + one agent serving `route1` from a new backend named `b1`.
pub async fn setup(server_extra_external: &str, top: &str) -> (Server, Proc, std::net::SocketAddr) {
    setup_for(backend("b1").await, server_extra_external, top, "").await
}

/// [`setup`] (no extra settings) with both halves running `threads` worker threads.
pub async fn setup_threads(threads: usize) -> (Server, Proc, std::net::SocketAddr) {
    let n = threads.to_string();
    let yaml = server_yaml("127.0.0.1", 0, 0, "", "", "");
    setup_from(backend("b1").await, &yaml, "", &["--threads", n.as_str()]).await
}

/// Server + one agent (with `agent_extra` config lines) serving `route1` from the backend at
/// `be`.
pub async fn setup_for(
    be: std::net::SocketAddr,
    server_extra_external: &str,
    top: &str,
    agent_extra: &str,
) -> (Server, Proc, std::net::SocketAddr) {
    let yaml = server_yaml("127.0.0.1", 0, 0, "", server_extra_external, top);
    setup_from(be, &yaml, agent_extra, &[]).await
}

/// A server from `server_yaml` + one agent (with `agent_extra` config lines) serving `route1`
/// from the backend at `be`, both started with the command-line `args`.
pub async fn setup_from(
    be: std::net::SocketAddr,
    server_yaml: &str,
    agent_extra: &str,
    args: &[&str],
) -> (Server, Proc, std::net::SocketAddr) {
    let server = start_server_args(server_yaml, args).await;
    let yaml = agent_yaml(
        "agent-1",
        server.internal,
        TOKEN_IN,
        &[("route1", be)],
        agent_extra,
    );
    let agent = start_agent_args(&yaml, args);
    wait_route(server.external, "route1", Duration::from_secs(15)).await;
    (server, agent, be)
}

// ---------------------------------------------------------------------------------------------
// TLS callers

/// A rustls client trusting exactly `roots`, offering h2 and http/1.1.
pub fn client(roots: &[&rustls::pki_types::CertificateDer<'static>]) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Every dial a full handshake: a resumed session reports the certificate of the first.
    cfg.resumption = rustls::client::Resumption::disabled();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

pub async fn dial(
    addr: std::net::SocketAddr,
    c: &tokio_rustls::TlsConnector,
    sni: &str,
) -> Result<Tls, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), c.connect(name, tcp))
        .await
        .map_err(|_| "handshake hung".to_string())?
        .map_err(|e| e.to_string())
}

pub fn peer_cert(s: &Tls) -> rustls::pki_types::CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

// ---------------------------------------------------------------------------------------------
// Other processes

/// A port free on 127.0.0.1 right now (for a process that must be told its port up front).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed and reaped when dropped.
pub struct Kill(pub std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
