//! Gateways: the `type: gateway` configuration, the `Gateway` resource and plans.

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde::Serialize;
use uuid::Uuid;

use crate::models::common::{ApplyAction, BackendType, string_enum};
use crate::spec::lax::deserialize_from_value;

/// The default number of gateway replicas.
pub const GATEWAY_REPLICAS_DEFAULT: i64 = 1;

/// How the gateway obtains its TLS certificate, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum GatewayCertificate {
    /// Automatic certificates by Let's Encrypt (the default).
    #[serde(rename = "lets-encrypt")]
    LetsEncrypt,
    /// A wildcard certificate from AWS Certificate Manager.
    #[serde(rename = "acm")]
    Acm {
        /// The certificate ARN.
        arn: String,
    },
    /// A certificate from Google Cloud Certificate Manager.
    #[serde(rename = "gcp-cm")]
    GcpCm {
        /// The full certificate resource name.
        name: String,
    },
}

/// A load balancer in front of the gateway (`{type: alb}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum GatewayLoadBalancer {
    /// An Application Load Balancer.
    #[serde(rename = "alb")]
    Alb,
}

/// A gateway configuration (`type: gateway`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayConfiguration {
    /// Always `"gateway"`.
    #[serde(rename = "type")]
    pub type_: GatewayType,
    /// The gateway name.
    pub name: Option<String>,
    /// Whether it is the project's default gateway.
    pub default: Option<bool>,
    /// The backend.
    pub backend: BackendType,
    /// The region.
    pub region: String,
    /// The instance type.
    pub instance_type: Option<String>,
    /// The wildcard domain.
    pub domain: Option<String>,
    /// Whether to allocate a public IP.
    pub public_ip: bool,
    /// The load balancer.
    pub load_balancer: Option<GatewayLoadBalancer>,
    /// The certificate; `None` disables HTTPS.
    pub certificate: Option<GatewayCertificate>,
    /// The number of replicas.
    pub replicas: Option<i64>,
    /// Resource tags.
    pub tags: Option<IndexMap<String, String>>,
}

/// The `type` tag of a gateway configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum GatewayType {
    /// `"gateway"`.
    #[default]
    #[serde(rename = "gateway")]
    Gateway,
}

string_enum! {
    /// The status of a gateway.
    GatewayStatus {
        /// Submitted.
        Submitted = "submitted",
        /// Being provisioned.
        Provisioning = "provisioning",
        /// Running.
        Running = "running",
        /// Failed.
        Failed = "failed",
    }
}

string_enum! {
    /// The status of one gateway replica.
    GatewayReplicaStatus {
        /// Submitted.
        Submitted = "submitted",
        /// Being provisioned.
        Provisioning = "provisioning",
        /// Running.
        Running = "running",
        /// Terminating.
        Terminating = "terminating",
        /// Terminated.
        Terminated = "terminated",
    }
}

/// A gateway spec.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GatewaySpec {
    /// The configuration.
    pub configuration: GatewayConfiguration,
    /// The configuration file path.
    #[serde(default)]
    pub configuration_path: Option<String>,
}

/// One replica of a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GatewayReplica {
    /// The hostname or IP.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The replica number.
    pub replica_num: i64,
    /// The backend.
    #[serde(default)]
    pub backend: Option<BackendType>,
    /// The region.
    #[serde(default)]
    pub region: Option<String>,
    /// Creation time.
    #[serde(with = "crate::models::datetime")]
    pub created_at: DateTime<Utc>,
    /// The status.
    pub status: GatewayReplicaStatus,
    /// A status detail.
    #[serde(default)]
    pub status_message: Option<String>,
}

/// A gateway as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Gateway {
    /// The id.
    pub id: Uuid,
    /// The name.
    pub name: String,
    /// The project.
    pub project_name: String,
    /// The configuration.
    pub configuration: GatewayConfiguration,
    /// Creation time.
    #[serde(with = "crate::models::datetime")]
    pub created_at: DateTime<Utc>,
    /// The status.
    pub status: GatewayStatus,
    /// A status detail.
    #[serde(default)]
    pub status_message: Option<String>,
    /// The load balancer hostname, if any.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The wildcard domain.
    #[serde(default)]
    pub wildcard_domain: Option<String>,
    /// Whether it is the project's default gateway.
    pub default: bool,
    /// The replicas.
    #[serde(default)]
    pub replicas: Vec<GatewayReplica>,
    /// Deprecated: never set since 0.21.
    #[serde(default)]
    pub backend: Option<BackendType>,
    /// Deprecated: never set since 0.21.
    #[serde(default)]
    pub region: Option<String>,
    /// Deprecated: only for pre-0.20.25 clients.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// Deprecated and unused.
    #[serde(default)]
    pub instance_id: Option<String>,
}

/// What applying a gateway configuration would do.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct GatewayPlan {
    /// The project.
    pub project_name: String,
    /// The user.
    pub user: String,
    /// The submitted spec.
    pub spec: GatewaySpec,
    /// The spec that will be applied.
    pub effective_spec: GatewaySpec,
    /// The existing gateway, if any.
    #[serde(default)]
    pub current_resource: Option<Gateway>,
    /// Create or update.
    pub action: ApplyAction,
}

deserialize_from_value!(
    GatewayConfiguration,
    GatewayCertificate,
    GatewayLoadBalancer
);
