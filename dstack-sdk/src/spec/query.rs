//! From `Requirements` to a gpuhunt query (dstack's `requirements_to_query_filter`).

use serde_json::{Map, Value};

use crate::models::resources::{AcceleratorVendor, CpuArch, Requirements};
use crate::offers::{
    AcceleratorVendor as OfferVendor, ComputeCapability as OfferCc, CpuArchitecture, QueryFilter,
};

/// The gpuhunt flags dstack 0.22.5 understands; offers with any other flag are filtered out.
pub const SUPPORTED_GPUHUNT_FLAGS: &[&str] = &[
    "oci-spot",
    "lambda-arm",
    "gcp-a4",
    "gcp-g4",
    "gcp-dws-calendar-mode",
    "runpod-cpu",
    "runpod-cluster",
    "hotaisle-bm",
];

/// The field names of gpuhunt's `QueryFilter`, in declaration order.
pub const QUERY_FILTER_FIELDS: &[&str] = &[
    "provider",
    "cpu_arch",
    "min_cpu",
    "max_cpu",
    "min_memory",
    "max_memory",
    "min_gpu_count",
    "max_gpu_count",
    "gpu_vendor",
    "gpu_name",
    "min_gpu_memory",
    "max_gpu_memory",
    "min_total_gpu_memory",
    "max_total_gpu_memory",
    "min_disk_size",
    "max_disk_size",
    "min_price",
    "max_price",
    "min_compute_capability",
    "max_compute_capability",
    "spot",
    "allowed_flags",
];

fn cpu_arch(a: CpuArch) -> CpuArchitecture {
    match a {
        CpuArch::X86 => CpuArchitecture::X86,
        CpuArch::Arm => CpuArchitecture::Arm,
    }
}

fn vendor(v: AcceleratorVendor) -> OfferVendor {
    match v {
        AcceleratorVendor::Nvidia => OfferVendor::Nvidia,
        AcceleratorVendor::Amd => OfferVendor::Amd,
        AcceleratorVendor::Google => OfferVendor::Google,
        AcceleratorVendor::Intel => OfferVendor::Intel,
        AcceleratorVendor::Tenstorrent => OfferVendor::Tenstorrent,
    }
}

/// The gpuhunt query for `requirements` (`None` gives a query with only the allowed flags).
/// With `ignore_disk`, disk bounds are left out (backends whose disk size is configurable).
pub fn requirements_to_query_filter(
    requirements: Option<&Requirements>,
    ignore_disk: bool,
) -> QueryFilter {
    let mut q = QueryFilter {
        allowed_flags: Some(
            SUPPORTED_GPUHUNT_FLAGS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        ..QueryFilter::default()
    };
    let Some(req) = requirements else {
        return q;
    };
    q.max_price = req.max_price;
    q.spot = req.spot;
    let res = &req.resources;
    q.cpu_arch = res.cpu.arch.map(cpu_arch);
    q.min_cpu = res.cpu.count.min;
    q.max_cpu = res.cpu.count.max;
    q.min_memory = res.memory.min.map(|m| m.gb());
    q.max_memory = res.memory.max.map(|m| m.gb());
    if let (Some(disk), false) = (&res.disk, ignore_disk) {
        q.min_disk_size = disk.size.min.map(|m| m.gb());
        q.max_disk_size = disk.size.max.map(|m| m.gb());
    }
    if let Some(gpu) = &res.gpu {
        q.gpu_vendor = gpu.vendor.map(vendor);
        q.gpu_name.clone_from(&gpu.name);
        if let Some(m) = &gpu.memory {
            q.min_gpu_memory = m.min.map(|m| m.gb());
            q.max_gpu_memory = m.max.map(|m| m.gb());
        }
        q.min_gpu_count = gpu.count.min;
        q.max_gpu_count = gpu.count.max;
        if let Some(m) = &gpu.total_memory {
            q.min_total_gpu_memory = m.min.map(|m| m.gb());
            q.max_total_gpu_memory = m.max.map(|m| m.gb());
        }
        if let Some(cc) = gpu.compute_capability {
            let part = |x: i64| u32::try_from(x.max(0)).unwrap_or(u32::MAX);
            q.min_compute_capability = Some(OfferCc::new(part(cc.0), part(cc.1)));
        }
    }
    q
}

/// The query as a JSON object with every gpuhunt field, unset ones as null (the shape of
/// `dataclasses.asdict(QueryFilter)`).
pub fn query_filter_to_json(q: &QueryFilter) -> Value {
    let set = serde_json::to_value(q).unwrap_or(Value::Null);
    let mut out = Map::new();
    for field in QUERY_FILTER_FIELDS {
        out.insert(
            (*field).to_string(),
            set.get(*field).cloned().unwrap_or(Value::Null),
        );
    }
    // gpuhunt holds compute capabilities as `(major, minor)` tuples.
    let cc = |c: Option<OfferCc>| c.map_or(Value::Null, |c| serde_json::json!([c.major, c.minor]));
    out.insert(
        "min_compute_capability".into(),
        cc(q.min_compute_capability),
    );
    out.insert(
        "max_compute_capability".into(),
        cc(q.max_compute_capability),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::resources::ResourcesSpec;

    #[test]
    fn default_requirements() {
        let mut r = Requirements::new(ResourcesSpec::default());
        if let Some(g) = r.resources.gpu.as_mut() {
            g.vendor = Some(AcceleratorVendor::Nvidia);
        }
        let q = requirements_to_query_filter(Some(&r), false);
        assert_eq!(q.min_cpu, Some(2));
        assert_eq!(q.min_memory, Some(8.0));
        assert_eq!(q.min_gpu_count, Some(0));
        assert_eq!(q.min_disk_size, Some(100.0));
        assert_eq!(q.gpu_vendor, Some(OfferVendor::Nvidia));
        assert_eq!(
            requirements_to_query_filter(Some(&r), true).min_disk_size,
            None
        );
        let j = query_filter_to_json(&q);
        assert_eq!(j["provider"], Value::Null);
        assert_eq!(j["allowed_flags"].as_array().map(Vec::len), Some(8));
    }
}
