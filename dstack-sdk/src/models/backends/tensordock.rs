//! TensorDock (`type: tensordock`, deprecated in dstack): an API key and token.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{ApiKeyTag, Redacted, Validate};

/// `{type: api_key, api_key, api_token}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorDockCreds {
    /// Always `api_key` (the default when omitted).
    #[serde(rename = "type", default)]
    pub kind: ApiKeyTag,
    /// The API key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub api_key: String,
    /// The API token.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub api_token: String,
}

impl fmt::Debug for TensorDockCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorDockCreds")
            .field("api_key", &Redacted)
            .field("api_token", &Redacted)
            .finish()
    }
}

backend_config! {
    /// The TensorDock backend config without credentials.
    pub struct TensorDockBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The TensorDock backend config with credentials.
    with_creds TensorDockBackendConfigWithCreds {
        /// The credentials.
        pub creds: TensorDockCreds,
    }
}

impl Validate for TensorDockBackendConfig {}
impl Validate for TensorDockBackendConfigWithCreds {}
