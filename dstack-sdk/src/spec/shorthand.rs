//! The resource shorthand grammar: ranges, memory sizes, compute capabilities, and the `cpu`,
//! `gpu` and `disk` specs, plus `ResourcesSpec` and `Requirements` parsing.
//!
//! | input | result |
//! |---|---|
//! | `"2.."`, `"..8"`, `"1..4"`, `4` | `Range{min, max}` (a scalar is `N..N`) |
//! | `"16GB"`, `"512MB"`, `"1TB"`, `24` | `Memory` in GB (TB = ×1024, MB = ÷1024) |
//! | `"A100:80GB:2"` | GPU name `[A100]`, memory `80..80`, count `2..2` |
//! | `"nvidia:16GB..:1..4"` | GPU vendor nvidia, memory `16..`, count `1..4` |
//! | `"arm:8"`, `"2..:ARM"` | CPU arch and count |
//! | `"100GB.."` | disk size `100..` |

use serde_json::Value;

use super::error::SpecError;
use super::lax::{Cx, FromValue, py_float, py_float_repr, py_int, short};
use crate::models::common::{Memory, Range};
use crate::models::profiles::BackendProfileOptions;
use crate::models::resources::{
    AcceleratorVendor, CPUSpec, ComputeCapability, CpuArch, DiskSpec, GPUSpec, Requirements,
    ResourcesSpec,
};

/// A type that can be a [`Range`] bound.
pub trait RangeBound: Copy + PartialOrd + std::fmt::Display {
    /// Parses one bound.
    fn bound(v: &Value, cx: &Cx) -> Result<Self, SpecError>;
}

impl RangeBound for i64 {
    fn bound(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        cx.int(v)
    }
}

impl RangeBound for Memory {
    fn bound(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        memory_from_value(v, cx)
    }
}

/// Parses a range: `{min, max}`, a scalar, or `"a..b"` / `"a.."` / `"..b"`.
pub fn range_from_value<T: RangeBound>(v: &Value, cx: &Cx) -> Result<Range<T>, SpecError> {
    let (min, max) = match v {
        Value::String(s) if s.contains("..") => {
            let compact = s.replace(' ', "");
            let parts: Vec<&str> = compact.split("..").collect();
            if parts.len() != 2 {
                return cx.fail(format!("Invalid range: {s}"));
            }
            let side = |p: &str| {
                if p.is_empty() {
                    Value::Null
                } else {
                    Value::String(p.to_string())
                }
            };
            (side(parts[0]), side(parts[1]))
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) => (v.clone(), v.clone()),
        Value::Object(_) => {
            let mut o = cx.obj(v, "Range")?;
            let min = o.raw("min").cloned().unwrap_or(Value::Null);
            let max = o.raw("max").cloned().unwrap_or(Value::Null);
            o.finish()?;
            (min, max)
        }
        _ => {
            return cx.fail(format!(
                "Input should be a valid dictionary or instance of Range, got {}",
                short(v)
            ));
        }
    };
    let min = if min.is_null() {
        None
    } else {
        Some(T::bound(&min, &cx.at("min"))?)
    };
    let max = if max.is_null() {
        None
    } else {
        Some(T::bound(&max, &cx.at("max"))?)
    };
    match (min, max) {
        (None, None) => cx.fail("Invalid empty range: .."),
        (Some(a), Some(b)) if a > b => cx.fail(format!("Invalid range order: {a}..{b}")),
        _ => Ok(Range { min, max }),
    }
}

impl FromValue for Range<i64> {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        range_from_value(v, cx)
    }
}

impl FromValue for Range<Memory> {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        range_from_value(v, cx)
    }
}

/// Parses a memory size string: `"16GB"`, `"512MB"`, `"1.5TB"`, `"8"` (GB); case and spaces
/// are ignored.
pub fn parse_memory(s: &str) -> Result<Memory, String> {
    let t = s.replace(' ', "").to_lowercase();
    let (num, factor) = if let Some(x) = t.strip_suffix("tb") {
        (x, 1024.0)
    } else if let Some(x) = t.strip_suffix("gb") {
        (x, 1.0)
    } else if let Some(x) = t.strip_suffix("mb") {
        (x, 1.0 / 1024.0)
    } else {
        (t.as_str(), 1.0)
    };
    match py_float(num) {
        Some(x) if factor == 1.0 => Ok(Memory(x)),
        Some(x) if factor > 1.0 => Ok(Memory(x * factor)),
        Some(x) => Ok(Memory(x / 1024.0)),
        None => Err(format!("could not convert string to float: {num:?}")),
    }
}

/// Parses a memory value: a number of GB or a string with a unit.
pub fn memory_from_value(v: &Value, cx: &Cx) -> Result<Memory, SpecError> {
    match v {
        Value::Bool(b) => Ok(Memory(if *b { 1.0 } else { 0.0 })),
        Value::Number(n) => n
            .as_f64()
            .map(Memory)
            .ok_or_else(|| cx.err("Invalid memory size")),
        Value::String(s) => parse_memory(s).map_err(|e| cx.err(e)),
        _ => cx.fail(format!("Invalid memory size: {}", short(v))),
    }
}

impl FromValue for Memory {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        memory_from_value(v, cx)
    }
}

/// Parses a range shorthand of integers, e.g. `"2.."` or `"1..4"`.
pub fn parse_range_int(s: &str) -> Result<Range<i64>, SpecError> {
    range_from_value(&Value::String(s.to_string()), &Cx::strict())
}

/// Parses a range shorthand of memory sizes, e.g. `"16GB..32"` or `"1TB.."`.
pub fn parse_memory_range(s: &str) -> Result<Range<Memory>, SpecError> {
    range_from_value(&Value::String(s.to_string()), &Cx::strict())
}

fn py_int_of_value(v: &Value) -> Option<i64> {
    match v {
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            // Python's int(float) truncates toward zero.
            #[allow(clippy::cast_possible_truncation)]
            (f.is_finite() && f.abs() < 9.2e18).then(|| f.trunc() as i64)
        }),
        Value::String(s) => py_int(s),
        _ => None,
    }
}

/// Parses a compute capability: `"7.5"`, `7.5`, or `[7, 5]`.
pub fn compute_capability_from_value(v: &Value, cx: &Cx) -> Result<ComputeCapability, SpecError> {
    let bad = || cx.err(format!("Invalid compute capability: {}", short(v)));
    let parts: Vec<Value> = match v {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            let s = n.as_f64().map(py_float_repr).unwrap_or_default();
            s.trim()
                .split('.')
                .map(|p| Value::String(p.to_string()))
                .collect()
        }
        Value::String(s) => s
            .trim()
            .split('.')
            .map(|p| Value::String(p.to_string()))
            .collect(),
        Value::Array(items) => items.clone(),
        _ => return Err(bad()),
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let major = py_int_of_value(&parts[0]).ok_or_else(bad)?;
    let minor = py_int_of_value(&parts[1]).ok_or_else(bad)?;
    Ok(ComputeCapability(major, minor))
}

impl FromValue for ComputeCapability {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        compute_capability_from_value(v, cx)
    }
}

/// Parses a compute capability string such as `"8.0"`.
pub fn parse_compute_capability(s: &str) -> Result<ComputeCapability, SpecError> {
    compute_capability_from_value(&Value::String(s.to_string()), &Cx::strict())
}

fn cpu_arch_from_str(s: &str) -> Option<CpuArch> {
    CpuArch::from_wire(&s.to_lowercase())
}

/// Parses a CPU shorthand such as `"arm:8"`, `"2..:ARM"`, `"x86:4..16"` or `"8"`.
pub fn parse_cpu_spec(s: &str) -> Result<CPUSpec, SpecError> {
    cpu_from_str(s, &Cx::strict())
}

fn cpu_from_str(s: &str, cx: &Cx) -> Result<CPUSpec, SpecError> {
    let compact = s.replace(' ', "");
    let mut arch = None;
    let mut count = None;
    for token in compact.split(':') {
        if token.is_empty() {
            return cx.fail(format!("CPU spec contains empty token: {s}"));
        }
        if token.contains("..") || token.chars().all(|c| c.is_ascii_digit()) {
            if count.is_some() {
                return cx.fail(format!("CPU spec count conflict: {s}"));
            }
            count = Some(token.to_string());
        } else {
            let Some(a) = cpu_arch_from_str(token) else {
                return cx.fail(format!("Invalid CPU architecture: {s}"));
            };
            if arch.is_some() {
                return cx.fail(format!("CPU spec arch conflict: {s}"));
            }
            arch = Some(a);
        }
    }
    let count = match count {
        Some(c) => range_from_value(&Value::String(c), &cx.at("count"))?,
        None => CPUSpec::default().count,
    };
    Ok(CPUSpec { arch, count })
}

/// Parses a CPU spec from any dstack input form.
pub fn cpu_from_value(v: &Value, cx: &Cx) -> Result<CPUSpec, SpecError> {
    match v {
        Value::Bool(b) => cpu_from_str(if *b { "True" } else { "False" }, cx),
        Value::Number(n) if n.is_i64() || n.is_u64() => cpu_from_str(&n.to_string(), cx),
        Value::String(s) => cpu_from_str(s, cx),
        Value::Object(m) if !m.is_empty() && m.keys().all(|k| k == "min" || k == "max") => {
            Ok(CPUSpec {
                arch: None,
                count: range_from_value(v, &cx.at("count"))?,
            })
        }
        Value::Object(_) => {
            let mut o = cx.obj(v, "CPUSpec")?;
            let arch = o.opt("arch", |v, cx| match v {
                Value::String(s) => cpu_arch_from_str(s)
                    .ok_or_else(|| cx.err(format!("Input should be 'x86' or 'arm', got {s:?}"))),
                _ => cx.fail(format!("Input should be 'x86' or 'arm', got {}", short(v))),
            })?;
            let count = o.or("count", || CPUSpec::default().count, range_from_value)?;
            o.finish()?;
            Ok(CPUSpec { arch, count })
        }
        _ => cx.fail(format!(
            "Input should be a valid dictionary or instance of CPUSpec, got {}",
            short(v)
        )),
    }
}

impl FromValue for CPUSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        cpu_from_value(v, cx)
    }
}

/// A vendor name or alias (`tpu` = google, `tt` = tenstorrent), case-insensitive.
pub fn vendor_from_str(s: &str) -> Option<AcceleratorVendor> {
    match s.to_lowercase().as_str() {
        "tpu" => Some(AcceleratorVendor::Google),
        "tt" => Some(AcceleratorVendor::Tenstorrent),
        other => AcceleratorVendor::from_wire(other),
    }
}

/// Parses a GPU shorthand such as `"A100:80GB:2"`, `"H100,H200:8"`, `"amd:MI300X"`,
/// `"nvidia:16GB..:1..4"`, `"24GB.."` or `"8"`.
///
/// ```
/// let gpu = dstack_sdk::spec::parse_gpu_spec("A100:80GB:2").unwrap();
/// assert_eq!(gpu.name, Some(vec!["A100".to_string()]));
/// assert_eq!(gpu.count.min, Some(2));
/// assert_eq!(gpu.memory.unwrap().min.unwrap().gb(), 80.0);
/// ```
pub fn parse_gpu_spec(s: &str) -> Result<GPUSpec, SpecError> {
    gpu_from_str(s, &Cx::strict())
}

fn gpu_from_str(s: &str, cx: &Cx) -> Result<GPUSpec, SpecError> {
    let compact = s.replace(' ', "");
    let mut vendor = None;
    let mut names: Option<Vec<String>> = None;
    let mut memory: Option<String> = None;
    let mut count: Option<String> = None;
    for token in compact.split(':') {
        let Some(first) = token.chars().next() else {
            return cx.fail(format!("GPU spec contains empty token: {s}"));
        };
        if let Some(v) = vendor_from_str(token) {
            if vendor.is_some() {
                return cx.fail(format!("GPU spec vendor conflict: {s}"));
            }
            vendor = Some(v);
        } else if first.is_alphabetic() {
            if names.is_some() {
                return cx.fail(format!("GPU spec name conflict: {s}"));
            }
            let list: Vec<String> = token.split(',').map(str::to_string).collect();
            if list.iter().any(String::is_empty) {
                return cx.fail(format!("GPU name can not be empty: {s}"));
            }
            names = Some(list);
        } else if token.chars().any(char::is_alphabetic) {
            if memory.is_some() {
                return cx.fail(format!("GPU spec memory conflict: {s}"));
            }
            memory = Some(token.to_string());
        } else {
            if count.is_some() {
                return cx.fail(format!("GPU spec count conflict: {s}"));
            }
            count = Some(token.to_string());
        }
    }
    let count = match count {
        Some(c) => range_from_value(&Value::String(c), &cx.at("count"))?,
        None => GPUSpec::default().count,
    };
    let memory = match memory {
        Some(m) => Some(range_from_value(&Value::String(m), &cx.at("memory"))?),
        None => None,
    };
    Ok(GPUSpec {
        vendor,
        name: names.map(strip_tpu_prefixes),
        count,
        memory,
        total_memory: None,
        compute_capability: None,
    })
}

/// Removes the deprecated `tpu-` prefix from GPU names (`tpu-v5e-8` → `v5e-8`).
fn strip_tpu_prefixes(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .map(|n| match n.strip_prefix("tpu-") {
            Some(rest) => rest.to_string(),
            None => n,
        })
        .collect()
}

fn gpu_names_from_value(v: &Value, cx: &Cx) -> Result<Vec<String>, SpecError> {
    let items: Vec<Value> = match v {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    let names = cx.string_list(&Value::Array(items))?;
    Ok(strip_tpu_prefixes(names))
}

/// Parses a GPU spec from any dstack input form.
pub fn gpu_from_value(v: &Value, cx: &Cx) -> Result<GPUSpec, SpecError> {
    match v {
        Value::Bool(b) => gpu_from_str(if *b { "True" } else { "False" }, cx),
        Value::Number(n) if n.is_i64() || n.is_u64() => gpu_from_str(&n.to_string(), cx),
        Value::String(s) => gpu_from_str(s, cx),
        Value::Object(_) => {
            let mut o = cx.obj(v, "GPUSpec")?;
            let vendor = o.opt("vendor", |v, cx| match v {
                Value::String(s) => vendor_from_str(s)
                    .ok_or_else(|| cx.err(format!("Unsupported GPU vendor: {s:?}"))),
                _ => cx.fail(format!("Unsupported type: {}", short(v))),
            })?;
            let name = o.opt("name", gpu_names_from_value)?;
            let count = o.or("count", || GPUSpec::default().count, range_from_value)?;
            let memory = o.opt("memory", range_from_value)?;
            let total_memory = o.opt("total_memory", range_from_value)?;
            let compute_capability = o.opt("compute_capability", compute_capability_from_value)?;
            o.finish()?;
            Ok(GPUSpec {
                vendor,
                name,
                count,
                memory,
                total_memory,
                compute_capability,
            })
        }
        _ => cx.fail(format!(
            "Input should be a valid dictionary or instance of GPUSpec, got {}",
            short(v)
        )),
    }
}

impl FromValue for GPUSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        gpu_from_value(v, cx)
    }
}

/// Parses a disk spec: a size or size range (`"100GB.."`), or `{size}`.
pub fn disk_from_value(v: &Value, cx: &Cx) -> Result<DiskSpec, SpecError> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(DiskSpec {
            size: range_from_value(v, &cx.at("size"))?,
        }),
        Value::Object(_) => {
            let mut o = cx.obj(v, "DiskSpec")?;
            let size = o.req("size", range_from_value)?;
            o.finish()?;
            Ok(DiskSpec { size })
        }
        _ => cx.fail(format!(
            "Input should be a valid dictionary or instance of DiskSpec, got {}",
            short(v)
        )),
    }
}

impl FromValue for DiskSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        disk_from_value(v, cx)
    }
}

/// Parses a disk shorthand such as `"100GB.."` or `"50GB..1TB"`.
pub fn parse_disk_spec(s: &str) -> Result<DiskSpec, SpecError> {
    disk_from_value(&Value::String(s.to_string()), &Cx::strict())
}

/// Parses a `resources` section.
pub fn resources_from_value(v: &Value, cx: &Cx) -> Result<ResourcesSpec, SpecError> {
    let d = ResourcesSpec::default();
    let mut o = cx.obj(v, "ResourcesSpec")?;
    let cpu = o.or("cpu", || d.cpu.clone(), cpu_from_value)?;
    let memory = o.or("memory", || d.memory, range_from_value)?;
    let shm_size = o.opt("shm_size", memory_from_value)?;
    let gpu = o.or(
        "gpu",
        || d.gpu.clone(),
        |v, cx| match v {
            Value::Null => Ok(None),
            _ => gpu_from_value(v, cx).map(Some),
        },
    )?;
    let disk = o.or(
        "disk",
        || d.disk.clone(),
        |v, cx| match v {
            Value::Null => Ok(None),
            _ => disk_from_value(v, cx).map(Some),
        },
    )?;
    o.finish()?;
    Ok(ResourcesSpec {
        cpu,
        memory,
        shm_size,
        gpu,
        disk,
    })
}

impl FromValue for ResourcesSpec {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        resources_from_value(v, cx)
    }
}

impl FromValue for Requirements {
    fn from_value(v: &Value, cx: &Cx) -> Result<Self, SpecError> {
        let mut o = cx.obj(v, "Requirements")?;
        let resources = o.req("resources", resources_from_value)?;
        let max_price = o.opt("max_price", |v, cx| cx.float(v))?;
        let spot = o.opt("spot", |v, cx| cx.bool(v))?;
        let reservation = o.opt("reservation", |v, cx| cx.string(v))?;
        let multinode = o.opt("multinode", |v, cx| cx.bool(v))?;
        let backend_options = o.opt("backend_options", |v, cx| {
            cx.list(v, BackendProfileOptions::from_value)
        })?;
        o.finish()?;
        Ok(Requirements {
            resources,
            max_price,
            spot,
            reservation,
            multinode,
            backend_options,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gpu(s: &str) -> GPUSpec {
        parse_gpu_spec(s).unwrap()
    }

    #[test]
    fn gpu_shorthand_table() {
        // offers.md §1.3, as dstack 0.22.5 parses them.
        let g = gpu("24GB..");
        assert_eq!((g.vendor, g.name.clone()), (None, None));
        assert_eq!(g.count, Range::at_least(1));
        assert_eq!(g.memory, Some(Range::at_least(Memory(24.0))));

        let g = gpu("A100:80GB:2");
        assert_eq!(g.name, Some(vec!["A100".to_string()]));
        assert_eq!(g.count, Range::exactly(2));
        assert_eq!(g.memory, Some(Range::exactly(Memory(80.0))));

        let g = gpu("1..");
        assert_eq!(g.count, Range::at_least(1));
        assert_eq!(g.memory, None);

        let g = gpu("H100,H200:8");
        assert_eq!(g.name, Some(vec!["H100".to_string(), "H200".to_string()]));
        assert_eq!(g.count, Range::exactly(8));

        let g = gpu("tpu-v5e-8");
        assert_eq!(g.name, Some(vec!["v5e-8".to_string()]));
        assert_eq!(g.vendor, None);

        let g = gpu("amd:MI300X");
        assert_eq!(g.vendor, Some(AcceleratorVendor::Amd));
        assert_eq!(g.name, Some(vec!["MI300X".to_string()]));
        assert_eq!(g.count, Range::at_least(1));

        let g = gpu("nvidia:16GB..:1..4");
        assert_eq!(g.vendor, Some(AcceleratorVendor::Nvidia));
        assert_eq!(g.count, Range::new(Some(1), Some(4)));
        assert_eq!(g.memory, Some(Range::at_least(Memory(16.0))));

        assert_eq!(gpu("8").count, Range::exactly(8));
        assert_eq!(gpu("0").count, Range::exactly(0));
        assert_eq!(gpu("tpu:v5e-8").vendor, Some(AcceleratorVendor::Google));
        assert_eq!(gpu("TT:n150").vendor, Some(AcceleratorVendor::Tenstorrent));
    }

    #[test]
    fn gpu_shorthand_errors() {
        for bad in [
            "A100,:2",
            "A100:",
            "A100:H100",
            "nvidia:amd",
            "2:4",
            "24GB:48GB",
            "..",
            "",
        ] {
            assert!(parse_gpu_spec(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn cpu_shorthand() {
        let c = parse_cpu_spec("arm:8").unwrap();
        assert_eq!((c.arch, c.count), (Some(CpuArch::Arm), Range::exactly(8)));
        let c = parse_cpu_spec("2..:ARM").unwrap();
        assert_eq!((c.arch, c.count), (Some(CpuArch::Arm), Range::at_least(2)));
        let c = parse_cpu_spec("x86:4..16").unwrap();
        assert_eq!(
            (c.arch, c.count),
            (Some(CpuArch::X86), Range::new(Some(4), Some(16)))
        );
        let c = parse_cpu_spec("x86").unwrap();
        assert_eq!(c.count, Range::at_least(2));
        for bad in ["arm:", "mips:4", "arm:x86", "2:4", "2.5"] {
            assert!(parse_cpu_spec(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn ranges_and_memory() {
        assert_eq!(parse_range_int("2..").unwrap(), Range::at_least(2));
        assert_eq!(
            parse_range_int(" 1 .. 4 ").unwrap(),
            Range::new(Some(1), Some(4))
        );
        assert_eq!(parse_range_int("..8").unwrap(), Range::new(None, Some(8)));
        for bad in ["..", "4..1", "1...3", "1..2..3", "x"] {
            assert!(parse_range_int(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(parse_memory("1TB").unwrap(), Memory(1024.0));
        assert_eq!(parse_memory("512MB").unwrap(), Memory(0.5));
        assert_eq!(parse_memory("8 gb").unwrap(), Memory(8.0));
        assert!(parse_memory("GB").is_err());
        let r = parse_memory_range("16GB..32").unwrap();
        assert_eq!(r, Range::new(Some(Memory(16.0)), Some(Memory(32.0))));
        assert_eq!(
            parse_disk_spec("100GB..").unwrap().size,
            Range::at_least(Memory(100.0))
        );
    }

    #[test]
    fn compute_capability_forms() {
        let cx = Cx::strict();
        let cc = |v: Value| compute_capability_from_value(&v, &cx);
        assert_eq!(
            cc(serde_json::json!("7.5")).unwrap(),
            ComputeCapability(7, 5)
        );
        assert_eq!(cc(serde_json::json!(7.5)).unwrap(), ComputeCapability(7, 5));
        assert_eq!(
            cc(serde_json::json!([8, 0])).unwrap(),
            ComputeCapability(8, 0)
        );
        assert!(cc(serde_json::json!(8)).is_err());
        assert!(cc(serde_json::json!("7.5.1")).is_err());
    }
}
