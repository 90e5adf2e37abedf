//! The shipped agent deployment for Kubernetes (`deploy/kubernetes/proxyview-agent.yaml`) sets only
//! variables proxyview reads (checked against `proxyview client --help`), runs the agent, and carries a
//! config the agent accepts (`proxyview client --check`, the same loader as at run time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn manifest() -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/kubernetes/proxyview-agent.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple(&text).unwrap()
}

fn proxyview(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_proxyview"))
        .args(args)
        .env_remove("LHUB_CONFIG_DIR")
        .output()
        .unwrap()
}

#[test]
fn the_kubernetes_agent_example_runs_the_agent_with_variables_it_reads_and_a_valid_config() {
    let docs = manifest();
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    assert_eq!(
        agent["image"].as_str().unwrap(),
        format!("waygate/proxyview:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        agent["args"],
        serde_json::json!(["client"]),
        "the image's default command is the server"
    );

    let help = String::from_utf8(proxyview(&["client", "--help"]).stdout).unwrap();
    let env: Vec<&Value> = agent["env"].as_array().expect("env").iter().collect();
    for e in &env {
        let name = e["name"].as_str().unwrap();
        assert!(
            help.contains(name),
            "{name} is set but `proxyview client --help` does not name it"
        );
    }

    // The config comes from the Secret mounted where LHUB_CONFIG_DIR points, under Proxyview's file name.
    let dir = env
        .iter()
        .find(|e| e["name"] == "LHUB_CONFIG_DIR")
        .and_then(|e| e["value"].as_str())
        .expect("LHUB_CONFIG_DIR");
    let mount = agent["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("a volume mounted at LHUB_CONFIG_DIR");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let secret_name = volume["secret"]["secretName"]
        .as_str()
        .expect("a Secret volume");
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret_name)
        .expect("the Secret the volume names");
    let config = secret["stringData"]["application.yaml"]
        .as_str()
        .expect("application.yaml");

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("application.yaml");
    std::fs::write(&path, config).unwrap();
    let out = proxyview(&["client", "--check", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "the example's agent config is rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
