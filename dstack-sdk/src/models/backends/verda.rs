//! Verda, formerly DataCrunch (`type: verda` or `type: datacrunch`): OAuth client credentials.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{ApiKeyTag, Redacted, Validate};

/// `{type: api_key, client_id, client_secret}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdaCreds {
    /// Always `api_key` (the default when omitted).
    #[serde(rename = "type", default)]
    pub kind: ApiKeyTag,
    /// The REST API client ID.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub client_id: String,
    /// The REST API client secret.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub client_secret: String,
}

impl fmt::Debug for VerdaCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerdaCreds")
            .field("client_id", &self.client_id)
            .field("client_secret", &Redacted)
            .finish()
    }
}

backend_config! {
    /// The Verda backend config without credentials. The union variant (`verda` or
    /// `datacrunch`) carries the `type`.
    pub struct VerdaBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The Verda backend config with credentials.
    with_creds VerdaBackendConfigWithCreds {
        /// The credentials.
        pub creds: VerdaCreds,
    }
}

impl Validate for VerdaBackendConfig {}
impl Validate for VerdaBackendConfigWithCreds {}
