//! DigitalOcean (`type: digitalocean`) and AMD Developer Cloud (`type: amddevcloud`): the same
//! config, an API key and an optional project name.

use super::{ApiKeyCreds, Validate};

/// DigitalOcean / AMD Developer Cloud credentials: `{type: api_key, api_key}`.
pub type DigitalOceanCreds = ApiKeyCreds;

backend_config! {
    /// The DigitalOcean / AMD Developer Cloud config without credentials. The union variant
    /// (`digitalocean` or `amddevcloud`) carries the `type`.
    pub struct DigitalOceanBackendConfig {
        /// The project to create droplets in; the default project when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub project_name: Option<String>,
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
    }
    /// The DigitalOcean / AMD Developer Cloud config with credentials.
    with_creds DigitalOceanBackendConfigWithCreds {
        /// The credentials.
        pub creds: DigitalOceanCreds,
    }
}

impl Validate for DigitalOceanBackendConfig {}
impl Validate for DigitalOceanBackendConfigWithCreds {}
