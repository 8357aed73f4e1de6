//! Resource requests: `ResourcesSpec` (cpu, memory, shm, gpu, disk) and `Requirements`.
//!
//! Parsing (shorthands such as `gpu: A100:80GB:2`, `cpu: arm:8`, `disk: 100GB..`) lives in
//! [`crate::spec::shorthand`]; defaults and inference in [`crate::spec::resources`].

use serde::Serialize;

use crate::models::common::{Memory, Range, string_enum};
use crate::models::profiles::BackendProfileOptions;
use crate::spec::lax::deserialize_from_value;

string_enum! {
    /// A CPU architecture (gpuhunt's `CPUArchitecture`).
    CpuArch {
        /// x86-64.
        X86 = "x86",
        /// AArch64.
        Arm = "arm",
    }
}

string_enum! {
    /// An accelerator vendor (gpuhunt's `AcceleratorVendor`). Input also accepts `tpu`
    /// (google) and `tt` (tenstorrent), in any case.
    AcceleratorVendor {
        /// NVIDIA GPUs.
        Nvidia = "nvidia",
        /// AMD GPUs.
        Amd = "amd",
        /// Google TPUs.
        Google = "google",
        /// Intel Gaudi accelerators.
        Intel = "intel",
        /// Tenstorrent accelerators.
        Tenstorrent = "tenstorrent",
    }
}

/// A minimum CUDA compute capability `(major, minor)`. Input: `"7.5"`, `7.5` or `[7, 5]`;
/// serialised as `[7, 5]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComputeCapability(pub i64, pub i64);

impl Serialize for ComputeCapability {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.0, self.1].serialize(s)
    }
}

impl std::fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// CPU requirements. Input: a count (`8`, `"2.."`), `"<arch>:<count>"` (`"arm:8"`), a
/// `{min, max}` count range, or `{arch, count}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CPUSpec {
    /// The architecture; `None` means any (or inferred from the image).
    pub arch: Option<CpuArch>,
    /// The number of cores.
    pub count: Range<i64>,
}

impl Default for CPUSpec {
    /// `{arch: null, count: 2..}`.
    fn default() -> Self {
        Self {
            arch: None,
            count: Range::at_least(2),
        }
    }
}

/// GPU (accelerator) requirements. Input: a count (`2`) or a `:`-separated shorthand
/// (`"A100:80GB:2"`, `"nvidia:16GB..:1..4"`, `"H100,H200:8"`), or an object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GPUSpec {
    /// The vendor; `None` means any (or inferred).
    pub vendor: Option<AcceleratorVendor>,
    /// Accepted model names (`None` means any).
    pub name: Option<Vec<String>>,
    /// The number of GPUs (`1..` when a GPU spec is written).
    pub count: Range<i64>,
    /// Memory per GPU.
    pub memory: Option<Range<Memory>>,
    /// Total memory over all GPUs.
    pub total_memory: Option<Range<Memory>>,
    /// The minimum compute capability.
    pub compute_capability: Option<ComputeCapability>,
}

impl Default for GPUSpec {
    /// A written GPU spec with nothing else said: count `1..`.
    fn default() -> Self {
        Self {
            vendor: None,
            name: None,
            count: Range::at_least(1),
            memory: None,
            total_memory: None,
            compute_capability: None,
        }
    }
}

impl GPUSpec {
    /// The spec used when `gpu` is omitted: count `0..` (any, including none).
    pub fn no_gpu_default() -> Self {
        Self {
            count: Range::at_least(0),
            ..Self::default()
        }
    }
}

/// Disk requirements. Input: a size or size range (`"100GB.."`) or `{size}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskSpec {
    /// The disk size.
    pub size: Range<Memory>,
}

impl Default for DiskSpec {
    /// `{size: 100GB..}`.
    fn default() -> Self {
        Self {
            size: Range::at_least(Memory(100.0)),
        }
    }
}

/// The resources a run or fleet asks for, dstack's `ResourcesSpec`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourcesSpec {
    /// CPU requirements (default `2..` cores, any arch).
    pub cpu: CPUSpec,
    /// RAM (default `8GB..`).
    pub memory: Range<Memory>,
    /// Shared memory size.
    pub shm_size: Option<Memory>,
    /// GPU requirements (default count `0..`); `None` only when explicitly null.
    pub gpu: Option<GPUSpec>,
    /// Disk requirements (default `100GB..`); `None` means no disk constraint.
    pub disk: Option<DiskSpec>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            cpu: CPUSpec::default(),
            memory: Range::at_least(Memory(8.0)),
            shm_size: None,
            gpu: Some(GPUSpec::no_gpu_default()),
            disk: Some(DiskSpec::default()),
        }
    }
}

impl ResourcesSpec {
    /// The spec of a fleet that declares no resources: cpu `1..`, memory `0GB..`, gpu `0..`
    /// and no disk constraint.
    pub fn unconstrained() -> Self {
        Self {
            cpu: CPUSpec {
                arch: None,
                count: Range::at_least(1),
            },
            memory: Range::at_least(Memory(0.0)),
            shm_size: None,
            gpu: Some(GPUSpec::no_gpu_default()),
            disk: None,
        }
    }
}

/// What an offer must satisfy: resources plus price, spot and placement constraints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Requirements {
    /// The resources.
    pub resources: ResourcesSpec,
    /// The maximum price per hour.
    pub max_price: Option<f64>,
    /// `Some(true)` spot only, `Some(false)` on-demand only, `None` either.
    pub spot: Option<bool>,
    /// A reservation to use.
    pub reservation: Option<String>,
    /// Whether the instance must support multi-node (cluster) runs.
    pub multinode: Option<bool>,
    /// Backend-specific options.
    pub backend_options: Option<Vec<BackendProfileOptions>>,
}

impl Requirements {
    /// Requirements with only resources set.
    pub fn new(resources: ResourcesSpec) -> Self {
        Self {
            resources,
            max_price: None,
            spot: None,
            reservation: None,
            multinode: None,
            backend_options: None,
        }
    }
}

deserialize_from_value!(
    ComputeCapability,
    CPUSpec,
    GPUSpec,
    DiskSpec,
    ResourcesSpec,
    Requirements,
);
