//! Kubernetes resource vocabulary: quantities, labels, GPU detection from node labels, and
//! the requests/limits a job container gets (dstack's `kubernetes/resources.py`).

use std::collections::BTreeMap;

use indexmap::IndexMap;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::backends::common::tags::{ResourceTags, TagIds};
use crate::models::offers::{Gpu, Resources};
use crate::models::resources::{AcceleratorVendor, ResourcesSpec};

/// The NVIDIA GPU resource (device plugin) and the taint GPU nodes usually carry.
pub const NVIDIA_GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The GPU Feature Discovery product label, e.g. `NVIDIA-A100-SXM4-80GB` or `Tesla-T4`.
pub const NVIDIA_GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// The GPU Feature Discovery memory label (MiB per GPU), used when present.
pub const NVIDIA_GPU_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";
/// The AMD GPU resource and taint.
pub const AMD_GPU_RESOURCE: &str = "amd.com/gpu";
/// The AMD device plugin's device-id label prefix (`beta.amd.com/gpu.device-id.74b5=4`).
pub const AMD_GPU_DEVICE_ID_LABEL_PREFIX: &str = "beta.amd.com/gpu.device-id.";
/// The most characters a label value may have.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;

/// Label: which dstack component an object is (`dstack-job`, `dstack-ssh-proxy`).
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";
/// Label: the object's unique name (the service selector).
pub const LABEL_APP_INSTANCE: &str = "app.kubernetes.io/instance";
/// Label: `dstack`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the project.
pub const LABEL_PROJECT: &str = "k8s.dstack.ai/project";
/// Label: the job or resource name.
pub const LABEL_NAME: &str = "k8s.dstack.ai/name";
/// Label: the user.
pub const LABEL_USER: &str = "k8s.dstack.ai/user";

/// gpuhunt's known NVIDIA GPUs (name, GiB; the last memory of a name wins, as in dstack's
/// `NVIDIA_GPU_NAME_TO_GPU_INFO`), in gpuhunt's order.
const KNOWN_NVIDIA_GPUS: &[(&str, i64)] = &[
    ("A10", 24),
    ("A16", 16),
    ("A40", 48),
    ("A100", 80),
    ("A10G", 24),
    ("A4000", 16),
    ("A4500", 20),
    ("A5000", 24),
    ("A6000", 48),
    ("H100", 80),
    ("H100NVL", 94),
    ("H200", 141),
    ("H200NVL", 141),
    ("B200", 180),
    ("GB200", 186),
    ("B300", 270),
    ("GB300", 270),
    ("L4", 24),
    ("L40", 48),
    ("L40S", 48),
    ("P100", 16),
    ("RTX2060", 12),
    ("RTX2060SUPER", 8),
    ("RTX2070", 8),
    ("RTX2070SUPER", 8),
    ("RTX2080", 8),
    ("RTX2080SUPER", 8),
    ("RTX2080Ti", 11),
    ("RTX3050", 8),
    ("RTX3060", 12),
    ("RTX3060Ti", 8),
    ("RTX3070", 8),
    ("RTX3070Ti", 8),
    ("RTX3080", 10),
    ("RTX3080Ti", 12),
    ("RTX3090", 24),
    ("RTX3090Ti", 24),
    ("RTX4060", 8),
    ("RTX4060Ti", 16),
    ("RTX4070", 12),
    ("RTX4070SUPER", 12),
    ("RTX4070Ti", 12),
    ("RTX4070TiSUPER", 16),
    ("RTX4080", 16),
    ("RTX4080SUPER", 16),
    ("RTX4090", 24),
    ("RTX5060", 8),
    ("RTX5060Ti", 16),
    ("RTX5070", 12),
    ("RTX5070Ti", 16),
    ("RTX5080", 16),
    ("RTX5090", 32),
    ("RTX6000", 24),
    ("RTX2000Ada", 16),
    ("RTX4000Ada", 20),
    ("RTX6000Ada", 48),
    ("RTXPRO4500", 32),
    ("RTXPRO6000", 96),
    ("T4", 16),
    ("V100", 32),
    ("GH200", 96),
];

/// gpuhunt's known AMD GPUs: (name, GiB, PCI device ids).
const KNOWN_AMD_GPUS: &[(&str, i64, &[u32])] = &[
    ("MI100", 32, &[0x738C]),
    ("MI210", 64, &[0x740F]),
    ("MI250", 128, &[0x740C]),
    ("MI250X", 128, &[0x7408]),
    ("MI300A", 128, &[0x74A0]),
    ("MI300X", 192, &[0x74A1, 0x74A9, 0x74B5, 0x74BD]),
    ("MI308X", 128, &[0x74A2, 0x74B6]),
    ("MI325X", 288, &[0x74A5]),
    ("MI350X", 288, &[0x75A0]),
    ("MI355X", 288, &[0x75A3]),
];

/// Parses a Kubernetes quantity (`500m`, `16Gi`, `1e3`, `128974848`) into a number of base
/// units (cores, bytes); `None` when malformed.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    if q.is_empty() {
        return None;
    }
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(num) = q.strip_suffix(suffix)
            && !num.is_empty()
            && num
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.' || b == b'+' || b == b'-')
        {
            return num.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    q.parse::<f64>().ok()
}

/// The value of `key` in a resource map, parsed; 0 when absent or malformed.
pub fn quantity_of(map: Option<&BTreeMap<String, Quantity>>, key: &str) -> f64 {
    map.and_then(|m| m.get(key))
        .and_then(|q| parse_quantity(&q.0))
        .unwrap_or(0.0)
}

/// The GPU a node has, from GPU Feature Discovery's product label (NVIDIA); `None` when the
/// label is missing or names an unknown model.
pub fn nvidia_gpu_from_labels(labels: &BTreeMap<String, String>) -> Option<Gpu> {
    let product = labels.get(NVIDIA_GPU_PRODUCT_LABEL)?.replace("RTX-", "RTX");
    let parts: Vec<String> = product
        .to_lowercase()
        .split('-')
        .map(str::to_string)
        .collect();
    let (name, gib) = KNOWN_NVIDIA_GPUS
        .iter()
        .find(|(name, _)| parts.iter().any(|p| p == &name.to_lowercase()))?;
    let mut memory_mib = gib * 1024;
    if product.contains("40GB") {
        memory_mib = 40 * 1024;
    }
    if let Some(mib) = labels
        .get(NVIDIA_GPU_MEMORY_LABEL)
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|m| *m > 0)
    {
        memory_mib = mib;
    }
    Some(Gpu {
        name: (*name).to_string(),
        memory_mib,
        vendor: AcceleratorVendor::Nvidia,
    })
}

/// The GPU a node has, from the AMD device plugin's device-id labels; `None` when none or
/// more than one known model is labelled.
pub fn amd_gpu_from_labels(labels: &BTreeMap<String, String>) -> Option<Gpu> {
    let mut found: Vec<(&str, i64)> = Vec::new();
    for key in labels.keys() {
        let Some(hex) = key.strip_prefix(AMD_GPU_DEVICE_ID_LABEL_PREFIX) else {
            continue;
        };
        let Ok(id) = u32::from_str_radix(hex, 16) else {
            continue;
        };
        match KNOWN_AMD_GPUS.iter().find(|(_, _, ids)| ids.contains(&id)) {
            Some((name, gib, _)) if !found.contains(&(*name, *gib)) => found.push((name, *gib)),
            Some(_) => {}
            None => tracing::warn!(device_id = %format!("{id:X}"), "unknown AMD GPU device id"),
        }
    }
    match found.as_slice() {
        [(name, gib)] => Some(Gpu {
            name: (*name).to_string(),
            memory_mib: gib * 1024,
            vendor: AcceleratorVendor::Amd,
        }),
        [] => None,
        many => {
            tracing::warn!(models = ?many, "several AMD GPU models on one node; ignoring GPUs");
            None
        }
    }
}

/// The PCI device ids of an AMD GPU model (for node affinity).
pub fn amd_device_ids(name: &str) -> &'static [u32] {
    KNOWN_AMD_GPUS
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, _, ids)| *ids)
        .unwrap_or(&[])
}

/// Whether `key` is a valid label key (`prefix/name` with DNS prefix, name ≤ 63).
pub fn is_valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || name.contains('/') {
            return false;
        }
        let ok = p.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !seg.starts_with('-')
                && !seg.ends_with('-')
        });
        if !ok {
            return false;
        }
    }
    !name.is_empty() && name.len() <= LABEL_VALUE_MAX_LENGTH && is_label_word(name)
}

/// Whether `value` is a valid label value (empty, or ≤ 63 of `[A-Za-z0-9_.-]`, alphanumeric
/// at both ends).
pub fn is_valid_label_value(value: &str) -> bool {
    value.is_empty() || (value.len() <= LABEL_VALUE_MAX_LENGTH && is_label_word(value))
}

fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_alphanumeric();
    b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

/// A tag value as the common tag set writes it into labels (lowercase, `[a-z0-9_-]`, at most
/// 63 characters), e.g. for a label selector on `dstack_server_id`.
pub fn label_value(s: &str) -> String {
    let mut t: IndexMap<String, String> = IndexMap::new();
    t.insert("v".into(), s.into());
    let tags = ResourceTags::new(
        &TagIds {
            server_id: "",
            project: "",
            name: "",
            user: None,
            fleet_id: None,
            instance_id: None,
        },
        None,
        Some(&t),
    );
    tags.to_labels().get("v").cloned().unwrap_or_default()
}

/// What a labelled object is and belongs to.
#[derive(Debug, Clone)]
pub struct LabelIds<'a> {
    /// `job` or `ssh-proxy`.
    pub component: &'a str,
    /// The object's unique name (`app.kubernetes.io/instance`, the service selector).
    pub unique_name: &'a str,
    /// The server id.
    pub server_id: &'a str,
    /// The project.
    pub project: &'a str,
    /// The job name (`k8s.dstack.ai/name`).
    pub name: Option<&'a str>,
    /// The user.
    pub user: Option<&'a str>,
    /// The fleet id.
    pub fleet_id: Option<uuid::Uuid>,
    /// The instance id.
    pub instance_id: Option<uuid::Uuid>,
}

/// The labels of an object we create: dstack's (`app.kubernetes.io/*`, `k8s.dstack.ai/*`),
/// then the common tag set as labels (`dstack_server_id`, `dstack_project`,
/// `dstack_fleet_id`, `dstack_instance_id`, … — the sweep keys; user tags under them), all
/// checked against the label syntax (invalid ones are dropped with a warning).
pub fn build_labels(
    ids: &LabelIds<'_>,
    extra: Option<&IndexMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let tags = ResourceTags::new(
        &TagIds {
            server_id: ids.server_id,
            project: ids.project,
            name: ids.unique_name,
            user: ids.user,
            fleet_id: ids.fleet_id,
            instance_id: ids.instance_id,
        },
        None,
        extra,
    );
    for (k, v) in tags.to_labels() {
        labels.insert(k, v);
    }
    labels.insert(LABEL_APP_NAME.into(), format!("dstack-{}", ids.component));
    labels.insert(LABEL_APP_INSTANCE.into(), ids.unique_name.to_string());
    labels.insert(LABEL_MANAGED_BY.into(), "dstack".into());
    labels.insert(LABEL_PROJECT.into(), ids.project.to_string());
    if let Some(name) = ids.name {
        labels.insert(LABEL_NAME.into(), name.to_string());
    }
    if let Some(user) = ids.user {
        labels.insert(LABEL_USER.into(), user.to_string());
    }
    labels.retain(|k, v| {
        let ok = is_valid_label_key(k) && is_valid_label_value(v);
        if !ok {
            tracing::warn!(key = %k, value = %v, "skipping an invalid Kubernetes label");
        }
        ok
    });
    labels
}

/// What a job container requests (minimums) or is limited to (maximums).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceAmounts {
    /// CPU cores.
    pub cpu: Option<i64>,
    /// Memory, MiB.
    pub memory_mib: Option<i64>,
    /// Ephemeral storage, MiB.
    pub disk_mib: Option<i64>,
    /// GPUs (requests and limits are equal: GPUs cannot be overcommitted).
    pub gpu: i64,
}

impl ResourceAmounts {
    /// Requests from a resources spec (the minimums; dstack's `ResourceRequests`).
    pub fn requests(spec: &ResourcesSpec) -> Self {
        Self {
            cpu: Some(spec.cpu.count.min.unwrap_or(0)),
            memory_mib: Some(
                spec.memory
                    .min
                    .map(|m| (m.0 * 1024.0).round() as i64)
                    .unwrap_or(0),
            ),
            disk_mib: Some(
                spec.disk
                    .as_ref()
                    .and_then(|d| d.size.min)
                    .map(|m| (m.0 * 1024.0).round() as i64)
                    .unwrap_or(0),
            ),
            gpu: spec.gpu.as_ref().and_then(|g| g.count.min).unwrap_or(0),
        }
    }

    /// Limits from a resources spec (the maximums; dstack's `ResourceLimits`).
    pub fn limits(spec: &ResourcesSpec) -> Self {
        Self {
            cpu: spec.cpu.count.max,
            memory_mib: spec.memory.max.map(|m| (m.0 * 1024.0).round() as i64),
            disk_mib: spec
                .disk
                .as_ref()
                .and_then(|d| d.size.max)
                .map(|m| (m.0 * 1024.0).round() as i64),
            gpu: spec.gpu.as_ref().and_then(|g| g.count.min).unwrap_or(0),
        }
    }

    /// Requests equal to an offer's resources (when the job has no requirements).
    pub fn of_offer(resources: &Resources) -> Self {
        Self {
            cpu: Some(resources.cpus),
            memory_mib: Some(resources.memory_mib),
            disk_mib: None,
            gpu: resources.gpus.len() as i64,
        }
    }

    /// The Kubernetes resource map (`cpu`, `memory`, `ephemeral-storage`, the GPU resource).
    pub fn to_map(&self, gpu_resource: Option<&str>) -> BTreeMap<String, Quantity> {
        let mut m = BTreeMap::new();
        if let Some(cpu) = self.cpu.filter(|c| *c > 0) {
            m.insert("cpu".to_string(), Quantity(cpu.to_string()));
        }
        if let Some(mem) = self.memory_mib.filter(|m| *m > 0) {
            m.insert("memory".to_string(), Quantity(format!("{mem}Mi")));
        }
        if let Some(disk) = self.disk_mib.filter(|d| *d > 0) {
            m.insert(
                "ephemeral-storage".to_string(),
                Quantity(format!("{disk}Mi")),
            );
        }
        if self.gpu > 0
            && let Some(r) = gpu_resource
        {
            m.insert(r.to_string(), Quantity(self.gpu.to_string()));
        }
        m
    }
}

/// A memory size as a Kubernetes quantity (`{gb}Gi`, dstack's `format_memory`).
pub fn format_memory_gb(gb: f64) -> String {
    format!("{gb:?}Gi")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("16Gi"), Some(17179869184.0));
        assert_eq!(parse_quantity("8"), Some(8.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("100M"), Some(1e8));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn gpu_labels() {
        let l: BTreeMap<String, String> = [(
            NVIDIA_GPU_PRODUCT_LABEL.to_string(),
            "NVIDIA-A100-SXM4-40GB".to_string(),
        )]
        .into();
        let g = nvidia_gpu_from_labels(&l).unwrap();
        assert_eq!((g.name.as_str(), g.memory_mib), ("A100", 40 * 1024));
        let l: BTreeMap<String, String> =
            [(NVIDIA_GPU_PRODUCT_LABEL.to_string(), "Tesla-T4".to_string())].into();
        assert_eq!(nvidia_gpu_from_labels(&l).unwrap().name, "T4");
        let l: BTreeMap<String, String> = [(
            NVIDIA_GPU_PRODUCT_LABEL.to_string(),
            "NVIDIA-GeForce-RTX-4090".to_string(),
        )]
        .into();
        assert_eq!(nvidia_gpu_from_labels(&l).unwrap().name, "RTX4090");
        let l: BTreeMap<String, String> = [(
            "beta.amd.com/gpu.device-id.74b5".to_string(),
            "8".to_string(),
        )]
        .into();
        let g = amd_gpu_from_labels(&l).unwrap();
        assert_eq!(
            (g.name.as_str(), g.vendor),
            ("MI300X", AcceleratorVendor::Amd)
        );
    }

    #[test]
    fn label_syntax() {
        assert!(is_valid_label_key("app.kubernetes.io/name"));
        assert!(is_valid_label_key("dstack_server_id"));
        assert!(!is_valid_label_key("Bad Key"));
        assert!(!is_valid_label_key("a/b/c"));
        assert!(is_valid_label_value(""));
        assert!(!is_valid_label_value("trailing_"));
        assert!(!is_valid_label_value(&"x".repeat(64)));
    }
}
