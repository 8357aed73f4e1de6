//! Lambda Cloud (`type: lambda`): an API key and optional regions.

use super::{ApiKeyCreds, Validate};

/// Lambda credentials: `{type: api_key, api_key}`.
pub type LambdaCreds = ApiKeyCreds;

backend_config! {
    /// The Lambda backend config without credentials.
    pub struct LambdaBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The Lambda backend config with credentials.
    with_creds LambdaBackendConfigWithCreds {
        /// The credentials.
        pub creds: LambdaCreds,
    }
}

impl Validate for LambdaBackendConfig {}
impl Validate for LambdaBackendConfigWithCreds {}
