//! Virtual machines: creation (public IP → NIC → VM), polling, and idempotent termination.
//!
//! `create_instance` creates, all tagged with the instance's ids:
//! 1. the public IP `<vm>-ip` (Standard, static) unless `public_ips: false`;
//! 2. the NIC `<vm>-nic` in the chosen subnet, with the location's NSG;
//! 3. the VM `<vm>` (`PUT …/virtualMachines/<vm>`): the size, dstack's image, an OS disk
//!    `<vm>-disk` (StandardSSD, deleted with the VM), user `ubuntu` with the SSH keys, the
//!    cloud-init user data that installs the host agent, priority `Spot` with
//!    `evictionPolicy: Delete` and `billingProfile.maxPrice: -1` for spot offers, and the
//!    `vm_managed_identity` when configured.
//!
//! Like dstack (`_create_instance_and_wait`), it then waits for the VM's creation, at most
//! the VM create timeout (600 s by default, as dstack's `poller.result(timeout=600)`):
//! - the operation fails (`AllocationFailed`, `OverconstrainedAllocationRequest`,
//!   `ZonalAllocationFailed`, `SkuNotAvailable`, …; see
//!   [`CAPACITY_CODES`](super::errors::CAPACITY_CODES)) → `NoCapacity`, other codes → a
//!   cloud error;
//! - the operation succeeds but the VM's `provisioningState` is `Failed` → `NoCapacity`;
//! - the timeout passes → a cloud error (`Timeout`).
//!
//! In each case the VM, its NIC, public IP and OS disk are deleted first, so nothing is left
//! and the caller tries its next offer. A synchronous rejection of the `PUT` (e.g.
//! `SkuNotAvailable`, `OperationNotAllowed` for quota) is handled the same way. Once the VM
//! exists, the hostname (the public IP, or the private IP with `public_ips: false`) is
//! filled in at once, as dstack does.
//!
//! `update_provisioning_data` reads the VM: `Creating` → nothing yet; `Succeeded` → the NIC's
//! private IP and the public IP's address; `Failed` or gone (deleted, evicted) → everything
//! is deleted and a `Provisioning` error says why.
//!
//! Zones: dstack 0.22.5 creates regional VMs (no `zones`; "TODO: Support custom
//! availability_zones" in its `compute.py`), and so does this backend.
//!
//! `terminate_instance` deletes the VM, then the NIC, the public IP and the OS disk; a
//! missing resource counts as deleted. While Azure is still deleting, it answers
//! `NotYetTerminated`.

use base64::Engine as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::AzureCompute;
use super::arm::{ArmResponse, LroStatus, api};
use super::errors::{ArmError, PROVIDER};
use super::images::{IMAGE_USER, ImageVariant, image_id};
use super::network::{arm_tags, resolve};
use super::offers::MAX_DISK_GB;
use crate::backends::common::cloud_init::{AgentBootstrap, render_cloud_config};
use crate::backends::common::tags::ResourceTags;
use crate::backends::compute::InstanceConfiguration;
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;

/// Azure's longest VM name.
pub const MAX_NAME_LEN: usize = 64;
/// The VM's computer (host) name, as in dstack.
pub const COMPUTER_NAME: &str = "runnervm";

/// What `JobProvisioningData.backend_data` holds for Azure VMs (a JSON string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureInstanceData {
    /// The resource group of the VM, NIC, public IP and disk.
    pub resource_group: String,
    /// The location.
    pub location: String,
    /// The NIC.
    pub nic: String,
    /// The public IP resource, if one was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,
    /// The OS disk.
    pub disk: String,
}

impl AzureInstanceData {
    /// The names `create_instance` gives a VM's resources.
    pub fn for_vm(resource_group: &str, location: &str, vm: &str, public_ip: bool) -> Self {
        Self {
            resource_group: resource_group.to_string(),
            location: location.to_string(),
            nic: format!("{vm}-nic"),
            public_ip: public_ip.then(|| format!("{vm}-ip")),
            disk: format!("{vm}-disk"),
        }
    }

    fn to_json(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

/// A unique VM name from the instance name: `[A-Za-z0-9-]`, a random 8-hex suffix, at most
/// [`MAX_NAME_LEN`] characters (the NIC, IP and disk names add up to 5 more).
pub fn vm_name(instance_name: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let clean: String = instance_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    let base: String = clean.chars().take(MAX_NAME_LEN - 14).collect();
    let base = if base.is_empty() {
        "dstack"
    } else {
        base.trim_end_matches('-')
    };
    format!("{base}-{}", &suffix[..8])
}

fn vm_path(compute: &AzureCompute, rg: &str, name: &str) -> String {
    compute
        .arm
        .resource_id(rg, "Microsoft.Compute/virtualMachines", name)
}

fn nic_path(compute: &AzureCompute, rg: &str, name: &str) -> String {
    compute
        .arm
        .resource_id(rg, "Microsoft.Network/networkInterfaces", name)
}

fn ip_path(compute: &AzureCompute, rg: &str, name: &str) -> String {
    compute
        .arm
        .resource_id(rg, "Microsoft.Network/publicIPAddresses", name)
}

fn disk_path(compute: &AzureCompute, rg: &str, name: &str) -> String {
    compute.arm.resource_id(rg, "Microsoft.Compute/disks", name)
}

/// The VM's `PUT` body.
#[allow(clippy::too_many_arguments)]
pub fn vm_body(
    location: &str,
    size: &str,
    image_id: &str,
    disk: &str,
    disk_gb: u32,
    nic_id: &str,
    ssh_keys: &[String],
    user_data: &str,
    spot: bool,
    identity: Option<&str>,
    tags: &Value,
) -> Value {
    let keys: Vec<Value> = ssh_keys
        .iter()
        .map(|k| json!({"path": format!("/home/{IMAGE_USER}/.ssh/authorized_keys"), "keyData": k.trim()}))
        .collect();
    let mut props = json!({
        "hardwareProfile": {"vmSize": size},
        "storageProfile": {
            "imageReference": {"communityGalleryImageId": image_id},
            "osDisk": {
                "name": disk,
                "createOption": "FromImage",
                "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
                "diskSizeGB": disk_gb,
                "deleteOption": "Delete",
            },
        },
        "osProfile": {
            "computerName": COMPUTER_NAME,
            "adminUsername": IMAGE_USER,
            "linuxConfiguration": {"disablePasswordAuthentication": true, "ssh": {"publicKeys": keys}},
        },
        "networkProfile": {"networkInterfaces": [
            {"id": nic_id, "properties": {"primary": true, "deleteOption": "Delete"}}
        ]},
        "priority": if spot { "Spot" } else { "Regular" },
        "userData": base64::engine::general_purpose::STANDARD.encode(user_data.as_bytes()),
    });
    if spot {
        props["evictionPolicy"] = json!("Delete");
        props["billingProfile"] = json!({"maxPrice": -1});
    }
    let mut body = json!({"location": location, "tags": tags, "properties": props});
    if let Some(id) = identity {
        body["identity"] = json!({"type": "UserAssigned", "userAssignedIdentities": {id: {}}});
    }
    body
}

/// `create_instance`: see the module docs.
pub async fn create_instance(
    compute: &AzureCompute,
    offer: &InstanceOfferWithAvailability,
    config: &InstanceConfiguration,
) -> BackendResult<JobProvisioningData> {
    let location = offer.region.as_str();
    let size = offer.instance.name.as_str();
    let spot = offer.instance.resources.spot;
    let public = compute.public_ips();
    let rg = compute.resource_group_for(&config.project_name);
    let net = resolve(compute, &rg, &config.project_name, location).await?;
    let image = image_id(
        compute,
        location,
        ImageVariant::for_instance(&offer.instance),
    )
    .await?;

    let name = vm_name(&config.instance_name);
    let data = AzureInstanceData::for_vm(&rg, location, &name, public);
    let tags = arm_tags(&ResourceTags::for_instance(
        &compute.settings.server_id,
        config,
        compute.config.tags.as_ref(),
    ));
    let disk_gb = config
        .disk_size_gb
        .unwrap_or_else(|| (offer.instance.resources.disk.size_mib as f64 / 1024.0).round() as u32)
        .clamp(30, MAX_DISK_GB);
    let bootstrap = AgentBootstrap::new(&compute.settings, "amd64")
        .with_env("DSTACK_BACKEND", "azure")
        .with_firewall(net.subnet_cidr.iter().cloned().collect());
    let user_data = render_cloud_config(&config.ssh_public_keys, &bootstrap);

    // 1. Public IP.
    let ip_id = match &data.public_ip {
        Some(ip) => {
            let path = ip_path(compute, &rg, ip);
            let body = json!({
                "location": location, "tags": tags, "sku": {"name": "Standard"},
                "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"},
            });
            let r = async {
                let resp = compute.arm.put(&path, api::NETWORK, &body).await?;
                compute
                    .arm
                    .wait_ok(
                        &resp,
                        api::NETWORK,
                        compute.lro_timeout,
                        "public IP creation",
                    )
                    .await
            }
            .await;
            if let Err(e) = r {
                cleanup(compute, &data, false).await;
                return Err(e.into());
            }
            Some(path)
        }
        None => None,
    };

    // 2. NIC.
    let nic_id = nic_path(compute, &rg, &data.nic);
    let mut ip_config = json!({
        "primary": true, "privateIPAllocationMethod": "Dynamic", "subnet": {"id": net.subnet_id},
    });
    if let Some(id) = &ip_id {
        ip_config["publicIPAddress"] = json!({"id": id});
    }
    let nic_body = json!({
        "location": location, "tags": tags,
        "properties": {
            "networkSecurityGroup": {"id": net.nsg_id},
            "ipConfigurations": [{"name": "ip_config", "properties": ip_config}],
        },
    });
    let nic = async {
        let resp = compute.arm.put(&nic_id, api::NETWORK, &nic_body).await?;
        compute
            .arm
            .wait_ok(&resp, api::NETWORK, compute.lro_timeout, "NIC creation")
            .await?;
        Ok::<_, ArmError>(resp.body)
    }
    .await;
    let nic = match nic {
        Ok(v) => v,
        Err(e) => {
            cleanup(compute, &data, false).await;
            return Err(e.into());
        }
    };

    // 3. VM.
    let body = vm_body(
        location,
        size,
        &image,
        &data.disk,
        disk_gb,
        &nic_id,
        &config.ssh_public_keys,
        &user_data,
        spot,
        compute.managed_identity_id().as_deref(),
        &tags,
    );
    let path = vm_path(compute, &rg, &name);
    let resp = match compute.arm.put(&path, api::COMPUTE, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(vm = %name, error = %e, "VM creation rejected");
            cleanup(compute, &data, false).await;
            return Err(e.into());
        }
    };
    tracing::info!(vm = %name, location, size, spot, "VM requested; waiting for it");
    if let Err(e) = wait_for_vm(compute, &resp, &rg, &name).await {
        tracing::info!(vm = %name, error = %e, "VM creation failed; deleting what was created");
        delete_vm_and_wait(compute, &rg, &name).await;
        cleanup(compute, &data, true).await;
        return Err(e);
    }
    // The VM exists: its addresses are known now (a failed read leaves them to polling).
    let (internal_ip, hostname) = match addresses(compute, &data, public).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(vm = %name, error = %e, "cannot read the VM's addresses yet");
            (private_ip_of(&nic), None)
        }
    };
    tracing::info!(vm = %name, location, size, spot, "VM created");
    Ok(JobProvisioningData {
        backend: BackendType::Azure,
        base_backend: None,
        instance_type: offer.instance.clone(),
        instance_id: name,
        hostname,
        internal_ip,
        public_ip_enabled: public,
        instance_network: None,
        region: location.to_string(),
        availability_zone: None,
        reservation: None,
        price: offer.price,
        username: IMAGE_USER.to_string(),
        ssh_port: Some(22),
        dockerized: true,
        ssh_proxy: None,
        backend_data: data.to_json(),
        gpu_driver: None,
    })
}

/// Waits for the VM creation `resp` started, at most the VM create timeout, and checks the
/// VM's `provisioningState` (see the module docs for the errors).
async fn wait_for_vm(
    compute: &AzureCompute,
    resp: &ArmResponse,
    rg: &str,
    name: &str,
) -> BackendResult<()> {
    let timeout = compute.vm_create_timeout;
    match compute.arm.wait(resp, api::COMPUTE, timeout).await? {
        LroStatus::Succeeded => {}
        LroStatus::Failed(e) => return Err(e.into()),
        LroStatus::InProgress => {
            return Err(BackendError::Cloud {
                provider: PROVIDER.into(),
                code: "Timeout".into(),
                message: format!(
                    "Timed out waiting for instance {name} launch ({}s)",
                    timeout.as_secs_f64()
                ),
                retryable: false,
            });
        }
    }
    let path = format!("{}?$expand=instanceView", vm_path(compute, rg, name));
    let vm = compute.arm.get(&path, api::COMPUTE).await?;
    match vm
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
    {
        Some(s) if s.eq_ignore_ascii_case("failed") => Err(BackendError::NoCapacity {
            message: format!("VM {name} provisioning failed: {}", failure_reason(&vm)),
        }),
        _ => Ok(()),
    }
}

/// The NIC's private IP and the hostname: the public IP's address with `public`, else the
/// private IP.
async fn addresses(
    compute: &AzureCompute,
    data: &AzureInstanceData,
    public: bool,
) -> BackendResult<(Option<String>, Option<String>)> {
    let rg = &data.resource_group;
    let nic = compute
        .arm
        .get(&nic_path(compute, rg, &data.nic), api::NETWORK)
        .await?;
    let private_ip = private_ip_of(&nic);
    let hostname = if public {
        let ip_id = nic
            .pointer("/properties/ipConfigurations/0/properties/publicIPAddress/id")
            .and_then(Value::as_str);
        match ip_id {
            Some(id) => compute
                .arm
                .get(id, api::NETWORK)
                .await?
                .pointer("/properties/ipAddress")
                .and_then(Value::as_str)
                .map(str::to_string),
            None => None,
        }
    } else {
        private_ip.clone()
    };
    Ok((private_ip, hostname))
}

fn private_ip_of(nic: &Value) -> Option<String> {
    nic.pointer("/properties/ipConfigurations/0/properties/privateIPAddress")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Deletes the VM (if any) and waits for it up to the LRO timeout: its NIC and IP can only
/// go once it is gone.
async fn delete_vm_and_wait(compute: &AzureCompute, rg: &str, name: &str) {
    let path = vm_path(compute, rg, name);
    match compute.arm.delete(&path, api::COMPUTE).await {
        Ok(Some(resp)) => {
            if let Err(e) = compute
                .arm
                .wait_ok(&resp, api::COMPUTE, compute.lro_timeout, "VM deletion")
                .await
            {
                tracing::warn!(vm = name, error = %e, "VM deletion did not finish");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(vm = name, error = %e, "cannot delete the VM"),
    }
}

/// Best-effort deletion of the NIC, the public IP and (with `disk`) the OS disk, waiting up
/// to the LRO timeout for each; failures are logged (the resources carry the instance's tags
/// for a sweep).
async fn cleanup(compute: &AzureCompute, data: &AzureInstanceData, disk: bool) {
    if let Err(e) = delete_rest(compute, data, disk, compute.lro_timeout).await {
        tracing::warn!(nic = %data.nic, public_ip = ?data.public_ip, error = %e, "cleanup incomplete; resources may be left");
    }
}

/// Deletes the NIC, then the public IP, then (with `disk`) the OS disk, waiting up to `wait`
/// for each; `NotYetTerminated` when one is still in use or being deleted.
async fn delete_rest(
    compute: &AzureCompute,
    data: &AzureInstanceData,
    disk: bool,
    wait: Duration,
) -> BackendResult<()> {
    let rg = &data.resource_group;
    let mut targets = vec![(nic_path(compute, rg, &data.nic), api::NETWORK, "NIC")];
    if let Some(ip) = &data.public_ip {
        targets.push((ip_path(compute, rg, ip), api::NETWORK, "public IP"));
    }
    if disk {
        targets.push((disk_path(compute, rg, &data.disk), api::DISKS, "OS disk"));
    }
    for (path, version, what) in targets {
        let resp = match compute.arm.delete(&path, version).await {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) if in_use(&e) => {
                return Err(BackendError::NotYetTerminated {
                    message: format!("{what} is still in use: {e}"),
                });
            }
            Err(e) => return Err(e.into()),
        };
        match compute.arm.wait(&resp, version, wait).await? {
            LroStatus::Succeeded => {}
            LroStatus::InProgress => {
                return Err(BackendError::NotYetTerminated {
                    message: format!("{what} deletion in progress"),
                });
            }
            LroStatus::Failed(e) if e.is_not_found() => {}
            LroStatus::Failed(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether a delete failed because the resource is still attached or busy.
fn in_use(e: &ArmError) -> bool {
    e.status() == Some(409)
        || e.code().is_some_and(|c| {
            c.contains("InUse")
                || c.contains("CannotBeDeleted")
                || c == "AnotherOperationInProgress"
        })
}

fn parse_data(
    compute: &AzureCompute,
    vm: &str,
    region: &str,
    backend_data: Option<&str>,
) -> BackendResult<AzureInstanceData> {
    if let Some(d) = backend_data.and_then(|s| serde_json::from_str(s).ok()) {
        return Ok(d);
    }
    let rg = compute
        .config
        .resource_group
        .clone()
        .ok_or_else(|| BackendError::Config {
            message: format!(
                "no resource group known for VM {vm} (no backend data, none configured)"
            ),
        })?;
    Ok(AzureInstanceData::for_vm(
        &rg,
        region,
        vm,
        compute.public_ips(),
    ))
}

/// Why a VM failed, from its instance view (`ProvisioningState/failed/<Code>`).
fn failure_reason(vm: &Value) -> String {
    vm.pointer("/properties/instanceView/statuses")
        .and_then(Value::as_array)
        .and_then(|s| {
            s.iter().find(|st| {
                st.get("code")
                    .and_then(Value::as_str)
                    .is_some_and(|c| c.starts_with("ProvisioningState/failed"))
            })
        })
        .map(|st| {
            format!(
                "{}: {}",
                st.get("code").and_then(Value::as_str).unwrap_or_default(),
                st.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )
        })
        .unwrap_or_else(|| "provisioningState Failed".to_string())
}

/// `update_provisioning_data`: see the module docs.
pub async fn update_provisioning_data(
    compute: &AzureCompute,
    jpd: &mut JobProvisioningData,
) -> BackendResult<()> {
    let name = jpd.instance_id.clone();
    let data = parse_data(compute, &name, &jpd.region, jpd.backend_data.as_deref())?;
    let rg = &data.resource_group;
    let path = format!("{}?$expand=instanceView", vm_path(compute, rg, &name));
    let Some(vm) = compute.arm.get_opt(&path, api::COMPUTE).await? else {
        tracing::warn!(vm = %name, "VM vanished while provisioning; deleting its NIC and IP");
        cleanup(compute, &data, true).await;
        return Err(BackendError::Provisioning {
            message: format!("VM {name} no longer exists (deleted or evicted while provisioning)"),
        });
    };
    let state = vm
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
        .unwrap_or("Creating");
    match state {
        "Succeeded" => {}
        "Failed" | "Canceled" => {
            let reason = failure_reason(&vm);
            tracing::warn!(vm = %name, %reason, "VM failed to provision; deleting it");
            delete_vm_and_wait(compute, rg, &name).await;
            cleanup(compute, &data, true).await;
            return Err(BackendError::Provisioning {
                message: format!("VM {name} failed to provision: {reason}"),
            });
        }
        "Deleting" => {
            return Err(BackendError::Provisioning {
                message: format!("VM {name} is being deleted"),
            });
        }
        _ => return Ok(()),
    }
    let (private_ip, hostname) = addresses(compute, &data, jpd.public_ip_enabled).await?;
    jpd.internal_ip = private_ip;
    if hostname.is_none() {
        return Ok(());
    }
    jpd.hostname = hostname;
    jpd.ssh_port = Some(22);
    Ok(())
}

/// `terminate_instance`: see the module docs.
pub async fn terminate(
    compute: &AzureCompute,
    name: &str,
    region: &str,
    backend_data: Option<&str>,
) -> BackendResult<()> {
    let data = parse_data(compute, name, region, backend_data)?;
    let rg = &data.resource_group;
    let path = vm_path(compute, rg, name);
    if let Some(vm) = compute.arm.get_opt(&path, api::COMPUTE).await? {
        if vm
            .pointer("/properties/provisioningState")
            .and_then(Value::as_str)
            == Some("Deleting")
        {
            return Err(BackendError::NotYetTerminated {
                message: format!("VM {name} is being deleted"),
            });
        }
        if let Some(resp) = compute.arm.delete(&path, api::COMPUTE).await? {
            match compute
                .arm
                .wait(&resp, api::COMPUTE, compute.terminate_wait)
                .await?
            {
                LroStatus::Succeeded => {}
                LroStatus::Failed(e) if e.is_not_found() => {}
                LroStatus::Failed(e) => return Err(e.into()),
                LroStatus::InProgress => {
                    return Err(BackendError::NotYetTerminated {
                        message: format!("VM {name} deletion in progress"),
                    });
                }
            }
        }
        tracing::info!(vm = name, "VM deleted");
    } else {
        tracing::info!(vm = name, "VM not found; deleting what is left");
    }
    delete_rest(compute, &data, true, compute.terminate_wait).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bodies() {
        let n = vm_name("my fleet_0");
        assert!(
            n.starts_with("my-fleet-0-") && n.len() == "my-fleet-0-".len() + 8,
            "{n}"
        );
        assert!(vm_name(&"x".repeat(100)).len() <= MAX_NAME_LEN);
        let b = vm_body(
            "westeurope",
            "Standard_D2s_v3",
            "/CommunityGalleries/g/Images/i",
            "vm-disk",
            100,
            "/nic",
            &["ssh-ed25519 AAA k".into()],
            "#cloud-config",
            true,
            Some("/id"),
            &json!({"owner": "dstack"}),
        );
        assert_eq!(b["properties"]["priority"], "Spot");
        assert_eq!(b["properties"]["evictionPolicy"], "Delete");
        assert_eq!(b["properties"]["billingProfile"]["maxPrice"], -1);
        assert_eq!(b["identity"]["type"], "UserAssigned");
    }
}
