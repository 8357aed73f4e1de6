//! Lium (`type: lium`): a non-empty API key and optional regions.

use super::{FieldError, NonEmptyApiKeyCreds, Validate};

/// Lium credentials: `{type: api_key, api_key}` with a non-empty key.
pub type LiumCreds = NonEmptyApiKeyCreds;

backend_config! {
    /// The Lium backend config without credentials.
    pub struct LiumBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The Lium backend config with credentials.
    with_creds LiumBackendConfigWithCreds {
        /// The credentials.
        pub creds: LiumCreds,
    }
}

impl Validate for LiumBackendConfig {}

impl Validate for LiumBackendConfigWithCreds {
    fn validate(&self) -> Result<(), FieldError> {
        self.creds
            .validate()
            .map_err(|e| e.within(&[super::key("creds")]))
    }
}
