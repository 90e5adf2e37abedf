//! `aws_meta`: runtime metadata (EC2, ECS, EKS/Kubernetes) in cwproxy's field order.
//!
//! Detection lives with the binaries (it needs HTTP clients and files); this module is the plain
//! data and its JSON form, rendered once at startup and copied into every entry.

use crate::json;

/// EC2 instance identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ec2Meta {
    /// `instance_id`.
    pub instance_id: String,
    /// `instance_type`.
    pub instance_type: String,
    /// `region`.
    pub region: String,
    /// `availability_zone`.
    pub availability_zone: String,
    /// `image_id`.
    pub image_id: String,
    /// `account_id`.
    pub account_id: String,
}

/// ECS task and container metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EcsMeta {
    /// `cluster`.
    pub cluster: String,
    /// `task_arn`.
    pub task_arn: String,
    /// `task_family`.
    pub task_family: String,
    /// `task_revision`.
    pub task_revision: String,
    /// `launch_type`.
    pub launch_type: String,
    /// `availability_zone`.
    pub availability_zone: String,
    /// `container_arn`.
    pub container_arn: String,
    /// `container_name`.
    pub container_name: String,
}

/// Kubernetes (EKS or any cluster) metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EksMeta {
    /// `cluster_name`.
    pub cluster_name: String,
    /// `deployment_name`.
    pub deployment_name: String,
    /// `namespace`.
    pub namespace: String,
    /// `pod_name`.
    pub pod_name: String,
    /// `pod_uid`.
    pub pod_uid: String,
    /// `service_account`.
    pub service_account: String,
    /// `service_account_uid`.
    pub service_account_uid: String,
    /// `node_name`.
    pub node_name: String,
    /// `execution_environment`.
    pub execution_environment: String,
}

/// Everything detected; `None` parts are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsMeta {
    /// `ec2`.
    pub ec2: Option<Ec2Meta>,
    /// `ecs`.
    pub ecs: Option<EcsMeta>,
    /// `eks`.
    pub eks: Option<EksMeta>,
}

fn write_object(out: &mut Vec<u8>, fields: &[(&str, &str)]) {
    out.push(b'{');
    let mut first = true;
    for (k, v) in fields.iter().filter(|(_, v)| !v.is_empty()) {
        if !first {
            out.push(b',');
        }
        first = false;
        json::write_key(out, k.as_bytes());
        json::write_str(out, v.as_bytes());
    }
    out.push(b'}');
}

impl AwsMeta {
    /// True when nothing was detected (the entry then omits `aws_meta`).
    pub fn is_empty(&self) -> bool {
        self.ec2.is_none() && self.ecs.is_none() && self.eks.is_none()
    }

    /// The `aws_meta` JSON object, or `None` when nothing was detected.
    pub fn to_json(&self) -> Option<Vec<u8>> {
        if self.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        let mut sep = "";
        if let Some(m) = &self.ec2 {
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(b"\"ec2\":");
            write_object(
                &mut out,
                &[
                    ("instance_id", &m.instance_id),
                    ("instance_type", &m.instance_type),
                    ("region", &m.region),
                    ("availability_zone", &m.availability_zone),
                    ("image_id", &m.image_id),
                    ("account_id", &m.account_id),
                ],
            );
            sep = ",";
        }
        if let Some(m) = &self.ecs {
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(b"\"ecs\":");
            write_object(
                &mut out,
                &[
                    ("cluster", &m.cluster),
                    ("task_arn", &m.task_arn),
                    ("task_family", &m.task_family),
                    ("task_revision", &m.task_revision),
                    ("launch_type", &m.launch_type),
                    ("availability_zone", &m.availability_zone),
                    ("container_arn", &m.container_arn),
                    ("container_name", &m.container_name),
                ],
            );
            sep = ",";
        }
        if let Some(m) = &self.eks {
            out.extend_from_slice(sep.as_bytes());
            out.extend_from_slice(b"\"eks\":");
            write_object(
                &mut out,
                &[
                    ("cluster_name", &m.cluster_name),
                    ("deployment_name", &m.deployment_name),
                    ("namespace", &m.namespace),
                    ("pod_name", &m.pod_name),
                    ("pod_uid", &m.pod_uid),
                    ("service_account", &m.service_account),
                    ("service_account_uid", &m.service_account_uid),
                    ("node_name", &m.node_name),
                    ("execution_environment", &m.execution_environment),
                ],
            );
        }
        out.push(b'}');
        Some(out)
    }
}
