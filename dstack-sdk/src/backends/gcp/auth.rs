//! Credentials: a service account key (`creds.type: service_account`, the key JSON in `data`)
//! or application default credentials (`creds.type: default`), as dstack's `auth.py`.
//!
//! `google-cloud-auth` turns a service account key into self-signed JWT bearer tokens
//! (RS256 with the key, `iss`/`sub` = `client_email`, `kid` = `private_key_id`, the
//! `cloud-platform` scope); application default credentials are resolved the usual way
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, the metadata server). The TLS and
//! signing crypto is the process-wide rustls provider (ring), installed before any credential
//! is built. Key material is never logged.

use std::fmt;

use google_cloud_auth::credentials::Credentials;

use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::gcp::GcpCreds;

/// The OAuth scope the backend asks for.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The identity behind the credentials, for logs and messages (no key material).
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialsInfo {
    /// `service_account` or `default`.
    pub kind: &'static str,
    /// The service account email, when known.
    pub client_email: Option<String>,
    /// The project the key belongs to, when known.
    pub key_project_id: Option<String>,
}

impl fmt::Debug for CredentialsInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialsInfo")
            .field("kind", &self.kind)
            .field("client_email", &self.client_email)
            .field("key_project_id", &self.key_project_id)
            .finish()
    }
}

/// Builds the credentials of `creds` (no network call).
///
/// A key that is not JSON or lacks the service account fields gives
/// [`BackendError::InvalidCredentials`].
pub fn build_credentials(creds: &GcpCreds) -> BackendResult<(Credentials, CredentialsInfo)> {
    crate::http::install_crypto_provider();
    match creds {
        GcpCreds::ServiceAccount(sa) => {
            let key: serde_json::Value =
                serde_json::from_str(&sa.data).map_err(|e| BackendError::InvalidCredentials {
                    message: format!(
                        "the service account key is not valid JSON (line {}, column {})",
                        e.line(),
                        e.column()
                    ),
                })?;
            let field = |name: &str| {
                key.get(name)
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
            };
            let kind = field("type");
            if kind.as_deref().is_some_and(|t| t != "service_account") {
                return Err(BackendError::InvalidCredentials {
                    message: format!(
                        "the key is of type {:?}, not a service account key",
                        kind.unwrap_or_default()
                    ),
                });
            }
            for required in ["client_email", "private_key", "private_key_id"] {
                if field(required).is_none_or(|v| v.is_empty()) {
                    return Err(BackendError::InvalidCredentials {
                        message: format!("the service account key has no {required}"),
                    });
                }
            }
            let info = CredentialsInfo {
                kind: "service_account",
                client_email: field("client_email"),
                key_project_id: field("project_id"),
            };
            let credentials = google_cloud_auth::credentials::service_account::Builder::new(key)
                .with_access_specifier(
                    google_cloud_auth::credentials::service_account::AccessSpecifier::from_scopes(
                        [CLOUD_PLATFORM_SCOPE],
                    ),
                )
                .build()
                .map_err(|e| BackendError::InvalidCredentials {
                    message: format!("invalid service account key: {e}"),
                })?;
            Ok((credentials, info))
        }
        GcpCreds::Default(_) => {
            let credentials = google_cloud_auth::credentials::Builder::default()
                .with_scopes([CLOUD_PLATFORM_SCOPE])
                .build()
                .map_err(|e| BackendError::InvalidCredentials {
                    message: format!("no application default credentials: {e}"),
                })?;
            Ok((
                credentials,
                CredentialsInfo {
                    kind: "default",
                    client_email: None,
                    key_project_id: None,
                },
            ))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::models::backends::gcp::GcpServiceAccountCreds;

    fn sa(data: &str) -> GcpCreds {
        GcpCreds::ServiceAccount(GcpServiceAccountCreds {
            filename: None,
            data: data.to_string(),
        })
    }

    #[test]
    fn malformed_keys_are_invalid_credentials() {
        for data in [
            "not json",
            r#"{"type":"authorized_user"}"#,
            r#"{"type":"service_account","client_email":"a@b"}"#,
        ] {
            let e = build_credentials(&sa(data)).unwrap_err();
            assert!(
                matches!(e, BackendError::InvalidCredentials { .. }),
                "{data}: {e}"
            );
            assert!(!e.to_string().contains("BEGIN"));
        }
    }
}
