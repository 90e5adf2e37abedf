//! CloudWatch Logs delivery against a real CloudWatch Logs API on loopback (moto), with the real
//! binary: events read back with GetLogEvents must equal the stdout lines (plus the newline after
//! `_q`). Needs `WAYGATE_MOTO_SERVER` (scripts/test sets it); without it these tests fail.

#![allow(clippy::unwrap_used)]

#[path = "support/aws.rs"]
mod aws;
mod support;

use std::time::{Duration, Instant};

use aws::{aws_env, client, read_group, wait_group, Action, FakeHttp, FaultProxy, Moto};
use support::{free_port, http, Proxy, Upstream};

const TRAFFIC: &str = "/test/traffic";
const HEALTH: &str = "/test/health";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn start(up: &Upstream, endpoint: &str, extra: &[(&str, &str)]) -> Proxy {
    let mut env: Vec<(String, String)> = vec![
        ("APP_PORT".into(), up.addr.port().to_string()),
        ("HEALTH_URLS".into(), "/health".into()),
        ("HEALTH_INTERVAL".into(), "1h".into()),
        ("LOG_GROUP_NAME".into(), TRAFFIC.into()),
        ("HEALTH_LOG_GROUP_NAME".into(), HEALTH.into()),
    ];
    env.extend(aws_env(endpoint, "us-east-1"));
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    Proxy::start(&all, &[])
}

fn get(port: u16, path: &str) {
    let resp = http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

/// Sends `paths` from four threads at once, so events reach the sink out of timestamp order.
fn get_all(port: u16, paths: Vec<String>) {
    let chunks: Vec<Vec<String>> = paths
        .chunks(paths.len().div_ceil(4))
        .map(<[String]>::to_vec)
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|c| std::thread::spawn(move || c.iter().for_each(|p| get(port, p))))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// How long a test waits for the traffic lines of its requests.
const LINES_WITHIN: Duration = Duration::from_secs(10);

/// The CloudWatch form of a stdout traffic line, derived independently: newline after `_q`.
fn with_newline(line: &str) -> String {
    assert!(line.starts_with("{\"_q\":\""), "{line}");
    let end = line.find("\",\"").unwrap() + 2;
    format!("{}\n{}", &line[..end], &line[end..])
}

fn stderr(proxy: &Proxy) -> String {
    proxy.stderr.lock().unwrap().clone()
}

#[test]
fn traffic_events_equal_stdout_lines_sorted_in_the_log_group() {
    let moto = Moto::start();
    let up = Upstream::start();
    let proxy = start(&up, &moto.url(), &[]);
    let n = 60;
    get_all(
        proxy.port,
        (0..n).map(|i| format!("/item/{i}?q={i}")).collect(),
    );
    let lines = proxy.wait_traffic(n, LINES_WITHIN);
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(20), |e| {
        e.len() >= n
    }));
    assert_eq!(events.len(), n, "stderr: {}", stderr(&proxy));

    let pid = proxy.child.id();
    let stream = &events[0].stream;
    let prefix = format!("e2e-traffic-{pid}-");
    assert!(stream.starts_with(&prefix), "{stream}");
    assert!(stream[prefix.len()..].parse::<u64>().is_ok(), "{stream}");
    assert!(events.iter().all(|e| &e.stream == stream));

    // Exactly the stdout lines, each once, with the newline after `_q`.
    let mut expected: Vec<String> = lines.iter().map(|l| with_newline(l)).collect();
    let mut got: Vec<String> = events.iter().map(|e| e.message.clone()).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    // Sorted by timestamp, and each timestamp is the line's EMF timestamp.
    assert!(events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    for e in &events {
        let v: serde_json::Value = serde_json::from_str(&e.message).unwrap();
        assert_eq!(v["_aws"]["Timestamp"].as_i64(), Some(e.timestamp));
    }
    assert!(!stderr(&proxy).contains("CloudWatch"), "{}", stderr(&proxy));
}

#[test]
fn health_events_go_to_the_health_group() {
    let moto = Moto::start();
    let up = Upstream::start();
    let proxy = start(&up, &moto.url(), &[("HEALTH_INTERVAL", "1s")]);
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, HEALTH, Duration::from_secs(20), |e| {
        e.len() >= 2
    }));
    assert!(events.len() >= 2, "stderr: {}", stderr(&proxy));
    let pid = proxy.child.id();
    assert!(events[0].stream.starts_with(&format!("e2e-health-{pid}-")));
    let health_lines: Vec<String> = proxy
        .raw_lines()
        .into_iter()
        .filter(|l| l.contains("\"_t\":\"HEALTH\""))
        .collect();
    for e in &events {
        assert!(health_lines.contains(&e.message), "{}", e.message);
    }
    // Health never lands in the traffic group.
    let traffic = rt().block_on(read_group(&cw, TRAFFIC));
    assert!(traffic
        .iter()
        .all(|e| !e.message.contains("\"_t\":\"HEALTH\"")));
}

#[test]
fn pre_existing_group_and_stream_are_used() {
    let moto = Moto::start();
    let cw = client(&moto.url(), "us-east-1");
    rt().block_on(async {
        cw.create_log_group()
            .log_group_name(TRAFFIC)
            .send()
            .await
            .unwrap();
        cw.create_log_group()
            .log_group_name(HEALTH)
            .send()
            .await
            .unwrap();
    });
    // The proxy creates each stream just before cwproxy's own CreateLogStream arrives.
    let faults = FaultProxy::start(moto.url(), |op, _| {
        if op == "CreateLogStream" {
            Action::ForwardTwice
        } else {
            Action::Forward
        }
    });
    let up = Upstream::start();
    let proxy = start(&up, &faults.url(), &[]);
    get_all(proxy.port, (0..8).map(|i| format!("/pre/{i}")).collect());
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(20), |e| {
        e.len() >= 8
    }));
    assert_eq!(events.len(), 8, "stderr: {}", stderr(&proxy));
    assert_eq!(faults.count("CreateLogGroup"), 2);
    assert_eq!(faults.count("CreateLogStream"), 2);
    assert!(!stderr(&proxy).contains("failed"), "{}", stderr(&proxy));
}

#[test]
fn throttling_and_server_errors_are_retried_without_loss() {
    let moto = Moto::start();
    let faults = FaultProxy::start(moto.url(), |op, nth| match (op, nth) {
        ("PutLogEvents", 0..=2) => Action::Respond(400, "ThrottlingException"),
        ("PutLogEvents", 3..=4) => Action::Respond(500, "InternalFailure"),
        ("PutLogEvents", 5) => Action::Respond(503, "ServiceUnavailableException"),
        _ => Action::Forward,
    });
    let up = Upstream::start();
    let proxy = start(&up, &faults.url(), &[]);
    get_all(proxy.port, (0..20).map(|i| format!("/retry/{i}")).collect());
    let lines = proxy.wait_traffic(20, LINES_WITHIN);
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(30), |e| {
        e.len() >= 20
    }));
    assert_eq!(events.len(), 20, "stderr: {}", stderr(&proxy));
    assert_eq!(faults.injected.load(std::sync::atomic::Ordering::SeqCst), 6);
    assert!(faults.count("PutLogEvents") >= 7);
    let mut expected: Vec<String> = lines.iter().map(|l| with_newline(l)).collect();
    let mut got: Vec<String> = events.into_iter().map(|e| e.message).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(
        !stderr(&proxy).contains("failed to publish"),
        "{}",
        stderr(&proxy)
    );
}

#[test]
fn moto_stopped_and_restarted_mid_run_loses_nothing() {
    let mut moto = Moto::start();
    let port = moto.port;
    let up = Upstream::start();
    let proxy = start(&up, &moto.url(), &[]);
    let cw = client(&moto.url(), "us-east-1");
    get_all(
        proxy.port,
        (0..10).map(|i| format!("/before/{i}")).collect(),
    );
    let before = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(20), |e| {
        e.len() >= 10
    }));
    assert_eq!(before.len(), 10, "stderr: {}", stderr(&proxy));
    // Let the last flush settle so nothing is in flight when the server dies.
    std::thread::sleep(Duration::from_millis(1500));

    moto.stop();
    get_all(
        proxy.port,
        (0..30).map(|i| format!("/during/{i}")).collect(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let moto = Moto::start_on(port);
    // The restarted server has no group or stream: the sink recreates them and resends.
    let after = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(40), |e| {
        e.len() >= 30
    }));
    let mut paths: Vec<String> = after
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.message).unwrap();
            v["request"]["path"].as_str().unwrap().to_owned()
        })
        .collect();
    paths.sort();
    let mut expected: Vec<String> = (0..30).map(|i| format!("/during/{i}")).collect();
    expected.sort();
    assert_eq!(paths, expected, "stderr: {}", stderr(&proxy));
    assert!(
        !stderr(&proxy).contains("failed to publish"),
        "{}",
        stderr(&proxy)
    );
    drop(moto);
}

#[test]
fn unreachable_endpoint_at_start_still_serves_and_delivers_later() {
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let up = Upstream::start();
    let proxy = start(&up, &endpoint, &[]);
    get_all(proxy.port, (0..5).map(|i| format!("/early/{i}")).collect());
    proxy.wait_traffic(5, LINES_WITHIN);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stderr(&proxy).contains("CloudWatch traffic sink is not ready yet") {
        assert!(Instant::now() < deadline, "stderr: {}", stderr(&proxy));
        std::thread::sleep(Duration::from_millis(50));
    }
    let moto = Moto::start_on(port);
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(40), |e| {
        e.len() >= 5
    }));
    assert_eq!(events.len(), 5, "stderr: {}", stderr(&proxy));
}

#[test]
fn shutdown_flushes_queued_events() {
    let moto = Moto::start();
    let up = Upstream::start();
    let mut proxy = start(&up, &moto.url(), &[]);
    // Let the sinks get ready, then send and stop at once (before the 1 s flush tick).
    let cw = client(&moto.url(), "us-east-1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt()
        .block_on(async {
            cw.describe_log_streams()
                .log_group_name(TRAFFIC)
                .send()
                .await
                .map(|r| r.log_streams().len())
        })
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    get_all(proxy.port, (0..25).map(|i| format!("/last/{i}")).collect());
    proxy.signal(libc::SIGTERM);
    assert_eq!(
        proxy.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        stderr(&proxy)
    );
    let events = rt().block_on(read_group(&cw, TRAFFIC));
    assert_eq!(events.len(), 25, "stderr: {}", stderr(&proxy));
}

#[test]
fn oversized_events_are_trimmed_not_dropped() {
    let moto = Moto::start();
    let up = Upstream::start();
    // Unbounded stdout lines, so only the CloudWatch path trims here.
    let proxy = start(
        &up,
        &moto.url(),
        &[("CAPTURE_BODY_LIMIT", "1000000"), ("LOG_LINE_LIMIT", "0")],
    );
    let body = "a".repeat(300_000);
    let resp = http(
        proxy.port,
        &format!(
            "POST /big HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "{}",
        &resp[..100.min(resp.len())]
    );
    let lines = proxy.wait_traffic(1, LINES_WITHIN);
    assert!(lines[0].len() > 1_000_000);
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(20), |e| {
        !e.is_empty()
    }));
    assert_eq!(events.len(), 1, "stderr: {}", stderr(&proxy));
    let m = &events[0].message;
    assert!(m.len() <= 262_144 - 26, "{}", m.len());
    let v: serde_json::Value = serde_json::from_str(m).unwrap();
    let stdout: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert!(v["request"]["body_raw"]
        .as_str()
        .unwrap()
        .ends_with("...(truncated)"));
    assert!(v["response"]["body_raw"]
        .as_str()
        .unwrap()
        .ends_with("...(truncated)"));
    // Everything but the bodies is unchanged, metrics included.
    for key in [
        "_q",
        "_t",
        "app_name",
        "global_hash",
        "delay",
        "_aws",
        "Latency",
    ] {
        assert_eq!(v[key], stdout[key], "{key}");
    }
    assert_eq!(v["response"]["status"], 200);
    assert_eq!(v["request"]["headers"], stdout["request"]["headers"]);
}

#[test]
fn no_region_means_stdout_only_and_one_stderr_line() {
    let up = Upstream::start();
    let proxy = Proxy::start(
        &[
            ("APP_PORT", &up.addr.port().to_string()),
            ("HEALTH_URLS", "/health"),
            ("HEALTH_INTERVAL", "1h"),
        ],
        &[],
    );
    get(proxy.port, "/x");
    proxy.wait_traffic(1, LINES_WITHIN);
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = "AWS region is not configured; CloudWatch Logs and Metrics are disabled";
    while !stderr(&proxy).contains(line) {
        assert!(Instant::now() < deadline, "stderr: {}", stderr(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let err = stderr(&proxy);
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn metadata_from_fake_imds_ecs_and_service_account_names_the_app_and_region() {
    let imds = FakeHttp::start(|method, path, headers| match (method, path) {
        ("PUT", "/latest/api/token") => (200, "imds-token".into()),
        ("GET", "/latest/dynamic/instance-identity/document") => {
            if headers
                .get("x-aws-ec2-metadata-token")
                .map(|v| v.as_bytes())
                == Some(b"imds-token")
            {
                (
                    200,
                    r#"{"accountId":"123456789012","availabilityZone":"eu-west-3a","imageId":"ami-1","instanceId":"i-0abc","instanceType":"m7g.large","region":"eu-west-3"}"#.into(),
                )
            } else {
                (401, String::new())
            }
        }
        _ => (404, String::new()),
    });
    let ecs = FakeHttp::start(|_, path, _| {
        match path {
        "/v4/abc" => (200, r#"{"ContainerARN":"arn:aws:ecs:eu-west-1:1:container/c","Name":"app"}"#.into()),
        "/v4/abc/task" => (
            200,
            r#"{"Cluster":"shop","TaskARN":"arn:aws:ecs:eu-west-1:1:task/t","Family":"orders-task","Revision":"7","LaunchType":"FARGATE","AvailabilityZone":"eu-west-1b"}"#.into(),
        ),
        _ => (404, String::new()),
    }
    });
    let sa = tempfile::tempdir().unwrap();
    let claims = br#"{"kubernetes.io":{"namespace":"shop","pod":{"name":"orders-api-75c8b7d7d6-pxk9m","uid":"pod-uid"},"serviceaccount":{"name":"orders","uid":"sa-uid"}}}"#;
    std::fs::write(
        sa.path().join("token"),
        format!("eyJhbGciOiJSUzI1NiJ9.{}.c2ln", b64url(claims)),
    )
    .unwrap();

    let moto = Moto::start();
    let up = Upstream::start();
    let ecs_uri = format!("{}/v4/abc/", ecs.url());
    let imds_url = imds.url();
    let port = up.addr.port().to_string();
    let proxy = Proxy::start(
        &[
            ("APP_NAME", ""),
            ("APP_PORT", &port),
            ("HEALTH_URLS", "/health"),
            ("HEALTH_INTERVAL", "1h"),
            ("LOG_GROUP_NAME", TRAFFIC),
            ("AWS_ENDPOINT_URL", &moto.url()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds_url),
            ("ECS_CONTAINER_METADATA_URI_V4", &ecs_uri),
            ("CWPROXY_SERVICEACCOUNT_DIR", sa.path().to_str().unwrap()),
            ("EKS_CLUSTER_NAME", "prod"),
            // Debug builds under parallel tests: give the fake endpoints more than 200 ms.
            ("METADATA_DETECT_TIMEOUT", "3s"),
        ],
        &[],
    );
    get(proxy.port, "/meta");
    let line = proxy.wait_traffic(1, LINES_WITHIN).remove(0);
    let expected_meta = concat!(
        r#""aws_meta":{"ec2":{"instance_id":"i-0abc","instance_type":"m7g.large","region":"eu-west-3","availability_zone":"eu-west-3a","image_id":"ami-1","account_id":"123456789012"},"#,
        r#""ecs":{"cluster":"shop","task_arn":"arn:aws:ecs:eu-west-1:1:task/t","task_family":"orders-task","task_revision":"7","launch_type":"FARGATE","availability_zone":"eu-west-1b","container_arn":"arn:aws:ecs:eu-west-1:1:container/c","container_name":"app"},"#,
        r#""eks":{"cluster_name":"prod","deployment_name":"orders-api","namespace":"shop","pod_name":"orders-api-75c8b7d7d6-pxk9m","pod_uid":"pod-uid","service_account":"orders","service_account_uid":"sa-uid"}}"#,
    );
    assert!(
        line.contains(expected_meta),
        "{line}\nstderr: {}",
        stderr(&proxy)
    );
    assert!(
        line.starts_with("{\"_q\":\"orders-api GET /meta 200 "),
        "{line}"
    );
    assert!(line.contains("\"app_name\":\"orders-api\""), "{line}");
    // IMDSv2: token first, then the document with the token.
    let reqs = imds.requests.lock().unwrap().clone();
    assert_eq!(reqs[0].0, "PUT", "{reqs:?}");
    assert!(reqs[0]
        .2
        .contains_key("x-aws-ec2-metadata-token-ttl-seconds"));

    // The region came from EC2 metadata; delivery uses it and the default log group.
    let deadline = Instant::now() + Duration::from_secs(5);
    let msg = "AWS region is not configured in the environment; using \"eu-west-3\" from runtime metadata";
    while !stderr(&proxy).contains(msg) {
        assert!(Instant::now() < deadline, "stderr: {}", stderr(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    let cw = client(&moto.url(), "eu-west-3");
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(20), |e| {
        !e.is_empty()
    }));
    assert_eq!(events.len(), 1, "stderr: {}", stderr(&proxy));
    assert!(
        events[0].stream.starts_with("orders-api-traffic-"),
        "{}",
        events[0].stream
    );
    assert_eq!(events[0].message, with_newline(&line));
}

#[test]
fn unanswered_metadata_endpoint_never_holds_up_serving() {
    // Accepts connections (kernel backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ecs_uri = format!("http://{}/v4/x", silent.local_addr().unwrap());
    let up = Upstream::start();
    let port = up.addr.port().to_string();
    let started = Instant::now();
    let proxy = Proxy::start(
        &[
            ("APP_NAME", ""),
            ("APP_PORT", &port),
            ("HEALTH_URLS", "/health"),
            ("HEALTH_INTERVAL", "1h"),
            ("ECS_CONTAINER_METADATA_URI_V4", &ecs_uri),
        ],
        &[],
    );
    get(proxy.port, "/quick");
    // Spawn, bind, the 200 ms metadata budget and one request: well under two seconds.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let line = proxy.wait_traffic(1, LINES_WITHIN).remove(0);
    assert!(!line.contains("aws_meta"), "{line}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stderr(&proxy).contains("failed to load ECS task metadata: timed out after 200ms") {
        assert!(Instant::now() < deadline, "stderr: {}", stderr(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(silent);
}

#[test]
fn invalid_log_group_name_turns_only_that_sink_off_with_a_clear_line() {
    let moto = Moto::start();
    let up = Upstream::start();
    let proxy = start(
        &up,
        &moto.url(),
        &[
            ("LOG_GROUP_NAME", "/app/log/orders api"),
            ("HEALTH_INTERVAL", "1s"),
        ],
    );
    get(proxy.port, "/served");
    proxy.wait_traffic(1, LINES_WITHIN);
    let line = "failed to initialize CloudWatch traffic sink: LOG_GROUP_NAME \"/app/log/orders api\" is not a valid CloudWatch log group name: ' ' is not allowed";
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stderr(&proxy).contains(line) {
        assert!(Instant::now() < deadline, "stderr: {}", stderr(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The health sink is unaffected.
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, HEALTH, Duration::from_secs(20), |e| {
        !e.is_empty()
    }));
    assert!(!events.is_empty(), "stderr: {}", stderr(&proxy));
}

/// cwproxy delivering to `endpoint` with no credentials but what `extra` provides: no keys in
/// the environment and no profile files unless `extra` names one (later entries win).
fn start_without_keys(up: &Upstream, endpoint: &str, extra: &[(&str, &str)]) -> Proxy {
    let port = up.addr.port().to_string();
    let mut env = vec![
        ("APP_PORT", port.as_str()),
        ("HEALTH_URLS", "/health"),
        ("HEALTH_INTERVAL", "1h"),
        ("LOG_GROUP_NAME", TRAFFIC),
        ("HEALTH_LOG_GROUP_NAME", HEALTH),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_CONFIG_FILE", "/nonexistent/cwproxy-test-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/cwproxy-test-credentials",
        ),
    ];
    env.extend_from_slice(extra);
    Proxy::start(&env, &[])
}

/// cwproxy with credentials from profile `profile` of a config file holding `config`.
fn start_with_profile(
    up: &Upstream,
    endpoint: &str,
    config: &str,
    profile: &str,
) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config");
    std::fs::write(&config_path, config).unwrap();
    let config_path = config_path.to_str().unwrap().to_owned();
    let proxy = start_without_keys(
        up,
        endpoint,
        &[("AWS_CONFIG_FILE", &config_path), ("AWS_PROFILE", profile)],
    );
    (proxy, dir)
}

#[test]
fn credential_process_profile_delivers_to_moto() {
    let moto = Moto::start();
    let up = Upstream::start();
    let config = "[profile proc]\n\
        credential_process = echo '{\"Version\":1,\"AccessKeyId\":\"testing\",\"SecretAccessKey\":\"testing\"}'\n";
    let (proxy, _dir) = start_with_profile(&up, &moto.url(), config, "proc");
    get_all(proxy.port, (0..3).map(|i| format!("/proc/{i}")).collect());
    proxy.wait_traffic(3, LINES_WITHIN);
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(20), |e| {
        e.len() >= 3
    }));
    assert_eq!(events.len(), 3, "stderr: {}", stderr(&proxy));
    assert!(
        !stderr(&proxy).contains("credentials"),
        "{}",
        stderr(&proxy)
    );
}

#[test]
fn broken_profile_is_one_permanent_error_and_nothing_queues() {
    let moto = Moto::start();
    let up = Upstream::start();
    // Role assumption from a source profile that does not exist: no retry can fix that.
    let config = "[profile broken]\n\
        role_arn = arn:aws:iam::123456789012:role/cwproxy\n\
        source_profile = nowhere\n";
    let (mut proxy, _dir) = start_with_profile(&up, &moto.url(), config, "broken");
    let line =
        "CloudWatch Logs disabled: AWS credentials cannot be loaded, and retrying will not fix it";
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stderr(&proxy).contains(line) {
        assert!(Instant::now() < deadline, "stderr: {}", stderr(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    get_all(
        proxy.port,
        (0..20).map(|i| format!("/broken/{i}")).collect(),
    );
    proxy.wait_traffic(20, LINES_WITHIN);
    std::thread::sleep(Duration::from_secs(1));
    proxy.signal(libc::SIGTERM);
    assert_eq!(proxy.wait_exit(Duration::from_secs(5)), Some(0));
    let err = stderr(&proxy);
    assert_eq!(
        err.lines().filter(|l| l.contains("credentials")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("source profile nowhere"),
        "names the cause: {err}"
    );
    assert!(!err.contains("retrying in the background"), "{err}");
    assert!(!err.contains("not delivered"), "nothing was queued: {err}");
    // Nothing reached CloudWatch: no group was even created.
    let cw = client(&moto.url(), "us-east-1");
    assert!(rt().block_on(read_group(&cw, TRAFFIC)).is_empty());
}

/// Starts cwproxy with `extra` as its only credentials source and checks 3 events reach moto.
fn delivers_with(moto: &Moto, extra: &[(&str, &str)]) {
    let up = Upstream::start();
    let proxy = start_without_keys(&up, &moto.url(), extra);
    get_all(proxy.port, (0..3).map(|i| format!("/chain/{i}")).collect());
    proxy.wait_traffic(3, LINES_WITHIN);
    let cw = client(&moto.url(), "us-east-1");
    let events = rt().block_on(wait_group(&cw, TRAFFIC, Duration::from_secs(20), |e| {
        e.len() >= 3
    }));
    assert_eq!(events.len(), 3, "stderr: {}", stderr(&proxy));
}

const CREDS_JSON: &str = r#"{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"testing","SecretAccessKey":"testing","Token":"testing","Expiration":"2099-01-01T00:00:00Z"}"#;

#[test]
fn ecs_container_credentials_deliver_to_moto() {
    let ecs = FakeHttp::start(|_, path, _| match path {
        "/creds" => (200, CREDS_JSON.into()),
        _ => (404, String::new()),
    });
    let moto = Moto::start();
    let uri = format!("{}/creds", ecs.url());
    delivers_with(
        &moto,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-secret"),
        ],
    );
    let asked = ecs.requests.lock().unwrap();
    let creds = asked.iter().find(|(_, p, _)| p == "/creds").unwrap();
    assert_eq!(creds.2["authorization"], "ecs-secret");
}

#[test]
fn ec2_instance_profile_credentials_deliver_to_moto() {
    let imds = FakeHttp::start(|method, path, _| match (method, path) {
        ("PUT", "/latest/api/token") => (200, "imds-token".into()),
        ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "app-role".into()),
        ("GET", "/latest/meta-data/iam/security-credentials/app-role") => (200, CREDS_JSON.into()),
        _ => (404, String::new()),
    });
    let moto = Moto::start();
    let endpoint = imds.url();
    delivers_with(
        &moto,
        &[
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint),
        ],
    );
    let asked = imds.requests.lock().unwrap();
    assert!(asked.iter().any(|(_, p, _)| p.ends_with("/app-role")));
}

#[test]
fn web_identity_credentials_for_eks_irsa_deliver_to_moto() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").unwrap();
    let token = token.to_str().unwrap().to_owned();
    delivers_with(
        &moto,
        &[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token),
            (
                "AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/cwproxy-irsa",
            ),
            ("AWS_ROLE_SESSION_NAME", "cwproxy-test"),
        ],
    );
}
