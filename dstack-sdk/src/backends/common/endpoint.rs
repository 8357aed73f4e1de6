//! Endpoint overrides: point a cloud's API (or one of its services) at another URL, e.g. a
//! local emulator in tests or a private endpoint in production.
//!
//! Keys are `<cloud>` (every service of the cloud) or `<cloud>.<service>` (one service, wins
//! over the cloud-wide one), e.g. `aws` or `aws.ec2`. From the environment:
//! `DSTACK_ENDPOINT_URL_AWS` and `DSTACK_ENDPOINT_URL_AWS_EC2`.

use std::collections::BTreeMap;

/// The env var prefix for endpoint overrides.
pub const ENDPOINT_ENV_PREFIX: &str = "DSTACK_ENDPOINT_URL_";

/// Endpoint overrides by `<cloud>` or `<cloud>.<service>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    overrides: BTreeMap<String, String>,
}

impl Endpoints {
    /// No overrides.
    pub fn none() -> Self {
        Self::default()
    }

    /// Overrides from `DSTACK_ENDPOINT_URL_<CLOUD>[_<SERVICE>]` variables.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    /// Overrides from `(name, value)` pairs shaped like the environment.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut e = Self::default();
        for (k, v) in vars {
            let Some(rest) = k.strip_prefix(ENDPOINT_ENV_PREFIX) else {
                continue;
            };
            if v.trim().is_empty() || rest.is_empty() {
                continue;
            }
            let key = match rest.split_once('_') {
                Some((cloud, service)) => format!(
                    "{}.{}",
                    cloud.to_ascii_lowercase(),
                    service.to_ascii_lowercase()
                ),
                None => rest.to_ascii_lowercase(),
            };
            e.overrides.insert(key, v.trim().to_string());
        }
        e
    }

    /// Adds an override for `key` (`aws` or `aws.ec2`).
    pub fn with(mut self, key: impl Into<String>, url: impl Into<String>) -> Self {
        self.overrides
            .insert(key.into().to_ascii_lowercase(), url.into());
        self
    }

    /// The URL for `service` of `cloud`: the service override, else the cloud's, else `None`.
    pub fn get(&self, cloud: &str, service: &str) -> Option<&str> {
        self.overrides
            .get(&format!("{cloud}.{service}"))
            .or_else(|| self.overrides.get(cloud))
            .map(String::as_str)
    }

    /// Whether any override is set for `cloud`.
    pub fn any_for(&self, cloud: &str) -> bool {
        self.overrides
            .keys()
            .any(|k| k == cloud || k.starts_with(&format!("{cloud}.")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn service_override_wins() {
        let e = Endpoints::from_vars([
            (
                "DSTACK_ENDPOINT_URL_AWS".to_string(),
                "http://a".to_string(),
            ),
            (
                "DSTACK_ENDPOINT_URL_AWS_SERVICEQUOTAS".to_string(),
                "http://q".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ]);
        assert_eq!(e.get("aws", "ec2"), Some("http://a"));
        assert_eq!(e.get("aws", "servicequotas"), Some("http://q"));
        assert_eq!(e.get("gcp", "compute"), None);
        assert!(e.any_for("aws"));
        assert!(!Endpoints::none().with("gcp.compute", "u").any_for("aws"));
    }
}
