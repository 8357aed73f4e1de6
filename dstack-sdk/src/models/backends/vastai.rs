//! Vast.ai (`type: vastai`): an API key, regions, and whether to use the Community Cloud.

use super::{ApiKeyCreds, Validate};

/// Vast.ai credentials: `{type: api_key, api_key}`.
pub type VastAiCreds = ApiKeyCreds;

backend_config! {
    /// The Vast.ai backend config without credentials.
    pub struct VastAiBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// Offer Community Cloud as well as Server Cloud (default true).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub community_cloud: Option<bool>,
    }
    /// The Vast.ai backend config with credentials.
    with_creds VastAiBackendConfigWithCreds {
        /// The credentials.
        pub creds: VastAiCreds,
    }
}

impl VastAiBackendConfig {
    /// Whether Community Cloud offers are used (`community_cloud`, default true).
    pub fn allow_community_cloud(&self) -> bool {
        self.community_cloud.unwrap_or(true)
    }
}

impl Validate for VastAiBackendConfig {}
impl Validate for VastAiBackendConfigWithCreds {}
