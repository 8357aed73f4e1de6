//! The server `config.yml` (projects, backends, encryption, default_permissions, plugins).
//!
//! ```yaml
//! projects:
//!   - name: main
//!     backends:
//!       - type: aws
//!         creds:
//!           type: default
//! encryption:
//!   keys:
//!     - type: aes
//!       name: key1
//!       secret: E5yzN6V3XvBq/f085ISWFCdgnOGED0kuFaAkASlmmO4=
//! default_permissions:
//!   allow_non_admins_create_projects: false
//! ```
//!
//! Parsing follows dstack's `ServerConfig` model: unknown keys are rejected, numbers are
//! accepted where strings are expected, and every error names its field path
//! (`projects[0].backends[1].creds.secret_key: missing field ...`).
//! [`ServerConfig::from_yaml_str`] only parses; [`ServerConfig::resolve_files`] then reads the
//! files that credentials name (GCP `filename`, `kubeconfig.filename`, Nebius
//! `private_key_file`/`filename`, Slurm `private_key.path`), as dstack does on load.
//! [`ServerConfig::load`] does both.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

use crate::models::backends::{
    AnyBackendConfig, AnyBackendConfigWithCreds, AnyBackendFileConfigWithCreds, FieldError,
    PathSeg, check_no_unknown, from_value_with_path, key,
};

/// An error loading `config.yml`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServerConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The file is not valid YAML.
    #[error("config.yml is not valid YAML: {0}")]
    Yaml(String),
    /// A field is missing, has the wrong type, or is not allowed.
    #[error("invalid config.yml: {0}")]
    Field(FieldError),
}

impl From<FieldError> for ServerConfigError {
    fn from(e: FieldError) -> Self {
        ServerConfigError::Field(e)
    }
}

impl From<ServerConfigError> for crate::Error {
    fn from(e: ServerConfigError) -> Self {
        match e {
            ServerConfigError::Field(f) => {
                let fields = f.fields();
                let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
                crate::Error::validation(&refs, format!("invalid config.yml: {f}"))
            }
            other => crate::Error::new(crate::ErrorKind::Validation, other.to_string()),
        }
    }
}

/// One project and its backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectConfig {
    /// The project name; the project is created if missing.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub name: String,
    /// The backends; every available backend type not listed is deleted from the project.
    #[serde(default)]
    pub backends: Option<Vec<AnyBackendFileConfigWithCreds>>,
}

/// An AES-256-GCM key: `{type: aes, name, secret}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AesEncryptionKeyConfig {
    /// The key name (alphanumeric), stored with each ciphertext.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub name: String,
    /// Base64 of the 32-byte key.
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    pub secret: String,
}

impl fmt::Debug for AesEncryptionKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AesEncryptionKeyConfig")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl AesEncryptionKeyConfig {
    /// Decodes and checks the key: alphanumeric name, base64 secret of exactly 32 bytes.
    pub fn key_bytes(&self) -> Result<[u8; 32], FieldError> {
        if self.name.is_empty() || !self.name.chars().all(char::is_alphanumeric) {
            return Err(FieldError::new(&["name"], "Key name must be alphanumeric"));
        }
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        );
        let bytes = engine
            .decode(self.secret.as_bytes())
            .map_err(|_| FieldError::new(&["secret"], "Failed to decode secret from base64"))?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
            FieldError::new(
                &["secret"],
                format!("AES key must be 32 bytes. Got {} bytes", bytes.len()),
            )
        })
    }
}

/// The identity "key": `{type: identity}` (stores values in plain text).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityEncryptionKeyConfig {}

/// An encryption key, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum EncryptionKeyConfig {
    /// `aes`.
    #[serde(rename = "aes")]
    Aes(AesEncryptionKeyConfig),
    /// `identity`.
    #[serde(rename = "identity")]
    Identity(IdentityEncryptionKeyConfig),
}

/// `encryption`: the keys, the first of which encrypts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// The keys.
    pub keys: Vec<EncryptionKeyConfig>,
}

fn default_true() -> bool {
    true
}

/// `default_permissions`: what non-admins may do by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultPermissions {
    /// Non-admin users may create projects (default true).
    #[serde(
        default = "default_true",
        deserialize_with = "crate::models::backends::lenient::boolean"
    )]
    pub allow_non_admins_create_projects: bool,
    /// Non-admin members may manage SSH fleets (default true).
    #[serde(
        default = "default_true",
        deserialize_with = "crate::models::backends::lenient::boolean"
    )]
    pub allow_non_admins_manage_ssh_fleets: bool,
    /// Project managers may manage secrets (default false).
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::boolean"
    )]
    pub allow_managers_manage_secrets: bool,
}

impl Default for DefaultPermissions {
    fn default() -> Self {
        Self {
            allow_non_admins_create_projects: true,
            allow_non_admins_manage_ssh_fleets: true,
            allow_managers_manage_secrets: false,
        }
    }
}

/// The server `config.yml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// The projects (required).
    pub projects: Vec<ProjectConfig>,
    /// Encryption keys for secrets at rest.
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
    /// Default user permissions.
    #[serde(default)]
    pub default_permissions: Option<DefaultPermissions>,
    /// Server-side plugins to enable.
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string_list"
    )]
    pub plugins: Option<Vec<String>>,
}

/// `ServerConfig` with backends still raw, so that their errors get full paths.
#[derive(Deserialize)]
struct RawServerConfig {
    projects: Vec<RawProjectConfig>,
    #[serde(default)]
    encryption: Option<EncryptionConfig>,
    #[serde(default)]
    default_permissions: Option<DefaultPermissions>,
    #[serde(
        default,
        deserialize_with = "crate::models::backends::lenient::opt_string_list"
    )]
    plugins: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawProjectConfig {
    #[serde(deserialize_with = "crate::models::backends::lenient::string")]
    name: String,
    #[serde(default)]
    backends: Option<Vec<serde_json::Value>>,
}

impl ServerConfig {
    /// Parses `config.yml` text strictly (unknown keys rejected). Files are not read.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ServerConfigError> {
        let value = yaml_to_json(yaml)?;
        Ok(Self::from_value(&value, true)?)
    }

    /// Reads, parses and resolves credential files, as the server does at start.
    pub fn load(path: &Path) -> Result<Self, ServerConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let mut config = Self::from_yaml_str(&text)?;
        config.resolve_files()?;
        Ok(config)
    }

    /// Parses from JSON; `strict` rejects unknown keys as dstack does.
    pub fn from_value(value: &serde_json::Value, strict: bool) -> Result<Self, FieldError> {
        if !value.is_object() {
            return Err(FieldError::new(
                &[],
                "config.yml must be a mapping with `projects`",
            ));
        }
        let raw: RawServerConfig = from_value_with_path(value)?;
        let mut projects = Vec::with_capacity(raw.projects.len());
        for (pi, p) in raw.projects.into_iter().enumerate() {
            let backends = match p.backends {
                None => None,
                Some(list) => {
                    let mut out = Vec::with_capacity(list.len());
                    for (bi, b) in list.iter().enumerate() {
                        let parsed =
                            AnyBackendFileConfigWithCreds::parse(b, strict).map_err(|e| {
                                e.within(&[
                                    key("projects"),
                                    PathSeg::Index(pi),
                                    key("backends"),
                                    PathSeg::Index(bi),
                                ])
                            })?;
                        out.push(parsed);
                    }
                    Some(out)
                }
            };
            projects.push(ProjectConfig {
                name: p.name,
                backends,
            });
        }
        if let Some(enc) = &raw.encryption {
            for (ki, k) in enc.keys.iter().enumerate() {
                if let EncryptionKeyConfig::Aes(aes) = k {
                    aes.key_bytes().map_err(|e| {
                        e.within(&[key("encryption"), key("keys"), PathSeg::Index(ki)])
                    })?;
                }
            }
        }
        let config = ServerConfig {
            projects,
            encryption: raw.encryption,
            default_permissions: raw.default_permissions,
            plugins: raw.plugins,
        };
        if strict {
            check_no_unknown(value, &config.to_value())?;
        }
        Ok(config)
    }

    /// Reads every file that a backend's credentials name into the credentials.
    pub fn resolve_files(&mut self) -> Result<(), FieldError> {
        for (pi, p) in self.projects.iter_mut().enumerate() {
            for (bi, b) in p.backends.iter_mut().flatten().enumerate() {
                b.resolve_files().map_err(|e| {
                    e.within(&[
                        key("projects"),
                        PathSeg::Index(pi),
                        key("backends"),
                        PathSeg::Index(bi),
                    ])
                })?;
            }
        }
        Ok(())
    }

    /// The config the server writes when `config.yml` is missing: one project with its
    /// current backends and an empty key list (dstack's `_init_config`).
    pub fn initial(
        project: &str,
        backends: &[AnyBackendConfigWithCreds],
    ) -> Result<Self, FieldError> {
        let backends = backends
            .iter()
            .map(|b| AnyBackendFileConfigWithCreds::parse(&b.to_value(), false))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServerConfig {
            projects: vec![ProjectConfig {
                name: project.to_string(),
                backends: Some(backends),
            }],
            encryption: Some(EncryptionConfig { keys: Vec::new() }),
            default_permissions: None,
            plugins: None,
        })
    }

    /// The YAML the server writes (`null` fields left out, keys in model order).
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(&crate::models::backends::strip_nulls(self.to_value()))
            .unwrap_or_default()
    }

    /// The config as dstack dumps it: every field, `null`s included.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The project's backends as API configs (after [`Self::resolve_files`]).
    pub fn project_backends(
        &self,
        project: &str,
    ) -> Result<Vec<AnyBackendConfigWithCreds>, FieldError> {
        let Some((pi, p)) = self
            .projects
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == project)
        else {
            return Ok(Vec::new());
        };
        p.backends
            .iter()
            .flatten()
            .enumerate()
            .map(|(bi, b)| {
                b.clone().into_config().map_err(|e| {
                    e.within(&[
                        key("projects"),
                        PathSeg::Index(pi),
                        key("backends"),
                        PathSeg::Index(bi),
                    ])
                })
            })
            .collect()
    }

    /// The effective default permissions (dstack's defaults when the section is absent).
    pub fn permissions(&self) -> DefaultPermissions {
        self.default_permissions.clone().unwrap_or_default()
    }
}

/// Parses YAML into JSON as PyYAML's `safe_load` would: anchors and merge keys applied,
/// numeric mapping keys turned into strings.
pub fn yaml_to_json(yaml: &str) -> Result<serde_json::Value, ServerConfigError> {
    let mut v: serde_yaml::Value =
        serde_yaml::from_str(yaml).map_err(|e| ServerConfigError::Yaml(e.to_string()))?;
    v.apply_merge()
        .map_err(|e| ServerConfigError::Yaml(e.to_string()))?;
    convert_yaml(v).map_err(ServerConfigError::Yaml)
}

fn convert_yaml(v: serde_yaml::Value) -> Result<serde_json::Value, String> {
    use serde_yaml::Value as Y;
    Ok(match v {
        Y::Null => serde_json::Value::Null,
        Y::Bool(b) => serde_json::Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_json::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                serde_json::Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(serde_json::Value::Number)
                    .unwrap_or_default()
            }
        }
        Y::String(s) => serde_json::Value::String(s),
        Y::Sequence(seq) => serde_json::Value::Array(
            seq.into_iter()
                .map(convert_yaml)
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = serde_json::Map::new();
            for (k, v) in m {
                let k = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                out.insert(k, convert_yaml(v)?);
            }
            serde_json::Value::Object(out)
        }
        Y::Tagged(t) => convert_yaml(t.value)?,
    })
}

/// Reads a JSON value that may be a YAML/JSON document in a string.
fn value_or_yaml(input: &serde_json::Value) -> Result<serde_json::Value, String> {
    match input {
        serde_json::Value::String(s) => yaml_to_json(s).map_err(|e| match e {
            ServerConfigError::Yaml(m) => format!("Error parsing YAML: {m}"),
            other => other.to_string(),
        }),
        other => Ok(other.clone()),
    }
}

/// Normalises an oracle-corpus input of one of this module's kinds with our types, returning
/// the JSON dstack's pydantic would dump. `None` means the kind is not one of ours:
///
/// * `server_config`: a `config.yml` text (or an already-parsed mapping), parsed strictly and
///   with credential files resolved;
/// * `backend_config`: a backend config with credentials (JSON, or YAML text);
/// * `backend_config_no_creds`: a backend config without credentials;
/// * `wire:<Model>` (`wire:Run`, `wire:User`, …): an API response body read with our wire type
///   and written back.
pub fn normalize_kind(
    kind: &str,
    input: &serde_json::Value,
) -> Option<Result<serde_json::Value, String>> {
    let result = match kind {
        "server_config" => value_or_yaml(input).and_then(|v| {
            let mut c = ServerConfig::from_value(&v, true).map_err(|e| e.to_string())?;
            c.resolve_files().map_err(|e| e.to_string())?;
            Ok(c.to_value())
        }),
        "backend_config" => value_or_yaml(input).and_then(|v| {
            AnyBackendConfigWithCreds::parse(&v, true)
                .map(|c| c.to_value())
                .map_err(|e| e.to_string())
        }),
        "backend_config_no_creds" => value_or_yaml(input).and_then(|v| {
            AnyBackendConfig::parse(&v, true)
                .map(|c| c.to_value())
                .map_err(|e| e.to_string())
        }),
        k => match k.strip_prefix("wire:") {
            Some(model) => wire_round_trip(model, input)?,
            None => return None,
        },
    };
    Some(result)
}

/// `wire:<Model>` kinds: read an API response body with our wire type (unknown keys ignored,
/// as clients read responses) and write it back as the server would send it.
fn wire_round_trip(
    model: &str,
    input: &serde_json::Value,
) -> Option<Result<serde_json::Value, String>> {
    use crate::models::{instances, jobs, logs, offers, projects, runs, secrets, users};
    fn rt<T: serde::de::DeserializeOwned + Serialize>(
        v: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let t: T = from_value_with_path(v).map_err(|e| e.to_string())?;
        serde_json::to_value(&t).map_err(|e| e.to_string())
    }
    Some(match model {
        "User" => rt::<users::User>(input),
        "UserWithCreds" => rt::<users::UserWithCreds>(input),
        "Project" => rt::<projects::Project>(input),
        "Member" => rt::<projects::Member>(input),
        "Secret" => rt::<secrets::Secret>(input),
        "Instance" => rt::<instances::Instance>(input),
        "InstanceOfferWithAvailability" => rt::<offers::InstanceOfferWithAvailability>(input),
        "JobSpec" => rt::<jobs::JobSpec>(input),
        "JobSubmission" => rt::<jobs::JobSubmission>(input),
        "JobProvisioningData" => rt::<jobs::JobProvisioningData>(input),
        "Job" => rt::<jobs::Job>(input),
        "Run" => rt::<runs::Run>(input),
        "RunPlan" => rt::<runs::RunPlan>(input),
        "JobSubmissionLogs" => rt::<logs::JobSubmissionLogs>(input),
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::models::backends::{aws, azure, gcp, kubernetes, nebius, oci};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn fixtures() -> BTreeMap<String, String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/backends");
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yml") {
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                out.insert(name, std::fs::read_to_string(&path).unwrap());
            }
        }
        out
    }

    fn backend(c: &ServerConfig) -> &AnyBackendFileConfigWithCreds {
        assert_eq!(c.projects.len(), 1);
        assert_eq!(c.projects[0].name, "main");
        let b = c.projects[0].backends.as_ref().unwrap();
        assert_eq!(b.len(), 1);
        &b[0]
    }

    /// Doc snippets that dstack itself rejects: (fixture, expected error path, message part).
    const BROKEN: &[(&str, &str, &str)] = &[
        // The page's Kubernetes example indents `backends:` under `name: main`.
        ("kubernetes.yml", "", "mapping values are not allowed"),
        // The Azure VPC example puts `regions`/`vpc_ids` on the project, and omits the IDs.
        ("azure-vpc.yml", "projects[0].backends[0]", "tenant_id"),
        // Partial snippets that show one option and leave out required fields.
        (
            "azure-private-subnets.yml",
            "projects[0].backends[0]",
            "tenant_id",
        ),
        (
            "gcp-private-subnets.yml",
            "projects[0].backends[0]",
            "project_id",
        ),
    ];

    /// Snippets the page gives for the project settings page (the API form of the config).
    const UI_SNIPPETS: &[&str] = &[
        "gcp-service-account-data.yml",
        "nebius-private-key-content.yml",
    ];

    #[test]
    fn every_backends_page_example_parses() {
        let all = fixtures();
        assert!(
            all.len() >= 35,
            "expected the Backends page fixtures, found {}",
            all.len()
        );
        for (name, text) in &all {
            let parsed = ServerConfig::from_yaml_str(text);
            if let Some((_, path, msg)) = BROKEN.iter().find(|(n, _, _)| n == name) {
                let err = parsed.expect_err(name).to_string();
                assert!(err.contains(path) && err.contains(msg), "{name}: {err}");
                continue;
            }
            if UI_SNIPPETS.contains(&name.as_str()) {
                // As the UI takes it: the backend alone, in its API form.
                let v = yaml_to_json(text).unwrap();
                let b = AnyBackendConfigWithCreds::parse(&v["projects"][0]["backends"][0], true)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(matches!(
                    b,
                    AnyBackendConfigWithCreds::Gcp(_) | AnyBackendConfigWithCreds::Nebius(_)
                ));
                if name.starts_with("gcp") {
                    // In config.yml dstack wants `filename` (it reads `data` from it).
                    let err = parsed.expect_err(name).to_string();
                    assert!(
                        err.contains("projects[0].backends[0].creds") && err.contains("filename"),
                        "{err}"
                    );
                    continue;
                }
            }
            let c = parsed.unwrap_or_else(|e| panic!("{name}: {e}"));
            let b = backend(&c);
            let type_from_name = name.split(['-', '.']).next().unwrap();
            let expected = match type_from_name {
                "verda" => "datacrunch",
                t => t,
            };
            assert_eq!(b.type_str(), expected, "{name}");
            // Round trip: our dump parses back to the same config.
            let again = ServerConfig::from_value(&c.to_value(), true).unwrap();
            assert_eq!(again, c, "{name}");
        }
    }

    fn load(name: &str) -> ServerConfig {
        let text = fixtures()
            .remove(name)
            .unwrap_or_else(|| panic!("no fixture {name}"));
        ServerConfig::from_yaml_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn aws_examples_typed() {
        let c = load("aws-access-key.yml");
        let AnyBackendFileConfigWithCreds::Aws(a) = backend(&c) else {
            panic!()
        };
        let aws::AwsCreds::AccessKey(k) = &a.creds else {
            panic!()
        };
        assert_eq!(k.access_key, "KKAAUKLIZ5EHKICAOASV");
        assert!(!format!("{c:?}").contains("pn158lMqSBJiySwpQ9ubwmI6VUU3"));
        let c = load("aws-vpc-ids.yml");
        let AnyBackendFileConfigWithCreds::Aws(a) = backend(&c) else {
            panic!()
        };
        assert_eq!(a.default_vpcs, Some(true));
        assert_eq!(
            a.vpc_ids.as_ref().unwrap()["us-east-2"],
            "vpc-9i8h7g6f5e4d3c2b"
        );
        assert!(matches!(a.creds, aws::AwsCreds::Default(_)));
        let c = load("aws-os-images.yml");
        let AnyBackendFileConfigWithCreds::Aws(a) = backend(&c) else {
            panic!()
        };
        let images = a.os_images.as_ref().unwrap();
        assert_eq!(images.nvidia.as_ref().unwrap().owner, "123456789012");
        assert_eq!(images.cpu.as_ref().unwrap().owner, "self");
        let c = load("aws-private-subnets.yml");
        let AnyBackendFileConfigWithCreds::Aws(a) = backend(&c) else {
            panic!()
        };
        assert_eq!(a.public_ips, Some(false));
        let c = load("aws-vpc-name.yml");
        let AnyBackendFileConfigWithCreds::Aws(a) = backend(&c) else {
            panic!()
        };
        assert_eq!(a.vpc_name.as_deref(), Some("my-vpc"));
    }

    #[test]
    fn azure_gcp_oci_examples_typed() {
        let c = load("azure-client.yml");
        let AnyBackendFileConfigWithCreds::Azure(a) = backend(&c) else {
            panic!()
        };
        assert_eq!(a.subscription_id, "06c82ce3-28ff-4285-a146-c5e981a9d808");
        let azure::AzureCreds::Client(cl) = &a.creds else {
            panic!()
        };
        assert_eq!(cl.client_id, "acf3f73a-597b-46b6-98d9-748d75018ed0");
        assert!(!format!("{a:?}").contains("1Kb8Q~o3Q2hd"));
        let c = load("gcp-shared-vpc.yml");
        let AnyBackendFileConfigWithCreds::Gcp(g) = backend(&c) else {
            panic!()
        };
        assert_eq!(g.vpc_project_id.as_deref(), Some("another-project-id"));
        assert_eq!(
            g.without_creds().vpc_resource_name(),
            "projects/another-project-id/global/networks/my-custom-vpc"
        );
        let c = load("gcp-service-account-file.yml");
        let AnyBackendFileConfigWithCreds::Gcp(g) = backend(&c) else {
            panic!()
        };
        let gcp::GcpFileCreds::ServiceAccount(sa) = &g.creds else {
            panic!()
        };
        assert_eq!(sa.filename, "~/.dstack/server/gcp-024ed630eab5.json");
        assert!(sa.data.is_none());
        let ui = yaml_to_json(&fixtures()["gcp-service-account-data.yml"]).unwrap();
        let AnyBackendConfigWithCreds::Gcp(g) =
            AnyBackendConfigWithCreds::parse(&ui["projects"][0]["backends"][0], true).unwrap()
        else {
            panic!()
        };
        let gcp::GcpCreds::ServiceAccount(sa) = &g.creds else {
            panic!()
        };
        assert!(sa.data.contains("\"client_email\""));
        assert_eq!(sa.filename.as_deref(), Some(""));
        let c = load("oci-client.yml");
        let AnyBackendFileConfigWithCreds::Oci(o) = backend(&c) else {
            panic!()
        };
        let oci::OciCreds::Client(cl) = &o.creds else {
            panic!()
        };
        assert_eq!(cl.key_file.as_deref(), Some("~/.oci/private_key.pem"));
        assert_eq!(cl.region, "eu-frankfurt-1");
        let c = load("oci-compartment.yml");
        let AnyBackendFileConfigWithCreds::Oci(o) = backend(&c) else {
            panic!()
        };
        assert_eq!(
            o.compartment_id.as_deref(),
            Some("ocid1.compartment.oc1..aaaaaaaa")
        );
        assert!(matches!(&o.creds, oci::OciCreds::Default(d) if d.profile == "DEFAULT"));
    }

    #[test]
    fn other_examples_typed() {
        let c = load("nebius-projects.yml");
        let AnyBackendFileConfigWithCreds::Nebius(n) = backend(&c) else {
            panic!()
        };
        assert_eq!(n.projects.as_ref().unwrap().len(), 2);
        assert_eq!(
            n.creds.private_key_file.as_deref(),
            Some("~/path/to/key.pem")
        );
        let c = load("nebius-credentials-file.yml");
        let AnyBackendFileConfigWithCreds::Nebius(n) = backend(&c) else {
            panic!()
        };
        assert_eq!(
            n.creds.filename.as_deref(),
            Some("~/.nebius/sa-credentials.json")
        );
        let c = load("nebius-private-key-content.yml");
        let AnyBackendFileConfigWithCreds::Nebius(n) = backend(&c) else {
            panic!()
        };
        let nebius::NebiusFileCreds {
            private_key_content: Some(k),
            ..
        } = &n.creds
        else {
            panic!()
        };
        assert!(k.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let c = load("kubernetes.fixed.yml");
        let AnyBackendFileConfigWithCreds::Kubernetes(k) = backend(&c) else {
            panic!()
        };
        assert_eq!(k.kubeconfig.filename, "~/.kube/config");
        let pj: &kubernetes::KubernetesProxyJumpConfig = k.proxy_jump.as_ref().unwrap();
        assert_eq!(
            (pj.hostname.as_deref(), pj.port),
            (Some("204.12.171.137"), Some(32000))
        );
        let c = load("runpod-community-cloud.yml");
        let AnyBackendFileConfigWithCreds::RunPod(r) = backend(&c) else {
            panic!()
        };
        assert_eq!(r.community_cloud, Some(false));
        let c = load("hotaisle.yml");
        let AnyBackendFileConfigWithCreds::HotAisle(h) = backend(&c) else {
            panic!()
        };
        assert_eq!(h.team_handle, "hotaisle-team-handle");
        let c = load("verda-datacrunch.yml");
        let AnyBackendFileConfigWithCreds::DataCrunch(d) = backend(&c) else {
            panic!()
        };
        assert_eq!(d.creds.client_id, "xfaHBqYEsArqhKWX-e52x3HH7w8T");
        for (name, variant) in [
            ("amddevcloud.yml", "amddevcloud"),
            ("digitalocean.yml", "digitalocean"),
        ] {
            let c = load(name);
            assert_eq!(backend(&c).type_str(), variant);
            let v = backend(&c).to_value();
            assert!(v["project_name"].as_str().unwrap().starts_with("my-"));
        }
        let c = load("cudo.yml");
        let AnyBackendFileConfigWithCreds::Cudo(cu) = backend(&c) else {
            panic!()
        };
        assert_eq!(cu.project_id, "my-cudo-project");
    }

    #[test]
    fn errors_name_the_field() {
        let e = ServerConfig::from_yaml_str("projects:\n- name: main\n  backends:\n  - type: aws\n    creds:\n      type: access_key\n      access_key: A\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config.yml: projects[0].backends[0].creds: missing field `secret_key`"
        );
        let e = ServerConfig::from_yaml_str("projects:\n- name: main\n  backends:\n  - type: lambda\n    creds: {api_key: k}\n    region: [x]\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config.yml: projects[0].backends[0].region: extra fields not permitted"
        );
        let e =
            ServerConfig::from_yaml_str("projects:\n- name: main\n  backends:\n  - type: foo\n")
                .unwrap_err();
        assert!(
            e.to_string()
                .contains("projects[0].backends[0].type: unknown backend type \"foo\""),
            "{e}"
        );
        let e = ServerConfig::from_yaml_str("projects: []\nencryption:\n  keys:\n  - type: aes\n    name: k1\n    secret: c2hvcnQ=\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config.yml: encryption.keys[0].secret: AES key must be 32 bytes. Got 5 bytes"
        );
        let e = ServerConfig::from_yaml_str(
            "projects: []\ndefault_permissions:\n  allow_managers_manage_secrets: maybe\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("default_permissions.allow_managers_manage_secrets"),
            "{e}"
        );
        let e = ServerConfig::from_yaml_str("").unwrap_err();
        assert!(e.to_string().contains("mapping"), "{e}");
        let crate_err: crate::Error = e.into();
        assert_eq!(crate_err.kind(), crate::ErrorKind::Validation);
    }

    #[test]
    fn encryption_and_permissions() {
        let c = ServerConfig::from_yaml_str(
            "projects: [{name: main}]\nencryption:\n  keys:\n  - type: aes\n    name: key1\n    secret: E5yzN6V3XvBq/f085ISWFCdgnOGED0kuFaAkASlmmO4=\n  - type: identity\ndefault_permissions:\n  allow_non_admins_create_projects: false\nplugins: [example]\n",
        )
        .unwrap();
        let keys = &c.encryption.as_ref().unwrap().keys;
        assert!(matches!(&keys[0], EncryptionKeyConfig::Aes(k) if k.key_bytes().is_ok()));
        assert!(!format!("{c:?}").contains("E5yzN6V3"));
        assert!(!c.permissions().allow_non_admins_create_projects);
        assert!(c.permissions().allow_non_admins_manage_ssh_fleets);
        assert_eq!(
            c.to_value(),
            json!({
                "projects": [{"name": "main", "backends": null}],
                "encryption": {"keys": [
                    {"type": "aes", "name": "key1", "secret": "E5yzN6V3XvBq/f085ISWFCdgnOGED0kuFaAkASlmmO4="},
                    {"type": "identity"}
                ]},
                "default_permissions": {
                    "allow_non_admins_create_projects": false,
                    "allow_non_admins_manage_ssh_fleets": true,
                    "allow_managers_manage_secrets": false
                },
                "plugins": ["example"]
            })
        );
    }

    #[test]
    fn resolves_files_and_converts() {
        let mut c = ServerConfig::from_yaml_str(
            "projects:\n- name: main\n  backends:\n  - type: gcp\n    project_id: p\n    creds: {type: service_account, filename: /dev/null}\n  - type: kubernetes\n    kubeconfig: {filename: /dev/null}\n",
        )
        .unwrap();
        c.resolve_files().unwrap();
        let backends = c.project_backends("main").unwrap();
        assert_eq!(backends.len(), 2);
        let v = backends[0].to_value();
        assert_eq!(
            v["creds"],
            json!({"type": "service_account", "filename": "/dev/null", "data": ""})
        );
        let mut c = ServerConfig::from_yaml_str(
            "projects:\n- name: main\n  backends:\n  - type: kubernetes\n    kubeconfig: {filename: /nonexistent/kubeconfig}\n",
        )
        .unwrap();
        let e = c.resolve_files().unwrap_err();
        assert_eq!(
            e.to_string(),
            "projects[0].backends[0].kubeconfig: No such file /nonexistent/kubeconfig"
        );
    }

    #[test]
    fn initial_config_round_trips() {
        let aws = AnyBackendConfigWithCreds::from_yaml_str(
            "type: aws\ncreds: {type: default}\nregions: [us-east-1]\n",
        )
        .unwrap();
        let c = ServerConfig::initial("main", &[aws]).unwrap();
        let yaml = c.to_yaml();
        assert!(
            yaml.contains("type: aws") && !yaml.contains("null"),
            "{yaml}"
        );
        assert_eq!(ServerConfig::from_yaml_str(&yaml).unwrap(), c);
    }

    #[test]
    fn normalize_kinds() {
        assert!(normalize_kind("fleet", &json!({})).is_none());
        let v = normalize_kind(
            "backend_config",
            &json!({"type": "vastai", "creds": {"api_key": "k"}}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "vastai", "regions": null, "community_cloud": null, "creds": {"type": "api_key", "api_key": "k"}})
        );
        let v = normalize_kind(
            "backend_config_no_creds",
            &json!({"type": "vastai", "regions": ["x"]}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "vastai", "regions": ["x"], "community_cloud": null})
        );
        assert!(
            normalize_kind(
                "backend_config_no_creds",
                &json!({"type": "vastai", "creds": {"api_key": "k"}})
            )
            .unwrap()
            .is_err()
        );
        let v = normalize_kind("server_config", &json!("projects:\n- name: main\n"))
            .unwrap()
            .unwrap();
        assert_eq!(v["projects"], json!([{"name": "main", "backends": null}]));
        assert!(
            normalize_kind("server_config", &json!("projects: ["))
                .unwrap()
                .is_err()
        );
    }
}
