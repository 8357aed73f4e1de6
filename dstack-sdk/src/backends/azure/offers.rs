//! Offers: catalog rows (provider `azure`) of the sizes dstack supports, in the configured
//! regions, with availability from the resource SKUs of each location
//! (`GET /subscriptions/{sub}/providers/Microsoft.Compute/skus?$filter=location eq '…'`).
//!
//! As in dstack: a size that the subscription cannot use in the location (not listed, or a
//! `Location` restriction such as `NotAvailableForSubscription`) is `no_quota`; a size with
//! only `Zone` restrictions is still usable in other zones. Usable sizes are `unknown`
//! (quotas are not read). When the SKUs cannot be listed, offers stay `unknown`. SKUs are
//! cached per location for [`SKUS_TTL`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use regex::Regex;
use serde_json::Value;

use super::AzureCompute;
use super::arm::api;
use super::auth::url_encode;
use crate::backends::common::offers::{DiskSizing, catalog_offers};
use crate::backends::error::BackendResult;
use crate::models::backends::BackendType;
use crate::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};
use crate::models::resources::Requirements;

/// OS disks: 30 GB (dstack's images) up to 4095 GB.
pub const DISK_SIZING: DiskSizing = DiskSizing::Configurable { min_gb: 30.0 };
/// The largest OS disk, GB.
pub const MAX_DISK_GB: u32 = 4095;
/// How long a location's SKUs are reused.
pub const SKUS_TTL: Duration = Duration::from_secs(300);

/// The VM series dstack provisions (`Standard_` + one of these).
pub const SUPPORTED_SERIES: &[&str] = &[
    r"D(\d+)s_v3",
    r"E(\d+)i?s_v4",
    r"E(\d+)-(\d+)s_v4",
    r"NC(\d+)s_v3",
    r"NC(\d+)as_T4_v3",
    r"ND(\d+)rs_v2",
    r"NV(\d+)adm?s_A10_v5",
    r"NC(\d+)ads_A100_v4",
    r"ND(\d+)asr_v4",
    r"ND(\d+)amsr_A100_v4",
];

fn supported_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        let alts: Vec<String> = SUPPORTED_SERIES.iter().map(|s| format!("({s})")).collect();
        Regex::new(&format!("^Standard_({})$", alts.join("|"))).ok()
    })
    .as_ref()
}

/// Whether the size is one dstack provisions.
pub fn is_supported(size: &str) -> bool {
    supported_re().is_some_and(|re| re.is_match(size))
}

/// The usable sizes of one location, with when they were read.
#[derive(Debug, Clone)]
pub struct LocationSkus {
    fetched: Instant,
    /// Sizes the subscription can use in the location.
    pub usable: HashSet<String>,
}

/// Whether a `virtualMachines` SKU is usable: no restriction, or only `Zone` ones.
pub fn sku_usable(sku: &Value) -> bool {
    let restrictions = sku
        .get("restrictions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    restrictions
        .iter()
        .all(|r| r.get("type").and_then(Value::as_str) == Some("Zone"))
}

async fn location_skus(compute: &AzureCompute, location: &str) -> Option<LocationSkus> {
    if let Some(s) = compute.cache_get_skus(location)
        && s.fetched.elapsed() < SKUS_TTL
    {
        return Some(s);
    }
    let filter = url_encode(&format!("location eq '{location}'"));
    let path = compute.arm.sub_path(&format!(
        "/providers/Microsoft.Compute/skus?$filter={filter}"
    ));
    let skus = match compute.arm.list(&path, api::SKUS).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(location, error = %e, "cannot list resource SKUs; availability unknown");
            return None;
        }
    };
    let usable = skus
        .iter()
        .filter(|s| s.get("resourceType").and_then(Value::as_str) == Some("virtualMachines"))
        .filter(|s| sku_usable(s))
        .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    let s = LocationSkus {
        fetched: Instant::now(),
        usable,
    };
    compute.cache_put_skus(location.to_string(), s.clone());
    Some(s)
}

/// The backend's offers for `requirements`, cheapest first.
pub async fn get_offers(
    compute: &AzureCompute,
    requirements: Option<&Requirements>,
) -> BackendResult<Vec<InstanceOfferWithAvailability>> {
    let catalog = compute.settings.catalog.snapshot();
    let offers = catalog_offers(
        &catalog,
        "azure",
        BackendType::Azure,
        requirements,
        DISK_SIZING,
        compute.config.regions.as_deref(),
        |item| is_supported(&item.instance_name),
    )?;
    let locations: BTreeSet<String> = offers.iter().map(|o| o.region.clone()).collect();
    let mut skus: HashMap<String, Option<LocationSkus>> = HashMap::new();
    for l in locations {
        let s = location_skus(compute, &l).await;
        skus.insert(l, s);
    }
    Ok(offers
        .into_iter()
        .map(|o| {
            let availability = match skus.get(&o.region) {
                Some(Some(s)) if s.usable.contains(&o.instance.name) => {
                    InstanceAvailability::Unknown
                }
                Some(Some(_)) => InstanceAvailability::NoQuota,
                _ => InstanceAvailability::Unknown,
            };
            o.with_availability(availability)
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn supported_sizes_and_restrictions() {
        assert!(is_supported("Standard_D4s_v3"));
        assert!(is_supported("Standard_NC4as_T4_v3"));
        assert!(is_supported("Standard_NV36ads_A10_v5"));
        assert!(!is_supported("Standard_B1s"));
        assert!(sku_usable(&serde_json::json!({"restrictions": []})));
        assert!(sku_usable(
            &serde_json::json!({"restrictions": [{"type": "Zone", "reasonCode": "NotAvailableForSubscription"}]})
        ));
        assert!(!sku_usable(
            &serde_json::json!({"restrictions": [{"type": "Location", "reasonCode": "NotAvailableForSubscription"}]})
        ));
    }
}
