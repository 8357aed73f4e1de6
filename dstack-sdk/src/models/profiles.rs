//! Profiles: the provisioning and policy parameters shared by run and fleet configurations
//! (`ProfileParams`), and the named `Profile`.

use indexmap::IndexMap;
use serde::Serialize;

use crate::models::common::{BackendType, EntityReference, OffableDuration, string_enum};
use crate::spec::lax::deserialize_from_value;

/// The default idle duration of run-provisioned instances (5 minutes).
pub const DEFAULT_RUN_TERMINATION_IDLE_TIME: i64 = 5 * 60;
/// The default idle duration of fleet instances (3 days).
pub const DEFAULT_FLEET_TERMINATION_IDLE_TIME: i64 = 72 * 60 * 60;
/// The default graceful stop window (5 minutes).
pub const DEFAULT_STOP_DURATION: i64 = 300;
/// The default retry duration (1 hour).
pub const DEFAULT_RETRY_DURATION: i64 = 3600;

string_enum! {
    /// Whether to provision spot or on-demand instances.
    SpotPolicy {
        /// Spot only.
        Spot = "spot",
        /// On-demand only (the default).
        OnDemand = "on-demand",
        /// Either.
        Auto = "auto",
    }
}

string_enum! {
    /// Whether a run may create instances or only reuse fleet instances.
    CreationPolicy {
        /// Only reuse existing instances.
        Reuse = "reuse",
        /// Reuse, or create when none fits (the default).
        ReuseOrCreate = "reuse-or-create",
    }
}

string_enum! {
    /// The order in which a multi-node run's master and workers start.
    StartupOrder {
        /// No particular order (the default).
        Any = "any",
        /// The master first.
        MasterFirst = "master-first",
        /// The workers first.
        WorkersFirst = "workers-first",
    }
}

string_enum! {
    /// When a multi-node run is considered finished.
    StopCriteria {
        /// When all jobs are done (the default).
        AllDone = "all-done",
        /// When the master job is done.
        MasterDone = "master-done",
    }
}

string_enum! {
    /// An event that a retry policy reacts to.
    RetryEvent {
        /// No offer or capacity was found.
        NoCapacity = "no-capacity",
        /// A spot instance was interrupted.
        Interruption = "interruption",
        /// The job failed with an error.
        Error = "error",
    }
}

string_enum! {
    /// The order in which Vast.ai offers are considered.
    VastAIOfferOrder {
        /// The highest score first (the default).
        Score = "score",
        /// The lowest price first.
        Price = "price",
    }
}

/// A retry policy: on which events to resubmit and for how long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileRetry {
    /// The events to retry on; `None` means all.
    pub on_events: Option<Vec<RetryEvent>>,
    /// How long to keep retrying, in seconds; `None` means the default (1 hour).
    pub duration: Option<i64>,
}

/// The `retry` field: `true`/`false` or a policy object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Retry {
    /// `true` (all events for 1 hour) or `false` (no retry).
    Bool(bool),
    /// An explicit policy.
    Policy(ProfileRetry),
}

/// Terminate a run whose GPU utilization stays below a threshold for a time window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UtilizationPolicy {
    /// The minimum GPU utilization, percent (0..=100).
    pub min_gpu_utilization: i64,
    /// The time window in seconds (at least 5 minutes).
    pub time_window: i64,
}

/// When to start a scheduled run: UTC cron expressions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    /// The cron expressions (a single string on input becomes a one-item list).
    pub cron: Vec<String>,
}

/// Pins a run to specific fleet instances.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum InstanceSelector {
    /// By instance name (also the plain-string form).
    Name {
        /// The instance name.
        name: String,
    },
    /// By hostname or IP address.
    Hostname {
        /// The hostname or IP.
        hostname: String,
    },
    /// By fleet and instance number.
    FleetInstance {
        /// The fleet (`name` or `project/name` on input).
        fleet: EntityReference,
        /// The instance number within the fleet.
        instance: i64,
    },
}

/// Backend-specific profile options (currently only Vast.ai), discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendProfileOptions {
    /// The backend: always `"vastai"`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The order in which offers are considered.
    pub offer_order: Option<VastAIOfferOrder>,
    /// The minimum reliability (0..=1).
    pub min_reliability: Option<f64>,
    /// The minimum score (≥ 0).
    pub min_score: Option<i64>,
}

/// The provisioning and policy parameters, dstack's `ProfileParams`. Every field is optional;
/// `None` means "not set here" (defaults are applied when profiles are merged).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ProfileParams {
    /// Backends to consider.
    pub backends: Option<Vec<BackendType>>,
    /// Regions to consider.
    pub regions: Option<Vec<String>>,
    /// Availability zones to consider.
    pub availability_zones: Option<Vec<String>>,
    /// Instance types to consider.
    pub instance_types: Option<Vec<String>>,
    /// A reservation to use.
    pub reservation: Option<String>,
    /// Spot or on-demand.
    pub spot_policy: Option<SpotPolicy>,
    /// The retry policy.
    pub retry: Option<Retry>,
    /// The maximum run duration (`"off"` or seconds).
    pub max_duration: Option<OffableDuration>,
    /// The graceful stop window (`"off"` or seconds).
    pub stop_duration: Option<OffableDuration>,
    /// The maximum price per hour (> 0).
    pub max_price: Option<f64>,
    /// Reuse instances only, or create too.
    pub creation_policy: Option<CreationPolicy>,
    /// Idle time before instances are terminated, seconds (`-1` = off).
    pub idle_duration: Option<i64>,
    /// Terminate on low GPU utilization.
    pub utilization_policy: Option<UtilizationPolicy>,
    /// Multi-node start order.
    pub startup_order: Option<StartupOrder>,
    /// Multi-node stop criteria.
    pub stop_criteria: Option<StopCriteria>,
    /// A start schedule.
    pub schedule: Option<Schedule>,
    /// Fleets considered for reuse.
    pub fleets: Option<Vec<EntityReference>>,
    /// Specific instances considered for reuse.
    pub instances: Option<Vec<InstanceSelector>>,
    /// Resource tags.
    pub tags: Option<IndexMap<String, String>>,
    /// Backend-specific options.
    pub backend_options: Option<Vec<BackendProfileOptions>>,
}

/// A named profile: [`ProfileParams`] plus `name` and `default`. Serialised flat.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Profile {
    /// The parameters.
    #[serde(flatten)]
    pub params: ProfileParams,
    /// The profile name (`""` when unnamed).
    pub name: String,
    /// Whether this profile is the default one.
    pub default: bool,
}

deserialize_from_value!(
    ProfileRetry,
    Retry,
    UtilizationPolicy,
    Schedule,
    InstanceSelector,
    BackendProfileOptions,
    ProfileParams,
    Profile,
);
