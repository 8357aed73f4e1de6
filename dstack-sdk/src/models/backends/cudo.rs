//! CUDO Compute (`type: cudo`, deprecated in dstack): an API key and a project.

use super::{ApiKeyCreds, Validate};

/// CUDO credentials: `{type: api_key, api_key}`.
pub type CudoCreds = ApiKeyCreds;

backend_config! {
    /// The CUDO backend config without credentials.
    pub struct CudoBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// The CUDO project ID (required).
        #[serde(deserialize_with = "crate::models::backends::lenient::string")]
        pub project_id: String,
    }
    /// The CUDO backend config with credentials.
    with_creds CudoBackendConfigWithCreds {
        /// The credentials.
        pub creds: CudoCreds,
    }
}

impl Validate for CudoBackendConfig {}
impl Validate for CudoBackendConfigWithCreds {}
