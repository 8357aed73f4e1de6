//! A catalog row, gpuhunt's `CatalogItem`, and its value types.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::accelerators::AcceleratorVendor;

/// A CPU instruction-set architecture, as gpuhunt's `CPUArchitecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum CpuArchitecture {
    /// `x86` (x86-64).
    #[default]
    X86,
    /// `arm` (AArch64).
    Arm,
}

impl CpuArchitecture {
    /// The lowercase name used in catalogs.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuArchitecture::X86 => "x86",
            CpuArchitecture::Arm => "arm",
        }
    }

    /// Parses like gpuhunt's `CPUArchitecture.cast`: lowercased, then exact.
    pub fn parse(value: &str) -> Option<Self> {
        let lower;
        let value = if value.is_ascii() {
            value
        } else {
            lower = value.to_lowercase();
            &lower
        };
        [CpuArchitecture::X86, CpuArchitecture::Arm]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(value))
    }
}

impl fmt::Display for CpuArchitecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CpuArchitecture {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not a valid CPUArchitecture"))
    }
}

impl Serialize for CpuArchitecture {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CpuArchitecture {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One offer of a provider's catalog: gpuhunt's `CatalogItem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// Provider name (lowercase), e.g. `aws`.
    #[serde(with = "arc_str")]
    pub provider: Arc<str>,
    /// The provider's instance type name.
    #[serde(with = "arc_str")]
    pub instance_name: Arc<str>,
    /// Region or zone.
    #[serde(with = "arc_str")]
    pub location: Arc<str>,
    /// Price in USD per hour.
    pub price: f64,
    /// Number of vCPUs.
    pub cpu: i64,
    /// RAM in GB.
    pub memory: f64,
    /// Number of GPUs/accelerators (0 for CPU-only offers; 1 for a TPU slice).
    pub gpu_count: i64,
    /// GPU model (for TPUs, the TPU type, e.g. `v5litepod-8`).
    #[serde(with = "opt_arc_str")]
    pub gpu_name: Option<Arc<str>>,
    /// Memory per GPU in GB.
    pub gpu_memory: Option<f64>,
    /// Whether this is a spot (preemptible) offer.
    pub spot: bool,
    /// Disk size in GB, when fixed by the offer.
    pub disk_size: Option<f64>,
    /// GPU vendor; always set when `gpu_count` is non-zero.
    pub gpu_vendor: Option<AcceleratorVendor>,
    /// Flags that hide the offer from clients that do not allow them.
    #[serde(default)]
    pub flags: Vec<String>,
    /// CPU architecture.
    #[serde(default)]
    pub cpu_arch: CpuArchitecture,
    /// Provider-specific data (JSON; `{}` when absent).
    #[serde(default)]
    pub provider_data: ProviderData,
}

/// The provider-specific JSON of a catalog row, gpuhunt's `provider_data` (a JSON object,
/// `{}` when absent). Derefs to the [`serde_json::Value`]; the common empty object is stored
/// without allocating, which keeps large catalogs compact.
#[derive(Clone, Default, PartialEq)]
pub struct ProviderData(Option<Box<serde_json::Value>>);

static EMPTY_OBJECT: std::sync::LazyLock<serde_json::Value> =
    std::sync::LazyLock::new(|| serde_json::Value::Object(serde_json::Map::new()));

impl ProviderData {
    /// Wraps a JSON value.
    pub fn new(value: serde_json::Value) -> Self {
        if value == *EMPTY_OBJECT {
            Self(None)
        } else {
            Self(Some(Box::new(value)))
        }
    }

    /// The JSON value.
    pub fn as_value(&self) -> &serde_json::Value {
        self.0.as_deref().unwrap_or(&EMPTY_OBJECT)
    }

    /// Unwraps the JSON value.
    pub fn into_value(self) -> serde_json::Value {
        self.0.map_or_else(|| EMPTY_OBJECT.clone(), |v| *v)
    }
}

impl std::ops::Deref for ProviderData {
    type Target = serde_json::Value;

    fn deref(&self) -> &serde_json::Value {
        self.as_value()
    }
}

impl fmt::Debug for ProviderData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_value(), f)
    }
}

impl From<serde_json::Value> for ProviderData {
    fn from(value: serde_json::Value) -> Self {
        Self::new(value)
    }
}

impl PartialEq<serde_json::Value> for ProviderData {
    fn eq(&self, other: &serde_json::Value) -> bool {
        self.as_value() == other
    }
}

impl Serialize for ProviderData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ProviderData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Self::new)
    }
}

/// Serde for the shared (`Arc<str>`) strings of [`CatalogItem`].
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(deserializer).map(Arc::from)
    }
}

/// Serde for `Option<Arc<str>>`.
mod opt_arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Arc<str>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serializer.serialize_some(&**v),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Arc<str>>, D::Error> {
        Ok(Option::<String>::deserialize(deserializer)?.map(Arc::from))
    }
}
