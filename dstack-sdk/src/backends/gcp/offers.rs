//! Offers: catalog rows (provider `gcp`, one row per zone) of supported families in the
//! configured regions, merged into one offer per (type, spot, GPU, region) that lists its
//! zones, with availability from the regions' GPU quotas (`regions.list`).
//!
//! As dstack: an offer whose GPU quota (`NVIDIA_<GPU>_GPUS`, `PREEMPTIBLE_…` for spot) is
//! below its GPU count is `no_quota`, everything else `unknown` (GCP does not tell capacity
//! ahead). Quotas that cannot be read leave every offer `unknown`. Single-host TPUs are
//! offered with `tpu: true` (dstack's `allow_tpu`); they are not limited by a GPU quota. With
//! a `reservation` in the requirements the offers are narrowed to the reservation's zones
//! ([`reservations::apply_to_offers`](super::reservations::apply_to_offers)).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::GcpCompute;
use super::errors::map_gax_error;
use crate::backends::common::offers::{DiskSizing, catalog_offers};
use crate::backends::common::retry::Backoff;
use crate::backends::error::BackendResult;
use crate::models::backends::BackendType;
use crate::models::offers::{InstanceAvailability, InstanceOfferWithAvailability, Resources};
use crate::models::resources::{AcceleratorVendor, Requirements};

/// Persistent/hyperdisk boot disks: 20 GB (dstack's images) at least.
pub const DISK_SIZING: DiskSizing = DiskSizing::Configurable { min_gb: 20.0 };

/// Families dstack provisions regardless of GPUs (prefixes).
pub const SUPPORTED_FAMILIES: &[&str] = &[
    "m4-",
    "c4-",
    "n4-",
    "h3-",
    "n2-",
    "e2-medium",
    "e2-standard-",
    "e2-highmem-",
    "e2-highcpu-",
    "m1-",
    "a2-",
    "a3-",
    "g2-",
];

/// How long region quotas are reused.
pub const QUOTAS_TTL: Duration = Duration::from_secs(120);

/// Whether a catalog row is provisioned by this backend (dstack's catalog filter and
/// `_is_supported_gcp_instance`): TPU rows (vendor `google` or a TPU type name) only with
/// `allow_tpu` and only single-host TPU types.
pub fn is_supported(
    instance_name: &str,
    gpu_name: Option<&str>,
    gpu_vendor: Option<&str>,
    allow_tpu: bool,
) -> bool {
    if gpu_vendor == Some("google") || super::tpu::is_tpu_name(instance_name) {
        return allow_tpu
            && super::tpu::is_tpu_name(instance_name)
            && super::tpu::is_single_host_tpu(instance_name);
    }
    if SUPPORTED_FAMILIES
        .iter()
        .any(|f| instance_name.starts_with(f))
    {
        return true;
    }
    matches!(gpu_name, Some(g) if !["K80", "P4", "P100"].contains(&g))
}

/// The region of a zone (`us-central1-a` → `us-central1`); a region is returned as is.
pub fn zone_region(location: &str) -> &str {
    match location.rsplit_once('-') {
        Some((region, zone)) if zone.len() == 1 && zone.chars().all(|c| c.is_ascii_lowercase()) => {
            region
        }
        _ => location,
    }
}

/// The quota metric that limits the GPUs of `resources` (`None`: not limited by a regional
/// quota that `regions.list` reports).
pub fn gpu_quota_metric(resources: &Resources) -> Option<String> {
    let gpu = resources.gpus.first()?;
    if gpu.vendor != AcceleratorVendor::Nvidia
        || ["B200", "H100", "RTXPRO6000"].contains(&gpu.name.as_str())
    {
        return None;
    }
    let mut metric = format!("NVIDIA_{}_GPUS", gpu.name);
    if gpu.name == "A100" && gpu.memory_mib == 80 * 1024 {
        metric = "NVIDIA_A100_80GB_GPUS".to_string();
    }
    if resources.spot {
        metric = format!("PREEMPTIBLE_{metric}");
    }
    Some(metric)
}

/// Region → quota metric → remaining (limit − usage), cached for [`QUOTAS_TTL`].
#[derive(Debug, Default)]
pub struct QuotaCache(Mutex<Option<(Instant, RegionQuotas)>>);

/// Region → quota metric → remaining.
pub type RegionQuotas = HashMap<String, HashMap<String, f64>>;

async fn region_quotas(compute: &GcpCompute) -> Option<RegionQuotas> {
    {
        let cache = match compute.quotas.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((at, q)) = cache.as_ref()
            && at.elapsed() < QUOTAS_TTL
        {
            return Some(q.clone());
        }
    }
    let project = compute.config.project_id.clone();
    let mut out: RegionQuotas = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let t = token.clone();
        // No retries: unreadable quotas only make availability `unknown`.
        let page = super::errors::call(&Backoff::none(), "regions.list", &compute.calls, || {
            let req = compute
                .clients
                .regions
                .list()
                .set_project(project.clone())
                .set_or_clear_page_token(t.clone());
            async move { req.send().await.map_err(map_gax_error) }
        })
        .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read region quotas; availability unknown");
                return None;
            }
        };
        for region in &page.items {
            let Some(name) = region.name.clone() else {
                continue;
            };
            let entry = out.entry(name).or_default();
            for q in &region.quotas {
                if let Some(metric) = q.metric.as_ref().and_then(|m| m.name()) {
                    entry.insert(
                        metric.to_string(),
                        q.limit.unwrap_or(0.0) - q.usage.unwrap_or(0.0),
                    );
                }
            }
        }
        match page.next_page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    let mut cache = match compute.quotas.0.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    *cache = Some((Instant::now(), out.clone()));
    Some(out)
}

/// The backend's offers for `requirements`, cheapest first.
pub async fn get_offers(
    compute: &GcpCompute,
    requirements: Option<&Requirements>,
) -> BackendResult<Vec<InstanceOfferWithAvailability>> {
    let catalog = compute.settings.catalog.snapshot();
    let regions = compute.config.regions.clone();
    let allow_tpu = compute.config.tpu.unwrap_or(false);
    let offers = catalog_offers(
        &catalog,
        "gcp",
        BackendType::Gcp,
        requirements,
        DISK_SIZING,
        None,
        |item| {
            let region = zone_region(&item.location);
            if let Some(rs) = &regions
                && !rs.iter().any(|r| r == region)
            {
                return false;
            }
            is_supported(
                &item.instance_name,
                item.gpu_name.as_deref(),
                item.gpu_vendor.map(|v| v.as_str()),
                allow_tpu,
            )
        },
    )?;
    // Merge the per-zone rows: the first (cheapest) row of each key wins, zones accumulate.
    type Key = (String, bool, Option<String>, String);
    let mut order: Vec<Key> = Vec::new();
    let mut merged: HashMap<Key, (crate::models::offers::InstanceOffer, Vec<String>)> =
        HashMap::new();
    for mut offer in offers {
        let zone = offer.region.clone();
        let region = zone_region(&zone).to_string();
        let key: Key = (
            offer.instance.name.clone(),
            offer.instance.resources.spot,
            offer
                .instance
                .resources
                .gpus
                .first()
                .map(|g| g.name.clone()),
            region.clone(),
        );
        match merged.get_mut(&key) {
            Some((_, zones)) => {
                if !zones.contains(&zone) {
                    zones.push(zone);
                }
            }
            None => {
                offer.region = region;
                order.push(key.clone());
                merged.insert(key, (offer, vec![zone]));
            }
        }
    }
    let quotas = if merged
        .values()
        .any(|(o, _)| gpu_quota_metric(&o.instance.resources).is_some())
    {
        region_quotas(compute).await
    } else {
        None
    };
    let mut out = Vec::with_capacity(order.len());
    for key in order {
        let Some((offer, zones)) = merged.remove(&key) else {
            continue;
        };
        let availability = match (&quotas, gpu_quota_metric(&offer.instance.resources)) {
            (Some(q), Some(metric)) => {
                let left = q
                    .get(&offer.region)
                    .and_then(|m| m.get(&metric))
                    .copied()
                    .unwrap_or(0.0);
                if (offer.instance.resources.gpus.len() as f64) <= left {
                    InstanceAvailability::Unknown
                } else {
                    InstanceAvailability::NoQuota
                }
            }
            _ => InstanceAvailability::Unknown,
        };
        let mut o = offer.with_availability(availability);
        o.availability_zones = Some(zones);
        out.push(o);
    }
    if let Some(reservation) = requirements.and_then(|r| r.reservation.as_deref()) {
        let by_zone = super::reservations::find(compute, reservation).await?;
        out = super::reservations::apply_to_offers(out, &by_zone);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn families_and_zones() {
        assert!(is_supported("e2-standard-4", None, None, false));
        assert!(is_supported(
            "n1-standard-4",
            Some("T4"),
            Some("nvidia"),
            false
        ));
        assert!(!is_supported("n1-standard-4", None, None, false));
        assert!(!is_supported(
            "n1-standard-4",
            Some("K80"),
            Some("nvidia"),
            false
        ));
        let tpu = |name: &str, allow| is_supported(name, Some(name), Some("google"), allow);
        assert!(!tpu("v5litepod-1", false));
        assert!(tpu("v5litepod-8", true));
        assert!(!tpu("v5litepod-16", true));
        assert!(!tpu("v4-8", true));
        assert_eq!(zone_region("us-central1-a"), "us-central1");
        assert_eq!(zone_region("us-central1"), "us-central1");
        assert_eq!(zone_region("europe-west4-b"), "europe-west4");
    }
}
