//! Combining a fleet's profile and requirements with a run's (dstack 0.22.5's
//! `requirements/combine.py`). The result is what an offer must satisfy to serve the run from
//! that fleet; `Err` means the two are incompatible ("no offers in this fleet").
//!
//! Rules: lists are intersected (regions, zones, instance types and GPU names
//! case-insensitively); ranges are intersected and an empty one is a conflict; `max_price` and
//! `shm_size` take the minimum; spot policy `auto` yields to the other side; vendor, CPU arch,
//! reservation and spot must agree when both are set; `multinode` is an OR; the compute
//! capability takes the maximum.

use indexmap::IndexMap;

use super::error::SpecError;
use crate::models::common::{BackendType, Range};
use crate::models::profiles::{BackendProfileOptions, Profile, ProfileParams, SpotPolicy};
use crate::models::resources::{CPUSpec, DiskSpec, GPUSpec, Requirements, ResourcesSpec};

type CResult<T> = Result<T, SpecError>;

fn conflict<T>(msg: String) -> CResult<T> {
    Err(SpecError::Conflict(msg))
}

fn combine_optional<T>(
    a: Option<T>,
    b: Option<T>,
    f: impl FnOnce(T, T) -> CResult<T>,
) -> CResult<Option<T>> {
    match (a, b) {
        (None, b) => Ok(b),
        (a, None) => Ok(a),
        (Some(a), Some(b)) => f(a, b).map(Some),
    }
}

fn single_value<T: PartialEq + std::fmt::Debug>(a: Option<T>, b: Option<T>) -> CResult<Option<T>> {
    combine_optional(a, b, |a, b| {
        if a == b {
            Ok(a)
        } else {
            conflict(format!("Values {a:?} and {b:?} cannot be combined"))
        }
    })
}

fn min_optional<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b < a { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn max_optional<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn intersect_lists<T: PartialEq + Clone>(a: Option<&Vec<T>>, b: Option<&Vec<T>>) -> Option<Vec<T>> {
    match (a, b) {
        (None, b) => b.cloned(),
        (a, None) => a.cloned(),
        (Some(a), Some(b)) => Some(a.iter().filter(|x| b.contains(x)).cloned().collect()),
    }
}

/// Intersects two optional string lists case-insensitively, keeping the first list's spelling.
pub fn intersect_lists_case_insensitive(
    a: Option<&Vec<String>>,
    b: Option<&Vec<String>>,
) -> Option<Vec<String>> {
    match (a, b) {
        (None, b) => b.cloned(),
        (a, None) => a.cloned(),
        (Some(a), Some(b)) => {
            let lower: Vec<String> = b.iter().map(|x| x.to_lowercase()).collect();
            Some(
                a.iter()
                    .filter(|x| lower.contains(&x.to_lowercase()))
                    .cloned()
                    .collect(),
            )
        }
    }
}

fn combine_range<T: Copy + PartialOrd + std::fmt::Display + PartialEq>(
    a: &Range<T>,
    b: &Range<T>,
) -> CResult<Range<T>> {
    match a.intersect(b) {
        Some(r) => Ok(r),
        None => conflict(format!("Ranges {a} and {b} cannot be combined")),
    }
}

fn combine_range_optional<T: Copy + PartialOrd + std::fmt::Display + PartialEq>(
    a: Option<&Range<T>>,
    b: Option<&Range<T>>,
) -> CResult<Option<Range<T>>> {
    combine_optional(a.copied(), b.copied(), |a, b| combine_range(&a, &b))
}

/// Combines spot policies: `auto` yields to the other; otherwise they must be equal.
pub fn combine_spot_policy(
    a: Option<SpotPolicy>,
    b: Option<SpotPolicy>,
) -> CResult<Option<SpotPolicy>> {
    combine_optional(a, b, |a, b| match (a, b) {
        (SpotPolicy::Auto, b) => Ok(b),
        (a, SpotPolicy::Auto) => Ok(a),
        (a, b) if a == b => Ok(a),
        (a, b) => conflict(format!("spot_policy values {a} and {b} cannot be combined")),
    })
}

/// Combines idle durations: the shorter one, where negative (off) yields to a set duration.
pub fn combine_idle_duration(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(match (a < 0, b < 0) {
            (true, true) | (false, false) => a.min(b),
            (true, false) => b,
            (false, true) => a,
        }),
        (a, b) => a.or(b),
    }
}

fn combine_tags(
    a: Option<&IndexMap<String, String>>,
    b: Option<&IndexMap<String, String>>,
) -> Option<IndexMap<String, String>> {
    match (a, b) {
        (None, b) => b.cloned(),
        (a, None) => a.cloned(),
        (Some(a), Some(b)) => {
            let mut out = a.clone();
            for (k, v) in b {
                out.insert(k.clone(), v.clone());
            }
            Some(out)
        }
    }
}

fn combine_backend_options(
    a: Option<&Vec<BackendProfileOptions>>,
    b: Option<&Vec<BackendProfileOptions>>,
) -> CResult<Option<Vec<BackendProfileOptions>>> {
    let (a, b) = match (a, b) {
        (None, b) => return Ok(b.cloned()),
        (a, None) => return Ok(a.cloned()),
        (Some(a), Some(b)) => (a, b),
    };
    let mut by_type: IndexMap<String, BackendProfileOptions> =
        a.iter().map(|o| (o.type_.clone(), o.clone())).collect();
    for opt in b {
        let merged = match by_type.get(&opt.type_) {
            Some(cur) => BackendProfileOptions {
                type_: cur.type_.clone(),
                offer_order: single_value(cur.offer_order, opt.offer_order)?,
                min_reliability: max_optional(cur.min_reliability, opt.min_reliability),
                min_score: max_optional(cur.min_score, opt.min_score),
            },
            None => opt.clone(),
        };
        by_type.insert(opt.type_.clone(), merged);
    }
    Ok(Some(by_type.into_values().collect()))
}

/// The backends that can run multi-node jobs (dstack 0.22.5's
/// `BACKENDS_WITH_MULTINODE_SUPPORT`: SSH fleets and the clouds whose compute has
/// `ComputeWithMultinodeSupport`).
pub const MULTINODE_BACKENDS: &[BackendType] = &[
    BackendType::Remote,
    BackendType::Aws,
    BackendType::Azure,
    BackendType::Crusoe,
    BackendType::Gcp,
    BackendType::JarvisLabs,
    BackendType::Kubernetes,
    BackendType::Nebius,
    BackendType::Oci,
    BackendType::RunPod,
    BackendType::Seeweb,
    BackendType::Slurm,
    BackendType::Vultr,
];

/// Narrows a profile for a job: multi-node jobs only get offers from
/// [`MULTINODE_BACKENDS`], and a worker only from its master's backend and region once the
/// master is provisioned (dstack's `get_offers_by_requirements`: all nodes in one backend
/// and region). An empty result means no backend qualifies.
///
/// ```
/// use dstack_sdk::models::common::BackendType;
/// use dstack_sdk::models::profiles::Profile;
/// use dstack_sdk::spec::combine::restrict_profile_for_job;
///
/// let mut profile = Profile::default();
/// restrict_profile_for_job(&mut profile, true, Some((BackendType::Aws, "us-east-1")));
/// assert_eq!(profile.params.backends, Some(vec![BackendType::Aws]));
/// assert_eq!(profile.params.regions, Some(vec!["us-east-1".to_string()]));
/// ```
pub fn restrict_profile_for_job(
    profile: &mut Profile,
    multinode: bool,
    master: Option<(BackendType, &str)>,
) {
    let p = &mut profile.params;
    if multinode {
        let backends = p
            .backends
            .get_or_insert_with(|| MULTINODE_BACKENDS.to_vec());
        backends.retain(|b| MULTINODE_BACKENDS.contains(b));
    }
    if let Some((backend, region)) = master {
        p.backends
            .get_or_insert_with(|| vec![backend])
            .retain(|b| *b == backend);
        p.regions
            .get_or_insert_with(|| vec![region.to_string()])
            .retain(|r| r == region);
    }
}

/// Combines a fleet's and a run's profiles (only the fields that affect offers and
/// provisioning are kept); `Err` when they conflict.
pub fn combine_fleet_and_run_profiles(fleet: &Profile, run: &Profile) -> CResult<Profile> {
    let (f, r) = (&fleet.params, &run.params);
    Ok(Profile {
        params: ProfileParams {
            backends: intersect_lists(f.backends.as_ref(), r.backends.as_ref()),
            regions: intersect_lists_case_insensitive(f.regions.as_ref(), r.regions.as_ref()),
            availability_zones: intersect_lists_case_insensitive(
                f.availability_zones.as_ref(),
                r.availability_zones.as_ref(),
            ),
            instance_types: intersect_lists_case_insensitive(
                f.instance_types.as_ref(),
                r.instance_types.as_ref(),
            ),
            reservation: single_value(f.reservation.clone(), r.reservation.clone())?,
            spot_policy: combine_spot_policy(f.spot_policy, r.spot_policy)?,
            max_price: min_optional(f.max_price, r.max_price),
            idle_duration: combine_idle_duration(f.idle_duration, r.idle_duration),
            tags: combine_tags(f.tags.as_ref(), r.tags.as_ref()),
            backend_options: combine_backend_options(
                f.backend_options.as_ref(),
                r.backend_options.as_ref(),
            )?,
            ..ProfileParams::default()
        },
        name: String::new(),
        default: false,
    })
}

fn combine_gpu(a: &GPUSpec, b: &GPUSpec) -> CResult<GPUSpec> {
    Ok(GPUSpec {
        vendor: single_value(a.vendor, b.vendor)?,
        name: intersect_lists_case_insensitive(a.name.as_ref(), b.name.as_ref()),
        count: combine_range(&a.count, &b.count)?,
        memory: combine_range_optional(a.memory.as_ref(), b.memory.as_ref())?,
        total_memory: combine_range_optional(a.total_memory.as_ref(), b.total_memory.as_ref())?,
        // 0.22.5 takes the maximum (repository HEAD takes the minimum, a bug).
        compute_capability: max_optional(a.compute_capability, b.compute_capability),
    })
}

/// Combines two resource specs; `Err` when they conflict.
pub fn combine_resources(a: &ResourcesSpec, b: &ResourcesSpec) -> CResult<ResourcesSpec> {
    Ok(ResourcesSpec {
        cpu: CPUSpec {
            arch: single_value(a.cpu.arch, b.cpu.arch)?,
            count: combine_range(&a.cpu.count, &b.cpu.count)?,
        },
        memory: combine_range(&a.memory, &b.memory)?,
        shm_size: min_optional(a.shm_size, b.shm_size),
        gpu: combine_optional(a.gpu.clone(), b.gpu.clone(), |x, y| combine_gpu(&x, &y))?,
        disk: combine_optional(a.disk.clone(), b.disk.clone(), |x, y| {
            Ok(DiskSpec {
                size: combine_range(&x.size, &y.size)?,
            })
        })?,
    })
}

/// Combines a fleet's and a run's requirements; `Err` when they conflict.
pub fn combine_fleet_and_run_requirements(
    fleet: &Requirements,
    run: &Requirements,
) -> CResult<Requirements> {
    Ok(Requirements {
        resources: combine_resources(&fleet.resources, &run.resources)?,
        max_price: min_optional(fleet.max_price, run.max_price),
        spot: single_value(fleet.spot, run.spot)?,
        reservation: single_value(fleet.reservation.clone(), run.reservation.clone())?,
        // Python's `a or b`.
        multinode: if fleet.multinode == Some(true) {
            Some(true)
        } else {
            run.multinode
        },
        backend_options: combine_backend_options(
            fleet.backend_options.as_ref(),
            run.backend_options.as_ref(),
        )?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::models::common::Memory;
    use crate::models::resources::{AcceleratorVendor, ComputeCapability, CpuArch};
    use crate::spec::parse_gpu_spec;

    #[test]
    fn multinode_jobs_keep_to_backends_that_support_them() {
        use BackendType as B;
        let mut p = Profile::default();
        restrict_profile_for_job(&mut p, true, None);
        assert_eq!(p.params.backends.as_deref(), Some(MULTINODE_BACKENDS));
        let mut p = Profile::default();
        p.params.backends = Some(vec![B::Lambda, B::Aws, B::VastAi]);
        restrict_profile_for_job(&mut p, true, None);
        assert_eq!(p.params.backends, Some(vec![B::Aws]));
        // Single-node jobs keep the profile as it is.
        let mut p = Profile::default();
        p.params.backends = Some(vec![B::Lambda]);
        restrict_profile_for_job(&mut p, false, None);
        assert_eq!(p.params.backends, Some(vec![B::Lambda]));
        // A worker goes where its master is, or nowhere if the profile excludes that.
        let mut p = Profile::default();
        p.params.regions = Some(vec!["eu-west-1".into()]);
        restrict_profile_for_job(&mut p, true, Some((B::Aws, "us-east-1")));
        assert_eq!(p.params.backends, Some(vec![B::Aws]));
        assert_eq!(p.params.regions, Some(vec![]));
    }

    fn req(gpu: &str) -> Requirements {
        let mut r = Requirements::new(ResourcesSpec::default());
        r.resources.gpu = Some(parse_gpu_spec(gpu).unwrap());
        r
    }

    #[test]
    fn ranges_and_names() {
        let c =
            combine_fleet_and_run_requirements(&req("A100,h100:1..8"), &req("H100:2..")).unwrap();
        let g = c.resources.gpu.unwrap();
        assert_eq!(g.name, Some(vec!["h100".to_string()]));
        assert_eq!(g.count, Range::new(Some(2), Some(8)));
        assert!(combine_fleet_and_run_requirements(&req("1..2"), &req("4")).is_err());
    }

    #[test]
    fn conflicts_and_max_cc() {
        let mut a = req("nvidia:1");
        let mut b = req("amd:1");
        assert!(combine_fleet_and_run_requirements(&a, &b).is_err());
        b.resources.gpu = Some(parse_gpu_spec("1").unwrap());
        a.resources.gpu.as_mut().unwrap().compute_capability = Some(ComputeCapability(7, 5));
        b.resources.gpu.as_mut().unwrap().compute_capability = Some(ComputeCapability(8, 0));
        let c = combine_fleet_and_run_requirements(&a, &b).unwrap();
        let g = c.resources.gpu.unwrap();
        assert_eq!(g.compute_capability, Some(ComputeCapability(8, 0)));
        assert_eq!(g.vendor, Some(AcceleratorVendor::Nvidia));
        a.resources.cpu.arch = Some(CpuArch::Arm);
        b.resources.cpu.arch = Some(CpuArch::X86);
        assert!(combine_fleet_and_run_requirements(&a, &b).is_err());
        a.spot = Some(true);
        b.spot = None;
        b.resources.cpu.arch = None;
        let c = combine_fleet_and_run_requirements(&a, &b).unwrap();
        assert_eq!(c.spot, Some(true));
        b.spot = Some(false);
        assert!(combine_fleet_and_run_requirements(&a, &b).is_err());
    }

    #[test]
    fn profiles() {
        let mut f = Profile::default();
        let mut r = Profile::default();
        f.params.regions = Some(vec!["US-East-1".into(), "eu-west-1".into()]);
        r.params.regions = Some(vec!["us-east-1".into()]);
        f.params.spot_policy = Some(SpotPolicy::Auto);
        r.params.spot_policy = Some(SpotPolicy::Spot);
        f.params.max_price = Some(2.0);
        r.params.max_price = Some(1.5);
        f.params.idle_duration = Some(-1);
        r.params.idle_duration = Some(600);
        let c = combine_fleet_and_run_profiles(&f, &r).unwrap();
        assert_eq!(c.params.regions, Some(vec!["US-East-1".to_string()]));
        assert_eq!(c.params.spot_policy, Some(SpotPolicy::Spot));
        assert_eq!(c.params.max_price, Some(1.5));
        assert_eq!(c.params.idle_duration, Some(600));
        r.params.spot_policy = Some(SpotPolicy::OnDemand);
        f.params.spot_policy = Some(SpotPolicy::Spot);
        assert!(combine_fleet_and_run_profiles(&f, &r).is_err());
    }

    #[test]
    fn shm_and_disk() {
        let mut a = Requirements::new(ResourcesSpec::default());
        let mut b = Requirements::new(ResourcesSpec::default());
        a.resources.shm_size = Some(Memory(4.0));
        b.resources.shm_size = Some(Memory(2.0));
        b.resources.disk = None;
        let c = combine_fleet_and_run_requirements(&a, &b).unwrap();
        assert_eq!(c.resources.shm_size, Some(Memory(2.0)));
        assert_eq!(c.resources.disk, a.resources.disk);
    }
}
