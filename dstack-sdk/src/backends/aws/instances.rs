//! Instances: `RunInstances` per subnet/zone with fall-through, polling with
//! `DescribeInstances`, and idempotent termination (spot request and Elastic IP included).

use std::collections::HashSet;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, CapacityReservationSpecification, CapacityReservationTarget,
    CapacityReservationType, EbsBlockDevice, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceNetworkInterfaceSpecification, InstanceStateName, MarketType, Placement, ResourceType,
    SpotInstanceType, SpotMarketOptions, VolumeType,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::AwsCompute;
use super::errors::{code_of, map_sdk_error};
use super::images::find_image;
use super::networking::{ensure_security_group, resolve, tag_spec};
use super::sweep::TAG_ALLOCATED_AT;
use crate::backends::common::cloud_init::{AgentBootstrap, render_cloud_config};
use crate::backends::common::tags::ResourceTags;
use crate::backends::compute::{InstanceConfiguration, PlacementGroupProvisioningData};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::{AcceleratorVendor, CpuArch};

/// How long `InvalidInstanceID.NotFound` right after launch is taken for EC2's eventual
/// consistency rather than a vanished instance, seconds.
pub const NOT_FOUND_GRACE_SECS: i64 = 120;

/// Codes that mean the whole account/region is out of quota (not one zone): stop trying
/// further zones of the offer.
const ACCOUNT_WIDE_CODES: &[&str] = &[
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "MaxSpotInstanceCountExceeded",
];

/// What `JobProvisioningData.backend_data` holds for AWS instances (a JSON string).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsInstanceData {
    /// The one-time spot request, cancelled on termination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_request_id: Option<String>,
    /// The Elastic IP allocated for multi-interface (EFA) instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip_allocation_id: Option<String>,
    /// Its association.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eip_association_id: Option<String>,
    /// EFA interfaces attached (0 = plain ENA).
    #[serde(default)]
    pub efa_interfaces: u32,
    /// Whether the instance was meant to get a public IP.
    #[serde(default = "yes")]
    pub public_ips: bool,
    /// Launch time (unix seconds), for the not-found grace period.
    #[serde(default)]
    pub launched_at: i64,
}

fn yes() -> bool {
    true
}

impl AwsInstanceData {
    fn parse(s: Option<&str>) -> Self {
        s.and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Self {
                public_ips: true,
                ..Self::default()
            })
    }

    fn to_json(&self) -> Option<String> {
        serde_json::to_string(self).ok()
    }
}

/// Instance families that support cluster placement groups with EFA.
pub fn supports_cluster(instance_type: &str) -> bool {
    [
        "p4d.", "p4de.", "p5.", "p5e.", "p5en.", "p6-b200.", "p6-b300.", "g5.", "g6.", "g6e.",
        "c5n.", "m7i.", "c7i.",
    ]
    .iter()
    .any(|f| instance_type.starts_with(f))
}

fn arch_of(offer: &InstanceOfferWithAvailability) -> &'static str {
    match offer.instance.resources.cpu_arch {
        Some(CpuArch::Arm) => "arm64",
        _ => "amd64",
    }
}

async fn max_efa_interfaces(compute: &AwsCompute, region: &str, instance_type: &str) -> u32 {
    let ec2 = compute.region(region).ec2;
    let out = compute
        .call("DescribeInstanceTypes", || {
            let ec2 = ec2.clone();
            let t = instance_type.to_string();
            async move {
                ec2.describe_instance_types()
                    .instance_types(aws_sdk_ec2::types::InstanceType::from(t.as_str()))
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    match out {
        Ok(out) => out
            .instance_types()
            .first()
            .and_then(|t| t.network_info())
            .and_then(|n| n.efa_info())
            .and_then(|e| e.maximum_efa_interfaces())
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        Err(e) => {
            tracing::warn!(instance_type, error = %e, "cannot read EFA support; using ENA");
            0
        }
    }
}

/// Reservation facts: (zone, instance type, is capacity block).
async fn reservation_facts(
    compute: &AwsCompute,
    region: &str,
    reservation: &str,
) -> BackendResult<(Option<String>, Option<String>, bool)> {
    let ec2 = compute.region(region).ec2;
    let out = compute
        .call("DescribeCapacityReservations", || {
            let ec2 = ec2.clone();
            let r = reservation.to_string();
            async move {
                ec2.describe_capacity_reservations()
                    .capacity_reservation_ids(r)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await
        .map_err(|e| match e {
            BackendError::Cloud { code, message, .. } if code.contains("NotFound") => {
                BackendError::NoCapacity {
                    message: format!("reservation {reservation}: {code}: {message}"),
                }
            }
            other => other,
        })?;
    let Some(r) = out.capacity_reservations().first() else {
        return Err(BackendError::NoCapacity {
            message: format!("reservation {reservation} not found in {region}"),
        });
    };
    Ok((
        r.availability_zone().map(str::to_string),
        r.instance_type().map(str::to_string),
        matches!(
            r.reservation_type(),
            Some(CapacityReservationType::CapacityBlock)
        ),
    ))
}

/// `create_instance`: see the module docs.
pub async fn create_instance(
    compute: &AwsCompute,
    offer: &InstanceOfferWithAvailability,
    config: &InstanceConfiguration,
    placement_group: Option<&PlacementGroupProvisioningData>,
) -> BackendResult<JobProvisioningData> {
    let region = offer.region.as_str();
    let instance_type = offer.instance.name.as_str();
    let spot = offer.instance.resources.spot;
    let arch = arch_of(offer);
    let nvidia = offer
        .instance
        .resources
        .gpus
        .first()
        .is_some_and(|g| g.vendor == AcceleratorVendor::Nvidia);

    // Reservation first: it pins the zone and type.
    let mut reservation_zone = None;
    let mut capacity_block = false;
    if let Some(r) = &config.reservation {
        let (zone, rtype, block) = reservation_facts(compute, region, r).await?;
        if rtype.as_deref().is_some_and(|t| t != instance_type) {
            return Err(BackendError::NoCapacity {
                message: format!(
                    "reservation {r} is for {}, not {instance_type}",
                    rtype.unwrap_or_default()
                ),
            });
        }
        reservation_zone = zone;
        capacity_block = block;
    }

    let image = find_image(compute, region, nvidia, arch).await?;
    let network = resolve(compute, region).await?;
    let sg = ensure_security_group(compute, region, &config.project_name, &network).await?;
    let efa = match placement_group {
        Some(_) if supports_cluster(instance_type) => {
            max_efa_interfaces(compute, region, instance_type).await
        }
        _ => 0,
    };

    // Subnets in the offer's zones (in the offer's order), or all.
    let mut subnets = network.subnets.clone();
    if let Some(zones) = &offer.availability_zones {
        subnets = zones
            .iter()
            .flat_map(|z| {
                network
                    .subnets
                    .iter()
                    .filter(move |s| &s.availability_zone == z)
                    .cloned()
            })
            .collect();
    }
    if let Some(z) = &reservation_zone {
        subnets.retain(|s| &s.availability_zone == z);
    }
    if subnets.is_empty() {
        return Err(BackendError::NoCapacity {
            message: format!(
                "no {} subnet of VPC {} in zones {:?}",
                if network.public_ips {
                    "public"
                } else {
                    "private"
                },
                network.vpc_id,
                offer.availability_zones
            ),
        });
    }

    let bootstrap = AgentBootstrap::new(&compute.settings, arch)
        .with_env("DSTACK_BACKEND", "aws")
        .with_firewall(network.vpc_cidr.iter().cloned().collect());
    let user_data = render_cloud_config(&config.ssh_public_keys, &bootstrap);
    let user_data_b64 = base64::engine::general_purpose::STANDARD.encode(user_data.as_bytes());
    let tags =
        ResourceTags::for_instance(&compute.settings.server_id, config, compute.backend_tags());
    let disk_gb = config
        .disk_size_gb
        .map(i64::from)
        .unwrap_or_else(|| (offer.instance.resources.disk.size_mib as f64 / 1024.0).ceil() as i64);
    let disk_gb = i32::try_from(disk_gb.max(20)).unwrap_or(i32::MAX);

    let ec2 = compute.region(region).ec2;
    let mut failures: Vec<String> = Vec::new();
    let mut exhausted_zones: HashSet<String> = HashSet::new();
    for subnet in &subnets {
        if exhausted_zones.contains(&subnet.availability_zone) {
            continue;
        }
        let interfaces: Vec<InstanceNetworkInterfaceSpecification> = if efa > 0 {
            (0..efa)
                .map(|i| {
                    InstanceNetworkInterfaceSpecification::builder()
                        .network_card_index(i as i32)
                        .device_index(if i == 0 { 0 } else { 1 })
                        .interface_type("efa")
                        .subnet_id(&subnet.subnet_id)
                        .groups(&sg)
                        .delete_on_termination(true)
                        .set_associate_public_ip_address(if efa == 1 {
                            Some(network.public_ips)
                        } else {
                            None
                        })
                        .build()
                })
                .collect()
        } else {
            vec![
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(&subnet.subnet_id)
                    .groups(&sg)
                    .associate_public_ip_address(network.public_ips)
                    .delete_on_termination(true)
                    .build(),
            ]
        };
        let mut placement = Placement::builder().availability_zone(&subnet.availability_zone);
        if let Some(pg) = placement_group {
            placement = placement.group_name(&pg.name);
        }
        let placement = placement.build();
        let market = if capacity_block {
            Some(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::CapacityBlock)
                    .build(),
            )
        } else if spot {
            Some(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            )
        } else {
            None
        };
        let reservation_spec = config.reservation.as_ref().map(|r| {
            CapacityReservationSpecification::builder()
                .capacity_reservation_target(
                    CapacityReservationTarget::builder()
                        .capacity_reservation_id(r)
                        .build(),
                )
                .build()
        });
        let block = BlockDeviceMapping::builder()
            .device_name(&image.root_device_name)
            .ebs(
                EbsBlockDevice::builder()
                    .volume_size(disk_gb)
                    .volume_type(VolumeType::Gp3)
                    .delete_on_termination(true)
                    .build(),
            )
            .build();
        let profile = compute
            .config
            .iam_instance_profile
            .as_ref()
            .map(|p| IamInstanceProfileSpecification::builder().name(p).build());
        let mut specs = vec![
            tag_spec(ResourceType::Instance, &tags),
            tag_spec(ResourceType::Volume, &tags),
            tag_spec(ResourceType::NetworkInterface, &tags),
        ];
        if spot && !capacity_block {
            specs.push(tag_spec(ResourceType::SpotInstancesRequest, &tags));
        }
        let started = chrono::Utc::now().timestamp();
        let result = compute
            .call("RunInstances", || {
                let req = ec2
                    .run_instances()
                    .image_id(&image.image_id)
                    .instance_type(aws_sdk_ec2::types::InstanceType::from(instance_type))
                    .min_count(1)
                    .max_count(1)
                    .user_data(&user_data_b64)
                    .set_network_interfaces(Some(interfaces.clone()))
                    .placement(placement.clone())
                    .block_device_mappings(block.clone())
                    .set_tag_specifications(Some(specs.clone()))
                    .set_instance_market_options(market.clone())
                    .set_capacity_reservation_specification(reservation_spec.clone())
                    .set_iam_instance_profile(profile.clone());
                async move { req.send().await.map_err(map_sdk_error) }
            })
            .await;
        let out = match result {
            Ok(out) => out,
            Err(BackendError::NoCapacity { message }) => {
                tracing::info!(
                    zone = %subnet.availability_zone,
                    subnet = %subnet.subnet_id,
                    %message,
                    "no capacity; trying the next zone"
                );
                let account_wide = ACCOUNT_WIDE_CODES.iter().any(|c| message.starts_with(c));
                failures.push(format!("{}: {message}", subnet.availability_zone));
                if account_wide {
                    break;
                }
                if !message.starts_with("InsufficientFreeAddressesInSubnet") {
                    exhausted_zones.insert(subnet.availability_zone.clone());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(instance) = out.instances().first() else {
            return Err(BackendError::cloud(
                "aws",
                "EmptyResponse",
                "RunInstances returned no instance",
            ));
        };
        let instance_id = instance.instance_id().unwrap_or_default().to_string();
        let data = AwsInstanceData {
            spot_request_id: instance.spot_instance_request_id().map(str::to_string),
            eip_allocation_id: None,
            eip_association_id: None,
            efa_interfaces: efa,
            public_ips: network.public_ips,
            launched_at: started,
        };
        tracing::info!(
            %instance_id,
            zone = %subnet.availability_zone,
            subnet = %subnet.subnet_id,
            efa,
            "instance launched"
        );
        return Ok(JobProvisioningData {
            backend: BackendType::Aws,
            base_backend: None,
            instance_type: offer.instance.clone(),
            instance_id,
            hostname: None,
            internal_ip: instance.private_ip_address().map(str::to_string),
            public_ip_enabled: network.public_ips,
            instance_network: None,
            region: region.to_string(),
            availability_zone: Some(subnet.availability_zone.clone()),
            reservation: config.reservation.clone(),
            price: offer.price,
            username: image.username.clone(),
            ssh_port: Some(22),
            dockerized: true,
            ssh_proxy: None,
            backend_data: data.to_json(),
            gpu_driver: None,
        });
    }
    Err(BackendError::NoCapacity {
        message: format!(
            "{instance_type}{} in {region}: {}",
            if spot { " (spot)" } else { "" },
            failures.join("; ")
        ),
    })
}

/// `update_provisioning_data`: see the module docs.
pub async fn update_provisioning_data(
    compute: &AwsCompute,
    jpd: &mut JobProvisioningData,
) -> BackendResult<()> {
    let mut data = AwsInstanceData::parse(jpd.backend_data.as_deref());
    let ec2 = compute.region(&jpd.region).ec2;
    let id = jpd.instance_id.clone();
    let out = compute
        .call("DescribeInstances", || {
            let ec2 = ec2.clone();
            let id = id.clone();
            async move {
                ec2.describe_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    let vanished = |why: &str| {
        let age = chrono::Utc::now().timestamp() - data.launched_at;
        if data.launched_at > 0 && age < NOT_FOUND_GRACE_SECS {
            tracing::debug!(instance_id = %id, age, "not visible yet; polling again later");
            Ok(())
        } else {
            Err(BackendError::Provisioning {
                message: format!("instance {id} vanished while provisioning ({why})"),
            })
        }
    };
    let out = match out {
        Ok(o) => o,
        Err(e) if code_of(&e) == Some("InvalidInstanceID.NotFound") => {
            return vanished("InvalidInstanceID.NotFound");
        }
        Err(e) => return Err(e),
    };
    let Some(instance) = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(id.as_str()))
    else {
        return vanished("not listed");
    };
    let state = instance
        .state()
        .and_then(|s| s.name())
        .cloned()
        .unwrap_or(InstanceStateName::Pending);
    match state {
        InstanceStateName::Pending => return Ok(()),
        InstanceStateName::Running => {}
        other => {
            let reason = instance
                .state_reason()
                .map(|r| {
                    format!(
                        "{}: {}",
                        r.code().unwrap_or_default(),
                        r.message().unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            return Err(BackendError::Provisioning {
                message: format!(
                    "instance {id} is {} while provisioning {reason}",
                    other.as_str()
                ),
            });
        }
    }
    let private_ip = instance.private_ip_address().map(str::to_string);
    let mut public_ip = instance.public_ip_address().map(str::to_string);
    // AWS never auto-assigns a public IP to an instance with several interfaces.
    if data.public_ips && data.efa_interfaces > 1 && data.eip_allocation_id.is_none() {
        public_ip = Some(attach_elastic_ip(compute, jpd, instance, &mut data).await?);
        jpd.backend_data = data.to_json();
    }
    jpd.internal_ip = private_ip.clone();
    jpd.hostname = if data.public_ips {
        public_ip
    } else {
        private_ip
    };
    if jpd.hostname.is_none() {
        // Running without the address yet: poll again.
        return Ok(());
    }
    jpd.ssh_port = Some(22);
    if let Some(z) = instance.placement().and_then(|p| p.availability_zone()) {
        jpd.availability_zone = Some(z.to_string());
    }
    Ok(())
}

/// Multi-interface (EFA) instances get no automatic public IP: allocate an Elastic IP
/// (tagged like the instance, which names the server and the instance row, plus
/// [`TAG_ALLOCATED_AT`] for the sweep's grace period) and associate it with the primary
/// interface. When the association fails the address is released again at once (best
/// effort: one left behind is unassociated and tagged, so the engine's sweep releases it
/// once the instance row is gone).
async fn attach_elastic_ip(
    compute: &AwsCompute,
    jpd: &JobProvisioningData,
    instance: &aws_sdk_ec2::types::Instance,
    data: &mut AwsInstanceData,
) -> BackendResult<String> {
    let ec2 = compute.region(&jpd.region).ec2;
    let eni = instance
        .network_interfaces()
        .iter()
        .find(|n| {
            n.attachment().is_some_and(|a| {
                a.device_index() == Some(0) && a.network_card_index().unwrap_or(0) == 0
            })
        })
        .and_then(|n| n.network_interface_id())
        .map(str::to_string)
        .ok_or_else(|| BackendError::Provisioning {
            message: format!(
                "instance {} has no primary network interface",
                jpd.instance_id
            ),
        })?;
    let mut tags: Vec<(String, String)> = instance
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .filter(|(k, _)| k != TAG_ALLOCATED_AT)
        .collect();
    tags.push((
        TAG_ALLOCATED_AT.to_string(),
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    ));
    let alloc = compute
        .call("AllocateAddress", || {
            let ec2 = ec2.clone();
            let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(ResourceType::ElasticIp);
            for (k, v) in &tags {
                spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
            }
            let spec = spec.build();
            async move {
                ec2.allocate_address()
                    .domain(aws_sdk_ec2::types::DomainType::Vpc)
                    .tag_specifications(spec)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await?;
    let allocation_id = alloc.allocation_id().unwrap_or_default().to_string();
    data.eip_allocation_id = Some(allocation_id.clone());
    let assoc = compute
        .call("AssociateAddress", || {
            let ec2 = ec2.clone();
            let (a, n) = (allocation_id.clone(), eni.clone());
            async move {
                ec2.associate_address()
                    .allocation_id(a)
                    .network_interface_id(n)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    let assoc = match assoc {
        Ok(a) => a,
        Err(e) => {
            // The provisioning data is not saved on error: release the address now rather
            // than allocate another on the next poll.
            let released = release_address(compute, &ec2, &allocation_id).await;
            if let Err(re) = released {
                tracing::warn!(allocation_id = %allocation_id, error = %re,
                    "cannot release the Elastic IP after a failed association; the sweep will");
            }
            data.eip_allocation_id = None;
            return Err(e);
        }
    };
    data.eip_association_id = assoc.association_id().map(str::to_string);
    Ok(alloc.public_ip().unwrap_or_default().to_string())
}

/// `terminate_instance`: see the module docs.
pub async fn terminate(
    compute: &AwsCompute,
    instance_id: &str,
    region: &str,
    backend_data: Option<&str>,
) -> BackendResult<()> {
    let data = AwsInstanceData::parse(backend_data);
    let ec2 = compute.region(region).ec2;
    let r = compute
        .call("TerminateInstances", || {
            let ec2 = ec2.clone();
            let id = instance_id.to_string();
            async move {
                ec2.terminate_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    match r {
        Ok(_) => {}
        Err(e)
            if matches!(
                code_of(&e),
                Some("InvalidInstanceID.NotFound") | Some("InvalidInstanceID.Malformed")
            ) =>
        {
            tracing::info!(instance_id, "instance not found; already terminated");
        }
        Err(e) if !e.is_retryable() => {
            // Some failures only mean there is nothing left to terminate (an emulator fails on
            // the deleted interface of a terminated instance): check the instance's state.
            if !already_gone(compute, region, instance_id).await {
                return Err(e);
            }
            tracing::info!(instance_id, error = %e, "instance already terminated");
        }
        Err(e) => return Err(e),
    }
    if let Some(req) = &data.spot_request_id {
        let r = compute
            .call("CancelSpotInstanceRequests", || {
                let ec2 = ec2.clone();
                let req = req.clone();
                async move {
                    ec2.cancel_spot_instance_requests()
                        .spot_instance_request_ids(req)
                        .send()
                        .await
                        .map_err(map_sdk_error)
                }
            })
            .await;
        ok_if_not_found(r)?;
    }
    if let Some(alloc) = &data.eip_allocation_id {
        if let Some(assoc) = &data.eip_association_id {
            let r = compute
                .call("DisassociateAddress", || {
                    let ec2 = ec2.clone();
                    let a = assoc.clone();
                    async move {
                        ec2.disassociate_address()
                            .association_id(a)
                            .send()
                            .await
                            .map_err(map_sdk_error)
                    }
                })
                .await;
            ok_if_not_found(r)?;
        }
        let r = release_address(compute, &ec2, alloc).await;
        match ok_if_not_found(r) {
            Ok(()) => {}
            Err(e) if code_of(&e) == Some("InvalidIPAddress.InUse") => {
                return Err(BackendError::NotYetTerminated {
                    message: format!("Elastic IP {alloc} of {instance_id} is still in use"),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `instance_id` is terminated, shutting down or unknown.
async fn already_gone(compute: &AwsCompute, region: &str, instance_id: &str) -> bool {
    let ec2 = compute.region(region).ec2;
    let out = compute
        .call("DescribeInstances", || {
            let ec2 = ec2.clone();
            let id = instance_id.to_string();
            async move {
                ec2.describe_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    match out {
        Ok(out) => out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter(|i| i.instance_id() == Some(instance_id))
            .all(|i| {
                matches!(
                    i.state().and_then(|s| s.name()),
                    Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)
                )
            }),
        Err(e) => code_of(&e) == Some("InvalidInstanceID.NotFound"),
    }
}

/// A cleanup call whose target is already gone (`*NotFound`) succeeded.
fn ok_if_not_found<T>(r: BackendResult<T>) -> BackendResult<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if code_of(&e).is_some_and(|c| c.contains("NotFound")) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `ReleaseAddress` of one Elastic IP; errors as they come (callers decide what a
/// not-found or an address still in use means).
pub(super) async fn release_address(
    compute: &AwsCompute,
    ec2: &aws_sdk_ec2::Client,
    allocation_id: &str,
) -> BackendResult<()> {
    compute
        .call("ReleaseAddress", || {
            let ec2 = ec2.clone();
            let a = allocation_id.to_string();
            async move {
                ec2.release_address()
                    .allocation_id(a)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await
        .map(|_| ())
}
