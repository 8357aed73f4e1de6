//! Azure (`type: azure`): client-secret or default credentials, tenant and subscription,
//! resource group, networks and managed identity.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::fmt;

use super::{Redacted, Validate};

/// `{type: client, client_id, client_secret, tenant_id?}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureClientCreds {
    /// The application (client) ID.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub client_id: String,
    /// The client secret.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub client_secret: String,
    /// The tenant; filled from the backend config when missing.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub tenant_id: Option<String>,
}

impl fmt::Debug for AzureClientCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureClientCreds")
            .field("client_id", &self.client_id)
            .field("client_secret", &Redacted)
            .field("tenant_id", &self.tenant_id)
            .finish()
    }
}

/// `{type: default}`: the Azure default credential chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureDefaultCreds {}

/// Azure credentials, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AzureCreds {
    /// `client`.
    #[serde(rename = "client")]
    Client(AzureClientCreds),
    /// `default`.
    #[serde(rename = "default")]
    Default(AzureDefaultCreds),
}

backend_config! {
    /// The Azure backend config without credentials.
    pub struct AzureBackendConfig {
        /// The tenant ID (required).
        #[serde(deserialize_with = "crate::models::backends::lenient::string")]
        pub tenant_id: String,
        /// The subscription ID (required).
        #[serde(deserialize_with = "crate::models::backends::lenient::string")]
        pub subscription_id: String,
        /// The resource group for created resources; dstack creates one when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub resource_group: Option<String>,
        /// Locations to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// Location → `networkResourceGroup/networkName`.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub vpc_ids: Option<IndexMap<String, String>>,
        /// Location → `networkResourceGroup/networkName/subnetName`.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub subnet_ids: Option<IndexMap<String, String>>,
        /// Assign public IPs (default true).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub public_ips: Option<bool>,
        /// `managedIdentityResourceGroup/managedIdentityName` for VMs.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub vm_managed_identity: Option<String>,
        /// Tags for created resources.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub tags: Option<IndexMap<String, String>>,
    }
    /// The Azure backend config with credentials.
    with_creds AzureBackendConfigWithCreds {
        /// The credentials.
        pub creds: AzureCreds,
    }
}

impl AzureBackendConfig {
    /// Whether instances get public IPs (`public_ips`, default true).
    pub fn allocate_public_ips(&self) -> bool {
        self.public_ips.unwrap_or(true)
    }
}

impl Validate for AzureBackendConfig {}
impl Validate for AzureBackendConfigWithCreds {}
