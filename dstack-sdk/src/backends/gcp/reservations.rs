//! Specific reservations (`reservation` in the fleet or run profile), as dstack does
//! (`compute.py` `_find_reservation`, `reservation_modifier`, `_offer_matches_reservation`,
//! `_reservation_has_capacity`; `resources.py` `find_reservation`, `create_instance_struct`):
//!
//! - the name is `<name>` (in `project_id`) or `projects/<project>/reservations/<name>`;
//!   anything else names no GCP reservation;
//! - `reservations.aggregatedList` with `(name = "…") AND (status = "READY") AND
//!   (specificReservationRequired = true)` gives the reservation per zone (cached 20 s: the
//!   in-use count changes often); a 403/404 finds none;
//! - offers: spot offers are dropped, on-demand offers keep only the zones whose reservation
//!   matches the machine type and accelerators, narrowed to those with free capacity (or all
//!   matching zones, `not_available`, when none has any);
//! - instances: `reservationAffinity` `SPECIFIC_RESERVATION` on the reservation, its placement
//!   policy (when no placement group is given) and its local SSDs as scratch disks; a zone
//!   without the reservation is skipped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::GcpCompute;
use super::errors::http_status_of;
use super::instances::accelerator_for;
use crate::backends::error::BackendResult;
use crate::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};

/// How long a reservation lookup is reused.
pub const RESERVATION_TTL: Duration = Duration::from_secs(20);

/// The affinity key of specific reservations.
pub const RESERVATION_NAME_KEY: &str = "compute.googleapis.com/reservation-name";

/// Zone → reservation (the `Reservation` resource as JSON).
pub type ZoneReservations = HashMap<String, Value>;

/// Reservation lookups by configured name, each kept for [`RESERVATION_TTL`].
#[derive(Debug, Default)]
pub struct ReservationCache(Mutex<HashMap<String, (Instant, ZoneReservations)>>);

/// `(project, name)` of a configured reservation, `None` when it cannot name one.
pub fn parse_name(configured: &str, default_project: &str) -> Option<(String, String)> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if let Some(rest) = configured.strip_prefix("projects/")
        && let Some((project, name)) = rest.split_once("/reservations/")
        && valid(project)
        && valid(name)
    {
        return Some((project.to_string(), name.to_string()));
    }
    valid(configured).then(|| (default_project.to_string(), configured.to_string()))
}

/// Escapes a value for a Compute Engine filter string (dstack's `sanitize_filter_value`).
pub fn sanitize_filter_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The project of a resource URL (`…/projects/<project>/…`).
pub fn resource_project(url: &str) -> Option<&str> {
    let rest = url.split("/projects/").nth(1)?;
    let project = rest.split('/').next()?;
    (!project.is_empty() && rest.contains('/')).then_some(project)
}

fn lock(
    cache: &ReservationCache,
) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ZoneReservations)>> {
    match cache.0.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// The reservation named `configured` per zone (dstack's `_find_reservation`).
pub async fn find(compute: &GcpCompute, configured: &str) -> BackendResult<ZoneReservations> {
    if let Some((at, v)) = lock(&compute.reservations).get(configured)
        && at.elapsed() < RESERVATION_TTL
    {
        return Ok(v.clone());
    }
    let Some((project, name)) = parse_name(configured, &compute.config.project_id) else {
        return Ok(ZoneReservations::new());
    };
    let filter = format!(
        "(name = \"{}\") AND (status = \"READY\") AND (specificReservationRequired = true)",
        sanitize_filter_value(&name)
    );
    let url = compute
        .clients
        .rest
        .compute_url(&format!("projects/{project}/aggregated/reservations"));
    let mut out = ZoneReservations::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![("filter", filter.as_str())];
        if let Some(t) = &token {
            query.push(("pageToken", t.as_str()));
        }
        let page = match compute
            .rest(
                "reservations.aggregatedList",
                Method::GET,
                &url,
                &query,
                None,
            )
            .await
        {
            Ok(p) => p,
            Err(e) if matches!(http_status_of(&e), Some(403 | 404)) => {
                tracing::warn!(reservation = %configured, error = %e, "could not find the reservation");
                return Ok(ZoneReservations::new());
            }
            Err(e) => return Err(e),
        };
        if let Some(items) = page["items"].as_object() {
            for (scope, list) in items {
                if let Some(first) = list["reservations"].as_array().and_then(|r| r.first()) {
                    let zone = scope.rsplit('/').next().unwrap_or(scope).to_string();
                    out.insert(zone, first.clone());
                }
            }
        }
        match page["nextPageToken"].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    lock(&compute.reservations).insert(configured.to_string(), (Instant::now(), out.clone()));
    Ok(out)
}

/// An int64 field (Compute Engine REST writes them as strings).
fn int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Whether the reservation is for the offer's machine type and accelerators (dstack's
/// `_offer_matches_reservation`).
pub fn offer_matches(offer: &InstanceOfferWithAvailability, reservation: &Value) -> bool {
    let props = &reservation["specificReservation"]["instanceProperties"];
    if !props.is_object() || props["machineType"].as_str() != Some(offer.instance.name.as_str()) {
        return false;
    }
    let gpus = &offer.instance.resources.gpus;
    let accelerators = props["guestAccelerators"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if accelerators.is_empty() {
        return gpus.is_empty();
    }
    if accelerators.len() > 1 {
        tracing::warn!(
            reservation = %reservation["selfLink"].as_str().unwrap_or_default(),
            "expected 0 or 1 accelerator types per instance; ignoring the reservation"
        );
        return false;
    }
    let acc = &accelerators[0];
    if int(&acc["acceleratorCount"]) != Some(gpus.len() as i64) {
        return false;
    }
    match gpus.first() {
        Some(g) => {
            accelerator_for(&g.name, g.memory_mib)
                == acc["acceleratorType"]
                    .as_str()
                    .and_then(|t| t.rsplit('/').next())
        }
        None => true,
    }
}

/// Whether the reservation has free capacity (`inUseCount < assuredCount`).
pub fn has_capacity(reservation: &Value) -> bool {
    let sr = &reservation["specificReservation"];
    match (int(&sr["inUseCount"]), int(&sr["assuredCount"])) {
        (Some(used), Some(assured)) => used < assured,
        _ => false,
    }
}

/// Narrows `offers` to the reservation (dstack's `reservation_modifier`).
pub fn apply_to_offers(
    offers: Vec<InstanceOfferWithAvailability>,
    by_zone: &ZoneReservations,
) -> Vec<InstanceOfferWithAvailability> {
    offers
        .into_iter()
        .filter_map(|mut offer| {
            if offer.instance.resources.spot {
                return None;
            }
            let zones = offer.availability_zones.clone().unwrap_or_default();
            let matching: Vec<String> = zones
                .into_iter()
                .filter(|z| by_zone.get(z).is_some_and(|r| offer_matches(&offer, r)))
                .collect();
            if matching.is_empty() {
                return None;
            }
            let with_capacity: Vec<String> = matching
                .iter()
                .filter(|z| by_zone.get(*z).is_some_and(has_capacity))
                .cloned()
                .collect();
            if with_capacity.is_empty() {
                offer.availability_zones = Some(matching);
                offer.availability = InstanceAvailability::NotAvailable;
            } else {
                offer.availability_zones = Some(with_capacity);
            }
            Some(offer)
        })
        .collect()
}

/// The instance fields a reservation adds: `reservationAffinity`, its placement policy (when
/// `placement_policy` is `None`) and its local SSDs (dstack's `create_instance_struct`).
pub fn apply_to_instance(body: &mut Value, reservation: &Value, zone: &str, default_project: &str) {
    let project = reservation["selfLink"]
        .as_str()
        .and_then(resource_project)
        .unwrap_or(default_project);
    let name = reservation["name"].as_str().unwrap_or_default();
    body["reservationAffinity"] = json!({
        "consumeReservationType": "SPECIFIC_RESERVATION",
        "key": RESERVATION_NAME_KEY,
        "values": [format!("projects/{project}/reservations/{name}")],
    });
    if body.get("resourcePolicies").is_none()
        && let Some(p) = reservation["resourcePolicies"]["placement"].as_str()
    {
        body["resourcePolicies"] = json!([p]);
    }
    let ssds = reservation["specificReservation"]["instanceProperties"]["localSsds"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(disks) = body["disks"].as_array_mut() {
        for ssd in ssds {
            let mut disk = json!({
                "autoDelete": true,
                "boot": false,
                "type": "SCRATCH",
                "initializeParams": {
                    "diskType": format!("zones/{zone}/diskTypes/local-ssd"),
                },
            });
            if let Some(size) = int(&ssd["diskSizeGb"]) {
                disk["initializeParams"]["diskSizeGb"] = json!(size.to_string());
            }
            if let Some(interface) = ssd["interface"].as_str() {
                disk["interface"] = json!(interface);
            }
            disks.push(disk);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_projects() {
        assert_eq!(
            parse_name("my-res", "p1"),
            Some(("p1".into(), "my-res".into()))
        );
        assert_eq!(
            parse_name("projects/other/reservations/r-1", "p1"),
            Some(("other".into(), "r-1".into()))
        );
        assert_eq!(
            parse_name("cr-0123456789abcdef0", "p1").map(|p| p.0),
            Some("p1".into())
        );
        assert_eq!(parse_name("Some Reservation", "p1"), None);
        assert_eq!(sanitize_filter_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(
            resource_project(
                "https://www.googleapis.com/compute/v1/projects/proj-1/zones/z/reservations/r"
            ),
            Some("proj-1")
        );
        assert!(has_capacity(
            &json!({"specificReservation": {"inUseCount": "1", "assuredCount": "2"}})
        ));
        assert!(!has_capacity(
            &json!({"specificReservation": {"inUseCount": "2", "assuredCount": "2"}})
        ));
    }
}
