//! The resources this server labelled, for the engine's sweep:
//!
//! - VMs: `instances.aggregatedList` over every zone of the project, filtered by the
//!   `dstack_server_id` label (encoded as instance labels are, see
//!   [`ResourceTags::to_labels`]). Stopped instances (`TERMINATED` in GCP's terms) still
//!   exist and are listed; instances being stopped or deleted (`STOPPING`) are too, since a
//!   delete of those is harmless.
//! - Cloud TPU nodes ([`TaggedKind::TpuNode`]; created with the same labels as VMs, see
//!   [`tpu`](super::tpu)): the TPU v2 API has no aggregated list and no label filter, so
//!   `nodes.list` (`GET /v2/projects/{p}/locations/{zone}/nodes`, paged by `nextPageToken`)
//!   runs in every zone where a TPU node could have been created — the zones of the `gcp`
//!   catalog's TPU rows in the configured regions, whether `tpu` is on now or not — and the
//!   labels are checked here. Nodes being deleted (`DELETING`) are skipped. A 403 (the Cloud
//!   TPU API is not enabled in the project, or the credentials may not use it) means this
//!   server cannot have created TPU nodes there and ends the TPU listing quietly; a zone that
//!   cannot be listed otherwise is skipped with a warning. The listed backend data
//!   (`is_tpu: true`) makes [`Compute::terminate_instance`](crate::backends::Compute::terminate_instance)
//!   delete the node through the TPU API.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use super::GcpCompute;
use super::errors::{http_status_of, is_not_found};
use super::instances::GcpInstanceData;
use super::offers::zone_region;
use crate::backends::common::tags::{ResourceTags, TAG_INSTANCE_ID, TAG_SERVER_ID, TagIds};
use crate::backends::compute::{TaggedInstance, TaggedKind};
use crate::backends::error::{BackendError, BackendResult};

/// The label value GCP holds for `server_id` (lowercase, `[a-z0-9_-]`, at most 63).
fn server_label(server_id: &str) -> String {
    let ids = TagIds {
        server_id,
        project: "",
        name: "",
        user: None,
        fleet_id: None,
        instance_id: None,
    };
    ResourceTags::new(&ids, None, None)
        .to_labels()
        .get(TAG_SERVER_ID)
        .cloned()
        .unwrap_or_default()
}

/// The region of a zone (`us-central1-a` → `us-central1`).
fn region_of(zone: &str) -> String {
    zone.rsplit_once('-')
        .map_or(zone, |(region, _)| region)
        .to_string()
}

/// `TaggedInstance` from an instance resource.
fn tagged(instance: &Value) -> Option<TaggedInstance> {
    let name = instance["name"].as_str()?;
    let zone_url = instance["zone"].as_str()?;
    let zone = zone_url.rsplit('/').next().unwrap_or(zone_url).to_string();
    let state = instance["status"].as_str().unwrap_or_default();
    let mut t = TaggedInstance::new(name, region_of(&zone), state);
    t.dstack_instance_id = instance["labels"][TAG_INSTANCE_ID]
        .as_str()
        .map(str::to_string);
    t.created_at = instance["creationTimestamp"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc));
    let public_ips = instance["networkInterfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|n| n["accessConfigs"].as_array().is_some_and(|a| !a.is_empty()));
    let data = GcpInstanceData {
        zone: zone.clone(),
        is_tpu: false,
        public_ips: Some(public_ips),
    };
    t.backend_data = serde_json::to_string(&data).ok();
    t.zone = Some(zone);
    Some(t)
}

/// The labelled VMs (`instances.aggregatedList`).
async fn list_vms(compute: &GcpCompute, label: &str) -> BackendResult<Vec<TaggedInstance>> {
    let project = &compute.config.project_id;
    let url = compute
        .clients
        .rest
        .compute_url(&format!("projects/{project}/aggregated/instances"));
    let filter = format!("labels.{TAG_SERVER_ID} = \"{label}\"");
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![("filter", filter.as_str())];
        if let Some(t) = &token {
            query.push(("pageToken", t.as_str()));
        }
        let page = compute
            .rest("instances.aggregatedList", Method::GET, &url, &query, None)
            .await?;
        if let Some(items) = page["items"].as_object() {
            for scoped in items.values() {
                out.extend(
                    scoped["instances"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(tagged),
                );
            }
        }
        match page["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// The zones where a TPU node could have been created: those of the `gcp` catalog's TPU rows
/// in the configured regions (all regions when none are configured).
fn tpu_zones(compute: &GcpCompute) -> Vec<String> {
    let catalog = compute.settings.catalog.snapshot();
    let regions = compute.config.regions.as_ref();
    let zones: BTreeSet<String> = catalog
        .provider("gcp")
        .map(|p| p.items())
        .unwrap_or_default()
        .iter()
        .filter(|i| super::tpu::is_tpu_name(&i.instance_name))
        .map(|i| i.location.to_string())
        .filter(|zone| {
            let region = zone_region(zone);
            region != zone.as_str() && regions.is_none_or(|rs| rs.iter().any(|r| r == region))
        })
        .collect();
    zones.into_iter().collect()
}

/// `TaggedInstance` from a TPU `Node`, if it carries `label` and is not being deleted.
fn tagged_tpu_node(node: &Value, label: &str) -> Option<TaggedInstance> {
    if node["labels"][TAG_SERVER_ID].as_str() != Some(label) {
        return None;
    }
    let state = node["state"].as_str().unwrap_or_default();
    if state == "DELETING" {
        return None;
    }
    // `projects/{p}/locations/{zone}/nodes/{id}`.
    let name = node["name"].as_str()?;
    let mut parts = name.split('/');
    parts.find(|p| *p == "locations")?;
    let zone = parts.next().filter(|z| !z.is_empty())?.to_string();
    let id = name.rsplit('/').next().filter(|id| !id.is_empty())?;
    let mut t = TaggedInstance::new(id, region_of(&zone), state).with_kind(TaggedKind::TpuNode);
    t.dstack_instance_id = node["labels"][TAG_INSTANCE_ID].as_str().map(str::to_string);
    t.created_at = node["createTime"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc));
    let data = GcpInstanceData {
        zone: zone.clone(),
        is_tpu: true,
        public_ips: Some(node["networkConfig"]["enableExternalIps"].as_bool() == Some(true)),
    };
    t.backend_data = serde_json::to_string(&data).ok();
    t.zone = Some(zone);
    Some(t)
}

/// The labelled TPU nodes of one zone (`nodes.list`, every page).
async fn list_tpu_zone(
    compute: &GcpCompute,
    zone: &str,
    label: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    let project = &compute.config.project_id;
    let url = compute
        .clients
        .rest
        .tpu_url(&format!("projects/{project}/locations/{zone}/nodes"));
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = Vec::new();
        if let Some(t) = &token {
            query.push(("pageToken", t.as_str()));
        }
        let page = compute
            .rest("tpu.nodes.list", Method::GET, &url, &query, None)
            .await?;
        out.extend(
            page["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| tagged_tpu_node(n, label)),
        );
        match page["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// Whether a TPU API error means the API cannot be used at all in the project (not
/// enabled, or not allowed to these credentials): no TPU node of ours can exist there.
fn tpu_api_unusable(e: &BackendError) -> bool {
    matches!(
        e,
        BackendError::InvalidCredentials { .. } | BackendError::Config { .. }
    ) || http_status_of(e) == Some(403)
}

/// The labelled TPU nodes of every [`tpu_zones`] zone; see the module docs for errors.
async fn list_tpu_nodes(compute: &GcpCompute, label: &str) -> Vec<TaggedInstance> {
    let mut out = Vec::new();
    for zone in tpu_zones(compute) {
        match list_tpu_zone(compute, &zone, label).await {
            Ok(found) => out.extend(found),
            Err(e) if tpu_api_unusable(&e) => {
                tracing::debug!(%zone, error = %e, "the Cloud TPU API is not usable; no TPU nodes to sweep");
                break;
            }
            Err(e) if is_not_found(&e) => {
                tracing::debug!(%zone, error = %e, "no Cloud TPU location in this zone");
            }
            Err(e) => {
                tracing::warn!(%zone, error = %e, "cannot list TPU nodes; the zone is skipped");
            }
        }
    }
    out
}

/// `list_tagged_instances`: see the module docs. The VMs' listing error fails the call; TPU
/// zones that cannot be listed are skipped.
pub async fn list_tagged_instances(
    compute: &GcpCompute,
    server_id: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    let label = server_label(server_id);
    let mut out = list_vms(compute, &label).await?;
    out.extend(list_tpu_nodes(compute, &label).await);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instance_resource_to_tagged() {
        let t = tagged(&json!({
            "name": "fleet-0-ab12",
            "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a",
            "status": "RUNNING",
            "creationTimestamp": "2024-05-01T10:00:00.000-07:00",
            "labels": {"dstack_server_id": "s", "dstack_instance_id": "i-1"},
            "networkInterfaces": [{"accessConfigs": [{"natIP": "1.2.3.4"}]}],
        }))
        .unwrap();
        assert_eq!(t.instance_id, "fleet-0-ab12");
        assert_eq!(t.region, "us-central1");
        assert_eq!(t.zone.as_deref(), Some("us-central1-a"));
        assert_eq!(t.dstack_instance_id.as_deref(), Some("i-1"));
        assert_eq!(
            t.created_at.unwrap().to_rfc3339(),
            "2024-05-01T17:00:00+00:00"
        );
        let data = GcpInstanceData::parse(t.backend_data.as_deref(), "x");
        assert_eq!(data.zone, "us-central1-a");
        assert_eq!(data.public_ips, Some(true));
        assert_eq!(server_label("ABC.d"), "abc_d");
    }

    #[test]
    fn tpu_node_to_tagged() {
        let node = json!({
            "name": "projects/p/locations/us-central1-a/nodes/dstack-main-tpu-0-ab12",
            "state": "READY",
            "createTime": "2024-05-01T17:00:00.123456Z",
            "labels": {"dstack_server_id": "s", "dstack_instance_id": "i-1"},
            "networkConfig": {"enableExternalIps": true},
        });
        let t = tagged_tpu_node(&node, "s").unwrap();
        assert_eq!(t.kind, TaggedKind::TpuNode);
        assert_eq!(t.instance_id, "dstack-main-tpu-0-ab12");
        assert_eq!(t.region, "us-central1");
        assert_eq!(t.zone.as_deref(), Some("us-central1-a"));
        assert_eq!(t.dstack_instance_id.as_deref(), Some("i-1"));
        assert_eq!(
            t.created_at.unwrap().to_rfc3339(),
            "2024-05-01T17:00:00.123456+00:00"
        );
        let data = GcpInstanceData::parse(t.backend_data.as_deref(), "x");
        assert!(data.is_tpu);
        assert_eq!(data.zone, "us-central1-a");
        assert!(tagged_tpu_node(&node, "other").is_none());
        let mut deleting = node.clone();
        deleting["state"] = json!("DELETING");
        assert!(tagged_tpu_node(&deleting, "s").is_none());
    }
}
