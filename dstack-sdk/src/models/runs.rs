//! Runs: [`RunSpec`], [`Run`], [`RunStatus`], [`RunTerminationReason`] with the status it leads
//! to, plans ([`RunPlan`], [`JobPlan`], [`ApplyRunPlanInput`]) and the `/runs/*` request bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::models::common::ApplyAction;
use crate::models::configurations::RunConfiguration;
use crate::models::jobs::{
    FileArchiveMapping, Job, JobSpec, JobStatus, JobSubmission, JobTerminationReason, RunRepoData,
};
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::profiles::{CreationPolicy, Profile, RetryEvent};

// ---------------------------------------------------------------------------------------------
// Statuses and termination reasons

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting: scheduled, retrying after a back-off, or a service scaled to zero.
    Pending,
    /// Jobs are waiting for instances.
    Submitted,
    /// Instances are being provisioned.
    Provisioning,
    /// Jobs run.
    Running,
    /// Being stopped.
    Terminating,
    /// Stopped.
    Terminated,
    /// Failed.
    Failed,
    /// Finished successfully.
    Done,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 8] = [
        RunStatus::Pending,
        RunStatus::Submitted,
        RunStatus::Provisioning,
        RunStatus::Running,
        RunStatus::Terminating,
        RunStatus::Terminated,
        RunStatus::Failed,
        RunStatus::Done,
    ];

    /// The finished statuses: terminated, failed, done.
    pub const FINISHED: [RunStatus; 3] =
        [RunStatus::Terminated, RunStatus::Failed, RunStatus::Done];

    /// Whether the run reached a final status.
    pub fn is_finished(self) -> bool {
        Self::FINISHED.contains(&self)
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Submitted => "submitted",
            RunStatus::Provisioning => "provisioning",
            RunStatus::Running => "running",
            RunStatus::Terminating => "terminating",
            RunStatus::Terminated => "terminated",
            RunStatus::Failed => "failed",
            RunStatus::Done => "done",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run was terminated; decides its final status and its jobs' termination reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTerminationReason {
    /// Every job finished successfully.
    AllJobsDone,
    /// A job failed and is not retried.
    JobFailed,
    /// Retries ran out.
    RetryLimitExceeded,
    /// A user stopped the run.
    StoppedByUser,
    /// A user aborted the run.
    AbortedByUser,
    /// The server failed.
    ServerError,
    /// Gateway registration failed.
    GatewayError,
}

impl RunTerminationReason {
    /// Every reason.
    pub const ALL: [RunTerminationReason; 7] = [
        Self::AllJobsDone,
        Self::JobFailed,
        Self::RetryLimitExceeded,
        Self::StoppedByUser,
        Self::AbortedByUser,
        Self::ServerError,
        Self::GatewayError,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllJobsDone => "all_jobs_done",
            Self::JobFailed => "job_failed",
            Self::RetryLimitExceeded => "retry_limit_exceeded",
            Self::StoppedByUser => "stopped_by_user",
            Self::AbortedByUser => "aborted_by_user",
            Self::ServerError => "server_error",
            Self::GatewayError => "gateway_error",
        }
    }

    /// Parses the wire string.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// The final status of a run with this reason.
    pub fn to_status(self) -> RunStatus {
        match self {
            Self::AllJobsDone => RunStatus::Done,
            Self::JobFailed | Self::RetryLimitExceeded | Self::ServerError | Self::GatewayError => {
                RunStatus::Failed
            }
            Self::StoppedByUser | Self::AbortedByUser => RunStatus::Terminated,
        }
    }

    /// The reason given to the run's unfinished jobs when the run terminates.
    pub fn to_job_termination_reason(self) -> JobTerminationReason {
        match self {
            Self::AllJobsDone => JobTerminationReason::DoneByRunner,
            Self::StoppedByUser => JobTerminationReason::TerminatedByUser,
            Self::AbortedByUser => JobTerminationReason::AbortedByUser,
            Self::JobFailed | Self::RetryLimitExceeded | Self::ServerError | Self::GatewayError => {
                JobTerminationReason::TerminatedByServer
            }
        }
    }

    /// The run's `error` text.
    pub fn to_error(self) -> Option<&'static str> {
        match self {
            Self::RetryLimitExceeded => Some("retry limit exceeded"),
            Self::ServerError => Some("server error"),
            Self::GatewayError => Some("gateway error"),
            _ => None,
        }
    }
}

impl fmt::Display for RunTerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `status_message` dstack shows for a run: `pulling` when every job's latest submission is
/// pulling; `retrying` when the run is submitted or pending after a no-capacity failure of a
/// job that retries on `no-capacity`; otherwise the status.
pub fn run_status_message(status: RunStatus, jobs: &[Job]) -> String {
    let groups: Vec<&Job> = jobs
        .iter()
        .filter(|j| !j.job_submissions.is_empty())
        .collect();
    if groups.is_empty() {
        return status.as_str().to_string();
    }
    if groups.iter().all(|j| {
        j.latest_submission()
            .is_some_and(|s| s.status == JobStatus::Pulling)
    }) {
        return "pulling".to_string();
    }
    if matches!(status, RunStatus::Submitted | RunStatus::Pending) {
        for job in &groups {
            let retries_no_capacity = job
                .job_spec
                .retry
                .as_ref()
                .is_some_and(|r| r.on_events.contains(&RetryEvent::NoCapacity));
            let last_reason = job
                .job_submissions
                .iter()
                .rev()
                .find_map(|s| s.termination_reason.as_deref())
                .and_then(JobTerminationReason::from_wire);
            if retries_no_capacity
                && last_reason == Some(JobTerminationReason::FailedToStartDueToNoCapacity)
            {
                return "retrying".to_string();
            }
        }
    }
    status.as_str().to_string()
}

/// The run cost: the sum of every submission's price × hours, rounded to 4 places.
pub fn run_cost(jobs: &[Job], now: DateTime<Utc>) -> f64 {
    let total: f64 = jobs
        .iter()
        .flat_map(|j| j.job_submissions.iter())
        .map(|s| s.cost(now))
        .sum();
    (total * 10_000.0).round() / 10_000.0
}

// ---------------------------------------------------------------------------------------------
// RunSpec

/// What to run: the configuration, profile, repo and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The run name; generated when not set.
    #[serde(default)]
    pub run_name: Option<String>,
    /// The repo id from `repos/init` (default virtual repo `none`).
    #[serde(default)]
    pub repo_id: Option<String>,
    /// The repo data (branch, commit, …).
    #[serde(default)]
    pub repo_data: Option<RunRepoData>,
    /// The hash of the uploaded repo diff.
    #[serde(default)]
    pub repo_code_hash: Option<String>,
    /// The repo path in the container.
    #[serde(default)]
    pub repo_dir: Option<String>,
    /// Uploaded file archives.
    #[serde(default)]
    pub file_archives: Vec<FileArchiveMapping>,
    /// Ignored; kept for old clients.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The configuration file path.
    #[serde(default)]
    pub configuration_path: Option<String>,
    /// The run configuration (`task`, `service` or `dev-environment`).
    pub configuration: RunConfiguration,
    /// The profile.
    #[serde(default)]
    pub profile: Option<Profile>,
    /// The SSH public key for connecting to the run.
    #[serde(default)]
    pub ssh_key_pub: Option<String>,
}

macro_rules! overlay {
    ($dst:expr, $src:expr; $($f:ident),+ $(,)?) => {
        $( if $src.$f.is_some() { $dst.$f.clone_from(&$src.$f); } )+
    };
}

impl RunSpec {
    /// The profile with the configuration's non-null profile fields laid over it, and
    /// `creation_policy` defaulting to `reuse-or-create` (dstack's `merged_profile`).
    pub fn merged_profile(&self) -> Profile {
        let mut p = self.profile.clone().unwrap_or_else(|| Profile {
            name: "default".into(),
            ..Profile::default()
        });
        let src = self.configuration.profile();
        overlay!(p.params, src;
            backends, regions, availability_zones, instance_types, reservation, spot_policy, retry,
            max_duration, stop_duration, max_price, creation_policy, idle_duration,
            utilization_policy, startup_order, stop_criteria, schedule, fleets, instances, tags,
            backend_options,
        );
        if p.params.creation_policy.is_none() {
            p.params.creation_policy = Some(CreationPolicy::ReuseOrCreate);
        }
        p
    }
}

// ---------------------------------------------------------------------------------------------
// Run

/// The fleet a run uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFleet {
    /// The fleet id.
    pub id: Uuid,
    /// The fleet name.
    pub name: String,
}

/// The model a service exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceModelSpec {
    /// The model name.
    pub name: String,
    /// A full URL or a path relative to the server.
    pub base_url: String,
    /// The model type, e.g. `chat`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Where a service is reachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// A full URL or a path relative to the server.
    pub url: String,
    /// The exposed model.
    #[serde(default)]
    pub model: Option<ServiceModelSpec>,
    /// Gateway options.
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// A run as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The run id.
    pub id: Uuid,
    /// Its project.
    pub project_name: String,
    /// The user who submitted it.
    pub user: String,
    /// The fleet it runs in.
    #[serde(default)]
    pub fleet: Option<RunFleet>,
    /// When it was submitted.
    #[serde(with = "crate::models::datetime")]
    pub submitted_at: DateTime<Utc>,
    /// When the server last processed it.
    #[serde(with = "crate::models::datetime")]
    pub last_processed_at: DateTime<Utc>,
    /// The status.
    pub status: RunStatus,
    /// The status as shown to users (see [`run_status_message`]).
    #[serde(default)]
    pub status_message: String,
    /// Why it terminated ([`RunTerminationReason`] as a string).
    #[serde(default)]
    pub termination_reason: Option<String>,
    /// The spec.
    pub run_spec: RunSpec,
    /// The jobs, by replica then job number.
    pub jobs: Vec<Job>,
    /// The latest submission of the first job.
    #[serde(default)]
    pub latest_job_submission: Option<JobSubmission>,
    /// The cost so far, USD.
    #[serde(default)]
    pub cost: f64,
    /// Where the service is reachable.
    #[serde(default)]
    pub service: Option<ServiceSpec>,
    /// The current deployment (default 0).
    #[serde(default)]
    pub deployment_num: i64,
    /// A short error text (from the termination reason).
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the run was deleted.
    #[serde(default)]
    pub deleted: Option<bool>,
    /// The next scheduled start.
    #[serde(with = "crate::models::datetime::option", default)]
    pub next_triggered_at: Option<DateTime<Utc>>,
}

impl Run {
    /// The termination reason as an enum, when it is a known one.
    pub fn termination_reason_enum(&self) -> Option<RunTerminationReason> {
        self.termination_reason
            .as_deref()
            .and_then(RunTerminationReason::from_wire)
    }

    /// Sets the derived fields as dstack does for responses: each submission's status message
    /// and error, `latest_job_submission`, the run's `status_message`, `error` and `cost`.
    pub fn fill_derived_fields(&mut self, now: DateTime<Utc>) {
        for job in &mut self.jobs {
            for s in &mut job.job_submissions {
                s.fill_derived_fields();
            }
        }
        self.latest_job_submission = self
            .jobs
            .first()
            .and_then(|j| j.latest_submission().cloned());
        self.status_message = run_status_message(self.status, &self.jobs);
        self.error = self
            .termination_reason_enum()
            .and_then(RunTerminationReason::to_error)
            .map(str::to_string);
        self.cost = run_cost(&self.jobs, now);
    }

    /// Whether some job's latest submission is unfinished and from another deployment.
    pub fn is_deployment_in_progress(&self) -> bool {
        self.jobs.iter().any(|j| {
            j.latest_submission()
                .is_some_and(|s| !s.status.is_finished() && s.deployment_num != self.deployment_num)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Plans

/// The plan for one job: its spec and matching offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPlan {
    /// The job spec (SSH key removed).
    pub job_spec: JobSpec,
    /// The first offers, available ones first.
    pub offers: Vec<InstanceOfferWithAvailability>,
    /// How many offers there are in all.
    pub total_offers: i64,
    /// The highest offer price.
    #[serde(default)]
    pub max_price: Option<f64>,
}

/// `runs/get_plan` response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// The project.
    pub project_name: String,
    /// The user.
    pub user: String,
    /// The spec as sent.
    pub run_spec: RunSpec,
    /// The spec with defaults applied.
    #[serde(default)]
    pub effective_run_spec: Option<RunSpec>,
    /// One plan per job.
    pub job_plans: Vec<JobPlan>,
    /// The existing run of that name, if any.
    #[serde(default)]
    pub current_resource: Option<Run>,
    /// Create or update in place.
    pub action: ApplyAction,
}

impl RunPlan {
    /// `effective_run_spec`, or `run_spec` when unset.
    pub fn get_effective_run_spec(&self) -> &RunSpec {
        self.effective_run_spec.as_ref().unwrap_or(&self.run_spec)
    }
}

/// The `plan` of `runs/apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRunPlanInput {
    /// The spec to apply.
    pub run_spec: RunSpec,
    /// The run the plan was made against; the apply fails if it changed (unless `force`).
    #[serde(default)]
    pub current_resource: Option<Run>,
}

// ---------------------------------------------------------------------------------------------
// Requests

fn default_true() -> bool {
    true
}

fn default_runs_limit() -> u32 {
    100
}

/// Body of `POST /api/runs/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRunsRequest {
    /// Only this project.
    #[serde(default)]
    pub project_name: Option<String>,
    /// Only this repo (needs `project_name`).
    #[serde(default)]
    pub repo_id: Option<String>,
    /// Only this user's runs.
    #[serde(default)]
    pub username: Option<String>,
    /// Hide finished runs.
    #[serde(default)]
    pub only_active: bool,
    /// Include jobs (default true).
    #[serde(default = "default_true")]
    pub include_jobs: bool,
    /// Keep the last N submissions per job (0..=10; `None` = 10).
    #[serde(default)]
    pub job_submissions_limit: Option<u32>,
    /// Keyset cursor: `submitted_at` of the last run of the previous page.
    #[serde(with = "crate::models::datetime::option", default)]
    pub prev_submitted_at: Option<DateTime<Utc>>,
    /// Keyset cursor: id of the last run of the previous page.
    #[serde(default)]
    pub prev_run_id: Option<Uuid>,
    /// Page size, 0..=100 (default 100).
    #[serde(default = "default_runs_limit")]
    pub limit: u32,
    /// Oldest first when true.
    #[serde(default)]
    pub ascending: bool,
}

impl Default for ListRunsRequest {
    fn default() -> Self {
        Self {
            project_name: None,
            repo_id: None,
            username: None,
            only_active: false,
            include_jobs: true,
            job_submissions_limit: None,
            prev_submitted_at: None,
            prev_run_id: None,
            limit: default_runs_limit(),
            ascending: false,
        }
    }
}

/// Body of `runs/get`: by name (non-deleted runs) or by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRunRequest {
    /// The run name.
    #[serde(default)]
    pub run_name: Option<String>,
    /// The run id.
    #[serde(default)]
    pub id: Option<Uuid>,
}

/// Body of `runs/get_plan`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetRunPlanRequest {
    /// The spec to plan.
    pub run_spec: RunSpec,
    /// At most this many offers per job (default 50).
    #[serde(default)]
    pub max_offers: Option<u32>,
    /// Most expensive offers first.
    #[serde(default)]
    pub reverse_offers: bool,
    /// Return full offers.
    #[serde(default)]
    pub full_offers: bool,
    /// Count unallocated resources of busy instances.
    #[serde(default)]
    pub unallocated_resources: bool,
    /// Just list offers (`dstack offer`).
    #[serde(default)]
    pub for_offers_only: bool,
}

/// Body of `runs/apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyRunPlanRequest {
    /// The plan.
    pub plan: ApplyRunPlanInput,
    /// Apply even if the run changed since the plan.
    #[serde(default)]
    pub force: bool,
}

/// Body of `runs/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRunsRequest {
    /// The runs.
    pub runs_names: Vec<String>,
    /// Abort instead of a graceful stop.
    #[serde(default)]
    pub abort: bool,
}

/// Body of `runs/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRunsRequest {
    /// The runs.
    pub runs_names: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn termination_reason_mapping() {
        use JobTerminationReason as J;
        use RunStatus as S;
        use RunTerminationReason as R;
        let expected = [
            (R::AllJobsDone, S::Done, J::DoneByRunner, None),
            (R::JobFailed, S::Failed, J::TerminatedByServer, None),
            (
                R::RetryLimitExceeded,
                S::Failed,
                J::TerminatedByServer,
                Some("retry limit exceeded"),
            ),
            (R::StoppedByUser, S::Terminated, J::TerminatedByUser, None),
            (R::AbortedByUser, S::Terminated, J::AbortedByUser, None),
            (
                R::ServerError,
                S::Failed,
                J::TerminatedByServer,
                Some("server error"),
            ),
            (
                R::GatewayError,
                S::Failed,
                J::TerminatedByServer,
                Some("gateway error"),
            ),
        ];
        for (r, s, j, e) in expected {
            assert_eq!(r.to_status(), s, "{r}");
            assert!(r.to_status().is_finished());
            assert_eq!(r.to_job_termination_reason(), j, "{r}");
            assert_eq!(r.to_error(), e);
            assert_eq!(R::from_wire(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
        }
        let finished: Vec<_> = S::ALL.into_iter().filter(|s| s.is_finished()).collect();
        assert_eq!(finished, vec![S::Terminated, S::Failed, S::Done]);
    }

    fn job_spec() -> serde_json::Value {
        json!({
            "replica_num": 0, "job_num": 0, "job_name": "train-0-0", "jobs_per_replica": 1,
            "replica_group": "0", "app_specs": [], "user": null,
            "commands": ["/bin/bash", "-i", "-c", "python train.py"],
            "env": {"HF_HOME": "/data"}, "home_dir": "/root",
            "image_name": "dstackai/base:0.10-base-ubuntu22.04", "privileged": false,
            "single_branch": null, "max_duration": null, "stop_duration": 300,
            "utilization_policy": null, "registry_auth": null,
            "requirements": {
                "resources": {
                    "cpu": {"arch": null, "count": {"min": 2, "max": null}},
                    "memory": {"min": 8.0, "max": null}, "shm_size": null,
                    "gpu": {"vendor": "nvidia", "name": ["A100"], "count": {"min": 1, "max": 1},
                            "memory": null, "total_memory": null, "compute_capability": null},
                    "disk": {"size": {"min": 100.0, "max": null}}
                },
                "max_price": null, "spot": false, "reservation": null, "multinode": false,
                "backend_options": null
            },
            "retry": {"on_events": ["no-capacity"], "duration": 3600},
            "volumes": [], "ssh_key": null, "working_dir": null,
            "repo_data": {"repo_type": "virtual"}, "repo_code_hash": null, "repo_dir": "/workflow",
            "repo_exists_action": "error", "file_archives": [], "service_port": null,
            "probes": [], "node_group_index": 0, "node_group_name": "0", "node_group_job_index": 0
        })
    }

    fn run_json() -> serde_json::Value {
        json!({
            "id": "1b2d3f4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
            "project_name": "main",
            "user": "admin",
            "fleet": {"id": "0d6a2f0e-90f5-4d6b-b1f5-7c1a7e2b3c4d", "name": "my-fleet"},
            "submitted_at": "2025-06-01T12:00:00Z",
            "last_processed_at": "2025-06-01T12:00:05.500000Z",
            "status": "pending",
            "status_message": "retrying",
            "termination_reason": null,
            "run_spec": {
                "run_name": "train",
                "repo_id": "none",
                "repo_data": {"repo_type": "virtual"},
                "repo_code_hash": null,
                "repo_dir": null,
                "file_archives": [],
                "working_dir": null,
                "configuration_path": ".dstack.yml",
                "configuration": {"type": "task", "commands": ["python train.py"], "resources": {"gpu": "A100:1"}},
                "profile": {"name": "default"},
                "ssh_key_pub": "ssh-rsa AAAA"
            },
            "jobs": [{
                "job_spec": job_spec(),
                "job_submissions": [{
                    "id": "c7c0a8a2-5b8e-4b57-9d0a-2f1e3d4c5b6a", "submission_num": 0, "deployment_num": 0,
                    "submitted_at": "2025-06-01T12:00:00Z", "last_processed_at": "2025-06-01T12:00:04Z",
                    "finished_at": "2025-06-01T12:00:04Z", "inactivity_secs": null,
                    "status": "failed", "status_message": "no capacity",
                    "termination_reason": "failed_to_start_due_to_no_capacity",
                    "termination_reason_message": "All offers failed", "exit_status": null,
                    "job_provisioning_data": null, "job_runtime_data": null, "error": null,
                    "probes": [], "image_pull_progress": null
                }],
                "job_connection_info": null
            }],
            "latest_job_submission": null,
            "cost": 0.0,
            "service": null,
            "deployment_num": 0,
            "error": null,
            "deleted": false,
            "next_triggered_at": null
        })
    }

    #[test]
    fn run_with_jobs_parses_and_derives() {
        let mut run: Run = serde_json::from_value(run_json()).unwrap();
        assert_eq!(run.jobs[0].job_spec.retry.as_ref().unwrap().duration, 3600);
        assert_eq!(run_status_message(run.status, &run.jobs), "retrying");
        run.fill_derived_fields(Utc::now());
        assert_eq!(run.jobs[0].job_submissions[0].status_message, "no capacity");
        assert_eq!(
            run.latest_job_submission.as_ref().unwrap().id,
            run.jobs[0].job_submissions[0].id
        );
        assert_eq!(run.cost, 0.0);
        let out = serde_json::to_value(&run).unwrap();
        // Every field present, nulls included, in dstack's order.
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            run_json()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(out["jobs"][0]["job_spec"], job_spec());
        assert_eq!(out["submitted_at"], json!("2025-06-01T12:00:00Z"));
        assert_eq!(out["run_spec"]["configuration"]["type"], json!("task"));
        // Our own output reads back to the same run.
        let again: Run = serde_json::from_value(out.clone()).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), out);
        let merged = run.run_spec.merged_profile();
        assert_eq!(
            merged.params.creation_policy,
            Some(CreationPolicy::ReuseOrCreate)
        );
    }

    #[test]
    fn status_message_pulling_and_plain() {
        let mut run: Run = serde_json::from_value(run_json()).unwrap();
        run.jobs[0].job_submissions[0].status = JobStatus::Pulling;
        assert_eq!(
            run_status_message(RunStatus::Provisioning, &run.jobs),
            "pulling"
        );
        run.jobs[0].job_submissions[0].status = JobStatus::Running;
        assert_eq!(run_status_message(RunStatus::Running, &run.jobs), "running");
        assert_eq!(run_status_message(RunStatus::Pending, &[]), "pending");
        run.jobs[0].job_spec.retry = None;
        run.jobs[0].job_submissions[0].status = JobStatus::Failed;
        assert_eq!(run_status_message(RunStatus::Pending, &run.jobs), "pending");
    }

    #[test]
    fn requests_defaults() {
        let r: ListRunsRequest = serde_json::from_value(json!({"project_name": "main"})).unwrap();
        assert_eq!(
            (r.limit, r.include_jobs, r.job_submissions_limit),
            (100, true, None)
        );
        let s: StopRunsRequest =
            serde_json::from_value(json!({"runs_names": ["a"], "abort": true})).unwrap();
        assert!(s.abort);
        let plan: ApplyRunPlanRequest = serde_json::from_value(json!({
            "plan": {"run_spec": run_json()["run_spec"].clone(), "current_resource": run_json()},
            "force": false
        }))
        .unwrap();
        assert!(plan.plan.current_resource.is_some());
    }
}
