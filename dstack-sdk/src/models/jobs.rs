//! Jobs: [`JobSpec`], [`JobSubmission`], [`Job`], provisioning and runtime data,
//! [`JobStatus`] with its finished set, and [`JobTerminationReason`] with the status it leads
//! to, its retry event and its error text.

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::models::backends::BackendType;
use crate::models::common::{Memory, RegistryAuth};
use crate::models::configurations::{
    DEFAULT_REPLICA_GROUP_NAME, HttpHeaderSpec, HttpMethod, LEGACY_REPO_DIR, RepoExistsAction,
};
use crate::models::instances::{GpuDriverInfo, SshConnectionParams};
use crate::models::offers::{InstanceOfferWithAvailability, InstanceType};
use crate::models::profiles::{RetryEvent, UtilizationPolicy};
use crate::models::resources::Requirements;
use crate::models::volumes::MountPoint;

// ---------------------------------------------------------------------------------------------
// Statuses and termination reasons

/// The state of one job submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for an instance.
    Submitted,
    /// The instance is being provisioned or the runner is starting.
    Provisioning,
    /// The shim is pulling the image.
    Pulling,
    /// The job runs.
    Running,
    /// Being stopped.
    Terminating,
    /// Stopped (by a user or the server).
    Terminated,
    /// Aborted by a user.
    Aborted,
    /// Failed.
    Failed,
    /// Finished successfully.
    Done,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [JobStatus; 9] = [
        JobStatus::Submitted,
        JobStatus::Provisioning,
        JobStatus::Pulling,
        JobStatus::Running,
        JobStatus::Terminating,
        JobStatus::Terminated,
        JobStatus::Aborted,
        JobStatus::Failed,
        JobStatus::Done,
    ];

    /// The finished statuses: terminated, aborted, failed, done.
    pub const FINISHED: [JobStatus; 4] = [
        JobStatus::Terminated,
        JobStatus::Aborted,
        JobStatus::Failed,
        JobStatus::Done,
    ];

    /// Whether the job reached a final status.
    pub fn is_finished(self) -> bool {
        Self::FINISHED.contains(&self)
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Submitted => "submitted",
            JobStatus::Provisioning => "provisioning",
            JobStatus::Pulling => "pulling",
            JobStatus::Running => "running",
            JobStatus::Terminating => "terminating",
            JobStatus::Terminated => "terminated",
            JobStatus::Aborted => "aborted",
            JobStatus::Failed => "failed",
            JobStatus::Done => "done",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job was terminated; decides its final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobTerminationReason {
    /// Server: no fleet, offer or capacity for the job.
    FailedToStartDueToNoCapacity,
    /// Server: a spot instance was interrupted (or lost while spot).
    InterruptedByNoCapacity,
    /// Server: the instance was unreachable for too long.
    InstanceUnreachable,
    /// Server: the fleet is no longer imported into the project.
    InstanceAccessRevoked,
    /// Server: the instance never got a hostname.
    WaitingInstanceLimitExceeded,
    /// Server: the runner did not come up in time.
    WaitingRunnerLimitExceeded,
    /// Server: a user stopped the run.
    TerminatedByUser,
    /// Server: volumes could not be attached.
    VolumeError,
    /// Server: gateway registration failed.
    GatewayError,
    /// Server: the service scaled down.
    ScaledDown,
    /// Server: the runner reported success.
    DoneByRunner,
    /// Server: a user aborted the run.
    AbortedByUser,
    /// Server: terminated by the server (run failure, resubmission, …).
    TerminatedByServer,
    /// Server: a dev environment had no SSH connection for `inactivity_duration`.
    InactivityDurationExceeded,
    /// Server: GPU utilization stayed below the policy.
    TerminatedDueToUtilizationPolicy,
    /// Runner: the container exited with a non-zero code.
    ContainerExitedWithError,
    /// Runner: ports could not be bound.
    PortsBindingFailed,
    /// Runner: the container could not be created.
    CreatingContainerError,
    /// Runner: the executor failed.
    ExecutorError,
    /// Runner: `max_duration` was exceeded.
    MaxDurationExceeded,
    /// Runner: the log quota was exceeded.
    LogQuotaExceeded,
}

impl JobTerminationReason {
    /// Every reason, in dstack's order.
    pub const ALL: [JobTerminationReason; 21] = [
        Self::FailedToStartDueToNoCapacity,
        Self::InterruptedByNoCapacity,
        Self::InstanceUnreachable,
        Self::InstanceAccessRevoked,
        Self::WaitingInstanceLimitExceeded,
        Self::WaitingRunnerLimitExceeded,
        Self::TerminatedByUser,
        Self::VolumeError,
        Self::GatewayError,
        Self::ScaledDown,
        Self::DoneByRunner,
        Self::AbortedByUser,
        Self::TerminatedByServer,
        Self::InactivityDurationExceeded,
        Self::TerminatedDueToUtilizationPolicy,
        Self::ContainerExitedWithError,
        Self::PortsBindingFailed,
        Self::CreatingContainerError,
        Self::ExecutorError,
        Self::MaxDurationExceeded,
        Self::LogQuotaExceeded,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailedToStartDueToNoCapacity => "failed_to_start_due_to_no_capacity",
            Self::InterruptedByNoCapacity => "interrupted_by_no_capacity",
            Self::InstanceUnreachable => "instance_unreachable",
            Self::InstanceAccessRevoked => "instance_access_revoked",
            Self::WaitingInstanceLimitExceeded => "waiting_instance_limit_exceeded",
            Self::WaitingRunnerLimitExceeded => "waiting_runner_limit_exceeded",
            Self::TerminatedByUser => "terminated_by_user",
            Self::VolumeError => "volume_error",
            Self::GatewayError => "gateway_error",
            Self::ScaledDown => "scaled_down",
            Self::DoneByRunner => "done_by_runner",
            Self::AbortedByUser => "aborted_by_user",
            Self::TerminatedByServer => "terminated_by_server",
            Self::InactivityDurationExceeded => "inactivity_duration_exceeded",
            Self::TerminatedDueToUtilizationPolicy => "terminated_due_to_utilization_policy",
            Self::ContainerExitedWithError => "container_exited_with_error",
            Self::PortsBindingFailed => "ports_binding_failed",
            Self::CreatingContainerError => "creating_container_error",
            Self::ExecutorError => "executor_error",
            Self::MaxDurationExceeded => "max_duration_exceeded",
            Self::LogQuotaExceeded => "log_quota_exceeded",
        }
    }

    /// Parses the wire string.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == s)
    }

    /// The final status a job with this reason gets.
    pub fn to_status(self) -> JobStatus {
        match self {
            Self::FailedToStartDueToNoCapacity
            | Self::InterruptedByNoCapacity
            | Self::InstanceUnreachable
            | Self::InstanceAccessRevoked
            | Self::WaitingInstanceLimitExceeded
            | Self::WaitingRunnerLimitExceeded
            | Self::VolumeError
            | Self::GatewayError
            | Self::ContainerExitedWithError
            | Self::PortsBindingFailed
            | Self::CreatingContainerError
            | Self::ExecutorError
            | Self::LogQuotaExceeded => JobStatus::Failed,
            Self::TerminatedByUser
            | Self::ScaledDown
            | Self::TerminatedByServer
            | Self::InactivityDurationExceeded
            | Self::TerminatedDueToUtilizationPolicy
            | Self::MaxDurationExceeded => JobStatus::Terminated,
            Self::DoneByRunner => JobStatus::Done,
            Self::AbortedByUser => JobStatus::Aborted,
        }
    }

    /// The retry event this reason triggers: no capacity → `no-capacity`, interruption →
    /// `interruption`, any other failure → `error`; `None` for reasons never retried.
    pub fn to_retry_event(self) -> Option<RetryEvent> {
        match self {
            Self::FailedToStartDueToNoCapacity => Some(RetryEvent::NoCapacity),
            Self::InterruptedByNoCapacity => Some(RetryEvent::Interruption),
            r if r.to_status() == JobStatus::Failed => Some(RetryEvent::Error),
            _ => None,
        }
    }

    /// The submission's `error` text (`None` where the status message already says it).
    pub fn to_error(self) -> Option<&'static str> {
        Some(match self {
            Self::InstanceUnreachable => "instance unreachable",
            Self::InstanceAccessRevoked => "instance access revoked",
            Self::WaitingInstanceLimitExceeded => "waiting instance limit exceeded",
            Self::WaitingRunnerLimitExceeded => "waiting runner limit exceeded",
            Self::VolumeError => "volume error",
            Self::GatewayError => "gateway error",
            Self::ScaledDown => "scaled down",
            Self::InactivityDurationExceeded => "inactivity duration exceeded",
            Self::TerminatedDueToUtilizationPolicy => "utilization policy",
            Self::PortsBindingFailed => "ports binding failed",
            Self::CreatingContainerError => "runner error",
            Self::ExecutorError => "executor error",
            Self::MaxDurationExceeded => "max duration exceeded",
            Self::LogQuotaExceeded => "log quota exceeded",
            _ => return None,
        })
    }
}

impl fmt::Display for JobTerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `status_message` dstack shows for a job submission: `exited (N)`, `no fleets`,
/// `no capacity`, `interrupted`, `error`, `stopped`, `aborted`, or the status itself.
pub fn job_status_message(
    status: JobStatus,
    termination_reason: Option<JobTerminationReason>,
    termination_reason_message: Option<&str>,
    exit_status: Option<i64>,
) -> String {
    use JobTerminationReason as R;
    match status {
        JobStatus::Done => "exited (0)".to_string(),
        JobStatus::Failed => match termination_reason {
            Some(R::ContainerExitedWithError) => match exit_status {
                Some(code) => format!("exited ({code})"),
                None => "exited (None)".to_string(),
            },
            Some(R::FailedToStartDueToNoCapacity) => {
                if termination_reason_message.is_some_and(|m| m.contains("No matching fleet found"))
                {
                    "no fleets".to_string()
                } else {
                    "no capacity".to_string()
                }
            }
            Some(R::InterruptedByNoCapacity) => "interrupted".to_string(),
            _ => "error".to_string(),
        },
        JobStatus::Terminated => match termination_reason {
            Some(R::TerminatedByUser) => "stopped".to_string(),
            Some(R::AbortedByUser) => "aborted".to_string(),
            _ => status.as_str().to_string(),
        },
        _ => status.as_str().to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Small shared shapes

/// A retry policy resolved for a job: the events and the duration in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRetry {
    /// The events that trigger a retry.
    pub on_events: Vec<RetryEvent>,
    /// How long to keep retrying, seconds.
    pub duration: i64,
}

/// An application port a dev environment exposes (IDE links).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// The container port.
    pub port: i64,
    /// The local port to map it to.
    #[serde(default)]
    pub map_to_port: Option<i64>,
    /// The app name.
    pub app_name: String,
    /// The URL path.
    #[serde(default)]
    pub url_path: Option<String>,
    /// URL query parameters.
    #[serde(default)]
    pub url_query_params: Option<IndexMap<String, String>>,
}

/// The user a job runs as (`user[:group]`, names or ids).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixUser {
    /// The user id.
    #[serde(default)]
    pub uid: Option<i64>,
    /// The group id.
    #[serde(default)]
    pub gid: Option<i64>,
    /// The user name.
    #[serde(default)]
    pub username: Option<String>,
    /// The group name.
    #[serde(default)]
    pub groupname: Option<String>,
}

/// The job's SSH key pair. `Debug` hides the private key; API responses drop it entirely.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSshKey {
    /// The private key.
    pub private: String,
    /// The public key.
    pub public: String,
}

impl fmt::Debug for JobSshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobSshKey")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

/// An uploaded file archive and where it is unpacked in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileArchiveMapping {
    /// The archive id.
    pub id: Uuid,
    /// The path in the container.
    pub path: String,
}

/// The repo a run uses, discriminated by `repo_type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "repo_type")]
pub enum RunRepoData {
    /// A remote Git repo.
    #[serde(rename = "remote")]
    Remote {
        /// `host/owner/name`-style repo name.
        repo_name: String,
        /// The branch.
        #[serde(default)]
        repo_branch: Option<String>,
        /// The commit.
        #[serde(default)]
        repo_hash: Option<String>,
        /// The committer name to configure.
        #[serde(default)]
        repo_config_name: Option<String>,
        /// The committer email to configure.
        #[serde(default)]
        repo_config_email: Option<String>,
    },
    /// A local directory.
    #[serde(rename = "local")]
    Local {
        /// The directory.
        repo_dir: String,
    },
    /// No repo (the default, repo id `none`).
    #[serde(rename = "virtual")]
    Virtual,
}

/// The HTTP readiness probe of a service job, with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// Always `http`.
    #[serde(rename = "type")]
    pub kind: ProbeType,
    /// The URL path.
    pub url: String,
    /// The method (default `get`).
    #[serde(default = "default_probe_method")]
    pub method: HttpMethod,
    /// Extra headers.
    #[serde(
        default,
        deserialize_with = "de_headers",
        serialize_with = "ser_headers"
    )]
    pub headers: Vec<HttpHeaderSpec>,
    /// The request body.
    #[serde(default)]
    pub body: Option<String>,
    /// The request timeout, seconds.
    pub timeout: i64,
    /// The interval between probes, seconds.
    pub interval: i64,
    /// Consecutive successes needed to be ready.
    pub ready_after: i64,
    /// Stop probing once ready (default false).
    #[serde(default)]
    pub until_ready: bool,
}

/// The probe type; only `http` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ProbeType {
    /// An HTTP request.
    #[default]
    #[serde(rename = "http")]
    Http,
}

fn default_probe_method() -> HttpMethod {
    HttpMethod::Get
}

#[derive(Serialize, Deserialize)]
struct HeaderWire {
    name: String,
    value: String,
}

fn de_headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HttpHeaderSpec>, D::Error> {
    let raw = Vec::<HeaderWire>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|h| HttpHeaderSpec {
            name: h.name,
            value: h.value,
        })
        .collect())
}

fn ser_headers<S: serde::Serializer>(h: &[HttpHeaderSpec], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|h| HeaderWire {
        name: h.name.clone(),
        value: h.value.clone(),
    }))
}

// ---------------------------------------------------------------------------------------------
// JobSpec

fn default_group_name() -> String {
    DEFAULT_REPLICA_GROUP_NAME.to_string()
}

fn default_repo_dir() -> String {
    LEGACY_REPO_DIR.to_string()
}

fn one() -> i64 {
    1
}

/// What to run for one job of a run, built by the server from the run spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The replica number (default 0).
    #[serde(default)]
    pub replica_num: i64,
    /// The job number within the replica.
    pub job_num: i64,
    /// `<run>-<job_num>-<replica_num>`.
    pub job_name: String,
    /// Jobs per replica (default 1).
    #[serde(default = "one")]
    pub jobs_per_replica: i64,
    /// The service replica group (default `"0"`).
    #[serde(default = "default_group_name")]
    pub replica_group: String,
    /// Exposed applications.
    #[serde(default)]
    pub app_specs: Option<Vec<AppSpec>>,
    /// The user to run as.
    #[serde(default)]
    pub user: Option<UnixUser>,
    /// The command line.
    pub commands: Vec<String>,
    /// Environment variables.
    pub env: IndexMap<String, String>,
    /// The home directory (deprecated).
    #[serde(default)]
    pub home_dir: Option<String>,
    /// The image.
    pub image_name: String,
    /// Run privileged.
    #[serde(default)]
    pub privileged: bool,
    /// Clone only one branch.
    #[serde(default)]
    pub single_branch: Option<bool>,
    /// Maximum running time, seconds.
    #[serde(default)]
    pub max_duration: Option<i64>,
    /// Graceful stop window, seconds.
    #[serde(default)]
    pub stop_duration: Option<i64>,
    /// Terminate on low GPU utilization.
    #[serde(default)]
    pub utilization_policy: Option<UtilizationPolicy>,
    /// Registry credentials for the image.
    #[serde(default)]
    pub registry_auth: Option<RegistryAuth>,
    /// What the instance must satisfy.
    pub requirements: Requirements,
    /// The retry policy.
    #[serde(default)]
    pub retry: Option<JobRetry>,
    /// Volume and instance mounts.
    #[serde(default)]
    pub volumes: Option<Vec<MountPoint>>,
    /// The job's SSH key (removed in API responses).
    #[serde(default)]
    pub ssh_key: Option<JobSshKey>,
    /// The working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The repo.
    #[serde(default)]
    pub repo_data: Option<RunRepoData>,
    /// The hash of the uploaded repo diff.
    #[serde(default)]
    pub repo_code_hash: Option<String>,
    /// Where the repo is checked out (legacy default `/workflow`).
    #[serde(default = "default_repo_dir")]
    pub repo_dir: String,
    /// What to do when `repo_dir` exists.
    #[serde(default)]
    pub repo_exists_action: Option<RepoExistsAction>,
    /// Uploaded file archives.
    #[serde(default)]
    pub file_archives: Vec<FileArchiveMapping>,
    /// The service port.
    #[serde(default)]
    pub service_port: Option<i64>,
    /// Readiness probes.
    #[serde(default)]
    pub probes: Vec<ProbeSpec>,
    /// The node group index (default 0).
    #[serde(default)]
    pub node_group_index: i64,
    /// The node group name (default `"0"`).
    #[serde(default = "default_group_name")]
    pub node_group_name: String,
    /// The job's index within its node group (default 0).
    #[serde(default)]
    pub node_group_job_index: i64,
}

impl JobSpec {
    /// Removes what API responses must not carry (the SSH key).
    pub fn strip_sensitive(&mut self) {
        self.ssh_key = None;
    }
}

// ---------------------------------------------------------------------------------------------
// Provisioning and runtime data

/// How the job container is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The host's network.
    Host,
    /// A bridge network with mapped ports.
    Bridge,
}

fn default_true() -> bool {
    true
}

/// Where and how a job's instance was provisioned (JPD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobProvisioningData {
    /// The backend.
    pub backend: BackendType,
    /// The backend the instance really is in, when provisioned through another one.
    #[serde(default)]
    pub base_backend: Option<BackendType>,
    /// The instance type.
    pub instance_type: InstanceType,
    /// The provider's instance id.
    pub instance_id: String,
    /// The address; may arrive after provisioning.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The private address.
    #[serde(default)]
    pub internal_ip: Option<String>,
    /// Whether the instance has a public IP (default true).
    #[serde(default = "default_true")]
    pub public_ip_enabled: bool,
    /// The SSH-fleet network (`ip/mask`).
    #[serde(default)]
    pub instance_network: Option<String>,
    /// The region.
    pub region: String,
    /// The zone.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// The reservation used.
    #[serde(default)]
    pub reservation: Option<String>,
    /// The price per hour.
    pub price: f64,
    /// The SSH user.
    pub username: String,
    /// The SSH port; may arrive after provisioning.
    #[serde(default)]
    pub ssh_port: Option<i64>,
    /// Whether the shim runs the job in a container (VM backends).
    pub dockerized: bool,
    /// A jump host.
    #[serde(default)]
    pub ssh_proxy: Option<SshConnectionParams>,
    /// Backend-specific data (a JSON string).
    #[serde(default)]
    pub backend_data: Option<String>,
    /// The accelerator driver, when known.
    #[serde(default)]
    pub gpu_driver: Option<GpuDriverInfo>,
}

impl JobProvisioningData {
    /// `base_backend`, or `backend` when unset.
    pub fn get_base_backend(&self) -> BackendType {
        self.base_backend.unwrap_or(self.backend)
    }

    /// The form API responses use for old clients: a missing hostname becomes `""` and a
    /// missing SSH port `22`.
    pub fn for_api(mut self) -> Self {
        if self.hostname.is_none() {
            self.hostname = Some(String::new());
        }
        if self.ssh_port.is_none() {
            self.ssh_port = Some(22);
        }
        self
    }
}

/// What is known only after the job was placed (share of the instance, ports, offer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRuntimeData {
    /// Host or bridge networking.
    pub network_mode: NetworkMode,
    /// GPU share; `None` means all.
    #[serde(default)]
    pub gpu: Option<i64>,
    /// CPU share; `None` means all.
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Memory share, GB; `None` means all.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// Container → host ports, once the shim reports them.
    #[serde(default)]
    pub ports: Option<IndexMap<i64, i64>>,
    /// Volumes used by the job.
    #[serde(default)]
    pub volume_names: Option<Vec<String>>,
    /// The (shared) offer the job runs on.
    #[serde(default)]
    pub offer: Option<InstanceOfferWithAvailability>,
    /// The working directory the runner resolved.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The OS user the runner resolved.
    #[serde(default)]
    pub username: Option<String>,
}

/// Cluster facts the runner gets for multi-node jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The IPs of all jobs.
    pub job_ips: Vec<String>,
    /// The master's IP.
    pub master_job_ip: String,
    /// GPUs on this node.
    pub gpus_per_job: i64,
    /// GPUs on each node, in `job_ips` order.
    #[serde(default)]
    pub gpus_per_node: Vec<i64>,
}

/// A service probe's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// Consecutive successes.
    pub success_streak: i64,
}

/// Image pull progress reported by the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePullProgress {
    /// Bytes downloaded.
    pub downloaded_bytes: i64,
    /// Bytes extracted.
    pub extracted_bytes: i64,
    /// Estimated bytes to download and extract.
    pub total_bytes: i64,
    /// Whether `total_bytes` is final.
    pub is_total_bytes_final: bool,
}

// ---------------------------------------------------------------------------------------------
// Submissions and jobs

/// One attempt at running a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSubmission {
    /// The submission id (also the logs key).
    pub id: Uuid,
    /// The attempt number.
    pub submission_num: i64,
    /// The deployment it belongs to (default 0).
    #[serde(default)]
    pub deployment_num: i64,
    /// When it was submitted.
    #[serde(with = "crate::models::datetime")]
    pub submitted_at: DateTime<Utc>,
    /// When the server last processed it.
    #[serde(with = "crate::models::datetime")]
    pub last_processed_at: DateTime<Utc>,
    /// When it finished (= `last_processed_at` once finished).
    #[serde(with = "crate::models::datetime::option", default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds without SSH connections (dev environments).
    #[serde(default)]
    pub inactivity_secs: Option<i64>,
    /// The status.
    pub status: JobStatus,
    /// The status as shown to users (see [`job_status_message`]).
    #[serde(default)]
    pub status_message: String,
    /// Why it terminated ([`JobTerminationReason`] as a string).
    #[serde(default)]
    pub termination_reason: Option<String>,
    /// Details of the termination.
    #[serde(default)]
    pub termination_reason_message: Option<String>,
    /// The container's exit code.
    #[serde(default)]
    pub exit_status: Option<i64>,
    /// Where it was provisioned.
    #[serde(default)]
    pub job_provisioning_data: Option<JobProvisioningData>,
    /// Runtime facts.
    #[serde(default)]
    pub job_runtime_data: Option<JobRuntimeData>,
    /// A short error text (from the termination reason).
    #[serde(default)]
    pub error: Option<String>,
    /// Probe states.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Image pull progress.
    #[serde(default)]
    pub image_pull_progress: Option<ImagePullProgress>,
}

impl JobSubmission {
    /// The termination reason as an enum, when it is a known one.
    pub fn termination_reason_enum(&self) -> Option<JobTerminationReason> {
        self.termination_reason
            .as_deref()
            .and_then(JobTerminationReason::from_wire)
    }

    /// Sets `status_message` and `error` from the status and termination reason, as dstack
    /// computes them for API responses.
    pub fn fill_derived_fields(&mut self) {
        let reason = self.termination_reason_enum();
        self.status_message = job_status_message(
            self.status,
            reason,
            self.termination_reason_message.as_deref(),
            self.exit_status,
        );
        self.error = reason
            .and_then(JobTerminationReason::to_error)
            .map(str::to_string);
    }

    /// How long it ran (to `finished_at`, or to `now` when not finished).
    pub fn duration(&self, now: DateTime<Utc>) -> chrono::Duration {
        self.finished_at.unwrap_or(now) - self.submitted_at
    }

    /// Its cost: price × hours, 0 without provisioning data.
    pub fn cost(&self, now: DateTime<Utc>) -> f64 {
        match &self.job_provisioning_data {
            Some(jpd) => {
                jpd.price * self.duration(now).num_microseconds().unwrap_or(0) as f64 / 3.6e9
            }
            None => 0.0,
        }
    }
}

/// Connection details of a running job (`runs/get` only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConnectionInfo {
    /// The IDE name for the UI.
    #[serde(default)]
    pub ide_name: Option<String>,
    /// The IDE URL when attached through the CLI.
    #[serde(default)]
    pub attached_ide_url: Option<String>,
    /// The IDE URL through sshproxy.
    #[serde(default)]
    pub proxied_ide_url: Option<String>,
    /// The SSH command when attached through the CLI.
    #[serde(default)]
    pub attached_ssh_command: Option<Vec<String>>,
    /// The SSH command through sshproxy.
    #[serde(default)]
    pub proxied_ssh_command: Option<Vec<String>>,
    /// The sshproxy host.
    #[serde(default)]
    pub sshproxy_hostname: Option<String>,
    /// The sshproxy port.
    #[serde(default)]
    pub sshproxy_port: Option<i64>,
    /// The sshproxy upstream id of this job.
    #[serde(default)]
    pub sshproxy_upstream_id: Option<String>,
}

/// A job: its spec and its submissions, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The spec (of the latest submission).
    pub job_spec: JobSpec,
    /// The submissions, oldest first.
    pub job_submissions: Vec<JobSubmission>,
    /// Connection details (running jobs in `runs/get` only).
    #[serde(default)]
    pub job_connection_info: Option<JobConnectionInfo>,
}

impl Job {
    /// The latest submission.
    pub fn latest_submission(&self) -> Option<&JobSubmission> {
        self.job_submissions.last()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn termination_reason_mapping() {
        use JobStatus as S;
        use JobTerminationReason as R;
        let expected = [
            (R::FailedToStartDueToNoCapacity, S::Failed),
            (R::InterruptedByNoCapacity, S::Failed),
            (R::InstanceUnreachable, S::Failed),
            (R::InstanceAccessRevoked, S::Failed),
            (R::WaitingInstanceLimitExceeded, S::Failed),
            (R::WaitingRunnerLimitExceeded, S::Failed),
            (R::TerminatedByUser, S::Terminated),
            (R::VolumeError, S::Failed),
            (R::GatewayError, S::Failed),
            (R::ScaledDown, S::Terminated),
            (R::DoneByRunner, S::Done),
            (R::AbortedByUser, S::Aborted),
            (R::TerminatedByServer, S::Terminated),
            (R::InactivityDurationExceeded, S::Terminated),
            (R::TerminatedDueToUtilizationPolicy, S::Terminated),
            (R::ContainerExitedWithError, S::Failed),
            (R::PortsBindingFailed, S::Failed),
            (R::CreatingContainerError, S::Failed),
            (R::ExecutorError, S::Failed),
            (R::MaxDurationExceeded, S::Terminated),
            (R::LogQuotaExceeded, S::Failed),
        ];
        assert_eq!(expected.len(), R::ALL.len());
        for (r, s) in expected {
            assert_eq!(r.to_status(), s, "{r}");
            assert!(r.to_status().is_finished());
            assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
            assert_eq!(R::from_wire(r.as_str()), Some(r));
        }
        assert_eq!(
            R::FailedToStartDueToNoCapacity.to_retry_event(),
            Some(RetryEvent::NoCapacity)
        );
        assert_eq!(
            R::InterruptedByNoCapacity.to_retry_event(),
            Some(RetryEvent::Interruption)
        );
        assert_eq!(
            R::InstanceUnreachable.to_retry_event(),
            Some(RetryEvent::Error)
        );
        assert_eq!(R::MaxDurationExceeded.to_retry_event(), None);
        assert_eq!(R::DoneByRunner.to_retry_event(), None);
        assert_eq!(R::CreatingContainerError.to_error(), Some("runner error"));
        assert_eq!(R::ContainerExitedWithError.to_error(), None);
    }

    #[test]
    fn finished_set() {
        let finished: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .collect();
        assert_eq!(
            finished,
            vec![
                JobStatus::Terminated,
                JobStatus::Aborted,
                JobStatus::Failed,
                JobStatus::Done
            ]
        );
    }

    #[test]
    fn status_messages() {
        use JobStatus as S;
        use JobTerminationReason as R;
        assert_eq!(
            job_status_message(S::Done, Some(R::DoneByRunner), None, Some(0)),
            "exited (0)"
        );
        assert_eq!(
            job_status_message(
                S::Failed,
                Some(R::ContainerExitedWithError),
                None,
                Some(137)
            ),
            "exited (137)"
        );
        assert_eq!(
            job_status_message(
                S::Failed,
                Some(R::FailedToStartDueToNoCapacity),
                Some("No matching fleet found. ..."),
                None
            ),
            "no fleets"
        );
        assert_eq!(
            job_status_message(
                S::Failed,
                Some(R::FailedToStartDueToNoCapacity),
                Some("All offers failed"),
                None
            ),
            "no capacity"
        );
        assert_eq!(
            job_status_message(S::Failed, Some(R::InterruptedByNoCapacity), None, None),
            "interrupted"
        );
        assert_eq!(
            job_status_message(S::Failed, Some(R::VolumeError), None, None),
            "error"
        );
        assert_eq!(
            job_status_message(S::Terminated, Some(R::TerminatedByUser), None, None),
            "stopped"
        );
        assert_eq!(
            job_status_message(S::Terminated, Some(R::AbortedByUser), None, None),
            "aborted"
        );
        assert_eq!(
            job_status_message(S::Terminated, Some(R::ScaledDown), None, None),
            "terminated"
        );
        assert_eq!(job_status_message(S::Pulling, None, None, None), "pulling");
    }

    pub(crate) fn submission_json() -> serde_json::Value {
        json!({
            "id": "c7c0a8a2-5b8e-4b57-9d0a-2f1e3d4c5b6a",
            "submission_num": 0,
            "deployment_num": 0,
            "submitted_at": "2025-06-01T12:00:00.123456Z",
            "last_processed_at": "2025-06-01T13:00:00.123456Z",
            "finished_at": "2025-06-01T13:00:00.123456Z",
            "inactivity_secs": null,
            "status": "failed",
            "status_message": "exited (1)",
            "termination_reason": "container_exited_with_error",
            "termination_reason_message": null,
            "exit_status": 1,
            "job_provisioning_data": {
                "backend": "aws",
                "base_backend": null,
                "instance_type": {"name": "g5.xlarge", "resources": {
                    "cpus": 4, "memory_mib": 16384,
                    "gpus": [{"name": "A10G", "memory_mib": 24576, "vendor": "nvidia"}],
                    "spot": true, "disk": {"size_mib": 102400}, "cpu_arch": "x86", "description": ""
                }},
                "instance_id": "i-0abc",
                "hostname": "3.1.2.3",
                "internal_ip": "10.0.0.5",
                "public_ip_enabled": true,
                "instance_network": null,
                "region": "us-east-1",
                "availability_zone": "us-east-1a",
                "reservation": null,
                "price": 0.5,
                "username": "ubuntu",
                "ssh_port": 22,
                "dockerized": true,
                "ssh_proxy": null,
                "backend_data": null,
                "gpu_driver": null
            },
            "job_runtime_data": {
                "network_mode": "host", "gpu": null, "cpu": null, "memory": null,
                "ports": {"10022": 10022}, "volume_names": [], "offer": null,
                "working_dir": "/workflow", "username": "root"
            },
            "error": null,
            "probes": [],
            "image_pull_progress": {"downloaded_bytes": 10, "extracted_bytes": 10, "total_bytes": 10, "is_total_bytes_final": true}
        })
    }

    #[test]
    fn submission_round_trip_and_cost() {
        let s: JobSubmission = serde_json::from_value(submission_json()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), submission_json());
        assert!((s.cost(Utc::now()) - 0.5).abs() < 1e-9);
        let mut s2 = s.clone();
        s2.status_message.clear();
        s2.fill_derived_fields();
        assert_eq!(s2.status_message, "exited (1)");
        assert_eq!(s2.error, None);
        let mut jpd = s.job_provisioning_data.clone().unwrap();
        jpd.hostname = None;
        jpd.ssh_port = None;
        let api = jpd.for_api();
        assert_eq!(
            (api.hostname.as_deref(), api.ssh_port),
            (Some(""), Some(22))
        );
    }

    #[test]
    fn jpd_defaults() {
        let mut v = submission_json()["job_provisioning_data"].clone();
        let o = v.as_object_mut().unwrap();
        for k in [
            "base_backend",
            "hostname",
            "internal_ip",
            "public_ip_enabled",
            "ssh_port",
            "gpu_driver",
        ] {
            o.remove(k);
        }
        let jpd: JobProvisioningData = serde_json::from_value(v).unwrap();
        assert!(jpd.public_ip_enabled);
        assert_eq!(jpd.get_base_backend(), BackendType::Aws);
    }

    #[test]
    fn repo_data_and_user() {
        for v in [
            json!({"repo_type": "virtual"}),
            json!({"repo_type": "local", "repo_dir": "/src"}),
            json!({"repo_type": "remote", "repo_name": "github.com/a/b", "repo_branch": "main",
                   "repo_hash": "abc", "repo_config_name": null, "repo_config_email": null}),
        ] {
            let r: RunRepoData = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&r).unwrap(), v);
        }
        let k = JobSshKey {
            private: "PRIVATE".into(),
            public: "ssh-rsa".into(),
        };
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }
}
