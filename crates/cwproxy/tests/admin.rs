//! The API model on the real binary: a test app with known routes behind cwproxy, the admin
//! listener's OpenAPI document, drift lines, state across a restart, and the listener's guards.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::{cwproxy_cmd, free_port, http, Proxy};

/// The app: users with path ids and query params, nested JSON with optional fields, several
/// statuses, a form login and an XML order update.
async fn shop(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let _ = req.into_body().collect().await;
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (status, ct, body) = match (method.as_str(), segs.as_slice()) {
        ("GET", ["users", "999"]) => (
            404,
            "application/json",
            r#"{"error":"not found"}"#.to_owned(),
        ),
        ("GET", ["users", id]) => {
            let nickname = if id.len() % 2 == 0 {
                r#","nickname":"n""#
            } else {
                ""
            };
            (
                200,
                "application/json",
                format!(
                    r#"{{"id":{id},"name":"Ann","email":"ann@example.com","profile":{{"created":"2026-12-06T10:00:00Z","tags":["a","b"]}}{nickname}}}"#
                ),
            )
        }
        ("POST", ["users"]) => (
            201,
            "application/json; charset=utf-8",
            r#"{"id":7}"#.to_owned(),
        ),
        ("POST", ["login"]) => (200, "application/json", r#"{"token":"t"}"#.to_owned()),
        ("PUT", ["orders", _]) => (
            200,
            "application/xml",
            "<order><status>ok</status></order>".to_owned(),
        ),
        ("GET", ["search"]) => (
            200,
            "application/json",
            r#"[{"id":1,"score":0.5}]"#.to_owned(),
        ),
        _ => (500, "text/plain", "unexpected".to_owned()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}

struct App {
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn start_app() -> App {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(shop))
                    .await;
            });
        }
    });
    App {
        addr,
        _runtime: runtime,
    }
}

fn request(port: u16, method: &str, target: &str, body: Option<(&str, &str)>) -> String {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n");
    if let Some((ct, b)) = body {
        req.push_str(&format!(
            "Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    http(port, &req)
}

/// The JSON body of a GET on the admin listener.
fn admin_get(port: u16, path: &str) -> (u16, Value) {
    let raw = request(port, "GET", path, None);
    let status: u16 = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Waits until the model has seen `n` exchanges.
fn wait_requests(admin: u16, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, routes) = admin_get(admin, "/routes");
        let seen: u64 = routes["routes"].as_array().map_or(0, |r| {
            r.iter().map(|r| r["requests"].as_u64().unwrap_or(0)).sum()
        });
        if seen >= n {
            return routes;
        }
        assert!(
            Instant::now() < deadline,
            "model saw {seen} of {n}: {routes}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends the app's known traffic; returns how many exchanges.
fn traffic(port: u16) -> u64 {
    let mut n = 0;
    for id in ["1", "22", "333", "4444"] {
        request(
            port,
            "GET",
            &format!("/users/{id}?fields=name&verbose={}", id.len() % 2),
            None,
        );
        n += 1;
    }
    request(port, "GET", "/users/999?fields=name", None);
    for (i, body) in [
        r#"{"name":"Ann","email":"ann@example.com","address":{"city":"Oslo","zip":"0150"},"age":30}"#,
        r#"{"name":"Bob","email":"bob@example.com","address":{"city":"Rome"}}"#,
    ]
    .iter()
    .enumerate()
    {
        let _ = i;
        request(port, "POST", "/users", Some(("application/json", body)));
    }
    request(
        port,
        "POST",
        "/login",
        Some((
            "application/x-www-form-urlencoded",
            "user=ann&password=secret",
        )),
    );
    request(
        port,
        "PUT",
        "/orders/8c2b6f9e-3f4a-4b8a-9a65-1f2e3d4c5b6a",
        Some(("application/xml", "<order><item sku=\"a\">2</item></order>")),
    );
    request(port, "GET", "/search?q=shoes&page=2", None);
    request(port, "GET", "/search?q=hats", None);
    n + 7
}

fn names(params: &Value, place: &str) -> BTreeSet<(String, bool)> {
    params
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == place)
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["required"] == true,
            )
        })
        .collect()
}

fn set(items: &[(&str, bool)]) -> BTreeSet<(String, bool)> {
    items.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect()
}

fn validate(doc: &Value) {
    let validator = match std::env::var("WAYGATE_OPENAPI_VALIDATOR") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "WAYGATE_OPENAPI_VALIDATOR is not set: this test validates the document with the real \
             validator. Run scripts/test, or: target/test-venv/bin/pip install openapi-spec-validator \
             && export WAYGATE_OPENAPI_VALIDATOR=$PWD/target/test-venv/bin/openapi-spec-validator"
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new(validator)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the document: {}{}\n{doc:#}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn openapi_document_has_exactly_the_apps_routes_and_validates() {
    let app = start_app();
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let app_port = app.addr.port().to_string();
    let proxy = Proxy::start(
        &[
            ("APP_PORT", &app_port),
            ("ADMIN_ADDR", &admin_addr),
            ("APP_NAME", "shop"),
        ],
        &[],
    );
    let n = traffic(proxy.port);
    wait_requests(admin, n);
    let (status, doc) = admin_get(admin, "/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "shop");
    let paths = doc["paths"].as_object().unwrap();
    let templates: Vec<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(
        templates,
        [
            "/login",
            "/orders/{orderId}",
            "/search",
            "/users",
            "/users/{userId}"
        ]
    );
    let methods = |p: &str| -> Vec<&str> {
        paths[p]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect()
    };
    assert_eq!(methods("/users/{userId}"), ["get"]);
    assert_eq!(methods("/users"), ["post"]);
    assert_eq!(methods("/login"), ["post"]);
    assert_eq!(methods("/orders/{orderId}"), ["put"]);
    assert_eq!(methods("/search"), ["get"]);

    let get_user = &paths["/users/{userId}"]["get"];
    let params = &get_user["parameters"];
    assert_eq!(names(params, "path"), set(&[("userId", true)]));
    assert_eq!(
        names(params, "query"),
        set(&[("fields", true), ("verbose", false)])
    );
    assert_eq!(params[0]["schema"]["type"], "integer");
    let ok = &get_user["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(ok["required"], json!(["email", "id", "name", "profile"]));
    assert_eq!(ok["properties"]["nickname"]["type"], "string");
    assert_eq!(ok["properties"]["email"]["format"], "email");
    assert_eq!(
        ok["properties"]["profile"]["properties"]["created"]["format"],
        "date-time"
    );
    assert_eq!(
        ok["properties"]["profile"]["properties"]["tags"]["items"]["type"],
        "string"
    );
    assert_eq!(
        get_user["responses"]["404"]["content"]["application/json"]["schema"]["required"],
        json!(["error"])
    );

    let post_user = &paths["/users"]["post"];
    let body = &post_user["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["required"], json!(["address", "email", "name"]));
    assert_eq!(body["properties"]["age"]["type"], "integer");
    assert_eq!(body["properties"]["address"]["required"], json!(["city"]));
    assert!(post_user["responses"]["201"]["content"]["application/json"].is_object());

    let login = &paths["/login"]["post"]["requestBody"]["content"]
        ["application/x-www-form-urlencoded"]["schema"];
    assert_eq!(login["required"], json!(["password", "user"]));
    let order = &paths["/orders/{orderId}"]["put"];
    assert_eq!(
        order["parameters"][0]["schema"],
        json!({"type": "string", "format": "uuid"})
    );
    assert!(order["requestBody"]["content"]["application/xml"]["schema"]["properties"].is_object());
    assert!(order["responses"]["200"]["content"]["application/xml"].is_object());
    assert_eq!(
        names(&paths["/search"]["get"]["parameters"], "query"),
        set(&[("page", false), ("q", true)])
    );
    // Types and names only: no observed value is in the document.
    let text = doc.to_string();
    for value in [
        "Ann",
        "ann@example.com",
        "Oslo",
        "secret",
        "shoes",
        "2026-12-06",
    ] {
        assert!(!text.contains(value), "{value} leaked into {text}");
    }
    validate(&doc);

    let (status, routes) = admin_get(admin, "/routes");
    assert_eq!(status, 200);
    let user = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["template"] == "/users/{userId}")
        .unwrap();
    assert_eq!(user["requests"], 5);
    assert_eq!(user["statuses"], json!({"200": 4, "404": 1}));
    assert!(user["p50_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(routes["evicted"], 0);

    let (status, health) = admin_get(admin, "/healthz");
    assert_eq!((status, &health["upstream"]), (200, &json!("reachable")));
    // Admin requests are neither proxied nor logged.
    std::thread::sleep(Duration::from_millis(100));
    let traffic_lines = proxy.traffic_lines();
    assert_eq!(traffic_lines.len() as u64, n);
    assert!(traffic_lines.iter().all(|l| !l["request"]["path"]
        .as_str()
        .unwrap()
        .starts_with("/openapi")));
}

#[test]
fn drift_is_one_line_per_change_on_the_binary() {
    let app = start_app();
    let app_port = app.addr.port().to_string();
    let proxy = Proxy::start(&[("APP_PORT", &app_port), ("DRIFT_LEARN", "2")], &[]);
    for _ in 0..2 {
        request(proxy.port, "GET", "/users/1", None);
    }
    // A new status twice, then an added property twice.
    for id in ["999", "999", "22", "44"] {
        request(proxy.port, "GET", &format!("/users/{id}"), None);
    }
    proxy.wait_line(|v| v["_t"] == "TRAFFIC" && v["request"]["path"] == "/users/44");
    let drift: Vec<Value> = proxy
        .raw_lines()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["_t"] == "DRIFT")
        .collect();
    assert_eq!(drift.len(), 2, "{drift:?}");
    assert_eq!(
        drift[0]["changes"][0],
        json!({"op": "status", "path": "/404"})
    );
    assert_eq!(
        drift[1]["changes"][0],
        json!({"op": "add", "path": "/nickname"})
    );
    assert_eq!(drift[1]["template"], "/users/{userId}");
    assert_eq!(drift[1]["SchemaDrift"], 1.0);
    assert_eq!(drift[1]["Endpoint"], "/users/{userId}");
}

#[test]
fn state_survives_a_restart_and_a_corrupt_file_is_reported() {
    let app = start_app();
    let app_port = app.addr.port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap().to_owned();
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let env = [
        ("APP_PORT", app_port.as_str()),
        ("ADMIN_ADDR", admin_addr.as_str()),
        ("STATE_DIR", state.as_str()),
    ];
    let mut first = Proxy::start(&env, &[]);
    request(first.port, "GET", "/users/1?fields=a", None);
    wait_requests(admin, 1);
    let (_, before) = admin_get(admin, "/openapi.json");
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(dir.path().join("apimodel.json").is_file());

    let second = Proxy::start(&env, &[]);
    let (_, after) = admin_get(admin, "/openapi.json");
    assert_eq!(after, before);
    drop(second);

    std::fs::write(dir.path().join("apimodel.json"), "{broken").unwrap();
    let third = Proxy::start(&env, &[]);
    let (_, empty) = admin_get(admin, "/openapi.json");
    assert_eq!(empty["paths"], json!({}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !third.stderr.lock().unwrap().contains("apimodel.json") {
        assert!(Instant::now() < deadline, "corrupt state file not reported");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn admin_listener_refuses_proxy_port_and_is_absent_when_unset() {
    let port = free_port();
    let out = cwproxy_cmd(
        &[
            ("PROXY_PORT", &port.to_string()),
            ("ADMIN_ADDR", &format!("127.0.0.1:{port}")),
        ],
        &[],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ADMIN_ADDR") && stderr.contains("PROXY_PORT"),
        "{stderr}"
    );

    let app = start_app();
    let app_port = app.addr.port().to_string();
    let proxy = Proxy::start(&[("APP_PORT", &app_port)], &[]);
    request(proxy.port, "GET", "/openapi.json", None);
    let line = proxy.wait_line(|v| v["_t"] == "TRAFFIC");
    // Without ADMIN_ADDR the path is the app's like any other: proxied and logged.
    assert_eq!(line["request"]["path"], "/openapi.json");
    assert_eq!(line["response"]["status"], 500);
}
