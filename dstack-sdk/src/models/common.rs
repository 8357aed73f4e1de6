//! Value types shared by the configuration models: ranges, memory sizes, durations,
//! environment variables, port mappings, entity references and backend names.
//!
//! Each type deserialises from every input form dstack accepts (shorthand strings, numbers,
//! objects) and serialises to dstack's normalised JSON. The parsing rules live in
//! [`crate::spec`].

use indexmap::IndexMap;
use serde::{Serialize, Serializer};

use crate::spec::lax::deserialize_from_value;

/// An inclusive range with optional bounds (`min..max`), dstack's `Range[T]`.
///
/// Input forms: `{min, max}`, a scalar `N` (= `N..N`), or a string `"a..b"` / `"a.."` /
/// `"..b"`. Serialised as `{"min": …, "max": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Range<T> {
    /// The lower bound, inclusive; `None` means unbounded.
    pub min: Option<T>,
    /// The upper bound, inclusive; `None` means unbounded.
    pub max: Option<T>,
}

impl<T> Range<T> {
    /// A range with the given bounds (not validated).
    pub fn new(min: Option<T>, max: Option<T>) -> Self {
        Self { min, max }
    }

    /// `min..` (no upper bound).
    pub fn at_least(min: T) -> Self {
        Self {
            min: Some(min),
            max: None,
        }
    }
}

impl<T: Copy> Range<T> {
    /// `value..value`.
    pub fn exactly(value: T) -> Self {
        Self {
            min: Some(value),
            max: Some(value),
        }
    }
}

impl<T: Copy + PartialOrd> Range<T> {
    /// The intersection of two ranges (an open side counts as ±infinity), or `None` when it is
    /// empty. dstack's `Range.intersect`.
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        let min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(if a >= b { a } else { b }),
            (a, b) => a.or(b),
        };
        let max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(if a <= b { a } else { b }),
            (a, b) => a.or(b),
        };
        if let (Some(a), Some(b)) = (min, max)
            && a > b
        {
            return None;
        }
        Some(Self { min, max })
    }
}

impl<T: std::fmt::Display + PartialEq> std::fmt::Display for Range<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.min, &self.max) {
            (Some(a), Some(b)) if a == b => write!(f, "{a}"),
            (a, b) => {
                if let Some(a) = a {
                    write!(f, "{a}")?;
                }
                f.write_str("..")?;
                if let Some(b) = b {
                    write!(f, "{b}")?;
                }
                Ok(())
            }
        }
    }
}

/// A memory or disk size in GB (really GiB), dstack's `Memory`. Input: a number of GB or a
/// string with a `MB`/`GB`/`TB` unit; serialised as a float.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Memory(pub f64);

impl Memory {
    /// The size in GB.
    pub fn gb(self) -> f64 {
        self.0
    }

    /// The size in MiB as dstack computes it for offers (`round(gb * 1024)`).
    pub fn mib(self) -> i64 {
        // Rounded; sizes are far below i64 range.
        #[allow(clippy::cast_possible_truncation)]
        let mib = (self.0 * 1024.0).round() as i64;
        mib
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}GB",
            crate::spec::lax::py_float_repr(self.0).trim_end_matches(".0")
        )
    }
}

/// A duration in seconds. Input: an int, or a string `<n>[smhdw]` (`"90s"`, `"2h"`, `"1d"`);
/// serialised as an int.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Duration(pub i64);

impl Duration {
    /// The number of seconds.
    pub fn seconds(self) -> i64 {
        self.0
    }
}

/// A duration that can be switched off (`max_duration`, `stop_duration`): `"off"` or seconds.
/// An absent value (`None` around it) means "use the default".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffableDuration {
    /// Switched off (`"off"` or `false` on input).
    Off,
    /// A number of seconds.
    Seconds(i64),
}

impl Serialize for OffableDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OffableDuration::Off => s.serialize_str("off"),
            OffableDuration::Seconds(n) => s.serialize_i64(*n),
        }
    }
}

/// The sentinel seconds value that means "off" for idle durations (`idle_duration`,
/// `auto_cleanup_duration`).
pub const IDLE_DURATION_OFF: i64 = -1;

/// A placeholder for an environment variable whose value comes from the client's environment
/// (a bare `KEY` in the list form). Serialised as `{"key": "KEY"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvSentinel {
    /// The variable name.
    pub key: String,
}

/// The value of one environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    /// A literal value.
    Value(String),
    /// Not set yet: filled from the client's environment.
    Sentinel(EnvSentinel),
}

/// Environment variables, dstack's `Env`. Input: a list of `KEY=VALUE` / `KEY` strings or a
/// mapping; serialised as a mapping (bare keys as [`EnvSentinel`]s).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Env(pub IndexMap<String, EnvValue>);

impl Env {
    /// Whether no variables are set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The literal value of `key`, if set and not a sentinel.
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.0.get(key) {
            Some(EnvValue::Value(v)) => Some(v),
            _ => None,
        }
    }
}

/// A port mapping (`ports` items and a service's `port`). Input: `8080`, `"80:8080"` or
/// `"*:8080"` (any free local port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortMapping {
    /// The local (client-side) port; `None` picks any free port.
    pub local_port: Option<u16>,
    /// The port inside the container.
    pub container_port: u16,
}

/// A reference to an entity, possibly in another project: `name` or `project/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EntityReference {
    /// The project; `None` means the current one.
    pub project: Option<String>,
    /// The entity name.
    pub name: String,
}

impl EntityReference {
    /// `name` or `project/name`.
    pub fn format(&self) -> String {
        match &self.project {
            Some(p) => format!("{p}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Credentials for pulling a private Docker image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryAuth {
    /// The username.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The wire string.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $value,)* }
            }

            /// Parses the exact wire string.
            pub fn from_wire(s: &str) -> Option<Self> {
                match s { $($value => Some($name::$variant),)* _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl crate::spec::lax::FromValue for $name {
            fn from_value(
                v: &serde_json::Value,
                cx: &crate::spec::lax::Cx,
            ) -> Result<Self, crate::spec::SpecError> {
                const VALUES: &[&str] = &[$($value,)*];
                let s = cx.one_of(v, VALUES)?;
                $name::from_wire(s).ok_or_else(|| cx.err("unknown value"))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
                <$name as crate::spec::lax::FromValue>::from_value(
                    &v,
                    &crate::spec::lax::Cx::lenient(),
                )
                .map_err(<D::Error as serde::de::Error>::custom)
            }
        }
    };
}
pub(crate) use string_enum;

string_enum! {
    /// A backend (cloud or on-prem provider) name, dstack's `BackendType`.
    BackendType {
        /// AMD Developer Cloud.
        AmdDevCloud = "amddevcloud",
        /// Amazon Web Services.
        Aws = "aws",
        /// Microsoft Azure.
        Azure = "azure",
        /// CloudRift.
        CloudRift = "cloudrift",
        /// Crusoe.
        Crusoe = "crusoe",
        /// CUDO.
        Cudo = "cudo",
        /// DataCrunch (the old name of Verda, kept for compatibility).
        DataCrunch = "datacrunch",
        /// Daytona.
        Daytona = "daytona",
        /// DigitalOcean.
        DigitalOcean = "digitalocean",
        /// dstack Sky.
        Dstack = "dstack",
        /// Google Cloud Platform.
        Gcp = "gcp",
        /// Hot Aisle.
        HotAisle = "hotaisle",
        /// JarvisLabs.
        JarvisLabs = "jarvislabs",
        /// Kubernetes.
        Kubernetes = "kubernetes",
        /// Lambda Cloud.
        Lambda = "lambda",
        /// Lium.
        Lium = "lium",
        /// SSH fleets (on-prem hosts).
        Remote = "remote",
        /// Nebius AI Cloud.
        Nebius = "nebius",
        /// Oracle Cloud Infrastructure.
        Oci = "oci",
        /// RunPod.
        RunPod = "runpod",
        /// Seeweb.
        Seeweb = "seeweb",
        /// TensorDock.
        TensorDock = "tensordock",
        /// Vast.ai.
        VastAi = "vastai",
        /// Verda Cloud.
        Verda = "verda",
        /// Vultr.
        Vultr = "vultr",
        /// Slurm.
        Slurm = "slurm",
    }
}

string_enum! {
    /// Whether an apply creates the resource or updates it in place.
    ApplyAction {
        /// The resource is created (or re-created).
        Create = "create",
        /// The resource is updated in place.
        Update = "update",
    }
}

deserialize_from_value!(
    Range<i64>,
    Range<Memory>,
    Memory,
    Duration,
    Env,
    PortMapping,
    EntityReference,
    RegistryAuth,
    OffableDuration,
);
