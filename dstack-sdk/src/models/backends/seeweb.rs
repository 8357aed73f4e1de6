//! Seeweb (`type: seeweb`): an API token and optional regions.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{Redacted, Validate};

literal_tag!(
    /// The `type: api_token` literal of Seeweb credentials.
    ApiTokenTag = "api_token"
);

/// `{type: api_token, api_token}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeewebCreds {
    /// Always `api_token` (the default when omitted).
    #[serde(rename = "type", default)]
    pub kind: ApiTokenTag,
    /// The ECS API token.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub api_token: String,
}

impl fmt::Debug for SeewebCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeewebCreds")
            .field("api_token", &Redacted)
            .finish()
    }
}

backend_config! {
    /// The Seeweb backend config without credentials.
    pub struct SeewebBackendConfig {
        /// Regions to use (e.g. `it-mi2`); all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The Seeweb backend config with credentials.
    with_creds SeewebBackendConfigWithCreds {
        /// The credentials.
        pub creds: SeewebCreds,
    }
}

impl Validate for SeewebBackendConfig {}
impl Validate for SeewebBackendConfigWithCreds {}
