//! Offers for a job (reference/offers.md §3): existing capacity first (instances of the
//! project's fleets, IDLE or BUSY), then new capacity from every configured backend's
//! gpuhunt catalog, filtered with gpuhunt's own `matches` semantics.
//!
//! | step | dstack's name |
//! |---|---|
//! | [`instance_candidates`] | `get_instance_offers_from_instances` + `filter_instances` |
//! | [`Engine::backend_offers`] | `get_offers_by_requirements` (catalog offers per backend, disk fitting) |
//!
//! Which fleet a job goes to, and the plan built from it, is `fleet_choice.rs`.

use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::engine::Engine;
use crate::engine::services::instances::{InstanceRow, select_instances};
use crate::models::common::{Memory, Range};
use crate::models::fleets::FleetSpec;
use crate::models::instances::InstanceStatus;
use crate::models::jobs::{JobProvisioningData, JobSpec};
use crate::models::offers::{
    Disk, Gpu, InstanceAvailability, InstanceOffer, InstanceOfferWithAvailability, InstanceType,
    Resources,
};
use crate::models::profiles::Profile;
use crate::models::resources::Requirements;
use crate::offers::{Catalog, CatalogItem, QueryFilter, matches};
use crate::spec::query::requirements_to_query_filter;
use crate::spec::resources::fleet_requirements;

/// The catalog the engine plans with (loaded from `GPUHUNT_CATALOG_DIR` at startup, empty
/// otherwise), swappable at runtime.
pub(crate) struct EngineCatalog(RwLock<Arc<Catalog>>);

impl Default for EngineCatalog {
    fn default() -> Self {
        Self(RwLock::new(Arc::new(Catalog::from_providers(
            std::iter::empty(),
        ))))
    }
}

impl EngineCatalog {
    /// The current catalog.
    pub(crate) fn snapshot(&self) -> Arc<Catalog> {
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the catalog.
    pub(crate) fn replace(&self, catalog: Catalog) {
        if let Ok(mut c) = self.0.write() {
            *c = Arc::new(catalog);
        }
    }
}

/// gpuhunt's provider name for a backend type (dstack's `get_catalog_offers`).
pub(crate) fn provider_name(backend: &str) -> &str {
    match backend {
        "datacrunch" => "verda",
        "lambda" => "lambdalabs",
        "amddevcloud" => "digitalocean",
        other => other,
    }
}

/// The disk range a backend can provision (dstack's `configurable_disk_size` per backend).
fn configurable_disk_gb(backend: &str) -> (f64, Option<f64>) {
    match backend {
        "aws" => (100.0, Some(16.0 * 1024.0)),
        "gcp" => (20.0, Some(32.0 * 1024.0)),
        "azure" => (30.0, Some(4095.0)),
        "oci" => (50.0, Some(32.0 * 1024.0)),
        "nebius" => (40.0, Some(8.0 * 1024.0)),
        "kubernetes" | "runpod" | "vastai" => (1.0, None),
        _ => (1.0, None),
    }
}

/// The availability dstack reports for a catalog offer of a backend before any live check
/// (offers.md §3.1).
fn default_availability(backend: &str) -> InstanceAvailability {
    match backend {
        "runpod" | "digitalocean" | "amddevcloud" | "hotaisle" | "jarvislabs" | "vultr" => {
            InstanceAvailability::Available
        }
        _ => InstanceAvailability::Unknown,
    }
}

/// dstack's `choose_disk_size_mib`: a catalog disk wins; else the smallest size of the
/// requested range (default `100GB..`) within the backend's configurable range.
fn choose_disk_mib(item_disk_gb: Option<f64>, req: &Requirements, backend: &str) -> Option<i64> {
    if let Some(d) = item_disk_gb.filter(|d| *d > 0.0) {
        return Some((d * 1024.0).round() as i64);
    }
    let want: Range<Memory> = req
        .resources
        .disk
        .as_ref()
        .map(|d| d.size)
        .unwrap_or(Range {
            min: Some(Memory(100.0)),
            max: None,
        });
    let (cmin, cmax) = configurable_disk_gb(backend);
    let lo = want.min.map_or(cmin, |m| m.gb().max(cmin));
    let hi = match (want.max.map(|m| m.gb()), cmax) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if hi.is_some_and(|h| h < lo) {
        return None;
    }
    Some((lo * 1024.0).round() as i64)
}

/// dstack's `catalog_item_to_offer`.
fn catalog_item_to_offer(
    backend: &str,
    item: &CatalogItem,
    req: &Requirements,
) -> Option<InstanceOfferWithAvailability> {
    let disk_mib = choose_disk_mib(item.disk_size, req, backend)?;
    let gpus = if item.gpu_count > 0 {
        let g: Gpu = serde_json::from_value(serde_json::json!({
            "vendor": item.gpu_vendor.map(|v| v.as_str()),
            "name": item.gpu_name.as_deref().unwrap_or_default(),
            "memory_mib": (item.gpu_memory.unwrap_or(0.0) * 1024.0).round() as i64,
        }))
        .ok()?;
        vec![g; usize::try_from(item.gpu_count).unwrap_or(0)]
    } else {
        Vec::new()
    };
    let resources = Resources {
        cpus: item.cpu,
        memory_mib: (item.memory * 1024.0).round() as i64,
        gpus,
        spot: item.spot,
        disk: Disk { size_mib: disk_mib },
        cpu_arch: serde_json::from_value(Value::String(item.cpu_arch.as_str().into())).ok(),
        description: String::new(),
    };
    let backend_data = match item.provider_data.as_value() {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let offer = InstanceOffer {
        backend: serde_json::from_value(Value::String(backend.into())).ok()?,
        instance: InstanceType {
            name: item.instance_name.to_string(),
            resources,
        },
        region: item.location.to_string(),
        price: item.price,
        backend_data,
    };
    Some(offer.with_availability(default_availability(backend)))
}

/// dstack's `offer_to_catalog_item`: an offer as gpuhunt sees it (disk 0 = unchecked).
/// Built field by field: plans call it for every instance and every block count.
pub(crate) fn offer_to_catalog_item(offer: &InstanceOfferWithAvailability) -> Option<CatalogItem> {
    let r = &offer.instance.resources;
    let gpu = r.gpus.first();
    let gpu_vendor = match gpu {
        Some(g) => Some(crate::offers::accelerators::AcceleratorVendor::parse(
            g.vendor.as_str(),
        )?),
        None => None,
    };
    Some(CatalogItem {
        provider: Arc::from(offer.backend.as_str()),
        instance_name: Arc::from(offer.instance.name.as_str()),
        location: Arc::from(offer.region.as_str()),
        price: offer.price,
        cpu: r.cpus,
        memory: r.memory_mib as f64 / 1024.0,
        gpu_count: i64::try_from(r.gpus.len()).unwrap_or(i64::MAX),
        gpu_name: gpu.map(|g| Arc::from(g.name.as_str())),
        gpu_memory: gpu.map(|g| g.memory_mib as f64 / 1024.0),
        spot: r.spot,
        disk_size: (r.disk.size_mib != 0).then(|| r.disk.size_mib as f64 / 1024.0),
        gpu_vendor,
        flags: Vec::new(),
        cpu_arch: match r.cpu_arch {
            Some(crate::models::resources::CpuArch::Arm) => {
                crate::offers::item::CpuArchitecture::Arm
            }
            _ => crate::offers::item::CpuArchitecture::X86,
        },
        provider_data: Default::default(),
    })
}

/// Whether `offer` satisfies `req` (gpuhunt `matches` on the offer as a catalog row).
pub(crate) fn offer_matches(offer: &InstanceOfferWithAvailability, q: &QueryFilter) -> bool {
    offer_to_catalog_item(offer).is_some_and(|item| matches(&item, q))
}

/// Whether the profile admits the offer's backend, region and instance type.
fn profile_admits(profile: &Profile, backend: &str, region: &str, instance_type: &str) -> bool {
    let p = &profile.params;
    if let Some(b) = &p.backends
        && !b.iter().any(|b| b.as_str() == backend)
    {
        return false;
    }
    if let Some(r) = &p.regions
        && !r.iter().any(|r| r.eq_ignore_ascii_case(region))
    {
        return false;
    }
    if let Some(t) = &p.instance_types
        && !t.iter().any(|t| t.eq_ignore_ascii_case(instance_type))
    {
        return false;
    }
    true
}

/// dstack's `_instance_matches_fleet_spec` (`instance_matches_constraints` with the fleet's
/// profile and requirements): whether a provisioned instance — its stored offer and
/// provisioning data — still fits its fleet's spec after an in-place update. An instance
/// without an offer has not been provisioned yet and fits (it will be provisioned from the
/// current spec).
pub(crate) fn instance_matches_fleet_spec(
    offer: Option<&InstanceOfferWithAvailability>,
    jpd: Option<&JobProvisioningData>,
    spec: &FleetSpec,
) -> bool {
    let Some(offer) = offer else {
        return true;
    };
    let profile = spec.merged_profile();
    let p = &profile.params;
    if let Some(jpd) = jpd {
        let backend = jpd.base_backend.unwrap_or(jpd.backend);
        let admitted = profile_admits(
            &profile,
            backend.as_str(),
            &jpd.region,
            &jpd.instance_type.name,
        );
        let zone_ok = match (&jpd.availability_zone, &p.availability_zones) {
            (Some(zone), Some(zones)) => zones.iter().any(|z| z.eq_ignore_ascii_case(zone)),
            _ => true,
        };
        if !admitted || !zone_ok {
            return false;
        }
    }
    let requirements = fleet_requirements(spec);
    offer_matches(
        offer,
        &requirements_to_query_filter(Some(&requirements), false),
    )
}

/// An instance of a fleet together with the offer it makes for a job.
pub(crate) struct InstanceCandidate {
    /// The instance row.
    pub(crate) row: InstanceRow,
    /// Its offer (IDLE or BUSY).
    pub(crate) offer: InstanceOfferWithAvailability,
}

/// dstack's `is_divisible_into_blocks`: how many blocks an instance with `cpus` CPUs and
/// `gpus` GPUs is split into (`None` = `auto`: one block per GPU, or per CPU without GPUs),
/// or `None` when the count does not divide both.
pub(crate) fn divisible_into_blocks(cpus: i64, gpus: i64, blocks: Option<i64>) -> Option<i64> {
    let blocks = blocks.unwrap_or(if gpus == 0 { cpus } else { cpus.min(gpus) });
    if blocks < 1 || cpus % blocks != 0 || gpus % blocks != 0 {
        return None;
    }
    Some(blocks)
}

/// dstack's `generate_shared_offer`: `blocks` of `total_blocks` of an instance's offer —
/// CPUs, memory and GPUs divided proportionally (integer division, as dstack), disk whole.
pub(crate) fn shared_offer(
    offer: &InstanceOfferWithAvailability,
    blocks: i64,
    total_blocks: i64,
) -> InstanceOfferWithAvailability {
    let total = total_blocks.max(1);
    let full = &offer.instance.resources;
    let mut o = offer.clone();
    let r = &mut o.instance.resources;
    r.cpus = full.cpus / total * blocks;
    r.memory_mib = full.memory_mib / total * blocks;
    let gpus = usize::try_from(full.gpus.len() as i64 / total * blocks).unwrap_or(0);
    r.gpus.truncate(gpus);
    o.blocks = blocks;
    o.total_blocks = total;
    o
}

/// dstack's `get_shared_instances_with_offers` for one instance: the first block count
/// (all blocks for multi-node jobs) whose sub-offer matches, IDLE when that many blocks are
/// free, else BUSY. `None` when no count matches or a multi-node job finds blocks in use.
fn shared_instance_offer(
    row: &InstanceRow,
    offer: &InstanceOfferWithAvailability,
    total_blocks: i64,
    multinode: bool,
    q: &QueryFilter,
) -> Option<InstanceOfferWithAvailability> {
    if multinode && row.busy_blocks > 0 {
        return None;
    }
    let idle_blocks = total_blocks - row.busy_blocks;
    let min_blocks = if multinode { total_blocks } else { 1 };
    (min_blocks..=total_blocks).find_map(|blocks| {
        let mut o = shared_offer(offer, blocks, total_blocks);
        if !offer_matches(&o, q) {
            return None;
        }
        o.availability = if blocks <= idle_blocks {
            InstanceAvailability::Idle
        } else {
            InstanceAvailability::Busy
        };
        Some(o)
    })
}

/// dstack's `get_instance_offers_from_instances` over `rows` (instances of one fleet, of the
/// selected fleets, or of the whole project), cheapest first: provisioning instances (blocks
/// unknown) are skipped, the stored offer must match the job's requirements and the profile.
/// Shared instances (`total_blocks > 1`) offer their smallest matching share of blocks;
/// multi-node jobs take whole instances.
pub(crate) fn instance_candidates(
    rows: impl IntoIterator<Item = InstanceRow>,
    spec: &JobSpec,
    profile: &Profile,
) -> Vec<InstanceCandidate> {
    let q = requirements_to_query_filter(Some(&spec.requirements), false);
    let multinode = spec.jobs_per_replica > 1;
    let mut out = Vec::new();
    for row in rows {
        if row.unreachable
            || row.deleted
            || !matches!(row.status, InstanceStatus::Idle | InstanceStatus::Busy)
        {
            continue;
        }
        let Some(mut offer) = row.offer() else {
            continue;
        };
        // Still provisioning: whether it is shared is not known yet.
        let Some(total_blocks) = row.total_blocks else {
            continue;
        };
        if !profile_admits(
            profile,
            offer.backend.as_str(),
            &offer.region,
            &offer.instance.name,
        ) {
            continue;
        }
        if total_blocks > 1 {
            if let Some(o) = shared_instance_offer(&row, &offer, total_blocks, multinode, &q) {
                out.push(InstanceCandidate { row, offer: o });
            }
            continue;
        }
        if !offer_matches(&offer, &q) {
            continue;
        }
        offer.blocks = 1;
        offer.total_blocks = 1;
        offer.availability = if row.status == InstanceStatus::Idle && row.busy_blocks == 0 {
            InstanceAvailability::Idle
        } else {
            InstanceAvailability::Busy
        };
        out.push(InstanceCandidate { row, offer });
    }
    out.sort_by(|a, b| a.offer.price.total_cmp(&b.offer.price));
    out
}

impl Engine {
    /// The project's instances that may serve jobs: IDLE or BUSY, reachable, in a fleet.
    pub(crate) async fn offerable_instances(
        &self,
        project_id: &str,
    ) -> crate::Result<Vec<InstanceRow>> {
        Ok(sqlx::query_as(select_instances!(
            "project_id = $1 AND deleted = FALSE AND unreachable = FALSE \
             AND fleet_id IS NOT NULL AND status IN ('IDLE', 'BUSY') ORDER BY created_at"
        ))
        .bind(project_id)
        .fetch_all(self.store().reader())
        .await?)
    }

    /// New-capacity offers from every backend of the project, merged by price (gpuhunt's
    /// order), each converted with disk fitting and the backend's default availability; the
    /// first `limit` of them when given (the rest are not even converted).
    pub(crate) async fn backend_offers(
        &self,
        project_id: &str,
        requirements: &Requirements,
        profile: &Profile,
        limit: Option<usize>,
    ) -> crate::Result<Vec<InstanceOfferWithAvailability>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT type, config FROM backends WHERE project_id = $1")
                .bind(project_id)
                .fetch_all(self.store().reader())
                .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let catalog = self.inner.catalog.snapshot();
        let mut q = requirements_to_query_filter(Some(requirements), true);
        let mut by_provider = std::collections::HashMap::new();
        // Backends whose offers are not in gpuhunt's catalog (Kubernetes: the cluster's
        // nodes) are asked live, as dstack does.
        let mut live = Vec::new();
        for (backend, config) in &rows {
            if let Some(b) = &profile.params.backends
                && !b.iter().any(|b| b.as_str() == backend)
            {
                continue;
            }
            if !crate::offers::providers::is_known_provider(provider_name(backend)) {
                live.push(backend.clone());
                continue;
            }
            let regions: Option<Vec<String>> = serde_json::from_str::<Value>(config)
                .ok()
                .and_then(|v| v.get("regions").cloned())
                .and_then(|v| serde_json::from_value(v).ok());
            by_provider.insert(
                provider_name(backend).to_string(),
                (backend.clone(), regions),
            );
        }
        let mut out: Vec<InstanceOfferWithAvailability> = Vec::new();
        #[cfg(feature = "backends")]
        for backend in &live {
            let Some(compute) = self.compute_for(project_id, backend).await? else {
                continue;
            };
            match compute.get_offers(Some(requirements)).await {
                Ok(offers) => out.extend(
                    offers
                        .into_iter()
                        .filter(|o| profile_admits(profile, backend, &o.region, &o.instance.name)),
                ),
                Err(e) => tracing::warn!(%backend, error = %e, "cannot get offers"),
            }
        }
        #[cfg(not(feature = "backends"))]
        let _ = live;
        let limit = limit.unwrap_or(usize::MAX);
        if by_provider.is_empty() {
            out.sort_by(|a, b| a.price.total_cmp(&b.price));
            out.truncate(limit);
            return Ok(out);
        }
        q.provider = Some(by_provider.keys().cloned().collect());
        let result = catalog
            .query(&q)
            .map_err(|e| crate::Error::new(e.kind(), e.to_string()))?;
        let live_count = out.len();
        for item in result.iter() {
            // Live offers may still sort before any catalog row: `limit` more catalog rows
            // always suffice.
            if out.len() >= live_count.saturating_add(limit) {
                break;
            }
            let Some((backend, regions)) = by_provider.get(item.provider.as_ref()) else {
                continue;
            };
            if let Some(r) = regions
                && !r.iter().any(|r| r.as_str() == item.location.as_ref())
            {
                continue;
            }
            if !profile_admits(profile, backend, &item.location, &item.instance_name) {
                continue;
            }
            if let Some(o) = catalog_item_to_offer(backend, item, requirements) {
                out.push(o);
            }
        }
        if live_count > 0 {
            // Merged by price; the catalog's own order is kept among equal prices.
            out.sort_by(|a, b| a.price.total_cmp(&b.price));
        }
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: Value) -> Requirements {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn disk_fitting_follows_dstack() {
        let r = req(
            serde_json::json!({"resources": {"cpu": {"min": 2}, "memory": {"min": 8},
            "disk": {"size": {"min": 100}}}}),
        );
        assert_eq!(choose_disk_mib(None, &r, "aws"), Some(100 * 1024));
        assert_eq!(choose_disk_mib(Some(512.0), &r, "aws"), Some(512 * 1024));
        let r = req(
            serde_json::json!({"resources": {"cpu": {"min": 2}, "memory": {"min": 8},
            "disk": {"size": {"min": 10, "max": 50}}}}),
        );
        assert_eq!(choose_disk_mib(None, &r, "aws"), None);
        assert_eq!(choose_disk_mib(None, &r, "gcp"), Some(20 * 1024));
    }

    #[test]
    fn catalog_item_of_an_offer_equals_the_json_conversion() {
        let offer: InstanceOfferWithAvailability = serde_json::from_value(serde_json::json!({
            "backend": "aws", "region": "us-east-1", "price": 2.5, "availability": "idle",
            "instance": {"name": "g5.8xlarge", "resources": {
                "cpus": 32, "memory_mib": 131072, "spot": false, "cpu_arch": "arm",
                "disk": {"size_mib": 102400},
                "gpus": [{"name": "A10G", "memory_mib": 24576, "vendor": "nvidia"}]}},
        }))
        .unwrap();
        let direct = offer_to_catalog_item(&offer).unwrap();
        let via_json: CatalogItem = serde_json::from_value(serde_json::json!({
            "provider": "aws", "instance_name": "g5.8xlarge", "location": "us-east-1",
            "price": 2.5, "cpu": 32, "memory": 128.0, "gpu_count": 1, "gpu_name": "A10G",
            "gpu_memory": 24.0, "spot": false, "disk_size": 100.0, "gpu_vendor": "nvidia",
            "cpu_arch": "arm",
        }))
        .unwrap();
        assert_eq!(format!("{direct:?}"), format!("{via_json:?}"));
    }

    #[test]
    fn provider_names() {
        assert_eq!(provider_name("lambda"), "lambdalabs");
        assert_eq!(provider_name("datacrunch"), "verda");
        assert_eq!(provider_name("aws"), "aws");
    }
}
