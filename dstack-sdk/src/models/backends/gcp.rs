//! GCP (`type: gcp`): service-account or default credentials, project, VPC and TPU options.
//!
//! In `config.yml` a service account may be given by `filename` only
//! ([`GcpFileCreds`]); dstack reads the file into `data` when it loads the config.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::fmt;

use super::{FieldError, Redacted, Validate, fill_data, redact_opt};

/// `{type: service_account, filename, data}` as the API takes it (`data` required).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcpServiceAccountCreds {
    /// The path the key was read from (default `""`).
    #[serde(
        default = "empty_filename",
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub filename: Option<String>,
    /// The service account key JSON.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub data: String,
}

fn empty_filename() -> Option<String> {
    Some(String::new())
}

impl fmt::Debug for GcpServiceAccountCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpServiceAccountCreds")
            .field("filename", &self.filename)
            .field("data", &Redacted)
            .finish()
    }
}

/// `{type: default}`: application default credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcpDefaultCreds {}

/// GCP credentials, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum GcpCreds {
    /// `service_account`.
    #[serde(rename = "service_account")]
    ServiceAccount(GcpServiceAccountCreds),
    /// `default`.
    #[serde(rename = "default")]
    Default(GcpDefaultCreds),
}

/// `{type: service_account, filename, data?}` as `config.yml` takes it (`filename` required).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcpServiceAccountFileCreds {
    /// The path of the service account key file.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub filename: String,
    /// The key JSON; read from `filename` when omitted.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub data: Option<String>,
}

impl fmt::Debug for GcpServiceAccountFileCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcpServiceAccountFileCreds")
            .field("filename", &self.filename)
            .field("data", &redact_opt(&self.data))
            .finish()
    }
}

/// GCP credentials in `config.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum GcpFileCreds {
    /// `service_account`.
    #[serde(rename = "service_account")]
    ServiceAccount(GcpServiceAccountFileCreds),
    /// `default`.
    #[serde(rename = "default")]
    Default(GcpDefaultCreds),
}

impl GcpFileCreds {
    /// Reads `filename` into `data` unless `data` is set.
    pub fn resolve_files(&mut self) -> Result<(), FieldError> {
        match self {
            GcpFileCreds::ServiceAccount(c) => {
                fill_data(Some(&c.filename), &mut c.data, "filename", "data")
            }
            GcpFileCreds::Default(_) => Ok(()),
        }
    }
}

/// GCP preview features that can be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GcpPreviewFeature {
    /// G4 instances.
    #[serde(rename = "g4")]
    G4,
}

backend_config! {
    /// The GCP backend config without credentials.
    pub struct GcpBackendConfig {
        /// The project ID (required).
        #[serde(deserialize_with = "crate::models::backends::lenient::string")]
        pub project_id: String,
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// Offer TPUs too (experimental; default false).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub tpu: Option<bool>,
        /// A custom VPC; the default VPC when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub vpc_name: Option<String>,
        /// Region → subnetwork of `vpc_name`.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub subnetworks: Option<IndexMap<String, String>>,
        /// Extra VPCs for multi-NIC instances (GPUDirect).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub extra_vpcs: Option<Vec<String>>,
        /// At most one extra VPC with the RoCE network profile.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub roce_vpcs: Option<Vec<String>>,
        /// The shared VPC host project.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub vpc_project_id: Option<String>,
        /// Assign public IPs (default true).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub public_ips: Option<bool>,
        /// Check that Cloud NAT is configured (default true).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub nat_check: Option<bool>,
        /// The service account for VMs.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub vm_service_account: Option<String>,
        /// Labels for created resources.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub tags: Option<IndexMap<String, String>>,
        /// Preview features to enable (at most one).
        #[serde(default)]
        pub preview_features: Option<Vec<GcpPreviewFeature>>,
    }
    /// The GCP backend config with credentials (API form).
    with_creds GcpBackendConfigWithCreds {
        /// The credentials.
        pub creds: GcpCreds,
    }
    /// The GCP backend config as written in `config.yml`.
    with_creds GcpBackendFileConfigWithCreds {
        /// The credentials.
        pub creds: GcpFileCreds,
    }
}

impl GcpBackendConfig {
    /// Whether TPUs are offered (`tpu`, default false).
    pub fn allow_tpu(&self) -> bool {
        self.tpu.unwrap_or(false)
    }

    /// Whether instances get public IPs (`public_ips`, default true).
    pub fn allocate_public_ips(&self) -> bool {
        self.public_ips.unwrap_or(true)
    }

    /// `projects/<vpc_project_id or project_id>/global/networks/<vpc_name or default>`.
    pub fn vpc_resource_name(&self) -> String {
        let project = self.vpc_project_id.as_deref().unwrap_or(&self.project_id);
        let vpc = self.vpc_name.as_deref().unwrap_or("default");
        format!("projects/{project}/global/networks/{vpc}")
    }
}

fn check_max_one<T>(v: &Option<Vec<T>>, field: &str) -> Result<(), FieldError> {
    match v {
        Some(v) if v.len() > 1 => Err(FieldError::new(
            &[field],
            format!(
                "List should have at most 1 item after validation, not {}",
                v.len()
            ),
        )),
        _ => Ok(()),
    }
}

macro_rules! gcp_validate {
    ($($t:ty),+) => {$(
        impl Validate for $t {
            fn validate(&self) -> Result<(), FieldError> {
                check_max_one(&self.roce_vpcs, "roce_vpcs")?;
                check_max_one(&self.preview_features, "preview_features")
            }
        }
    )+};
}

gcp_validate!(
    GcpBackendConfig,
    GcpBackendConfigWithCreds,
    GcpBackendFileConfigWithCreds
);
