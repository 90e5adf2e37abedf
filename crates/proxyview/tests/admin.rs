//! The operator page on the internal port: `/api/status` behind the admin token, and `/` in a
//! real headless Chromium (Debian's `chromium`, installed by `scripts/test`), whose DOM after
//! its scripts ran must show the connected agent, its route and the request counts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use proxyview::http_util::full;

async fn status(server: &Server, auth: Option<&str>) -> (StatusCode, String, Option<String>) {
    let mut r = http::Request::builder()
        .uri("/api/status")
        .header("host", "admin");
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = send(server.internal, r.body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    let st = resp.status();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (
        st,
        String::from_utf8_lossy(&body_bytes(resp).await).into_owned(),
        www,
    )
}

fn requests_of(json: &str, route: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .unwrap()["lastMinute"]["requests"]
        .as_u64()
        .unwrap()
}

/// The page's DOM after Chromium ran its scripts for a few seconds of virtual time.
fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium runs (scripts/test installs Debian's chromium)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_and_page_show_agents_routes_and_requests() {
    let (server, _agent, _) = setup("", "admin:\n  token: \"ops-secret\"\n").await;
    for _ in 0..3 {
        assert_eq!(
            get_text(server.external, "route1", "/name").await,
            (StatusCode::OK, "b1".into())
        );
    }
    assert_eq!(
        get_text(server.external, "route1", "/no-such-path").await.0,
        StatusCode::NOT_FOUND
    );
    // No token, the agents' token, a wrong one: 401 with a Basic challenge (a browser prompts).
    for auth in [
        None,
        Some(format!("Bearer {TOKEN_IN}")),
        Some("Bearer nope".into()),
    ] {
        let (st, _, www) = status(&server, auth.as_deref()).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(www.unwrap().starts_with("Basic "));
    }
    let (st, json, _) = status(&server, Some("Bearer ops-secret")).await;
    assert_eq!(st, StatusCode::OK, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let agent = &v["agents"][0];
    assert_eq!(agent["clientId"], "agent-1", "{json}");
    assert_eq!(agent["routes"][0], "route1", "{json}");
    assert!(agent["remoteAddr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(agent["bytesToAgent"].as_u64().unwrap() > 0, "{json}");
    assert!(agent["bytesFromAgent"].as_u64().unwrap() > 0, "{json}");
    let route = &v["routes"][0];
    assert_eq!(route["agents"][0], "agent-1");
    let n = requests_of(&json, "route1");
    assert!(n >= 4, "{json}");
    assert_eq!(route["lastMinute"]["clientErrors"], 1, "{json}");
    assert!(
        route["lastMinute"]["p99Ms"].as_f64().unwrap() > 0.0,
        "{json}"
    );

    // The page, in Chromium, with the token as the Basic password.
    let url = format!("http://ops:ops-secret@{}/", server.internal);
    let dom = chromium_dom(&url);
    assert!(dom.contains("<td>agent-1</td>"), "{dom}");
    let row = format!("<td>route1</td><td>agent-1</td><td class=\"n\">{n}</td>");
    assert!(dom.contains(&row), "want {row} in {dom}");
    // A request made now shows in the next rendering.
    get_text(server.external, "route1", "/name").await;
    let row = format!(
        "<td>route1</td><td>agent-1</td><td class=\"n\">{}</td>",
        n + 1
    );
    let dom = chromium_dom(&url);
    assert!(dom.contains(&row), "want {row} in {dom}");
    // Without credentials the page is not served.
    let dom = chromium_dom(&format!("http://{}/", server.internal));
    assert!(!dom.contains("agent-1"), "{dom}");
}
