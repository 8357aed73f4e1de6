//! Slurm (`type: slurm`): login-node clusters with their partitions. Connection details and
//! the private key count as credentials and are left out of the without-creds config.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::{FieldError, PathSeg, Redacted, Validate, fill_data, key, redact_opt};

/// Partitions that have one GPU model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmGpuPartitionConfig {
    /// The GPU model name.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub gpu: String,
    /// The partitions with that GPU.
    #[serde(deserialize_with = "crate::models::backends::lenient::string_list")]
    pub partitions: Vec<String>,
}

/// A cluster without connection details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmClusterConfig {
    /// The cluster name (also the region name).
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub name: String,
    /// GPU partitions.
    #[serde(default)]
    pub gpu_partitions: Option<Vec<SlurmGpuPartitionConfig>>,
    /// CPU-only partitions.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string_list"
    )]
    pub cpu_partitions: Option<Vec<String>>,
}

/// The login user's private key as the API takes it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmPrivateKeyConfig {
    /// The path it was read from (default `""`).
    #[serde(default, deserialize_with = "crate::models::backends::lenient::string")]
    pub path: String,
    /// The key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub content: String,
}

impl fmt::Debug for SlurmPrivateKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlurmPrivateKeyConfig")
            .field("path", &self.path)
            .field("content", &Redacted)
            .finish()
    }
}

/// The login user's private key as `config.yml` takes it (`content` read from `path`).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmPrivateKeyFileConfig {
    /// The path of the key (default `""`).
    #[serde(default, deserialize_with = "crate::models::backends::lenient::string")]
    pub path: String,
    /// The key; read from `path` when omitted.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string"
    )]
    pub content: Option<String>,
}

impl fmt::Debug for SlurmPrivateKeyFileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlurmPrivateKeyFileConfig")
            .field("path", &self.path)
            .field("content", &redact_opt(&self.content))
            .finish()
    }
}

/// A cluster with its login node and private key; `K` is the key's form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmClusterConfigWithCreds<K> {
    /// The cluster name (also the region name).
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub name: String,
    /// GPU partitions.
    #[serde(default)]
    pub gpu_partitions: Option<Vec<SlurmGpuPartitionConfig>>,
    /// CPU-only partitions.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string_list"
    )]
    pub cpu_partitions: Option<Vec<String>>,
    /// The login node's hostname or IP.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub hostname: String,
    /// The login node's SSH port.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_int"
    )]
    pub port: Option<i64>,
    /// The login user.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub user: String,
    /// The user's private key.
    pub private_key: K,
}

impl<K> SlurmClusterConfigWithCreds<K> {
    /// The cluster without connection details.
    pub fn without_creds(&self) -> SlurmClusterConfig {
        SlurmClusterConfig {
            name: self.name.clone(),
            gpu_partitions: self.gpu_partitions.clone(),
            cpu_partitions: self.cpu_partitions.clone(),
        }
    }
}

/// The Slurm backend config without credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmBackendConfig {
    /// The clusters.
    pub clusters: Vec<SlurmClusterConfig>,
}

/// The Slurm backend config with credentials (API form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmBackendConfigWithCreds {
    /// The clusters.
    pub clusters: Vec<SlurmClusterConfigWithCreds<SlurmPrivateKeyConfig>>,
}

/// The Slurm backend config as written in `config.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlurmBackendFileConfigWithCreds {
    /// The clusters.
    pub clusters: Vec<SlurmClusterConfigWithCreds<SlurmPrivateKeyFileConfig>>,
}

impl SlurmBackendConfigWithCreds {
    /// This config without connection details and keys.
    pub fn without_creds(&self) -> SlurmBackendConfig {
        SlurmBackendConfig {
            clusters: self.clusters.iter().map(|c| c.without_creds()).collect(),
        }
    }
}

impl SlurmBackendFileConfigWithCreds {
    /// This config without connection details and keys.
    pub fn without_creds(&self) -> SlurmBackendConfig {
        SlurmBackendConfig {
            clusters: self.clusters.iter().map(|c| c.without_creds()).collect(),
        }
    }

    /// Reads every `private_key.path` into `content` unless it is set.
    pub fn resolve_files(&mut self) -> Result<(), FieldError> {
        for (n, c) in self.clusters.iter_mut().enumerate() {
            let k = &mut c.private_key;
            fill_data(Some(&k.path.clone()), &mut k.content, "path", "content")
                .map_err(|e| e.within(&[key("clusters"), PathSeg::Index(n), key("private_key")]))?;
        }
        Ok(())
    }
}

impl Validate for SlurmBackendConfig {}
impl Validate for SlurmBackendConfigWithCreds {}
impl Validate for SlurmBackendFileConfigWithCreds {}
