//! aws:ec2 against moto's EC2 API on loopback (a real `moto_server` child per test), with a small recording,
//! fault-injecting HTTP proxy between the SDK and moto where a test needs to see or bend the wire.
//!
//! Needs `WAYGATE_MOTO_SERVER` (path to moto_server); without it these tests fail and say how to get it.
//! Nothing here contacts 169.254.169.254: IMDS is disabled and credentials are static.

#![cfg(feature = "plugin-aws")]
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{InstanceStateName, InstanceType};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxygw::config::{Endpoint, Protocol};
use proxygw::log::Logger;
use proxygw::plugins::aws_ec2::{Ec2Options, Ec2Target};
use proxygw::plugins::TargetHandler;
use serde_json::{Map, Value};

// ------------------------------------------------------------------ moto

struct Moto {
    port: u16,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> String {
    match std::env::var("WAYGATE_MOTO_SERVER") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "WAYGATE_MOTO_SERVER is not set: the aws:ec2 tests need moto's EC2 API on loopback. Run \
             scripts/test, or: python3 -m venv target/test-venv && target/test-venv/bin/pip install \
             'moto[server]>=5,<6' && export WAYGATE_MOTO_SERVER=$PWD/target/test-venv/bin/moto_server"
        ),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", moto_binary()));
        let moto = Moto { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn sdk_config(url: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
            Credentials::new("testing", "testing", None, None, "test"),
        ))
        .endpoint_url(url)
        .build()
}

fn client(url: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(url))
}

/// Runs `n` instances in moto and stops them, so a warm has something to start.
async fn stopped_instances(c: &aws_sdk_ec2::Client, n: i32) -> Vec<String> {
    let images = c.describe_images().send().await.unwrap();
    let ami = images
        .images()
        .iter()
        .find_map(|i| i.image_id())
        .unwrap_or("ami-12c6146b")
        .to_string();
    let out = c
        .run_instances()
        .image_id(ami)
        .instance_type(InstanceType::T2Micro)
        .min_count(n)
        .max_count(n)
        .send()
        .await
        .unwrap();
    let ids: Vec<String> = out
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), n as usize);
    c.stop_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    for id in &ids {
        assert_eq!(state(c, id).await, InstanceStateName::Stopped);
    }
    ids
}

async fn state(c: &aws_sdk_ec2::Client, id: &str) -> InstanceStateName {
    let out = c
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .state()
        .unwrap()
        .name()
        .unwrap()
        .clone()
}

// ------------------------------------------------------------------ recording / fault proxy

type Rewrite = Arc<dyn Fn(&str, String) -> String + Send + Sync>;

/// An HTTP proxy in front of moto: records each call's Action and form body, and passes each response
/// body through `rewrite(action, body)`.
struct Proxy {
    url: String,
    calls: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    async fn start(upstream: String, rewrite: Rewrite) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let http: HttpClient<_, Full<Bytes>> =
            HttpClient::builder(TokioExecutor::new()).build_http();
        let rec = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (http, rec, rewrite, upstream) =
                    (http.clone(), rec.clone(), rewrite.clone(), upstream.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let (http, rec, rewrite, upstream) =
                            (http.clone(), rec.clone(), rewrite.clone(), upstream.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let text = String::from_utf8_lossy(&body).into_owned();
                            let action = form_value(&text, "Action").unwrap_or_default();
                            rec.lock().unwrap().push((action.clone(), text));
                            let pq = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.as_str())
                                .unwrap_or("/");
                            let mut b = http::Request::builder()
                                .method(parts.method.clone())
                                .uri(format!("{upstream}{pq}"));
                            for (k, v) in &parts.headers {
                                b = b.header(k, v);
                            }
                            let resp = http
                                .request(b.body(Full::new(body)).unwrap())
                                .await
                                .unwrap();
                            let (rp, rb) = resp.into_parts();
                            let rb = rb.collect().await.unwrap().to_bytes();
                            let out = rewrite(&action, String::from_utf8_lossy(&rb).into_owned());
                            let mut r = http::Response::builder().status(rp.status);
                            for (k, v) in &rp.headers {
                                if k != http::header::CONTENT_LENGTH
                                    && k != http::header::TRANSFER_ENCODING
                                {
                                    r = r.header(k, v);
                                }
                            }
                            Ok::<_, Infallible>(r.body(Full::new(Bytes::from(out))).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Self { url, calls, task }
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }

    fn actions(&self) -> Vec<String> {
        self.calls().into_iter().map(|(a, _)| a).collect()
    }
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn passthrough() -> Rewrite {
    Arc::new(|_, body| body)
}

/// Replaces every `<tag>…</tag>` text in `xml` with `new`.
fn replace_tag(xml: &str, tag: &str, new: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push_str(&rest[..i + open.len()]);
        out.push_str(new);
        rest = &after[j..];
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------ handler helpers

fn opts(yaml: &str) -> Ec2Options {
    let v: Value = serde_saphyr::from_str(yaml).unwrap();
    let Value::Object(m) = v else {
        panic!("{yaml}")
    };
    Ec2Options::parse(&m).unwrap()
}

fn ids_yaml(ids: &[String]) -> String {
    format!("instance_ids: [{}]", ids.join(", "))
}

fn target(url: &str, yaml: &str, endpoints: Vec<Endpoint>) -> Ec2Target {
    Ec2Target::new(
        "box",
        &endpoints,
        Logger::discard(),
        opts(yaml),
        Some(sdk_config(url)),
    )
}

fn tcp_endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint {
        name: "game".into(),
        protocol: Protocol::Tcp,
        address: addr,
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_starts_stopped_instances_and_drain_stops_them() {
    let moto = Moto::start();
    let c = client(&moto.url());
    let ids = stopped_instances(&c, 2).await;
    let proxy = Proxy::start(moto.url(), passthrough()).await;
    let t = target(&proxy.url, &ids_yaml(&ids), vec![]);

    t.warm().await.unwrap();
    for id in &ids {
        assert_eq!(state(&c, id).await, InstanceStateName::Running, "{id}");
    }
    let starts: Vec<_> = proxy
        .calls()
        .into_iter()
        .filter(|(a, _)| a == "StartInstances")
        .collect();
    assert_eq!(starts.len(), 1, "{:?}", proxy.actions());
    for id in &ids {
        assert!(starts[0].1.contains(id.as_str()), "{}", starts[0].1);
    }

    // Already running: a second warm only looks.
    let before = proxy.calls().len();
    t.warm().await.unwrap();
    assert_eq!(proxy.actions()[before..], ["DescribeInstances".to_string()]);

    t.drain().await.unwrap();
    for id in &ids {
        assert_eq!(state(&c, id).await, InstanceStateName::Stopped, "{id}");
    }
    let stop = proxy
        .calls()
        .into_iter()
        .find(|(a, _)| a == "StopInstances")
        .unwrap();
    assert_eq!(form_value(&stop.1, "Hibernate").as_deref(), Some("false"));

    // Already stopped: a second drain only looks.
    let before = proxy.calls().len();
    t.drain().await.unwrap();
    assert_eq!(proxy.actions()[before..], ["DescribeInstances".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hibernate_flag_reaches_stop_instances() {
    let moto = Moto::start();
    let c = client(&moto.url());
    let ids = stopped_instances(&c, 1).await;
    let proxy = Proxy::start(moto.url(), passthrough()).await;
    let t = target(
        &proxy.url,
        &format!("instance_id: {}\nhibernate: \"True\"", ids[0]),
        vec![],
    );
    t.warm().await.unwrap();
    t.drain().await.unwrap();
    assert_eq!(state(&c, &ids[0]).await, InstanceStateName::Stopped);
    let stop = proxy
        .calls()
        .into_iter()
        .find(|(a, _)| a == "StopInstances")
        .unwrap();
    assert_eq!(form_value(&stop.1, "Hibernate").as_deref(), Some("true"));
    assert_eq!(
        form_value(&stop.1, "InstanceId.1").as_deref(),
        Some(ids[0].as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_times_out_naming_the_instance_held_pending() {
    let moto = Moto::start();
    let c = client(&moto.url());
    let ids = stopped_instances(&c, 1).await;
    let hold: Rewrite = Arc::new(|action, body| {
        if action == "DescribeInstances" {
            body.replace("<name>running</name>", "<name>pending</name>")
        } else {
            body
        }
    });
    let proxy = Proxy::start(moto.url(), hold).await;
    let t = target(
        &proxy.url,
        &format!("instance_id: {}\nstart_timeout: 2s", ids[0]),
        vec![],
    );
    let t0 = Instant::now();
    let e = t.warm().await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(
        e,
        format!(
            "wait for ec2 instances {id} to reach running: timed out after 2s (last seen: {id} pending)",
            id = ids[0]
        )
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // It did ask AWS to start it, and kept polling with backoff rather than hammering.
    let describes = proxy
        .actions()
        .iter()
        .filter(|a| *a == "DescribeInstances")
        .count();
    assert!((2..=6).contains(&describes), "{:?}", proxy.actions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_times_out_naming_the_instance_held_stopping() {
    let moto = Moto::start();
    let c = client(&moto.url());
    let ids = stopped_instances(&c, 1).await;
    c.start_instances()
        .instance_ids(&ids[0])
        .send()
        .await
        .unwrap();
    let hold: Rewrite = Arc::new(|action, body| {
        if action == "DescribeInstances" {
            body.replace("<name>stopped</name>", "<name>stopping</name>")
        } else {
            body
        }
    });
    let proxy = Proxy::start(moto.url(), hold).await;
    let t = target(
        &proxy.url,
        &format!("instance_ids: [{}]\nstop_timeout: 1.5", ids[0]),
        vec![],
    );
    let e = t.drain().await.unwrap_err();
    assert_eq!(
        e,
        format!(
            "wait for ec2 instances {id} to reach stopped: timed out after 1.5s (last seen: {id} stopping)",
            id = ids[0]
        )
    );
    // StopInstances went out exactly once, not once per poll.
    let stops = proxy
        .actions()
        .iter()
        .filter(|a| *a == "StopInstances")
        .count();
    assert_eq!(stops, 1, "{:?}", proxy.actions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_waits_for_a_stopping_instance_to_stop_then_starts_it() {
    let moto = Moto::start();
    let c = client(&moto.url());
    let ids = stopped_instances(&c, 1).await;
    // The first three looks say "stopping" (StartInstances would fail on AWS then); after that the truth.
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let hold: Rewrite = Arc::new(move |action, body| {
        if action == "DescribeInstances" && s.fetch_add(1, Ordering::SeqCst) < 3 {
            body.replace("<name>stopped</name>", "<name>stopping</name>")
        } else {
            body
        }
    });
    let proxy = Proxy::start(moto.url(), hold).await;
    let t = target(&proxy.url, &format!("instance_id: {}", ids[0]), vec![]);
    t.warm().await.unwrap();
    assert_eq!(state(&c, &ids[0]).await, InstanceStateName::Running);
    let actions = proxy.actions();
    let first_start = actions.iter().position(|a| a == "StartInstances").unwrap();
    assert_eq!(
        actions[..first_start],
        vec!["DescribeInstances".to_string(); 4],
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_instance_id_is_a_clear_error() {
    let moto = Moto::start();
    let t = target(&moto.url(), "instance_id: i-0123456789abcdef0", vec![]);
    let e = t.warm().await.unwrap_err();
    assert!(
        e.starts_with("ec2 describe instances i-0123456789abcdef0: "),
        "{e}"
    );
    assert!(e.contains("InvalidInstanceID.NotFound"), "{e}");
    let e = t.drain().await.unwrap_err();
    assert!(e.contains("i-0123456789abcdef0"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_waits_until_the_endpoint_on_the_instance_accepts_tcp() {
    let moto = Moto::start();
    let c = client(&moto.url());
    let ids = stopped_instances(&c, 1).await;
    // Make the instance's private address loopback so the endpoint is "on the instance" and reachable.
    let lo: Rewrite = Arc::new(|action, body| {
        if action == "DescribeInstances" {
            replace_tag(&body, "privateIpAddress", "127.0.0.1")
        } else {
            body
        }
    });
    let proxy = Proxy::start(moto.url(), lo).await;
    let port = free_port();
    let ep: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = target(
        &proxy.url,
        &format!("instance_id: {}\nstart_timeout: 20s", ids[0]),
        vec![tcp_endpoint(ep)],
    );
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let l = tokio::net::TcpListener::bind(ep).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(l);
    });
    let t0 = Instant::now();
    t.warm().await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(1200),
        "warm returned before the port listened: {:?}",
        t0.elapsed()
    );
    late.abort();

    // Never listening: the wait is bounded by start_timeout and names endpoint and instance.
    t.drain().await.unwrap();
    let port = free_port();
    let ep: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = target(
        &proxy.url,
        &format!("instance_id: {}\nstart_timeout: 1500ms", ids[0]),
        vec![tcp_endpoint(ep)],
    );
    let e = t.warm().await.unwrap_err();
    assert_eq!(
        e,
        format!(
            "wait for endpoint game (127.0.0.1:{port}) on ec2 instance {} to accept TCP connections: timed out after 1.5s",
            ids[0]
        )
    );

    // An endpoint that is not an address of the instance is not probed.
    let t = target(
        &moto.url(),
        &format!("instance_id: {}\nstart_timeout: 5s", ids[0]),
        vec![tcp_endpoint(ep)],
    );
    t.warm().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_leaves_instances_by_default_and_stops_them_when_asked() {
    let moto = Moto::start();
    let c = client(&moto.url());
    let ids = stopped_instances(&c, 1).await;
    let t = target(&moto.url(), &format!("instance_id: {}", ids[0]), vec![]);
    t.warm().await.unwrap();
    t.close().await.unwrap();
    assert_eq!(state(&c, &ids[0]).await, InstanceStateName::Running);
    let t = target(
        &moto.url(),
        &format!("instance_id: {}\non_shutdown: stop", ids[0]),
        vec![],
    );
    t.close().await.unwrap();
    assert_eq!(state(&c, &ids[0]).await, InstanceStateName::Stopped);
}

#[test]
fn shipped_example_loads_and_checks() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/proxygw/aws-ec2/minecraft.yaml"
    );
    let cfg = proxygw::config::load_file(std::path::Path::new(path)).unwrap();
    let reg = proxygw::plugins::Registry::builtin().unwrap();
    reg.check_config(&cfg).unwrap();
    assert_eq!(cfg.targets[0].kind.to_string(), "aws:ec2");
    Ec2Options::parse(&cfg.targets[0].options).unwrap();
    let mut bad = cfg.targets[0].options.clone();
    bad.insert("instance_idd".into(), Value::String("i-1".into()));
    let mut cfg2 = cfg.clone();
    cfg2.targets[0].options = bad;
    let e = reg.check_config(&cfg2).unwrap_err().0;
    assert!(e.starts_with("targets[0].options: "), "{e}");
}

/// The production path: the registry's constructor and the SDK's default chain, configured only by the
/// environment (endpoint from `AWS_ENDPOINT_URL`). Runs in a child process so the environment is its own.
#[test]
fn daemon_warms_and_drains_with_config_from_the_environment() {
    let moto = Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids = rt.block_on(async { stopped_instances(&client(&moto.url()), 1).await });
    let home = tempfile::tempdir().unwrap();
    // A named profile carries the region; the default profile has none.
    std::fs::write(
        home.path().join("config"),
        "[profile moto]\nregion = us-east-1\n",
    )
    .unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "env_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AWS_EC2_CHILD_INSTANCE", &ids[0])
        .env("AWS_ENDPOINT_URL", moto.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", home.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials"),
        )
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by daemon_warms_and_drains_with_config_from_the_environment in a child process"]
async fn env_child() {
    use proxygw::engine::Request;
    let Ok(id) = std::env::var("AWS_EC2_CHILD_INSTANCE") else {
        panic!("only meant to run as the child of daemon_warms_and_drains_with_config_from_the_environment");
    };
    let url = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let yaml = format!(
        "version: v1
log: {{output: stderr}}
plugins: {{}}
targets:
  - name: box
    kind: aws:ec2
    idle_timeout: 1h
    endpoints:
      - {{name: ssh, protocol: tcp, address: 10.200.0.1:22}}
    options:
      instance_id: {id}
      region: us-east-1
      start_timeout: 30s
      stop_timeout: 30s
frontends: []
"
    );
    let cfg = proxygw::config::load_str(&yaml).unwrap();
    let reg = proxygw::plugins::Registry::build(
        &[("aws".into(), "aws".into())],
        proxygw::plugins::compiled(),
    )
    .unwrap();
    reg.check_config(&cfg).unwrap();
    let d = proxygw::daemon::Daemon::start(
        &cfg,
        &reg,
        proxygw::dataplane::memory::MemoryDataplane::default(),
        Logger::stderr(),
    )
    .await
    .unwrap();
    let h = d.handle().clone();
    let c = client(&url);
    h.request(Request::Warm("box".into())).await.unwrap();
    wait_state(&h, "active").await;
    assert_eq!(state(&c, &id).await, InstanceStateName::Running);
    h.request(Request::Drain("box".into())).await.unwrap();
    wait_state(&h, "inactive").await;
    assert_eq!(state(&c, &id).await, InstanceStateName::Stopped);

    // No region anywhere: a clear error on warm, not a hang or a metadata lookup.
    let mut m = Map::new();
    m.insert("instance_id".into(), Value::String(id.clone()));
    let t = Ec2Target::new(
        "box",
        &[],
        Logger::discard(),
        Ec2Options::parse(&m).unwrap(),
        None,
    );
    let e = t.warm().await.unwrap_err();
    assert!(e.starts_with("load aws config: no region"), "{e}");

    // The profile option selects the shared-config profile, which supplies the region.
    m.insert("profile".into(), Value::String("moto".into()));
    let t = Ec2Target::new(
        "box",
        &[],
        Logger::discard(),
        Ec2Options::parse(&m).unwrap(),
        None,
    );
    t.warm().await.unwrap();
    assert_eq!(state(&c, &id).await, InstanceStateName::Running);
    d.stop().await;
}

async fn wait_state(h: &proxygw::engine::EngineHandle, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = h.status().await.unwrap().targets.remove(0);
        if t.state == want {
            return;
        }
        assert!(Instant::now() < deadline, "never {want}: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
