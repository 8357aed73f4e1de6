//! Instances: `instances.insert` per zone with fall-through, polling with `instances.get`,
//! and idempotent `instances.delete`.
//!
//! The request follows dstack's `create_instance_struct`: dstack's VM image (CPU or CUDA), a
//! `pd-balanced` (or `hyperdisk-balanced`) boot disk, the cloud-init `user-data` and
//! `ssh-keys` (`ubuntu:<key>` lines) metadata items, the `dstack-runner-instance` network tag,
//! GCP labels from the common tag set, `scheduling.provisioningModel = SPOT` for spot offers,
//! one external NAT access config unless `public_ips: false`, and the optional VM service
//! account. The insert operation is awaited for a short while (capacity errors arrive within
//! seconds); a pool-exhausted or quota error moves on to the next zone (quota: to the next
//! offer at once).
//!
//! With a placement group the instance gets the group's resource policy
//! ([`placement`](super::placement)); with a `reservation` it gets the reservation's affinity
//! in each zone that has it ([`reservations`](super::reservations)). TPU offers are created as
//! TPU nodes instead ([`tpu`](super::tpu)), and TPU rows (`is_tpu` in `backend_data`) are
//! polled and deleted through the TPU API.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::GcpCompute;
use super::errors::{http_status_of, is_not_found, is_quota_text, map_gax_error};
use super::networking::{
    DSTACK_INSTANCE_TAG, MAX_RESOURCE_NAME_LEN, NetworkPlan, ensure_ssh_firewall,
    is_valid_label_value, is_valid_resource_name, plan,
};
use super::operations::{Waited, wait_zone_operation};
use crate::backends::common::cloud_init::{AgentBootstrap, render_cloud_config};
use crate::backends::common::tags::ResourceTags;
use crate::backends::compute::{InstanceConfiguration, PlacementGroupProvisioningData};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::AcceleratorVendor;

/// The SSH user of dstack's GCP images.
pub const USERNAME: &str = "ubuntu";

/// dstack's VM base image version (`projects/dstack/global/images/dstack[-cuda]-<ver>`).
pub const VM_BASE_IMAGE_VERSION: &str = "0.14";

/// The CUDA image version for GPUs that need NVIDIA's proprietary kernel modules.
pub const PROPRIETARY_NVIDIA_IMAGE_VERSION: &str = "0.10";

/// GPUs that need NVIDIA's proprietary kernel modules (pre-Turing).
pub const PROPRIETARY_KERNEL_MODULE_GPUS: &[&str] = &[
    "v100", "p100", "p40", "p4", "m60", "m40", "m4", "k80", "k40",
];

/// Machine series without persistent-disk support (hyperdisk only).
const HYPERDISK_ONLY: &[&str] = &["m4-", "c4-", "n4-", "h3-", "v6e", "a4-", "g4-"];

/// Attachable GPUs: (GCP accelerator, GPU name, memory MiB).
pub const ACCELERATORS: &[(&str, &str, i64)] = &[
    ("nvidia-b200", "B200", 1024 * 180),
    ("nvidia-a100-80gb", "A100", 1024 * 80),
    ("nvidia-tesla-a100", "A100", 1024 * 40),
    ("nvidia-l4", "L4", 1024 * 24),
    ("nvidia-tesla-t4", "T4", 1024 * 16),
    ("nvidia-tesla-v100", "V100", 1024 * 16),
    ("nvidia-tesla-p100", "P100", 1024 * 16),
    ("nvidia-rtx-pro-6000", "RTXPRO6000", 1024 * 96),
];

/// What `JobProvisioningData.backend_data` holds for GCP instances (a JSON string; the
/// `zone`/`is_tpu` keys are dstack's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcpInstanceData {
    /// The zone the instance is in.
    pub zone: String,
    /// Whether the instance is a Cloud TPU node (polled and deleted through the TPU API).
    #[serde(default)]
    pub is_tpu: bool,
    /// Whether the instance has an external IP (absent in dstack's data: true).
    #[serde(default = "yes", skip_serializing_if = "Option::is_none")]
    pub public_ips: Option<bool>,
}

fn yes() -> Option<bool> {
    Some(true)
}

impl GcpInstanceData {
    /// Parses `backend_data`; dstack's old rows without it put the zone in `region`.
    pub fn parse(data: Option<&str>, region: &str) -> Self {
        data.and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| Self {
                zone: region.to_string(),
                is_tpu: false,
                public_ips: Some(true),
            })
    }
}

/// The image for `instance_type` with `gpu` (dstack's `_get_image`).
pub fn image_for(instance_type: &str, gpu: Option<&str>) -> String {
    let name = if instance_type == "a3-megagpu-8g" {
        "dstack-a3mega-5".to_string()
    } else if matches!(instance_type, "a3-edgegpu-8g" | "a3-highgpu-8g") {
        return "projects/cos-cloud/global/images/cos-105-17412-535-78".to_string();
    } else if let Some(g) = gpu {
        if PROPRIETARY_KERNEL_MODULE_GPUS.contains(&g.to_ascii_lowercase().as_str()) {
            format!("dstack-cuda-{PROPRIETARY_NVIDIA_IMAGE_VERSION}")
        } else {
            format!("dstack-cuda-{VM_BASE_IMAGE_VERSION}")
        }
    } else {
        format!("dstack-{VM_BASE_IMAGE_VERSION}")
    };
    format!("projects/dstack/global/images/{}", name.replace('.', "-"))
}

/// The accelerator type of an attachable GPU (`None` for types with bundled GPUs: H100, A100,
/// L4, or no GPU).
pub fn accelerator_for(name: &str, memory_mib: i64) -> Option<&'static str> {
    ACCELERATORS
        .iter()
        .find(|(_, g, m)| *g == name && *m == memory_mib)
        .map(|(a, _, _)| *a)
}

/// A unique instance name, `dstack-<project>-<name>-<8 random chars>`, at most 63 chars
/// (dstack's `generate_unique_instance_name`).
pub fn unique_instance_name(config: &InstanceConfiguration) -> String {
    let clean = |s: &str| -> String {
        s.to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    let project = clean(&config.project_name);
    let name = clean(&config.instance_name);
    let mut prefix = if project.is_empty() {
        format!("dstack-{name}")
    } else {
        format!("dstack-{project}-{name}")
    };
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    prefix.truncate(MAX_RESOURCE_NAME_LEN - suffix.len() - 1);
    let prefix = prefix.trim_end_matches('-');
    format!("{prefix}-{suffix}")
}

/// The instance's labels: the common tag set as GCP labels; keys or values GCP rejects are
/// dropped with a warning (dstack's `filter_invalid_labels`).
pub fn instance_labels(
    compute: &GcpCompute,
    config: &InstanceConfiguration,
) -> IndexMap<String, String> {
    let tags = ResourceTags::for_instance(
        &compute.settings.server_id,
        config,
        compute.config.tags.as_ref(),
    );
    tags.to_labels()
        .into_iter()
        .filter(|(k, v)| {
            let ok = is_valid_resource_name(k) && is_valid_label_value(v);
            if !ok {
                tracing::warn!(key = %k, "skipping a label GCP would reject");
            }
            ok
        })
        .collect()
}

struct InsertParams<'a> {
    name: &'a str,
    zone: &'a str,
    instance_type: &'a str,
    image: &'a str,
    disk_gb: i64,
    spot: bool,
    gpu_accelerator: Option<(String, usize)>,
    user_data: &'a str,
    ssh_keys: &'a str,
    labels: &'a IndexMap<String, String>,
    network: &'a NetworkPlan,
    public_ips: bool,
    service_account: Option<&'a str>,
}

fn instance_body(p: &InsertParams<'_>) -> Value {
    let mut nic = json!({ "network": p.network.network });
    if let Some(s) = &p.network.subnetwork {
        nic["subnetwork"] = json!(s);
    }
    nic["accessConfigs"] = if p.public_ips {
        json!([{ "type": "ONE_TO_ONE_NAT", "name": "External NAT", "networkTier": "PREMIUM" }])
    } else {
        json!([])
    };
    if !p.network.extra.is_empty() {
        nic["nicType"] = json!("GVNIC");
    }
    let mut nics = vec![nic];
    for (net, sub) in &p.network.extra {
        nics.push(json!({ "network": net, "subnetwork": sub, "nicType": "GVNIC" }));
    }
    for (net, sub) in &p.network.roce {
        nics.push(json!({ "network": net, "subnetwork": sub, "nicType": "MRDMA" }));
    }
    let disk_type = if HYPERDISK_ONLY
        .iter()
        .any(|s| p.instance_type.starts_with(s))
    {
        "hyperdisk-balanced"
    } else {
        "pd-balanced"
    };
    let mut body = json!({
        "name": p.name,
        "machineType": format!("zones/{}/machineTypes/{}", p.zone, p.instance_type),
        "networkInterfaces": nics,
        "disks": [{
            "autoDelete": true,
            "boot": true,
            "initializeParams": {
                "sourceImage": p.image,
                "diskSizeGb": p.disk_gb.to_string(),
                "diskType": format!("zones/{}/diskTypes/{disk_type}", p.zone),
            },
        }],
        "metadata": { "items": [
            { "key": "user-data", "value": p.user_data },
            { "key": "ssh-keys", "value": p.ssh_keys },
        ]},
        "labels": p.labels,
        "tags": { "items": [DSTACK_INSTANCE_TAG] },
    });
    let mut scheduling = serde_json::Map::new();
    if let Some((acc, count)) = &p.gpu_accelerator {
        body["guestAccelerators"] = json!([{ "acceleratorType": acc, "acceleratorCount": count }]);
    }
    if p.gpu_accelerator.is_some()
        || ["a3-", "a2-", "g2-"]
            .iter()
            .any(|s| p.instance_type.starts_with(s))
    {
        scheduling.insert("onHostMaintenance".into(), json!("TERMINATE"));
    }
    if p.spot {
        scheduling.insert("provisioningModel".into(), json!("SPOT"));
        scheduling.insert("instanceTerminationAction".into(), json!("STOP"));
        scheduling.insert("onHostMaintenance".into(), json!("TERMINATE"));
        scheduling.insert("automaticRestart".into(), json!(false));
    }
    if !scheduling.is_empty() {
        body["scheduling"] = Value::Object(scheduling);
    }
    if let Some(sa) = p.service_account {
        body["serviceAccounts"] = json!([{
            "email": sa,
            "scopes": [super::auth::CLOUD_PLATFORM_SCOPE],
        }]);
    }
    body
}

/// `create_instance`: see the module docs.
pub async fn create_instance(
    compute: &GcpCompute,
    offer: &InstanceOfferWithAvailability,
    config: &InstanceConfiguration,
    placement_group: Option<&PlacementGroupProvisioningData>,
) -> BackendResult<JobProvisioningData> {
    let region = offer.region.as_str();
    let instance_type = offer.instance.name.as_str();
    let resources = &offer.instance.resources;
    let spot = resources.spot;
    let zones: Vec<String> = offer.availability_zones.clone().unwrap_or_default();
    if zones.is_empty() {
        return Err(BackendError::NoCapacity {
            message: format!("{instance_type} in {region}: no eligible availability zones"),
        });
    }
    if super::tpu::is_tpu_offer(offer) {
        // dstack creates the runner firewall rule before its TPU branch too.
        let network = plan(compute, region, instance_type).await?;
        ensure_ssh_firewall(compute, &network.network).await?;
        return super::tpu::create_node(compute, offer, config, &zones, &network).await;
    }
    let gpu = resources.gpus.first();
    if gpu.is_some_and(|g| g.vendor == AcceleratorVendor::Google) {
        return Err(BackendError::Unsupported(format!(
            "{instance_type}: not a TPU type this backend can create"
        )));
    }
    let attachable = gpu.and_then(|g| {
        if ["H100", "A100", "L4"].contains(&g.name.as_str()) {
            None
        } else {
            Some(g)
        }
    });
    let accelerator = match attachable {
        Some(g) => Some(accelerator_for(&g.name, g.memory_mib).ok_or_else(|| {
            BackendError::NoCapacity {
                message: format!("unsupported GPU {} with {} MiB", g.name, g.memory_mib),
            }
        })?),
        None => None,
    };

    let network = plan(compute, region, instance_type).await?;
    ensure_ssh_firewall(compute, &network.network).await?;

    let public_ips = compute.public_ips();
    let image = image_for(instance_type, gpu.map(|g| g.name.as_str()));
    let bootstrap = AgentBootstrap::new(&compute.settings, "amd64")
        .with_env("DSTACK_BACKEND", "gcp")
        .with_firewall(Vec::new());
    let user_data = render_cloud_config(&config.ssh_public_keys, &bootstrap);
    let ssh_keys = config
        .ssh_public_keys
        .iter()
        .map(|k| format!("{USERNAME}:{}", k.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let labels = instance_labels(compute, config);
    let disk_gb = config
        .disk_size_gb
        .map(i64::from)
        .unwrap_or_else(|| (resources.disk.size_mib as f64 / 1024.0).round() as i64)
        .max(20);
    let name = unique_instance_name(config);
    let project = compute.config.project_id.clone();
    let placement_policy = placement_group
        .map(|pg| super::placement::policy_resource_name(&project, region, &pg.name));
    let reservations = match &config.reservation {
        Some(r) => Some(super::reservations::find(compute, r).await?),
        None => None,
    };

    let mut failures: Vec<String> = Vec::new();
    for zone in &zones {
        let reservation = match (&config.reservation, &reservations) {
            (Some(r), Some(by_zone)) => match by_zone.get(zone) {
                Some(res) => Some(res),
                None => {
                    tracing::warn!(reservation = %r, %zone, "reservation no longer exists in zone");
                    failures.push(format!("{zone}: reservation {r} not found"));
                    continue;
                }
            },
            _ => None,
        };
        let body = instance_body(&InsertParams {
            name: &name,
            zone,
            instance_type,
            image: &image,
            disk_gb,
            spot,
            gpu_accelerator: accelerator.map(|a| {
                (
                    format!("projects/{project}/zones/{zone}/acceleratorTypes/{a}"),
                    resources.gpus.len(),
                )
            }),
            user_data: &user_data,
            ssh_keys: &ssh_keys,
            labels: &labels,
            network: &network,
            public_ips,
            service_account: compute.config.vm_service_account.as_deref(),
        });
        let mut body = body;
        if let Some(p) = &placement_policy {
            body["resourcePolicies"] = json!([p]);
        }
        if let Some(res) = reservation {
            super::reservations::apply_to_instance(&mut body, res, zone, &project);
        }
        let instance: google_cloud_compute_v1::model::Instance = serde_json::from_value(body)
            .map_err(|e| BackendError::cloud("gcp", "Serialize", e.to_string()))?;
        let inserted = compute
            .call("instances.insert", || {
                let req = compute
                    .clients
                    .instances
                    .insert()
                    .set_project(project.clone())
                    .set_zone(zone.clone())
                    .set_body(instance.clone());
                async move { req.send().await.map_err(map_gax_error) }
            })
            .await;
        let outcome = match inserted {
            Ok(op) => wait_zone_operation(compute, zone, &op).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(waited) => {
                if waited == Waited::TimedOut {
                    tracing::debug!(%zone, instance = %name, "insert still running; polling later");
                }
                let data = GcpInstanceData {
                    zone: zone.clone(),
                    is_tpu: false,
                    public_ips: Some(public_ips),
                };
                return Ok(JobProvisioningData {
                    backend: BackendType::Gcp,
                    base_backend: None,
                    instance_type: offer.instance.clone(),
                    instance_id: name,
                    hostname: None,
                    internal_ip: None,
                    public_ip_enabled: public_ips,
                    instance_network: None,
                    region: region.to_string(),
                    availability_zone: Some(zone.clone()),
                    reservation: config.reservation.clone(),
                    price: offer.price,
                    username: USERNAME.to_string(),
                    ssh_port: Some(22),
                    dockerized: true,
                    ssh_proxy: None,
                    backend_data: serde_json::to_string(&data).ok(),
                    gpu_driver: None,
                });
            }
            Err(BackendError::NoCapacity { message }) => {
                tracing::info!(%zone, %message, "no capacity; trying the next zone");
                let quota = is_quota_text(&message);
                failures.push(format!("{zone}: {message}"));
                if quota {
                    break;
                }
            }
            // The zone lacks the machine or accelerator type, or is unavailable (dstack moves
            // on for NotFound and ServiceUnavailable).
            Err(e) if is_not_found(&e) || http_status_of(&e).is_some_and(|s| s >= 500) => {
                tracing::info!(%zone, error = %e, "zone failed; trying the next zone");
                failures.push(format!("{zone}: {e}"));
            }
            Err(e @ BackendError::Cloud { .. })
                if e.to_string()
                    .contains("Network profile only allows resource creation in location") =>
            {
                failures.push(format!("{zone}: {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    Err(BackendError::NoCapacity {
        message: format!(
            "{instance_type}{} in {region}: {}",
            if spot { " (spot)" } else { "" },
            failures.join("; ")
        ),
    })
}

/// `update_provisioning_data`: waits while `PROVISIONING`/`STAGING`, fills the external (or,
/// with `public_ips: false`, the internal) IP once `RUNNING`; a missing or stopped instance
/// is a [`BackendError::Provisioning`].
pub async fn update_provisioning_data(
    compute: &GcpCompute,
    jpd: &mut JobProvisioningData,
) -> BackendResult<()> {
    let data = GcpInstanceData::parse(jpd.backend_data.as_deref(), &jpd.region);
    if data.is_tpu {
        return super::tpu::update_provisioning_data(compute, jpd, &data).await;
    }
    let project = compute.config.project_id.clone();
    let name = jpd.instance_id.clone();
    let got = compute
        .call("instances.get", || {
            let req = compute
                .clients
                .instances
                .get()
                .set_project(project.clone())
                .set_zone(data.zone.clone())
                .set_instance(name.clone());
            async move { req.send().await.map_err(map_gax_error) }
        })
        .await;
    let instance = match got {
        Ok(i) => i,
        Err(e) if is_not_found(&e) => {
            return Err(BackendError::Provisioning {
                message: format!(
                    "Failed to get instance IP address. Instance {name} not found in {}.",
                    data.zone
                ),
            });
        }
        Err(e) => return Err(e),
    };
    let status = instance
        .status
        .as_ref()
        .and_then(|s| s.name())
        .unwrap_or("")
        .to_string();
    match status.as_str() {
        "" | "PROVISIONING" | "STAGING" | "PENDING" => Ok(()),
        "RUNNING" => {
            let nic = instance.network_interfaces.first();
            let internal = nic.and_then(|n| n.network_ip.clone());
            let external = nic
                .and_then(|n| n.access_configs.first())
                .and_then(|a| a.nat_ip.clone());
            let public = data.public_ips.unwrap_or(true);
            let hostname = if public { external } else { internal.clone() };
            if hostname.is_some() {
                jpd.hostname = hostname;
                jpd.internal_ip = internal;
            }
            Ok(())
        }
        other => Err(BackendError::Provisioning {
            message: format!(
                "Failed to get instance IP address. Instance {name} status: {other}{}",
                instance
                    .status_message
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ),
        }),
    }
}

/// `terminate_instance`: `instances.delete` in the instance's zone; a missing instance is a
/// success. The delete operation is not awaited.
pub async fn terminate(
    compute: &GcpCompute,
    instance_id: &str,
    region: &str,
    backend_data: Option<&str>,
) -> BackendResult<()> {
    let data = GcpInstanceData::parse(backend_data, region);
    if data.is_tpu {
        return super::tpu::terminate(compute, instance_id, &data).await;
    }
    let project = compute.config.project_id.clone();
    let result = compute
        .call("instances.delete", || {
            let req = compute
                .clients
                .instances
                .delete()
                .set_project(project.clone())
                .set_zone(data.zone.clone())
                .set_instance(instance_id.to_string());
            async move { req.send().await.map_err(map_gax_error) }
        })
        .await;
    super::errors::deletion_started(result, "instance", instance_id, &data.zone)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn images_accelerators_names() {
        assert_eq!(
            image_for("e2-standard-4", None),
            "projects/dstack/global/images/dstack-0-14"
        );
        assert_eq!(
            image_for("n1-standard-4", Some("T4")),
            "projects/dstack/global/images/dstack-cuda-0-14"
        );
        assert_eq!(
            image_for("n1-standard-4", Some("V100")),
            "projects/dstack/global/images/dstack-cuda-0-10"
        );
        assert_eq!(accelerator_for("T4", 16384), Some("nvidia-tesla-t4"));
        assert_eq!(accelerator_for("T4", 1), None);
        let cfg = InstanceConfiguration::new(
            "Main Project",
            uuid::Uuid::nil(),
            "my-fleet-0".repeat(10),
            vec![],
        );
        let n = unique_instance_name(&cfg);
        assert!(n.len() <= 63 && is_valid_resource_name(&n), "{n}");
        assert!(n.starts_with("dstack-main-project-my-fleet-0"));
        let d = GcpInstanceData::parse(None, "us-central1-a");
        assert_eq!(
            (d.zone.as_str(), d.public_ips),
            ("us-central1-a", Some(true))
        );
        let d = GcpInstanceData::parse(Some(r#"{"zone":"z","is_tpu":false}"#), "r");
        assert_eq!((d.zone.as_str(), d.public_ips), ("z", Some(true)));
    }
}
