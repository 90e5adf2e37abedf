//! The model fed through the real telemetry renderer (`render_traffic_observed`), as the
//! telemetry worker feeds it.

use std::time::{Duration, UNIX_EPOCH};

use apimodel::{Model, Options};
use http::{HeaderMap, HeaderValue, Method, Uri};
use telemetry::entry::{render_traffic_observed, Context};
use telemetry::hash::Scratch;
use telemetry::output::OutputOptions;
use telemetry::{Capture, Exchange};

fn exchange(
    method: Method,
    uri: &str,
    body: Option<(&str, &str)>,
    status: u16,
    resp: Option<(&str, &str)>,
) -> Exchange {
    let mut rq = HeaderMap::new();
    rq.insert("host", HeaderValue::from_static("example.com"));
    let mut rs = HeaderMap::new();
    if let Some((ct, _)) = body {
        rq.insert(
            "content-type",
            HeaderValue::from_str(ct).expect("test content type"),
        );
    }
    if let Some((ct, _)) = resp {
        rs.insert(
            "content-type",
            HeaderValue::from_str(ct).expect("test content type"),
        );
    }
    Exchange {
        start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        end: UNIX_EPOCH + Duration::from_millis(1_700_000_000_003),
        elapsed: Duration::from_micros(1500),
        method,
        uri: uri.parse::<Uri>().expect("test uri"),
        tls: false,
        request_headers: rq,
        request_body: Capture::from_bytes(65536, body.map_or(&b""[..], |(_, b)| b.as_bytes())),
        status,
        response_headers: rs,
        response_body: Some(Capture::from_bytes(
            65536,
            resp.map_or(&b""[..], |(_, b)| b.as_bytes()),
        )),
        local_response_bytes: 0,
        endpoint: None,
        client_id: None,
    }
}

struct Feeder {
    model: Model,
    opts: OutputOptions,
    ctx: Context,
    scratch: Scratch,
}

impl Feeder {
    fn new(memory_limit: usize, drift_learn: Option<u64>) -> Self {
        Self {
            model: Model::new(Options {
                app_name: "shop".into(),
                memory_limit,
                drift_learn,
                examples: false,
            }),
            opts: OutputOptions::recommended(),
            ctx: Context {
                app_name: "shop".into(),
                aws_meta: None,
            },
            scratch: Scratch::new(),
        }
    }

    /// Renders one exchange into `out` (cleared first).
    fn feed_raw(&mut self, ex: &Exchange, out: &mut Vec<u8>) {
        out.clear();
        render_traffic_observed(
            &self.ctx,
            &self.opts,
            ex,
            out,
            &mut self.scratch,
            Some(&self.model),
        )
        .expect("render");
    }

    /// Renders one exchange; returns the DRIFT lines it produced.
    fn feed(&mut self, ex: &Exchange) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        render_traffic_observed(
            &self.ctx,
            &self.opts,
            ex,
            &mut out,
            &mut self.scratch,
            Some(&self.model),
        )
        .expect("render");
        String::from_utf8(out)
            .expect("utf8 lines")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
            .filter(|v| v["_t"] == "DRIFT")
            .collect()
    }
}

const JSON: &str = "application/json";

#[test]
fn each_drift_kind_is_reported_once_with_its_metric() {
    let mut f = Feeder::new(16 << 20, Some(3));
    for i in 0..3 {
        let uri = format!("/users/{}", 10 + i);
        let d = f.feed(&exchange(
            Method::GET,
            &uri,
            None,
            200,
            Some((JSON, r#"{"id":1,"name":"a"}"#)),
        ));
        assert!(d.is_empty(), "learning: {d:?}");
    }
    // Each kind twice: one line the first time, none the second.
    type Case<'a> = (u16, Option<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: [Case<'_>; 5] = [
        (
            200,
            Some((JSON, r#"{"id":1,"name":"a","email":"x@y.io"}"#)),
            "add",
            "/email",
        ),
        (
            200,
            Some((JSON, r#"{"id":"s","name":"a","email":"x@y.io"}"#)),
            "type",
            "/id",
        ),
        (
            200,
            Some((JSON, r#"{"id":2,"email":"x@y.io"}"#)),
            "remove",
            "/name",
        ),
        (404, Some((JSON, r#"{"error":"gone"}"#)), "status", "/404"),
        (
            200,
            Some(("application/xml", "<user><id>1</id></user>")),
            "content-type",
            "/application/xml",
        ),
    ];
    for (status, body, op, path) in cases {
        for round in 0..2 {
            let d = f.feed(&exchange(Method::GET, "/users/99", None, status, body));
            if round == 1 {
                assert!(d.is_empty(), "{op} reported twice: {d:?}");
                continue;
            }
            assert_eq!(d.len(), 1, "{op}: {d:?}");
            let line = &d[0];
            assert_eq!(line["template"], "/users/{userId}");
            assert_eq!(line["method"], "GET");
            assert_eq!(line["part"], "response");
            assert_eq!(line["changes"][0]["op"], op, "{line}");
            assert_eq!(line["changes"][0]["path"], path, "{line}");
            let dims: Vec<&serde_json::Value> = line["_aws"]["CloudWatchMetrics"]
                .as_array()
                .expect("EMF directives")
                .iter()
                .inspect(|d| assert_eq!(d["Namespace"], "app/traffic"))
                .map(|d| &d["Dimensions"])
                .collect();
            assert_eq!(
                dims,
                [
                    &serde_json::json!([["AppName"]]),
                    &serde_json::json!([["AppName", "Endpoint", "Method"]])
                ]
            );
            assert_eq!(line["SchemaDrift"], 1.0);
            assert_eq!(line["Endpoint"], "/users/{userId}");
        }
    }
    // A new route on an API whose routes are learned.
    let d = f.feed(&exchange(Method::DELETE, "/users/5", None, 204, None));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["changes"][0]["op"], "route");
    assert_eq!(d[0]["part"], "request");
}

#[test]
fn no_drift_lines_when_drift_is_off() {
    let mut f = Feeder::new(16 << 20, None);
    for i in 0..5 {
        let body = format!(r#"{{"k{i}":1}}"#);
        assert!(f
            .feed(&exchange(
                Method::GET,
                "/a",
                None,
                200 + i,
                Some((JSON, &body))
            ))
            .is_empty());
    }
}

/// A tiny deterministic generator, so the flood is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn word(&mut self) -> String {
        (0..1 + self.next() % 8)
            .map(|_| char::from(b'a' + (self.next() % 26) as u8))
            .collect()
    }
}

#[test]
fn memory_stays_under_the_limit_in_a_flood_of_random_paths_and_bodies() {
    let limit = 1 << 20;
    let mut f = Feeder::new(limit, Some(100));
    // The original line (no redaction, raw paths): the model's cost is what is measured here.
    f.opts = OutputOptions::ORIGINAL;
    let mut rng = Lcg(7);
    let mut out: Vec<u8> = Vec::new();
    for _ in 0..100_000 {
        let path = format!("/{}/{}", rng.word(), rng.word());
        let mut body = String::from("{");
        for i in 0..1 + rng.next() % 6 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                "\"{}\":{{\"{}\":[{}]}}",
                rng.word(),
                rng.word(),
                rng.next()
            ));
        }
        body.push('}');
        f.feed_raw(
            &exchange(Method::POST, &path, Some((JSON, &body)), 200, None),
            &mut out,
        );
        assert!(
            f.model.bytes() <= limit,
            "model at {} bytes",
            f.model.bytes()
        );
    }
    assert!(f.model.evicted() > 0);
    let routes = f.model.routes();
    assert_eq!(routes["evicted"], f.model.evicted());
    assert!(f.model.len() > 100, "kept {} routes", f.model.len());
}

#[test]
fn state_round_trip_keeps_learning_and_rejects_foreign_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Feeder::new(16 << 20, Some(2));
    for _ in 0..2 {
        f.feed(&exchange(
            Method::GET,
            "/items/1",
            None,
            200,
            Some((JSON, r#"{"a":1}"#)),
        ));
    }
    f.model.save(dir.path()).expect("save");
    let doc = f.model.openapi();

    let mut g = Feeder::new(16 << 20, Some(2));
    assert_eq!(g.model.load(dir.path()).expect("load"), Some(1));
    assert_eq!(g.model.openapi(), doc);
    // Learned from the state: a new property is drift at once.
    let d = g.feed(&exchange(
        Method::GET,
        "/items/2",
        None,
        200,
        Some((JSON, r#"{"a":1,"b":2}"#)),
    ));
    assert_eq!(d.len(), 1, "{d:?}");

    std::fs::write(apimodel::state::path(dir.path()), b"{not json").expect("write");
    let err = g.model.load(dir.path()).expect_err("corrupt file");
    assert!(err.to_string().contains("apimodel.json"), "{err}");
    let other = Model::new(Options {
        app_name: "other".into(),
        memory_limit: 1 << 20,
        drift_learn: Some(2),
        examples: false,
    });
    f.model.save(dir.path()).expect("save");
    let err = other.load(dir.path()).expect_err("foreign app");
    assert!(err.to_string().contains("APP_NAME"), "{err}");
    assert!(other.is_empty());
}

#[test]
fn examples_are_off_by_default_and_redacted_when_on() {
    let login = || {
        exchange(
            Method::POST,
            "/login",
            Some((JSON, r#"{"user":"ann","password":"hunter2"}"#)),
            200,
            Some((JSON, r#"{"token":"abc123","id":1}"#)),
        )
    };
    let mut off = Feeder::new(16 << 20, None);
    off.feed(&login());
    let text = off.model.openapi().to_string();
    assert!(!text.contains("example") && !text.contains("ann"), "{text}");

    let mut on = Feeder::new(16 << 20, None);
    on.model = Model::new(Options {
        app_name: "shop".into(),
        memory_limit: 16 << 20,
        drift_learn: None,
        examples: true,
    });
    // LOG_REDACT=off: examples still use the default lists.
    on.opts.redaction = None;
    on.feed(&login());
    let doc = on.model.openapi();
    let op = &doc["paths"]["/login"]["post"];
    assert_eq!(
        op["requestBody"]["content"][JSON]["example"],
        serde_json::json!({"user": "ann", "password": "[REDACTED]"})
    );
    assert_eq!(
        op["responses"]["200"]["content"][JSON]["example"],
        serde_json::json!({"token": "[REDACTED]", "id": 1})
    );
    assert!(!doc.to_string().contains("hunter2"));
}
