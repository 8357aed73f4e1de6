//! Offers from the gpuhunt catalog (dstack's `get_catalog_offers` / `catalog_item_to_offer`).

use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::offers::{Disk, Gpu, InstanceOffer, InstanceType, Resources};
use crate::models::resources::{AcceleratorVendor, CpuArch, Requirements};
use crate::offers::{Catalog, CatalogItem};
use crate::spec::query::requirements_to_query_filter;

/// dstack's default disk when neither the offer nor the requirements fix one, GB.
pub const DEFAULT_DISK_GB: f64 = 100.0;

/// How a backend's disks are sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskSizing {
    /// Any size from `min_gb` (the requested minimum is used; disk bounds are not matched
    /// against the catalog).
    Configurable {
        /// The smallest disk, GB.
        min_gb: f64,
    },
    /// The catalog's `disk_size` is what the instance has.
    Fixed,
}

/// The disk size for an offer: the catalog's, else the requested minimum (at least the
/// backend's minimum), else 100 GB.
pub fn disk_gb(item: &CatalogItem, requirements: Option<&Requirements>, sizing: DiskSizing) -> f64 {
    let requested = requirements
        .and_then(|r| r.resources.disk.as_ref())
        .and_then(|d| d.size.min)
        .map(|m| m.gb());
    match sizing {
        DiskSizing::Fixed => item.disk_size.or(requested).unwrap_or(DEFAULT_DISK_GB),
        DiskSizing::Configurable { min_gb } => requested.unwrap_or(DEFAULT_DISK_GB).max(min_gb),
    }
}

/// A catalog row as an offer of `backend` (`None` for a GPU row without a vendor).
pub fn catalog_item_to_offer(
    item: &CatalogItem,
    backend: BackendType,
    disk_gb: f64,
) -> Option<InstanceOffer> {
    let mut gpus = Vec::new();
    if item.gpu_count > 0 {
        let vendor = AcceleratorVendor::from_wire(item.gpu_vendor?.as_str())?;
        let gpu = Gpu {
            name: item.gpu_name.as_deref()?.to_string(),
            memory_mib: (item.gpu_memory.unwrap_or(0.0) * 1024.0).round() as i64,
            vendor,
        };
        gpus = vec![gpu; usize::try_from(item.gpu_count).ok()?];
    }
    let backend_data = match item.provider_data.as_value() {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    Some(InstanceOffer {
        backend,
        instance: InstanceType {
            name: item.instance_name.to_string(),
            resources: Resources {
                cpus: item.cpu,
                memory_mib: (item.memory * 1024.0).round() as i64,
                gpus,
                spot: item.spot,
                disk: Disk {
                    size_mib: (disk_gb * 1024.0).round() as i64,
                },
                cpu_arch: CpuArch::from_wire(item.cpu_arch.as_str()),
                description: String::new(),
            },
        },
        region: item.location.to_string(),
        price: item.price,
        backend_data,
    })
}

/// The catalog offers of `provider` that satisfy `requirements`, in catalog (price) order,
/// restricted to `regions` when given and to rows `keep` accepts.
pub fn catalog_offers(
    catalog: &Catalog,
    provider: &str,
    backend: BackendType,
    requirements: Option<&Requirements>,
    sizing: DiskSizing,
    regions: Option<&[String]>,
    keep: impl Fn(&CatalogItem) -> bool,
) -> BackendResult<Vec<InstanceOffer>> {
    let mut filter = requirements_to_query_filter(
        requirements,
        matches!(sizing, DiskSizing::Configurable { .. }),
    );
    filter.provider = Some(vec![provider.to_string()]);
    let result = catalog.query(&filter).map_err(|e| BackendError::Config {
        message: format!("offer catalog query failed: {e}"),
    })?;
    let mut out = Vec::new();
    for item in result.iter() {
        if let Some(regions) = regions
            && !regions.iter().any(|r| r == &*item.location)
        {
            continue;
        }
        if !keep(item) {
            continue;
        }
        let disk = disk_gb(item, requirements, sizing);
        if let Some(offer) = catalog_item_to_offer(item, backend, disk) {
            out.push(offer);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::offers::ProviderCatalog;

    #[test]
    fn rows_become_offers() {
        let csv = "instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n\
                   t3.micro,us-east-1,0.0104,2,1,0,,,False,,,,x86,{}\n\
                   g4dn.xlarge,us-east-1,0.526,4,16,1,T4,16,False,,nvidia,,x86,{}\n\
                   g4dn.xlarge,eu-west-1,0.2,4,16,1,T4,16,True,,nvidia,,x86,{}\n";
        let cat = Catalog::from_providers([ProviderCatalog::from_csv(
            "aws",
            "t",
            csv.as_bytes(),
            "aws.csv",
        )
        .unwrap()]);
        let all = catalog_offers(
            &cat,
            "aws",
            BackendType::Aws,
            None,
            DiskSizing::Configurable { min_gb: 20.0 },
            Some(&["us-east-1".to_string()]),
            |_| true,
        )
        .unwrap();
        let names: Vec<_> = all.iter().map(|o| o.instance.name.as_str()).collect();
        assert_eq!(names, ["t3.micro", "g4dn.xlarge"]);
        let g = &all[1].instance.resources;
        assert_eq!((g.gpus.len(), g.gpus[0].memory_mib), (1, 16384));
        assert_eq!((g.memory_mib, g.disk.size_mib), (16384, 102400));
        assert_eq!(g.cpu_arch, Some(CpuArch::X86));
    }
}
