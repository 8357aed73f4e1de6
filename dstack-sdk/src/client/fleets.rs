//! `client.project(p).fleets()`: the `/api/project/{p}/fleets/*` routes, and
//! `client.fleets_all()` for `/api/fleets/list`.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::models::fleets::{ApplyFleetPlanInput, Fleet, FleetConfiguration, FleetPlan, FleetSpec};
use crate::models::profiles::Profile;
use crate::routes::{PathParams, RouteId};

use super::{Client, ProjectHandle};

impl ProjectHandle {
    /// The project's fleets.
    pub fn fleets(&self) -> Fleets {
        Fleets {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }
}

/// A project's fleets. Obtain with [`ProjectHandle::fleets`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client, conf: dstack_sdk::models::fleets::FleetConfiguration) -> dstack_sdk::Result<()> {
/// let fleets = client.project("main").fleets();
/// let fleet = fleets.apply_configuration(conf, false).await?;
/// println!("{} has {} instances", fleet.name, fleet.instances.len());
/// fleets.delete(&[fleet.name.as_str()]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Fleets {
    client: Client,
    project: String,
}

/// A spec for `configuration` with an empty profile, as the CLI sends it.
pub fn fleet_spec(configuration: FleetConfiguration) -> FleetSpec {
    FleetSpec {
        configuration,
        configuration_path: None,
        profile: Profile::default(),
        autocreated: false,
    }
}

impl Fleets {
    fn params(&self) -> PathParams {
        PathParams::project(&self.project)
    }

    /// What applying `spec` would do.
    pub async fn get_plan(&self, spec: &FleetSpec) -> crate::Result<FleetPlan> {
        self.client
            .call(
                RouteId::FleetsGetPlan,
                &self.params(),
                Some(&json!({ "spec": spec })),
            )
            .await
    }

    /// Applies `spec`, expecting `current_resource` to be the fleet it replaces (`None` to
    /// create); `force` skips that check.
    pub async fn apply(
        &self,
        spec: &FleetSpec,
        current_resource: Option<Fleet>,
        force: bool,
    ) -> crate::Result<Fleet> {
        let plan = ApplyFleetPlanInput {
            spec: spec.clone(),
            current_resource,
        };
        self.client
            .call(
                RouteId::FleetsApply,
                &self.params(),
                Some(&json!({ "plan": plan, "force": force })),
            )
            .await
    }

    /// Plans and applies a configuration the way `dstack apply` does: the plan's current
    /// fleet is passed back so that a concurrent change is detected.
    pub async fn apply_configuration(
        &self,
        configuration: FleetConfiguration,
        force: bool,
    ) -> crate::Result<Fleet> {
        let spec = fleet_spec(configuration);
        let plan = self.get_plan(&spec).await?;
        self.apply(&spec, plan.current_resource, force).await
    }

    /// A fleet by name (non-deleted).
    pub async fn get(&self, name: &str) -> crate::Result<Fleet> {
        self.client
            .call(
                RouteId::FleetsGet,
                &self.params(),
                Some(&json!({ "name": name })),
            )
            .await
    }

    /// A fleet by id (deleted ones too).
    pub async fn get_by_id(&self, id: Uuid) -> crate::Result<Fleet> {
        self.client
            .call(
                RouteId::FleetsGet,
                &self.params(),
                Some(&json!({ "id": id })),
            )
            .await
    }

    /// The project's non-deleted fleets.
    pub async fn list(&self) -> crate::Result<Vec<Fleet>> {
        self.client
            .call(
                RouteId::FleetsList,
                &self.params(),
                Some(&json!({ "include_imported": true })),
            )
            .await
    }

    /// Terminates the fleets' instances and then deletes the fleets.
    pub async fn delete(&self, names: &[&str]) -> crate::Result<()> {
        let _: Value = self
            .client
            .call(
                RouteId::FleetsDelete,
                &self.params(),
                Some(&json!({ "names": names })),
            )
            .await?;
        Ok(())
    }

    /// Terminates some instances of a fleet.
    pub async fn delete_instances(&self, name: &str, instance_nums: &[i64]) -> crate::Result<()> {
        let _: Value = self
            .client
            .call(
                RouteId::FleetsDeleteInstances,
                &self.params(),
                Some(&json!({ "name": name, "instance_nums": instance_nums })),
            )
            .await?;
        Ok(())
    }
}

impl Client {
    /// Fleets of every project the caller can see (`POST /api/fleets/list`), newest first;
    /// `body` holds the filters and cursor (`{}` for the first page).
    pub async fn fleets_all(&self, body: &Value) -> crate::Result<Vec<Fleet>> {
        self.call(RouteId::FleetsListAll, &PathParams::default(), Some(body))
            .await
    }
}
