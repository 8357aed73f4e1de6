//! `client.instances()`: `/api/instances/list` and `/api/project/{p}/instances/get`.

use uuid::Uuid;

use crate::models::instances::{GetInstanceRequest, Instance, ListInstancesRequest};
use crate::routes::{PathParams, RouteId};

use super::Client;

/// Instances across projects. Obtain with [`Client::instances`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// let all = client.instances().list(&Default::default()).await?;
/// for i in all {
///     println!("{} {:?}", i.name, i.status);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Instances {
    client: Client,
}

impl Client {
    /// Instances: list, get.
    pub fn instances(&self) -> Instances {
        Instances {
            client: self.clone(),
        }
    }
}

impl Instances {
    /// Instances matching the filters of `req`, newest first (keyset pagination).
    pub async fn list(&self, req: &ListInstancesRequest) -> crate::Result<Vec<Instance>> {
        self.client
            .call(RouteId::InstancesList, &PathParams::default(), Some(req))
            .await
    }

    /// One instance of `project` by id.
    pub async fn get(&self, project: &str, id: Uuid) -> crate::Result<Instance> {
        self.client
            .call(
                RouteId::InstancesGet,
                &PathParams::project(project),
                Some(&GetInstanceRequest { id }),
            )
            .await
    }
}
