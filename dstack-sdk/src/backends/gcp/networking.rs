//! Networking: the VPC and subnetwork an instance goes into (`vpc_name`, `vpc_project_id` for
//! a shared VPC, `subnetworks`, `extra_vpcs`, `roce_vpcs`), and the SSH firewall rule that
//! targets instances tagged [`DSTACK_INSTANCE_TAG`].
//!
//! As dstack does: the rule is created only when the VPC is in our own project (with a shared
//! VPC the host project's admin owns the firewall), and an existing rule (409) is fine. It is
//! created once per network and process: later instances skip the call.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use google_cloud_compute_v1::model::{Firewall, UsableSubnetwork};

use super::GcpCompute;
use super::errors::{http_status_of, map_gax_error};
use super::operations::wait_global_operation;
use crate::backends::error::{BackendError, BackendResult};

/// The network tag of instances that run the agent; the SSH firewall rule targets it.
pub const DSTACK_INSTANCE_TAG: &str = "dstack-runner-instance";

/// How long the `listUsable` answer is reused.
pub const USABLE_SUBNETS_TTL: Duration = Duration::from_secs(120);

/// The longest GCP resource name.
pub const MAX_RESOURCE_NAME_LEN: usize = 63;

/// Whether `name` is a valid GCP resource name (and label key): `[a-z][-_a-z0-9]{0,62}`.
pub fn is_valid_resource_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= MAX_RESOURCE_NAME_LEN
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Whether `value` is a valid GCP label value: `[-_a-z0-9]{0,63}`.
pub fn is_valid_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `projects/<project>/global/networks/<vpc>`.
pub fn vpc_resource_name(project: &str, vpc: &str) -> String {
    format!("projects/{project}/global/networks/{vpc}")
}

/// The SSH rule's name for `network` (a resource name), as dstack names it.
pub fn ssh_firewall_rule_name(network: &str) -> String {
    let full = format!("dstack-ssh-in-{}", network.replace('/', "-"));
    if is_valid_resource_name(&full) {
        return full;
    }
    let short = network.rsplit('/').next().unwrap_or(network);
    let name = format!("dstack-ssh-in-{short}");
    name.chars().take(MAX_RESOURCE_NAME_LEN).collect()
}

/// `(network name, subnetwork resource name)` pairs from `listUsable`.
pub type UsableSubnets = Vec<(String, String)>;

/// The usable subnetworks cache (`subnetworks.listUsable` of the VPC project) and the
/// networks whose SSH firewall rule this process has ensured.
#[derive(Debug, Default)]
pub struct SubnetCache {
    entry: Mutex<Option<(Instant, UsableSubnets)>>,
    firewalls: Mutex<HashSet<String>>,
}

/// Where an instance's network interfaces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The main VPC (resource name).
    pub network: String,
    /// The main subnetwork (resource name); `None` for the default VPC (auto mode).
    pub subnetwork: Option<String>,
    /// Extra `(network, subnetwork)` pairs (gVNIC), for multi-NIC GPU types.
    pub extra: Vec<(String, String)>,
    /// RoCE `(network, subnetwork)` pairs (MRDMA), for `a4-highgpu-8g`.
    pub roce: Vec<(String, String)>,
}

/// `(network name, subnetwork resource name)` of usable subnets, without the URL prefix.
async fn usable_subnets(compute: &GcpCompute) -> BackendResult<Vec<(String, String)>> {
    {
        let cache = match compute.subnets.entry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((at, v)) = cache.as_ref()
            && at.elapsed() < USABLE_SUBNETS_TTL
        {
            return Ok(v.clone());
        }
    }
    let project = compute.vpc_project().to_string();
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let t = token.clone();
        let page = compute
            .call("subnetworks.listUsable", || {
                let req = compute
                    .clients
                    .subnetworks
                    .list_usable()
                    .set_project(project.clone())
                    .set_or_clear_page_token(t.clone());
                async move { req.send().await.map_err(map_gax_error) }
            })
            .await
            .map_err(|e| match http_status_of(&e) {
                Some(404) => BackendError::Config {
                    message: format!("Failed to find VPC project {project}"),
                },
                _ => e,
            })?;
        for s in &page.items {
            out.push(parse_usable(s));
        }
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    let mut cache = match compute.subnets.entry.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    *cache = Some((Instant::now(), out.clone()));
    Ok(out)
}

fn strip_url(s: &str) -> String {
    match s.find("projects/") {
        Some(i) => s[i..].to_string(),
        None => s.to_string(),
    }
}

fn parse_usable(s: &UsableSubnetwork) -> (String, String) {
    let network = s
        .network
        .as_deref()
        .and_then(|n| n.rsplit('/').next())
        .unwrap_or_default()
        .to_string();
    let subnet = strip_url(s.subnetwork.as_deref().unwrap_or_default());
    (network, subnet)
}

/// The subnetworks of `vpc` in `region` (resource names), from `usable`.
pub fn vpc_subnets(vpc: &str, region: &str, usable: &[(String, String)]) -> Vec<String> {
    usable
        .iter()
        .filter(|(net, sub)| net == vpc && sub.split('/').nth(3) == Some(region))
        .map(|(_, sub)| sub.clone())
        .collect()
}

fn no_subnet(vpc: &str, region: &str) -> BackendError {
    BackendError::Config {
        message: format!(
            "No usable subnetwork found in region {region} for VPC {vpc}. \
             Ensure that VPC {vpc} exists and has usable subnetworks."
        ),
    }
}

/// The network interfaces plan for `instance_type` in `region`.
pub async fn plan(
    compute: &GcpCompute,
    region: &str,
    instance_type: &str,
) -> BackendResult<NetworkPlan> {
    let cfg = &compute.config;
    let project = compute.vpc_project().to_string();
    let network = vpc_resource_name(&project, cfg.vpc_name.as_deref().unwrap_or("default"));
    let mut subnetwork = None;
    if let Some(vpc) = &cfg.vpc_name {
        let configured = cfg.subnetworks.as_ref().and_then(|m| m.get(region));
        subnetwork = Some(match configured {
            Some(s) if s.contains('/') => strip_url(s),
            Some(s) => format!("projects/{project}/regions/{region}/subnetworks/{s}"),
            None => {
                let usable = usable_subnets(compute).await?;
                vpc_subnets(vpc, region, &usable)
                    .into_iter()
                    .next()
                    .ok_or_else(|| no_subnet(vpc, region))?
            }
        });
    }
    let extra_count = match instance_type {
        "a3-megagpu-8g" => 8,
        "a3-edgegpu-8g" | "a3-highgpu-8g" => 4,
        "a4-highgpu-8g" => 1,
        _ => 0,
    };
    let mut extra = Vec::new();
    if let Some(vpcs) = cfg.extra_vpcs.as_ref().filter(|_| extra_count > 0) {
        let usable = usable_subnets(compute).await?;
        for vpc in vpcs.iter().take(extra_count) {
            let sub = vpc_subnets(vpc, region, &usable)
                .into_iter()
                .next()
                .ok_or_else(|| no_subnet(vpc, region))?;
            extra.push((vpc_resource_name(&project, vpc), sub));
        }
    }
    let mut roce = Vec::new();
    if let Some(vpc) = cfg.roce_vpcs.as_ref().and_then(|v| v.first())
        && instance_type == "a4-highgpu-8g"
    {
        let usable = usable_subnets(compute).await?;
        let subs = vpc_subnets(vpc, region, &usable);
        if subs.len() < 8 {
            return Err(BackendError::Config {
                message: format!(
                    "{instance_type} requires 8 RoCE subnets, but only {} are available in VPC {vpc}",
                    subs.len()
                ),
            });
        }
        for sub in subs.into_iter().take(8) {
            roce.push((vpc_resource_name(&project, vpc), sub));
        }
    }
    Ok(NetworkPlan {
        network,
        subnetwork,
        extra,
        roce,
    })
}

/// Creates the SSH firewall rule for `network` unless the VPC is shared (another project's)
/// or the rule was already made by this process; an existing rule (409) is a success.
pub async fn ensure_ssh_firewall(compute: &GcpCompute, network: &str) -> BackendResult<()> {
    if compute.config.vpc_project_id.is_some() {
        return Ok(());
    }
    {
        let done = match compute.subnets.firewalls.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if done.contains(network) {
            return Ok(());
        }
    }
    let name = ssh_firewall_rule_name(network);
    let body: Firewall = serde_json::from_value(serde_json::json!({
        "name": name,
        "direction": "INGRESS",
        "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
        "sourceRanges": ["0.0.0.0/0"],
        "network": network,
        "description": "Allowing only SSH connections from Internet.",
        "targetTags": [DSTACK_INSTANCE_TAG],
    }))
    .map_err(|e| BackendError::cloud("gcp", "Serialize", e.to_string()))?;
    let project = compute.config.project_id.clone();
    let result = compute
        .call("firewalls.insert", || {
            let req = compute
                .clients
                .firewalls
                .insert()
                .set_project(project.clone())
                .set_body(body.clone());
            async move { req.send().await.map_err(map_gax_error) }
        })
        .await;
    match result {
        Ok(op) => {
            if let Err(e) = wait_global_operation(compute, &op).await
                && !e.to_string().contains("ALREADY_EXISTS")
            {
                return Err(e);
            }
            tracing::info!(rule = %name, network, "created the SSH firewall rule");
        }
        Err(e) if http_status_of(&e) == Some(409) => {
            tracing::debug!(rule = %name, "the SSH firewall rule exists");
        }
        Err(e) => return Err(e),
    }
    let mut done = match compute.subnets.firewalls.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    done.insert(network.to_string());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subnets() {
        assert!(is_valid_resource_name("dstack-ssh-in-default"));
        assert!(!is_valid_resource_name("1abc"));
        assert!(!is_valid_resource_name("Abc"));
        assert!(is_valid_label_value(""));
        assert!(!is_valid_label_value("A"));
        assert_eq!(
            ssh_firewall_rule_name("projects/p/global/networks/default"),
            "dstack-ssh-in-projects-p-global-networks-default"
        );
        let long = format!("projects/{}/global/networks/vpc1", "p".repeat(40));
        assert_eq!(ssh_firewall_rule_name(&long), "dstack-ssh-in-vpc1");
        let usable = vec![
            (
                "vpc1".to_string(),
                "projects/h/regions/us-central1/subnetworks/a".to_string(),
            ),
            (
                "vpc1".to_string(),
                "projects/h/regions/europe-west4/subnetworks/b".to_string(),
            ),
            (
                "other".to_string(),
                "projects/h/regions/us-central1/subnetworks/c".to_string(),
            ),
        ];
        assert_eq!(
            vpc_subnets("vpc1", "us-central1", &usable),
            ["projects/h/regions/us-central1/subnetworks/a"]
        );
        assert_eq!(
            strip_url("https://www.googleapis.com/compute/v1/projects/h/regions/r/subnetworks/s"),
            "projects/h/regions/r/subnetworks/s"
        );
    }
}
