//! Backend configurations, one file per cloud.
//!
//! Each cloud has a config *without* credentials (what `Project.backends[].config` shows) and
//! one *with* them (what `backends/create` takes and `config_info` returns); a few also have a
//! *file* variant for the server `config.yml`, where credentials may name a file to read
//! (`filename`, `private_key_file`, `kubeconfig.filename`).
//!
//! The unions [`AnyBackendConfigWithCreds`], [`AnyBackendConfig`] and
//! [`AnyBackendFileConfigWithCreds`] are discriminated by `type` and serialise with `type`
//! first, then every field in dstack's order, `null`s included.
//!
//! Parsing through `serde::Deserialize` is lenient (unknown keys are ignored, numbers are read
//! as strings where a string is expected). [`AnyBackendConfigWithCreds::parse`] and friends
//! with `strict = true` reject unknown keys as dstack does (`extra="forbid"`) and report the
//! path of the offending field.
//!
//! Credentials have a redacting `Debug`: keys, secrets and file contents never appear in logs.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Defines a unit-like type that (de)serialises as exactly one string, for `type` literals.
macro_rules! literal_tag {
    ($(#[$m:meta])* $name:ident = $lit:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name;

        impl $name {
            /// The literal string.
            pub const VALUE: &'static str = $lit;
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($lit)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                if s == $lit {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format!("expected {:?}, got {:?}", $lit, s)))
                }
            }
        }
    };
}

/// Defines a backend's config struct (without credentials) and its with-credentials
/// variants from one field list, plus `without_creds()` on each variant.
macro_rules! backend_config {
    (
        $(#[$m:meta])* pub struct $base:ident $fields:tt
        $( $(#[$wm:meta])* with_creds $with:ident $creds:tt )*
    ) => {
        backend_config!(@struct $(#[$m])* $base $fields {});
        $(
            backend_config!(@struct $(#[$wm])* $with $fields $creds);
            backend_config!(@strip $with $base $fields);
        )*
    };
    (@struct $(#[$m:meta])* $name:ident
        { $( $(#[$fm:meta])* pub $f:ident : $t:ty, )* }
        { $( $(#[$cm:meta])* pub $cf:ident : $ct:ty, )* }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            $( $(#[$fm])* pub $f: $t, )*
            $( $(#[$cm])* pub $cf: $ct, )*
        }
    };
    (@strip $with:ident $base:ident { $( $(#[$fm:meta])* pub $f:ident : $t:ty, )* }) => {
        impl $with {
            /// This config without its credentials.
            pub fn without_creds(&self) -> $base {
                $base { $( $f: self.$f.clone(), )* }
            }
        }
    };
}

pub mod lenient;

pub mod amddevcloud;
pub mod aws;
pub mod azure;
pub mod cloudrift;
pub mod crusoe;
pub mod cudo;
pub mod datacrunch;
pub mod daytona;
pub mod digitalocean;
pub mod dstack;
pub mod gcp;
pub mod hotaisle;
pub mod jarvislabs;
pub mod kubernetes;
pub mod lambda;
pub mod lium;
pub mod nebius;
pub mod oci;
pub mod runpod;
pub mod seeweb;
pub mod slurm;
pub mod tensordock;
pub mod vastai;
pub mod verda;
pub mod vultr;

// ---------------------------------------------------------------------------------------------
// BackendType

/// Every backend type dstack knows (`BackendType`); defined with the other shared value types
/// in [`crate::models::common`] and re-exported here.
pub use crate::models::common::BackendType;

// ---------------------------------------------------------------------------------------------
// Errors with field paths, validation hooks

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// An object key.
    Key(String),
    /// A list index.
    Index(usize),
}

/// A validation error at a field path, e.g. `projects[0].backends[1].creds.access_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the error is, outermost first.
    pub path: Vec<PathSeg>,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// An error at `path` (given as keys).
    pub fn new(path: &[&str], message: impl Into<String>) -> Self {
        Self {
            path: path.iter().map(|s| PathSeg::Key(s.to_string())).collect(),
            message: message.into(),
        }
    }

    /// The same error with `outer` prepended to its path.
    pub fn within(mut self, outer: &[PathSeg]) -> Self {
        let mut p = outer.to_vec();
        p.append(&mut self.path);
        self.path = p;
        self
    }

    /// The path as `a.b[0].c` (empty for the root).
    pub fn path_string(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                PathSeg::Key(k) => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }

    /// The path as strings (indices as decimal), for [`crate::Error::validation`].
    pub fn fields(&self) -> Vec<String> {
        self.path
            .iter()
            .map(|s| match s {
                PathSeg::Key(k) => k.clone(),
                PathSeg::Index(i) => i.to_string(),
            })
            .collect()
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path_string(), self.message)
        }
    }
}

impl std::error::Error for FieldError {}

impl From<FieldError> for crate::Error {
    fn from(e: FieldError) -> Self {
        let fields = e.fields();
        let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
        crate::Error::validation(&refs, e.to_string())
    }
}

/// Model-level checks that serde cannot express (patterns, exclusive fields, lengths).
pub trait Validate {
    /// Checks the value; the error path is relative to the value.
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// Deserializes `T` from `value`, reporting the path of the failing field.
pub fn from_value_with_path<T: DeserializeOwned>(
    value: &serde_json::Value,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        FieldError {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// Finds the first key of `input` that `output` (the typed value serialised back) lacks: a key
/// the model does not know. Serialisation emits every field, so known keys are never missed.
pub fn find_unknown_key(
    input: &serde_json::Value,
    output: &serde_json::Value,
) -> Option<Vec<PathSeg>> {
    fn walk(i: &serde_json::Value, o: &serde_json::Value, path: &mut Vec<PathSeg>) -> bool {
        match (i, o) {
            (serde_json::Value::Object(im), serde_json::Value::Object(om)) => {
                for (k, iv) in im {
                    path.push(PathSeg::Key(k.clone()));
                    // A shorthand that folds into a nested field (dstack's `cpu: {min: 2}`
                    // for `cpu.count.min`) is known if exactly that nested field exists.
                    let folded = || {
                        om.values()
                            .filter_map(|v| v.as_object())
                            .find_map(|m| m.get(k))
                    };
                    match om.get(k).or_else(folded) {
                        None => return true,
                        Some(ov) => {
                            if walk(iv, ov, path) {
                                return true;
                            }
                        }
                    }
                    path.pop();
                }
                false
            }
            (serde_json::Value::Array(ia), serde_json::Value::Array(oa)) => {
                for (n, (iv, ov)) in ia.iter().zip(oa.iter()).enumerate() {
                    path.push(PathSeg::Index(n));
                    if walk(iv, ov, path) {
                        return true;
                    }
                    path.pop();
                }
                false
            }
            _ => false,
        }
    }
    let mut path = Vec::new();
    walk(input, output, &mut path).then_some(path)
}

/// Parses `T` from `value`: path-reporting deserialisation, then [`Validate`], then (when
/// `strict`) the unknown-key check against `T`'s own serialisation.
pub fn parse_checked<T>(value: &serde_json::Value, strict: bool) -> Result<T, FieldError>
where
    T: DeserializeOwned + Serialize + Validate,
{
    let t: T = from_value_with_path(value)?;
    t.validate()?;
    if strict {
        let mut out = serde_json::to_value(&t).map_err(|e| FieldError::new(&[], e.to_string()))?;
        // A union member's `type` is written by the union, not by the member itself.
        if let (Some(o), Some(tag)) = (out.as_object_mut(), value.get("type")) {
            o.entry("type").or_insert_with(|| tag.clone());
        }
        check_no_unknown(value, &out)?;
    }
    Ok(t)
}

/// Fails with "extra fields not permitted" at the first key of `input` missing from `output`.
pub fn check_no_unknown(
    input: &serde_json::Value,
    output: &serde_json::Value,
) -> Result<(), FieldError> {
    match find_unknown_key(input, output) {
        Some(path) => Err(FieldError {
            path,
            message: "extra fields not permitted".to_string(),
        }),
        None => Ok(()),
    }
}

/// Writes `s` as `<redacted>` in `Debug` output.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `Some(<redacted>)` / `None` for optional secrets in `Debug` output.
pub(crate) fn redact_opt(v: &Option<String>) -> Option<Redacted> {
    v.as_ref().map(|_| Redacted)
}

// ---------------------------------------------------------------------------------------------
// Shared credential shapes

literal_tag!(
    /// The `type: api_key` literal of API-key credentials.
    ApiKeyTag = "api_key"
);

/// `{type: api_key, api_key}`: the credentials of Lambda, Vultr, CUDO, CloudRift, RunPod,
/// Vast.ai, DigitalOcean, AMD Developer Cloud, Hot Aisle, JarvisLabs, Daytona and Lium.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreds {
    /// Always `api_key` (the default when omitted).
    #[serde(rename = "type", default)]
    pub kind: ApiKeyTag,
    /// The API key.
    #[serde(deserialize_with = "lenient::string")]
    pub api_key: String,
}

impl ApiKeyCreds {
    /// Credentials holding `api_key`.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            kind: ApiKeyTag,
            api_key: api_key.into(),
        }
    }
}

impl fmt::Debug for ApiKeyCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyCreds")
            .field("type", &ApiKeyTag::VALUE)
            .field("api_key", &Redacted)
            .finish()
    }
}

impl Validate for ApiKeyCreds {}

/// [`ApiKeyCreds`] whose key must not be empty (Daytona, Lium).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NonEmptyApiKeyCreds(pub ApiKeyCreds);

impl fmt::Debug for NonEmptyApiKeyCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Validate for NonEmptyApiKeyCreds {
    fn validate(&self) -> Result<(), FieldError> {
        if self.0.api_key.is_empty() {
            return Err(FieldError::new(
                &["api_key"],
                "String should have at least 1 character",
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The discriminated unions

/// Defines a union of backend configs discriminated by `type`.
macro_rules! backend_union {
    (
        $(#[$m:meta])* $name:ident {
            $( $(#[$vm:meta])* $variant:ident($ty:ty) = $tag:literal, )+
            $( @other $(#[$om:meta])* $ov:ident($oty:ty), )?
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $( $(#[$vm])* $variant($ty), )+
            $( $(#[$om])* $ov($oty), )?
        }

        impl $name {
            /// The `type` values this union knows.
            pub const TAGS: &'static [&'static str] = &[$($tag),+];

            /// The config's `type` string.
            pub fn type_str(&self) -> &str {
                match self {
                    $( $name::$variant(_) => $tag, )+
                    $( $name::$ov(c) => &c.kind, )?
                }
            }

            /// The config's backend type (`dstack` for an unknown `type`).
            pub fn backend_type(&self) -> BackendType {
                tag_to_type(self.type_str())
            }

            /// Parses a known `tag`'s variant; `None` when the tag is not one of [`Self::TAGS`].
            fn parse_tagged(tag: &str, value: &serde_json::Value, strict: bool) -> Option<Result<Self, FieldError>> {
                match tag {
                    $( $tag => Some(parse_checked::<$ty>(value, strict).map($name::$variant)), )+
                    _ => None,
                }
            }

            /// The JSON form: `type` first, then every field.
            pub fn to_value(&self) -> serde_json::Value {
                match self {
                    $( $name::$variant(c) => with_type($tag, c), )+
                    $( $name::$ov(c) => with_type(&c.kind, c), )?
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.to_value().serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = serde_json::Value::deserialize(d)?;
                Self::parse(&v, false).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn tag_to_type(tag: &str) -> BackendType {
    BackendType::from_wire(tag).unwrap_or(BackendType::Dstack)
}

/// Serialises `c` and puts `"type": tag` first.
fn with_type<T: Serialize>(tag: &str, c: &T) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert(
        "type".to_string(),
        serde_json::Value::String(tag.to_string()),
    );
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(c) {
        for (k, v) in fields {
            if k != "type" {
                out.insert(k, v);
            }
        }
    }
    serde_json::Value::Object(out)
}

/// Reads the `type` discriminator of a backend config.
fn read_tag(value: &serde_json::Value) -> Result<&str, FieldError> {
    let obj = value.as_object().ok_or_else(|| {
        FieldError::new(
            &[],
            format!("expected a mapping with `type`, got {}", json_kind(value)),
        )
    })?;
    match obj.get("type") {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(other) => Err(FieldError::new(
            &["type"],
            format!("expected a string, got {}", json_kind(other)),
        )),
        None => Err(FieldError::new(
            &[],
            "missing field `type` (the backend type)",
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

fn unknown_tag(tag: &str, tags: &[&str]) -> FieldError {
    FieldError::new(
        &["type"],
        format!(
            "unknown backend type {tag:?}; expected one of: {}",
            tags.join(", ")
        ),
    )
}

backend_union! {
    /// A backend config with credentials: the body of `backends/create` and `update`, the
    /// result of `config_info`, and what `create_yaml` parses.
    AnyBackendConfigWithCreds {
        /// `aws`.
        Aws(aws::AwsBackendConfigWithCreds) = "aws",
        /// `azure`.
        Azure(azure::AzureBackendConfigWithCreds) = "azure",
        /// `cloudrift`.
        CloudRift(cloudrift::CloudRiftBackendConfigWithCreds) = "cloudrift",
        /// `crusoe`.
        Crusoe(crusoe::CrusoeBackendConfigWithCreds) = "crusoe",
        /// `cudo`.
        Cudo(cudo::CudoBackendConfigWithCreds) = "cudo",
        /// `verda`.
        Verda(verda::VerdaBackendConfigWithCreds) = "verda",
        /// `datacrunch` (the old name of Verda; same config).
        DataCrunch(verda::VerdaBackendConfigWithCreds) = "datacrunch",
        /// `daytona`.
        Daytona(daytona::DaytonaBackendConfigWithCreds) = "daytona",
        /// `amddevcloud`.
        AmdDevCloud(digitalocean::DigitalOceanBackendConfigWithCreds) = "amddevcloud",
        /// `digitalocean`.
        DigitalOcean(digitalocean::DigitalOceanBackendConfigWithCreds) = "digitalocean",
        /// `gcp`.
        Gcp(gcp::GcpBackendConfigWithCreds) = "gcp",
        /// `hotaisle`.
        HotAisle(hotaisle::HotAisleBackendConfigWithCreds) = "hotaisle",
        /// `jarvislabs`.
        JarvisLabs(jarvislabs::JarvisLabsBackendConfigWithCreds) = "jarvislabs",
        /// `kubernetes`.
        Kubernetes(kubernetes::KubernetesBackendConfigWithCreds) = "kubernetes",
        /// `lambda`.
        Lambda(lambda::LambdaBackendConfigWithCreds) = "lambda",
        /// `lium`.
        Lium(lium::LiumBackendConfigWithCreds) = "lium",
        /// `oci`.
        Oci(oci::OciBackendConfigWithCreds) = "oci",
        /// `nebius`.
        Nebius(nebius::NebiusBackendConfigWithCreds) = "nebius",
        /// `runpod`.
        RunPod(runpod::RunPodBackendConfigWithCreds) = "runpod",
        /// `seeweb`.
        Seeweb(seeweb::SeewebBackendConfigWithCreds) = "seeweb",
        /// `tensordock`.
        TensorDock(tensordock::TensorDockBackendConfigWithCreds) = "tensordock",
        /// `vastai`.
        VastAi(vastai::VastAiBackendConfigWithCreds) = "vastai",
        /// `vultr`.
        Vultr(vultr::VultrBackendConfigWithCreds) = "vultr",
        /// `slurm`.
        Slurm(slurm::SlurmBackendConfigWithCreds) = "slurm",
        /// `dstack` (dstack Sky; carries no credentials).
        Dstack(dstack::DstackBackendConfig) = "dstack",
    }
}

impl AnyBackendConfigWithCreds {
    /// Parses a config from JSON; `strict` rejects unknown keys as dstack does.
    pub fn parse(value: &serde_json::Value, strict: bool) -> Result<Self, FieldError> {
        let tag = read_tag(value)?;
        Self::parse_tagged(tag, value, strict).unwrap_or_else(|| Err(unknown_tag(tag, Self::TAGS)))
    }

    /// Parses a YAML document (what `backends/create_yaml` takes), strictly.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, FieldError> {
        let v: serde_json::Value = serde_yaml::from_str(yaml)
            .map_err(|e| FieldError::new(&[], format!("Error parsing YAML: {e}")))?;
        Self::parse(&v, true)
    }

    /// The same config with its credentials removed (what `Project.backends` shows).
    pub fn without_creds(&self) -> AnyBackendConfig {
        match self {
            Self::Aws(c) => AnyBackendConfig::Aws(c.without_creds()),
            Self::Azure(c) => AnyBackendConfig::Azure(c.without_creds()),
            Self::CloudRift(c) => AnyBackendConfig::CloudRift(c.without_creds()),
            Self::Crusoe(c) => AnyBackendConfig::Crusoe(c.without_creds()),
            Self::Cudo(c) => AnyBackendConfig::Cudo(c.without_creds()),
            Self::Verda(c) => AnyBackendConfig::Verda(c.without_creds()),
            Self::DataCrunch(c) => AnyBackendConfig::DataCrunch(c.without_creds()),
            Self::Daytona(c) => AnyBackendConfig::Daytona(c.without_creds()),
            Self::AmdDevCloud(c) => AnyBackendConfig::AmdDevCloud(c.without_creds()),
            Self::DigitalOcean(c) => AnyBackendConfig::DigitalOcean(c.without_creds()),
            Self::Gcp(c) => AnyBackendConfig::Gcp(c.without_creds()),
            Self::HotAisle(c) => AnyBackendConfig::HotAisle(c.without_creds()),
            Self::JarvisLabs(c) => AnyBackendConfig::JarvisLabs(c.without_creds()),
            Self::Kubernetes(c) => AnyBackendConfig::Kubernetes(c.without_creds()),
            Self::Lambda(c) => AnyBackendConfig::Lambda(c.without_creds()),
            Self::Lium(c) => AnyBackendConfig::Lium(c.without_creds()),
            Self::Oci(c) => AnyBackendConfig::Oci(c.without_creds()),
            Self::Nebius(c) => AnyBackendConfig::Nebius(c.without_creds()),
            Self::RunPod(c) => AnyBackendConfig::RunPod(c.without_creds()),
            Self::Seeweb(c) => AnyBackendConfig::Seeweb(c.without_creds()),
            Self::TensorDock(c) => AnyBackendConfig::TensorDock(c.without_creds()),
            Self::VastAi(c) => AnyBackendConfig::VastAi(c.without_creds()),
            Self::Vultr(c) => AnyBackendConfig::Vultr(c.without_creds()),
            Self::Slurm(c) => AnyBackendConfig::Slurm(c.without_creds()),
            Self::Dstack(c) => AnyBackendConfig::Dstack(c.clone()),
        }
    }

    /// The YAML dstack's `get_yaml` returns: the config with `null` fields dropped.
    pub fn to_yaml(&self) -> String {
        let v = strip_nulls(self.to_value());
        serde_yaml::to_string(&v).unwrap_or_default()
    }
}

/// Removes `null` object fields recursively (dstack's `model_dump(exclude_none=True)`).
pub fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(strip_nulls).collect())
        }
        other => other,
    }
}

backend_union! {
    /// A backend config without credentials, as `Project.backends[].config` shows it.
    ///
    /// Like dstack's (non-discriminated) union, a bare `{"type": "<anything>"}` that matches no
    /// known config is kept as [`AnyBackendConfig::Other`].
    AnyBackendConfig {
        /// `aws`.
        Aws(aws::AwsBackendConfig) = "aws",
        /// `azure`.
        Azure(azure::AzureBackendConfig) = "azure",
        /// `cloudrift`.
        CloudRift(cloudrift::CloudRiftBackendConfig) = "cloudrift",
        /// `crusoe`.
        Crusoe(crusoe::CrusoeBackendConfig) = "crusoe",
        /// `cudo`.
        Cudo(cudo::CudoBackendConfig) = "cudo",
        /// `daytona`.
        Daytona(daytona::DaytonaBackendConfig) = "daytona",
        /// `amddevcloud`.
        AmdDevCloud(digitalocean::DigitalOceanBackendConfig) = "amddevcloud",
        /// `digitalocean`.
        DigitalOcean(digitalocean::DigitalOceanBackendConfig) = "digitalocean",
        /// `gcp`.
        Gcp(gcp::GcpBackendConfig) = "gcp",
        /// `hotaisle`.
        HotAisle(hotaisle::HotAisleBackendConfig) = "hotaisle",
        /// `jarvislabs`.
        JarvisLabs(jarvislabs::JarvisLabsBackendConfig) = "jarvislabs",
        /// `kubernetes`.
        Kubernetes(kubernetes::KubernetesBackendConfig) = "kubernetes",
        /// `lambda`.
        Lambda(lambda::LambdaBackendConfig) = "lambda",
        /// `lium`.
        Lium(lium::LiumBackendConfig) = "lium",
        /// `nebius`.
        Nebius(nebius::NebiusBackendConfig) = "nebius",
        /// `oci`.
        Oci(oci::OciBackendConfig) = "oci",
        /// `runpod`.
        RunPod(runpod::RunPodBackendConfig) = "runpod",
        /// `seeweb`.
        Seeweb(seeweb::SeewebBackendConfig) = "seeweb",
        /// `tensordock`.
        TensorDock(tensordock::TensorDockBackendConfig) = "tensordock",
        /// `vastai`.
        VastAi(vastai::VastAiBackendConfig) = "vastai",
        /// `verda`.
        Verda(verda::VerdaBackendConfig) = "verda",
        /// `datacrunch`.
        DataCrunch(verda::VerdaBackendConfig) = "datacrunch",
        /// `vultr`.
        Vultr(vultr::VultrBackendConfig) = "vultr",
        /// `slurm`.
        Slurm(slurm::SlurmBackendConfig) = "slurm",
        /// `dstack` with its base backends.
        Dstack(dstack::DstackBackendConfig) = "dstack",
        @other
        /// Any other `{"type": …}` with no other field (a dstack Sky base backend).
        Other(dstack::DstackBaseBackendConfig),
    }
}

impl AnyBackendConfig {
    /// Parses a config without credentials; `strict` rejects unknown keys (so a config that
    /// still carries `creds` fails, as in dstack).
    pub fn parse(value: &serde_json::Value, strict: bool) -> Result<Self, FieldError> {
        let tag = read_tag(value)?;
        let only_type = value.as_object().is_some_and(|o| o.len() == 1);
        match Self::parse_tagged(tag, value, strict) {
            Some(Ok(c)) => Ok(c),
            // dstack's union falls back to `{type: str}` when nothing else matches.
            _ if only_type => Ok(AnyBackendConfig::Other(dstack::DstackBaseBackendConfig {
                kind: tag.to_string(),
            })),
            Some(Err(e)) => Err(e),
            None => Err(unknown_tag(tag, Self::TAGS)),
        }
    }
}

backend_union! {
    /// A backend as written in the server `config.yml`: like [`AnyBackendConfigWithCreds`],
    /// but GCP, Kubernetes, Nebius and Slurm credentials may name files to read instead of
    /// holding their contents. [`AnyBackendFileConfigWithCreds::resolve_files`] reads them and
    /// [`AnyBackendFileConfigWithCreds::into_config`] converts to the API config.
    AnyBackendFileConfigWithCreds {
        /// `aws`.
        Aws(aws::AwsBackendConfigWithCreds) = "aws",
        /// `azure`.
        Azure(azure::AzureBackendConfigWithCreds) = "azure",
        /// `cloudrift`.
        CloudRift(cloudrift::CloudRiftBackendConfigWithCreds) = "cloudrift",
        /// `crusoe`.
        Crusoe(crusoe::CrusoeBackendConfigWithCreds) = "crusoe",
        /// `cudo`.
        Cudo(cudo::CudoBackendConfigWithCreds) = "cudo",
        /// `verda`.
        Verda(verda::VerdaBackendConfigWithCreds) = "verda",
        /// `datacrunch`.
        DataCrunch(verda::VerdaBackendConfigWithCreds) = "datacrunch",
        /// `daytona`.
        Daytona(daytona::DaytonaBackendConfigWithCreds) = "daytona",
        /// `amddevcloud`.
        AmdDevCloud(digitalocean::DigitalOceanBackendConfigWithCreds) = "amddevcloud",
        /// `digitalocean`.
        DigitalOcean(digitalocean::DigitalOceanBackendConfigWithCreds) = "digitalocean",
        /// `gcp`, with a service-account `filename`.
        Gcp(gcp::GcpBackendFileConfigWithCreds) = "gcp",
        /// `hotaisle`.
        HotAisle(hotaisle::HotAisleBackendConfigWithCreds) = "hotaisle",
        /// `jarvislabs`.
        JarvisLabs(jarvislabs::JarvisLabsBackendConfigWithCreds) = "jarvislabs",
        /// `kubernetes`, with `kubeconfig.filename`.
        Kubernetes(kubernetes::KubernetesBackendFileConfigWithCreds) = "kubernetes",
        /// `lambda`.
        Lambda(lambda::LambdaBackendConfigWithCreds) = "lambda",
        /// `lium`.
        Lium(lium::LiumBackendConfigWithCreds) = "lium",
        /// `oci`.
        Oci(oci::OciBackendConfigWithCreds) = "oci",
        /// `nebius`, with `private_key_file` or a credentials `filename`.
        Nebius(nebius::NebiusBackendFileConfigWithCreds) = "nebius",
        /// `runpod`.
        RunPod(runpod::RunPodBackendConfigWithCreds) = "runpod",
        /// `seeweb`.
        Seeweb(seeweb::SeewebBackendConfigWithCreds) = "seeweb",
        /// `tensordock`.
        TensorDock(tensordock::TensorDockBackendConfigWithCreds) = "tensordock",
        /// `vastai`.
        VastAi(vastai::VastAiBackendConfigWithCreds) = "vastai",
        /// `vultr`.
        Vultr(vultr::VultrBackendConfigWithCreds) = "vultr",
        /// `slurm`, with private key `path`s.
        Slurm(slurm::SlurmBackendFileConfigWithCreds) = "slurm",
    }
}

impl AnyBackendFileConfigWithCreds {
    /// Parses one `config.yml` backend entry; `strict` rejects unknown keys as dstack does.
    pub fn parse(value: &serde_json::Value, strict: bool) -> Result<Self, FieldError> {
        let tag = read_tag(value)?;
        Self::parse_tagged(tag, value, strict).unwrap_or_else(|| Err(unknown_tag(tag, Self::TAGS)))
    }

    /// Reads the files the credentials name (`~` expanded) into their content fields, as dstack
    /// does while loading `config.yml`. Content given inline wins over the file.
    pub fn resolve_files(&mut self) -> Result<(), FieldError> {
        match self {
            Self::Gcp(c) => c
                .creds
                .resolve_files()
                .map_err(|e| e.within(&[key("creds")])),
            Self::Kubernetes(c) => c
                .kubeconfig
                .resolve_files()
                .map_err(|e| e.within(&[key("kubeconfig")])),
            Self::Nebius(c) => c
                .creds
                .resolve_files()
                .map_err(|e| e.within(&[key("creds")])),
            Self::Slurm(c) => c.resolve_files(),
            _ => Ok(()),
        }
    }

    /// Converts to the API config (dstack's `file_config_to_config`). Run
    /// [`Self::resolve_files`] first; content that is still missing is an error.
    pub fn into_config(self) -> Result<AnyBackendConfigWithCreds, FieldError> {
        let value = self.to_value();
        AnyBackendConfigWithCreds::parse(&value, false)
    }
}

/// A path segment for an object key.
pub(crate) fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_string())
}

/// Reads `path` (expanding a leading `~`) as dstack's `fill_data` does.
pub(crate) fn read_config_file(path: &str) -> Result<String, String> {
    let expanded = expand_home(path);
    std::fs::read_to_string(&expanded).map_err(|_| format!("No such file {path}"))
}

/// Expands a leading `~` or `~/` to `$HOME`.
pub fn expand_home(path: &str) -> std::path::PathBuf {
    if (path == "~" || path.starts_with("~/"))
        && let Some(home) = std::env::var_os("HOME")
    {
        let mut p = std::path::PathBuf::from(home);
        if path.len() > 2 {
            p.push(&path[2..]);
        }
        return p;
    }
    std::path::PathBuf::from(path)
}

/// dstack's `fill_data`: keep `data` when set, else read it from `filename`.
pub(crate) fn fill_data(
    filename: Option<&str>,
    data: &mut Option<String>,
    filename_field: &str,
    data_field: &str,
) -> Result<(), FieldError> {
    if data.is_some() {
        return Ok(());
    }
    match filename {
        Some(f) if !f.is_empty() => {
            *data = Some(read_config_file(f).map_err(|m| FieldError::new(&[], m))?);
            Ok(())
        }
        _ => Err(FieldError::new(
            &[],
            format!("Either `{filename_field}` or `{data_field}` must be specified"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// BackendInfo and the backend request bodies

/// One entry of `Project.backends`: the backend's name and its config without credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// The backend type string (`aws`, `gcp`, …).
    pub name: String,
    /// The config, credentials removed.
    pub config: AnyBackendConfig,
}

impl BackendInfo {
    /// The entry for a configured backend.
    pub fn from_config(config: &AnyBackendConfigWithCreds) -> Self {
        Self {
            name: config.type_str().to_string(),
            config: config.without_creds(),
        }
    }
}

/// `backends/{type}/get_yaml` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendInfoYaml {
    /// The backend type string.
    pub name: String,
    /// The config with credentials as YAML, `null` fields left out.
    pub config_yaml: String,
}

/// Body of `backends/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteBackendsRequest {
    /// The backend types to delete.
    pub backends_names: Vec<BackendType>,
}

/// Body of `backends/create_yaml` and `backends/update_yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendYamlRequest {
    /// A YAML backend config with credentials.
    pub config_yaml: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backend_type_strings() {
        for t in BackendType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
            assert_eq!(BackendType::from_wire(t.as_str()), Some(*t));
        }
        assert!(BackendType::from_wire("foo").is_none());
        for s in [
            "amddevcloud",
            "aws",
            "azure",
            "cloudrift",
            "crusoe",
            "cudo",
            "datacrunch",
            "digitalocean",
            "dstack",
            "gcp",
            "hotaisle",
            "jarvislabs",
            "kubernetes",
            "lambda",
            "remote",
            "nebius",
            "oci",
            "runpod",
            "tensordock",
            "vastai",
            "verda",
            "vultr",
            "slurm",
        ] {
            assert!(BackendType::from_wire(s).is_some(), "{s}");
        }
    }

    #[test]
    fn with_creds_round_trip_and_strip() {
        let v = json!({
            "type": "aws", "regions": ["us-east-1"],
            "creds": {"type": "access_key", "access_key": "AKIA123", "secret_key": "s3cr3t"}
        });
        let c: AnyBackendConfigWithCreds = serde_json::from_value(v).unwrap();
        assert_eq!(c.backend_type(), BackendType::Aws);
        let out = serde_json::to_value(&c).unwrap();
        assert_eq!(out.as_object().unwrap().keys().next().unwrap(), "type");
        assert_eq!(
            out["creds"],
            json!({"type": "access_key", "access_key": "AKIA123", "secret_key": "s3cr3t"})
        );
        assert_eq!(out["vpc_name"], json!(null));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && !dbg.contains("AKIA123"), "{dbg}");
        let info = BackendInfo::from_config(&c);
        let iv = serde_json::to_value(&info).unwrap();
        assert_eq!(iv["name"], json!("aws"));
        assert!(iv["config"].get("creds").is_none());
        assert_eq!(iv["config"]["regions"], json!(["us-east-1"]));
        let back: BackendInfo = serde_json::from_value(iv.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), iv);
    }

    #[test]
    fn strict_rejects_unknown_keys_with_path() {
        let v = json!({"type": "lambda", "creds": {"type": "api_key", "api_key": "k", "oops": 1}});
        assert!(AnyBackendConfigWithCreds::parse(&v, false).is_ok());
        let e = AnyBackendConfigWithCreds::parse(&v, true).unwrap_err();
        assert_eq!(e.path_string(), "creds.oops");
        let e = AnyBackendConfigWithCreds::parse(&json!({"type": "nope"}), true).unwrap_err();
        assert!(e.message.contains("unknown backend type"), "{e}");
        let e = AnyBackendConfigWithCreds::parse(
            &json!({"type": "aws", "creds": {"type": "access_key", "access_key": "a"}}),
            true,
        )
        .unwrap_err();
        assert_eq!(e.path_string(), "creds", "{e}");
        assert!(e.message.contains("secret_key"), "{e}");
    }

    #[test]
    fn no_creds_union_fallback() {
        let c = AnyBackendConfig::parse(&json!({"type": "azure"}), true).unwrap();
        assert!(matches!(c, AnyBackendConfig::Other(_)));
        assert_eq!(c.to_value(), json!({"type": "azure"}));
        let c = AnyBackendConfig::parse(&json!({"type": "anything"}), true).unwrap();
        assert_eq!(c.to_value(), json!({"type": "anything"}));
        assert!(
            AnyBackendConfig::parse(&json!({"type": "lambda", "creds": {"api_key": "x"}}), true)
                .is_err()
        );
        let c = AnyBackendConfig::parse(&json!({"type": "lambda"}), true).unwrap();
        assert!(matches!(c, AnyBackendConfig::Lambda(_)));
    }

    #[test]
    fn yaml_strips_nulls() {
        let c = AnyBackendConfigWithCreds::from_yaml_str("type: vastai\ncreds:\n  api_key: abc\n")
            .unwrap();
        assert_eq!(
            c.to_yaml(),
            "type: vastai\ncreds:\n  type: api_key\n  api_key: abc\n"
        );
    }
}
