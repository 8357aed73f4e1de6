//! Resource group, network security group, virtual network and subnet for a location.
//!
//! What dstack's configurator creates at backend setup is ensured here lazily, once per
//! resource group and location (and cached):
//! - the resource group: `resource_group` from the config (must exist), else
//!   `dstack-<project>`, created on first use;
//! - the NSG `<rg>-<location>-default-security-group`: SSH (22/tcp) from anywhere and all
//!   traffic from inside the virtual network;
//! - the network: `subnet_ids[location]` (`rg/network/subnet`) or `vpc_ids[location]`
//!   (`rg/network`: its first eligible subnet) when configured — nothing is created then —
//!   else `<rg>-<location>-default-network` (10.0.0.0/16) with the subnet
//!   `<rg>-<location>-default-subnet` (10.0.0.0/20), created on first use.
//!
//! With `public_ips: false` only subnets with outbound connectivity qualify (a NAT gateway,
//! or a peered network), as in dstack.

use serde_json::{Value, json};

use super::AzureCompute;
use super::arm::api;
use super::errors::ArmError;
use crate::backends::common::tags::{ResourceTags, TagIds};
use crate::backends::error::{BackendError, BackendResult};

/// The address space of a default network.
pub const DEFAULT_VNET_CIDR: &str = "10.0.0.0/16";
/// The address prefix of a default subnet.
pub const DEFAULT_SUBNET_CIDR: &str = "10.0.0.0/20";

/// The network a VM of one location goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkChoice {
    /// The resource group of the network (may differ from the VM's with `vpc_ids`).
    pub network_resource_group: String,
    /// The virtual network.
    pub vnet: String,
    /// The subnet.
    pub subnet: String,
    /// The subnet's resource id.
    pub subnet_id: String,
    /// The subnet's address prefix, when known.
    pub subnet_cidr: Option<String>,
    /// The NSG's resource id (in the backend's resource group).
    pub nsg_id: String,
}

/// The default network name of `rg` in `location` (dstack's naming).
pub fn default_network_name(rg: &str, location: &str) -> String {
    format!("{rg}-{location}-default-network")
}

/// The default subnet name of `rg` in `location`.
pub fn default_subnet_name(rg: &str, location: &str) -> String {
    format!("{rg}-{location}-default-subnet")
}

/// The default NSG name of `rg` in `location`.
pub fn default_nsg_name(rg: &str, location: &str) -> String {
    format!("{rg}-{location}-default-security-group")
}

/// Splits `a/b[/c]` into exactly `n` non-empty parts.
pub fn split_id(s: &str, n: usize) -> Option<Vec<String>> {
    let parts: Vec<String> = s.split('/').map(|p| p.trim().to_string()).collect();
    (parts.len() == n && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

/// Tags as ARM's `tags` object; keys and values Azure rejects (`<>&\%?/` in keys, keys
/// over 512 or values over 256 characters) are dropped with a warning, as dstack does.
pub fn arm_tags(tags: &ResourceTags) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in tags.iter() {
        if is_valid_tag(k, v) {
            out.insert(k.to_string(), Value::String(v.to_string()));
        } else {
            tracing::warn!(key = k, "skipping a tag Azure does not accept");
        }
    }
    Value::Object(out)
}

/// Azure's tag rules.
pub fn is_valid_tag(key: &str, value: &str) -> bool {
    !key.is_empty()
        && key.chars().count() <= 512
        && !key.chars().any(|c| "<>&\\%?/".contains(c))
        && value.chars().count() <= 256
}

fn shared_tags(compute: &AzureCompute, project: &str, name: &str) -> Value {
    arm_tags(&ResourceTags::new(
        &TagIds {
            server_id: &compute.settings.server_id,
            project,
            name,
            user: None,
            fleet_id: None,
            instance_id: None,
        },
        compute.config.tags.as_ref(),
        None,
    ))
}

fn config_error(message: String) -> BackendError {
    BackendError::Config { message }
}

/// Makes sure the resource group exists: a configured one must; `dstack-<project>` is
/// created in `location` when missing.
async fn ensure_resource_group(
    compute: &AzureCompute,
    rg: &str,
    project: &str,
    location: &str,
) -> BackendResult<()> {
    let path = compute.arm.rg_path(rg);
    if compute.arm.get_opt(&path, api::RESOURCES).await?.is_some() {
        return Ok(());
    }
    if compute.config.resource_group.is_some() {
        return Err(config_error(format!(
            "Resource group {rg} not found in subscription {}",
            compute.arm.subscription()
        )));
    }
    tracing::info!(resource_group = rg, location, "creating the resource group");
    let body = json!({"location": location, "tags": shared_tags(compute, project, rg)});
    compute.arm.put(&path, api::RESOURCES, &body).await?;
    Ok(())
}

async fn ensure_nsg(
    compute: &AzureCompute,
    rg: &str,
    project: &str,
    location: &str,
) -> BackendResult<String> {
    let name = default_nsg_name(rg, location);
    let id = compute
        .arm
        .resource_id(rg, "Microsoft.Network/networkSecurityGroups", &name);
    if compute.arm.get_opt(&id, api::NETWORK).await?.is_some() {
        return Ok(id);
    }
    tracing::info!(nsg = %name, location, "creating the network security group");
    let rule = |name: &str, priority: u32, source: &str, port: &str, protocol: &str| {
        json!({"name": name, "properties": {
            "priority": priority, "direction": "Inbound", "access": "Allow",
            "protocol": protocol, "sourceAddressPrefix": source, "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": port,
        }})
    };
    let body = json!({
        "location": location,
        "tags": shared_tags(compute, project, &name),
        "properties": {"securityRules": [
            rule("dstack_ssh", 100, "Internet", "22", "Tcp"),
            rule("dstack_vnet", 110, "VirtualNetwork", "*", "*"),
        ]},
    });
    let resp = compute.arm.put(&id, api::NETWORK, &body).await?;
    compute
        .arm
        .wait_ok(&resp, api::NETWORK, compute.lro_timeout, "NSG creation")
        .await?;
    Ok(id)
}

/// Whether `subnet` gives private VMs outbound connectivity (a NAT gateway, or the network
/// is peered).
async fn private_ok(
    compute: &AzureCompute,
    rg: &str,
    vnet: &str,
    subnet: &Value,
) -> BackendResult<bool> {
    if subnet.pointer("/properties/natGateway/id").is_some() {
        return Ok(true);
    }
    let path = format!(
        "{}/virtualNetworkPeerings",
        compute
            .arm
            .resource_id(rg, "Microsoft.Network/virtualNetworks", vnet)
    );
    Ok(!compute.arm.list(&path, api::NETWORK).await?.is_empty())
}

fn choice(rg: &str, vnet: &str, subnet: &Value, nsg_id: &str) -> NetworkChoice {
    let name = subnet
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    NetworkChoice {
        network_resource_group: rg.to_string(),
        vnet: vnet.to_string(),
        subnet_id: subnet
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        subnet_cidr: subnet
            .pointer("/properties/addressPrefix")
            .and_then(Value::as_str)
            .map(str::to_string),
        subnet: name,
        nsg_id: nsg_id.to_string(),
    }
}

/// The configured network (`subnet_ids` / `vpc_ids`) of `location`, if any.
async fn configured(
    compute: &AzureCompute,
    location: &str,
    nsg_id: &str,
) -> BackendResult<Option<NetworkChoice>> {
    let public = compute.public_ips();
    if let Some(s) = compute
        .config
        .subnet_ids
        .as_ref()
        .and_then(|m| m.get(location))
    {
        let parts = split_id(s, 3).ok_or_else(|| {
            config_error(format!(
                "Invalid subnet_ids value {s:?}: expected networkResourceGroup/networkName/subnetName"
            ))
        })?;
        let (rg, vnet, name) = (&parts[0], &parts[1], &parts[2]);
        let path = format!(
            "{}/subnets/{name}",
            compute
                .arm
                .resource_id(rg, "Microsoft.Network/virtualNetworks", vnet)
        );
        let subnet = compute
            .arm
            .get_opt(&path, api::NETWORK)
            .await?
            .ok_or_else(|| {
                config_error(format!(
                    "Subnet {name} of network {vnet} not found in resource group {rg}"
                ))
            })?;
        return Ok(Some(choice(rg, vnet, &subnet, nsg_id)));
    }
    let Some(vpc_ids) = &compute.config.vpc_ids else {
        return Ok(None);
    };
    let vpc = vpc_ids
        .get(location)
        .ok_or_else(|| config_error(format!("Network not configured for location {location}")))?;
    let parts = split_id(vpc, 2).ok_or_else(|| {
        config_error(format!(
            "Invalid vpc_ids value {vpc:?}: expected networkResourceGroupName/networkName"
        ))
    })?;
    let (rg, vnet) = (&parts[0], &parts[1]);
    let path = format!(
        "{}/subnets",
        compute
            .arm
            .resource_id(rg, "Microsoft.Network/virtualNetworks", vnet)
    );
    let subnets = match compute.arm.list(&path, api::NETWORK).await {
        Ok(s) => s,
        Err(e) if e.is_not_found() => {
            return Err(config_error(format!(
                "Network {vnet} not found in location {location} in resource group {rg}"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    for subnet in &subnets {
        if public || private_ok(compute, rg, vnet, subnet).await? {
            return Ok(Some(choice(rg, vnet, subnet, nsg_id)));
        }
    }
    Err(config_error(if public {
        format!("Failed to find subnets in network {vnet}")
    } else {
        format!(
            "Failed to find private subnets with outbound internet connectivity in network {vnet}"
        )
    }))
}

async fn ensure_default_network(
    compute: &AzureCompute,
    rg: &str,
    project: &str,
    location: &str,
    nsg_id: &str,
) -> BackendResult<NetworkChoice> {
    let vnet = default_network_name(rg, location);
    let subnet = default_subnet_name(rg, location);
    let vnet_path = compute
        .arm
        .resource_id(rg, "Microsoft.Network/virtualNetworks", &vnet);
    let subnet_path = format!("{vnet_path}/subnets/{subnet}");
    let existing = match compute.arm.get_opt(&subnet_path, api::NETWORK).await {
        Ok(v) => v,
        Err(e) => return Err(e.into()),
    };
    let subnet_v = match existing {
        Some(v) => v,
        None => {
            tracing::info!(vnet = %vnet, location, "creating the default network");
            let body = json!({
                "location": location,
                "tags": shared_tags(compute, project, &vnet),
                "properties": {
                    "addressSpace": {"addressPrefixes": [DEFAULT_VNET_CIDR]},
                    "subnets": [{"name": subnet, "properties": {"addressPrefix": DEFAULT_SUBNET_CIDR}}],
                },
            });
            let resp = compute.arm.put(&vnet_path, api::NETWORK, &body).await?;
            compute
                .arm
                .wait_ok(&resp, api::NETWORK, compute.lro_timeout, "network creation")
                .await?;
            compute
                .arm
                .get(&subnet_path, api::NETWORK)
                .await
                .map_err(|e: ArmError| BackendError::from(e))?
        }
    };
    if !compute.public_ips() && !private_ok(compute, rg, &vnet, &subnet_v).await? {
        return Err(config_error(format!(
            "Failed to find private subnets with outbound internet connectivity in network {vnet}; \
             set vpc_ids to a network with a NAT gateway to use public_ips: false"
        )));
    }
    Ok(choice(rg, &vnet, &subnet_v, nsg_id))
}

/// The network of `location` for VMs in `rg` (created on first use, then cached).
#[tracing::instrument(level = "debug", skip(compute), fields(backend = "azure"))]
pub async fn resolve(
    compute: &AzureCompute,
    rg: &str,
    project: &str,
    location: &str,
) -> BackendResult<NetworkChoice> {
    let key = format!("{rg}/{location}");
    if let Some(c) = compute.cache_get_network(&key) {
        return Ok(c);
    }
    ensure_resource_group(compute, rg, project, location).await?;
    let nsg_id = ensure_nsg(compute, rg, project, location).await?;
    let choice = match configured(compute, location, &nsg_id).await? {
        Some(c) => c,
        None => ensure_default_network(compute, rg, project, location, &nsg_id).await?,
    };
    compute.cache_put_network(key, choice.clone());
    Ok(choice)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids() {
        assert_eq!(
            default_nsg_name("dstack-main", "westeurope"),
            "dstack-main-westeurope-default-security-group"
        );
        assert_eq!(split_id("rg/net", 2).unwrap(), ["rg", "net"]);
        assert!(split_id("rg/net/sub", 2).is_none());
        assert!(split_id("rg/", 2).is_none());
        assert!(is_valid_tag("team", "ml"));
        assert!(!is_valid_tag("a/b", "x"));
    }
}
