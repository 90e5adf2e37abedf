//! Test support for CloudWatch: a real moto server on loopback, a fault-injecting HTTP proxy in
//! front of it, a reading client, and fake IMDS / ECS metadata endpoints.

#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_cloudwatchlogs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_cloudwatchlogs::Client;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::free_port;

/// A `moto_server` child on 127.0.0.1; killed on drop.
pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

/// Path of `moto_server`, or a failing test explaining how to get it.
pub fn moto_binary() -> String {
    match std::env::var("WAYGATE_MOTO_SERVER") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "WAYGATE_MOTO_SERVER is not set: these tests need a real CloudWatch Logs API on loopback. \
             Run scripts/test, or: python3 -m venv target/test-venv && \
             target/test-venv/bin/pip install 'moto[server]>=5,<6' && \
             export WAYGATE_MOTO_SERVER=$PWD/target/test-venv/bin/moto_server"
        ),
    }
}

impl Moto {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", moto_binary()));
        let moto = Moto {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its state is lost, as with a real outage plus data loss on the far side).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "moto_server still listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Environment for cwproxy pointing at `endpoint` with static test credentials.
pub fn aws_env(endpoint: &str, region: &str) -> Vec<(String, String)> {
    vec![
        ("AWS_ENDPOINT_URL".into(), endpoint.into()),
        ("AWS_REGION".into(), region.into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
    ]
}

pub fn client(endpoint: &str, region: &str) -> Client {
    let config = aws_sdk_cloudwatchlogs::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// One event read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub timestamp: i64,
    pub message: String,
    pub stream: String,
}

/// All events of every stream in `group` (each stream in timestamp order), or empty if absent.
pub async fn read_group(client: &Client, group: &str) -> Vec<Read> {
    let Ok(streams) = client
        .describe_log_streams()
        .log_group_name(group)
        .send()
        .await
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in streams.log_streams() {
        let name = s.log_stream_name().unwrap().to_owned();
        let mut token: Option<String> = None;
        loop {
            let resp = client
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(&name)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await
                .unwrap();
            for e in resp.events() {
                out.push(Read {
                    timestamp: e.timestamp().unwrap(),
                    message: e.message().unwrap().to_owned(),
                    stream: name.clone(),
                });
            }
            let next = resp.next_forward_token().map(str::to_owned);
            if resp.events().is_empty() || next == token {
                break;
            }
            token = next;
        }
    }
    out
}

/// Polls `group` until `pred` holds for its events (bounded).
pub async fn wait_group(
    client: &Client,
    group: &str,
    limit: Duration,
    pred: impl Fn(&[Read]) -> bool,
) -> Vec<Read> {
    let deadline = Instant::now() + limit;
    loop {
        let events = read_group(client, group).await;
        if pred(&events) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the fault proxy does with one request.
pub enum Action {
    Forward,
    /// Forward the same request twice (the first response is discarded): makes the resource
    /// exist already when cwproxy's own call arrives.
    ForwardTwice,
    Respond(u16, &'static str),
}

type Rule = dyn Fn(&str, usize) -> Action + Send + Sync;

/// An HTTP proxy in front of moto that can answer with errors instead of forwarding.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// Requests seen per `X-Amz-Target` operation name.
    pub seen: Arc<Mutex<Vec<String>>>,
    pub injected: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl FaultProxy {
    /// `rule(operation, nth call of that operation starting at 0)` decides per request.
    pub fn start(
        upstream: String,
        rule: impl Fn(&str, usize) -> Action + Send + Sync + 'static,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let injected = Arc::new(AtomicUsize::new(0));
        let rule: Arc<Rule> = Arc::new(rule);
        let state = (Arc::clone(&seen), Arc::clone(&injected));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let http = HttpClient::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, injected) = (Arc::clone(&state.0), Arc::clone(&state.1));
                let (rule, http, upstream) = (Arc::clone(&rule), http.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, injected) = (Arc::clone(&seen), Arc::clone(&injected));
                        let (rule, http, upstream) = (Arc::clone(&rule), http.clone(), upstream.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let op = parts
                                .headers
                                .get("x-amz-target")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.rsplit('.').next())
                                .unwrap_or("")
                                .to_owned();
                            let nth = {
                                let mut s = seen.lock().unwrap();
                                let n = s.iter().filter(|o| **o == op).count();
                                s.push(op.clone());
                                n
                            };
                            let action = rule(&op, nth);
                            let forward = |parts: &http::request::Parts| {
                                let mut b = Request::builder()
                                    .method(parts.method.clone())
                                    .uri(format!("{upstream}{}", parts.uri.path_and_query().unwrap()));
                                for (k, v) in &parts.headers {
                                    b = b.header(k, v);
                                }
                                b.body(Full::new(body.clone())).unwrap()
                            };
                            let response = match action {
                                Action::Respond(status, error_type) => {
                                    injected.fetch_add(1, Ordering::SeqCst);
                                    Response::builder()
                                        .status(status)
                                        .header("content-type", "application/x-amz-json-1.1")
                                        .body(Full::new(Bytes::from(format!(
                                            r#"{{"__type":"{error_type}","message":"injected by test"}}"#
                                        ))))
                                        .unwrap()
                                }
                                Action::Forward | Action::ForwardTwice => {
                                    if matches!(action, Action::ForwardTwice) {
                                        let _ = http.request(forward(&parts)).await;
                                    }
                                    match http.request(forward(&parts)).await {
                                        Ok(resp) => {
                                            let (p, b) = resp.into_parts();
                                            let b = b.collect().await.unwrap().to_bytes();
                                            Response::from_parts(p, Full::new(b))
                                        }
                                        Err(_) => Response::builder()
                                            .status(502)
                                            .body(Full::new(Bytes::new()))
                                            .unwrap(),
                                    }
                                }
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FaultProxy {
            addr,
            seen,
            injected,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self, op: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|o| *o == op)
            .count()
    }
}

/// A tiny HTTP server answering from `route(method, path, headers)`; records what it was asked.
pub struct FakeHttp {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<(String, String, http::HeaderMap)>>>,
    _runtime: tokio::runtime::Runtime,
}

type Route = dyn Fn(&str, &str, &http::HeaderMap) -> (u16, String) + Send + Sync;

impl FakeHttp {
    pub fn start(
        route: impl Fn(&str, &str, &http::HeaderMap) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<(String, String, http::HeaderMap)>>> = Arc::default();
        let route: Arc<Route> = Arc::new(route);
        let log = Arc::clone(&requests);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (route, log) = (Arc::clone(&route), Arc::clone(&log));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (route, log) = (Arc::clone(&route), Arc::clone(&log));
                        async move {
                            let method = req.method().as_str().to_owned();
                            let path = req.uri().path().to_owned();
                            let headers = req.headers().clone();
                            log.lock().unwrap().push((
                                method.clone(),
                                path.clone(),
                                headers.clone(),
                            ));
                            let (status, body) = route(&method, &path, &headers);
                            let mut resp = Response::builder().status(status);
                            // Like IMDS: a token response echoes the TTL it was asked for.
                            if let Some(ttl) = headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                                resp = resp.header("x-aws-ec2-metadata-token-ttl-seconds", ttl);
                            }
                            Ok::<_, Infallible>(resp.body(Full::new(Bytes::from(body))).unwrap())
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FakeHttp {
            addr,
            requests,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
