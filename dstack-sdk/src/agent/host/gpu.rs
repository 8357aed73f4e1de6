//! Accelerator detection: the vendor from device nodes (as dstack's shim does), the GPUs from
//! `nvidia-smi` or `amd-smi`, and dstack's name normalisation (`NVIDIA H100 80GB HBM3` →
//! `H100`). Parsing is done by pure functions so that captured tool outputs can be tested.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

/// How long a vendor tool may take before detection gives up.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// An accelerator vendor, as written to `host_info.json` and `/api/instance/info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuVendor {
    /// NVIDIA.
    Nvidia,
    /// AMD.
    Amd,
    /// Intel Gaudi.
    Intel,
    /// Tenstorrent.
    Tenstorrent,
}

impl GpuVendor {
    /// The wire string (`nvidia`, `amd`, `intel`, `tenstorrent`).
    pub fn as_str(self) -> &'static str {
        match self {
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Amd => "amd",
            GpuVendor::Intel => "intel",
            GpuVendor::Tenstorrent => "tenstorrent",
        }
    }
}

/// One detected accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The vendor.
    pub vendor: GpuVendor,
    /// The name as the vendor tool reports it (e.g. `NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// NVIDIA: the GPU UUID; empty for other vendors.
    pub id: String,
    /// The position in the tool's output (`0`, `1`, …), used for `*_VISIBLE_DEVICES`.
    pub index: String,
    /// The host driver version, when known.
    pub driver_version: Option<String>,
}

impl GpuInfo {
    /// The short name dstack uses in offers and fleets (e.g. `H100`, `MI300X`).
    pub fn normalized_name(&self) -> String {
        normalize_gpu_name(self.vendor, &self.name)
    }
}

/// The vendor whose device nodes exist, checked in dstack's order: unambiguous nodes
/// (NVIDIA, NVIDIA on WSL2, Tenstorrent) before the shared ones (`/dev/kfd` for AMD,
/// `/dev/accel` for Intel Gaudi).
pub fn detect_vendor() -> Option<GpuVendor> {
    detect_vendor_with(|p| Path::new(p).exists())
}

/// [`detect_vendor`] with an injectable path check (for tests).
pub fn detect_vendor_with(exists: impl Fn(&str) -> bool) -> Option<GpuVendor> {
    if exists("/dev/nvidiactl") {
        return Some(GpuVendor::Nvidia);
    }
    if exists("/dev/dxg") && exists("/usr/lib/wsl/lib/nvidia-smi") {
        return Some(GpuVendor::Nvidia);
    }
    if exists("/dev/tenstorrent") {
        return Some(GpuVendor::Tenstorrent);
    }
    if exists("/dev/kfd") {
        return Some(GpuVendor::Amd);
    }
    if exists("/dev/accel") {
        return Some(GpuVendor::Intel);
    }
    None
}

/// Detects the host's accelerators with the vendor's tool. Hosts without one, or whose tool
/// is missing or fails, report none (logged), as dstack's shim does.
#[tracing::instrument(level = "debug")]
pub async fn detect_gpus() -> Vec<GpuInfo> {
    match detect_vendor() {
        Some(GpuVendor::Nvidia) => nvidia_gpus().await,
        Some(GpuVendor::Amd) => amd_gpus().await,
        Some(vendor) => {
            tracing::warn!(
                vendor = vendor.as_str(),
                "accelerator detection is not implemented for this vendor"
            );
            Vec::new()
        }
        // A driver without device nodes yet (or a container with the tool mounted).
        None if on_path("nvidia-smi") => nvidia_gpus().await,
        None => Vec::new(),
    }
}

/// The `nvidia-smi` query the agent runs (dstack's shim asks for the same fields).
pub const NVIDIA_SMI_ARGS: [&str; 2] = [
    "--query-gpu=name,memory.total,uuid,driver_version",
    "--format=csv,noheader,nounits",
];

async fn nvidia_gpus() -> Vec<GpuInfo> {
    match run_tool("nvidia-smi", &NVIDIA_SMI_ARGS).await {
        Some(out) => parse_nvidia_smi(&out),
        None => Vec::new(),
    }
}

async fn amd_gpus() -> Vec<GpuInfo> {
    let base = ["static", "--json", "--asic", "--vram", "--bus"];
    let with_driver = [&base[..], &["--driver"]].concat();
    // Older amd-smi versions lack `--driver`: retry without it.
    let out = match run_tool("amd-smi", &with_driver).await {
        Some(out) => Some(out),
        None => run_tool("amd-smi", &base).await,
    };
    match out.map(|o| parse_amd_smi(&o)) {
        Some(Ok(gpus)) => gpus,
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot parse amd-smi output");
            Vec::new()
        }
        None => Vec::new(),
    }
}

async fn run_tool(program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    match tokio::time::timeout(TOOL_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => {
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => {
            tracing::error!(
                program,
                status = %out.status,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "accelerator tool failed"
            );
            None
        }
        Ok(Err(e)) => {
            tracing::error!(program, error = %e, "cannot run accelerator tool");
            None
        }
        Err(_) => {
            tracing::error!(program, "accelerator tool timed out");
            None
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Parses `nvidia-smi --query-gpu=name,memory.total,uuid,driver_version
/// --format=csv,noheader,nounits` (the 3-field form without `uuid` is accepted too).
/// Malformed lines are skipped; an unparsable memory value counts as 0, as in dstack.
pub fn parse_nvidia_smi(output: &str) -> Vec<GpuInfo> {
    let mut gpus = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (name, memory, id, driver) = match fields.as_slice() {
            [name, memory, id, driver] => (*name, *memory, *id, *driver),
            [name, memory, driver] => (*name, *memory, "", *driver),
            _ => {
                tracing::warn!(line, "unexpected nvidia-smi line");
                continue;
            }
        };
        gpus.push(GpuInfo {
            vendor: GpuVendor::Nvidia,
            name: name.to_string(),
            memory_mib: memory.parse().unwrap_or(0),
            id: id.to_string(),
            index: gpus.len().to_string(),
            driver_version: normalize_driver_version(driver),
        });
    }
    gpus
}

#[derive(Deserialize)]
struct AmdGpu {
    #[serde(default)]
    asic: AmdAsic,
    #[serde(default)]
    vram: AmdVram,
    #[serde(default)]
    driver: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct AmdAsic {
    #[serde(default)]
    market_name: String,
}

#[derive(Deserialize, Default)]
struct AmdVram {
    #[serde(default)]
    size: AmdVramSize,
}

#[derive(Deserialize, Default)]
struct AmdVramSize {
    #[serde(default)]
    value: serde_json::Value,
}

/// Parses `amd-smi static --json --asic --vram --bus [--driver]`: a bare array (ROCm 6) or
/// `{"gpu_data": [...]}` (ROCm 7). VRAM `size.value` is in MB (MiB in practice).
pub fn parse_amd_smi(output: &str) -> Result<Vec<GpuInfo>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        Flat(Vec<AmdGpu>),
        Wrapped { gpu_data: Vec<AmdGpu> },
    }
    let gpus = match serde_json::from_str::<Shape>(output)? {
        Shape::Flat(g) | Shape::Wrapped { gpu_data: g } => g,
    };
    Ok(gpus
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let memory_mib = match &g.vram.size.value {
                serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
                serde_json::Value::String(s) => s.trim().parse().unwrap_or(0),
                _ => 0,
            };
            let driver_version = g.driver.as_ref().and_then(|d| {
                ["version", "driver_version"].iter().find_map(|k| {
                    d.get(*k)
                        .and_then(|v| v.as_str())
                        .and_then(normalize_driver_version)
                })
            });
            GpuInfo {
                vendor: GpuVendor::Amd,
                name: g.asic.market_name,
                memory_mib,
                id: String::new(),
                index: i.to_string(),
                driver_version,
            }
        })
        .collect())
}

/// Drops the placeholders vendor tools print for unavailable fields (`N/A`, `[Not Supported]`).
pub fn normalize_driver_version(value: &str) -> Option<String> {
    let v = value.trim();
    match v.to_ascii_uppercase().as_str() {
        "" | "N/A" | "[N/A]" | "UNKNOWN" | "[UNKNOWN]" | "[NOT SUPPORTED]" | "[NOT AVAILABLE]" => {
            None
        }
        _ => Some(v.to_string()),
    }
}

/// dstack's per-vendor short name for a tool-reported name.
pub fn normalize_gpu_name(vendor: GpuVendor, name: &str) -> String {
    match vendor {
        GpuVendor::Nvidia => normalize_nvidia_gpu_name(name),
        GpuVendor::Amd => normalize_amd_gpu_name(name),
        GpuVendor::Intel => normalize_intel_accelerator_name(name),
        GpuVendor::Tenstorrent => name.to_string(),
    }
}

static NVIDIA_RTX_A: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"(A\d+)").ok());
static NVIDIA_SUPER: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new(r"(?i) ?SUPER").ok());
static NVIDIA_MODEL: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"([AHLPTV]\d+\w*)").ok());
static AMD_INSTINCT: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?i-u)^(?:AMD )?(?:Instinct )?(?P<name>MI\d{1,3}[A-Z]?(?:-\w+)?)(?:\s|$)").ok()
});

/// `nvidia-smi` name → dstack's short name, e.g. `NVIDIA H100 80GB HBM3` → `H100`,
/// `NVIDIA RTX A6000` → `A6000`, `NVIDIA GeForce RTX 4090` → `RTX4090`.
pub fn normalize_nvidia_gpu_name(name: &str) -> String {
    let mut name = name
        .replace("NVIDIA ", "")
        .replace("Tesla ", "")
        .replace("Quadro ", "")
        .replace("GeForce ", "");
    if name.contains("GH200") {
        return "GH200".into();
    }
    if name.contains("RTX A") {
        name = name.replace("RTX A", "A");
        if let Some(m) = NVIDIA_RTX_A.as_ref().and_then(|re| re.find(&name)) {
            return m.as_str().to_string();
        }
        return name.replace(' ', "");
    }
    name = name.replace(" Ti", "Ti");
    if let Some(re) = NVIDIA_SUPER.as_ref() {
        name = re.replace_all(&name, "SUPER").into_owned();
    }
    name = name
        .replace(" NVL", "NVL")
        .replace(" Ada Generation", "Ada")
        .replace("RTX ", "RTX");
    if let Some(m) = NVIDIA_MODEL.as_ref().and_then(|re| re.find(&name)) {
        return m.as_str().to_string();
    }
    name.replace(' ', "")
}

/// `amd-smi` market name → dstack's short name, e.g. `AMD Instinct MI300X` → `MI300X`.
pub fn normalize_amd_gpu_name(name: &str) -> String {
    let short = AMD_INSTINCT
        .as_ref()
        .and_then(|re| re.captures(name))
        .and_then(|c| c.name("name"))
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| name.to_string());
    if short == "MI300X-O" {
        "MI300X".into()
    } else {
        short
    }
}

/// `hl-smi` model → market name, e.g. `HL-225` → `Gaudi2`.
pub fn normalize_intel_accelerator_name(name: &str) -> String {
    const MODELS: [(&str, &str); 4] = [
        ("HL-205", "Gaudi"),
        ("HL-225", "Gaudi2"),
        ("HL-325", "Gaudi3"),
        ("HL-338", "Gaudi3"),
    ];
    MODELS
        .iter()
        .find(|(model, _)| name.starts_with(model))
        .map(|(_, market)| market.to_string())
        .unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from an 8×H100 host (uuids shortened).
    const NVIDIA_SMI_H100: &str = "\
NVIDIA H100 80GB HBM3, 81559, GPU-2b79666e-d81f-f3f8-fd47-9903f118c3f5, 570.86.15
NVIDIA H100 80GB HBM3, 81559, GPU-7c1e0f2a-0000-1111-2222-333344445555, 570.86.15
";

    #[test]
    fn parses_nvidia_smi() {
        let gpus = parse_nvidia_smi(NVIDIA_SMI_H100);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpus[0].memory_mib, 81559);
        assert_eq!(gpus[0].id, "GPU-2b79666e-d81f-f3f8-fd47-9903f118c3f5");
        assert_eq!(gpus[1].index, "1");
        assert_eq!(gpus[0].driver_version.as_deref(), Some("570.86.15"));
        assert_eq!(gpus[0].normalized_name(), "H100");
    }

    #[test]
    fn parses_three_field_nvidia_smi_and_placeholders() {
        let gpus =
            parse_nvidia_smi("Tesla T4, 15360, [N/A]\n\ngarbage\nNVIDIA A10G, [N/A], 535.1\n");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].driver_version, None);
        assert_eq!(gpus[0].normalized_name(), "T4");
        assert_eq!(gpus[1].memory_mib, 0);
        assert_eq!(gpus[1].normalized_name(), "A10G");
    }

    #[test]
    fn parses_amd_smi_both_shapes() {
        let rocm6 = r#"[{"gpu":0,"asic":{"market_name":"AMD Instinct MI300X","vendor_id":"0x1002"},
            "vram":{"type":"HBM","size":{"value":196592,"unit":"MB"}},"bus":{"bdf":"0000:0c:00.0"},
            "driver":{"name":"amdgpu","version":"6.10.5"}}]"#;
        let gpus = parse_amd_smi(rocm6).unwrap();
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].memory_mib, 196592);
        assert_eq!(gpus[0].driver_version.as_deref(), Some("6.10.5"));
        assert_eq!(gpus[0].normalized_name(), "MI300X");

        let rocm7 = r#"{"gpu_data":[{"gpu":0,"asic":{"market_name":"MI300X-O"},
            "vram":{"size":{"value":"196592","unit":"MB"}},"bus":{"bdf":"0000:0c:00.0"},
            "driver":{"driver_version":"N/A"}},
            {"gpu":1,"asic":{"market_name":"AMD Instinct MI325X"},"vram":{"size":{"value":262128}}}]}"#;
        let gpus = parse_amd_smi(rocm7).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].normalized_name(), "MI300X");
        assert_eq!(gpus[0].memory_mib, 196592);
        assert_eq!(gpus[0].driver_version, None);
        assert_eq!(gpus[1].normalized_name(), "MI325X");
        assert!(parse_amd_smi("not json").is_err());
    }

    #[test]
    fn nvidia_names_like_dstack() {
        for (raw, short) in [
            ("NVIDIA H100 80GB HBM3", "H100"),
            ("NVIDIA H100 NVL", "H100NVL"),
            ("NVIDIA A100-SXM4-80GB", "A100"),
            ("NVIDIA RTX A6000", "A6000"),
            ("NVIDIA GeForce RTX 4090", "RTX4090"),
            ("NVIDIA GeForce RTX 3080 Ti", "RTX3080Ti"),
            ("NVIDIA GeForce RTX 4070 SUPER", "RTX4070SUPER"),
            ("NVIDIA RTX 6000 Ada Generation", "RTX6000Ada"),
            ("NVIDIA L40S", "L40S"),
            ("Tesla V100-SXM2-16GB", "V100"),
            ("NVIDIA GH200 480GB", "GH200"),
            ("Quadro RTX 8000", "RTX8000"),
        ] {
            assert_eq!(normalize_nvidia_gpu_name(raw), short, "{raw}");
        }
    }

    #[test]
    fn other_vendor_names() {
        assert_eq!(
            normalize_amd_gpu_name("AMD Instinct MI250X/MI250"),
            "AMD Instinct MI250X/MI250"
        );
        assert_eq!(normalize_amd_gpu_name("Instinct MI210"), "MI210");
        assert_eq!(
            normalize_amd_gpu_name("Radeon Pro W7900"),
            "Radeon Pro W7900"
        );
        assert_eq!(normalize_intel_accelerator_name("HL-225"), "Gaudi2");
        assert_eq!(normalize_intel_accelerator_name("HL-338 PCIe"), "Gaudi3");
    }

    #[test]
    fn vendor_order() {
        let has = |set: &'static [&'static str]| move |p: &str| set.contains(&p);
        assert_eq!(
            detect_vendor_with(has(&["/dev/kfd", "/dev/nvidiactl"])),
            Some(GpuVendor::Nvidia)
        );
        assert_eq!(
            detect_vendor_with(has(&["/dev/kfd", "/dev/accel"])),
            Some(GpuVendor::Amd)
        );
        assert_eq!(
            detect_vendor_with(has(&["/dev/accel"])),
            Some(GpuVendor::Intel)
        );
        assert_eq!(detect_vendor_with(has(&["/dev/dxg"])), None);
        assert_eq!(detect_vendor_with(has(&[])), None);
    }
}
