//! Offers and hardware: [`Resources`], [`Gpu`], [`Disk`], [`InstanceType`], [`InstanceOffer`],
//! [`InstanceOfferWithAvailability`] and [`InstanceAvailability`].

use serde::{Deserialize, Deserializer, Serialize};

use crate::models::backends::BackendType;
use crate::models::resources::{AcceleratorVendor, CpuArch};

/// One accelerator of an instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Gpu {
    /// The model name, e.g. `H100` (a `tpu-` prefix on input is dropped and means Google).
    pub name: String,
    /// Memory per accelerator, MiB.
    pub memory_mib: i64,
    /// The vendor (NVIDIA when not given, Google for `tpu-` names).
    pub vendor: AcceleratorVendor,
}

impl Gpu {
    /// An NVIDIA GPU.
    pub fn nvidia(name: impl Into<String>, memory_mib: i64) -> Self {
        Self {
            name: name.into(),
            memory_mib,
            vendor: AcceleratorVendor::Nvidia,
        }
    }
}

#[derive(Deserialize)]
struct RawGpu {
    name: String,
    memory_mib: i64,
    #[serde(default)]
    vendor: Option<String>,
}

impl<'de> Deserialize<'de> for Gpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawGpu::deserialize(d)?;
        let (name, is_tpu) = match raw.name.strip_prefix("tpu-") {
            Some(rest) => (rest.to_string(), true),
            None => (raw.name, false),
        };
        let vendor = match raw.vendor {
            Some(v) => AcceleratorVendor::from_wire(&v.to_ascii_lowercase()).ok_or_else(|| {
                serde::de::Error::custom(format!("unknown accelerator vendor {v:?}"))
            })?,
            None if is_tpu => AcceleratorVendor::Google,
            None => AcceleratorVendor::Nvidia,
        };
        Ok(Gpu {
            name,
            memory_mib: raw.memory_mib,
            vendor,
        })
    }
}

/// A disk; `size_mib: 0` means the size is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The size, MiB.
    pub size_mib: i64,
}

impl Default for Disk {
    /// 100 GB, dstack's default for old records.
    fn default() -> Self {
        Self { size_mib: 102_400 }
    }
}

/// The hardware of an instance or offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU cores.
    pub cpus: i64,
    /// RAM, MiB.
    pub memory_mib: i64,
    /// Accelerators.
    pub gpus: Vec<Gpu>,
    /// Whether it is a spot (preemptible) instance.
    pub spot: bool,
    /// The disk (default 100 GB).
    #[serde(default)]
    pub disk: Disk,
    /// The CPU architecture, when known.
    #[serde(default)]
    pub cpu_arch: Option<CpuArch>,
    /// Deprecated and always empty; kept because old clients echo it back.
    #[serde(default)]
    pub description: String,
}

impl Resources {
    /// A short human summary, e.g. `8xCPU, 32GB, 1xH100 (80GB), 100.0GB (disk)`.
    pub fn pretty(&self) -> String {
        let gb = |mib: i64| {
            let v = mib as f64 / 1024.0;
            if v.fract() == 0.0 {
                format!("{v:.0}GB")
            } else {
                format!("{v:.1}GB")
            }
        };
        let mut parts = vec![format!("{}xCPU", self.cpus), gb(self.memory_mib)];
        if let Some(g) = self.gpus.first() {
            parts.push(format!(
                "{}x{} ({})",
                self.gpus.len(),
                g.name,
                gb(g.memory_mib)
            ));
        }
        parts.push(format!("{} (disk)", gb(self.disk.size_mib)));
        let mut s = parts.join(", ");
        if self.spot {
            s.push_str(" (spot)");
        }
        s
    }
}

/// An instance type: its name and hardware.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    /// The provider's type name, e.g. `p5.48xlarge`.
    pub name: String,
    /// The hardware.
    pub resources: Resources,
}

/// Whether an offer can be provisioned now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceAvailability {
    /// Not checked.
    Unknown,
    /// Capacity is available.
    Available,
    /// No capacity.
    NotAvailable,
    /// The account's quota does not allow it.
    NoQuota,
    /// The account's balance is too low (dstack Sky).
    NoBalance,
    /// An idle fleet instance.
    Idle,
    /// A busy fleet instance.
    Busy,
}

impl InstanceAvailability {
    /// `unknown`, `available` and `idle` count as available.
    pub fn is_available(self) -> bool {
        matches!(self, Self::Unknown | Self::Available | Self::Idle)
    }
}

/// What runs on the instance: the shim (VMs, SSH fleets) or the runner directly (containers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceRuntime {
    /// `dstack-shim` starts job containers.
    #[default]
    Shim,
    /// The provider's container runs `dstack-runner`.
    Runner,
}

fn empty_object() -> serde_json::Map<String, serde_json::Value> {
    serde_json::Map::new()
}

/// An offer: an instance type at a price in a region of a backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceOffer {
    /// The backend.
    pub backend: BackendType,
    /// The instance type.
    pub instance: InstanceType,
    /// The region.
    pub region: String,
    /// The price, USD per hour.
    pub price: f64,
    /// Provider-specific data (kept opaque).
    #[serde(default = "empty_object")]
    pub backend_data: serde_json::Map<String, serde_json::Value>,
}

impl InstanceOffer {
    /// The offer with an availability and dstack's defaults for the other fields.
    pub fn with_availability(
        self,
        availability: InstanceAvailability,
    ) -> InstanceOfferWithAvailability {
        InstanceOfferWithAvailability {
            backend: self.backend,
            instance: self.instance,
            region: self.region,
            price: self.price,
            backend_data: self.backend_data,
            availability,
            availability_zones: None,
            instance_runtime: InstanceRuntime::Shim,
            blocks: 1,
            total_blocks: 1,
        }
    }
}

fn one() -> i64 {
    1
}

/// An offer with its availability, as plans and `JobRuntimeData.offer` carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceOfferWithAvailability {
    /// The backend.
    pub backend: BackendType,
    /// The instance type.
    pub instance: InstanceType,
    /// The region.
    pub region: String,
    /// The price, USD per hour.
    pub price: f64,
    /// Provider-specific data (kept opaque).
    #[serde(default = "empty_object")]
    pub backend_data: serde_json::Map<String, serde_json::Value>,
    /// Whether it can be provisioned now.
    pub availability: InstanceAvailability,
    /// Zones where it is available, when the backend knows.
    #[serde(default)]
    pub availability_zones: Option<Vec<String>>,
    /// Shim or runner (default shim).
    #[serde(default)]
    pub instance_runtime: InstanceRuntime,
    /// How many blocks of the instance this offer takes (default 1).
    #[serde(default = "one")]
    pub blocks: i64,
    /// How many blocks the instance has (default 1).
    #[serde(default = "one")]
    pub total_blocks: i64,
}

impl InstanceOfferWithAvailability {
    /// The offer part.
    pub fn offer(&self) -> InstanceOffer {
        InstanceOffer {
            backend: self.backend,
            instance: self.instance.clone(),
            region: self.region.clone(),
            price: self.price,
            backend_data: self.backend_data.clone(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offer_json() -> serde_json::Value {
        json!({
            "backend": "aws",
            "instance": {
                "name": "p5.48xlarge",
                "resources": {
                    "cpus": 192, "memory_mib": 2097152,
                    "gpus": [{"name": "H100", "memory_mib": 81920, "vendor": "nvidia"}],
                    "spot": false, "disk": {"size_mib": 102400}, "cpu_arch": "x86", "description": ""
                }
            },
            "region": "us-east-1",
            "price": 98.32,
            "backend_data": {},
            "availability": "available",
            "availability_zones": ["us-east-1a", "us-east-1b"],
            "instance_runtime": "shim",
            "blocks": 1,
            "total_blocks": 1
        })
    }

    #[test]
    fn offer_round_trip() {
        let o: InstanceOfferWithAvailability = serde_json::from_value(offer_json()).unwrap();
        assert!(o.availability.is_available());
        assert_eq!(serde_json::to_value(&o).unwrap(), offer_json());
        let again = o.offer().with_availability(InstanceAvailability::Available);
        assert_eq!(again.availability_zones, None);
        assert_eq!(
            o.instance.resources.pretty(),
            "192xCPU, 2048GB, 1xH100 (80GB), 100GB (disk)"
        );
    }

    #[test]
    fn defaults_and_gpu_vendor_rules() {
        let o: InstanceOfferWithAvailability = serde_json::from_value(json!({
            "backend": "gcp", "region": "us-central1", "price": 1.5, "availability": "idle",
            "instance": {"name": "v5litepod-8", "resources": {
                "cpus": 8, "memory_mib": 65536, "spot": true,
                "gpus": [{"name": "tpu-v5litepod-8", "memory_mib": 16384}, {"name": "A100", "memory_mib": 40960, "vendor": "NVIDIA"}]
            }}
        }))
        .unwrap();
        let r = &o.instance.resources;
        assert_eq!(
            (r.gpus[0].name.as_str(), r.gpus[0].vendor),
            ("v5litepod-8", AcceleratorVendor::Google)
        );
        assert_eq!(r.gpus[1].vendor, AcceleratorVendor::Nvidia);
        assert_eq!(r.disk.size_mib, 102400);
        assert_eq!(
            (o.blocks, o.total_blocks, o.instance_runtime),
            (1, 1, InstanceRuntime::Shim)
        );
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["backend_data"], json!({}));
        assert_eq!(v["instance"]["resources"]["cpu_arch"], json!(null));
        assert_eq!(v["instance"]["resources"]["description"], json!(""));
    }

    #[test]
    fn availability_set() {
        use InstanceAvailability::*;
        let avail: Vec<_> = [
            Unknown,
            Available,
            NotAvailable,
            NoQuota,
            NoBalance,
            Idle,
            Busy,
        ]
        .into_iter()
        .filter(|a| a.is_available())
        .collect();
        assert_eq!(avail, vec![Unknown, Available, Idle]);
        assert_eq!(
            serde_json::to_value(NotAvailable).unwrap(),
            json!("not_available")
        );
    }
}
