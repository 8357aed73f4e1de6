//! Nebius AI Cloud (`type: nebius`): service-account credentials, projects, regions, fabrics.
//!
//! In `config.yml` the private key may be given as `private_key_file`, or the whole
//! credentials as a `filename` written by `nebius iam auth-public-key generate`
//! ([`NebiusFileCreds`]); dstack reads them when it loads the config.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use std::fmt;

use super::{FieldError, Redacted, Validate, fill_data, read_config_file, redact_opt};

literal_tag!(
    /// The `type: service_account` literal of Nebius credentials.
    ServiceAccountTag = "service_account"
);

/// Service-account credentials as the API takes them (`private_key_content` required).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NebiusCreds {
    /// Always `service_account` (the default when omitted).
    #[serde(rename = "type", default)]
    pub kind: ServiceAccountTag,
    /// The service account ID.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub service_account_id: String,
    /// The ID of the account's public key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub public_key_id: String,
    /// The path the private key was read from.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub private_key_file: Option<String>,
    /// The PEM private key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub private_key_content: String,
    /// The credentials file the values were read from.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub filename: Option<String>,
}

impl fmt::Debug for NebiusCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NebiusCreds")
            .field("service_account_id", &self.service_account_id)
            .field("public_key_id", &self.public_key_id)
            .field("private_key_file", &self.private_key_file)
            .field("private_key_content", &Redacted)
            .field("filename", &self.filename)
            .finish()
    }
}

/// Service-account credentials as `config.yml` takes them: every field optional, filled from
/// `filename` (a Nebius CLI credentials JSON) or `private_key_file`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NebiusFileCreds {
    /// Always `service_account` (the default when omitted).
    #[serde(rename = "type", default)]
    pub kind: ServiceAccountTag,
    /// The service account ID (set from `filename` when given).
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub service_account_id: Option<String>,
    /// The public key ID (set from `filename` when given).
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub public_key_id: Option<String>,
    /// The path of the PEM private key.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub private_key_file: Option<String>,
    /// The PEM private key (read from `private_key_file` when omitted).
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub private_key_content: Option<String>,
    /// The path of a Nebius CLI credentials JSON.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub filename: Option<String>,
}

impl fmt::Debug for NebiusFileCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NebiusFileCreds")
            .field("service_account_id", &self.service_account_id)
            .field("public_key_id", &self.public_key_id)
            .field("private_key_file", &self.private_key_file)
            .field(
                "private_key_content",
                &redact_opt(&self.private_key_content),
            )
            .field("filename", &self.filename)
            .finish()
    }
}

impl NebiusFileCreds {
    /// Fills the fields from `filename` (credentials JSON), or `private_key_content` from
    /// `private_key_file`, as dstack does while loading `config.yml`.
    pub fn resolve_files(&mut self) -> Result<(), FieldError> {
        if let Some(filename) = self.filename.clone().filter(|f| !f.is_empty()) {
            let text = read_config_file(&filename).map_err(|m| FieldError::new(&[], m))?;
            let (sub, kid, key) = parse_credentials_json(&text).map_err(|e| {
                FieldError::new(
                    &[],
                    format!("Failed to parse credentials file {filename}: {e}"),
                )
            })?;
            self.service_account_id = Some(sub);
            self.public_key_id = Some(kid);
            self.private_key_content = Some(key);
            return Ok(());
        }
        fill_data(
            self.private_key_file.as_deref(),
            &mut self.private_key_content,
            "private_key_file",
            "private_key_content",
        )
    }
}

/// Reads `subject-credentials.{sub, kid, private-key}` from a Nebius CLI credentials file.
fn parse_credentials_json(text: &str) -> Result<(String, String, String), String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let subject = v
        .get("subject-credentials")
        .ok_or("missing `subject-credentials`")?;
    let field = |name: &str| {
        subject
            .get(name)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("missing `subject-credentials.{name}`"))
    };
    Ok((field("sub")?, field("kid")?, field("private-key")?))
}

backend_config! {
    /// The Nebius backend config without credentials.
    pub struct NebiusBackendConfig {
        /// Allowed project IDs, at most one per region; the default project when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub projects: Option<Vec<String>>,
        /// Allowed regions; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub regions: Option<Vec<String>>,
        /// Allowed InfiniBand fabrics; all when omitted.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_list")]
        pub fabrics: Option<Vec<String>>,
        /// Labels for created resources.
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string_map")]
        pub tags: Option<IndexMap<String, String>>,
    }
    /// The Nebius backend config with credentials (API form).
    with_creds NebiusBackendConfigWithCreds {
        /// The credentials.
        pub creds: NebiusCreds,
    }
    /// The Nebius backend config as written in `config.yml`.
    with_creds NebiusBackendFileConfigWithCreds {
        /// The credentials.
        pub creds: NebiusFileCreds,
    }
}

impl Validate for NebiusBackendConfig {}
impl Validate for NebiusBackendConfigWithCreds {}
impl Validate for NebiusBackendFileConfigWithCreds {}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_cli_credentials_json() {
        let text = r#"{"subject-credentials": {"type": "JWT", "alg": "RS256",
            "private-key": "-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----\n",
            "kid": "publickey-e00abc", "iss": "serviceaccount-e00xyz", "sub": "serviceaccount-e00xyz"}}"#;
        let (sub, kid, key) = parse_credentials_json(text).unwrap();
        assert_eq!(
            (sub.as_str(), kid.as_str()),
            ("serviceaccount-e00xyz", "publickey-e00abc")
        );
        assert!(key.starts_with("-----BEGIN"));
        assert!(parse_credentials_json("{}").is_err());
    }

    #[test]
    fn fills_private_key_from_file() {
        let mut c = NebiusFileCreds {
            private_key_file: Some("/dev/null".into()),
            ..Default::default()
        };
        c.resolve_files().unwrap();
        assert_eq!(c.private_key_content.as_deref(), Some(""));
        let mut c = NebiusFileCreds::default();
        let e = c.resolve_files().unwrap_err();
        assert!(
            e.message
                .contains("Either `private_key_file` or `private_key_content`"),
            "{e}"
        );
        let mut c = NebiusFileCreds {
            private_key_file: Some("/nonexistent/k.pem".into()),
            ..Default::default()
        };
        assert_eq!(
            c.resolve_files().unwrap_err().message,
            "No such file /nonexistent/k.pem"
        );
        let dbg = format!(
            "{:?}",
            NebiusFileCreds {
                private_key_content: Some("SECRET".into()),
                ..Default::default()
            }
        );
        assert!(!dbg.contains("SECRET"));
    }
}
