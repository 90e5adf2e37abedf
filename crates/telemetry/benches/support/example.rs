//! The spec's full example exchange (a POST with a small JSON body and a 201 JSON response),
//! shared by the benches that price one traffic line: `telemetry`'s `encode` and `apimodel`'s
//! `update` (which varies the path and bodies).

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri};
use telemetry::{Capture, Exchange};

/// The example with its own path and bodies.
pub fn example_with(path: &str, body: &str, response: &str) -> Exchange {
    let mut rq = HeaderMap::new();
    for (k, v) in [
        ("host", "example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
        ("cookie", "session=abc"),
        ("content-type", "application/json"),
        ("content-length", "17"),
    ] {
        rq.append(k, HeaderValue::from_static(v));
    }
    let mut rs = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("set-cookie", "session=xyz"),
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("content-length", "15"),
    ] {
        rs.append(k, HeaderValue::from_static(v));
    }
    Exchange {
        start: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000),
        end: UNIX_EPOCH + Duration::from_millis(1_700_000_000_003),
        elapsed: Duration::from_nanos(3_412_345),
        method: Method::POST,
        uri: path.parse::<Uri>().expect("bench uri"),
        tls: false,
        request_headers: rq,
        request_body: Capture::from_bytes(65536, body.as_bytes()),
        status: 201,
        response_headers: rs,
        response_body: Some(Capture::from_bytes(65536, response.as_bytes())),
        local_response_bytes: 0,
        endpoint: None,
        client_id: None,
    }
}

/// The example as the spec gives it.
#[allow(dead_code)] // not every bench that includes this file uses it
pub fn example() -> Exchange {
    example_with(
        "/api/foo?key=value",
        r#"{"field":"value"}"#,
        r#"{"result":"ok"}"#,
    )
}
