//! The instances this server labelled: `instances.aggregatedList` over every zone of the
//! project, filtered by the `dstack_server_id` label (encoded as instance labels are, see
//! [`ResourceTags::to_labels`]). Stopped instances (`TERMINATED` in GCP's terms) still exist
//! and are listed; instances being stopped or deleted (`STOPPING`) are too, since a delete
//! of those is harmless. Cloud TPU nodes are not listed.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use super::GcpCompute;
use super::instances::GcpInstanceData;
use crate::backends::common::tags::{ResourceTags, TAG_INSTANCE_ID, TAG_SERVER_ID, TagIds};
use crate::backends::compute::TaggedInstance;
use crate::backends::error::BackendResult;

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

/// `list_tagged_instances`: see the module docs.
pub async fn list_tagged_instances(
    compute: &GcpCompute,
    server_id: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    let project = &compute.config.project_id;
    let url = compute
        .clients
        .rest
        .compute_url(&format!("projects/{project}/aggregated/instances"));
    let filter = format!("labels.{TAG_SERVER_ID} = \"{}\"", server_label(server_id));
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
}
