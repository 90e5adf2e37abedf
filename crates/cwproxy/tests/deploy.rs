//! The shipped deployment files name only variables cwproxy reads, and wire ports consistently:
//! `deploy/kubernetes/cwproxy-sidecar.yaml` and `init/systemd/cwproxy.service`.
//!
//! "Reads" is checked against `cwproxy --help`, which lists every variable the binary reads: a manifest that
//! sets a misspelt or invented variable (silently ignored at run time) fails here, and so does a variable
//! the code reads but the help forgot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The words of `cwproxy --help` that look like environment variable names.
fn documented_vars() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_cwproxy"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "cwproxy --help failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.len() > 2 && w.contains('_'))
        .map(str::to_owned)
        .collect()
}

fn assert_all_documented(names: &[String], source: &str) {
    let documented = documented_vars();
    let unknown: Vec<_> = names.iter().filter(|n| !documented.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "{source} sets variables cwproxy does not read (not in `cwproxy --help`): {unknown:?}"
    );
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

fn container_port(container: &Value, name: Option<&str>) -> Vec<u64> {
    container["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .filter(|p| name.is_none_or(|n| p["name"] == n))
                .filter_map(|p| p["containerPort"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_kubernetes_sidecar_example_sets_only_variables_cwproxy_reads_and_wires_its_ports() {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&repo_file("deploy/kubernetes/cwproxy-sidecar.yaml")).unwrap();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let sidecar = containers
        .iter()
        .find(|c| {
            c["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("waygate/cwproxy:"))
        })
        .expect("a container running the waygate/cwproxy image");
    let image = sidecar["image"].as_str().unwrap();
    assert_eq!(
        image,
        format!("waygate/cwproxy:{}", env!("CARGO_PKG_VERSION")),
        "the example should name the image tag scripts/images builds"
    );

    let names: Vec<String> = sidecar["env"]
        .as_array()
        .expect("sidecar env")
        .iter()
        .map(|e| e["name"].as_str().expect("env name").to_owned())
        .collect();
    assert!(
        names.len() >= 5,
        "the example configures the sidecar: {names:?}"
    );
    assert_all_documented(&names, "deploy/kubernetes/cwproxy-sidecar.yaml");

    // The sidecar listens where its PROXY_PORT says and proxies to a port the app container opens.
    let proxy_port: u64 = env_value(sidecar, "PROXY_PORT").unwrap().parse().unwrap();
    assert_eq!(container_port(sidecar, None), vec![proxy_port]);
    let app_port: u64 = env_value(sidecar, "APP_PORT").unwrap().parse().unwrap();
    assert!(
        containers
            .iter()
            .filter(|c| !std::ptr::eq(*c, sidecar))
            .any(|c| container_port(c, None).contains(&app_port)),
        "APP_PORT {app_port} is not a port of the app container"
    );

    // The Service sends callers to the sidecar, not around it.
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Service");
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = &port["targetPort"];
        let resolved = match target.as_str() {
            Some(name) => container_port(sidecar, Some(name)),
            None => target.as_u64().into_iter().collect(),
        };
        assert_eq!(
            resolved,
            vec![proxy_port],
            "Service port {port} must target the sidecar"
        );
    }
}

#[test]
fn the_systemd_unit_sets_only_variables_cwproxy_reads() {
    let unit = repo_file("init/systemd/cwproxy.service");
    let names: Vec<String> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .map(|kv| kv.split_once('=').expect("NAME=value").0.to_owned())
        .collect();
    assert!(names.len() >= 5, "the unit configures cwproxy: {names:?}");
    assert_all_documented(&names, "init/systemd/cwproxy.service");
    assert!(
        unit.contains("ExecStart=/usr/local/bin/cwproxy\n"),
        "normal mode, no arguments"
    );
}
