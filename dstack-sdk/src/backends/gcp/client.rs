//! The Compute Engine clients (`google-cloud-compute-v1`), one per service the backend calls,
//! sharing the credentials and the endpoint override (`gcp.compute`, or `gcp`, from
//! [`Endpoints`](crate::backends::common::endpoint::Endpoints):
//! `DSTACK_ENDPOINT_URL_GCP[_COMPUTE]`).
//!
//! Zone and global operations are read through the `get_operation` call each client carries,
//! so no separate operations clients are built. The APIs the crate is not built with (Cloud
//! TPU, resource policies, reservations) go through [`GcpRest`] with the same credentials.

use google_cloud_auth::credentials::Credentials;
use google_cloud_compute_v1::client::{Firewalls, Instances, Regions, Subnetworks};

use super::rest::GcpRest;
use crate::backends::common::settings::BackendSettings;
use crate::backends::error::{BackendError, BackendResult};

/// The Compute Engine clients of one backend.
#[derive(Debug, Clone)]
pub struct GcpClients {
    /// `instances` (and zone operations).
    pub instances: Instances,
    /// `firewalls` (and global operations).
    pub firewalls: Firewalls,
    /// `subnetworks` (`listUsable`).
    pub subnetworks: Subnetworks,
    /// `regions` (validation, quotas).
    pub regions: Regions,
    /// Cloud TPU, resource policies and reservations (REST, same credentials).
    pub rest: GcpRest,
    /// The endpoint override in use, if any.
    pub endpoint: Option<String>,
}

fn builder_error(service: &str, e: impl std::fmt::Display) -> BackendError {
    let text = e.to_string();
    if text.to_ascii_lowercase().contains("credential") {
        BackendError::InvalidCredentials {
            message: format!("cannot build the GCP {service} client: {text}"),
        }
    } else {
        BackendError::Config {
            message: format!("cannot build the GCP {service} client: {text}"),
        }
    }
}

macro_rules! build_client {
    ($ty:ty, $name:literal, $creds:expr, $endpoint:expr) => {{
        // Retries are ours (backends/common/retry.rs, counted and logged); the client's own
        // would nest inside them.
        let mut b = <$ty>::builder()
            .with_credentials($creds.clone())
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
        if let Some(url) = $endpoint {
            b = b.with_endpoint(url.to_string());
        }
        b.build().await.map_err(|e| builder_error($name, e))?
    }};
}

impl GcpClients {
    /// Builds the clients (no network call).
    pub async fn new(credentials: &Credentials, settings: &BackendSettings) -> BackendResult<Self> {
        crate::http::install_crypto_provider();
        let endpoint = settings
            .endpoints
            .get("gcp", "compute")
            .map(|u| u.trim_end_matches('/').to_string());
        let ep = endpoint.as_deref();
        Ok(Self {
            instances: build_client!(Instances, "instances", credentials, ep),
            firewalls: build_client!(Firewalls, "firewalls", credentials, ep),
            subnetworks: build_client!(Subnetworks, "subnetworks", credentials, ep),
            regions: build_client!(Regions, "regions", credentials, ep),
            rest: GcpRest::new(credentials, settings)?,
            endpoint,
        })
    }
}
