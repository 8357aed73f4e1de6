//! Project secrets: [`Secret`] and the `/api/project/{p}/secrets/*` request bodies.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A project secret. `secrets/list` sends `value: null`; `get` and `create_or_update` send it.
///
/// `Debug` shows the value as asterisks, one per character, as dstack's `__str__` does.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// The secret's id.
    pub id: Uuid,
    /// The name (`^[A-Za-z0-9-_]{1,200}$`).
    pub name: String,
    /// The value (at most 5000 characters), or `None` in listings.
    #[serde(default)]
    pub value: Option<String>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = match &self.value {
            Some(v) => "*".repeat(v.chars().count()),
            None => "*".to_string(),
        };
        f.debug_struct("Secret")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("value", &shown)
            .finish()
    }
}

/// Body of `secrets/get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetSecretRequest {
    /// The secret name.
    pub name: String,
}

/// Body of `secrets/create_or_update`. `Debug` hides the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateOrUpdateSecretRequest {
    /// The secret name (`^[A-Za-z0-9-_]{1,200}$`).
    pub name: String,
    /// The value (at most 5000 characters).
    pub value: String,
}

impl fmt::Debug for CreateOrUpdateSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateOrUpdateSecretRequest")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Body of `secrets/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSecretsRequest {
    /// Names of the secrets to delete.
    pub secrets_names: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_round_trip_and_debug() {
        let v = json!({"id": "1c1d6b1e-7d0a-4a5e-9d4c-2f2c0a0b0c0d", "name": "HF_TOKEN", "value": "hf_abc"});
        let s: Secret = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
        let d = format!("{s:?}");
        assert!(d.contains("******") && !d.contains("hf_abc"), "{d}");
        let listed: Secret = serde_json::from_value(
            json!({"id": "1c1d6b1e-7d0a-4a5e-9d4c-2f2c0a0b0c0d", "name": "X"}),
        )
        .unwrap();
        assert_eq!(serde_json::to_value(&listed).unwrap()["value"], json!(null));
        let r = CreateOrUpdateSecretRequest {
            name: "A".into(),
            value: "topsecret".into(),
        };
        assert!(!format!("{r:?}").contains("topsecret"));
    }
}
