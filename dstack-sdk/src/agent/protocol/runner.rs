//! The runner API (`dstack-runner`, port 10999).
//!
//! | method & path | request | response |
//! |---|---|---|
//! | `GET /api/healthcheck` | – | [`super::HealthcheckResponse`] |
//! | `GET /api/metrics` | – | [`MetricsResponse`] (404 without a collector) |
//! | `POST /api/submit` | [`SubmitBody`] | – (409 unless waiting for a submit or a run) |
//! | `POST /api/upload_archive` | `multipart/form-data`, one file field `archive` named by the archive id | – (409 unless waiting for run) |
//! | `POST /api/upload_code` | raw body: the repo code blob | – (409 unless waiting for run) |
//! | `POST /api/run` | – | [`JobInfoResponse`] (409 unless waiting for run) |
//! | `GET /api/pull?timestamp=<ms>` | – | [`PullResponse`]: what is newer than `timestamp` |
//! | `POST /api/stop` | – | – |
//!
//! The runner's own state machine: `wait_submit → wait_run → serve_logs →
//! wait_logs_finished`; see [`crate::agent::executor::RunnerState`].

use std::fmt;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::serde_util::{base64_bytes, null_as_default};

/// The service name the runner reports in its healthcheck.
pub const RUNNER_SERVICE: &str = "dstack-runner";

/// A job state as the runner reports it (dstack's `JobStatus`; the runner itself only uses
/// `running`, `done`, `failed`, `terminating` and `terminated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Submitted to the server (server-side only).
    Submitted,
    /// Provisioning (server-side only).
    Provisioning,
    /// Pulling the image (server-side only).
    Pulling,
    /// The job's commands are running.
    Running,
    /// A stop was requested; the process is being signalled.
    Terminating,
    /// Stopped (by a request, or because `max_duration` was exceeded).
    Terminated,
    /// Aborted (server-side only).
    Aborted,
    /// The commands exited with a non-zero status or could not start.
    Failed,
    /// The commands exited with status 0.
    Done,
}

impl JobState {
    /// The wire string, e.g. `terminated`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Submitted => "submitted",
            JobState::Provisioning => "provisioning",
            JobState::Pulling => "pulling",
            JobState::Running => "running",
            JobState::Terminating => "terminating",
            JobState::Terminated => "terminated",
            JobState::Aborted => "aborted",
            JobState::Failed => "failed",
            JobState::Done => "done",
        }
    }

    /// Whether no further state follows.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Terminated | JobState::Aborted | JobState::Failed | JobState::Done
        )
    }
}

/// One job state transition in a [`PullResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStateEvent {
    /// The new state.
    pub state: JobState,
    /// When, in the runner's millisecond timestamps (strictly increasing per job).
    pub timestamp: i64,
    /// A dstack `JobTerminationReason` value such as `max_duration_exceeded`, or empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub termination_reason: String,
    /// A human-readable message, or empty.
    #[serde(default, deserialize_with = "null_as_default")]
    pub termination_message: String,
    /// The exit status of the job's commands, when known.
    #[serde(default)]
    pub exit_status: Option<i32>,
}

/// A chunk of output; `message` is raw bytes, base64 on the wire.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// The output bytes.
    #[serde(with = "base64_bytes")]
    pub message: Vec<u8>,
    /// When the chunk was captured, in milliseconds.
    pub timestamp: i64,
}

impl fmt::Debug for LogEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogEvent")
            .field("timestamp", &self.timestamp)
            .field("message", &String::from_utf8_lossy(&self.message))
            .finish()
    }
}

/// `GET /api/pull?timestamp=T`: everything newer than `T`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    /// Job state transitions.
    #[serde(default, deserialize_with = "null_as_default")]
    pub job_states: Vec<JobStateEvent>,
    /// The job's output.
    #[serde(default, deserialize_with = "null_as_default")]
    pub job_logs: Vec<LogEvent>,
    /// The runner's own log.
    #[serde(default, deserialize_with = "null_as_default")]
    pub runner_logs: Vec<LogEvent>,
    /// The newest timestamp covered by this answer: pass it as the next `timestamp`.
    #[serde(default)]
    pub last_updated: i64,
    /// Seconds without SSH connections to the job (for `inactivity_duration`).
    #[serde(default)]
    pub no_connections_secs: Option<i64>,
    /// Whether more logs may still come; `false` once the job finished and this answer
    /// holds everything.
    #[serde(default)]
    pub has_more: Option<bool>,
}

/// `POST /api/run`: where and as whom the job runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfoResponse {
    /// The job's working directory.
    #[serde(default, deserialize_with = "null_as_default")]
    pub working_dir: String,
    /// The user the job runs as.
    #[serde(default, deserialize_with = "null_as_default")]
    pub username: String,
}

/// GPU usage in a [`MetricsResponse`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMetrics {
    /// GPU memory in use, bytes.
    #[serde(default)]
    pub gpu_memory_usage_bytes: u64,
    /// Utilisation, percent.
    #[serde(default)]
    pub gpu_util_percent: u64,
}

/// `GET /api/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsResponse {
    /// When, in microseconds.
    #[serde(default)]
    pub timestamp_micro: i64,
    /// Cumulative CPU time, microseconds.
    #[serde(default)]
    pub cpu_usage_micro: u64,
    /// Memory in use, bytes.
    #[serde(default)]
    pub memory_usage_bytes: u64,
    /// Working set, bytes.
    #[serde(default)]
    pub memory_working_set_bytes: u64,
    /// Per-GPU usage.
    #[serde(default, deserialize_with = "null_as_default")]
    pub gpus: Vec<GpuMetrics>,
}

/// The run's configuration as the runner sees it: only `type` is read; the rest is kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfigurationInfo {
    /// `task`, `dev-environment` or `service`.
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    /// The other configuration fields, untouched.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The repo a run uses (`repo_type` is `remote`, `local` or `virtual`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoData {
    /// `remote`, `local` or `virtual`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub repo_type: String,
    /// The branch (remote repos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_branch: Option<String>,
    /// The commit (remote repos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_hash: Option<String>,
    /// `git config user.name` (remote repos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_config_name: Option<String>,
    /// `git config user.email` (remote repos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_config_email: Option<String>,
    /// The other fields, untouched.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The part of the run spec the runner reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSpecInfo {
    /// The run name (`DSTACK_RUN_NAME`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub run_name: String,
    /// The repo id (`DSTACK_REPO_ID`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub repo_id: String,
    /// The repo.
    #[serde(default, deserialize_with = "null_as_default")]
    pub repo_data: RepoData,
    /// The configuration.
    #[serde(default, deserialize_with = "null_as_default")]
    pub configuration: RunConfigurationInfo,
    /// The configuration file path.
    #[serde(default, deserialize_with = "null_as_default")]
    pub configuration_path: String,
}

/// The run as the runner sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run id (`DSTACK_RUN_ID`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The run spec.
    #[serde(default, deserialize_with = "null_as_default")]
    pub run_spec: RunSpecInfo,
}

/// The user a job runs as (`user[:group]`, names or ids).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixUser {
    /// The user id.
    #[serde(default)]
    pub uid: Option<u32>,
    /// The user name.
    #[serde(default)]
    pub username: Option<String>,
    /// The group id.
    #[serde(default)]
    pub gid: Option<u32>,
    /// The group name.
    #[serde(default)]
    pub groupname: Option<String>,
}

/// The job's SSH key pair (used between the nodes of a cluster). `Debug` hides the private key.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKeyPair {
    /// The private key.
    #[serde(default, deserialize_with = "null_as_default")]
    pub private: String,
    /// The public key.
    #[serde(default, deserialize_with = "null_as_default")]
    pub public: String,
}

impl fmt::Debug for SshKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshKeyPair")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

/// An uploaded file archive and where to unpack it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileArchive {
    /// The archive id (the multipart file name of its upload).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The destination path (`~` and relative paths are expanded).
    #[serde(default, deserialize_with = "null_as_default")]
    pub path: String,
}

/// The part of dstack's `JobSpec` the runner reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The replica number.
    #[serde(default, deserialize_with = "null_as_default")]
    pub replica_num: i64,
    /// The job number within the replica (`DSTACK_NODE_RANK`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub job_num: i64,
    /// Jobs per replica (`DSTACK_NODES_NUM`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub jobs_per_replica: i64,
    /// The user to run as.
    #[serde(default)]
    pub user: Option<UnixUser>,
    /// The full argv, e.g. `["/bin/bash", "-i", "-c", "<joined commands>"]`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub commands: Vec<String>,
    /// Legacy; the server folds the entrypoint into `commands`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables (win over everything else).
    #[serde(default, deserialize_with = "null_as_default")]
    pub env: IndexMap<String, String>,
    /// Clone only one branch.
    #[serde(default)]
    pub single_branch: Option<bool>,
    /// Stop the job after this many seconds (`None` or `0`: no limit).
    #[serde(default)]
    pub max_duration: Option<i64>,
    /// The job's SSH key pair.
    #[serde(default)]
    pub ssh_key: Option<SshKeyPair>,
    /// The working directory (absolute, or starting with `~`).
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Where the repo is checked out (relative to the working directory).
    #[serde(default)]
    pub repo_dir: Option<String>,
    /// The repo (jobs submitted before 0.19.17 carry it in the run spec only).
    #[serde(default)]
    pub repo_data: Option<RepoData>,
    /// `error` or `skip` when the repo directory is not empty.
    #[serde(default)]
    pub repo_exists_action: Option<String>,
    /// File archives to unpack before running.
    #[serde(default, deserialize_with = "null_as_default")]
    pub file_archives: Vec<FileArchive>,
}

/// The job submission as the runner sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSubmissionInfo {
    /// The submission id (`DSTACK_JOB_ID`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
}

/// Cluster facts for multi-node jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The internal IPs of all jobs of the replica (`DSTACK_NODES_IPS`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub job_ips: Vec<String>,
    /// The master node's IP (`DSTACK_MASTER_NODE_IP`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub master_job_ip: String,
    /// GPUs per job (`DSTACK_GPUS_PER_NODE`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub gpus_per_job: i64,
    /// GPUs of each node in `job_ips` order (newer servers).
    #[serde(default, deserialize_with = "null_as_default")]
    pub gpus_per_node: Vec<i64>,
}

/// Credentials for cloning a remote repo. `Debug` hides the secrets.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoCredentials {
    /// The clone URL (`https://…` or `git@…`/`ssh://…`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub clone_url: String,
    /// An SSH private key.
    #[serde(default)]
    pub private_key: Option<String>,
    /// An OAuth token.
    #[serde(default)]
    pub oauth_token: Option<String>,
}

impl fmt::Debug for RepoCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoCredentials")
            .field("clone_url", &self.clone_url)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "oauth_token",
                &self.oauth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `POST /api/submit`: the job definition.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubmitBody {
    /// The run.
    #[serde(default, deserialize_with = "null_as_default")]
    pub run: RunInfo,
    /// The job spec.
    #[serde(default, deserialize_with = "null_as_default")]
    pub job_spec: JobSpec,
    /// The submission.
    #[serde(default, deserialize_with = "null_as_default")]
    pub job_submission: JobSubmissionInfo,
    /// Cluster facts.
    #[serde(default)]
    pub cluster_info: Option<ClusterInfo>,
    /// Secrets (the server interpolates them already and sends `{}`).
    #[serde(default)]
    pub secrets: Option<IndexMap<String, String>>,
    /// Repo credentials.
    #[serde(default)]
    pub repo_credentials: Option<RepoCredentials>,
    /// Log bytes per hour, `None`/`0` = unlimited.
    #[serde(default)]
    pub log_quota_hour: Option<i64>,
    /// Deprecated copy of `run.run_spec` for runners from 0.19.8 and older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_spec: Option<RunSpecInfo>,
}

impl fmt::Debug for SubmitBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitBody")
            .field("run", &self.run)
            .field("job_spec", &self.job_spec)
            .field("job_submission", &self.job_submission)
            .field("cluster_info", &self.cluster_info)
            .field("secrets", &self.secrets.as_ref().map(|s| s.len()))
            .field("repo_credentials", &self.repo_credentials)
            .field("log_quota_hour", &self.log_quota_hour)
            .finish_non_exhaustive()
    }
}

impl SubmitBody {
    /// The run spec: `run.run_spec`, or the deprecated top-level copy when the former is empty.
    pub fn run_spec(&self) -> &RunSpecInfo {
        match &self.run_spec {
            Some(spec) if self.run.run_spec.run_name.is_empty() => spec,
            _ => &self.run.run_spec,
        }
    }

    /// The repo data: the job spec's, or the run spec's for jobs submitted before 0.19.17.
    pub fn repo_data(&self) -> &RepoData {
        self.job_spec
            .repo_data
            .as_ref()
            .unwrap_or(&self.run_spec().repo_data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_event_is_base64() {
        let e = LogEvent {
            message: b"hello\n".to_vec(),
            timestamp: 1_700_000_000_123,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["message"], "aGVsbG8K");
        let back: LogEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn state_event_wire_shape_matches_go() {
        let e = JobStateEvent {
            state: JobState::Done,
            timestamp: 5,
            termination_reason: String::new(),
            termination_message: String::new(),
            exit_status: Some(0),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"state":"done","timestamp":5,"termination_reason":"","termination_message":"","exit_status":0}"#
        );
    }

    #[test]
    fn submit_body_parses_what_the_python_server_sends() {
        let body: SubmitBody = serde_json::from_str(
            r#"{
              "run": {"id": "r1", "run_spec": {"run_name": "cool-cat-1", "repo_id": "repo",
                      "repo_data": {"repo_type": "virtual"},
                      "configuration": {"type": "task", "commands": ["echo hi"], "nodes": 1},
                      "configuration_path": ".dstack.yml"}},
              "job_spec": {"replica_num": 0, "job_num": 0, "jobs_per_replica": 1,
                           "user": null, "commands": ["/bin/sh", "-i", "-c", "echo hi"],
                           "env": {"A": "1"}, "single_branch": null, "max_duration": null,
                           "ssh_key": null, "working_dir": null, "repo_dir": "/workflow",
                           "repo_data": {"repo_type": "virtual"}, "repo_exists_action": "error",
                           "file_archives": []},
              "job_submission": {"id": "s1"},
              "cluster_info": {"job_ips": [], "master_job_ip": "", "gpus_per_job": 0},
              "secrets": {}, "repo_credentials": null, "log_quota_hour": null,
              "run_spec": {"run_name": "cool-cat-1"}
            }"#,
        )
        .unwrap();
        assert_eq!(body.run_spec().run_name, "cool-cat-1");
        assert_eq!(body.run.run_spec.configuration.kind, "task");
        assert_eq!(body.run.run_spec.configuration.extra["nodes"], 1);
        assert_eq!(body.job_spec.commands.len(), 4);
        assert_eq!(body.repo_data().repo_type, "virtual");
        assert_eq!(body.job_submission.id, "s1");
        let round = serde_json::to_value(&body).unwrap();
        assert_eq!(
            round["run"]["run_spec"]["configuration"]["commands"][0],
            "echo hi"
        );
    }

    #[test]
    fn pull_response_tolerates_old_runners() {
        let r: PullResponse = serde_json::from_str(
            r#"{"job_states":null,"job_logs":[],"runner_logs":[],"last_updated":7}"#,
        )
        .unwrap();
        assert!(r.job_states.is_empty());
        assert_eq!(r.has_more, None);
    }
}
