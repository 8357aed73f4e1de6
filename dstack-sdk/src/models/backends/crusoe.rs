//! Crusoe (`type: crusoe`): an access key pair and a project.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{Redacted, Validate};

literal_tag!(
    /// The `type: access_key` literal of Crusoe credentials.
    CrusoeAccessKeyTag = "access_key"
);

/// `{type: access_key, access_key, secret_key}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrusoeCreds {
    /// Always `access_key` (the default when omitted).
    #[serde(rename = "type", default)]
    pub kind: CrusoeAccessKeyTag,
    /// The API access key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub access_key: String,
    /// The API secret key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub secret_key: String,
}

impl fmt::Debug for CrusoeCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CrusoeCreds")
            .field("access_key", &Redacted)
            .field("secret_key", &Redacted)
            .finish()
    }
}

backend_config! {
    /// The Crusoe backend config without credentials.
    pub struct CrusoeBackendConfig {
        /// The project ID (required).
        #[serde(deserialize_with = "crate::models::backends::lenient::string")]
        pub project_id: String,
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The Crusoe backend config with credentials.
    with_creds CrusoeBackendConfigWithCreds {
        /// The credentials.
        pub creds: CrusoeCreds,
    }
}

impl Validate for CrusoeBackendConfig {}
impl Validate for CrusoeBackendConfigWithCreds {}
