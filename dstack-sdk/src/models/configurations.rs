//! Run configurations (`task`, `service`, `dev-environment`, discriminated by `type`) and the
//! union of everything `dstack apply` accepts (plus `fleet`, `volume`, `gateway`).
//!
//! Parsing and validation live in [`crate::spec::configuration`]; these types serialise to the
//! JSON dstack 0.22.5 produces (`model_dump(mode="json")`), every field included.

use serde::Serialize;

use crate::models::common::{EntityReference, Env, PortMapping, Range, RegistryAuth, string_enum};
use crate::models::fleets::FleetConfiguration;
use crate::models::gateways::GatewayConfiguration;
use crate::models::profiles::{ProfileParams, SpotPolicy};
use crate::models::resources::ResourcesSpec;
use crate::models::volumes::{MountPoint, VolumeConfiguration};
use crate::spec::lax::deserialize_from_value;

/// The default replica group / node group name.
pub const DEFAULT_REPLICA_GROUP_NAME: &str = "0";
/// The working directory older clients imply.
pub const LEGACY_REPO_DIR: &str = "/workflow";
/// The allowed `scaling.window` values, seconds.
pub const SERVICE_SCALING_WINDOWS: &[i64] = &[30, 60, 300];
/// The default `scaling.window`, seconds.
pub const DEFAULT_SCALING_WINDOW: i64 = 60;
/// The default run priority.
pub const RUN_PRIORITY_DEFAULT: i64 = 0;

macro_rules! type_tag {
    ($(#[$meta:meta])* $name:ident = $value:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }
    };
}
pub(crate) use type_tag;

type_tag!(
    /// The `type: task` tag.
    TaskType = "task"
);
type_tag!(
    /// The `type: service` tag.
    ServiceType = "service"
);
type_tag!(
    /// The `type: dev-environment` tag.
    DevEnvironmentType = "dev-environment"
);
type_tag!(
    /// The `type: http` tag of a probe.
    HttpProbeType = "http"
);
type_tag!(
    /// The `type: chat` tag of a service model.
    ChatModelType = "chat"
);
type_tag!(
    /// The `metric: rps` of a scaling spec.
    RpsMetric = "rps"
);

string_enum! {
    /// The type of a run configuration.
    RunConfigurationType {
        /// `dev-environment`.
        DevEnvironment = "dev-environment",
        /// `task`.
        Task = "task",
        /// `service`.
        Service = "service",
    }
}

string_enum! {
    /// A Python version for the default image.
    PythonVersion {
        /// 3.9
        Py39 = "3.9",
        /// 3.10
        Py310 = "3.10",
        /// 3.11
        Py311 = "3.11",
        /// 3.12
        Py312 = "3.12",
        /// 3.13
        Py313 = "3.13",
        /// 3.14
        Py314 = "3.14",
        /// 3.15
        Py315 = "3.15",
    }
}

string_enum! {
    /// What to do when a repo's target path exists and is not empty.
    RepoExistsAction {
        /// Fail the run (the default).
        Error = "error",
        /// Skip the checkout.
        Skip = "skip",
    }
}

string_enum! {
    /// An HTTP method for probes.
    HttpMethod {
        /// GET
        Get = "get",
        /// POST
        Post = "post",
        /// PUT
        Put = "put",
        /// DELETE
        Delete = "delete",
        /// PATCH
        Patch = "patch",
        /// HEAD
        Head = "head",
    }
}

string_enum! {
    /// The IDE a dev environment pre-installs.
    Ide {
        /// VS Code.
        Vscode = "vscode",
        /// Cursor.
        Cursor = "cursor",
        /// Windsurf.
        Windsurf = "windsurf",
        /// Zed.
        Zed = "zed",
    }
}

string_enum! {
    /// The in-service router of a replica group.
    RouterType {
        /// Shepherd Model Gateway (serialised as the legacy `"sglang"`).
        Smg = "smg",
        /// NVIDIA Dynamo frontend.
        Dynamo = "dynamo",
    }
}

/// A Git repo to check out into the run (`repos:` items; `"path"` or `"url:path"` shorthand).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepoSpec {
    /// A local repo path (mutually exclusive with `url`).
    pub local_path: Option<String>,
    /// A repo URL.
    pub url: Option<String>,
    /// The branch.
    pub branch: Option<String>,
    /// The commit hash.
    pub hash: Option<String>,
    /// The path inside the container (default `"."`).
    pub path: String,
    /// What to do if `path` is not empty.
    pub if_exists: RepoExistsAction,
}

/// A local file or directory uploaded into the run (`files:` items; `"local[:container]"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FilePathMapping {
    /// The path on the user's machine.
    pub local_path: String,
    /// The path in the container.
    pub path: String,
}

/// Service auto-scaling rules.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingSpec {
    /// The metric: always `rps`.
    pub metric: RpsMetric,
    /// The target requests per second per replica (> 0).
    pub target: f64,
    /// The averaging window, seconds (30, 60 or 300).
    pub window: Option<i64>,
    /// The minimum seconds between a scaling event and the next scale-up (default 300).
    pub scale_up_delay: i64,
    /// The minimum seconds between a scaling event and the next scale-down (default 600).
    pub scale_down_delay: i64,
}

/// The partitioning key of a rate limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum RateLimitKey {
    /// Per client IP address (the default).
    #[serde(rename = "ip_address")]
    IpAddress,
    /// Per value of a request header.
    #[serde(rename = "header")]
    Header {
        /// The header name.
        header: String,
    },
}

/// A service rate limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RateLimit {
    /// The URL path prefix it applies to (default `/`).
    pub prefix: String,
    /// The partitioning key.
    pub key: RateLimitKey,
    /// Requests per second.
    pub rps: f64,
    /// Requests allowed ahead of the limit.
    pub burst: i64,
}

/// An HTTP header of a probe request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpHeaderSpec {
    /// The header name.
    pub name: String,
    /// The header value.
    pub value: String,
}

/// A service readiness probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeConfig {
    /// Always `http`.
    #[serde(rename = "type")]
    pub type_: HttpProbeType,
    /// The URL path (default `/`).
    pub url: Option<String>,
    /// The method (default `get`).
    pub method: Option<HttpMethod>,
    /// Extra headers.
    pub headers: Vec<HttpHeaderSpec>,
    /// The request body.
    pub body: Option<String>,
    /// The request timeout, seconds.
    pub timeout: Option<i64>,
    /// The interval between probes, seconds.
    pub interval: Option<i64>,
    /// Consecutive successes needed to be ready.
    pub ready_after: Option<i64>,
    /// Stop probing once ready.
    pub until_ready: Option<bool>,
}

/// The model a service exposes through dstack's OpenAI-compatible endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceModel {
    /// `format: openai` (a plain model name on input means this).
    OpenAi {
        /// The model name.
        name: String,
        /// The `base_url` prefix (default `/v1`).
        prefix: String,
    },
    /// `format: tgi`.
    Tgi {
        /// The model name.
        name: String,
        /// A custom chat template.
        chat_template: Option<String>,
        /// A custom end-of-sentence token.
        eos_token: Option<String>,
    },
}

impl Serialize for ServiceModel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", "chat")?;
        match self {
            ServiceModel::OpenAi { name, prefix } => {
                m.serialize_entry("name", name)?;
                m.serialize_entry("format", "openai")?;
                m.serialize_entry("prefix", prefix)?;
            }
            ServiceModel::Tgi {
                name,
                chat_template,
                eos_token,
            } => {
                m.serialize_entry("name", name)?;
                m.serialize_entry("format", "tgi")?;
                m.serialize_entry("chat_template", chat_template)?;
                m.serialize_entry("eos_token", eos_token)?;
            }
        }
        m.end()
    }
}

/// A service's `gateway`: `true`/`false` or a gateway reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ServiceGateway {
    /// `true` uses the default gateway, `false` none.
    Bool(bool),
    /// A named gateway (`name` or `project/name` on input).
    Ref(EntityReference),
}

/// A service's `https`: a bool or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Https {
    /// On or off.
    Bool(bool),
    /// Decided by the gateway configuration.
    Auto,
}

impl Serialize for Https {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Https::Bool(b) => s.serialize_bool(*b),
            Https::Auto => s.serialize_str("auto"),
        }
    }
}

/// The router of a replica group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaGroupRouterConfig {
    /// The router implementation (default `smg`).
    pub type_: RouterType,
}

impl Serialize for ReplicaGroupRouterConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        // dstack 0.22.x keeps writing the pre-rename value for older peers.
        let wire = match self.type_ {
            RouterType::Smg => "sglang",
            RouterType::Dynamo => "dynamo",
        };
        m.serialize_entry("type", wire)?;
        m.end()
    }
}

/// A group of service replicas with its own resources and commands (`replicas:` as a list).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaGroup {
    /// The group name (filled with the index when omitted).
    pub name: Option<String>,
    /// The number of replicas (a range requires `scaling`); input key `count` is an alias.
    pub replicas: Range<i64>,
    /// Auto-scaling rules.
    pub scaling: Option<ScalingSpec>,
    /// Resources of each replica.
    pub resources: ResourcesSpec,
    /// Spot policy of this group.
    pub spot_policy: Option<SpotPolicy>,
    /// Reservation of this group.
    pub reservation: Option<String>,
    /// Commands.
    pub commands: Vec<String>,
    /// Image of this group.
    pub image: Option<String>,
    /// Python version of this group.
    pub python: Option<PythonVersion>,
    /// Use the NVCC image.
    pub nvcc: Option<bool>,
    /// Docker-in-Docker.
    pub docker: Option<bool>,
    /// Privileged mode.
    pub privileged: Option<bool>,
    /// An in-service router.
    pub router: Option<ReplicaGroupRouterConfig>,
}

/// A group of nodes of a heterogeneous multi-node task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeGroup {
    /// The group name (filled with the index when omitted).
    pub name: Option<String>,
    /// The number of nodes (≥ 1).
    pub nodes: i64,
    /// Resources of each node.
    pub resources: ResourcesSpec,
    /// Commands.
    pub commands: Vec<String>,
    /// Ports.
    pub ports: Vec<PortMapping>,
}

/// The fields every run configuration has (dstack's `BaseRunConfiguration`, without `type`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunCommon {
    /// The run name.
    pub name: Option<String>,
    /// The Docker image.
    pub image: Option<String>,
    /// The container user, `user[:group]`.
    pub user: Option<String>,
    /// Privileged mode.
    pub privileged: bool,
    /// The Docker entrypoint.
    pub entrypoint: Option<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// Deprecated, no effect (`/root`).
    pub home_dir: String,
    /// Registry credentials.
    pub registry_auth: Option<RegistryAuth>,
    /// The Python version of the default image.
    pub python: Option<PythonVersion>,
    /// Use the NVCC image.
    pub nvcc: Option<bool>,
    /// Clone only the current branch.
    pub single_branch: Option<bool>,
    /// Environment variables.
    pub env: Env,
    /// The shell.
    pub shell: Option<String>,
    /// Resources.
    pub resources: ResourcesSpec,
    /// Priority 0..=100.
    pub priority: Option<i64>,
    /// Volume mounts.
    pub volumes: Vec<MountPoint>,
    /// Docker-in-Docker.
    pub docker: Option<bool>,
    /// Git repos (at most one).
    pub repos: Vec<RepoSpec>,
    /// Files to upload.
    pub files: Vec<FilePathMapping>,
    /// Expose the dstack server inside the run.
    pub dstack: bool,
    /// Deprecated setup commands.
    pub setup: Vec<String>,
}

impl Default for RunCommon {
    fn default() -> Self {
        Self {
            name: None,
            image: None,
            user: None,
            privileged: false,
            entrypoint: None,
            working_dir: None,
            home_dir: "/root".into(),
            registry_auth: None,
            python: None,
            nvcc: None,
            single_branch: None,
            env: Env::default(),
            shell: None,
            resources: ResourcesSpec::default(),
            priority: None,
            volumes: Vec::new(),
            docker: None,
            repos: Vec::new(),
            files: Vec::new(),
            dstack: false,
            setup: Vec::new(),
        }
    }
}

/// `type: dev-environment`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DevEnvironmentConfiguration {
    /// The IDE.
    pub ide: Option<Ide>,
    /// The IDE version.
    pub version: Option<String>,
    /// Startup commands.
    pub init: Vec<String>,
    /// Inactivity limit, seconds (`None` = off).
    pub inactivity_duration: Option<i64>,
    /// Ports.
    pub ports: Vec<PortMapping>,
    /// The type tag.
    #[serde(rename = "type")]
    pub type_: DevEnvironmentType,
    /// Common fields.
    #[serde(flatten)]
    pub common: RunCommon,
    /// Profile parameters.
    #[serde(flatten)]
    pub profile: ProfileParams,
}

/// `type: task`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskConfiguration {
    /// The number of nodes (homogeneous multi-node).
    pub nodes: Option<i64>,
    /// Node groups (heterogeneous multi-node).
    pub groups: Option<Vec<NodeGroup>>,
    /// Ports.
    pub ports: Vec<PortMapping>,
    /// Commands.
    pub commands: Vec<String>,
    /// The type tag.
    #[serde(rename = "type")]
    pub type_: TaskType,
    /// Common fields.
    #[serde(flatten)]
    pub common: RunCommon,
    /// Profile parameters.
    #[serde(flatten)]
    pub profile: ProfileParams,
}

/// `type: service`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfiguration {
    /// The application port (`{local_port, container_port}`; an int gets local port 80).
    pub port: PortMapping,
    /// The gateway.
    pub gateway: Option<ServiceGateway>,
    /// Strip the proxy path prefix.
    pub strip_prefix: bool,
    /// The model mapping.
    pub model: Option<ServiceModel>,
    /// HTTPS via the gateway.
    pub https: Option<Https>,
    /// Require authorization.
    pub auth: bool,
    /// Auto-scaling.
    pub scaling: Option<ScalingSpec>,
    /// Rate limits.
    pub rate_limits: Vec<RateLimit>,
    /// Probes (`None` = omitted, `[]` = explicitly none).
    pub probes: Option<Vec<ProbeConfig>>,
    /// The number of replicas (homogeneous service).
    pub replicas: Option<Range<i64>>,
    /// Replica groups (a list-valued `replicas` on input).
    pub groups: Option<Vec<ReplicaGroup>>,
    /// Commands.
    pub commands: Vec<String>,
    /// The type tag.
    #[serde(rename = "type")]
    pub type_: ServiceType,
    /// Common fields.
    #[serde(flatten)]
    pub common: RunCommon,
    /// Profile parameters.
    #[serde(flatten)]
    pub profile: ProfileParams,
}

impl TaskConfiguration {
    /// The node groups: `groups`, or one group `"0"` built from the top-level fields.
    pub fn node_groups(&self) -> Vec<NodeGroup> {
        if let Some(groups) = &self.groups {
            return groups.clone();
        }
        vec![NodeGroup {
            name: Some(DEFAULT_REPLICA_GROUP_NAME.into()),
            nodes: self.nodes.unwrap_or(1),
            resources: self.common.resources.clone(),
            commands: self.commands.clone(),
            ports: self.ports.clone(),
        }]
    }
}

impl ServiceConfiguration {
    /// The replica groups: `groups`, or one group `"0"` built from the top-level fields.
    pub fn replica_groups(&self) -> Vec<ReplicaGroup> {
        if let Some(groups) = &self.groups {
            return groups.clone();
        }
        vec![ReplicaGroup {
            name: Some(DEFAULT_REPLICA_GROUP_NAME.into()),
            replicas: self.replicas.unwrap_or(Range::exactly(1)),
            scaling: self.scaling.clone(),
            resources: self.common.resources.clone(),
            spot_policy: None,
            reservation: None,
            commands: self.commands.clone(),
            image: None,
            python: None,
            nvcc: None,
            docker: None,
            privileged: None,
            router: None,
        }]
    }
}

/// A run configuration, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RunConfiguration {
    /// `type: dev-environment`.
    DevEnvironment(Box<DevEnvironmentConfiguration>),
    /// `type: task`.
    Task(Box<TaskConfiguration>),
    /// `type: service`.
    Service(Box<ServiceConfiguration>),
}

impl RunConfiguration {
    /// The type.
    pub fn kind(&self) -> RunConfigurationType {
        match self {
            RunConfiguration::DevEnvironment(_) => RunConfigurationType::DevEnvironment,
            RunConfiguration::Task(_) => RunConfigurationType::Task,
            RunConfiguration::Service(_) => RunConfigurationType::Service,
        }
    }

    /// The common fields.
    pub fn common(&self) -> &RunCommon {
        match self {
            RunConfiguration::DevEnvironment(c) => &c.common,
            RunConfiguration::Task(c) => &c.common,
            RunConfiguration::Service(c) => &c.common,
        }
    }

    /// The common fields, mutably.
    pub fn common_mut(&mut self) -> &mut RunCommon {
        match self {
            RunConfiguration::DevEnvironment(c) => &mut c.common,
            RunConfiguration::Task(c) => &mut c.common,
            RunConfiguration::Service(c) => &mut c.common,
        }
    }

    /// The profile parameters.
    pub fn profile(&self) -> &ProfileParams {
        match self {
            RunConfiguration::DevEnvironment(c) => &c.profile,
            RunConfiguration::Task(c) => &c.profile,
            RunConfiguration::Service(c) => &c.profile,
        }
    }
}

/// Anything `dstack apply` accepts in a `.dstack.yml`, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ApplyConfiguration {
    /// A run configuration.
    Run(RunConfiguration),
    /// `type: fleet`.
    Fleet(Box<FleetConfiguration>),
    /// `type: volume`.
    Volume(Box<VolumeConfiguration>),
    /// `type: gateway`.
    Gateway(Box<GatewayConfiguration>),
}

deserialize_from_value!(
    RepoSpec,
    FilePathMapping,
    ScalingSpec,
    RateLimit,
    ProbeConfig,
    ServiceModel,
    ReplicaGroup,
    NodeGroup,
    DevEnvironmentConfiguration,
    TaskConfiguration,
    ServiceConfiguration,
    RunConfiguration,
    ApplyConfiguration,
);
