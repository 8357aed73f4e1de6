//! Kubernetes (`type: kubernetes`): a kubeconfig, the contexts (clusters) to use, and the
//! SSH jump host (`proxy_jump`) per context or for the legacy single-context setup.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

use super::{FieldError, Redacted, Validate, fill_data, lenient, redact_opt};

/// The SSH jump host: any node's external address and a port reachable from outside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesProxyJumpConfig {
    /// The external IP address or hostname of a node.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub hostname: Option<String>,
    /// A port open outside the cluster.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_int"
    )]
    pub port: Option<i64>,
}

/// A context given with options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesContextConfig {
    /// The kubeconfig context name (also the region name).
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub name: String,
    /// The jump host for this cluster.
    #[serde(default)]
    pub proxy_jump: Option<KubernetesProxyJumpConfig>,
}

/// One entry of `contexts`: a context name, or a name with options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum KubernetesContext {
    /// `{name, proxy_jump?}`.
    Config(KubernetesContextConfig),
    /// A bare context name.
    Name(String),
}

impl<'de> Deserialize<'de> for KubernetesContext {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if v.is_object() {
            serde_json::from_value(v)
                .map(KubernetesContext::Config)
                .map_err(serde::de::Error::custom)
        } else {
            lenient::string(v)
                .map(KubernetesContext::Name)
                .map_err(serde::de::Error::custom)
        }
    }
}

impl KubernetesContext {
    /// The context name.
    pub fn name(&self) -> &str {
        match self {
            KubernetesContext::Config(c) => &c.name,
            KubernetesContext::Name(n) => n,
        }
    }
}

/// `kubeconfig` as the API takes it (`data` required).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeconfigConfig {
    /// The path the kubeconfig was read from (default `""`).
    #[serde(default, deserialize_with = "crate::models::backends::lenient::string")]
    pub filename: String,
    /// The kubeconfig contents.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub data: String,
}

impl fmt::Debug for KubeconfigConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeconfigConfig")
            .field("filename", &self.filename)
            .field("data", &Redacted)
            .finish()
    }
}

/// `kubeconfig` as `config.yml` takes it (`data` read from `filename` when omitted).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeconfigFileConfig {
    /// The path of the kubeconfig (default `""`).
    #[serde(default, deserialize_with = "crate::models::backends::lenient::string")]
    pub filename: String,
    /// The kubeconfig contents.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub data: Option<String>,
}

impl fmt::Debug for KubeconfigFileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeconfigFileConfig")
            .field("filename", &self.filename)
            .field("data", &redact_opt(&self.data))
            .finish()
    }
}

impl KubeconfigFileConfig {
    /// Reads `filename` into `data` unless `data` is set.
    pub fn resolve_files(&mut self) -> Result<(), FieldError> {
        fill_data(Some(&self.filename), &mut self.data, "filename", "data")
    }
}

backend_config! {
    /// The Kubernetes backend config without credentials.
    pub struct KubernetesBackendConfig {
        /// Enabled contexts, one cluster each; the context name is the region. When omitted,
        /// the kubeconfig's `current-context` is the only one (region `""`).
        #[serde(default)]
        pub contexts: Option<Vec<KubernetesContext>>,
        /// Legacy (no `contexts`): the jump host.
        #[serde(default)]
        pub proxy_jump: Option<KubernetesProxyJumpConfig>,
        /// Legacy (no `contexts`, deprecated): the namespace (default `default`).
        #[serde(default, deserialize_with = "crate::models::backends::lenient::opt_string")]
        pub namespace: Option<String>,
    }
    /// The Kubernetes backend config with the kubeconfig (API form).
    with_creds KubernetesBackendConfigWithCreds {
        /// The kubeconfig.
        pub kubeconfig: KubeconfigConfig,
    }
    /// The Kubernetes backend config as written in `config.yml`.
    with_creds KubernetesBackendFileConfigWithCreds {
        /// The kubeconfig.
        pub kubeconfig: KubeconfigFileConfig,
    }
}

impl Validate for KubernetesBackendConfig {}
impl Validate for KubernetesBackendConfigWithCreds {}
impl Validate for KubernetesBackendFileConfigWithCreds {}
