//! The VMs this server tagged: the virtual machines of the configured `resource_group`, or of
//! the whole subscription when none is configured (each project's VMs go into its own
//! `dstack-<project>` group), whose `dstack_server_id` tag is this server's. VMs already being
//! deleted are skipped. The backend data given for termination names the resources
//! `create_instance` makes with a VM (`<vm>-nic`, `<vm>-ip`, `<vm>-disk`), so that a sweep
//! deletes them too.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::AzureCompute;
use super::arm::api;
use super::vms::AzureInstanceData;
use crate::backends::common::tags::{TAG_INSTANCE_ID, TAG_SERVER_ID};
use crate::backends::compute::TaggedInstance;
use crate::backends::error::BackendResult;

/// The resource group of an ARM resource id (`/subscriptions/…/resourceGroups/{rg}/…`).
fn resource_group_of(id: &str) -> Option<&str> {
    let mut parts = id.split('/');
    parts.find(|p| p.eq_ignore_ascii_case("resourceGroups"))?;
    parts.next().filter(|rg| !rg.is_empty())
}

/// `TaggedInstance` from a VM resource, if it carries `server_id` and is not being deleted.
fn tagged(vm: &Value, server_id: &str) -> Option<TaggedInstance> {
    if vm["tags"][TAG_SERVER_ID].as_str() != Some(server_id) {
        return None;
    }
    let state = vm
        .pointer("/properties/provisioningState")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if state == "Deleting" {
        return None;
    }
    let name = vm["name"].as_str()?;
    let rg = resource_group_of(vm["id"].as_str()?)?;
    let location = vm["location"].as_str().unwrap_or_default();
    let mut t = TaggedInstance::new(name, location, state);
    t.zone = vm["zones"]
        .as_array()
        .and_then(|z| z.first())
        .and_then(Value::as_str)
        .map(str::to_string);
    t.dstack_instance_id = vm["tags"][TAG_INSTANCE_ID].as_str().map(str::to_string);
    t.created_at = vm
        .pointer("/properties/timeCreated")
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|d| d.with_timezone(&Utc));
    t.backend_data =
        serde_json::to_string(&AzureInstanceData::for_vm(rg, location, name, true)).ok();
    Some(t)
}

/// `list_tagged_instances`: see the module docs.
pub async fn list_tagged_instances(
    compute: &AzureCompute,
    server_id: &str,
) -> BackendResult<Vec<TaggedInstance>> {
    const VMS: &str = "/providers/Microsoft.Compute/virtualMachines";
    let path = match compute.config.resource_group.as_deref().map(str::trim) {
        Some(rg) if !rg.is_empty() => format!("{}{VMS}", compute.arm.rg_path(rg)),
        _ => compute.arm.sub_path(VMS),
    };
    let vms = compute.arm.list(&path, api::COMPUTE).await?;
    Ok(vms.iter().filter_map(|vm| tagged(vm, server_id)).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vm_resource_to_tagged() {
        let vm = json!({
            "id": "/subscriptions/s/resourceGroups/dstack-main/providers/Microsoft.Compute/virtualMachines/vm-1",
            "name": "vm-1",
            "location": "westeurope",
            "tags": {"dstack_server_id": "srv", "dstack_instance_id": "i-1"},
            "properties": {"provisioningState": "Succeeded", "timeCreated": "2024-05-01T10:00:00.1234567+00:00"},
        });
        let t = tagged(&vm, "srv").unwrap();
        assert_eq!(
            (t.instance_id.as_str(), t.region.as_str()),
            ("vm-1", "westeurope")
        );
        assert_eq!(t.dstack_instance_id.as_deref(), Some("i-1"));
        assert!(t.created_at.is_some());
        let data: AzureInstanceData =
            serde_json::from_str(t.backend_data.as_deref().unwrap()).unwrap();
        assert_eq!(data.resource_group, "dstack-main");
        assert_eq!(data.nic, "vm-1-nic");
        assert!(tagged(&vm, "other").is_none());
        let mut deleting = vm.clone();
        deleting["properties"]["provisioningState"] = json!("Deleting");
        assert!(tagged(&deleting, "srv").is_none());
    }
}
