//! Fleets: the `type: fleet` configuration (cloud and SSH fields in one flat model), the fleet
//! spec, and the `Fleet` / `FleetPlan` API types.

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::models::common::{ApplyAction, BackendType, Env, string_enum};
use crate::models::configurations::type_tag;
use crate::models::instances::Instance;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::profiles::{BackendProfileOptions, Profile, Retry, SpotPolicy};
use crate::models::resources::ResourcesSpec;
use crate::spec::lax::deserialize_from_value;

type_tag!(
    /// The `type: fleet` tag.
    FleetType = "fleet"
);

string_enum! {
    /// How a fleet's instances are placed.
    InstanceGroupPlacement {
        /// Anywhere.
        Any = "any",
        /// In one cluster (interconnected; enables multi-node runs).
        Cluster = "cluster",
    }
}

string_enum! {
    /// The status of a fleet.
    FleetStatus {
        /// Submitted.
        Submitted = "submitted",
        /// Active.
        Active = "active",
        /// Terminating.
        Terminating = "terminating",
        /// Terminated.
        Terminated = "terminated",
        /// Failed.
        Failed = "failed",
    }
}

/// How many blocks (shares) an instance is split into: a number or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocks {
    /// As many as possible.
    Auto,
    /// A fixed number (≥ 1).
    Count(i64),
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks::Count(1)
    }
}

impl Serialize for Blocks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Blocks::Auto => s.serialize_str("auto"),
            Blocks::Count(n) => s.serialize_i64(*n),
        }
    }
}

/// The number of instances of a cloud fleet. Input: `N`, `"a..b"` or `{min, target, max}`.
/// Serialised without `target` when it equals `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetNodesSpec {
    /// The minimum number of instances to keep (≥ 0).
    pub min: i64,
    /// The number to provision on apply (`min ≤ target ≤ max`; defaults to `min`).
    pub target: i64,
    /// The maximum; `None` means unlimited.
    pub max: Option<i64>,
}

impl Serialize for FleetNodesSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("min", &self.min)?;
        if self.target != self.min {
            m.serialize_entry("target", &self.target)?;
        }
        m.serialize_entry("max", &self.max)?;
        m.end()
    }
}

/// An SSH key pair (the private half optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshKey {
    /// The public key.
    pub public: String,
    /// The private key.
    pub private: Option<String>,
}

/// An SSH jump host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SSHProxyParams {
    /// The proxy host.
    pub hostname: String,
    /// The proxy SSH port.
    pub port: Option<i64>,
    /// The proxy user.
    pub user: String,
    /// The private key file for the proxy.
    pub identity_file: String,
    /// The key itself (filled by the client).
    pub ssh_key: Option<SshKey>,
}

/// One host of an SSH fleet with its own connection parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SSHHostParams {
    /// The host address.
    pub hostname: String,
    /// The SSH port.
    pub port: Option<i64>,
    /// The user.
    pub user: Option<String>,
    /// The private key file.
    pub identity_file: Option<String>,
    /// A jump host for this host.
    pub proxy_jump: Option<SSHProxyParams>,
    /// The private IP used inside the cluster.
    pub internal_ip: Option<String>,
    /// The key itself (filled by the client).
    pub ssh_key: Option<SshKey>,
    /// Blocks for this host (defaults to the fleet's `blocks`).
    pub blocks: Option<Blocks>,
}

/// A host of an SSH fleet: a plain address or parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SSHHost {
    /// Parameters overriding the fleet-wide ones.
    Params(Box<SSHHostParams>),
    /// Just the address.
    Hostname(String),
}

impl SSHHost {
    /// The host address.
    pub fn hostname(&self) -> &str {
        match self {
            SSHHost::Params(p) => &p.hostname,
            SSHHost::Hostname(h) => h,
        }
    }
}

/// The `ssh_config` of an SSH fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SSHParams {
    /// The user on all hosts.
    pub user: Option<String>,
    /// The SSH port.
    pub port: Option<i64>,
    /// The private key file.
    pub identity_file: Option<String>,
    /// The key itself (filled by the client).
    pub ssh_key: Option<SshKey>,
    /// A jump host for all hosts.
    pub proxy_jump: Option<SSHProxyParams>,
    /// The hosts.
    pub hosts: Vec<SSHHost>,
    /// The private cluster network, `ip/mask`.
    pub network: Option<String>,
}

/// A fleet configuration (`type: fleet`): cloud fields (`nodes`, `resources`, …) or SSH fields
/// (`ssh_config`, `env`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetConfiguration {
    /// The type tag.
    #[serde(rename = "type")]
    pub type_: FleetType,
    /// The fleet name.
    pub name: Option<String>,
    /// Instance placement.
    pub placement: Option<InstanceGroupPlacement>,
    /// Blocks per instance (default 1).
    pub blocks: Blocks,
    /// The number of instances (cloud fleets).
    pub nodes: Option<FleetNodesSpec>,
    /// A reservation to use.
    pub reservation: Option<String>,
    /// Resources of each instance.
    pub resources: Option<ResourcesSpec>,
    /// Backends to consider.
    pub backends: Option<Vec<BackendType>>,
    /// Regions to consider.
    pub regions: Option<Vec<String>>,
    /// Availability zones to consider.
    pub availability_zones: Option<Vec<String>>,
    /// Instance types to consider.
    pub instance_types: Option<Vec<String>>,
    /// Spot or on-demand.
    pub spot_policy: Option<SpotPolicy>,
    /// Provisioning retry.
    pub retry: Option<Retry>,
    /// The maximum price per hour.
    pub max_price: Option<f64>,
    /// Idle time before extra instances are terminated, seconds (`-1` = off).
    pub idle_duration: Option<i64>,
    /// Resource tags.
    pub tags: Option<IndexMap<String, String>>,
    /// Backend-specific options.
    pub backend_options: Option<Vec<BackendProfileOptions>>,
    /// SSH fleet hosts.
    pub ssh_config: Option<SSHParams>,
    /// Environment of SSH fleet instances.
    pub env: Env,
}

impl Default for FleetConfiguration {
    fn default() -> Self {
        Self {
            type_: FleetType,
            name: None,
            placement: None,
            blocks: Blocks::default(),
            nodes: None,
            reservation: None,
            resources: None,
            backends: None,
            regions: None,
            availability_zones: None,
            instance_types: None,
            spot_policy: None,
            retry: None,
            max_price: None,
            idle_duration: None,
            tags: None,
            backend_options: None,
            ssh_config: None,
            env: Env::default(),
        }
    }
}

/// A fleet spec: the configuration, its path and the profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetSpec {
    /// The configuration.
    pub configuration: FleetConfiguration,
    /// The configuration file path.
    pub configuration_path: Option<String>,
    /// The profile.
    pub profile: Profile,
    /// Deprecated; kept for old clients and stored rows.
    pub autocreated: bool,
}

impl FleetSpec {
    /// The profile with the configuration's non-null profile fields laid over it, spot policy
    /// defaulting to on-demand and retry to `false` (dstack's `merged_profile`).
    pub fn merged_profile(&self) -> Profile {
        let c = &self.configuration;
        let mut p = self.profile.clone();
        let params = &mut p.params;
        if c.backends.is_some() {
            params.backends.clone_from(&c.backends);
        }
        if c.regions.is_some() {
            params.regions.clone_from(&c.regions);
        }
        if c.availability_zones.is_some() {
            params.availability_zones.clone_from(&c.availability_zones);
        }
        if c.instance_types.is_some() {
            params.instance_types.clone_from(&c.instance_types);
        }
        if c.reservation.is_some() {
            params.reservation.clone_from(&c.reservation);
        }
        if c.spot_policy.is_some() {
            params.spot_policy = c.spot_policy;
        }
        if c.retry.is_some() {
            params.retry.clone_from(&c.retry);
        }
        if c.max_price.is_some() {
            params.max_price = c.max_price;
        }
        if c.idle_duration.is_some() {
            params.idle_duration = c.idle_duration;
        }
        if c.tags.is_some() {
            params.tags.clone_from(&c.tags);
        }
        if c.backend_options.is_some() {
            params.backend_options.clone_from(&c.backend_options);
        }
        if params.spot_policy.is_none() {
            params.spot_policy = Some(SpotPolicy::OnDemand);
        }
        if params.retry.is_none() {
            params.retry = Some(Retry::Bool(false));
        }
        p
    }
}

/// A fleet as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// The id.
    pub id: Uuid,
    /// The name.
    pub name: String,
    /// The project.
    pub project_name: String,
    /// The spec.
    pub spec: FleetSpec,
    /// Creation time.
    #[serde(with = "crate::models::datetime")]
    pub created_at: DateTime<Utc>,
    /// The status.
    pub status: FleetStatus,
    /// A status detail.
    #[serde(default)]
    pub status_message: Option<String>,
    /// The instances.
    pub instances: Vec<Instance>,
}

/// What applying a fleet configuration would do (`fleets/get_plan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetPlan {
    /// The project.
    pub project_name: String,
    /// The user.
    pub user: String,
    /// The submitted spec.
    pub spec: FleetSpec,
    /// The spec that will be applied (after server-side defaults).
    #[serde(default)]
    pub effective_spec: Option<FleetSpec>,
    /// The existing fleet, if any.
    #[serde(default)]
    pub current_resource: Option<Fleet>,
    /// Offers for new instances.
    pub offers: Vec<InstanceOfferWithAvailability>,
    /// The number of offers before truncation.
    pub total_offers: i64,
    /// The highest price among the offers.
    #[serde(default)]
    pub max_offer_price: Option<f64>,
    /// Create or update.
    #[serde(default)]
    pub action: Option<ApplyAction>,
}

impl FleetPlan {
    /// The effective spec, or the submitted one when there is none.
    pub fn get_effective_spec(&self) -> &FleetSpec {
        self.effective_spec.as_ref().unwrap_or(&self.spec)
    }
}

/// The body of `fleets/apply`'s `plan`: the spec and the fleet it expects to replace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyFleetPlanInput {
    /// The spec.
    pub spec: FleetSpec,
    /// The expected current fleet (the apply fails if it changed, unless forced).
    #[serde(default)]
    pub current_resource: Option<Fleet>,
}

deserialize_from_value!(
    Blocks,
    FleetNodesSpec,
    SshKey,
    SSHProxyParams,
    SSHHostParams,
    SSHHost,
    SSHParams,
    FleetConfiguration,
    FleetSpec,
);
