//! Offers: catalog rows (provider `aws`) of supported families in the configured regions, with
//! availability from Service Quotas (vCPU quotas per family) and the zones each instance type
//! is offered in (`DescribeInstanceTypeOfferings`).
//!
//! A quota that cannot be read (no permission, emulator without Service Quotas) gives
//! `unknown` availability, as dstack does; a known quota below the offer's vCPUs gives
//! `no_quota`; a type offered in no zone gives `not_available`.
//!
//! Both are cached per region in [`OfferFactsCache`] (coalesced, successes only): quotas for
//! [`QUOTAS_TTL`] (dstack's `_regions_to_quotas_cache`: 600 s), zones for [`ZONES_TTL`]
//! (dstack's `_regions_to_zones_cache` never expires), fetched once for every catalog type of
//! the region and refetched when the `aws` catalog's version changes. A quota that cannot be
//! read for a non-transient reason (no permission, no Service Quotas) is cached as unknown,
//! like dstack's empty quota dict; a transient failure is retried after
//! [`QUOTAS_RETRY_AFTER`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, LocationType};

use super::AwsCompute;
use super::cache::TtlCache;
use super::errors::map_sdk_error;
use crate::backends::common::offers::{DiskSizing, catalog_offers};
use crate::backends::common::retry::Backoff;
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};
use crate::models::resources::Requirements;

/// EBS root volumes: 20 GB at least, any size above.
pub const DISK_SIZING: DiskSizing = DiskSizing::Configurable { min_gb: 20.0 };

/// Instance families dstack provisions on AWS (prefixes); `experimental_instance_types` adds
/// exact names.
pub const SUPPORTED_FAMILIES: &[&str] = &[
    "t2.small", "t3.", "m5.", "c5.", "m7i.", "c7i.", "r7i.", "g4dn.", "g5.", "g6.", "g6e.", "gr6.",
    "p3.", "p4d.", "p4de.", "p5.", "p5e.", "p5en.", "p6-b200.", "p6-b300.",
];

/// Whether `instance_type` is provisioned by this backend.
pub fn is_supported(instance_type: &str, experimental: Option<&[String]>) -> bool {
    SUPPORTED_FAMILIES
        .iter()
        .any(|f| instance_type.starts_with(f) || instance_type == f.trim_end_matches('.'))
        || experimental.is_some_and(|e| e.iter().any(|t| t == instance_type))
}

/// The Service Quotas code limiting `instance_type` (vCPUs), on-demand or spot.
pub fn quota_code(instance_type: &str, spot: bool) -> &'static str {
    let family: String = instance_type
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    match (family.as_str(), spot) {
        ("p", false) => "L-417A185B",
        ("p", true) => "L-7212CCBC",
        ("g" | "gr" | "vt", false) => "L-DB2E81BA",
        ("g" | "gr" | "vt", true) => "L-3819A6DF",
        ("f", false) => "L-74FC7D96",
        ("f", true) => "L-88CF9481",
        ("inf", false) => "L-1945791B",
        ("inf", true) => "L-B5D1601B",
        ("trn", false) => "L-2C3B7624",
        ("trn", true) => "L-6B0D517C",
        ("dl", false) => "L-6E869C2A",
        ("dl", true) => "L-85EED4F7",
        ("x", false) => "L-7295265B",
        ("x", true) => "L-E3A00192",
        (_, false) => "L-1216C47A",
        (_, true) => "L-34B43A08",
    }
}

/// Quota code → vCPU limit for a region.
async fn region_quotas(compute: &AwsCompute, region: &str) -> BackendResult<HashMap<String, f64>> {
    let quotas = compute.region(region).quotas;
    let mut out = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let t = token.clone();
        // No retries: an unreadable quota only makes availability `unknown`.
        let page = super::errors::call(
            &Backoff::none(),
            "ListServiceQuotas",
            &compute.calls,
            || {
                let q = quotas.clone();
                let t = t.clone();
                async move {
                    q.list_service_quotas()
                        .service_code("ec2")
                        .set_next_token(t)
                        .send()
                        .await
                        .map_err(map_sdk_error)
                }
            },
        )
        .await?;
        for q in page.quotas() {
            if let (Some(code), Some(v)) = (q.quota_code(), q.value()) {
                out.insert(code.to_string(), v);
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// Instance type → zones where it is offered, for `types` of `region`.
async fn region_zones(
    compute: &AwsCompute,
    region: &str,
    types: &BTreeSet<String>,
) -> BackendResult<HashMap<String, BTreeSet<String>>> {
    let ec2 = compute.region(region).ec2;
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    let values: Vec<String> = types.iter().cloned().collect();
    for chunk in values.chunks(100) {
        let mut token: Option<String> = None;
        loop {
            let t = token.clone();
            let page = compute
                .call("DescribeInstanceTypeOfferings", || {
                    let t = t.clone();
                    let ec2 = ec2.clone();
                    let filter = Filter::builder()
                        .name("instance-type")
                        .set_values(Some(chunk.to_vec()))
                        .build();
                    async move {
                        ec2.describe_instance_type_offerings()
                            .location_type(LocationType::AvailabilityZone)
                            .filters(filter)
                            .set_next_token(t)
                            .send()
                            .await
                            .map_err(map_sdk_error)
                    }
                })
                .await?;
            for o in page.instance_type_offerings() {
                if let (Some(t), Some(z)) = (o.instance_type(), o.location()) {
                    out.entry(t.as_str().to_string())
                        .or_default()
                        .insert(z.to_string());
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// How long a region's quotas are reused (dstack: 600 s).
pub const QUOTAS_TTL: Duration = Duration::from_secs(600);
/// How long a region's zones per instance type are reused (dstack caches them for the
/// server's lifetime; an hour picks up new offerings without a restart).
pub const ZONES_TTL: Duration = Duration::from_secs(3600);

/// How long quotas that failed transiently (throttling, 5xx) are not asked for again: a
/// burst of offer lookups (a 200-instance fleet) then makes one failing call, not 200.
pub const QUOTAS_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Quota code → vCPU limit; `None` when the quotas cannot be read.
pub type RegionQuotas = Option<Arc<HashMap<String, f64>>>;
/// Instance type → zones where it is offered.
pub type RegionZones = Arc<HashMap<String, BTreeSet<String>>>;

/// The availability facts of one [`AwsCompute`], by region: Service Quotas and zones per
/// instance type (the latter keyed by region and `aws` catalog version).
#[derive(Debug)]
pub struct OfferFactsCache {
    quotas: TtlCache<String, RegionQuotas>,
    /// Regions whose quotas failed transiently, and when.
    quota_failures: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    zones: TtlCache<(String, String), RegionZones>,
}

impl Default for OfferFactsCache {
    fn default() -> Self {
        Self {
            quotas: TtlCache::new(QUOTAS_TTL),
            quota_failures: std::sync::Mutex::new(HashMap::new()),
            zones: TtlCache::new(ZONES_TTL),
        }
    }
}

/// The region's quotas, from the cache or Service Quotas.
async fn cached_quotas(compute: &AwsCompute, region: &str) -> RegionQuotas {
    let failures = &compute.facts.quota_failures;
    let failed_lately = |failures: &HashMap<String, std::time::Instant>| {
        failures
            .get(region)
            .is_some_and(|at| at.elapsed() < QUOTAS_RETRY_AFTER)
    };
    match failures.lock() {
        Ok(f) if failed_lately(&f) => return None,
        _ => {}
    }
    let fetched = compute
        .facts
        .quotas
        .get_or_try_fetch(region.to_string(), || async {
            match region_quotas(compute, region).await {
                Ok(q) => Ok(Some(Arc::new(q))),
                Err(e) if e.is_retryable() => Err(e),
                Err(e) => {
                    tracing::debug!(region, error = %e, "service quotas unavailable; availability unknown");
                    Ok::<_, BackendError>(None)
                }
            }
        })
        .await;
    fetched.unwrap_or_else(|e| {
        tracing::debug!(region, error = %e, "cannot read service quotas now; availability unknown");
        if let Ok(mut f) = failures.lock() {
            f.insert(region.to_string(), std::time::Instant::now());
        }
        None
    })
}

/// The region's zones per instance type, for every supported `aws` catalog type of the
/// region (one fetch per region and catalog version); `None` when they cannot be listed.
async fn cached_zones(compute: &AwsCompute, region: &str) -> Option<RegionZones> {
    let catalog = compute.settings.catalog.snapshot();
    let provider = catalog.provider("aws");
    let version = provider
        .map(|p| p.version().to_string())
        .unwrap_or_default();
    let experimental = compute.config.experimental_instance_types.as_deref();
    let fetched = compute
        .facts
        .zones
        .get_or_try_fetch((region.to_string(), version), || async {
            let types: BTreeSet<String> = provider
                .map(|p| p.items())
                .unwrap_or_default()
                .iter()
                .filter(|i| &*i.location == region && is_supported(&i.instance_name, experimental))
                .map(|i| i.instance_name.to_string())
                .collect();
            region_zones(compute, region, &types).await.map(Arc::new)
        })
        .await;
    match fetched {
        Ok(z) => Some(z),
        Err(e) => {
            tracing::warn!(region, error = %e, "cannot list instance type zones");
            None
        }
    }
}

/// The backend's offers for `requirements`, cheapest first.
pub async fn get_offers(
    compute: &AwsCompute,
    requirements: Option<&Requirements>,
) -> BackendResult<Vec<InstanceOfferWithAvailability>> {
    let catalog = compute.settings.catalog.snapshot();
    let experimental = compute.config.experimental_instance_types.as_deref();
    let offers = catalog_offers(
        &catalog,
        "aws",
        BackendType::Aws,
        requirements,
        DISK_SIZING,
        compute.config.regions.as_deref(),
        |item| is_supported(&item.instance_name, experimental),
    )?;
    let regions: BTreeSet<&str> = offers.iter().map(|o| o.region.as_str()).collect();
    let mut facts: HashMap<String, (RegionQuotas, Option<RegionZones>)> = HashMap::new();
    for region in regions {
        let quotas = cached_quotas(compute, region).await;
        let zones = cached_zones(compute, region).await;
        facts.insert(region.to_string(), (quotas, zones));
    }
    let mut out = Vec::with_capacity(offers.len());
    for offer in offers {
        let (quotas, zones) = facts
            .get(&offer.region)
            .map(|(q, z)| (q.as_deref(), z.as_deref()))
            .unwrap_or((None, None));
        let name = offer.instance.name.clone();
        let cpus = offer.instance.resources.cpus as f64;
        let spot = offer.instance.resources.spot;
        let type_zones: Option<Vec<String>> = zones.map(|z| {
            z.get(&name)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        });
        let availability = match (
            quotas.and_then(|q| q.get(quota_code(&name, spot))),
            &type_zones,
        ) {
            (_, Some(z)) if z.is_empty() => InstanceAvailability::NotAvailable,
            (Some(limit), _) if *limit < cpus => InstanceAvailability::NoQuota,
            (Some(_), _) => InstanceAvailability::Available,
            (None, _) => InstanceAvailability::Unknown,
        };
        let mut o = offer.with_availability(availability);
        o.availability_zones = type_zones;
        out.push(o);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn families_and_quota_codes() {
        assert!(is_supported("t3.micro", None));
        assert!(is_supported("p5.48xlarge", None));
        assert!(!is_supported("x2iedn.xlarge", None));
        assert!(is_supported(
            "x2iedn.xlarge",
            Some(&["x2iedn.xlarge".to_string()])
        ));
        assert_eq!(quota_code("g4dn.xlarge", false), "L-DB2E81BA");
        assert_eq!(quota_code("p5.48xlarge", true), "L-7212CCBC");
        assert_eq!(quota_code("t3.micro", false), "L-1216C47A");
    }
}
