//! VPC and subnet choice, and the project security group.
//!
//! VPC: `vpc_ids[region]`, else the VPC tagged `Name=<vpc_name>`, else (with `default_vpcs`,
//! the default) the region's default VPC. Subnets: with `public_ips` (default) those whose
//! route table (explicit association, else the VPC's main table) routes to an internet
//! gateway; with `public_ips: false` those whose table does not (private subnets), preferring
//! ones with a NAT or other egress route so the agent can be downloaded.

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, ResourceType, UserIdGroupPair};

use super::AwsCompute;
use super::errors::{code_of, map_sdk_error};
use crate::backends::common::tags::{ResourceTags, TagIds};
use crate::backends::error::{BackendError, BackendResult};

/// A subnet to launch into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetChoice {
    /// The subnet id.
    pub subnet_id: String,
    /// Its zone.
    pub availability_zone: String,
}

/// The network an instance goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkChoice {
    /// The VPC.
    pub vpc_id: String,
    /// The VPC's IPv4 CIDR.
    pub vpc_cidr: Option<String>,
    /// Candidate subnets, one or more per zone.
    pub subnets: Vec<SubnetChoice>,
    /// Whether instances get public IPs.
    pub public_ips: bool,
}

/// Builds the tag specification for a resource type.
pub fn tag_spec(rt: ResourceType, tags: &ResourceTags) -> aws_sdk_ec2::types::TagSpecification {
    let mut b = aws_sdk_ec2::types::TagSpecification::builder().resource_type(rt);
    for (k, v) in tags.iter() {
        b = b.tags(aws_sdk_ec2::types::Tag::builder().key(k).value(v).build());
    }
    b.build()
}

async fn find_vpc(compute: &AwsCompute, region: &str) -> BackendResult<(String, Option<String>)> {
    let cfg = &compute.config;
    let ec2 = compute.region(region).ec2;
    let (filter, what) = if let Some(id) = cfg.vpc_ids.as_ref().and_then(|m| m.get(region)) {
        (
            Filter::builder().name("vpc-id").values(id).build(),
            format!("VPC {id}"),
        )
    } else if let Some(name) = &cfg.vpc_name {
        (
            Filter::builder().name("tag:Name").values(name).build(),
            format!("VPC named {name:?}"),
        )
    } else if cfg.default_vpcs.unwrap_or(true) {
        (
            Filter::builder().name("is-default").values("true").build(),
            "default VPC".to_string(),
        )
    } else {
        return Err(BackendError::Config {
            message: format!(
                "No VPC configured for region {region}: add it to vpc_ids or set default_vpcs"
            ),
        });
    };
    let out = compute
        .call("DescribeVpcs", || {
            let ec2 = ec2.clone();
            let filter = filter.clone();
            async move {
                ec2.describe_vpcs()
                    .filters(filter)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await?;
    let vpc = out
        .vpcs()
        .iter()
        .find(|v| v.vpc_id().is_some())
        .ok_or_else(|| BackendError::Config {
            message: format!("No {what} in region {region}"),
        })?;
    Ok((
        vpc.vpc_id().unwrap_or_default().to_string(),
        vpc.cidr_block().map(str::to_string),
    ))
}

/// Resolves the VPC and the candidate subnets in `region` (cached per region and VPC
/// settings for [`NETWORK_TTL`](super::cache::NETWORK_TTL)).
pub async fn resolve(compute: &AwsCompute, region: &str) -> BackendResult<NetworkChoice> {
    let cfg = &compute.config;
    let key = (
        region.to_string(),
        cfg.vpc_ids.as_ref().and_then(|m| m.get(region)).cloned(),
        cfg.vpc_name.clone(),
        cfg.default_vpcs.unwrap_or(true),
        cfg.public_ips.unwrap_or(true),
    );
    compute
        .lookups
        .networks
        .get_or_try_fetch(key, || resolve_uncached(compute, region))
        .await
}

/// The uncached `DescribeVpcs` + `DescribeSubnets` + `DescribeRouteTables` behind [`resolve`].
async fn resolve_uncached(compute: &AwsCompute, region: &str) -> BackendResult<NetworkChoice> {
    let public_ips = compute.config.public_ips.unwrap_or(true);
    let (vpc_id, vpc_cidr) = find_vpc(compute, region).await?;
    let ec2 = compute.region(region).ec2;
    let vpc_filter = Filter::builder().name("vpc-id").values(&vpc_id).build();
    let subnets = compute
        .call("DescribeSubnets", || {
            let ec2 = ec2.clone();
            let f = vpc_filter.clone();
            async move {
                ec2.describe_subnets()
                    .filters(f)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await?;
    let tables = compute
        .call("DescribeRouteTables", || {
            let ec2 = ec2.clone();
            let f = vpc_filter.clone();
            async move {
                ec2.describe_route_tables()
                    .filters(f)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await?;
    let main_table = tables
        .route_tables()
        .iter()
        .find(|t| t.associations().iter().any(|a| a.main() == Some(true)));
    // (subnet, has IGW route, has other egress route)
    let mut classified = Vec::new();
    for s in subnets.subnets() {
        let (Some(id), Some(az)) = (s.subnet_id(), s.availability_zone()) else {
            continue;
        };
        let table = tables
            .route_tables()
            .iter()
            .find(|t| t.associations().iter().any(|a| a.subnet_id() == Some(id)))
            .or(main_table);
        let routes = table.map(|t| t.routes()).unwrap_or_default();
        let igw = routes
            .iter()
            .any(|r| r.gateway_id().is_some_and(|g| g.starts_with("igw-")));
        let egress = routes.iter().any(|r| {
            r.nat_gateway_id().is_some()
                || r.transit_gateway_id().is_some()
                || r.network_interface_id().is_some()
                || r.instance_id().is_some()
        });
        classified.push((
            SubnetChoice {
                subnet_id: id.to_string(),
                availability_zone: az.to_string(),
            },
            igw,
            egress,
        ));
    }
    let chosen: Vec<SubnetChoice> = if public_ips {
        classified
            .into_iter()
            .filter(|(_, igw, _)| *igw)
            .map(|(s, _, _)| s)
            .collect()
    } else {
        let private: Vec<_> = classified.into_iter().filter(|(_, igw, _)| !*igw).collect();
        let with_egress: Vec<SubnetChoice> = private
            .iter()
            .filter(|(_, _, e)| *e)
            .map(|(s, _, _)| s.clone())
            .collect();
        if with_egress.is_empty() {
            if !private.is_empty() {
                tracing::warn!(
                    region,
                    vpc_id,
                    "private subnets have no NAT or other egress route; instances may not be able to download the agent"
                );
            }
            private.into_iter().map(|(s, _, _)| s).collect()
        } else {
            with_egress
        }
    };
    if chosen.is_empty() {
        return Err(BackendError::Config {
            message: format!(
                "No {} subnets in VPC {vpc_id} ({region})",
                if public_ips {
                    "public (routed to an internet gateway)"
                } else {
                    "private (not routed to an internet gateway)"
                }
            ),
        });
    }
    Ok(NetworkChoice {
        vpc_id,
        vpc_cidr,
        subnets: chosen,
        public_ips,
    })
}

/// The project's security group in the VPC (created on first use): SSH from anywhere when
/// instances are public, everything between members of the group; egress open. The id is
/// cached per region, project and VPC for
/// [`SECURITY_GROUP_TTL`](super::cache::SECURITY_GROUP_TTL); concurrent first calls create
/// the group once.
pub async fn ensure_security_group(
    compute: &AwsCompute,
    region: &str,
    project: &str,
    network: &NetworkChoice,
) -> BackendResult<String> {
    let key = (
        region.to_string(),
        project.to_string(),
        network.vpc_id.clone(),
        network.public_ips,
        network.vpc_cidr.clone(),
    );
    compute
        .lookups
        .security_groups
        .get_or_try_fetch(key, || {
            ensure_security_group_uncached(compute, region, project, network)
        })
        .await
}

/// The uncached find-or-create behind [`ensure_security_group`].
async fn ensure_security_group_uncached(
    compute: &AwsCompute,
    region: &str,
    project: &str,
    network: &NetworkChoice,
) -> BackendResult<String> {
    let name = format!("dstack_security_group_{project}");
    let ec2 = compute.region(region).ec2;
    let filters = [
        Filter::builder().name("group-name").values(&name).build(),
        Filter::builder()
            .name("vpc-id")
            .values(&network.vpc_id)
            .build(),
    ];
    let find = || async {
        let out = compute
            .call("DescribeSecurityGroups", || {
                let ec2 = ec2.clone();
                let f = filters.to_vec();
                async move {
                    ec2.describe_security_groups()
                        .set_filters(Some(f))
                        .send()
                        .await
                        .map_err(map_sdk_error)
                }
            })
            .await?;
        Ok::<_, BackendError>(
            out.security_groups()
                .iter()
                .find_map(|g| g.group_id().map(str::to_string)),
        )
    };
    if let Some(id) = find().await? {
        return Ok(id);
    }
    let tags = ResourceTags::new(
        &TagIds {
            server_id: &compute.settings.server_id,
            project,
            name: &name,
            user: None,
            fleet_id: None,
            instance_id: None,
        },
        compute.backend_tags(),
        None,
    );
    let created = compute
        .call("CreateSecurityGroup", || {
            let ec2 = ec2.clone();
            let spec = tag_spec(ResourceType::SecurityGroup, &tags);
            let (name, vpc) = (name.clone(), network.vpc_id.clone());
            async move {
                ec2.create_security_group()
                    .group_name(name)
                    .description("Used by dstack")
                    .vpc_id(vpc)
                    .tag_specifications(spec)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    let group_id = match created {
        Ok(out) => out.group_id().unwrap_or_default().to_string(),
        Err(e) if code_of(&e) == Some("InvalidGroup.Duplicate") => find().await?.ok_or(e)?,
        Err(e) => return Err(e),
    };
    let mut perms = vec![
        IpPermission::builder()
            .ip_protocol("-1")
            .user_id_group_pairs(UserIdGroupPair::builder().group_id(&group_id).build())
            .build(),
    ];
    if network.public_ips {
        perms.push(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .build(),
        );
    } else if let Some(cidr) = &network.vpc_cidr {
        perms.push(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
                .build(),
        );
    }
    let r = compute
        .call("AuthorizeSecurityGroupIngress", || {
            let ec2 = ec2.clone();
            let (g, p) = (group_id.clone(), perms.clone());
            async move {
                ec2.authorize_security_group_ingress()
                    .group_id(g)
                    .set_ip_permissions(Some(p))
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    match r {
        Ok(_) => {}
        Err(e) if code_of(&e) == Some("InvalidPermission.Duplicate") => {}
        Err(e) => return Err(e),
    }
    Ok(group_id)
}
