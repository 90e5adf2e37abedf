use super::*;

const MINIMAL: &str = include_str!("../../../../examples/proxygw/minimal.yaml");

fn load_err(text: &str) -> String {
    match load_str(text) {
        Ok(_) => panic!("config should fail:\n{text}"),
        Err(e) => e.0,
    }
}

/// Applies `from → to` to the minimal example and returns the load error.
fn mutated(from: &str, to: &str) -> String {
    assert!(MINIMAL.contains(from), "{from:?} not in the example");
    load_err(&MINIMAL.replacen(from, to, 1))
}

#[test]
fn seed_minimal_example_loads_unchanged() {
    let c = load_str(MINIMAL).unwrap();
    assert_eq!(c.version, "v1");
    assert_eq!(c.log.output, LogOutput::Stderr);
    assert_eq!(c.log.level, 0);
    assert_eq!(c.plugins["ctl"]["socket"], "/run/proxygw.sock");
    let t = &c.targets[0];
    assert_eq!(t.name, "backend");
    assert_eq!(t.kind.to_string(), "static:cmd");
    assert_eq!(t.idle_timeout, Duration::from_secs(300));
    assert_eq!(t.endpoints[0].address, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(t.endpoints[0].protocol, Protocol::Tcp);
    assert_eq!(
        t.options["command"],
        "python3 -m http.server 8080 --bind 127.0.0.1"
    );
    let f = &c.frontends[0];
    assert_eq!(f.listen, "0.0.0.0:8088".parse().unwrap());
    assert_eq!(f.flow_timeout, Duration::from_secs(60));
    assert_eq!(
        (f.target_name.as_str(), f.endpoint_name.as_str()),
        ("backend", "http")
    );
    assert!(!f.masquerade);
}

#[test]
fn top_level_messages_in_original_order() {
    assert_eq!(load_err(""), "version is required");
    assert_eq!(load_err("log: {output: stderr}"), "version is required");
    assert_eq!(
        mutated("version: v1", "version: v2"),
        "unsupported version \"v2\""
    );
    assert_eq!(
        mutated("version: v1", "version: 1"),
        "unsupported version \"1\""
    );
    assert_eq!(load_err("version: v1\n"), "log.output is required");
    assert_eq!(
        load_err("version: v1\nlog: {output: stderr}\n"),
        "plugins is required"
    );
    assert_eq!(
        load_err("version: v1\nlog: {output: stderr}\nplugins:\n"),
        "plugins is required"
    );
    assert_eq!(
        load_err("version: v1\nlog: {output: stderr}\nplugins: {}\n"),
        "targets is required"
    );
    assert_eq!(
        load_err("version: v1\nlog: {output: stderr}\nplugins: {}\ntargets: []\n"),
        "frontends is required"
    );
    load_str("version: v1\nlog: {output: stderr}\nplugins: {}\ntargets: []\nfrontends: []\n")
        .unwrap();
}

#[test]
fn target_messages() {
    assert_eq!(
        mutated(
            "  - name: backend\n    kind: static:cmd\n",
            "  - kind: static:cmd\n"
        ),
        "targets[0].name is required"
    );
    let dup = MINIMAL.replace(
        "frontends:",
        "  - name: backend\n    kind: static:none\n    idle_timeout: 1m\n    endpoints: [{name: a, protocol: tcp, address: 127.0.0.1:1}]\nfrontends:",
    );
    assert_eq!(load_err(&dup), "targets[1] redefines \"backend\"");
    assert_eq!(
        mutated("kind: static:cmd", "kind: \"\""),
        "targets[\"backend\"].kind.namespace is required"
    );
    assert_eq!(
        mutated("kind: static:cmd", "kind: static"),
        "targets[0].kind: invalid namespace reference: \"static\""
    );
    assert_eq!(
        mutated("kind: static:cmd", "kind: a:b:c"),
        "targets[0].kind: invalid namespace reference: \"a:b:c\""
    );
    assert_eq!(
        mutated("    kind: static:cmd\n", ""),
        "targets[\"backend\"].kind.namespace is required"
    );
    assert_eq!(
        mutated("idle_timeout: 5m", "idle_timeout: 0s"),
        "targets[\"backend\"].idle_timeout cannot be zero"
    );
    assert_eq!(
        mutated("    idle_timeout: 5m\n", ""),
        "targets[\"backend\"].idle_timeout cannot be zero"
    );
    assert_eq!(
        mutated("idle_timeout: 5m", "idle_timeout: 500ms"),
        "targets[\"backend\"].idle_timeout must be at least 1s, got \"500ms\""
    );
    assert_eq!(
        mutated("idle_timeout: 5m", "idle_timeout: 300"),
        "targets[0].idle_timeout: time: missing unit in duration \"300\""
    );
    assert_eq!(
        mutated("idle_timeout: 5m", "idle_timeout: -5m"),
        "targets[0].idle_timeout: invalid TTL \"-5m\""
    );
    assert_eq!(
        mutated("idle_timeout: 5m", "idle_timeout: 2000000h"),
        "targets[0].idle_timeout: invalid TTL \"2000000h\""
    );
    assert_eq!(
        mutated(
            "    endpoints:\n      - name: http\n        protocol: tcp\n        address: 127.0.0.1:8080\n",
            "    endpoints: []\n"
        ),
        "targets[\"backend\"].endpoints must contain at least one element"
    );
    assert_eq!(
        mutated(
            "      - name: http\n        protocol: tcp\n",
            "      - protocol: tcp\n"
        ),
        "targets[\"backend\"].endpoints[0].name is required"
    );
    assert_eq!(
        mutated(
            "        address: 127.0.0.1:8080\n",
            "        address: 127.0.0.1:8080\n      - name: http\n        protocol: tcp\n        address: 127.0.0.1:8081\n"
        ),
        "targets[\"backend\"].endpoints[1] redefines \"http\""
    );
    assert_eq!(
        mutated("        protocol: tcp\n", ""),
        "targets[\"backend\"].endpoints[0].protocol is invalid"
    );
    assert_eq!(
        mutated("        protocol: tcp\n", "        protocol: sctp\n"),
        "targets[0].endpoints[0].protocol: invalid Protocol \"sctp\""
    );
    assert_eq!(
        mutated("        address: 127.0.0.1:8080\n", ""),
        "targets[\"backend\"].endpoints[0].address is invalid"
    );
    assert_eq!(
        mutated(
            "address: 127.0.0.1:8080",
            "address: \"[fe80::1%eth0]:8080\""
        ),
        "targets[\"backend\"].endpoints[0].address cannot have a zone"
    );
    assert_eq!(
        mutated("address: 127.0.0.1:8080", "address: localhost:8080"),
        "targets[0].endpoints[0].address: ParseAddr(\"localhost\"): unable to parse IP"
    );
}

#[test]
fn frontend_messages() {
    assert_eq!(
        mutated(
            "  - name: public-http\n    kind: static:always\n",
            "  - kind: static:always\n"
        ),
        "frontends[0].name is required"
    );
    let dup = format!(
        "{MINIMAL}  - name: public-http\n    kind: static:always\n    protocol: tcp\n    listen: 0.0.0.0:9\n    flow_timeout: 1m\n    target: backend:http\n"
    );
    assert_eq!(load_err(&dup), "frontends[1] redefines \"public-http\"");
    assert_eq!(
        mutated("    kind: static:always\n", ""),
        "frontends[\"public-http\"].kind.namespace is required"
    );
    assert_eq!(
        mutated("    protocol: tcp\n    listen", "    listen"),
        "frontends[\"public-http\"].protocol is invalid"
    );
    assert_eq!(
        mutated("    listen: 0.0.0.0:8088\n", ""),
        "frontends[\"public-http\"].listen is invalid"
    );
    assert_eq!(
        mutated("listen: 0.0.0.0:8088", "listen: 0.0.0.0"),
        "frontends[0].listen: not an ip:port"
    );
    assert_eq!(
        mutated("flow_timeout: 1m", "flow_timeout: 0s"),
        "frontends[\"public-http\"].flow_timeout cannot be zero"
    );
    assert_eq!(
        mutated("    target: backend:http\n", ""),
        "frontends[\"public-http\"].endpoint.target_name is required"
    );
    assert_eq!(
        mutated("target: backend:http", "target: backend:ftp"),
        "frontends[\"public-http\"].target \"backend:ftp\" does not reference an existing endpoint"
    );
    assert_eq!(
        mutated("target: backend:http", "target: nope:http"),
        "frontends[\"public-http\"].target \"nope:http\" does not reference an existing endpoint"
    );
}

#[test]
fn unknown_keys_are_named() {
    assert_eq!(
        mutated("version: v1\n", "version: v1\nverison: v2\n"),
        "unknown key \"verison\" (expected one of: version, log, plugins, targets, frontends)"
    );
    let e = mutated("idle_timeout: 5m", "idle_timeout: 5m\n    idle_timout: 5m");
    assert!(
        e.starts_with("unknown key \"idle_timout\" in targets[0]"),
        "{e}"
    );
    let e = mutated(
        "        protocol: tcp\n",
        "        protocol: tcp\n        port: 1\n",
    );
    assert!(
        e.starts_with("unknown key \"port\" in targets[0].endpoints[0]"),
        "{e}"
    );
    let e = mutated("flow_timeout: 1m", "flow_timeout: 1m\n    lisen: x");
    assert!(
        e.starts_with("unknown key \"lisen\" in frontends[0]"),
        "{e}"
    );
    let e = mutated("  level: INFO", "  level: INFO\n  format: json");
    assert!(e.starts_with("unknown key \"format\" in log"), "{e}");
}

#[test]
fn schema_is_enforced_with_field_paths() {
    // The original's Validate has no opinion on these; the schema does.
    let e = mutated("  output: stderr", "  output: \"\"");
    assert_eq!(e, "log.output is required");
    let e = mutated("plugins:\n  ctl:", "plugins:\n  ctl: 5\n  x:");
    assert_eq!(e, "plugins.ctl: expected a mapping");
    let e = mutated("  - name: backend", "  - name: [backend]");
    assert_eq!(e, "targets[0].name: expected a scalar, found a list");
    let e = mutated("  level: INFO", "  level: LOUD");
    assert_eq!(e, "log.level: slog: level string \"LOUD\": unknown name");
    let e = mutated("    idle_timeout:", "    wake_rate: 5\n    idle_timeout:");
    assert!(e.starts_with("targets[0].wake_rate"), "{e}");
    for (rate, want) in [
        ("5/1m", "5 per 60s"),
        ("0/1m", "N must be a whole number ≥ 1"),
        ("1/500ms", "the window must be at least 1s"),
        ("x", "is not N/DURATION"),
    ] {
        match crate::config::WakeRate::parse(rate) {
            Ok(r) => assert_eq!(format!("{} per {:?}", r.starts, r.per), want),
            Err(e) => assert!(e.contains(want), "{rate}: {e}"),
        }
    }
    let e = mutated("  level: INFO", "  level: ERROR+2147483647");
    assert_eq!(
        e,
        "log.level: slog: level string \"ERROR+2147483647\": offset out of range"
    );
    let e = mutated(
        "    options:\n      command",
        "    options: 5\n    x_options:\n      command",
    );
    assert!(e.starts_with("unknown key \"x_options\""), "{e}");
    let e = mutated("plugins:\n", "plugins:\n  static: []\n");
    assert_eq!(e, "plugins.static: expected a mapping");
    // Scalars that pass the original's text decoding but break the schema are reported with their path.
    let e = mutated(
        "    protocol: tcp\n    listen",
        "    protocol: TCP\n    listen",
    );
    assert!(e.starts_with("frontends[0].protocol: "), "{e}");
    assert!(e.ends_with("(schema)"), "{e}");
    let e = mutated(
        "flow_timeout: 1m",
        "flow_timeout: 1m\n    masquerade: yes please",
    );
    assert!(
        e.starts_with("frontends[0].masquerade: expected true or false"),
        "{e}"
    );
}

#[test]
fn checks_the_original_lacked() {
    assert_eq!(
        mutated(
            "    protocol: tcp\n    listen",
            "    protocol: udp\n    listen"
        ),
        "frontends[\"public-http\"].protocol udp does not match endpoint backend:http protocol tcp"
    );
    assert_eq!(
        mutated("listen: 0.0.0.0:8088", "listen: \"[::]:8088\""),
        "frontends[\"public-http\"].listen [::]:8088 and endpoint backend:http address 127.0.0.1:8080 must both be IPv4 or both IPv6 (to serve both families, list an IPv4 and an IPv6 endpoint: target: [t:v4, t:v6])"
    );
    assert_eq!(
        mutated("address: 127.0.0.1:8080", "address: 0.0.0.0:8080"),
        "targets[\"backend\"].endpoints[0].address 0.0.0.0:8080 is unspecified; name the backend's IP"
    );
    assert_eq!(
        mutated("listen: 0.0.0.0:8088", "listen: 0.0.0.0:0"),
        "frontends[\"public-http\"].listen 0.0.0.0:0 has port 0"
    );
    let two = format!(
        "{MINIMAL}  - name: second\n    kind: static:always\n    protocol: tcp\n    listen: 10.0.0.1:8088\n    flow_timeout: 1m\n    target: backend:http\n"
    );
    assert_eq!(
        load_err(&two),
        "frontends[\"second\"].listen 10.0.0.1:8088 overlaps frontends[\"public-http\"].listen 0.0.0.0:8088"
    );
    // Two frontends may share one endpoint (the original forbade it).
    let shared = format!(
        "{MINIMAL}  - name: second\n    kind: static:always\n    protocol: tcp\n    listen: 0.0.0.0:8089\n    flow_timeout: 1m\n    target: backend:http\n"
    );
    assert_eq!(load_str(&shared).unwrap().frontends.len(), 2);
}

#[test]
fn pointer_paths() {
    assert_eq!(
        pointer_to_path("", "/targets/0/options/command"),
        "targets[0].options.command"
    );
    assert_eq!(
        pointer_to_path("plugins.ctl", "/codec"),
        "plugins.ctl.codec"
    );
    assert_eq!(pointer_to_path("", ""), "(document)");
}

#[test]
fn a_dual_home_frontend_names_one_endpoint_per_family_on_a_wildcard_ipv6_listen() {
    let with_v6 = MINIMAL.replace(
        "        address: 127.0.0.1:8080\n",
        "        address: 127.0.0.1:8080\n      - name: http6\n        protocol: tcp\n        address: \"[::1]:8080\"\n",
    );
    let dual = |listen: &str, target: &str| {
        with_v6
            .replacen("listen: 0.0.0.0:8088", &format!("listen: \"{listen}\""), 1)
            .replacen("target: backend:http", &format!("target: {target}"), 1)
    };
    let c = load_str(&dual("[::]:8088", "[backend:http, backend:http6]")).unwrap();
    let f = &c.frontends[0];
    assert_eq!(
        (f.endpoint_name.as_str(), f.dual_endpoint.as_deref()),
        ("http", Some("http6"))
    );
    // The single-endpoint form is unchanged.
    assert_eq!(load_str(&with_v6).unwrap().frontends[0].dual_endpoint, None);
    for (listen, target, want) in [
        (
            "0.0.0.0:8088",
            "[backend:http, backend:http6]",
            "frontends[\"public-http\"].listen 0.0.0.0:8088 must be [::]:PORT to serve IPv4 and IPv6 (target lists two endpoints)",
        ),
        (
            "[::]:8088",
            "[backend:http, backend:http]",
            "frontends[\"public-http\"].target endpoints backend:http (127.0.0.1:8080) and backend:http (127.0.0.1:8080) must be one IPv4 and one IPv6",
        ),
        (
            "[::]:8088",
            "[backend:http, backend:nope]",
            "frontends[\"public-http\"].target[1] backend:nope does not reference an existing endpoint",
        ),
        (
            "[::]:8088",
            "[backend:http, other:http6]",
            "frontends[0].target: both endpoints must belong to one target, found \"backend:http\" and \"other:http6\"",
        ),
        (
            "[::]:8088",
            "[backend:http]",
            "frontends[0].target: a list must name two endpoints of one target, one IPv4 and one IPv6 (found 1 items)",
        ),
    ] {
        assert_eq!(load_err(&dual(listen, target)), want, "{listen} {target}");
    }
    // Its socket takes the port in both families: an IPv4 frontend on it overlaps.
    let two = format!(
        "{}  - name: second\n    kind: static:always\n    protocol: tcp\n    listen: 10.0.0.1:8088\n    flow_timeout: 1m\n    target: backend:http\n",
        dual("[::]:8088", "[backend:http, backend:http6]")
    );
    assert_eq!(
        load_err(&two),
        "frontends[\"second\"].listen 10.0.0.1:8088 overlaps frontends[\"public-http\"].listen [::]:8088"
    );
}
