//! Hot Aisle (`type: hotaisle`): an API key and a team handle.

use super::{ApiKeyCreds, Validate};

/// Hot Aisle credentials: `{type: api_key, api_key}`.
pub type HotAisleCreds = ApiKeyCreds;

backend_config! {
    /// The Hot Aisle backend config without credentials.
    pub struct HotAisleBackendConfig {
        /// The team handle (required).
        #[serde(deserialize_with = "crate::models::backends::lenient::string")]
        pub team_handle: String,
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// Offer bare-metal machines too (experimental; default false).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub bare_metal: Option<bool>,
    }
    /// The Hot Aisle backend config with credentials.
    with_creds HotAisleBackendConfigWithCreds {
        /// The credentials.
        pub creds: HotAisleCreds,
    }
}

impl HotAisleBackendConfig {
    /// Whether bare-metal offers are used (`bare_metal`, default false).
    pub fn allow_bare_metal(&self) -> bool {
        self.bare_metal.unwrap_or(false)
    }
}

impl Validate for HotAisleBackendConfig {}
impl Validate for HotAisleBackendConfigWithCreds {}
