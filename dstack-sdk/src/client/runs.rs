//! `client.project(p).runs()` (the `/api/project/{p}/runs/*` and `repos/init` routes) and
//! `client.project(p).logs()` (`logs/poll`).

use serde_json::json;

use crate::models::logs::{JobSubmissionLogs, PollLogsRequest};
use crate::models::runs::{ApplyRunPlanInput, ListRunsRequest, Run, RunPlan, RunSpec};
use crate::routes::{PathParams, RouteId};

use super::{Client, ProjectHandle};

impl ProjectHandle {
    /// The project's runs.
    pub fn runs(&self) -> Runs {
        Runs {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }

    /// The project's job logs.
    pub fn logs(&self) -> Logs {
        Logs {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }
}

/// A project's runs. Obtain with [`ProjectHandle::runs`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client, spec: dstack_sdk::models::runs::RunSpec) -> dstack_sdk::Result<()> {
/// let runs = client.project("main").runs();
/// runs.init_virtual_repo().await?;
/// let run = runs.apply(&spec).await?;
/// runs.stop(&[run.run_spec.run_name.as_deref().unwrap_or_default()], false).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Runs {
    client: Client,
    project: String,
}

impl Runs {
    fn params(&self) -> PathParams {
        PathParams::project(&self.project)
    }

    /// `repos/init` for the virtual repo `none` (what the CLI does before a run without git).
    pub async fn init_virtual_repo(&self) -> crate::Result<()> {
        let _: serde_json::Value = self
            .client
            .call(
                RouteId::ReposInit,
                &self.params(),
                Some(&json!({"repo_id": "none", "repo_info": {"repo_type": "virtual"}})),
            )
            .await?;
        Ok(())
    }

    /// The plan for `spec`.
    pub async fn get_plan(&self, spec: &RunSpec) -> crate::Result<RunPlan> {
        self.client
            .call(
                RouteId::RunsGetPlan,
                &self.params(),
                Some(&json!({ "run_spec": spec })),
            )
            .await
    }

    /// Submits `spec` as a new run.
    pub async fn apply(&self, spec: &RunSpec) -> crate::Result<Run> {
        let plan = ApplyRunPlanInput {
            run_spec: spec.clone(),
            current_resource: None,
        };
        self.client
            .call(
                RouteId::RunsApply,
                &self.params(),
                Some(&json!({ "plan": plan, "force": false })),
            )
            .await
    }

    /// The run named `name`.
    pub async fn get(&self, name: &str) -> crate::Result<Run> {
        self.client
            .call(
                RouteId::RunsGet,
                &self.params(),
                Some(&json!({ "run_name": name })),
            )
            .await
    }

    /// This project's runs (first page, newest first).
    pub async fn list(&self, only_active: bool) -> crate::Result<Vec<Run>> {
        let req = ListRunsRequest {
            project_name: Some(self.project.clone()),
            only_active,
            ..ListRunsRequest::default()
        };
        self.client
            .call(RouteId::RunsList, &PathParams::default(), Some(&req))
            .await
    }

    /// Stops runs (`abort` skips the graceful stop).
    pub async fn stop(&self, names: &[&str], abort: bool) -> crate::Result<()> {
        let _: serde_json::Value = self
            .client
            .call(
                RouteId::RunsStop,
                &self.params(),
                Some(&json!({ "runs_names": names, "abort": abort })),
            )
            .await?;
        Ok(())
    }

    /// Deletes finished runs.
    pub async fn delete(&self, names: &[&str]) -> crate::Result<()> {
        let _: serde_json::Value = self
            .client
            .call(
                RouteId::RunsDelete,
                &self.params(),
                Some(&json!({ "runs_names": names })),
            )
            .await?;
        Ok(())
    }
}

/// A project's job logs. Obtain with [`ProjectHandle::logs`].
#[derive(Clone, Debug)]
pub struct Logs {
    client: Client,
    project: String,
}

impl Logs {
    /// One page of a job submission's logs.
    pub async fn poll(&self, req: &PollLogsRequest) -> crate::Result<JobSubmissionLogs> {
        self.client
            .call(
                RouteId::LogsPoll,
                &PathParams::project(&self.project),
                Some(req),
            )
            .await
    }
}
