//! Vultr (`type: vultr`): an API key and optional regions.

use super::{ApiKeyCreds, Validate};

/// Vultr credentials: `{type: api_key, api_key}`.
pub type VultrCreds = ApiKeyCreds;

backend_config! {
    /// The Vultr backend config without credentials.
    pub struct VultrBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The Vultr backend config with credentials.
    with_creds VultrBackendConfigWithCreds {
        /// The credentials.
        pub creds: VultrCreds,
    }
}

impl Validate for VultrBackendConfig {}
impl Validate for VultrBackendConfigWithCreds {}
