//! Offers: catalog rows (provider `aws`) of supported families in the configured regions, with
//! availability from Service Quotas (vCPU quotas per family) and the zones each instance type
//! is offered in (`DescribeInstanceTypeOfferings`).
//!
//! A quota that cannot be read (no permission, emulator without Service Quotas) gives
//! `unknown` availability, as dstack does; a known quota below the offer's vCPUs gives
//! `no_quota`; a type offered in no zone gives `not_available`. Both are cached per region
//! for [`FACTS_TTL`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, LocationType};

use super::AwsCompute;
use super::errors::map_sdk_error;
use crate::backends::common::offers::{DiskSizing, catalog_offers};
use crate::backends::common::retry::Backoff;
use crate::backends::error::BackendResult;
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

/// Quota code → vCPU limit for a region; `None` when the quotas cannot be read.
async fn region_quotas(compute: &AwsCompute, region: &str) -> Option<HashMap<String, f64>> {
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
        .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(region, error = %e, "service quotas unavailable; availability unknown");
                return None;
            }
        };
        for q in page.quotas() {
            if let (Some(code), Some(v)) = (q.quota_code(), q.value()) {
                out.insert(code.to_string(), v);
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Some(out),
        }
    }
}

/// Instance type → zones where it is offered; `None` when the call fails.
async fn region_zones(
    compute: &AwsCompute,
    region: &str,
    types: &BTreeSet<String>,
) -> Option<HashMap<String, BTreeSet<String>>> {
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
                .await;
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(region, error = %e, "cannot list instance type zones");
                    return None;
                }
            };
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
    Some(out)
}

/// How long quotas and zones are reused between `get_offers` calls.
pub const FACTS_TTL: Duration = Duration::from_secs(300);

/// What availability is computed from, per region (cached for [`FACTS_TTL`]).
#[derive(Debug, Clone)]
pub struct RegionFacts {
    fetched: Instant,
    types: BTreeSet<String>,
    /// Quota code → vCPU limit; `None` when unreadable.
    pub quotas: Option<HashMap<String, f64>>,
    /// Instance type → zones; `None` when unreadable.
    pub zones: Option<HashMap<String, BTreeSet<String>>>,
}

/// The cache of [`RegionFacts`] by region.
#[derive(Debug, Default)]
pub struct FactsCache(Mutex<HashMap<String, RegionFacts>>);

async fn region_facts(compute: &AwsCompute, region: &str, types: &BTreeSet<String>) -> RegionFacts {
    let cached = {
        let cache = match compute.facts.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        cache.get(region).cloned()
    };
    if let Some(f) = cached
        && f.fetched.elapsed() < FACTS_TTL
        && types.is_subset(&f.types)
    {
        return f;
    }
    let facts = RegionFacts {
        fetched: Instant::now(),
        types: types.clone(),
        quotas: region_quotas(compute, region).await,
        zones: region_zones(compute, region, types).await,
    };
    let mut cache = match compute.facts.0.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    cache.insert(region.to_string(), facts.clone());
    facts
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
    let mut by_region: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for o in &offers {
        by_region
            .entry(o.region.clone())
            .or_default()
            .insert(o.instance.name.clone());
    }
    let mut facts: HashMap<String, RegionFacts> = HashMap::new();
    for (region, types) in &by_region {
        facts.insert(region.clone(), region_facts(compute, region, types).await);
    }
    let mut out = Vec::with_capacity(offers.len());
    for offer in offers {
        let (quotas, zones) = facts
            .get(&offer.region)
            .map(|f| (f.quotas.as_ref(), f.zones.as_ref()))
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
