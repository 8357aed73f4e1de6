//! Host facts in dstack's `host_info.json` shape, which the server reads over SSH when it adds
//! an SSH-fleet host: `{gpu_vendor, gpu_name, gpu_memory (MiB), gpu_count, addresses[],
//! disk_size (bytes), cpus, memory (bytes)}`.

pub mod gpu;
pub mod net;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use gpu::{GpuInfo, GpuVendor};

use super::error::{AgentError, AgentResult};

/// The file name the agent writes into its home directory.
pub const HOST_INFO_FILE: &str = "host_info.json";

/// `host_info.json`, field for field as dstack's shim writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `nvidia`, `amd`, `intel`, `tenstorrent`, or `none`.
    pub gpu_vendor: String,
    /// The first GPU's name as the vendor tool reports it (the server normalises it).
    pub gpu_name: String,
    /// The first GPU's memory, MiB.
    pub gpu_memory: u64,
    /// The number of GPUs.
    pub gpu_count: u32,
    /// Non-loopback addresses in CIDR form.
    pub addresses: Vec<String>,
    /// Free disk space under the agent home, bytes (dstack reports available, not total).
    pub disk_size: u64,
    /// Logical CPUs available to the agent.
    pub cpus: u32,
    /// Total memory, bytes.
    pub memory: u64,
}

/// Everything the agent learns about its host at startup.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The summary written to `host_info.json`.
    pub info: HostInfo,
    /// The detected accelerators.
    pub gpus: Vec<GpuInfo>,
}

/// Collects the host facts; `disk_path` is where free space is measured (the agent home).
/// Facts that cannot be read are logged and reported as zero/empty.
#[tracing::instrument(level = "debug")]
pub async fn collect(disk_path: &Path) -> HostFacts {
    let gpus = gpu::detect_gpus().await;
    let addresses = net::addresses().await;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo_total(&t))
        .unwrap_or_else(|| {
            tracing::warn!("cannot read total memory from /proc/meminfo");
            0
        });
    let cpus = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| parse_cpus_allowed(&t))
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u32)
        })
        .unwrap_or(1);
    let disk_size = disk_available(disk_path).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot measure free disk space");
        0
    });
    let first = gpus.first();
    let info = HostInfo {
        gpu_vendor: first
            .map(|g| g.vendor.as_str())
            .unwrap_or("none")
            .to_string(),
        gpu_name: first.map(|g| g.name.clone()).unwrap_or_default(),
        gpu_memory: first.map(|g| g.memory_mib).unwrap_or(0),
        gpu_count: gpus.len() as u32,
        addresses,
        disk_size,
        cpus,
        memory,
    };
    HostFacts { info, gpus }
}

/// Writes `host_info.json` into `dir` atomically (replacing a stale one).
pub fn write_host_info(dir: &Path, info: &HostInfo) -> AgentResult<()> {
    let path = dir.join(HOST_INFO_FILE);
    let body = serde_json::to_vec(info).map_err(|e| AgentError::json("host_info.json", e))?;
    crate::agent::fsutil::write_atomic(&path, &body)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        let factor = match parts.next() {
            Some("kB") | Some("KB") | Some("kb") => 1024,
            Some("mB") | Some("MB") => 1024 * 1024,
            None => 1,
            Some(_) => return None,
        };
        Some(value * factor)
    })
}

/// The number of CPUs in `Cpus_allowed_list` of `/proc/self/status` (the affinity mask,
/// what Go's `runtime.NumCPU` counts), e.g. `0-3,8-11` → 8.
pub fn parse_cpus_allowed(status: &str) -> Option<u32> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list.trim())
}

/// Counts a kernel CPU list such as `0-3,8-11` or `5`.
pub fn parse_cpu_list(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u32>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// Free space available to unprivileged users on the file system holding `path`, bytes.
pub fn disk_available(path: &Path) -> AgentResult<u64> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| AgentError::io("statvfs", path, std::io::Error::from(e)))?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24605352 kB\nMemFree:         1234 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24605352 * 1024));
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(8));
        assert_eq!(parse_cpu_list("5"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(
            parse_cpus_allowed("Name:\tx\nCpus_allowed_list:\t0-15\n"),
            Some(16)
        );
    }

    #[test]
    fn host_info_shape() {
        let info = HostInfo {
            gpu_vendor: "nvidia".into(),
            gpu_name: "NVIDIA H100 80GB HBM3".into(),
            gpu_memory: 81559,
            gpu_count: 8,
            addresses: vec!["10.0.0.5/24".into()],
            disk_size: 1 << 40,
            cpus: 208,
            memory: 1 << 41,
        };
        let v = serde_json::to_value(&info).unwrap();
        for key in [
            "gpu_vendor",
            "gpu_name",
            "gpu_memory",
            "gpu_count",
            "addresses",
            "disk_size",
            "cpus",
            "memory",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn disk_space_of_tmp() {
        assert!(disk_available(Path::new("/tmp")).unwrap() > 0);
    }
}
