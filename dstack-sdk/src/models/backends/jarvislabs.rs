//! JarvisLabs (`type: jarvislabs`): an API key and optional regions.

use super::{ApiKeyCreds, Validate};

/// JarvisLabs credentials: `{type: api_key, api_key}`.
pub type JarvisLabsCreds = ApiKeyCreds;

backend_config! {
    /// The JarvisLabs backend config without credentials.
    pub struct JarvisLabsBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The JarvisLabs backend config with credentials.
    with_creds JarvisLabsBackendConfigWithCreds {
        /// The credentials.
        pub creds: JarvisLabsCreds,
    }
}

impl Validate for JarvisLabsBackendConfig {}
impl Validate for JarvisLabsBackendConfigWithCreds {}
