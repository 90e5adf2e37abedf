//! Golden tests: every worked example of the cwproxy spec (§4–§6), byte for byte.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri};
use telemetry::emf::{self, Datum, MetricEventKind};
use telemetry::entry::{self, BodyPart, Category, Context, Entry, RequestPart, ResponsePart};
use telemetry::meta::{AwsMeta, Ec2Meta, EcsMeta, EksMeta};
use telemetry::multimap::Multimap;
use telemetry::{Capture, Exchange, HealthProbe};

const FULL_TRAFFIC_LINE: &str = r##"{"_q":"orders-api POST /api/foo 201 3.412ms","_t":"TRAFFIC","app_name":"orders-api","aws_meta":{"ecs":{"cluster":"demo-cluster"}},"global_hash":"fe0adb","delay":3.412,"request":{"time":1700000000000,"host":"example.com","port":80,"path":"/api/foo","method":"POST","url":"example.com:80/api/foo?key=value","queries":{"key":"value"},"queries_hash":"c36728","cookies":{"session":"abc"},"headers":{"Accept":"*/*","Content-Length":"17","Content-Type":"application/json","Cookie":"session=abc","User-Agent":"curl/8.5.0"},"body":{"field":"value"},"body_raw":"{\"field\":\"value\"}","body_hash":"20e4cb"},"response":{"time":1700000000003,"status":201,"headers":{"Content-Length":"15","Content-Type":"application/json","Date":"Tue, 14 Nov 2023 22:13:20 GMT"},"set_cookies":{"session":"xyz"},"body":{"result":"ok"},"body_raw":"{\"result\":\"ok\"}","body_hash":"c5b6ee"},"AppName":"orders-api","Endpoint":"/api/foo","Method":"POST","2XXStatusCode":1,"Latency":3.412345,"RequestBodySize":17,"RequestCount":1,"ResponseBodySize":15,"_aws":{"Timestamp":1700000000003,"CloudWatchMetrics":[{"Namespace":"app/traffic","Dimensions":[["AppName"]],"Metrics":[{"Name":"2XXStatusCode","Unit":"Count"},{"Name":"Latency","Unit":"Milliseconds"},{"Name":"RequestBodySize","Unit":"Bytes"},{"Name":"RequestCount","Unit":"Count"},{"Name":"ResponseBodySize","Unit":"Bytes"}]},{"Namespace":"app/traffic","Dimensions":[["AppName","Endpoint","Method"]],"Metrics":[{"Name":"2XXStatusCode","Unit":"Count"},{"Name":"Latency","Unit":"Milliseconds"},{"Name":"RequestBodySize","Unit":"Bytes"},{"Name":"RequestCount","Unit":"Count"},{"Name":"ResponseBodySize","Unit":"Bytes"}]}]}}"##;
const HEALTH_SUCCESS_LINE: &str = r##"{"_t":"HEALTH","aws_meta":{"ecs":{"cluster":"demo-cluster"}},"global_hash":"dd8174","delay":1.207,"request":{"time":1700000030000,"host":"127.0.0.1","port":8080,"path":"/health","method":"GET","url":"http://127.0.0.1:8080/health","queries":{},"cookies":{},"headers":{},"body":null},"response":{"time":1700000030001,"status":200,"headers":{"Content-Length":"15","Content-Type":"application/json","Date":"Tue, 14 Nov 2023 22:13:50 GMT"},"set_cookies":{},"body":{"status":"ok"},"body_hash":"fc3ecc"},"AppName":"orders-api","Endpoint":"http://127.0.0.1:8080/health","HealthLatency":1.207019,"HealthStatus":1,"_aws":{"Timestamp":1700000030001,"CloudWatchMetrics":[{"Namespace":"app/health","Dimensions":[["AppName","Endpoint"]],"Metrics":[{"Name":"HealthLatency","Unit":"Milliseconds"},{"Name":"HealthStatus","Unit":"Count"}]}]}}"##;

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

fn ecs_context(app: &str) -> Context {
    let meta = AwsMeta {
        ecs: Some(EcsMeta {
            cluster: "demo-cluster".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Context {
        app_name: app.into(),
        aws_meta: meta.to_json(),
    }
}

fn example_exchange() -> Exchange {
    Exchange {
        start: at_ms(1_700_000_000_000),
        end: at_ms(1_700_000_000_003),
        elapsed: Duration::from_nanos(3_412_345),
        method: Method::POST,
        uri: Uri::from_static("/api/foo?key=value"),
        tls: false,
        request_headers: headers(&[
            ("host", "example.com"),
            ("user-agent", "curl/8.5.0"),
            ("accept", "*/*"),
            ("cookie", "session=abc"),
            ("content-type", "application/json"),
            ("content-length", "17"),
        ]),
        request_body: Capture::from_bytes(65536, br#"{"field":"value"}"#),
        status: 201,
        response_headers: headers(&[
            ("content-type", "application/json"),
            ("set-cookie", "session=xyz"),
            ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
            ("content-length", "15"),
        ]),
        response_body: Some(Capture::from_bytes(65536, br#"{"result":"ok"}"#)),
        local_response_bytes: 0,
        endpoint: None,
        client_id: None,
    }
}

fn render_traffic(ctx: &Context, ex: &Exchange) -> String {
    let mut out = Vec::new();
    entry::render_traffic(ctx, ex, &mut out, &mut telemetry::hash::Scratch::new())
        .expect("renders");
    String::from_utf8(out).expect("utf8")
}

#[test]
fn full_traffic_line() {
    let line = render_traffic(&ecs_context("orders-api"), &example_exchange());
    assert_eq!(line, format!("{FULL_TRAFFIC_LINE}\n"));
}

#[test]
fn absolute_form_target_gives_same_host_and_url() {
    let mut ex = example_exchange();
    ex.uri = Uri::from_static("http://example.com/api/foo?key=value");
    let line = render_traffic(&ecs_context("orders-api"), &ex);
    assert!(line.contains(r#""host":"example.com","port":80,"path":"/api/foo","method":"POST","url":"example.com:80/api/foo?key=value""#), "{line}");
}

fn health_probe() -> HealthProbe {
    HealthProbe {
        url: "http://127.0.0.1:8080/health".into(),
        host: "127.0.0.1".into(),
        port: 8080,
        path: "/health".into(),
        raw_query: String::new(),
        start: at_ms(1_700_000_030_000),
        end: at_ms(1_700_000_030_001),
        latency: Duration::from_nanos(1_207_019),
        status: 200,
        headers: headers(&[
            ("content-type", "application/json"),
            ("date", "Tue, 14 Nov 2023 22:13:50 GMT"),
            ("content-length", "15"),
        ]),
        body: Capture::from_bytes(65536, br#"{"status":"ok"}"#),
        error: None,
    }
}

#[test]
fn health_success_line() {
    let mut out = Vec::new();
    entry::render_health(
        &ecs_context("orders-api"),
        &health_probe(),
        &mut out,
        &mut telemetry::hash::Scratch::new(),
    )
    .expect("renders");
    assert_eq!(
        String::from_utf8(out).expect("utf8"),
        format!("{HEALTH_SUCCESS_LINE}\n")
    );
}

#[test]
fn health_failure_line() {
    let mut probe = health_probe();
    probe.status = 0;
    probe.headers = HeaderMap::new();
    probe.body = Capture::new(65536);
    probe.latency = Duration::from_micros(350);
    probe.error = Some(r#"Get "http://127.0.0.1:8080/health": dial tcp 127.0.0.1:8080: connect: connection refused"#.into());
    let mut out = Vec::new();
    entry::render_health(
        &ecs_context("orders-api"),
        &probe,
        &mut out,
        &mut telemetry::hash::Scratch::new(),
    )
    .expect("renders");
    let line = String::from_utf8(out).expect("utf8");
    let expected_response = r##"{"time":...,"status":0,"headers":{},"set_cookies":{},"body":"Get \"http://127.0.0.1:8080/health\": dial tcp 127.0.0.1:8080: connect: connection refused","body_hash":"4c9448"}"##.replace("...", "1700000030001");
    assert!(
        line.contains(&format!(r#""response":{expected_response},"#)),
        "{line}"
    );
    assert!(line.contains(r#""global_hash":"05a213""#), "{line}");
    assert!(
        line.contains(r#""HealthLatency":0.35,"HealthStatus":0,"#),
        "{line}"
    );
    assert!(
        !line.contains("\"_q\"") && !line.contains("\"app_name\""),
        "{line}"
    );
}

fn minimal_entry<'a>(
    app: &'a str,
    method: &'a str,
    meta: Option<&'a [u8]>,
    delay: Duration,
) -> Entry<'a> {
    Entry {
        category: Category::Traffic,
        app_name: app,
        client_id: None,
        aws_meta: meta,
        delay,
        request: RequestPart {
            time_ms: 0,
            host: Cow::Borrowed(b""),
            port: 0,
            path: Cow::Borrowed(b"/health"),
            method,
            url: Cow::Borrowed(b""),
            queries: Multimap::default(),
            cookies: Multimap::default(),
            headers: Multimap::default(),
            body: BodyPart::null(),
        },
        response: ResponsePart {
            time_ms: 0,
            status: 200,
            headers: Multimap::default(),
            set_cookies: Multimap::default(),
            body: BodyPart::null(),
        },
    }
}

fn to_string(e: &Entry<'_>) -> String {
    let mut out = Vec::new();
    e.write_json(&mut out, &mut telemetry::hash::Scratch::new());
    String::from_utf8(out).expect("utf8")
}

#[test]
fn cloudwatch_form_inserts_newline_after_summary() {
    let e = minimal_entry("cwproxy", "GET", None, Duration::from_micros(1500));
    let line = to_string(&e);
    let cw = entry::cloudwatch_form(line.as_bytes());
    assert_eq!(std::str::from_utf8(&cw).expect("utf8"), "{\"_q\":\"cwproxy GET /health 200 1.500ms\",\n\"_t\":\"TRAFFIC\",\"app_name\":\"cwproxy\",\"global_hash\":\"185224\",\"delay\":1.500,\"request\":{\"time\":0,\"host\":\"\",\"port\":0,\"path\":\"/health\",\"method\":\"GET\",\"url\":\"\",\"queries\":{},\"cookies\":{},\"headers\":{},\"body\":null},\"response\":{\"time\":0,\"status\":200,\"headers\":{},\"set_cookies\":{},\"body\":null}}");
}

#[test]
fn cloudwatch_form_leaves_health_unchanged() {
    let mut e = minimal_entry("cwproxy", "GET", None, Duration::from_micros(1500));
    e.category = Category::Health;
    let line = to_string(&e);
    assert!(
        line.starts_with(r#"{"_t":"HEALTH","global_hash":"185224","delay":1.500,"#),
        "{line}"
    );
    assert_eq!(entry::cloudwatch_form(line.as_bytes()), line.as_bytes());
}

#[test]
fn includes_aws_metadata() {
    let meta = AwsMeta {
        ec2: Some(Ec2Meta {
            instance_id: "i-123".into(),
            region: "ap-northeast-2".into(),
            ..Default::default()
        }),
        eks: Some(EksMeta {
            cluster_name: "demo-eks".into(),
            pod_name: "cwproxy-123".into(),
            ..Default::default()
        }),
        ecs: None,
    };
    let meta = meta.to_json();
    let e = minimal_entry("cwproxy", "GET", meta.as_deref(), Duration::from_millis(1));
    let want = r#"{"_q":"cwproxy GET /health 200 1.000ms","_t":"TRAFFIC","app_name":"cwproxy","aws_meta":{"ec2":{"instance_id":"i-123","region":"ap-northeast-2"},"eks":{"cluster_name":"demo-eks","pod_name":"cwproxy-123"}},"global_hash":"185224","delay":1.000,"request":{"time":0,"host":"","port":0,"path":"/health","method":"GET","url":"","queries":{},"cookies":{},"headers":{},"body":null},"response":{"time":0,"status":200,"headers":{},"set_cookies":{},"body":null}}"#;
    assert_eq!(to_string(&e), want);
}

#[test]
fn unknown_method_fallback_and_three_decimals() {
    let e = minimal_entry("cwproxy", "", None, Duration::from_millis(1));
    assert!(
        to_string(&e).starts_with(r#"{"_q":"cwproxy UNKNOWN /health 200 1.000ms","_t":"TRAFFIC""#)
    );
    let e = minimal_entry("cwproxy", "GET", None, Duration::from_nanos(123_456_000));
    assert!(to_string(&e).contains(r#""delay":123.456,"#));
    let e = minimal_entry("", "GET", None, Duration::from_millis(2));
    let line = to_string(&e);
    assert!(
        line.starts_with(r#"{"_q":"GET /health 200 2.000ms","_t":"TRAFFIC","global_hash""#),
        "{line}"
    );
}

#[test]
fn stable_json_member_order_and_hashes() {
    let line = render_traffic(
        &Context {
            app_name: "cwproxy".into(),
            aws_meta: None,
        },
        &example_exchange(),
    );
    let members = [
        r#"{"_q":"#,
        r#","_t":"TRAFFIC","app_name":"cwproxy","global_hash":"fe0adb","delay":"#,
        r#","request":{"time":"#,
        r#","host":"#,
        r#","port":"#,
        r#","path":"#,
        r#","method":"#,
        r#","url":"#,
        r#","queries":"#,
        r#","queries_hash":"c36728","cookies":"#,
        r#","headers":"#,
        r#","body":"#,
        r#","body_raw":"#,
        r#","body_hash":"20e4cb"},"response":{"time":"#,
        r#","status":"#,
        r#","headers":"#,
        r#","set_cookies":"#,
        r#","body":"#,
        r#","body_raw":"#,
        r#","body_hash":"c5b6ee"},"AppName":"#,
    ];
    let mut at = 0;
    for m in members {
        let found = line[at..]
            .find(m)
            .unwrap_or_else(|| panic!("{m} not after offset {at} in {line}"));
        at += found + m.len();
    }
}

#[test]
fn escaping_edge_cases_in_a_line() {
    let mut ex = example_exchange();
    ex.uri = Uri::from_static("/a%3Cb%3E%26%E2%80%A8?q=%3Cx%3E&q=%ff");
    ex.request_headers.insert(
        "x-note",
        HeaderValue::from_bytes(b"tab\there \"quoted\" \\ \xe9").expect("valid"),
    );
    ex.request_body = Capture::from_bytes(65536, b"{\"k\":\"\\u0001\\u2028\xff\"}");
    ex.response_headers
        .insert("content-type", HeaderValue::from_static("text/plain"));
    ex.response_body = Some(Capture::from_bytes(65536, b"bin\x00\xff\xfe<&>"));
    let line = render_traffic(
        &Context {
            app_name: "a<b>&c".into(),
            aws_meta: None,
        },
        &ex,
    );
    assert!(
        line.starts_with(
            r#"{"_q":"a\u003cb\u003e\u0026c POST /a\u003cb\u003e\u0026\u2028 201 3.412ms","#
        ),
        "{line}"
    );
    assert!(
        line.contains(r#""path":"/a\u003cb\u003e\u0026\u2028","#),
        "{line}"
    );
    assert!(
        line.contains(r#""queries":{"q":["\u003cx\u003e","\ufffd"]},"#),
        "{line}"
    );
    assert!(
        line.contains("\"X-Note\":\"tab\\there \\\"quoted\\\" \\\\ \\ufffd\""),
        "{line}"
    );
    // Parsed JSON strings carry U+FFFD raw; raw text carries the \ufffd escape.
    assert!(line.contains("\"body\":{\"k\":\"\\u0001\\u2028\u{fffd}\"},\"body_raw\":\"{\\\"k\\\":\\\"\\\\u0001\\\\u2028\\ufffd\\\"}\""), "{line}");
    assert!(line.contains(r#""body":"bin\u0000\ufffd\ufffd\u003c\u0026\u003e","body_raw":"bin\u0000\ufffd\ufffd\u003c\u0026\u003e","#), "{line}");
    serde_json::from_str::<serde_json::Value>(line.trim_end()).expect("valid JSON");
}

#[test]
fn more_than_100_metrics_split_into_metric_only_events() {
    let names: Vec<String> = (0..105).map(|i| format!("M{i:03}")).collect();
    let dims: &[(&str, &[u8])] = &[("AppName", b"svc")];
    let data: Vec<Datum<'_>> = names
        .iter()
        .map(|n| Datum {
            name: n,
            unit: "Count",
            value: 1.0,
            dims,
        })
        .collect();
    let e = minimal_entry("svc", "GET", None, Duration::from_millis(1));
    let mut out = Vec::new();
    e.write_json(&mut out, &mut telemetry::hash::Scratch::new());
    emf::append_to_entry(
        &mut out,
        0,
        &data,
        "app/traffic",
        42,
        MetricEventKind::Traffic { app_name: "svc" },
        &mut emf::EmfScratch::default(),
    )
    .expect("ok");
    let text = String::from_utf8(out).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let first: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
    let metrics = first["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .expect("metrics");
    assert_eq!(metrics.len(), 100);
    assert_eq!(first["M099"], 1);
    assert!(first.get("M100").is_none());
    let extra = r#"{"_q":"svc METRIC M100,M101,M102,M103,M104","_t":"TRAFFIC","app_name":"svc","AppName":"svc","M100":1,"M101":1,"M102":1,"M103":1,"M104":1,"_aws":{"Timestamp":42,"CloudWatchMetrics":[{"Namespace":"app/traffic","Dimensions":[["AppName"]],"Metrics":[{"Name":"M100","Unit":"Count"},{"Name":"M101","Unit":"Count"},{"Name":"M102","Unit":"Count"},{"Name":"M103","Unit":"Count"},{"Name":"M104","Unit":"Count"}]}]}}"#;
    assert_eq!(lines[1], extra);
    // The CloudWatch form of the extra event also breaks after `_q`.
    assert!(entry::cloudwatch_form(lines[1].as_bytes())
        .starts_with(b"{\"_q\":\"svc METRIC M100,M101,M102,M103,M104\",\n\"_t\""));
}

#[test]
fn client_id_follows_app_name_only_when_set() {
    let mut ex = example_exchange();
    let plain = render_traffic(&ecs_context("orders-api"), &ex);
    assert!(!plain.contains("client_id"));
    ex.client_id = Some("agent-1".into());
    let line = render_traffic(&ecs_context("orders-api"), &ex);
    assert!(
        line.contains(r#""app_name":"orders-api","client_id":"agent-1","aws_meta":"#),
        "{line}"
    );
}

#[test]
fn bad_gateway_without_upstream_response() {
    let mut ex = example_exchange();
    ex.status = 502;
    ex.response_body = None;
    ex.local_response_bytes = 12;
    ex.response_headers = headers(&[
        ("content-type", "text/plain; charset=utf-8"),
        ("x-content-type-options", "nosniff"),
    ]);
    let line = render_traffic(
        &Context {
            app_name: "svc".into(),
            aws_meta: None,
        },
        &ex,
    );
    assert!(line.contains(r#""response":{"time":1700000000003,"status":502,"headers":{"Content-Type":"text/plain; charset=utf-8","X-Content-Type-Options":"nosniff"},"set_cookies":{},"body":null},"#), "{line}");
    assert!(
        line.contains(r#""5XXStatusCode":1,"#) && line.contains(r#""ResponseBodySize":12,"#),
        "{line}"
    );
    assert!(!line.contains("2XXStatusCode"));
}

/// `LOG_COMPAT=original` resolves to `OutputOptions::ORIGINAL` (cwproxy's `output` tests); through
/// the pipeline that cwproxy runs, those options give the spec's line byte for byte, and the
/// production options differ from it only where they must (here: the cookie values).
#[test]
fn full_traffic_line_through_the_pipeline_with_original_options() {
    use std::sync::{Arc, Mutex};
    use telemetry::output::OutputOptions;
    use telemetry::pipeline::{Pipeline, PipelineConfig, Record};

    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Out {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let run = |output: OutputOptions| {
        let out = Out::default();
        let p = Pipeline::start(
            PipelineConfig {
                output,
                ..PipelineConfig::default()
            },
            ecs_context("orders-api"),
            Box::new(out.clone()),
            vec![],
            telemetry::diag::Diag::new("test"),
        )
        .expect("start");
        p.emitter()
            .emit(Record::Traffic(Box::new(example_exchange())));
        assert!(p.shutdown(std::time::Duration::from_secs(5)));
        let bytes = out.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf8")
    };
    assert_eq!(
        run(OutputOptions::ORIGINAL),
        format!("{FULL_TRAFFIC_LINE}\n")
    );
    let production = run(OutputOptions::recommended());
    assert_ne!(production, format!("{FULL_TRAFFIC_LINE}\n"));
    let redacted = FULL_TRAFFIC_LINE
        .replace(
            r#""cookies":{"session":"abc"}"#,
            r#""cookies":{"session":"[REDACTED]"}"#,
        )
        .replace(r#""Cookie":"session=abc""#, r#""Cookie":"[REDACTED]""#)
        .replace(
            r#""set_cookies":{"session":"xyz"}"#,
            r#""set_cookies":{"session":"[REDACTED]"}"#,
        );
    assert_eq!(production, format!("{redacted}\n"));
}
