//! Cloud TPU VMs: TPU offers (`v5litepod-8`, GPU vendor `google`) are provisioned as TPU
//! nodes through the Cloud TPU v2 API, as dstack does (`compute.py` `create_instance`'s TPU
//! branch, `resources.py` `create_tpu_node_struct`).
//!
//! - `nodes.create` (`POST /v2/projects/{p}/locations/{zone}/nodes?nodeId=…`) per zone of the
//!   offer; the long-running operation is awaited for a short while (capacity errors arrive
//!   within seconds), then the node is left to [`update_provisioning_data`];
//! - no capacity or quota (`RESOURCE_EXHAUSTED`), an unavailable zone (`UNAVAILABLE`) or a
//!   zone without the accelerator type (`NOT_FOUND`) moves on to the next zone; any other
//!   error (an invalid argument, a disabled API, missing permissions) is returned at once;
//! - `nodes.get` gives the state (`CREATING` → `READY`) and the first network endpoint's
//!   external (or internal, with `public_ips: false`) address;
//! - `nodes.delete` is not awaited; a missing node is a success.
//!
//! Only single-host TPUs are offered (v2/v3/v5p/v5litepod/v6e with at most 8 cores, no v4),
//! and only with `tpu: true` in the backend config.

use reqwest::Method;
use serde_json::{Value, json};

use super::GcpCompute;
use super::errors::{classify, http_status_of, is_no_capacity_text, is_not_found};
use super::instances::{GcpInstanceData, USERNAME, instance_labels, unique_instance_name};
use super::networking::{DSTACK_INSTANCE_TAG, NetworkPlan};
use super::rest::rpc_code_status;
use crate::backends::common::cloud_init::{AGENT_UNIT, AgentBootstrap, shell_quote};
use crate::backends::compute::InstanceConfiguration;
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::AcceleratorVendor;

/// The TPU versions gpuhunt knows (`KNOWN_TPUS`; `v5litepod` is v5e).
pub const TPU_VERSIONS: &[&str] = &["v2", "v3", "v4", "v5p", "v5litepod", "v6e"];

/// The default TPU VM runtime.
pub const DEFAULT_RUNTIME_VERSION: &str = "tpu-ubuntu2204-base";

/// Whether `name` is a TPU type, `<version>-<cores>` (dstack's `_is_tpu`).
pub fn is_tpu_name(name: &str) -> bool {
    match name.split('-').collect::<Vec<_>>().as_slice() {
        [version, cores] => {
            TPU_VERSIONS.contains(version)
                && !cores.is_empty()
                && cores.chars().all(|c| c.is_ascii_digit())
        }
        _ => false,
    }
}

/// Whether a TPU type is a single host (dstack's `_is_single_host_tpu`): at most 8 cores of
/// v2, v3, v5p, v5litepod or v6e; v4 and unknown versions never.
pub fn is_single_host_tpu(name: &str) -> bool {
    let [version, cores] = name.split('-').collect::<Vec<_>>()[..] else {
        return false;
    };
    let Ok(cores) = cores.parse::<u32>() else {
        return false;
    };
    match version {
        "v2" | "v3" | "v5p" | "v5litepod" | "v6e" => cores <= 8,
        _ => false,
    }
}

/// Whether `offer` is a TPU: its accelerator is a TPU type (gpuhunt names TPU accelerators
/// after the instance type, e.g. `v5litepod-8`), or a `google` accelerator on a TPU type.
pub fn is_tpu_offer(offer: &InstanceOfferWithAvailability) -> bool {
    offer.instance.resources.gpus.first().is_some_and(|g| {
        is_tpu_name(&g.name)
            || (g.vendor == AcceleratorVendor::Google && is_tpu_name(&offer.instance.name))
    })
}

/// The TPU VM runtime for a TPU type (dstack's `_get_tpu_runtime_version`).
pub fn runtime_version(instance_type: &str) -> &'static str {
    match instance_type.split('-').next().unwrap_or_default() {
        "v6e" => "v2-alpha-tpuv6e",
        "v5litepod" => "v2-alpha-tpuv5-lite",
        _ => DEFAULT_RUNTIME_VERSION,
    }
}

/// The node's `startup-script` metadata: a bash script that writes the agent's environment
/// file and systemd unit, then runs the bootstrap commands (dstack runs its shim the same way
/// with `PJRT_DEVICE=TPU`, `_get_tpu_startup_script`).
pub fn startup_script(bootstrap: &AgentBootstrap) -> String {
    let home = shell_quote(&bootstrap.home);
    let env_path = shell_quote(&format!("{}/agent.env", bootstrap.home));
    let unit_path = format!("/etc/systemd/system/{AGENT_UNIT}");
    let mut s = String::from("#! /bin/bash\n");
    s.push_str(&format!("mkdir -p {home} && chmod 700 {home}\n"));
    s.push_str(&format!(
        "cat > {env_path} <<'DSTACK_AGENT_ENV'\n{}DSTACK_AGENT_ENV\n",
        bootstrap.env_file()
    ));
    s.push_str(&format!("chmod 600 {env_path}\n"));
    s.push_str(&format!(
        "cat > {unit_path} <<'DSTACK_AGENT_UNIT'\n{}DSTACK_AGENT_UNIT\n",
        bootstrap.systemd_unit()
    ));
    s.push_str(&bootstrap.commands().join(" && "));
    s.push('\n');
    s
}

/// What goes into a TPU node besides the offer.
#[derive(Debug, Clone)]
pub struct NodeParams<'a> {
    /// The TPU type, e.g. `v5litepod-8`.
    pub accelerator_type: &'a str,
    /// Preemptible (spot) capacity.
    pub spot: bool,
    /// The startup script.
    pub startup_script: &'a str,
    /// SSH keys (OpenSSH one-line form) for the `ubuntu` user.
    pub ssh_keys: &'a [String],
    /// GCP labels.
    pub labels: &'a indexmap::IndexMap<String, String>,
    /// The VPC and subnetwork.
    pub network: &'a NetworkPlan,
    /// Whether the node gets an external IP.
    pub public_ips: bool,
    /// The VM service account.
    pub service_account: Option<&'a str>,
}

/// The `Node` body of `nodes.create` (dstack's `create_tpu_node_struct`, in the REST form).
///
/// The runner network tag is added (dstack sets none) so that the SSH firewall rule, which
/// targets that tag, applies to TPU VMs in custom VPCs too.
pub fn node_body(p: &NodeParams<'_>) -> Value {
    let mut network = json!({
        "network": p.network.network,
        "enableExternalIps": p.public_ips,
    });
    if let Some(s) = &p.network.subnetwork {
        network["subnetwork"] = json!(s);
    }
    let ssh_keys = p
        .ssh_keys
        .iter()
        .map(|k| format!("{USERNAME}:{}", k.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let mut node = json!({
        "acceleratorType": p.accelerator_type,
        "runtimeVersion": runtime_version(p.accelerator_type),
        "networkConfig": network,
        "metadata": {
            "ssh-keys": ssh_keys,
            "startup-script": p.startup_script,
        },
        "labels": p.labels,
        "tags": [DSTACK_INSTANCE_TAG],
    });
    if p.spot {
        node["schedulingConfig"] = json!({ "preemptible": true });
    }
    if let Some(sa) = p.service_account {
        node["serviceAccount"] = json!({
            "email": sa,
            "scope": [super::auth::CLOUD_PLATFORM_SCOPE],
        });
    }
    node
}

/// `projects/{project}/locations/{zone}/nodes/{node_id}`.
pub fn node_name(project: &str, zone: &str, node_id: &str) -> String {
    format!("projects/{project}/locations/{zone}/nodes/{node_id}")
}

/// Maps the `error` (`google.rpc.Status`) of a finished TPU operation.
pub fn operation_error(error: &Value) -> BackendError {
    let code = error["code"].as_i64().unwrap_or(2);
    let message = error["message"].as_str().unwrap_or_default();
    let (http, name) = rpc_code_status(code);
    if code == 8 || is_no_capacity_text(message) {
        return BackendError::NoCapacity {
            message: format!("{name}: {message}"),
        };
    }
    classify(Some(http), name, message)
}

/// A synchronous `nodes.create` error: a 429 about quota or capacity is no capacity here (not
/// a rate limit to retry); a disabled API is a config error.
fn create_error(e: BackendError, project: &str) -> BackendError {
    match e {
        BackendError::Cloud { code, message, .. }
            if code.starts_with("429") && is_no_capacity_text(&message) =>
        {
            BackendError::NoCapacity {
                message: format!("{code}: {message}"),
            }
        }
        BackendError::Cloud { code, message, .. }
            if message.contains("has not been used in project")
                || message.contains("SERVICE_DISABLED")
                || message.contains("it is disabled") =>
        {
            BackendError::Config {
                message: format!(
                    "the Cloud TPU API is not enabled in project {project} ({code}: {message})"
                ),
            }
        }
        other => other,
    }
}

/// Whether a failed zone is skipped for the next one (dstack: `ServiceUnavailable`,
/// `NotFound`, `ResourceExhausted`).
fn falls_through(e: &BackendError) -> bool {
    e.is_no_capacity() || is_not_found(e) || http_status_of(e).is_some_and(|s| s == 429 || s == 503)
}

/// Waits for a TPU long-running operation: `Ok(true)` when done, `Ok(false)` when the time
/// ran out, the mapped error when it finished with one.
async fn wait_operation(compute: &GcpCompute, op: &Value) -> BackendResult<bool> {
    let started = std::time::Instant::now();
    let mut op = op.clone();
    loop {
        if op["done"].as_bool().unwrap_or(false) {
            if let Some(err) = op.get("error").filter(|e| !e.is_null()) {
                return Err(operation_error(err));
            }
            return Ok(true);
        }
        if started.elapsed() >= compute.polling.timeout {
            return Ok(false);
        }
        let Some(name) = op["name"].as_str().map(str::to_string) else {
            return Ok(false);
        };
        tokio::time::sleep(compute.polling.interval).await;
        let url = compute.clients.rest.tpu_url(&name);
        op = compute
            .rest("tpu.operations.get", Method::GET, &url, &[], None)
            .await?;
    }
}

/// Creates a TPU node for `offer` in the first of `zones` with capacity.
pub async fn create_node(
    compute: &GcpCompute,
    offer: &InstanceOfferWithAvailability,
    config: &InstanceConfiguration,
    zones: &[String],
    network: &NetworkPlan,
) -> BackendResult<JobProvisioningData> {
    let accelerator_type = offer.instance.name.as_str();
    let spot = offer.instance.resources.spot;
    let project = compute.config.project_id.clone();
    let public_ips = compute.public_ips();
    let bootstrap = AgentBootstrap::new(&compute.settings, "amd64")
        .with_env("DSTACK_BACKEND", "gcp")
        .with_env("PJRT_DEVICE", "TPU")
        .with_firewall(Vec::new());
    let script = startup_script(&bootstrap);
    let labels = instance_labels(compute, config);
    let node_id = unique_instance_name(config);
    let body = node_body(&NodeParams {
        accelerator_type,
        spot,
        startup_script: &script,
        ssh_keys: &config.ssh_public_keys,
        labels: &labels,
        network,
        public_ips,
        service_account: compute.config.vm_service_account.as_deref(),
    });

    let mut failures: Vec<String> = Vec::new();
    for zone in zones {
        let url = compute
            .clients
            .rest
            .tpu_url(&format!("projects/{project}/locations/{zone}/nodes"));
        // Mapped inside the retried call: a quota 429 is not a rate limit to retry.
        let created = compute
            .call("tpu.nodes.create", || async {
                compute
                    .clients
                    .rest
                    .request(
                        Method::POST,
                        &url,
                        &[("nodeId", node_id.as_str())],
                        Some(&body),
                    )
                    .await
                    .map_err(|e| create_error(e, &project))
            })
            .await;
        let outcome = match created {
            Ok(op) => wait_operation(compute, &op).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(done) => {
                if !done {
                    tracing::debug!(%zone, node = %node_id, "TPU node still creating; polling later");
                }
                let data = GcpInstanceData {
                    zone: zone.clone(),
                    is_tpu: true,
                    public_ips: Some(public_ips),
                };
                return Ok(JobProvisioningData {
                    backend: BackendType::Gcp,
                    base_backend: None,
                    instance_type: offer.instance.clone(),
                    instance_id: node_id,
                    hostname: None,
                    internal_ip: None,
                    public_ip_enabled: public_ips,
                    instance_network: None,
                    region: offer.region.clone(),
                    availability_zone: Some(zone.clone()),
                    reservation: None,
                    price: offer.price,
                    username: USERNAME.to_string(),
                    ssh_port: Some(22),
                    dockerized: true,
                    ssh_proxy: None,
                    backend_data: serde_json::to_string(&data).ok(),
                    gpu_driver: None,
                });
            }
            Err(e) if falls_through(&e) => {
                tracing::info!(%zone, error = %e, "TPU node not created; trying the next zone");
                failures.push(format!("{zone}: {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    Err(BackendError::NoCapacity {
        message: format!(
            "TPU {accelerator_type}{} in {}: {}",
            if spot { " (spot)" } else { "" },
            offer.region,
            failures.join("; ")
        ),
    })
}

/// `update_provisioning_data` of a TPU node: waits while `CREATING`, fills the first network
/// endpoint's external (or internal) address once `READY`; a missing node or any other state
/// is a [`BackendError::Provisioning`].
pub async fn update_provisioning_data(
    compute: &GcpCompute,
    jpd: &mut JobProvisioningData,
    data: &GcpInstanceData,
) -> BackendResult<()> {
    let name = node_name(&compute.config.project_id, &data.zone, &jpd.instance_id);
    let url = compute.clients.rest.tpu_url(&name);
    let node = match compute
        .rest("tpu.nodes.get", Method::GET, &url, &[], None)
        .await
    {
        Ok(n) => n,
        Err(e) if is_not_found(&e) => {
            return Err(BackendError::Provisioning {
                message: format!(
                    "Failed to get instance IP address. TPU node {} not found in {}.",
                    jpd.instance_id, data.zone
                ),
            });
        }
        Err(e) => return Err(e),
    };
    let state = node["state"].as_str().unwrap_or("STATE_UNSPECIFIED");
    match state {
        "STATE_UNSPECIFIED" | "CREATING" => Ok(()),
        "READY" => {
            let endpoint = &node["networkEndpoints"][0];
            let internal = endpoint["ipAddress"].as_str().map(str::to_string);
            let external = endpoint["accessConfig"]["externalIp"]
                .as_str()
                .map(str::to_string);
            let hostname = if data.public_ips.unwrap_or(true) {
                external
            } else {
                internal.clone()
            };
            if hostname.is_some() {
                jpd.hostname = hostname;
                jpd.internal_ip = internal;
            }
            Ok(())
        }
        other => Err(BackendError::Provisioning {
            message: format!(
                "Failed to get instance IP address. TPU node {} state: {other}",
                jpd.instance_id
            ),
        }),
    }
}

/// Deletes a TPU node (not awaited); a missing node is a success.
pub async fn terminate(
    compute: &GcpCompute,
    node_id: &str,
    data: &GcpInstanceData,
) -> BackendResult<()> {
    let name = node_name(&compute.config.project_id, &data.zone, node_id);
    let url = compute.clients.rest.tpu_url(&name);
    let result = compute
        .rest("tpu.nodes.delete", Method::DELETE, &url, &[], None)
        .await;
    super::errors::deletion_started(result, "TPU node", node_id, &data.zone)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn tpu_names_and_runtimes() {
        assert!(is_tpu_name("v5litepod-8"));
        assert!(is_tpu_name("v2-8"));
        assert!(!is_tpu_name("v5litepod"));
        assert!(!is_tpu_name("n1-standard-4"));
        assert!(!is_tpu_name("v7-8"));
        assert!(is_single_host_tpu("v5litepod-8"));
        assert!(is_single_host_tpu("v6e-1"));
        assert!(!is_single_host_tpu("v5litepod-16"));
        assert!(!is_single_host_tpu("v4-8"));
        assert!(!is_single_host_tpu("v5litepod"));
        assert_eq!(runtime_version("v6e-8"), "v2-alpha-tpuv6e");
        assert_eq!(runtime_version("v5litepod-4"), "v2-alpha-tpuv5-lite");
        assert_eq!(runtime_version("v2-8"), "tpu-ubuntu2204-base");
        assert!(
            operation_error(&json!({"code": 8, "message": "no more capacity"})).is_no_capacity()
        );
        let e = operation_error(&json!({"code": 5, "message": "zone not found"}));
        assert!(is_not_found(&e), "{e}");
        let e = operation_error(&json!({"code": 3, "message": "bad runtime"}));
        assert!(!falls_through(&e), "{e}");
    }
}
