//! gpuhunt's `QueryFilter` and its exact `matches` predicate.
//!
//! Every bound is inclusive and optional. The checks run in gpuhunt's order:
//! 1. provider (case-insensitive); 2. price; 3. spot; 4. CPU architecture; 5. CPU count, then
//!    memory;
//! 6. the GPU block — skipped only when `min_gpu_count == Some(0)` **and** the item has no GPU
//!    (with `min_gpu_count == None`, a GPU name or vendor rejects CPU-only items): vendor,
//!    GPU count, GPU name (case-insensitive; an item without a name fails), compute capability
//!    (any CC bound requires an NVIDIA item whose name is in the known table), per-GPU memory
//!    and total GPU memory (both count as 0 for items without GPUs or without a memory);
//! 7. disk size, checked only when the item has one;
//! 8. flags: every flag of the item must be in `allowed_flags` (`None` allows all).

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::accelerators::{AcceleratorVendor, ComputeCapability, compute_capability};
use super::format::parse_py_int;
use super::item::{CatalogItem, CpuArchitecture};

/// Query filters with gpuhunt's field names; all bounds inclusive, `None` = unbounded.
///
/// Deserializes from gpuhunt's keyword arguments: `provider` and `gpu_name` take a string or a
/// list; `cpu_arch` and `gpu_vendor` are case-insensitive (an empty string means unset);
/// compute capabilities take `"X.Y"` or `[X, Y]`. Unknown keys are rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryFilter {
    /// Providers to search (case-insensitive); `None` = every provider of the catalog.
    #[serde(
        default,
        deserialize_with = "de_str_or_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider: Option<Vec<String>>,
    /// CPU architecture.
    #[serde(
        default,
        deserialize_with = "de_cpu_arch",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_arch: Option<CpuArchitecture>,
    /// Minimum number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpu: Option<i64>,
    /// Maximum number of CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<i64>,
    /// Minimum RAM in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory: Option<f64>,
    /// Maximum RAM in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<f64>,
    /// Minimum number of GPUs. `Some(0)` lets CPU-only items skip every GPU check; `None`
    /// does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gpu_count: Option<i64>,
    /// Maximum number of GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpu_count: Option<i64>,
    /// GPU vendor.
    #[serde(
        default,
        deserialize_with = "de_vendor",
        skip_serializing_if = "Option::is_none"
    )]
    pub gpu_vendor: Option<AcceleratorVendor>,
    /// Accepted GPU names (case-insensitive). An empty list accepts no GPU.
    #[serde(
        default,
        deserialize_with = "de_str_or_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub gpu_name: Option<Vec<String>>,
    /// Minimum memory per GPU in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_gpu_memory: Option<f64>,
    /// Maximum memory per GPU in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gpu_memory: Option<f64>,
    /// Minimum total GPU memory (count × per-GPU memory) in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_total_gpu_memory: Option<f64>,
    /// Maximum total GPU memory in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_gpu_memory: Option<f64>,
    /// Minimum disk size in GB (items without a disk size always pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk_size: Option<f64>,
    /// Maximum disk size in GB (items without a disk size always pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_size: Option<f64>,
    /// Minimum price in USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_price: Option<f64>,
    /// Maximum price in USD per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<f64>,
    /// Minimum compute capability (NVIDIA GPUs of the known table only).
    #[serde(
        default,
        deserialize_with = "de_cc",
        serialize_with = "ser_cc",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_compute_capability: Option<ComputeCapability>,
    /// Maximum compute capability (NVIDIA GPUs of the known table only).
    #[serde(
        default,
        deserialize_with = "de_cc",
        serialize_with = "ser_cc",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_compute_capability: Option<ComputeCapability>,
    /// `Some(true)`: spot offers only; `Some(false)`: on-demand only; `None`: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<bool>,
    /// Flags an item may carry (exact, case-sensitive); `None` allows every flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_flags: Option<Vec<String>>,
}

impl QueryFilter {
    /// Parses a filter from a JSON object with gpuhunt's keyword names.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, super::CatalogError> {
        Self::deserialize(value).map_err(|e| super::CatalogError::InvalidQuery(e.to_string()))
    }

    /// Whether any compute-capability bound is set.
    pub fn has_cc_bounds(&self) -> bool {
        self.min_compute_capability.is_some() || self.max_compute_capability.is_some()
    }
}

/// Whether `item` satisfies `q`, exactly as gpuhunt's `constraints.matches`.
pub fn matches(item: &CatalogItem, q: &QueryFilter) -> bool {
    if let Some(providers) = &q.provider {
        let p = item.provider.to_lowercase();
        if !providers.iter().any(|x| x.to_lowercase() == p) {
            return false;
        }
    }
    if !is_between(item.price, q.min_price, q.max_price) {
        return false;
    }
    if q.spot.is_some_and(|s| s != item.spot) {
        return false;
    }
    if q.cpu_arch.is_some_and(|a| a != item.cpu_arch) {
        return false;
    }
    if !is_between(
        item.cpu as f64,
        q.min_cpu.map(|v| v as f64),
        q.max_cpu.map(|v| v as f64),
    ) {
        return false;
    }
    if !is_between(item.memory, q.min_memory, q.max_memory) {
        return false;
    }
    let skip_gpu_checks = q.min_gpu_count == Some(0) && item.gpu_count == 0;
    if !skip_gpu_checks && !gpu_block_matches(item, q) {
        return false;
    }
    if let Some(disk) = item.disk_size
        && !is_between(disk, q.min_disk_size, q.max_disk_size)
    {
        return false;
    }
    if let Some(allowed) = &q.allowed_flags
        && item.flags.iter().any(|f| !allowed.contains(f))
    {
        return false;
    }
    true
}

fn gpu_block_matches(item: &CatalogItem, q: &QueryFilter) -> bool {
    if q.gpu_vendor.is_some_and(|v| Some(v) != item.gpu_vendor) {
        return false;
    }
    if !is_between(
        item.gpu_count as f64,
        q.min_gpu_count.map(|v| v as f64),
        q.max_gpu_count.map(|v| v as f64),
    ) {
        return false;
    }
    if let Some(names) = &q.gpu_name {
        let Some(name) = &item.gpu_name else {
            return false;
        };
        let name = name.to_lowercase();
        if !names.iter().any(|n| n.to_lowercase() == name) {
            return false;
        }
    }
    if q.has_cc_bounds() {
        if item.gpu_vendor != Some(AcceleratorVendor::Nvidia) {
            return false;
        }
        let Some(name) = item.gpu_name.as_deref().filter(|n| !n.is_empty()) else {
            return false;
        };
        let Some(cc) = compute_capability(name) else {
            return false;
        };
        if !is_between(cc, q.min_compute_capability, q.max_compute_capability) {
            return false;
        }
    }
    let (gpu_memory, total) = effective_gpu_memory(item.gpu_count, item.gpu_memory);
    is_between(gpu_memory, q.min_gpu_memory, q.max_gpu_memory)
        && is_between(total, q.min_total_gpu_memory, q.max_total_gpu_memory)
}

/// Per-GPU and total GPU memory as the GPU checks see them: 0 unless the item has GPUs and a
/// memory figure.
pub(crate) fn effective_gpu_memory(gpu_count: i64, gpu_memory: Option<f64>) -> (f64, f64) {
    match gpu_memory {
        Some(m) if gpu_count > 0 => (m, gpu_count as f64 * m),
        _ => (0.0, 0.0),
    }
}

/// gpuhunt's `_is_between`: fails only when `value < left` or `value > right` (so NaN passes).
fn is_between<T: PartialOrd>(value: T, left: Option<T>, right: Option<T>) -> bool {
    !(left.is_some_and(|l| value < l) || right.is_some_and(|r| value > r))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrList {
    One(String),
    Many(Vec<String>),
}

fn de_str_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(match Option::<StrOrList>::deserialize(d)? {
        None => None,
        Some(StrOrList::One(s)) => Some(vec![s]),
        Some(StrOrList::Many(v)) => Some(v),
    })
}

fn de_cpu_arch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CpuArchitecture>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(de::Error::custom),
    }
}

fn de_vendor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AcceleratorVendor>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(de::Error::custom),
    }
}

/// Parses `"X.Y"` like gpuhunt's `parse_compute_capability` (exactly two integer parts).
pub fn parse_compute_capability(value: &str) -> Option<ComputeCapability> {
    let (major, minor) = value.split_once('.')?;
    if minor.contains('.') {
        return None;
    }
    let major = u32::try_from(parse_py_int(major)?).ok()?;
    let minor = u32::try_from(parse_py_int(minor)?).ok()?;
    Some(ComputeCapability::new(major, minor))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CcInput {
    Text(String),
    Pair(u32, u32),
}

fn de_cc<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ComputeCapability>, D::Error> {
    match Option::<CcInput>::deserialize(d)? {
        None => Ok(None),
        Some(CcInput::Pair(major, minor)) => Ok(Some(ComputeCapability::new(major, minor))),
        Some(CcInput::Text(s)) => parse_compute_capability(&s).map(Some).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid compute capability {s:?}: expected \"X.Y\""
            ))
        }),
    }
}

fn ser_cc<S: Serializer>(cc: &Option<ComputeCapability>, s: S) -> Result<S::Ok, S::Error> {
    match cc {
        Some(cc) => s.collect_str(cc),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn item(
        gpu_count: i64,
        gpu_name: Option<&str>,
        vendor: Option<AcceleratorVendor>,
    ) -> CatalogItem {
        CatalogItem {
            provider: "aws".into(),
            instance_name: "i".into(),
            location: "l".into(),
            price: 1.0,
            cpu: 4,
            memory: 16.0,
            gpu_count,
            gpu_name: gpu_name.map(Into::into),
            gpu_memory: gpu_name.map(|_| 24.0),
            spot: false,
            disk_size: None,
            gpu_vendor: vendor,
            flags: vec![],
            cpu_arch: CpuArchitecture::X86,
            provider_data: Default::default(),
        }
    }

    fn q(json: serde_json::Value) -> QueryFilter {
        QueryFilter::from_json(&json).unwrap()
    }

    #[test]
    fn min_gpu_count_none_vs_zero() {
        let cpu = item(0, None, None);
        assert!(!matches(&cpu, &q(serde_json::json!({"gpu_name": "A10G"}))));
        assert!(matches(
            &cpu,
            &q(serde_json::json!({"gpu_name": "A10G", "min_gpu_count": 0}))
        ));
        assert!(!matches(
            &cpu,
            &q(serde_json::json!({"gpu_vendor": "nvidia"}))
        ));
        assert!(matches(
            &cpu,
            &q(serde_json::json!({"gpu_vendor": "NVIDIA", "min_gpu_count": 0}))
        ));
        // the GPU block still runs for GPU items
        let gpu = item(1, Some("A10G"), Some(AcceleratorVendor::Nvidia));
        assert!(!matches(
            &gpu,
            &q(serde_json::json!({"gpu_name": ["h100"], "min_gpu_count": 0}))
        ));
        assert!(matches(
            &gpu,
            &q(serde_json::json!({"gpu_name": ["a10g", "h100"], "min_gpu_count": 0}))
        ));
    }

    #[test]
    fn compute_capability_rules() {
        let a10g = item(1, Some("a10g"), Some(AcceleratorVendor::Nvidia));
        assert!(matches(
            &a10g,
            &q(serde_json::json!({"min_compute_capability": "8.6"}))
        ));
        assert!(!matches(
            &a10g,
            &q(serde_json::json!({"min_compute_capability": "8.7"}))
        ));
        assert!(matches(
            &a10g,
            &q(serde_json::json!({"max_compute_capability": [8, 6]}))
        ));
        let unknown = item(1, Some("Z9"), Some(AcceleratorVendor::Nvidia));
        assert!(!matches(
            &unknown,
            &q(serde_json::json!({"max_compute_capability": "99.0"}))
        ));
        let amd = item(1, Some("A10G"), Some(AcceleratorVendor::Amd));
        assert!(!matches(
            &amd,
            &q(serde_json::json!({"min_compute_capability": "1.0"}))
        ));
    }

    #[test]
    fn flags_and_disk() {
        let mut i = item(0, None, None);
        i.flags = vec!["oci-spot".into()];
        assert!(matches(&i, &QueryFilter::default()));
        assert!(!matches(&i, &q(serde_json::json!({"allowed_flags": []}))));
        assert!(matches(
            &i,
            &q(serde_json::json!({"allowed_flags": ["x", "oci-spot"]}))
        ));
        assert!(!matches(
            &i,
            &q(serde_json::json!({"allowed_flags": ["OCI-SPOT"]}))
        ));
        assert!(matches(&i, &q(serde_json::json!({"min_disk_size": 1000}))));
        i.disk_size = Some(100.0);
        assert!(!matches(&i, &q(serde_json::json!({"min_disk_size": 1000}))));
        assert!(matches(
            &i,
            &q(serde_json::json!({"min_disk_size": 100, "max_disk_size": 100}))
        ));
    }

    #[test]
    fn json_parsing() {
        let f = q(
            serde_json::json!({"provider": "AWS", "cpu_arch": "ARM", "gpu_vendor": "", "spot": null}),
        );
        assert_eq!(f.provider, Some(vec!["AWS".to_string()]));
        assert_eq!(f.cpu_arch, Some(CpuArchitecture::Arm));
        assert_eq!(f.gpu_vendor, None);
        for bad in [
            serde_json::json!({"bogus": 1}),
            serde_json::json!({"min_compute_capability": "9"}),
            serde_json::json!({"min_compute_capability": "9.0.1"}),
            serde_json::json!({"gpu_vendor": "tpu"}),
            serde_json::json!({"min_cpu": 1.5}),
        ] {
            assert!(QueryFilter::from_json(&bad).is_err(), "{bad}");
        }
        let round =
            serde_json::to_value(q(serde_json::json!({"min_compute_capability": " 9 . 0"})))
                .unwrap();
        assert_eq!(round, serde_json::json!({"min_compute_capability": "9.0"}));
    }
}
