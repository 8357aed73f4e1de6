//! Oracle Cloud Infrastructure (`type: oci`): API-key (client) or default (CLI config file)
//! credentials, regions and compartment.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{FieldError, Validate, redact_opt};

/// `{type: client, user, tenancy, key_file | key_content, pass_phrase?, fingerprint, region}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciClientCreds {
    /// The user OCID.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub user: String,
    /// The tenancy OCID.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub tenancy: String,
    /// The path of the user's PEM private key (exclusive with `key_content`).
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub key_file: Option<String>,
    /// The user's PEM private key (exclusive with `key_file`).
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub key_content: Option<String>,
    /// The key's passphrase, if it is encrypted.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub pass_phrase: Option<String>,
    /// The public key fingerprint.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub fingerprint: String,
    /// Any region the tenancy is subscribed to.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub region: String,
}

impl fmt::Debug for OciClientCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciClientCreds")
            .field("user", &self.user)
            .field("tenancy", &self.tenancy)
            .field("key_file", &self.key_file)
            .field("key_content", &redact_opt(&self.key_content))
            .field("pass_phrase", &redact_opt(&self.pass_phrase))
            .field("fingerprint", &self.fingerprint)
            .field("region", &self.region)
            .finish()
    }
}

/// `{type: default, file, profile}`: an OCI CLI config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciDefaultCreds {
    /// The config file (default `~/.oci/config`).
    #[serde(
        default = "default_file",
        deserialize_with = "crate::models::backends::lenient::string"
    )]
    pub file: String,
    /// The profile in it (default `DEFAULT`).
    #[serde(
        default = "default_profile",
        deserialize_with = "crate::models::backends::lenient::string"
    )]
    pub profile: String,
}

impl Default for OciDefaultCreds {
    fn default() -> Self {
        Self {
            file: default_file(),
            profile: default_profile(),
        }
    }
}

fn default_file() -> String {
    "~/.oci/config".to_string()
}

fn default_profile() -> String {
    "DEFAULT".to_string()
}

/// OCI credentials, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum OciCreds {
    /// `client`.
    #[serde(rename = "client")]
    Client(OciClientCreds),
    /// `default`.
    #[serde(rename = "default")]
    Default(OciDefaultCreds),
}

impl Validate for OciCreds {
    fn validate(&self) -> Result<(), FieldError> {
        if let OciCreds::Client(c) = self {
            let has_file = c.key_file.as_deref().is_some_and(|s| !s.is_empty());
            let has_content = c.key_content.as_deref().is_some_and(|s| !s.is_empty());
            if has_file && has_content {
                return Err(FieldError::new(
                    &[],
                    "key_file and key_content are mutually exclusive",
                ));
            }
            if !has_file && !has_content {
                return Err(FieldError::new(
                    &[],
                    "Either key_file or key_content should be set",
                ));
            }
        }
        Ok(())
    }
}

backend_config! {
    /// The OCI backend config without credentials.
    pub struct OciBackendConfig {
        /// Regions to use; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// The compartment for created resources; dstack creates one when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub compartment_id: Option<String>,
        /// Extra shapes allowed beyond the standard families.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub experimental_instance_types: Option<Vec<String>>,
    }
    /// The OCI backend config with credentials.
    with_creds OciBackendConfigWithCreds {
        /// The credentials.
        pub creds: OciCreds,
    }
}

impl Validate for OciBackendConfig {}

impl Validate for OciBackendConfigWithCreds {
    fn validate(&self) -> Result<(), FieldError> {
        self.creds
            .validate()
            .map_err(|e| e.within(&[super::key("creds")]))
    }
}
