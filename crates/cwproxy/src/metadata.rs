//! Runtime metadata (spec §9): ECS task metadata v4/v3, Kubernetes/EKS environment and
//! service-account token, EC2 instance identity via IMDSv2 — detected concurrently within one
//! shared budget — plus the values derived from it (default app name, region).

use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use telemetry::meta::{AwsMeta, Ec2Meta, EcsMeta, EksMeta};

use crate::config::Env;

/// Total time metadata detection may take (all sources run concurrently within it).
pub const DETECT_BUDGET: Duration = Duration::from_millis(200);
/// Overrides [`DETECT_BUDGET`] (a Go duration, e.g. `500ms`), for slow metadata endpoints.
pub const DETECT_TIMEOUT_ENV: &str = "METADATA_DETECT_TIMEOUT";
/// Largest ECS metadata body read.
const MAX_ECS_BODY: usize = 64 << 10;
/// Where Kubernetes mounts the service-account files.
pub const DEFAULT_SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Overrides [`DEFAULT_SERVICEACCOUNT_DIR`] (projected tokens mounted elsewhere; tests).
pub const SERVICEACCOUNT_DIR_ENV: &str = "CWPROXY_SERVICEACCOUNT_DIR";
/// IMDS path of the instance identity document.
const IDENTITY_DOCUMENT: &str = "/latest/dynamic/instance-identity/document";

/// What one detection run found, plus the messages it wants printed.
#[derive(Debug, Clone, Default)]
pub struct Detected {
    /// The `aws_meta` parts.
    pub meta: AwsMeta,
    /// Failures worth a stderr line (ECS endpoint errors).
    pub warnings: Vec<String>,
}

impl Detected {
    /// EKS `deployment_name`, else ECS `task_family` (the metadata part of the APP_NAME chain).
    pub fn default_app_name(&self) -> Option<String> {
        let eks = self
            .meta
            .eks
            .as_ref()
            .map(|e| e.deployment_name.clone())
            .filter(|s| !s.is_empty());
        eks.or_else(|| {
            self.meta
                .ecs
                .as_ref()
                .map(|e| e.task_family.clone())
                .filter(|s| !s.is_empty())
        })
    }

    /// `InferAWSRegion`: EC2 region → region of the ECS task ARN → of the container ARN → ECS
    /// availability zone minus its final letter.
    pub fn region(&self) -> Option<String> {
        if let Some(r) = self
            .meta
            .ec2
            .as_ref()
            .map(|e| e.region.clone())
            .filter(|r| !r.is_empty())
        {
            return Some(r);
        }
        let ecs = self.meta.ecs.as_ref()?;
        arn_region(&ecs.task_arn)
            .or_else(|| arn_region(&ecs.container_arn))
            .or_else(|| {
                let az = ecs.availability_zone.trim();
                let last = az.chars().last()?;
                last.is_ascii_lowercase()
                    .then(|| az[..az.len() - 1].to_owned())
                    .filter(|r| !r.is_empty())
            })
    }
}

fn arn_region(arn: &str) -> Option<String> {
    arn.split(':')
        .nth(3)
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// Where a region came from, for the stderr line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSource {
    /// `AWS_REGION`.
    AwsRegion,
    /// `AWS_DEFAULT_REGION`.
    AwsDefaultRegion,
    /// Runtime metadata.
    Metadata,
}

impl RegionSource {
    /// The label used in messages.
    pub fn label(self) -> &'static str {
        match self {
            RegionSource::AwsRegion => "AWS_REGION",
            RegionSource::AwsDefaultRegion => "AWS_DEFAULT_REGION",
            RegionSource::Metadata => "runtime metadata",
        }
    }
}

/// The region from the environment only, without waiting for metadata.
pub fn env_region(env: &dyn Env) -> Option<(String, RegionSource)> {
    for (key, source) in [
        ("AWS_REGION", RegionSource::AwsRegion),
        ("AWS_DEFAULT_REGION", RegionSource::AwsDefaultRegion),
    ] {
        if let Some(v) = env.get(key).map(|v| v.trim().to_owned()) {
            if !v.is_empty() {
                return Some((v, source));
            }
        }
    }
    None
}

/// `AWS_REGION` → `AWS_DEFAULT_REGION` → metadata.
pub fn resolve_region(env: &dyn Env, detected: &Detected) -> Option<(String, RegionSource)> {
    env_region(env).or_else(|| detected.region().map(|r| (r, RegionSource::Metadata)))
}

/// Whether IMDS may be contacted: never with `AWS_EC2_METADATA_DISABLED=true`; otherwise when
/// an endpoint is configured or the host itself says it is EC2 (as the SDKs and cloud-init do),
/// so non-AWS hosts never send packets to the link-local address.
pub fn imds_allowed(env: &dyn Env, host: &HostProbe) -> bool {
    if env
        .get("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    {
        return false;
    }
    if env
        .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .is_some_and(|v| !v.trim().is_empty())
    {
        return true;
    }
    host.is_ec2()
}

/// Files that reveal an EC2 host.
#[derive(Debug, Clone)]
pub struct HostProbe {
    /// `/sys/class/dmi/id`.
    pub dmi_dir: PathBuf,
    /// `/sys/hypervisor/uuid`.
    pub hypervisor_uuid: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self {
            dmi_dir: PathBuf::from("/sys/class/dmi/id"),
            hypervisor_uuid: PathBuf::from("/sys/hypervisor/uuid"),
        }
    }
}

impl HostProbe {
    /// DMI vendor "Amazon EC2", an `i-…` board asset tag, or a Xen uuid starting with `ec2`.
    pub fn is_ec2(&self) -> bool {
        let read = |p: PathBuf| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_ascii_lowercase())
                .unwrap_or_default()
        };
        let vendor = read(self.dmi_dir.join("sys_vendor"));
        let tag = read(self.dmi_dir.join("board_asset_tag"));
        let uuid = read(self.hypervisor_uuid.clone());
        vendor.contains("amazon ec2") || tag.starts_with("i-") || uuid.starts_with("ec2")
    }
}

/// The detection budget: `METADATA_DETECT_TIMEOUT` or [`DETECT_BUDGET`]. An invalid value is a
/// configuration error, reported by [`crate::config::load`] with the others.
pub fn detect_budget(env: &dyn Env) -> Result<Duration, String> {
    let raw = env.get(DETECT_TIMEOUT_ENV).unwrap_or_default();
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(DETECT_BUDGET);
    }
    match gosyntax::parse_go_duration_nonneg(raw) {
        Ok(d) if d <= Duration::from_secs(60) => Ok(d),
        Ok(_) => Err(format!(
            "{DETECT_TIMEOUT_ENV} must be at most 1m, got {}",
            gosyntax::go_quote(raw)
        )),
        Err(e) => Err(format!(
            "{DETECT_TIMEOUT_ENV} must be a valid duration: {e}"
        )),
    }
}

/// Runs every detector concurrently, each cut off at the shared `budget`.
pub async fn detect(env: &(dyn Env + Sync), host: &HostProbe, budget: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + budget;
    let ecs_endpoint = [
        "ECS_CONTAINER_METADATA_URI_V4",
        "ECS_CONTAINER_METADATA_URI",
    ]
    .iter()
    .filter_map(|k| env.get(k))
    .map(|v| v.trim().trim_end_matches('/').to_owned())
    .find(|v| !v.is_empty());
    let imds = imds_allowed(env, host);
    let eks = detect_eks(env);
    let ecs = async {
        match ecs_endpoint {
            Some(ep) => tokio::time::timeout_at(deadline, detect_ecs(&ep))
                .await
                .unwrap_or_else(|_| {
                    (
                        None,
                        vec![format!(
                            "failed to load ECS task metadata: timed out after {}ms",
                            budget.as_millis()
                        )],
                    )
                }),
            None => (None, Vec::new()),
        }
    };
    let ec2 = async {
        if !imds {
            return None;
        }
        tokio::time::timeout_at(deadline, detect_ec2(budget))
            .await
            .ok()
            .flatten()
    };
    let ((ecs, warnings), ec2) = tokio::join!(ecs, ec2);
    Detected {
        meta: AwsMeta { ec2, ecs, eks },
        warnings,
    }
}

async fn get_json(url: &str) -> Result<Value, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    let uri: http::Uri = url.parse().map_err(|e| format!("parse {url:?}: {e}"))?;
    let resp = client.get(uri).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ECS_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("unexpected status {}", status.as_u16()));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

async fn detect_ecs(endpoint: &str) -> (Option<EcsMeta>, Vec<String>) {
    let task_url = format!("{endpoint}/task");
    let (task, container) = tokio::join!(get_json(&task_url), get_json(endpoint));
    let mut warnings = Vec::new();
    let mut meta = EcsMeta::default();
    match &task {
        Ok(t) => {
            meta.cluster = field(t, "Cluster");
            meta.task_arn = field(t, "TaskARN");
            meta.task_family = field(t, "Family");
            meta.task_revision = field(t, "Revision");
            meta.launch_type = field(t, "LaunchType");
            meta.availability_zone = field(t, "AvailabilityZone");
        }
        Err(e) => warnings.push(format!("failed to load ECS task metadata: {e}")),
    }
    match &container {
        Ok(c) => {
            meta.container_arn = field(c, "ContainerARN");
            meta.container_name = field(c, "Name");
        }
        Err(e) => warnings.push(format!("failed to load ECS container metadata: {e}")),
    }
    let found = task.is_ok() || container.is_ok();
    (found.then_some(meta), warnings)
}

async fn detect_ec2(budget: Duration) -> Option<Ec2Meta> {
    // The SDK client reads AWS_EC2_METADATA_SERVICE_ENDPOINT(_MODE) and does the IMDSv2 token flow.
    let client = aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(budget)
        .read_timeout(budget)
        .build();
    let doc = client.get(IDENTITY_DOCUMENT).await.ok()?;
    let v: Value = serde_json::from_str(doc.as_ref()).ok()?;
    let meta = Ec2Meta {
        instance_id: field(&v, "instanceId"),
        instance_type: field(&v, "instanceType"),
        region: field(&v, "region"),
        availability_zone: field(&v, "availabilityZone"),
        image_id: field(&v, "imageId"),
        account_id: field(&v, "accountId"),
    };
    Some(meta)
}

fn first_env(env: &dyn Env, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| env.get(k))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_default()
}

fn read_trimmed(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Claims under `kubernetes.io` in a service-account token.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TokenClaims {
    /// `namespace`.
    pub namespace: String,
    /// `pod.name`.
    pub pod_name: String,
    /// `pod.uid`.
    pub pod_uid: String,
    /// `serviceaccount.name`.
    pub service_account: String,
    /// `serviceaccount.uid`.
    pub service_account_uid: String,
}

/// Decodes the payload of a JWT (second segment, base64url without padding); no signature check:
/// the token is only read for labels.
pub fn token_claims(token: &str) -> Option<TokenClaims> {
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let k = v.get("kubernetes.io")?;
    let sub = |obj: &str, key: &str| k.get(obj).map(|o| field(o, key)).unwrap_or_default();
    Some(TokenClaims {
        namespace: field(k, "namespace"),
        pod_name: sub("pod", "name"),
        pod_uid: sub("pod", "uid"),
        service_account: sub("serviceaccount", "name"),
        service_account_uid: sub("serviceaccount", "uid"),
    })
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The Deployment name behind a ReplicaSet pod name (`<deployment>-<8–10 hash>-<5 suffix>`).
pub fn deployment_name(pod: &str) -> Option<String> {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 3 {
        return None;
    }
    let lower_alnum = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    let suffix = parts[parts.len() - 1];
    let hash = parts[parts.len() - 2];
    let ok = suffix.len() == 5
        && lower_alnum(suffix)
        && (8..=10).contains(&hash.len())
        && lower_alnum(hash)
        && hash.bytes().any(|b| b.is_ascii_digit());
    let name = parts[..parts.len() - 2].join("-");
    (ok && !name.is_empty()).then_some(name)
}

/// Kubernetes detection from the environment and the service-account files.
pub fn detect_eks(env: &dyn Env) -> Option<EksMeta> {
    let dir = env
        .get(SERVICEACCOUNT_DIR_ENV)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SERVICEACCOUNT_DIR), PathBuf::from);
    let exec_env = first_env(env, &["AWS_EXECUTION_ENV"]);
    let cluster = first_env(
        env,
        &[
            "EKS_CLUSTER_NAME",
            "KUBERNETES_CLUSTER_NAME",
            "CLUSTER_NAME",
        ],
    );
    let node = first_env(env, &["NODE_NAME", "K8S_NODE_NAME"]);
    let mut namespace = first_env(env, &["POD_NAMESPACE", "K8S_NAMESPACE"]);
    let mut pod = first_env(env, &["POD_NAME"]);
    let mut sa = first_env(env, &["SERVICE_ACCOUNT", "K8S_SERVICE_ACCOUNT"]);
    let ns_file = read_trimmed(dir.join("namespace"));
    let token = read_trimmed(dir.join("token"));
    if namespace.is_empty() {
        namespace = ns_file.clone().unwrap_or_default();
    }
    let claims = token.as_deref().and_then(token_claims).unwrap_or_default();
    if namespace.is_empty() {
        namespace = claims.namespace.clone();
    }
    if pod.is_empty() {
        pod = claims.pod_name.clone();
    }
    if sa.is_empty() {
        sa = claims.service_account.clone();
    }
    let detected = env
        .get("KUBERNETES_SERVICE_HOST")
        .is_some_and(|v| !v.trim().is_empty())
        || exec_env.to_ascii_uppercase().contains("EKS")
        || !cluster.is_empty()
        || ns_file.is_some()
        || token.is_some()
        || !pod.is_empty()
        || !sa.is_empty();
    if !detected {
        return None;
    }
    if pod.is_empty() {
        pod = first_env(env, &["HOSTNAME"]);
    }
    Some(EksMeta {
        cluster_name: cluster,
        deployment_name: deployment_name(&pod).unwrap_or_default(),
        namespace,
        pod_name: pod,
        pod_uid: claims.pod_uid,
        service_account: sa,
        service_account_uid: claims.service_account_uid,
        node_name: node,
        execution_environment: exec_env,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn deployment_names_follow_the_replicaset_pattern() {
        assert_eq!(
            deployment_name("orders-api-75c8b7d7d6-pxk9m").as_deref(),
            Some("orders-api")
        );
        assert_eq!(deployment_name("orders-api-0"), None);
        assert_eq!(deployment_name("orders-api-notahash-pxk9m"), None);
        assert_eq!(
            deployment_name("web-5d9f7c6b8-abcde").as_deref(),
            Some("web")
        );
        assert_eq!(deployment_name("web-5d9f7c6b8-abcd"), None);
        assert_eq!(deployment_name("-5d9f7c6b8-abcde"), None);
    }

    #[test]
    fn region_resolution_order() {
        let mut d = Detected::default();
        d.meta.ecs = Some(EcsMeta {
            task_arn: "arn:aws:ecs:eu-west-1:123:task/x".into(),
            ..EcsMeta::default()
        });
        let both = [
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-west-2"),
        ];
        assert_eq!(
            resolve_region(&both, &d),
            Some(("us-east-1".into(), RegionSource::AwsRegion))
        );
        let default_only = [("AWS_REGION", " "), ("AWS_DEFAULT_REGION", "us-west-2")];
        assert_eq!(
            resolve_region(&default_only, &d),
            Some(("us-west-2".into(), RegionSource::AwsDefaultRegion))
        );
        let none: [(&str, &str); 0] = [];
        assert_eq!(
            resolve_region(&none, &d),
            Some(("eu-west-1".into(), RegionSource::Metadata))
        );
        assert_eq!(resolve_region(&none, &Detected::default()), None);
    }

    #[test]
    fn metadata_region_fallbacks() {
        let mut d = Detected::default();
        d.meta.ecs = Some(EcsMeta {
            container_arn: "arn:aws:ecs:ap-south-1:1:container/x".into(),
            availability_zone: "eu-central-1b".into(),
            ..EcsMeta::default()
        });
        assert_eq!(d.region().as_deref(), Some("ap-south-1"));
        d.meta.ecs.as_mut().unwrap().container_arn.clear();
        assert_eq!(d.region().as_deref(), Some("eu-central-1"));
        d.meta.ec2 = Some(Ec2Meta {
            region: "sa-east-1".into(),
            ..Ec2Meta::default()
        });
        assert_eq!(d.region().as_deref(), Some("sa-east-1"));
    }

    #[test]
    fn default_app_name_prefers_deployment_then_family() {
        let mut d = Detected::default();
        assert_eq!(d.default_app_name(), None);
        d.meta.ecs = Some(EcsMeta {
            task_family: "fam".into(),
            ..EcsMeta::default()
        });
        assert_eq!(d.default_app_name().as_deref(), Some("fam"));
        d.meta.eks = Some(EksMeta {
            deployment_name: "dep".into(),
            ..EksMeta::default()
        });
        assert_eq!(d.default_app_name().as_deref(), Some("dep"));
    }

    #[test]
    fn imds_switches() {
        let tmp = tempfile::tempdir().unwrap();
        let not_ec2 = HostProbe {
            dmi_dir: tmp.path().join("none"),
            hypervisor_uuid: tmp.path().join("none"),
        };
        let none: [(&str, &str); 0] = [];
        assert!(!imds_allowed(&none, &not_ec2));
        assert!(imds_allowed(
            &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1")],
            &not_ec2
        ));
        assert!(!imds_allowed(
            &[
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1"),
                ("AWS_EC2_METADATA_DISABLED", "TRUE")
            ],
            &not_ec2
        ));
        std::fs::write(tmp.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
        let ec2 = HostProbe {
            dmi_dir: tmp.path().to_path_buf(),
            hypervisor_uuid: tmp.path().join("none"),
        };
        assert!(imds_allowed(&none, &ec2));
        assert!(!imds_allowed(
            &[("AWS_EC2_METADATA_DISABLED", "true")],
            &ec2
        ));
        std::fs::write(tmp.path().join("uuid"), "ec2e1916-9099-7caf\n").unwrap();
        let xen = HostProbe {
            dmi_dir: tmp.path().join("none"),
            hypervisor_uuid: tmp.path().join("uuid"),
        };
        assert!(xen.is_ec2());
    }

    fn b64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn service_account_token_claims_fill_missing_values() {
        let tmp = tempfile::tempdir().unwrap();
        let payload = br#"{"kubernetes.io":{"namespace":"shop","pod":{"name":"orders-api-75c8b7d7d6-pxk9m","uid":"p-uid"},"serviceaccount":{"name":"orders","uid":"sa-uid"}}}"#;
        std::fs::write(
            tmp.path().join("token"),
            format!("eyJhbGciOiJSUzI1NiJ9.{}.sig", b64url(payload)),
        )
        .unwrap();
        let dir = tmp.path().to_str().unwrap();
        let env = [
            (SERVICEACCOUNT_DIR_ENV, dir),
            ("EKS_CLUSTER_NAME", "prod"),
            ("NODE_NAME", "ip-10-0-0-1"),
            ("AWS_EXECUTION_ENV", "AWS_ECS_EC2"),
        ];
        let m = detect_eks(&env).unwrap();
        assert_eq!(
            m,
            EksMeta {
                cluster_name: "prod".into(),
                deployment_name: "orders-api".into(),
                namespace: "shop".into(),
                pod_name: "orders-api-75c8b7d7d6-pxk9m".into(),
                pod_uid: "p-uid".into(),
                service_account: "orders".into(),
                service_account_uid: "sa-uid".into(),
                node_name: "ip-10-0-0-1".into(),
                execution_environment: "AWS_ECS_EC2".into(),
            }
        );
        // Env wins over claims.
        let env = [(SERVICEACCOUNT_DIR_ENV, dir), ("POD_NAMESPACE", "other")];
        assert_eq!(detect_eks(&env).unwrap().namespace, "other");
    }

    #[test]
    fn no_kubernetes_signals_means_no_eks_block() {
        let tmp = tempfile::tempdir().unwrap();
        let env = [
            (SERVICEACCOUNT_DIR_ENV, tmp.path().to_str().unwrap()),
            ("HOSTNAME", "orders-api-75c8b7d7d6-pxk9m"),
        ];
        assert_eq!(detect_eks(&env), None);
        let env = [
            (SERVICEACCOUNT_DIR_ENV, tmp.path().to_str().unwrap()),
            ("HOSTNAME", "orders-api-75c8b7d7d6-pxk9m"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ];
        let m = detect_eks(&env).unwrap();
        assert_eq!(m.pod_name, "orders-api-75c8b7d7d6-pxk9m");
        assert_eq!(m.deployment_name, "orders-api");
    }
}
