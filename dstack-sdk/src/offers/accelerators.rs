//! The known-accelerator table of gpuhunt 0.1.34 and the look-ups built on it.
//!
//! The table lists every GPU/accelerator model gpuhunt knows, with its memory in GB and, for
//! NVIDIA, its CUDA compute capability. A model with several memory variants appears once per
//! variant, in gpuhunt's order; look-ups that need one answer take the *first* entry with the
//! name, as gpuhunt does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An accelerator vendor, as gpuhunt's `AcceleratorVendor` (stored lowercase in catalogs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AcceleratorVendor {
    /// `nvidia`.
    Nvidia,
    /// `amd`.
    Amd,
    /// `google` (TPUs).
    Google,
    /// `intel` (Gaudi).
    Intel,
    /// `tenstorrent`.
    Tenstorrent,
}

impl AcceleratorVendor {
    /// Every vendor, in gpuhunt's declaration order.
    pub const ALL: [AcceleratorVendor; 5] = [
        AcceleratorVendor::Nvidia,
        AcceleratorVendor::Amd,
        AcceleratorVendor::Google,
        AcceleratorVendor::Intel,
        AcceleratorVendor::Tenstorrent,
    ];

    /// The lowercase name used in catalogs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceleratorVendor::Nvidia => "nvidia",
            AcceleratorVendor::Amd => "amd",
            AcceleratorVendor::Google => "google",
            AcceleratorVendor::Intel => "intel",
            AcceleratorVendor::Tenstorrent => "tenstorrent",
        }
    }

    /// Parses a vendor name the way gpuhunt's `AcceleratorVendor.cast` does: lowercased, then
    /// exact. Aliases such as `tpu` or `tt` (a dstack spec feature) are *not* accepted.
    pub fn parse(value: &str) -> Option<Self> {
        if value.is_ascii() {
            return Self::ALL
                .into_iter()
                .find(|v| v.as_str().eq_ignore_ascii_case(value));
        }
        let lower = value.to_lowercase();
        Self::ALL.into_iter().find(|v| v.as_str() == lower)
    }

    /// A dense index (0..5), used by the index for per-vendor bitsets.
    pub(crate) fn ordinal(self) -> usize {
        self as usize
    }
}

impl fmt::Display for AcceleratorVendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AcceleratorVendor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not a valid AcceleratorVendor"))
    }
}

impl Serialize for AcceleratorVendor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AcceleratorVendor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A CUDA compute capability `(major, minor)`; ordered lexicographically like a Python tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComputeCapability {
    /// The major version, e.g. `9` for Hopper.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl ComputeCapability {
    /// A compute capability from its two parts.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// A single integer with the same ordering, for index keys.
    pub(crate) fn key(self) -> u64 {
        (u64::from(self.major) << 32) | u64::from(self.minor)
    }
}

impl fmt::Display for ComputeCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// AMD Instinct architecture generations, as in gpuhunt's `AMDArchitecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AmdArchitecture {
    /// CDNA (MI100).
    Cdna,
    /// CDNA2 (MI200 series).
    Cdna2,
    /// CDNA3 (MI300 series).
    Cdna3,
    /// CDNA4 (MI350 series).
    Cdna4,
}

/// Vendor-specific facts of a known accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceleratorDetails {
    /// An NVIDIA GPU and its compute capability.
    Nvidia {
        /// CUDA compute capability.
        compute_capability: ComputeCapability,
    },
    /// An AMD GPU, its architecture and its PCI device ids.
    Amd {
        /// The architecture generation.
        architecture: AmdArchitecture,
        /// PCI device ids that identify the model.
        device_ids: &'static [u16],
    },
    /// A Google TPU version (memory is recorded as 0).
    Tpu,
    /// An Intel Gaudi accelerator.
    Intel,
    /// A Tenstorrent accelerator.
    Tenstorrent,
}

/// One entry of the known-accelerator table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceleratorInfo {
    /// The model name as gpuhunt spells it (e.g. `A100`, `MI300X`, `v5litepod`).
    pub name: &'static str,
    /// Memory per accelerator in GB (0 for TPU versions).
    pub memory: u32,
    /// Vendor-specific facts.
    pub details: AcceleratorDetails,
}

impl AcceleratorInfo {
    /// The vendor of this accelerator.
    pub fn vendor(&self) -> AcceleratorVendor {
        match self.details {
            AcceleratorDetails::Nvidia { .. } => AcceleratorVendor::Nvidia,
            AcceleratorDetails::Amd { .. } => AcceleratorVendor::Amd,
            AcceleratorDetails::Tpu => AcceleratorVendor::Google,
            AcceleratorDetails::Intel => AcceleratorVendor::Intel,
            AcceleratorDetails::Tenstorrent => AcceleratorVendor::Tenstorrent,
        }
    }

    /// The compute capability, for NVIDIA GPUs.
    pub fn compute_capability(&self) -> Option<ComputeCapability> {
        match self.details {
            AcceleratorDetails::Nvidia { compute_capability } => Some(compute_capability),
            _ => None,
        }
    }
}

const fn nv(name: &'static str, memory: u32, major: u32, minor: u32) -> AcceleratorInfo {
    AcceleratorInfo {
        name,
        memory,
        details: AcceleratorDetails::Nvidia {
            compute_capability: ComputeCapability::new(major, minor),
        },
    }
}

const fn amd(
    name: &'static str,
    memory: u32,
    architecture: AmdArchitecture,
    device_ids: &'static [u16],
) -> AcceleratorInfo {
    AcceleratorInfo {
        name,
        memory,
        details: AcceleratorDetails::Amd {
            architecture,
            device_ids,
        },
    }
}

const fn tpu(name: &'static str) -> AcceleratorInfo {
    AcceleratorInfo {
        name,
        memory: 0,
        details: AcceleratorDetails::Tpu,
    }
}

const fn intel(name: &'static str, memory: u32) -> AcceleratorInfo {
    AcceleratorInfo {
        name,
        memory,
        details: AcceleratorDetails::Intel,
    }
}

const fn tt(name: &'static str, memory: u32) -> AcceleratorInfo {
    AcceleratorInfo {
        name,
        memory,
        details: AcceleratorDetails::Tenstorrent,
    }
}

use AmdArchitecture::{Cdna, Cdna2, Cdna3, Cdna4};

/// gpuhunt 0.1.34's `KNOWN_ACCELERATORS`, in its order: NVIDIA, AMD, TPU, Intel, Tenstorrent.
pub static KNOWN_ACCELERATORS: &[AcceleratorInfo] = &[
    // NVIDIA
    nv("A10", 24, 8, 6),
    nv("A16", 16, 8, 6),
    nv("A40", 48, 8, 6),
    nv("A100", 40, 8, 0),
    nv("A100", 80, 8, 0),
    nv("A10G", 24, 8, 6),
    nv("A4000", 16, 8, 6),
    nv("A4500", 20, 8, 6),
    nv("A5000", 24, 8, 6),
    nv("A6000", 48, 8, 6),
    nv("H100", 80, 9, 0),
    nv("H100NVL", 94, 9, 0),
    nv("H200", 141, 9, 0),
    nv("H200NVL", 141, 9, 0),
    nv("B200", 180, 10, 0),
    nv("GB200", 186, 10, 0),
    nv("B300", 270, 10, 0),
    nv("GB300", 270, 10, 0),
    nv("L4", 24, 8, 9),
    nv("L40", 48, 8, 9),
    nv("L40S", 48, 8, 9),
    nv("P100", 16, 6, 0),
    nv("RTX2060", 6, 7, 5),
    nv("RTX2060", 12, 7, 5),
    nv("RTX2060SUPER", 8, 7, 5),
    nv("RTX2070", 8, 7, 5),
    nv("RTX2070SUPER", 8, 7, 5),
    nv("RTX2080", 8, 7, 5),
    nv("RTX2080SUPER", 8, 7, 5),
    nv("RTX2080Ti", 11, 7, 5),
    nv("RTX3050", 6, 8, 6),
    nv("RTX3050", 8, 8, 6),
    nv("RTX3060", 8, 8, 6),
    nv("RTX3060", 12, 8, 6),
    nv("RTX3060Ti", 8, 8, 6),
    nv("RTX3070", 8, 8, 6),
    nv("RTX3070Ti", 8, 8, 6),
    nv("RTX3080", 10, 8, 6),
    nv("RTX3080Ti", 12, 8, 6),
    nv("RTX3090", 24, 8, 6),
    nv("RTX3090Ti", 24, 8, 6),
    nv("RTX4060", 8, 8, 9),
    nv("RTX4060Ti", 8, 8, 9),
    nv("RTX4060Ti", 16, 8, 9),
    nv("RTX4070", 12, 8, 9),
    nv("RTX4070SUPER", 12, 8, 9),
    nv("RTX4070Ti", 12, 8, 9),
    nv("RTX4070TiSUPER", 16, 8, 9),
    nv("RTX4080", 16, 8, 9),
    nv("RTX4080SUPER", 16, 8, 9),
    nv("RTX4090", 24, 8, 9),
    nv("RTX5060", 8, 12, 0),
    nv("RTX5060Ti", 8, 12, 0),
    nv("RTX5060Ti", 16, 12, 0),
    nv("RTX5070", 12, 12, 0),
    nv("RTX5070Ti", 16, 12, 0),
    nv("RTX5080", 16, 12, 0),
    nv("RTX5090", 32, 12, 0),
    nv("RTX6000", 24, 7, 5),
    nv("RTX2000Ada", 16, 8, 9),
    nv("RTX4000Ada", 20, 8, 9),
    nv("RTX6000Ada", 48, 8, 9),
    nv("RTXPRO4500", 32, 12, 0),
    nv("RTXPRO6000", 96, 12, 0),
    nv("T4", 16, 7, 5),
    nv("V100", 16, 7, 0),
    nv("V100", 32, 7, 0),
    nv("GH200", 96, 9, 0),
    // AMD
    amd("MI100", 32, Cdna, &[0x738C]),
    amd("MI210", 64, Cdna2, &[0x740F]),
    amd("MI250", 128, Cdna2, &[0x740C]),
    amd("MI250X", 128, Cdna2, &[0x7408]),
    amd("MI300A", 128, Cdna3, &[0x74A0]),
    amd("MI300X", 192, Cdna3, &[0x74A1, 0x74A9, 0x74B5, 0x74BD]),
    amd("MI308X", 128, Cdna3, &[0x74A2, 0x74B6]),
    amd("MI325X", 288, Cdna3, &[0x74A5]),
    amd("MI350X", 288, Cdna4, &[0x75A0]),
    amd("MI355X", 288, Cdna4, &[0x75A3]),
    // Google TPU versions (v5litepod = v5e)
    tpu("v2"),
    tpu("v3"),
    tpu("v4"),
    tpu("v5p"),
    tpu("v5litepod"),
    tpu("v6e"),
    // Intel
    intel("Gaudi", 32),
    intel("Gaudi2", 96),
    intel("Gaudi3", 128),
    // Tenstorrent
    tt("n150", 12),
    tt("n300", 24),
    tt("tt-galaxy-wh", 12),
    tt("p100a", 28),
    tt("p150", 32),
    tt("p300", 32),
    tt("p300", 64),
    tt("tt-galaxy-bh", 32),
];

/// Entries whose name is in `names` (case-insensitive; `None` = any) and whose vendor is in
/// `vendors` (`None` = any), in table order. Mirrors gpuhunt's `find_accelerators`.
pub fn find_accelerators(
    names: Option<&[&str]>,
    vendors: Option<&[AcceleratorVendor]>,
) -> Vec<&'static AcceleratorInfo> {
    let names: Option<Vec<String>> = names.map(|ns| ns.iter().map(|n| n.to_lowercase()).collect());
    KNOWN_ACCELERATORS
        .iter()
        .filter(|a| {
            names
                .as_ref()
                .is_none_or(|ns| ns.iter().any(|n| *n == a.name.to_lowercase()))
                && vendors.is_none_or(|vs| vs.contains(&a.vendor()))
        })
        .collect()
}

/// The compute capability of an NVIDIA GPU by name (case-insensitive; first table entry), or
/// `None` for unknown and non-NVIDIA names.
pub fn compute_capability(gpu_name: &str) -> Option<ComputeCapability> {
    let lower = gpu_name.to_lowercase();
    KNOWN_ACCELERATORS
        .iter()
        .filter(|a| a.vendor() == AcceleratorVendor::Nvidia)
        .find(|a| a.name.to_lowercase() == lower)
        .and_then(AcceleratorInfo::compute_capability)
}

/// The vendor of a known accelerator name (case-insensitive; first table entry).
pub fn gpu_vendor(gpu_name: &str) -> Option<AcceleratorVendor> {
    let lower = gpu_name.to_lowercase();
    KNOWN_ACCELERATORS
        .iter()
        .find(|a| a.name.to_lowercase() == lower)
        .map(AcceleratorInfo::vendor)
}

/// Rounds a reported memory size (MiB) to whole GiB, snapping it to a known size of that model
/// when it is within 7% — gpuhunt's `correct_gpu_memory_gib`. Rounding is half-to-even, as
/// Python's `round`. (gpuhunt divides by zero for TPU versions, whose memory is 0; here a
/// zero-sized entry is simply never snapped to.)
pub fn correct_gpu_memory_gib(gpu_name: &str, memory_mib: f64) -> i64 {
    let memory_gib = memory_mib / 1024.0;
    let mut closest: Option<f64> = None;
    for acc in find_accelerators(Some(&[gpu_name]), None) {
        let known = f64::from(acc.memory);
        if closest.is_none_or(|c| (known - memory_gib).abs() < (c - memory_gib).abs()) {
            closest = Some(known);
        }
    }
    if let Some(c) = closest
        && c != 0.0
        && (c - memory_gib).abs() / c < 0.07
    {
        return c as i64;
    }
    memory_gib.round_ties_even() as i64
}

/// Whether an NVIDIA GPU name is a "superchip" combining the GPU with an ARM CPU (GH200,
/// GB200, …): the lowercased name starts with `g`, then `b` or `h`, then a digit.
pub fn is_nvidia_superchip(gpu_name: &str) -> bool {
    let lower = gpu_name.to_lowercase();
    let mut chars = lower.chars();
    chars.next() == Some('g')
        && matches!(chars.next(), Some('b' | 'h'))
        && chars.next().is_some_and(char::is_numeric)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn table_size_and_order() {
        assert_eq!(KNOWN_ACCELERATORS.len(), 68 + 10 + 6 + 3 + 8);
        assert_eq!(KNOWN_ACCELERATORS[0].name, "A10");
        assert_eq!(
            KNOWN_ACCELERATORS.last().map(|a| a.name),
            Some("tt-galaxy-bh")
        );
    }

    #[test]
    fn compute_capability_lookup() {
        assert_eq!(
            compute_capability("h100"),
            Some(ComputeCapability::new(9, 0))
        );
        assert_eq!(
            compute_capability("RTX4060TI"),
            Some(ComputeCapability::new(8, 9))
        );
        assert_eq!(compute_capability("MI300X"), None);
        assert_eq!(compute_capability("nope"), None);
    }

    #[test]
    fn vendor_lookup_and_parse() {
        assert_eq!(gpu_vendor("mi300x"), Some(AcceleratorVendor::Amd));
        assert_eq!(gpu_vendor("V5LITEPOD"), Some(AcceleratorVendor::Google));
        assert_eq!(
            AcceleratorVendor::parse("NVIDIA"),
            Some(AcceleratorVendor::Nvidia)
        );
        assert_eq!(AcceleratorVendor::parse("tpu"), None);
    }

    #[test]
    fn memory_correction() {
        assert_eq!(correct_gpu_memory_gib("A100", 81_920.0 * 0.98), 80);
        assert_eq!(correct_gpu_memory_gib("A100", 40_000.0), 40);
        assert_eq!(correct_gpu_memory_gib("unknown", 2.5 * 1024.0), 2);
        assert_eq!(correct_gpu_memory_gib("v5p", 16_384.0), 16);
    }

    #[test]
    fn superchips() {
        assert!(is_nvidia_superchip("GH200"));
        assert!(is_nvidia_superchip("gb10"));
        assert!(!is_nvidia_superchip("H100"));
        assert!(!is_nvidia_superchip("GB"));
    }
}
