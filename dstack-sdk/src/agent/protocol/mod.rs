//! Wire types of the two host-agent HTTP APIs, with dstack's JSON field names.
//!
//! * [`shim`]: the shim API v2 (`dstack-shim`, port 10998): healthcheck, instance facts,
//!   components, and the task lifecycle (`/api/tasks…`).
//! * [`runner`]: the runner API (`dstack-runner`, port 10999): submit, uploads, run,
//!   incremental `pull`, stop, metrics.
//!
//! Requests are parsed leniently, as the Go agents do: unknown fields are ignored and missing
//! ones take their zero value, so that newer servers keep working with this agent and this
//! crate's clients keep working with newer agents.

pub mod runner;
pub mod shim;

pub use runner::{
    ClusterInfo, FileArchive, GpuMetrics, JobInfoResponse, JobSpec, JobState, JobStateEvent,
    JobSubmissionInfo, LogEvent, MetricsResponse, PullResponse, RepoCredentials, RepoData,
    RunConfigurationInfo, RunInfo, RunSpecInfo, SshKeyPair, SubmitBody, UnixUser,
};
pub use shim::{
    ComponentInfo, ComponentInstallRequest, ComponentListResponse, ComponentStatus, GpuDevice,
    HealthcheckResponse, ImagePullProgress, InstanceHealthResponse, InstanceInfoResponse,
    InstanceMountPoint, PortMapping, ShutdownRequest, TaskConfig, TaskInfo, TaskListItem,
    TaskListResponse, TaskStatus, TerminateRequest, VolumeInfo, VolumeMountPoint,
};

/// Serde helpers shared by both APIs.
pub(crate) mod serde_util {
    use serde::{Deserialize, Deserializer};

    /// Deserializes `null` as the type's default (Go's zero value), as Go's decoder does.
    pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Default + Deserialize<'de>,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }

    /// `[]byte` as Go's `encoding/json` writes it: standard base64 with padding.
    pub mod base64_bytes {
        use base64::Engine as _;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Serializes bytes as a base64 string.
        pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
        }

        /// Deserializes a base64 string (or `null`, as empty) into bytes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            let s = Option::<String>::deserialize(d)?.unwrap_or_default();
            base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(serde::de::Error::custom)
        }
    }
}
