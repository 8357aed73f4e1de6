//! The shim API v2 (`dstack-shim`, port 10998).
//!
//! | method & path | request | response |
//! |---|---|---|
//! | `GET /api/healthcheck` | – | [`HealthcheckResponse`] |
//! | `POST /api/shutdown` | [`ShutdownRequest`] | – |
//! | `GET /api/instance/health` | – | [`InstanceHealthResponse`] |
//! | `GET /api/instance/info` | – | [`InstanceInfoResponse`] |
//! | `GET /api/components` | – | [`ComponentListResponse`] |
//! | `POST /api/components/install` | [`ComponentInstallRequest`] | – |
//! | `GET /api/tasks` | – | [`TaskListResponse`] |
//! | `GET /api/tasks/{id}` | – | [`TaskInfo`] (404 if unknown) |
//! | `POST /api/tasks` | [`TaskConfig`] | [`TaskInfo`] (409 if the id exists) |
//! | `POST /api/tasks/{id}/terminate` | [`TerminateRequest`] | [`TaskInfo`] |
//! | `POST /api/tasks/{id}/remove` | – | – (409 unless terminated) |

use std::fmt;

use serde::{Deserialize, Serialize};

use super::serde_util::null_as_default;

/// The service name the shim reports in its healthcheck.
pub const SHIM_SERVICE: &str = "dstack-shim";

/// The default network mode of a task.
pub const NETWORK_MODE_HOST: &str = "host";

/// `GET /api/healthcheck` (both APIs): the service name and its version, used by the server
/// for feature negotiation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthcheckResponse {
    /// `dstack-shim` or `dstack-runner`.
    pub service: String,
    /// The version, e.g. `0.22.5`.
    pub version: String,
}

/// `POST /api/shutdown`: ask the shim to exit (its supervisor restarts it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownRequest {
    /// Close connections at once instead of draining them.
    #[serde(default)]
    pub force: bool,
}

/// `GET /api/instance/health`: DCGM health on NVIDIA hosts, `null` elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceHealthResponse {
    /// DCGM's health report, kept as JSON.
    #[serde(default)]
    pub dcgm: Option<serde_json::Value>,
}

/// `GET /api/instance/info`: host facts; fields are omitted when not applicable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfoResponse {
    /// `nvidia`, `amd`, `intel` or `tenstorrent`; absent on hosts without accelerators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vendor: Option<String>,
    /// The host driver version, e.g. `570.86.15`; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_driver_version: Option<String>,
}

/// The installation state of a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ComponentStatus {
    /// Not installed.
    #[serde(rename = "not-installed")]
    NotInstalled,
    /// Installed.
    #[serde(rename = "installed")]
    Installed,
    /// Being (re)installed in the background.
    #[serde(rename = "installing")]
    Installing,
    /// The last installation failed.
    #[serde(rename = "error")]
    Error,
}

/// One component (`dstack-runner`, `dstack-shim`) and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInfo {
    /// `dstack-runner` or `dstack-shim`.
    pub name: String,
    /// The installed version (empty when not installed).
    #[serde(default, deserialize_with = "null_as_default")]
    pub version: String,
    /// The installation state.
    pub status: ComponentStatus,
}

/// `GET /api/components`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentListResponse {
    /// The components.
    #[serde(default, deserialize_with = "null_as_default")]
    pub components: Vec<ComponentInfo>,
}

/// `POST /api/components/install`: (re)install a component from a URL in the background.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInstallRequest {
    /// `dstack-runner` or `dstack-shim`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Where to download the binary from.
    #[serde(default, deserialize_with = "null_as_default")]
    pub url: String,
}

/// The task status machine: `pending → preparing → pulling → creating → running →
/// terminated`, where `terminated` is reachable from every status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Submitted, not started.
    Pending,
    /// Preparing GPUs, keys, volumes and the task directory.
    Preparing,
    /// Pulling the image.
    Pulling,
    /// Creating the container.
    Creating,
    /// Running (the runner API is reachable).
    Running,
    /// Finished or stopped; see the termination reason.
    Terminated,
}

impl TaskStatus {
    /// The wire string, e.g. `running`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Preparing => "preparing",
            TaskStatus::Pulling => "pulling",
            TaskStatus::Creating => "creating",
            TaskStatus::Running => "running",
            TaskStatus::Terminated => "terminated",
        }
    }

    /// Whether a task in this status may move to `to` (dstack's `IsTransitionAllowed`).
    pub fn can_become(self, to: TaskStatus) -> bool {
        match to {
            TaskStatus::Pending => false,
            TaskStatus::Preparing => self == TaskStatus::Pending,
            TaskStatus::Pulling => self == TaskStatus::Preparing,
            TaskStatus::Creating => self == TaskStatus::Pulling,
            TaskStatus::Running => matches!(self, TaskStatus::Creating | TaskStatus::Running),
            TaskStatus::Terminated => true,
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `GET /api/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskListItem {
    /// The task id (the server uses the job submission id).
    pub id: String,
    /// The status.
    pub status: TaskStatus,
}

/// `GET /api/tasks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskListResponse {
    /// The tasks (shim 0.19.26 and newer).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tasks: Vec<TaskListItem>,
    /// Bare ids, reported only by shims older than 0.19.26.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
}

/// A published port: `host` on the host maps to `container` in the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host port.
    pub host: u16,
    /// The container port.
    pub container: u16,
}

/// Image pull progress of a task in `pulling`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePullProgress {
    /// Bytes downloaded.
    #[serde(default)]
    pub downloaded_bytes: u64,
    /// Bytes extracted.
    #[serde(default)]
    pub extracted_bytes: u64,
    /// Estimated bytes to download and extract.
    #[serde(default)]
    pub total_bytes: u64,
    /// Whether `total_bytes` is final.
    #[serde(default)]
    pub is_total_bytes_final: bool,
}

/// `GET /api/tasks/{id}` and the answer of submit and terminate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The task id.
    pub id: String,
    /// The status.
    pub status: TaskStatus,
    /// Why the task terminated (a dstack `JobTerminationReason` value), empty otherwise.
    #[serde(default, deserialize_with = "null_as_default")]
    pub termination_reason: String,
    /// A human-readable termination message, empty otherwise.
    #[serde(default, deserialize_with = "null_as_default")]
    pub termination_message: String,
    /// Published ports: `null` until the task runs, then a list (empty with host networking).
    #[serde(default)]
    pub ports: Option<Vec<PortMapping>>,
    /// Pull progress, `null` when not pulling.
    #[serde(default)]
    pub image_pull_progress: Option<ImagePullProgress>,
    /// Debugging only: the container (or process-mode task) name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_name: String,
    /// Debugging only: the container id (empty in process mode).
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_id: String,
    /// Debugging only: the GPUs assigned to the task.
    #[serde(default)]
    pub gpus_ids: Option<Vec<String>>,
}

/// A network volume to attach and mount.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// The backend type, e.g. `aws`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub backend: String,
    /// The volume name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// The provider's volume id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub volume_id: String,
    /// Create a file system on first use.
    #[serde(default, deserialize_with = "null_as_default")]
    pub init_fs: bool,
    /// The device name when attached, e.g. `/dev/sdf`.
    #[serde(default)]
    pub device_name: Option<String>,
}

/// Mount a network volume (by name) at `path` in the task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMountPoint {
    /// The volume name.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Where to mount it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub path: String,
}

/// Mount a host directory at `path` in the task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMountPoint {
    /// The host path.
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_path: String,
    /// Where to mount it.
    #[serde(default, deserialize_with = "null_as_default")]
    pub path: String,
}

/// A device node to expose instead of relying on the vendor's container toolkit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDevice {
    /// The host device path.
    #[serde(default, deserialize_with = "null_as_default")]
    pub path_on_host: String,
    /// The path inside the task.
    #[serde(default, deserialize_with = "null_as_default")]
    pub path_in_container: String,
}

/// `POST /api/tasks`: what to run. The server uses the job submission id as `id`.
/// Every field is optional on the wire (Go zero values), as the shim accepts it.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// The task id (required, non-empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// The human-readable job name (required, non-empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    /// Registry user name for private images.
    #[serde(default, deserialize_with = "null_as_default")]
    pub registry_username: String,
    /// Registry password for private images (never logged).
    #[serde(default, deserialize_with = "null_as_default")]
    pub registry_password: String,
    /// The image (required, non-empty; unused by the process executor).
    #[serde(default, deserialize_with = "null_as_default")]
    pub image_name: String,
    /// The container user (default `root`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_user: String,
    /// Run privileged.
    #[serde(default, deserialize_with = "null_as_default")]
    pub privileged: bool,
    /// GPUs: `-1` = all, `0` = none, `N` = N of them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub gpu: i64,
    /// CPUs (fractional), `0` = all.
    #[serde(default, deserialize_with = "null_as_default")]
    pub cpu: f64,
    /// Memory in bytes, `0` = all.
    #[serde(default, deserialize_with = "null_as_default")]
    pub memory: i64,
    /// Shared memory in bytes, `0` = the default.
    #[serde(default, deserialize_with = "null_as_default")]
    pub shm_size: i64,
    /// `host` (default) or `bridge`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub network_mode: String,
    /// Network volumes to attach.
    #[serde(default, deserialize_with = "null_as_default")]
    pub volumes: Vec<VolumeInfo>,
    /// Where to mount them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub volume_mounts: Vec<VolumeMountPoint>,
    /// Host directories to mount.
    #[serde(default, deserialize_with = "null_as_default")]
    pub instance_mounts: Vec<InstanceMountPoint>,
    /// Explicit GPU device nodes.
    #[serde(default, deserialize_with = "null_as_default")]
    pub gpu_devices: Vec<GpuDevice>,
    /// The host user whose `authorized_keys` get `host_ssh_keys` for the task's lifetime.
    #[serde(default, deserialize_with = "null_as_default")]
    pub host_ssh_user: String,
    /// Public keys allowed to reach the host during the task.
    #[serde(default, deserialize_with = "null_as_default")]
    pub host_ssh_keys: Vec<String>,
    /// Public keys allowed into the task's SSH server.
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_ssh_keys: Vec<String>,
}

impl fmt::Debug for TaskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("image_name", &self.image_name)
            .field("registry_username", &self.registry_username)
            .field("registry_password", &"<redacted>")
            .field("container_user", &self.container_user)
            .field("privileged", &self.privileged)
            .field("gpu", &self.gpu)
            .field("cpu", &self.cpu)
            .field("memory", &self.memory)
            .field("shm_size", &self.shm_size)
            .field("network_mode", &self.network_mode)
            .field("volumes", &self.volumes)
            .field("volume_mounts", &self.volume_mounts)
            .field("instance_mounts", &self.instance_mounts)
            .field("gpu_devices", &self.gpu_devices)
            .field("host_ssh_user", &self.host_ssh_user)
            .field("host_ssh_keys", &self.host_ssh_keys.len())
            .field("container_ssh_keys", &self.container_ssh_keys.len())
            .finish()
    }
}

impl TaskConfig {
    /// A config with the fields the shim requires (`id`, `name`, `image_name`) and dstack's
    /// defaults for the rest (all GPUs, host networking, `root`).
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        image_name: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            image_name: image_name.into(),
            container_user: "root".into(),
            gpu: -1,
            network_mode: NETWORK_MODE_HOST.into(),
            ..Self::default()
        }
    }
}

/// `POST /api/tasks/{id}/terminate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateRequest {
    /// The reason to record (a dstack `JobTerminationReason` value, may be empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub termination_reason: String,
    /// The message to record.
    #[serde(default, deserialize_with = "null_as_default")]
    pub termination_message: String,
    /// Seconds to wait after the polite signal before killing.
    #[serde(default, deserialize_with = "null_as_default")]
    pub timeout: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_config_is_lenient() {
        let cfg: TaskConfig = serde_json::from_str(
            r#"{"id":"j1","name":"run-0-0","image_name":"img","gpu":-1,"volumes":null,
                "unknown":1,"volume_mounts":[{"name":"v","path":"/v"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.id, "j1");
        assert_eq!(cfg.gpu, -1);
        assert!(cfg.volumes.is_empty());
        assert_eq!(cfg.volume_mounts[0].path, "/v");
        assert!(!format!("{cfg:?}").contains("registry_password: \"\""));
    }

    #[test]
    fn task_info_wire_shape() {
        let info = TaskInfo {
            id: "j1".into(),
            status: TaskStatus::Running,
            termination_reason: String::new(),
            termination_message: String::new(),
            ports: Some(vec![]),
            image_pull_progress: None,
            container_name: "run".into(),
            container_id: String::new(),
            gpus_ids: Some(vec![]),
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["status"], "running");
        assert_eq!(v["ports"], serde_json::json!([]));
        assert!(v["image_pull_progress"].is_null());
        let back: TaskInfo = serde_json::from_str(
            r#"{"id":"j1","status":"terminated","termination_reason":null,
                "termination_message":"x"}"#,
        )
        .unwrap();
        assert_eq!(back.status, TaskStatus::Terminated);
        assert_eq!(back.termination_reason, "");
        assert!(back.ports.is_none());
    }

    #[test]
    fn status_transitions() {
        assert!(TaskStatus::Pending.can_become(TaskStatus::Preparing));
        assert!(!TaskStatus::Pending.can_become(TaskStatus::Running));
        assert!(TaskStatus::Running.can_become(TaskStatus::Running));
        assert!(TaskStatus::Terminated.can_become(TaskStatus::Terminated));
        assert!(!TaskStatus::Terminated.can_become(TaskStatus::Running));
    }

    #[test]
    fn instance_info_omits_unknown_fields() {
        let s = serde_json::to_string(&InstanceInfoResponse::default()).unwrap();
        assert_eq!(s, "{}");
    }
}
