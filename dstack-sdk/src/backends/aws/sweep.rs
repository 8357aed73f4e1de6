//! The instances this server tagged: `DescribeInstances` filtered by the `dstack_server_id`
//! tag in every configured region (the `aws` catalog's regions when none are configured),
//! skipping instances that are shutting down or terminated. The engine's sweep compares them
//! with the database and terminates the leaked ones with
//! [`Compute::terminate_instance`](crate::backends::Compute::terminate_instance).

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Filter, Instance};
use chrono::{DateTime, Utc};

use super::AwsCompute;
use super::errors::map_sdk_error;
use crate::backends::common::tags::{TAG_INSTANCE_ID, TAG_SERVER_ID};
use crate::backends::compute::TaggedInstance;
use crate::backends::error::BackendResult;

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

/// `list_tagged_instances`: see the module docs. A region that cannot be listed (e.g. not
/// enabled for the account) is skipped with a warning (missing instances are only not swept);
/// the first error is returned when no region could be listed.
pub async fn list_tagged_instances(
    compute: &AwsCompute,
    server_id: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    let mut out = Vec::new();
    let mut listed = false;
    let mut first_error = None;
    for region in sweep_regions(compute) {
        match list_region(compute, &region, server_id).await {
            Ok(found) => {
                listed = true;
                out.extend(found);
            }
            Err(e) => {
                tracing::warn!(region = %region, error = %e, "cannot list tagged instances");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if !listed => Err(e),
        _ => Ok(out),
    }
}
