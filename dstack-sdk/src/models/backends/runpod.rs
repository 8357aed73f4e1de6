//! RunPod (`type: runpod`): an API key, regions, and whether to use the Community Cloud.

use super::{ApiKeyCreds, Validate};

/// RunPod credentials: `{type: api_key, api_key}`.
pub type RunPodCreds = ApiKeyCreds;

backend_config! {
    /// The RunPod backend config without credentials.
    pub struct RunPodBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// Offer Community Cloud as well as Secure Cloud (default false).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_bool")]
        pub community_cloud: Option<bool>,
    }
    /// The RunPod backend config with credentials.
    with_creds RunPodBackendConfigWithCreds {
        /// The credentials.
        pub creds: RunPodCreds,
    }
}

impl RunPodBackendConfig {
    /// Whether Community Cloud offers are used (`community_cloud`, default false).
    pub fn allow_community_cloud(&self) -> bool {
        self.community_cloud.unwrap_or(false)
    }
}

impl Validate for RunPodBackendConfig {}
impl Validate for RunPodBackendConfigWithCreds {}
