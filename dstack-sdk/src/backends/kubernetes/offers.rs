//! Offers from the cluster's nodes (dstack's `get_instance_offers`): one offer per node that
//! a job may be scheduled on, sized from the node's `allocatable` resources, with the GPU
//! model from node labels (NVIDIA GPU Feature Discovery, AMD device plugin), price 0, runtime
//! `runner`.
//!
//! With requirements, an offer is kept when the node can hold the requested minimums (and
//! the GPU model matches), and its resources are then cut down to what the job requests
//! (dstack's offer modifier), so that the run plan shows what the pod will get.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint};

use super::resources::{
    AMD_GPU_RESOURCE, NVIDIA_GPU_RESOURCE, ResourceAmounts, amd_gpu_from_labels,
    nvidia_gpu_from_labels, quantity_of,
};
use crate::models::backends::BackendType;
use crate::models::offers::{
    Disk, Gpu, InstanceAvailability, InstanceOfferWithAvailability, InstanceRuntime, InstanceType,
    Resources,
};
use crate::models::resources::{CpuArch, GPUSpec, Requirements};

/// Whether a taint keeps pods off the node (`NoSchedule`, `NoExecute` or unknown effects).
pub fn is_hard_taint(t: &Taint) -> bool {
    t.effect != "PreferNoSchedule"
}

/// Whether we tolerate a taint (the GPU taints; job pods that request GPUs tolerate them).
pub fn is_taint_tolerated(t: &Taint) -> bool {
    t.key == NVIDIA_GPU_RESOURCE || t.key == AMD_GPU_RESOURCE
}

/// The node's labels.
pub fn node_labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

/// The offer for one node; `None` when it has an untolerated hard taint or no status.
pub fn offer_from_node(node: &Node, region: &str) -> Option<InstanceOfferWithAvailability> {
    let name = node.metadata.name.clone()?;
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    if taints.is_some_and(|ts| {
        ts.iter()
            .any(|t| is_hard_taint(t) && !is_taint_tolerated(t))
    }) {
        tracing::debug!(node = %name, "untolerated taint(s); skipping node");
        return None;
    }
    let status = node.status.as_ref()?;
    let allocatable = status.allocatable.as_ref();
    let cpu_arch = status
        .node_info
        .as_ref()
        .map(|i| i.architecture.as_str())
        .and_then(|a| match a {
            "amd64" | "x86_64" => Some(CpuArch::X86),
            "arm64" | "aarch64" => Some(CpuArch::Arm),
            _ => None,
        })
        .or(Some(CpuArch::X86));
    let cpus = quantity_of(allocatable, "cpu").floor().max(0.0) as i64;
    let memory_mib = (quantity_of(allocatable, "memory") / 1048576.0)
        .floor()
        .max(0.0) as i64;
    let disk_mib = (quantity_of(allocatable, "ephemeral-storage") / 1048576.0)
        .floor()
        .max(0.0) as i64;
    let labels = node_labels(node);
    let mut gpus: Vec<Gpu> = Vec::new();
    for (resource, detect) in [
        (
            NVIDIA_GPU_RESOURCE,
            nvidia_gpu_from_labels as fn(&BTreeMap<String, String>) -> Option<Gpu>,
        ),
        (AMD_GPU_RESOURCE, amd_gpu_from_labels),
    ] {
        let count = quantity_of(allocatable, resource).floor() as i64;
        if count < 1 {
            continue;
        }
        match detect(&labels) {
            Some(gpu) => gpus = vec![gpu; count as usize],
            None => tracing::warn!(
                node = %name, resource, count,
                "GPU resource found, but its model is not labelled; offering the node without GPUs"
            ),
        }
        break;
    }
    Some(InstanceOfferWithAvailability {
        backend: BackendType::Kubernetes,
        instance: InstanceType {
            name,
            resources: Resources {
                cpus,
                memory_mib,
                gpus,
                spot: false,
                disk: Disk { size_mib: disk_mib },
                cpu_arch,
                description: String::new(),
            },
        },
        region: region.to_string(),
        price: 0.0,
        backend_data: serde_json::Map::new(),
        availability: InstanceAvailability::Available,
        availability_zones: None,
        instance_runtime: InstanceRuntime::Runner,
        blocks: 1,
        total_blocks: 1,
    })
}

/// Whether `gpu` satisfies the GPU spec's vendor, name and per-GPU memory.
pub fn gpu_matches(gpu: &Gpu, spec: &GPUSpec) -> bool {
    if let Some(v) = spec.vendor
        && v != gpu.vendor
    {
        return false;
    }
    if let Some(names) = &spec.name
        && !names.iter().any(|n| n.eq_ignore_ascii_case(&gpu.name))
    {
        return false;
    }
    if let Some(mem) = &spec.memory {
        let gib = gpu.memory_mib as f64 / 1024.0;
        if mem.min.is_some_and(|m| gib < m.0) || mem.max.is_some_and(|m| gib > m.0) {
            return false;
        }
    }
    true
}

/// Keeps `offer` when the node can hold the requirements and cuts it down to the requests.
pub fn fit_offer(
    mut offer: InstanceOfferWithAvailability,
    requirements: &Requirements,
) -> Option<InstanceOfferWithAvailability> {
    let spec = &requirements.resources;
    let req = ResourceAmounts::requests(spec);
    let r = &mut offer.instance.resources;
    if let Some(arch) = spec.cpu.arch
        && r.cpu_arch.is_some_and(|a| a != arch)
    {
        return None;
    }
    if req.cpu.unwrap_or(0) > r.cpus || req.memory_mib.unwrap_or(0) > r.memory_mib {
        return None;
    }
    if r.disk.size_mib > 0 && req.disk_mib.unwrap_or(0) > r.disk.size_mib {
        return None;
    }
    if let Some(max) = requirements.max_price
        && offer.price > max
    {
        return None;
    }
    if requirements.spot == Some(true) {
        return None;
    }
    match &spec.gpu {
        Some(g) if req.gpu > 0 => {
            if (r.gpus.len() as i64) < req.gpu || !r.gpus.first().is_some_and(|x| gpu_matches(x, g))
            {
                return None;
            }
            if let Some(total) = &g.total_memory {
                let gib = r.gpus[0].memory_mib as f64 / 1024.0 * req.gpu as f64;
                if total.min.is_some_and(|m| gib < m.0) {
                    return None;
                }
            }
        }
        _ => {}
    }
    r.cpus = r.cpus.min(req.cpu.unwrap_or(0));
    r.memory_mib = r.memory_mib.min(req.memory_mib.unwrap_or(0));
    r.gpus.truncate(req.gpu.max(0) as usize);
    r.disk = Disk {
        size_mib: r.disk.size_mib.min(req.disk_mib.unwrap_or(0)),
    };
    Some(offer)
}

/// Offers from `nodes` (all when `requirements` is `None`), by price, then node name.
pub fn offers_from_nodes(
    nodes: &[Node],
    region: &str,
    requirements: Option<&Requirements>,
) -> Vec<InstanceOfferWithAvailability> {
    let mut out: Vec<InstanceOfferWithAvailability> = nodes
        .iter()
        .filter_map(|n| offer_from_node(n, region))
        .filter_map(|o| match requirements {
            Some(r) => fit_offer(o, r),
            None => Some(o),
        })
        .collect();
    out.sort_by(|a, b| {
        a.price
            .total_cmp(&b.price)
            .then_with(|| a.instance.name.cmp(&b.instance.name))
    });
    out
}
