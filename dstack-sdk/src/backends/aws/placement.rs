//! Cluster placement groups (`CreatePlacementGroup` strategy `cluster`, tagged like
//! instances; `DeletePlacementGroup`, a missing group is a success).

use aws_sdk_ec2::types::{PlacementStrategy, ResourceType};

use super::AwsCompute;
use super::errors::{code_of, map_sdk_error};
use super::networking::tag_spec;
use crate::backends::common::tags::{ResourceTags, TagIds};
use crate::backends::compute::{PlacementGroupConfig, PlacementGroupProvisioningData};
use crate::backends::error::BackendResult;
use crate::models::backends::BackendType;

/// Creates a cluster placement group; an existing one with the name is reused.
pub async fn create(
    compute: &AwsCompute,
    config: &PlacementGroupConfig,
) -> BackendResult<PlacementGroupProvisioningData> {
    let ec2 = compute.region(&config.region).ec2;
    let tags = ResourceTags::new(
        &TagIds {
            server_id: &compute.settings.server_id,
            project: &config.project_name,
            name: &config.name,
            user: None,
            fleet_id: config.fleet_id,
            instance_id: None,
        },
        compute.backend_tags(),
        None,
    );
    let r = compute
        .call("CreatePlacementGroup", || {
            let ec2 = ec2.clone();
            let name = config.name.clone();
            let spec = tag_spec(ResourceType::PlacementGroup, &tags);
            async move {
                ec2.create_placement_group()
                    .group_name(name)
                    .strategy(PlacementStrategy::Cluster)
                    .tag_specifications(spec)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    let group_id = match r {
        Ok(out) => out
            .placement_group()
            .and_then(|g| g.group_id())
            .map(str::to_string),
        Err(e) if code_of(&e) == Some("InvalidPlacementGroup.Duplicate") => None,
        Err(e) => return Err(e),
    };
    Ok(PlacementGroupProvisioningData {
        backend: BackendType::Aws,
        name: config.name.clone(),
        region: config.region.clone(),
        backend_data: group_id.map(|id| serde_json::json!({ "group_id": id }).to_string()),
    })
}

/// Deletes a placement group; a missing one is a success.
pub async fn delete(
    compute: &AwsCompute,
    pg: &PlacementGroupProvisioningData,
) -> BackendResult<()> {
    let ec2 = compute.region(&pg.region).ec2;
    let r = compute
        .call("DeletePlacementGroup", || {
            let ec2 = ec2.clone();
            let name = pg.name.clone();
            async move {
                ec2.delete_placement_group()
                    .group_name(name)
                    .send()
                    .await
                    .map_err(map_sdk_error)
            }
        })
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if code_of(&e) == Some("InvalidPlacementGroup.Unknown") => Ok(()),
        Err(e) => Err(e),
    }
}
