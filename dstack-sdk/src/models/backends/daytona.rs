//! Daytona (`type: daytona`): a non-empty API key and optional regions.

use super::{FieldError, NonEmptyApiKeyCreds, Validate};

/// Daytona credentials: `{type: api_key, api_key}` with a non-empty key.
pub type DaytonaCreds = NonEmptyApiKeyCreds;

backend_config! {
    /// The Daytona backend config without credentials.
    pub struct DaytonaBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The Daytona backend config with credentials.
    with_creds DaytonaBackendConfigWithCreds {
        /// The credentials.
        pub creds: DaytonaCreds,
    }
}

impl Validate for DaytonaBackendConfig {}

impl Validate for DaytonaBackendConfigWithCreds {
    fn validate(&self) -> Result<(), FieldError> {
        self.creds
            .validate()
            .map_err(|e| e.within(&[super::key("creds")]))
    }
}
