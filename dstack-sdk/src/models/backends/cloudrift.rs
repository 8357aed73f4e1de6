//! CloudRift (`type: cloudrift`): an API key and optional regions.

use super::{ApiKeyCreds, Validate};

/// CloudRift credentials: `{type: api_key, api_key}`.
pub type CloudRiftCreds = ApiKeyCreds;

backend_config! {
    /// The CloudRift backend config without credentials.
    pub struct CloudRiftBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The CloudRift backend config with credentials.
    with_creds CloudRiftBackendConfigWithCreds {
        /// The credentials.
        pub creds: CloudRiftCreds,
    }
}

impl Validate for CloudRiftBackendConfig {}
impl Validate for CloudRiftBackendConfigWithCreds {}
