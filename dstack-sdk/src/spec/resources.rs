//! Server-side defaulting of resource specs and the building of `Requirements`:
//! the default GPU spec, GPU vendor inference from names and image, image checks for
//! non-NVIDIA accelerators, CPU architecture inference, and fleet/job requirements.

use crate::models::configurations::{ReplicaGroup, RunConfiguration};
use crate::models::fleets::{FleetSpec, InstanceGroupPlacement};
use crate::models::profiles::{ProfileParams, SpotPolicy};
use crate::models::resources::{AcceleratorVendor, CpuArch, GPUSpec, Requirements, ResourcesSpec};

use super::error::SpecError;

const KNOWN_NVIDIA: &[&str] = &[
    "A10",
    "A16",
    "A40",
    "A100",
    "A10G",
    "A4000",
    "A4500",
    "A5000",
    "A6000",
    "H100",
    "H100NVL",
    "H200",
    "H200NVL",
    "B200",
    "GB200",
    "B300",
    "GB300",
    "L4",
    "L40",
    "L40S",
    "P100",
    "RTX2060",
    "RTX2060SUPER",
    "RTX2070",
    "RTX2070SUPER",
    "RTX2080",
    "RTX2080SUPER",
    "RTX2080Ti",
    "RTX3050",
    "RTX3060",
    "RTX3060Ti",
    "RTX3070",
    "RTX3070Ti",
    "RTX3080",
    "RTX3080Ti",
    "RTX3090",
    "RTX3090Ti",
    "RTX4060",
    "RTX4060Ti",
    "RTX4070",
    "RTX4070SUPER",
    "RTX4070Ti",
    "RTX4070TiSUPER",
    "RTX4080",
    "RTX4080SUPER",
    "RTX4090",
    "RTX5060",
    "RTX5060Ti",
    "RTX5070",
    "RTX5070Ti",
    "RTX5080",
    "RTX5090",
    "RTX6000",
    "RTX2000Ada",
    "RTX4000Ada",
    "RTX6000Ada",
    "RTXPRO4500",
    "RTXPRO6000",
    "T4",
    "V100",
    "GH200",
];
const KNOWN_AMD: &[&str] = &[
    "MI100", "MI210", "MI250", "MI250X", "MI300A", "MI300X", "MI308X", "MI325X", "MI350X", "MI355X",
];
const KNOWN_INTEL: &[&str] = &["Gaudi", "Gaudi2", "Gaudi3"];
const KNOWN_TENSTORRENT: &[&str] = &[
    "n150",
    "n300",
    "tt-galaxy-wh",
    "p100a",
    "p150",
    "p300",
    "tt-galaxy-bh",
];
const KNOWN_TPU_VERSIONS: &[&str] = &["v2", "v3", "v4", "v5p", "v5litepod", "v6e"];

fn known(list: &[&str], lower: &str) -> bool {
    list.iter().any(|n| n.to_lowercase() == lower)
}

/// The vendors a GPU name belongs to by gpuhunt's known tables (case-insensitive); TPUs are
/// recognised as `<known version>-<digits>`. Empty for unknown names.
pub fn detect_gpu_vendors_by_name(name: &str) -> Vec<AcceleratorVendor> {
    let lower = name.to_lowercase();
    let mut vendors = Vec::new();
    if known(KNOWN_NVIDIA, &lower) {
        vendors.push(AcceleratorVendor::Nvidia);
    }
    if known(KNOWN_AMD, &lower) {
        vendors.push(AcceleratorVendor::Amd);
    }
    if known(KNOWN_INTEL, &lower) {
        vendors.push(AcceleratorVendor::Intel);
    }
    if known(KNOWN_TENSTORRENT, &lower) {
        vendors.push(AcceleratorVendor::Tenstorrent);
    }
    let (version, cores) = lower.split_once('-').unwrap_or((lower.as_str(), ""));
    if !cores.is_empty()
        && cores.chars().all(|c| c.is_ascii_digit())
        && known(KNOWN_TPU_VERSIONS, version)
    {
        vendors.push(AcceleratorVendor::Google);
    }
    vendors
}

/// Sets `gpu` to the default (count `0..`) when it is unset; returns it.
pub fn set_default_gpu_spec(resources: &mut ResourcesSpec) -> &mut GPUSpec {
    resources.gpu.get_or_insert_with(GPUSpec::no_gpu_default)
}

/// Infers the GPU vendor (dstack's `set_default_gpu_spec_vendor`):
/// nothing when the vendor is set or no GPU is requested; NVIDIA when no names are given and
/// the default image is used; otherwise the single vendor all names belong to, if any.
pub fn set_default_gpu_spec_vendor(gpu: &mut GPUSpec, image: Option<&str>, docker: Option<bool>) {
    if gpu.vendor.is_some() || gpu.count.max == Some(0) {
        return;
    }
    match gpu.name.as_deref() {
        None | Some([]) => {
            if image.is_none() && docker != Some(true) {
                gpu.vendor = Some(AcceleratorVendor::Nvidia);
            }
        }
        Some(names) => {
            // `None` stands for an unknown name.
            let mut vendors: Vec<Option<AcceleratorVendor>> = Vec::new();
            for name in names {
                let found = detect_gpu_vendors_by_name(name);
                if found.is_empty() && !vendors.contains(&None) {
                    vendors.push(None);
                }
                for v in found {
                    if !vendors.contains(&Some(v)) {
                        vendors.push(Some(v));
                    }
                }
            }
            if let [only] = vendors.as_slice() {
                gpu.vendor = *only;
            }
        }
    }
}

/// Applies the resource defaults of a run: the default GPU spec and vendor inference.
pub fn set_resources_defaults(
    resources: &mut ResourcesSpec,
    image: Option<&str>,
    docker: Option<bool>,
) {
    let gpu = set_default_gpu_spec(resources);
    set_default_gpu_spec_vendor(gpu, image, docker);
}

/// The image and docker flag that apply to a service replica group: the group's own, each
/// falling back to the service's.
pub fn replica_group_image_and_docker<'a>(
    group: &'a ReplicaGroup,
    service_image: Option<&'a str>,
    service_docker: Option<bool>,
) -> (Option<&'a str>, Option<bool>) {
    (
        group.image.as_deref().or(service_image),
        group.docker.or(service_docker),
    )
}

/// Applies resource defaults to a run configuration, its replica groups and node groups.
pub fn set_run_configuration_resources_defaults(conf: &mut RunConfiguration) {
    let image = conf.common().image.clone();
    let docker = conf.common().docker;
    set_resources_defaults(&mut conf.common_mut().resources, image.as_deref(), docker);
    match conf {
        RunConfiguration::Service(s) => {
            if let Some(groups) = s.groups.as_mut() {
                for g in groups.iter_mut() {
                    let (img, dock) = {
                        let (i, d) = replica_group_image_and_docker(g, image.as_deref(), docker);
                        (i.map(str::to_string), d)
                    };
                    set_resources_defaults(&mut g.resources, img.as_deref(), dock);
                }
            }
        }
        RunConfiguration::Task(t) => {
            if let Some(groups) = t.groups.as_mut() {
                for g in groups.iter_mut() {
                    set_resources_defaults(&mut g.resources, image.as_deref(), docker);
                }
            }
        }
        RunConfiguration::DevEnvironment(_) => {}
    }
}

/// The vendors that need a custom image (AMD, Intel, Tenstorrent) requested by `gpu` when the
/// default image is used.
pub fn gpu_vendors_requiring_image(
    gpu: Option<&GPUSpec>,
    image: Option<&str>,
    docker: Option<bool>,
) -> Vec<AcceleratorVendor> {
    if image.is_some() || docker == Some(true) {
        return Vec::new();
    }
    let Some(gpu) = gpu.filter(|g| g.count.max != Some(0)) else {
        return Vec::new();
    };
    let mut vendors: Vec<AcceleratorVendor> = match gpu.vendor {
        Some(v) => vec![v],
        None => gpu
            .name
            .iter()
            .flatten()
            .flat_map(|n| detect_gpu_vendors_by_name(n))
            .collect(),
    };
    vendors.retain(|v| !matches!(v, AcceleratorVendor::Nvidia | AcceleratorVendor::Google));
    vendors.sort_by_key(|v| v.as_str());
    vendors.dedup();
    vendors
}

/// Rejects accelerators the default image cannot run (dstack's
/// `_validate_gpu_vendor_and_image`).
pub fn validate_gpu_vendor_and_image(conf: &RunConfiguration) -> Result<(), SpecError> {
    let c = conf.common();
    let fail = |vendors: &[AcceleratorVendor], prefix: String| {
        let names: Vec<&str> = vendors.iter().map(|v| v.as_str()).collect();
        Err(SpecError::Conflict(format!(
            "{prefix}`image` must be set when the requested accelerator is not supported by the \
             default image: {names:?}"
        )))
    };
    let mut all: Vec<AcceleratorVendor> = Vec::new();
    let mut bad_groups: Vec<usize> = Vec::new();
    let groups_checked = match conf {
        RunConfiguration::Service(s) if s.groups.is_some() => {
            for (i, g) in s.groups.iter().flatten().enumerate() {
                let (img, dock) = replica_group_image_and_docker(g, c.image.as_deref(), c.docker);
                let v = gpu_vendors_requiring_image(g.resources.gpu.as_ref(), img, dock);
                if !v.is_empty() {
                    all.extend(v);
                    bad_groups.push(i);
                }
            }
            true
        }
        RunConfiguration::Task(t) if t.groups.is_some() => {
            for (i, g) in t.groups.iter().flatten().enumerate() {
                let v = gpu_vendors_requiring_image(
                    g.resources.gpu.as_ref(),
                    c.image.as_deref(),
                    c.docker,
                );
                if !v.is_empty() {
                    all.extend(v);
                    bad_groups.push(i);
                }
            }
            true
        }
        _ => false,
    };
    if !groups_checked {
        all = gpu_vendors_requiring_image(c.resources.gpu.as_ref(), c.image.as_deref(), c.docker);
    }
    all.sort_by_key(|v| v.as_str());
    all.dedup();
    if all.is_empty() {
        return Ok(());
    }
    let prefix = if bad_groups.is_empty() {
        String::new()
    } else {
        format!("groups{bad_groups:?}: ")
    };
    fail(&all, prefix)
}

/// The CPU architecture a job requires: the spec's, else x86 for the default image, else the
/// image's single architecture (`image_arches`), else unset (multi-arch image).
pub fn infer_cpu_arch(
    resources: &ResourcesSpec,
    image: Option<&str>,
    image_arches: &[CpuArch],
) -> Option<CpuArch> {
    if resources.cpu.arch.is_some() {
        return resources.cpu.arch;
    }
    if image.is_none() {
        return Some(CpuArch::X86);
    }
    match image_arches {
        [only] => Some(*only),
        _ => None,
    }
}

/// Maps a spot policy to `Requirements.spot`, `default` applying when it is unset.
pub fn spot_from_policy(policy: Option<SpotPolicy>, default: SpotPolicy) -> Option<bool> {
    match policy.unwrap_or(default) {
        SpotPolicy::Auto => None,
        SpotPolicy::Spot => Some(true),
        SpotPolicy::OnDemand => Some(false),
    }
}

/// A job's requirements (dstack's `JobConfigurator._requirements`): the resources with the CPU
/// architecture inferred, price, spot (the run default is on-demand), reservation and
/// multi-node flag from the merged profile.
pub fn job_requirements(
    resources: &ResourcesSpec,
    image: Option<&str>,
    image_arches: &[CpuArch],
    profile: &ProfileParams,
    reservation: Option<&str>,
    jobs_per_replica: i64,
) -> Requirements {
    let mut resources = resources.clone();
    resources.cpu.arch = infer_cpu_arch(&resources, image, image_arches);
    Requirements {
        resources,
        max_price: profile.max_price,
        spot: spot_from_policy(profile.spot_policy, SpotPolicy::OnDemand),
        reservation: reservation.map(str::to_string),
        multinode: Some(jobs_per_replica > 1),
        backend_options: profile.backend_options.clone(),
    }
}

/// A fleet's requirements (dstack's `get_fleet_requirements`): the resources (or
/// [`ResourcesSpec::unconstrained`]), the merged profile's price, spot (default on-demand) and
/// backend options, the configuration's reservation, and multi-node for cluster placement.
pub fn fleet_requirements(spec: &FleetSpec) -> Requirements {
    let profile = spec.merged_profile();
    let c = &spec.configuration;
    Requirements {
        resources: c
            .resources
            .clone()
            .unwrap_or_else(ResourcesSpec::unconstrained),
        max_price: profile.params.max_price,
        spot: spot_from_policy(profile.params.spot_policy, SpotPolicy::OnDemand),
        reservation: c.reservation.clone(),
        multinode: Some(c.placement == Some(InstanceGroupPlacement::Cluster)),
        backend_options: profile.params.backend_options,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::spec::parse_gpu_spec;

    fn vendor_of(gpu: &str, image: Option<&str>) -> Option<AcceleratorVendor> {
        let mut g = parse_gpu_spec(gpu).unwrap();
        set_default_gpu_spec_vendor(&mut g, image, None);
        g.vendor
    }

    #[test]
    fn vendor_inference() {
        assert_eq!(vendor_of("2", None), Some(AcceleratorVendor::Nvidia));
        assert_eq!(vendor_of("2", Some("img")), None);
        assert_eq!(vendor_of("0", None), None);
        assert_eq!(vendor_of("MI300X", None), Some(AcceleratorVendor::Amd));
        assert_eq!(
            vendor_of("v5litepod-8", None),
            Some(AcceleratorVendor::Google)
        );
        assert_eq!(vendor_of("H100,MI300X", None), None);
        assert_eq!(vendor_of("H100,UNKNOWN", None), None);
        assert_eq!(
            vendor_of("h100,a100", Some("x")),
            Some(AcceleratorVendor::Nvidia)
        );
        let mut r = ResourcesSpec {
            gpu: None,
            ..ResourcesSpec::default()
        };
        set_resources_defaults(&mut r, None, None);
        // `0..` has no upper bound, so the default image still implies NVIDIA.
        assert_eq!(r.gpu.unwrap().vendor, Some(AcceleratorVendor::Nvidia));
    }

    #[test]
    fn image_checks() {
        let g = parse_gpu_spec("amd:2").unwrap();
        assert_eq!(
            gpu_vendors_requiring_image(Some(&g), None, None),
            vec![AcceleratorVendor::Amd]
        );
        assert!(gpu_vendors_requiring_image(Some(&g), Some("rocm"), None).is_empty());
        let g = parse_gpu_spec("tpu:v5litepod-8").unwrap();
        assert!(gpu_vendors_requiring_image(Some(&g), None, None).is_empty());
    }
}
