//! The GCP (Compute Engine) backend.
//!
//! | file | concept |
//! |---|---|
//! | [`auth`] | service-account key or application default credentials |
//! | [`client`] | the `google-cloud-compute-v1` clients (endpoint override, shared credentials) |
//! | [`errors`] | client and operation errors → [`BackendError`], the retried call |
//! | [`operations`] | waiting for zone and global operations |
//! | [`offers`] | catalog offers merged per region with their zones, GPU quotas |
//! | [`networking`] | VPC / shared VPC / subnetworks, the SSH firewall rule |
//! | [`instances`] | `instances.insert` per zone with fall-through, polling, deletion |
//! | [`tpu`] | Cloud TPU VMs (TPU v2 API): TPU offers, node creation per zone, polling, deletion |
//! | [`placement`] | cluster placement groups as `COLLOCATED` resource policies |
//! | [`reservations`] | specific reservations: offer narrowing, `reservationAffinity` |
//! | [`rest`] | REST calls for the APIs the Compute Engine crate is not built with |
//! | [`sweep`] | the instances and Cloud TPU nodes this server labelled (for the engine's sweep) |
//!
//! Every call runs through the shared back-off (429, 5xx and transport errors are retried)
//! and is counted ([`GcpCompute::api_calls`]).

pub mod auth;
pub mod client;
pub mod errors;
pub mod instances;
pub mod networking;
pub mod offers;
pub mod operations;
pub mod placement;
pub mod reservations;
pub mod rest;
pub mod sweep;
pub mod tpu;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backends::common::settings::BackendSettings;
use crate::backends::compute::{
    Capabilities, Compute, ComputeWithCreateInstance, ComputeWithPlacementGroups, ComputeWithSweep,
    InstanceConfiguration, PlacementGroupConfig, PlacementGroupProvisioningData, TaggedInstance,
};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::backends::gcp::GcpBackendConfigWithCreds;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::Requirements;

use self::auth::CredentialsInfo;
use self::client::GcpClients;
use self::errors::{http_status_of, map_gax_error};
use self::operations::OperationPolling;

/// The GCP backend: Compute Engine instances that run the host agent.
pub struct GcpCompute {
    config: GcpBackendConfigWithCreds,
    settings: BackendSettings,
    clients: GcpClients,
    identity: CredentialsInfo,
    polling: OperationPolling,
    calls: AtomicU64,
    subnets: networking::SubnetCache,
    quotas: offers::QuotaCache,
    reservations: reservations::ReservationCache,
}

impl fmt::Debug for GcpCompute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config holds the key: only non-secret facts are shown.
        f.debug_struct("GcpCompute")
            .field("project_id", &self.config.project_id)
            .field("regions", &self.config.regions)
            .field("identity", &self.identity)
            .field("endpoint", &self.clients.endpoint)
            .field("polling", &self.polling)
            .finish_non_exhaustive()
    }
}

impl GcpCompute {
    /// Builds the backend: loads the credentials and builds the clients (no GCP call).
    ///
    /// A malformed service account key gives [`BackendError::InvalidCredentials`]; labels in
    /// `tags` that GCP would reject give [`BackendError::Config`].
    pub async fn new(
        config: GcpBackendConfigWithCreds,
        settings: BackendSettings,
    ) -> BackendResult<Self> {
        if let Some(tags) = &config.tags {
            for (k, v) in tags {
                if !networking::is_valid_resource_name(k) || !networking::is_valid_label_value(v) {
                    return Err(BackendError::Config {
                        message: format!(
                            "Invalid resource label {k:?}. See labels restrictions: \
                             https://cloud.google.com/compute/docs/labeling-resources#requirements"
                        ),
                    });
                }
            }
        }
        if config.project_id.trim().is_empty() {
            return Err(BackendError::Config {
                message: "project_id is required".into(),
            });
        }
        let (credentials, identity) = auth::build_credentials(&config.creds)?;
        let clients = GcpClients::new(&credentials, &settings).await?;
        Ok(Self {
            config,
            settings,
            clients,
            identity,
            polling: OperationPolling::default(),
            calls: AtomicU64::new(0),
            subnets: networking::SubnetCache::default(),
            quotas: offers::QuotaCache::default(),
            reservations: reservations::ReservationCache::default(),
        })
    }

    /// Sets how operations are awaited (tests use short intervals).
    pub fn with_operation_polling(mut self, polling: OperationPolling) -> Self {
        self.polling = polling;
        self
    }

    /// The Compute Engine calls made so far (each attempt counts; for metrics and tests).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The backend config (credentials included; never log it).
    pub fn config(&self) -> &GcpBackendConfigWithCreds {
        &self.config
    }

    /// The project that owns the VPC (`vpc_project_id` for a shared VPC, else `project_id`).
    pub fn vpc_project(&self) -> &str {
        self.config
            .vpc_project_id
            .as_deref()
            .unwrap_or(&self.config.project_id)
    }

    /// Whether instances get external IPs (`public_ips`, default true).
    pub fn public_ips(&self) -> bool {
        self.config.public_ips.unwrap_or(true)
    }

    /// Runs one Compute Engine call with the shared back-off and counts it.
    async fn call<T, Fut>(&self, what: &str, op: impl FnMut() -> Fut) -> BackendResult<T>
    where
        Fut: std::future::Future<Output = BackendResult<T>>,
    {
        errors::call(&self.settings.retry, what, &self.calls, op).await
    }

    /// Runs one REST call ([`rest::GcpRest::request`]) with the shared back-off and counts it.
    async fn rest(
        &self,
        what: &str,
        method: reqwest::Method,
        url: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> BackendResult<serde_json::Value> {
        self.call(what, || {
            self.clients.rest.request(method.clone(), url, query, body)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Compute for GcpCompute {
    fn backend_type(&self) -> BackendType {
        BackendType::Gcp
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_instance: true,
            multinode: true,
            placement_groups: true,
            reservation: true,
            privileged: true,
            instance_volumes: true,
            ..Capabilities::default()
        }
    }

    #[tracing::instrument(level = "info", skip(self), fields(backend = "gcp", project = %self.config.project_id))]
    async fn validate_credentials(&self) -> BackendResult<()> {
        let project = self.config.project_id.clone();
        let mut known: Vec<String> = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let t = token.clone();
            let page = self
                .call("regions.list", || {
                    let req = self
                        .clients
                        .regions
                        .list()
                        .set_project(project.clone())
                        .set_or_clear_page_token(t.clone());
                    async move { req.send().await.map_err(map_gax_error) }
                })
                .await
                .map_err(|e| match (&e, http_status_of(&e)) {
                    (BackendError::InvalidCredentials { .. }, _) => e,
                    (_, Some(401 | 403)) => BackendError::InvalidCredentials {
                        message: e.to_string(),
                    },
                    (_, Some(404)) => BackendError::Config {
                        message: format!(
                            "GCP project {project} not found or the Compute Engine API is not enabled: {e}"
                        ),
                    },
                    _ => e,
                })?;
            known.extend(page.items.iter().filter_map(|r| r.name.clone()));
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        if let Some(wanted) = &self.config.regions {
            let unknown: Vec<&String> = wanted.iter().filter(|r| !known.contains(r)).collect();
            if !known.is_empty() && !unknown.is_empty() {
                return Err(BackendError::Config {
                    message: format!("Unknown GCP regions: {unknown:?}"),
                });
            }
        }
        Ok(())
    }

    #[tracing::instrument(level = "info", skip_all, fields(backend = "gcp"))]
    async fn get_offers(
        &self,
        requirements: Option<&Requirements>,
    ) -> BackendResult<Vec<InstanceOfferWithAvailability>> {
        offers::get_offers(self, requirements).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "gcp", instance_id = %jpd.instance_id, region = %jpd.region))]
    async fn update_provisioning_data(&self, jpd: &mut JobProvisioningData) -> BackendResult<()> {
        instances::update_provisioning_data(self, jpd).await
    }

    #[tracing::instrument(level = "info", skip(self, backend_data), fields(backend = "gcp"))]
    async fn terminate_instance(
        &self,
        instance_id: &str,
        region: &str,
        backend_data: Option<&str>,
    ) -> BackendResult<()> {
        instances::terminate(self, instance_id, region, backend_data).await
    }

    fn as_create_instance(&self) -> Option<&dyn ComputeWithCreateInstance> {
        Some(self)
    }

    fn as_placement_groups(&self) -> Option<&dyn ComputeWithPlacementGroups> {
        Some(self)
    }

    fn as_sweep(&self) -> Option<&dyn ComputeWithSweep> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl ComputeWithSweep for GcpCompute {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = "gcp", project = %self.config.project_id))]
    async fn list_tagged_instances(&self, server_id: &str) -> BackendResult<Vec<TaggedInstance>> {
        sweep::list_tagged_instances(self, server_id).await
    }
}

#[async_trait::async_trait]
impl ComputeWithCreateInstance for GcpCompute {
    #[tracing::instrument(level = "info", skip_all, fields(
        backend = "gcp",
        instance_type = %offer.instance.name,
        region = %offer.region,
        spot = offer.instance.resources.spot,
        instance_name = %config.instance_name,
    ))]
    async fn create_instance(
        &self,
        offer: &InstanceOfferWithAvailability,
        config: &InstanceConfiguration,
        placement_group: Option<&PlacementGroupProvisioningData>,
    ) -> BackendResult<JobProvisioningData> {
        instances::create_instance(self, offer, config, placement_group).await
    }
}

#[async_trait::async_trait]
impl ComputeWithPlacementGroups for GcpCompute {
    #[tracing::instrument(level = "info", skip_all, fields(backend = "gcp", name = %config.name, region = %config.region))]
    async fn create_placement_group(
        &self,
        config: &PlacementGroupConfig,
    ) -> BackendResult<PlacementGroupProvisioningData> {
        placement::create(self, config).await
    }

    #[tracing::instrument(level = "info", skip_all, fields(backend = "gcp", name = %pg.name, region = %pg.region))]
    async fn delete_placement_group(
        &self,
        pg: &PlacementGroupProvisioningData,
    ) -> BackendResult<()> {
        placement::delete(self, pg).await
    }

    fn is_suitable_placement_group(
        &self,
        pg: &PlacementGroupProvisioningData,
        offer: &InstanceOfferWithAvailability,
    ) -> bool {
        placement::is_suitable(pg, offer)
    }
}
