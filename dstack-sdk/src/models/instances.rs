//! Instances: [`Instance`], [`InstanceStatus`], [`InstanceTerminationReason`], health checks,
//! and the `/api/instances/*` request bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::models::backends::BackendType;
use crate::models::offers::InstanceType;
use crate::models::resources::AcceleratorVendor;

/// The lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Created, waiting to be provisioned (or an SSH host waiting for its deploy).
    Pending,
    /// The cloud instance is starting.
    Provisioning,
    /// Ready, without jobs.
    Idle,
    /// Running jobs.
    Busy,
    /// Being terminated.
    Terminating,
    /// Gone.
    Terminated,
}

impl InstanceStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [InstanceStatus; 6] = [
        InstanceStatus::Pending,
        InstanceStatus::Provisioning,
        InstanceStatus::Idle,
        InstanceStatus::Busy,
        InstanceStatus::Terminating,
        InstanceStatus::Terminated,
    ];

    /// `terminating` and `terminated`: the statuses that count as not active.
    pub const FINISHED: [InstanceStatus; 2] =
        [InstanceStatus::Terminating, InstanceStatus::Terminated];

    /// Idle or busy: the instance is up and usable.
    pub fn is_available(self) -> bool {
        matches!(self, InstanceStatus::Idle | InstanceStatus::Busy)
    }

    /// Not terminating or terminated.
    pub fn is_active(self) -> bool {
        !Self::FINISHED.contains(&self)
    }

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Pending => "pending",
            InstanceStatus::Provisioning => "provisioning",
            InstanceStatus::Idle => "idle",
            InstanceStatus::Busy => "busy",
            InstanceStatus::Terminating => "terminating",
            InstanceStatus::Terminated => "terminated",
        }
    }
}

/// Why an instance was terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceTerminationReason {
    /// Deleted by a user.
    TerminatedByUser,
    /// Idle longer than its idle duration.
    IdleTimeout,
    /// Did not become ready in time.
    ProvisioningTimeout,
    /// An error (see the message).
    Error,
    /// Its job finished (container backends).
    JobFinished,
    /// Unreachable past the termination deadline.
    Unreachable,
    /// No offer could be provisioned.
    NoOffers,
    /// The cluster master failed to start.
    MasterFailed,
    /// The fleet had more than `nodes.max` instances.
    MaxInstancesLimit,
    /// The fleet spec changed and the instance no longer matches.
    FleetSpecMismatch,
    /// The account balance is too low (dstack Sky).
    NoBalance,
}

impl InstanceTerminationReason {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TerminatedByUser => "terminated_by_user",
            Self::IdleTimeout => "idle_timeout",
            Self::ProvisioningTimeout => "provisioning_timeout",
            Self::Error => "error",
            Self::JobFinished => "job_finished",
            Self::Unreachable => "unreachable",
            Self::NoOffers => "no_offers",
            Self::MasterFailed => "master_failed",
            Self::MaxInstancesLimit => "max_instances_limit",
            Self::FleetSpecMismatch => "fleet_spec_mismatch",
            Self::NoBalance => "no_balance",
        }
    }

    /// Parses a stored value: the wire string, or one of the free-text reasons servers before
    /// 0.20.1 stored (unknown text maps to `error`, as in dstack).
    pub fn from_stored(v: &str) -> Self {
        if let Ok(r) = serde_json::from_value::<Self>(serde_json::Value::String(v.to_string())) {
            return r;
        }
        match v {
            "Idle timeout" => Self::IdleTimeout,
            "Instance has not become running in time"
            | "Provisioning timeout expired"
            | "Proivisioning timeout expired"
            | "The proivisioning timeout expired" => Self::ProvisioningTimeout,
            "All offers failed"
            | "No offers found"
            | "There were no offers found"
            | "Retry duration expired"
            | "The retry's duration expired" => Self::NoOffers,
            "Master instance failed to start" => Self::MasterFailed,
            "Instance job finished" => Self::JobFinished,
            "Termination deadline" => Self::Unreachable,
            "Fleet has too many instances" => Self::MaxInstancesLimit,
            "Low account balance" => Self::NoBalance,
            _ => Self::Error,
        }
    }
}

/// An instance's health, from DCGM checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// No problem.
    #[default]
    Healthy,
    /// A non-fatal problem.
    Warning,
    /// A failure.
    Failure,
}

/// One event of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// When it happened.
    #[serde(with = "crate::models::datetime")]
    pub timestamp: DateTime<Utc>,
    /// Its severity.
    pub status: HealthStatus,
    /// What happened.
    pub message: String,
}

/// One collected health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// When it was collected.
    #[serde(with = "crate::models::datetime")]
    pub collected_at: DateTime<Utc>,
    /// The overall status.
    pub status: HealthStatus,
    /// The events.
    pub events: Vec<HealthEvent>,
}

/// The accelerator driver installed on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuDriverInfo {
    /// The vendor, when the shim could detect it.
    #[serde(default)]
    pub vendor: Option<AcceleratorVendor>,
    /// The driver version.
    pub version: String,
}

/// An SSH endpoint: `username@hostname:port` (a jump host, or an SSH-fleet proxy).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshConnectionParams {
    /// The host.
    pub hostname: String,
    /// The user.
    pub username: String,
    /// The port.
    pub port: u16,
}

/// An instance as the API returns it (in fleets and `instances/list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The instance's id.
    pub id: Uuid,
    /// Its project.
    pub project_name: String,
    /// Its backend (from the offer).
    #[serde(default)]
    pub backend: Option<BackendType>,
    /// Its type (from the provisioning data).
    #[serde(default)]
    pub instance_type: Option<InstanceType>,
    /// Its name, `<fleet>-<num>`.
    pub name: String,
    /// Its fleet's id.
    #[serde(default)]
    pub fleet_id: Option<Uuid>,
    /// Its fleet's name.
    #[serde(default)]
    pub fleet_name: Option<String>,
    /// Its number within the fleet.
    pub instance_num: i64,
    /// Deprecated; always `null`.
    #[serde(default)]
    pub job_name: Option<String>,
    /// Its address (from the provisioning data).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Its status.
    pub status: InstanceStatus,
    /// Whether the server cannot reach it now.
    #[serde(default)]
    pub unreachable: bool,
    /// Its health.
    #[serde(default)]
    pub health_status: HealthStatus,
    /// Why it was terminated ([`InstanceTerminationReason`] as a string).
    #[serde(default)]
    pub termination_reason: Option<String>,
    /// Details of the termination.
    #[serde(default)]
    pub termination_reason_message: Option<String>,
    /// When it was created (note: `created`, not `created_at`).
    #[serde(with = "crate::models::datetime")]
    pub created: DateTime<Utc>,
    /// When it finished.
    #[serde(with = "crate::models::datetime::option", default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Its region (from the offer).
    #[serde(default)]
    pub region: Option<String>,
    /// Its zone.
    #[serde(default)]
    pub availability_zone: Option<String>,
    /// Its price per hour (from the offer).
    #[serde(default)]
    pub price: Option<f64>,
    /// How many blocks it is split into.
    #[serde(default)]
    pub total_blocks: Option<i64>,
    /// How many blocks are in use.
    #[serde(default)]
    pub busy_blocks: i64,
    /// The accelerator driver, when known.
    #[serde(default)]
    pub gpu_driver: Option<GpuDriverInfo>,
}

impl Instance {
    /// The termination reason as an enum (legacy strings mapped).
    pub fn termination_reason_enum(&self) -> Option<InstanceTerminationReason> {
        self.termination_reason
            .as_deref()
            .map(InstanceTerminationReason::from_stored)
    }
}

/// Body of `POST /api/project/{p}/instances/get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetInstanceRequest {
    /// The instance id.
    pub id: Uuid,
}

fn default_instances_limit() -> u32 {
    1000
}

/// Body of `POST /api/instances/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListInstancesRequest {
    /// Only these projects.
    #[serde(default)]
    pub project_names: Option<Vec<String>>,
    /// Only these fleets.
    #[serde(default)]
    pub fleet_ids: Option<Vec<Uuid>>,
    /// Hide terminating and terminated instances.
    #[serde(default)]
    pub only_active: bool,
    /// Include instances of fleets imported from other projects.
    #[serde(default)]
    pub include_imported: bool,
    /// Keyset cursor: `created` of the last instance of the previous page.
    #[serde(with = "crate::models::datetime::option", default)]
    pub prev_created_at: Option<DateTime<Utc>>,
    /// Keyset cursor: id of the last instance of the previous page.
    #[serde(default)]
    pub prev_id: Option<Uuid>,
    /// Page size (default 1000).
    #[serde(default = "default_instances_limit")]
    pub limit: u32,
    /// Oldest first when true.
    #[serde(default)]
    pub ascending: bool,
}

impl Default for ListInstancesRequest {
    fn default() -> Self {
        Self {
            project_names: None,
            fleet_ids: None,
            only_active: false,
            include_imported: false,
            prev_created_at: None,
            prev_id: None,
            limit: default_instances_limit(),
            ascending: false,
        }
    }
}

/// Body of `instances/get_instance_health_checks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetInstanceHealthChecksRequest {
    /// The fleet.
    pub fleet_name: String,
    /// The instance number in the fleet.
    pub instance_num: i64,
    /// Only checks collected after this time.
    #[serde(with = "crate::models::datetime::option", default)]
    pub after: Option<DateTime<Utc>>,
    /// Only checks collected before this time.
    #[serde(with = "crate::models::datetime::option", default)]
    pub before: Option<DateTime<Utc>>,
    /// At most this many checks.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Response of `instances/get_instance_health_checks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetInstanceHealthChecksResponse {
    /// The checks.
    pub health_checks: Vec<HealthCheck>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance_json() -> serde_json::Value {
        json!({
            "id": "6f1c1c3e-4d55-4c3e-8f57-0b6e6b1d2a01",
            "project_name": "main",
            "backend": "aws",
            "instance_type": {"name": "g5.xlarge", "resources": {
                "cpus": 4, "memory_mib": 16384,
                "gpus": [{"name": "A10G", "memory_mib": 24576, "vendor": "nvidia"}],
                "spot": false, "disk": {"size_mib": 102400}, "cpu_arch": null, "description": ""
            }},
            "name": "my-fleet-0",
            "fleet_id": "0d6a2f0e-90f5-4d6b-b1f5-7c1a7e2b3c4d",
            "fleet_name": "my-fleet",
            "instance_num": 0,
            "job_name": null,
            "hostname": "3.91.2.10",
            "status": "busy",
            "unreachable": false,
            "health_status": "healthy",
            "termination_reason": null,
            "termination_reason_message": null,
            "created": "2025-06-01T12:00:00.250000Z",
            "finished_at": null,
            "region": "us-east-1",
            "availability_zone": "us-east-1a",
            "price": 1.006,
            "total_blocks": 1,
            "busy_blocks": 1,
            "gpu_driver": {"vendor": "nvidia", "version": "570.86.15"}
        })
    }

    #[test]
    fn instance_round_trip() {
        let i: Instance = serde_json::from_value(instance_json()).unwrap();
        assert!(i.status.is_available() && i.status.is_active());
        assert_eq!(serde_json::to_value(&i).unwrap(), instance_json());
    }

    #[test]
    fn instance_defaults_and_reasons() {
        let i: Instance = serde_json::from_value(json!({
            "id": "6f1c1c3e-4d55-4c3e-8f57-0b6e6b1d2a01", "project_name": "main", "name": "f-1",
            "instance_num": 1, "status": "terminated", "created": "2025-06-01T12:00:00Z",
            "termination_reason": "Termination deadline"
        }))
        .unwrap();
        assert_eq!(
            i.termination_reason_enum(),
            Some(InstanceTerminationReason::Unreachable)
        );
        assert!(!i.status.is_active());
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["health_status"], json!("healthy"));
        assert_eq!(v["busy_blocks"], json!(0));
        assert_eq!(v["gpu_driver"], json!(null));
        assert_eq!(
            InstanceTerminationReason::from_stored("no_offers"),
            InstanceTerminationReason::NoOffers
        );
        assert_eq!(
            InstanceTerminationReason::from_stored("whatever"),
            InstanceTerminationReason::Error
        );
        for s in InstanceStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
    }

    #[test]
    fn health_checks_shape() {
        let v = json!({"health_checks": [{
            "collected_at": "2025-06-01T12:00:00Z", "status": "warning",
            "events": [{"timestamp": "2025-06-01T11:59:59.500000Z", "status": "warning", "message": "XID 79"}]
        }]});
        let r: GetInstanceHealthChecksResponse = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        let l: ListInstancesRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(l.limit, 1000);
    }
}
