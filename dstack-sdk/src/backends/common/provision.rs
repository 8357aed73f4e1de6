//! The offer fall-through loop: try offers in order until one gets capacity.

use tracing::Instrument;

use crate::backends::compute::{Compute, InstanceConfiguration, PlacementGroupProvisioningData};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;

/// At most this many offers are tried per provisioning attempt (dstack's `MAX_OFFERS_TRIED`).
pub const MAX_OFFERS_TRIED: usize = 25;

/// Calls `create_instance` for each available offer in order (at most
/// [`MAX_OFFERS_TRIED`]) and returns the first success with its offer.
///
/// [`BackendError::NoCapacity`] (no capacity or quota in any zone of that offer) moves on to the
/// next offer; any other error also moves on but is remembered, and the last error is returned
/// when every tried offer fails. Invalid credentials stop the loop at once.
pub async fn create_first_available<'a>(
    compute: &dyn Compute,
    offers: &'a [InstanceOfferWithAvailability],
    config: &InstanceConfiguration,
    placement_group: Option<&PlacementGroupProvisioningData>,
) -> BackendResult<(&'a InstanceOfferWithAvailability, JobProvisioningData)> {
    let Some(creator) = compute.as_create_instance() else {
        return Err(BackendError::Unsupported(format!(
            "backend {} cannot create instances without a job",
            compute.backend_type()
        )));
    };
    let mut last: Option<BackendError> = None;
    let mut tried = 0usize;
    for offer in offers.iter().filter(|o| o.availability.is_available()) {
        if tried == MAX_OFFERS_TRIED {
            break;
        }
        tried += 1;
        let span = tracing::info_span!(
            "create_instance",
            backend = %offer.backend,
            instance_type = %offer.instance.name,
            region = %offer.region,
            spot = offer.instance.resources.spot,
            n = tried,
        );
        match creator
            .create_instance(offer, config, placement_group)
            .instrument(span)
            .await
        {
            Ok(jpd) => {
                tracing::info!(
                    instance_id = %jpd.instance_id,
                    instance_type = %offer.instance.name,
                    region = %offer.region,
                    tried,
                    "instance created"
                );
                return Ok((offer, jpd));
            }
            Err(e @ BackendError::InvalidCredentials { .. }) => return Err(e),
            Err(e) => {
                tracing::info!(
                    instance_type = %offer.instance.name,
                    region = %offer.region,
                    error = %e,
                    "offer failed; trying the next one"
                );
                last = Some(e);
            }
        }
    }
    Err(match last {
        Some(BackendError::NoCapacity { message }) => BackendError::NoCapacity {
            message: format!("{tried} offer(s) tried, none had capacity; last: {message}"),
        },
        Some(e) => e,
        None => BackendError::NoCapacity {
            message: "no available offers".into(),
        },
    })
}
