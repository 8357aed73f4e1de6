//! The resources this server tagged, in every configured region (the `aws` catalog's
//! regions when none are configured), for the engine's sweep:
//!
//! - instances: `DescribeInstances` filtered by the `dstack_server_id` tag, skipping those
//!   shutting down or terminated;
//! - Elastic IPs ([`TaggedKind::Address`]): `DescribeAddresses` filtered by the same tag.
//!   [`create_instance`](super::instances) allocates one for multi-interface (EFA) instances
//!   and tags it like the instance, plus [`TAG_ALLOCATED_AT`] (the allocation time, since
//!   `DescribeAddresses` gives none; the sweep's grace period counts from it). An associated
//!   address is listed with [`TaggedInstance::attached_to`] set, which the sweep never
//!   touches; [`delete_tagged`] releases an unassociated one (`ReleaseAddress`; an address
//!   already released is a success).
//!
//! The engine's sweep compares them with the database and deletes the leaked ones: instances
//! with [`Compute::terminate_instance`](crate::backends::Compute::terminate_instance),
//! addresses with [`delete_tagged`].

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Address, Filter, Instance};
use chrono::{DateTime, Utc};

use super::AwsCompute;
use super::errors::{code_of, map_sdk_error};
use crate::backends::common::tags::{TAG_INSTANCE_ID, TAG_SERVER_ID};
use crate::backends::compute::{TaggedInstance, TaggedKind};
use crate::backends::error::BackendResult;

/// The tag holding when an Elastic IP was allocated (RFC 3339, UTC, whole seconds): the age
/// the sweep's grace period is measured against.
pub const TAG_ALLOCATED_AT: &str = "dstack_allocated_at";

/// The states listed (everything that still runs or can run again).
pub const LISTED_STATES: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// The regions to look in: `regions` of the config, else every region of the `aws` catalog.
fn sweep_regions(compute: &AwsCompute) -> Vec<String> {
    if let Some(regions) = &compute.config.regions {
        return regions.clone();
    }
    let catalog = compute.settings.catalog.snapshot();
    let regions: BTreeSet<String> = catalog
        .provider("aws")
        .map(|p| p.items())
        .unwrap_or_default()
        .iter()
        .map(|i| i.location.to_string())
        .collect();
    if regions.is_empty() {
        vec![compute.home_region().to_string()]
    } else {
        regions.into_iter().collect()
    }
}

/// `TaggedInstance` from an EC2 instance of `region`.
fn tagged(region: &str, i: &Instance) -> Option<TaggedInstance> {
    let id = i.instance_id()?;
    let state = i
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string())
        .unwrap_or_default();
    let mut t = TaggedInstance::new(id, region, state);
    t.zone = i
        .placement()
        .and_then(|p| p.availability_zone())
        .map(str::to_string);
    t.dstack_instance_id = i
        .tags()
        .iter()
        .find(|tag| tag.key() == Some(TAG_INSTANCE_ID))
        .and_then(|tag| tag.value())
        .map(str::to_string);
    t.created_at = i
        .launch_time()
        .and_then(|lt| DateTime::<Utc>::from_timestamp(lt.secs(), lt.subsec_nanos()));
    Some(t)
}

/// The instances tagged `dstack_server_id = server_id` in one region.
async fn list_region(
    compute: &AwsCompute,
    region: &str,
    server_id: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    let ec2 = compute.region(region).ec2;
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let t = token.clone();
        let page = compute
            .call("DescribeInstances", || {
                let ec2 = ec2.clone();
                let t = t.clone();
                let server = Filter::builder()
                    .name(format!("tag:{TAG_SERVER_ID}"))
                    .values(server_id)
                    .build();
                let state = Filter::builder()
                    .name("instance-state-name")
                    .set_values(Some(LISTED_STATES.iter().map(|s| s.to_string()).collect()))
                    .build();
                async move {
                    ec2.describe_instances()
                        .filters(server)
                        .filters(state)
                        .set_next_token(t)
                        .send()
                        .await
                        .map_err(map_sdk_error)
                }
            })
            .await?;
        out.extend(
            page.reservations()
                .iter()
                .flat_map(|r| r.instances())
                // The filter is the cloud's; the state check guards emulators that ignore it.
                .filter(|i| {
                    i.state()
                        .and_then(|s| s.name())
                        .is_none_or(|n| LISTED_STATES.contains(&n.as_str()))
                })
                .filter_map(|i| tagged(region, i)),
        );
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// `TaggedInstance` from an Elastic IP of `region`.
fn tagged_address(region: &str, a: &Address) -> Option<TaggedInstance> {
    let id = a.allocation_id()?;
    let tag = |key: &str| {
        a.tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    let attached_to = a
        .association_id()
        .or(a.instance_id())
        .or(a.network_interface_id())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let state = if attached_to.is_some() {
        "associated"
    } else {
        "unassociated"
    };
    let mut t = TaggedInstance::new(id, region, state).with_kind(TaggedKind::Address);
    t.dstack_instance_id = tag(TAG_INSTANCE_ID);
    t.created_at = tag(TAG_ALLOCATED_AT)
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|d| d.with_timezone(&Utc));
    t.attached_to = attached_to;
    Some(t)
}

/// The Elastic IPs tagged `dstack_server_id = server_id` in one region (`DescribeAddresses`
/// is not paged).
async fn list_region_addresses(
    compute: &AwsCompute,
    region: &str,
    server_id: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    let ec2 = compute.region(region).ec2;
    let out = compute
        .call("DescribeAddresses", || {
            let ec2 = ec2.clone();
            let server = Filter::builder()
                .name(format!("tag:{TAG_SERVER_ID}"))
                .values(server_id)
                .build();
            async move {
                ec2.describe_addresses()
                    .filters(server)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await?;
    Ok(out
        .addresses()
        .iter()
        // The filter is the cloud's; the tag check guards emulators that ignore it.
        .filter(|a| {
            a.tags()
                .iter()
                .any(|t| t.key() == Some(TAG_SERVER_ID) && t.value() == Some(server_id))
        })
        .filter_map(|a| tagged_address(region, a))
        .collect())
}

/// `list_tagged_instances`: see the module docs. A region that cannot be listed (e.g. not
/// enabled for the account) is skipped with a warning (missing resources are only not
/// swept); the first error is returned when no region could be listed.
pub async fn list_tagged_instances(
    compute: &AwsCompute,
    server_id: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    let mut out = Vec::new();
    let mut listed = false;
    let mut first_error = None;
    for region in sweep_regions(compute) {
        let found = match list_region(compute, &region, server_id).await {
            Ok(mut found) => list_region_addresses(compute, &region, server_id)
                .await
                .map(|addresses| {
                    found.extend(addresses);
                    found
                }),
            Err(e) => Err(e),
        };
        match found {
            Ok(found) => {
                listed = true;
                out.extend(found);
            }
            Err(e) => {
                tracing::warn!(region = %region, error = %e, "cannot list tagged resources");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if !listed => Err(e),
        _ => Ok(out),
    }
}

/// `delete_tagged`: releases an Elastic IP (already released: a success); terminates
/// anything else with [`super::instances::terminate`].
pub async fn delete_tagged(compute: &AwsCompute, t: &TaggedInstance) -> BackendResult<()> {
    if t.kind != TaggedKind::Address {
        return super::instances::terminate(
            compute,
            &t.instance_id,
            &t.region,
            t.backend_data.as_deref(),
        )
        .await;
    }
    let ec2 = compute.region(&t.region).ec2;
    let r = super::instances::release_address(compute, &ec2, &t.instance_id).await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if code_of(&e).is_some_and(|c| c.contains("NotFound")) => {
            tracing::info!(allocation_id = %t.instance_id, "Elastic IP already released");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Tag;

    #[test]
    fn address_to_tagged() {
        let tags = [
            (TAG_SERVER_ID, "srv"),
            (TAG_INSTANCE_ID, "i-row"),
            (TAG_ALLOCATED_AT, "2024-05-01T10:00:00Z"),
        ];
        let mut a = Address::builder().allocation_id("eipalloc-1");
        for (k, v) in tags {
            a = a.tags(Tag::builder().key(k).value(v).build());
        }
        let t = tagged_address("us-east-1", &a.clone().build()).unwrap();
        assert_eq!(t.kind, TaggedKind::Address);
        assert_eq!(t.instance_id, "eipalloc-1");
        assert_eq!(t.state, "unassociated");
        assert_eq!(t.attached_to, None);
        assert_eq!(t.dstack_instance_id.as_deref(), Some("i-row"));
        assert_eq!(
            t.created_at.unwrap().to_rfc3339(),
            "2024-05-01T10:00:00+00:00"
        );
        let t = tagged_address("us-east-1", &a.association_id("eipassoc-1").build()).unwrap();
        assert_eq!(t.attached_to.as_deref(), Some("eipassoc-1"));
        assert_eq!(t.state, "associated");
    }
}
