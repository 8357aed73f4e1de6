//! Cluster placement groups as Compute Engine resource policies, as dstack does
//! (`compute.py` `create_placement_group` / `delete_placement_group` /
//! `is_suitable_placement_group`):
//!
//! - create: `resourcePolicies.insert` in the group's region with a `groupPlacementPolicy`
//!   (`collocation: COLLOCATED`, `availabilityDomainCount: 1`); an existing policy of that
//!   name (409) is reused;
//! - instances created with the group get `resourcePolicies: [projects/…/resourcePolicies/…]`
//!   (see [`policy_resource_name`]);
//! - delete: `resourcePolicies.delete`, awaited; a missing policy is a success, one still
//!   attached to instances ("is already being used by") is
//!   [`BackendError::NotYetTerminated`] (dstack's `PlacementGroupInUseError`: retry later);
//! - a group suits an offer in the same region.

use reqwest::Method;
use serde_json::json;

use super::GcpCompute;
use super::errors::{http_status_of, is_not_found};
use super::operations::{Waited, wait_region_operation_rest};
use crate::backends::compute::{PlacementGroupConfig, PlacementGroupProvisioningData};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::offers::InstanceOfferWithAvailability;

/// The message fragment of GCP's answer for a policy that instances still use.
pub const IN_USE_TEXT: &str = "is already being used by";

/// `projects/{project}/regions/{region}/resourcePolicies/{name}` (dstack's
/// `get_placement_policy_resource_name`).
pub fn policy_resource_name(project: &str, region: &str, name: &str) -> String {
    format!("projects/{project}/regions/{region}/resourcePolicies/{name}")
}

/// The `ResourcePolicy` body of a placement group.
pub fn policy_body(name: &str, region: &str) -> serde_json::Value {
    json!({
        "name": name,
        "region": region,
        "groupPlacementPolicy": {
            "availabilityDomainCount": 1,
            "collocation": "COLLOCATED",
        },
    })
}

/// Creates the placement group's resource policy; an existing one is reused.
pub async fn create(
    compute: &GcpCompute,
    config: &PlacementGroupConfig,
) -> BackendResult<PlacementGroupProvisioningData> {
    let project = &compute.config.project_id;
    let region = &config.region;
    let url = compute.clients.rest.compute_url(&format!(
        "projects/{project}/regions/{region}/resourcePolicies"
    ));
    let body = policy_body(&config.name, region);
    let inserted = compute
        .rest(
            "resourcePolicies.insert",
            Method::POST,
            &url,
            &[],
            Some(&body),
        )
        .await;
    match inserted {
        Ok(op) => {
            if wait_region_operation_rest(compute, region, &op).await? == Waited::TimedOut {
                tracing::debug!(name = %config.name, %region, "resource policy insert still running");
            }
            tracing::info!(name = %config.name, %region, "placement group created");
        }
        Err(e) if http_status_of(&e) == Some(409) => {
            tracing::debug!(name = %config.name, %region, "placement group exists; reusing it");
        }
        Err(e) => return Err(e),
    }
    Ok(PlacementGroupProvisioningData {
        backend: BackendType::Gcp,
        name: config.name.clone(),
        region: region.clone(),
        backend_data: None,
    })
}

fn in_use(pg: &PlacementGroupProvisioningData, e: &BackendError) -> Option<BackendError> {
    e.to_string()
        .contains(IN_USE_TEXT)
        .then(|| BackendError::NotYetTerminated {
            message: format!("placement group {} is still in use: {e}", pg.name),
        })
}

/// Deletes the placement group's resource policy and waits for it; a missing one is a
/// success.
pub async fn delete(
    compute: &GcpCompute,
    pg: &PlacementGroupProvisioningData,
) -> BackendResult<()> {
    let url = compute.clients.rest.compute_url(&policy_resource_name(
        &compute.config.project_id,
        &pg.region,
        &pg.name,
    ));
    let deleted = compute
        .rest("resourcePolicies.delete", Method::DELETE, &url, &[], None)
        .await;
    let result = match deleted {
        Ok(op) => wait_region_operation_rest(compute, &pg.region, &op)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!(name = %pg.name, region = %pg.region, "placement group deleted");
            Ok(())
        }
        Err(e) if is_not_found(&e) => {
            tracing::debug!(name = %pg.name, "placement group not found");
            Ok(())
        }
        Err(e) => Err(in_use(pg, &e).unwrap_or(e)),
    }
}

/// Whether instances of `offer` can go into `pg`: the same region (dstack).
pub fn is_suitable(
    pg: &PlacementGroupProvisioningData,
    offer: &InstanceOfferWithAvailability,
) -> bool {
    pg.region == offer.region
}
