//! The Azure backend: Azure Resource Manager virtual machines that run the host agent.
//!
//! | file | concept |
//! |---|---|
//! | [`auth`] | access tokens: client secret, or the default chain (environment, workload identity, managed identity, Azure CLI); cached |
//! | [`arm`] | the ARM REST client: `api-version`s, retries, error bodies, long-running operations |
//! | [`errors`] | ARM errors → [`BackendError`] (capacity and quota codes → `NoCapacity`) |
//! | [`network`] | resource group, NSG, virtual network and subnet per location (`vpc_ids`, `subnet_ids`, `public_ips`) |
//! | [`images`] | dstack's community gallery images (CPU, CUDA, GRID) |
//! | [`offers`] | catalog offers of supported sizes, availability from resource SKU restrictions |
//! | [`vms`] | VM creation (public IP, NIC, VM), polling, termination |
//! | [`sweep`] | the VMs this server tagged (for the engine's sweep) |
//!
//! The ARM generated crates are frozen on a legacy `azure_core`, so the ~12 calls are written
//! by hand over `reqwest`. Endpoint overrides: `azure.management` (ARM), `azure.login` (the
//! token authority) and `azure.imds` (managed identity), or `azure` for all three
//! (`DSTACK_ENDPOINT_URL_AZURE[_MANAGEMENT|_LOGIN|_IMDS]`).

pub mod arm;
pub mod auth;
pub mod errors;
pub mod images;
pub mod network;
pub mod offers;
pub mod sweep;
pub mod vms;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use self::arm::{ArmClient, DEFAULT_ARM_BASE, api};
use self::auth::{DEFAULT_IMDS, TokenProvider, TokenSource, authority_host};
use self::network::{NetworkChoice, is_valid_tag, split_id};
use self::offers::LocationSkus;
use crate::backends::common::settings::BackendSettings;
use crate::backends::compute::{
    Capabilities, Compute, ComputeWithCreateInstance, ComputeWithSweep, InstanceConfiguration,
    PlacementGroupProvisioningData, TaggedInstance,
};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::backends::azure::AzureBackendConfigWithCreds;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::Requirements;

/// How long creation-time operations (public IP, NIC, NSG, network, a failed VM's deletion)
/// are waited for by default.
pub const DEFAULT_LRO_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `terminate_instance` waits for a deletion before answering `NotYetTerminated`.
pub const DEFAULT_TERMINATE_WAIT: Duration = Duration::from_secs(30);
/// How long `create_instance` waits for the VM's creation to finish (dstack waits on the
/// poller with `timeout=600`).
pub const DEFAULT_VM_CREATE_TIMEOUT: Duration = Duration::from_secs(600);

/// The Azure backend.
#[derive(Debug)]
pub struct AzureCompute {
    config: AzureBackendConfigWithCreds,
    settings: BackendSettings,
    arm: ArmClient,
    lro_timeout: Duration,
    terminate_wait: Duration,
    vm_create_timeout: Duration,
    networks: Mutex<HashMap<String, NetworkChoice>>,
    images: Mutex<HashMap<String, String>>,
    skus: Mutex<HashMap<String, LocationSkus>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl AzureCompute {
    /// Builds the backend (checks the config; makes no Azure call). Default credentials read
    /// the process environment.
    pub async fn new(
        config: AzureBackendConfigWithCreds,
        settings: BackendSettings,
    ) -> BackendResult<Self> {
        Self::new_with_env(config, settings, |k| std::env::var(k).ok()).await
    }

    /// [`AzureCompute::new`] with the environment default credentials read (`AZURE_*`
    /// variables, `PATH` for the Azure CLI) given by `env`.
    pub async fn new_with_env(
        config: AzureBackendConfigWithCreds,
        settings: BackendSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> BackendResult<Self> {
        if let Some(tags) = &config.tags
            && let Some((k, _)) = tags.iter().find(|(k, v)| !is_valid_tag(k, v))
        {
            return Err(BackendError::Config {
                message: format!(
                    "Invalid Azure resource tag {k:?}: keys are 1-512 characters without <>&\\%?/, values at most 256"
                ),
            });
        }
        if let Some(mi) = &config.vm_managed_identity
            && split_id(mi, 2).is_none()
        {
            return Err(BackendError::Config {
                message: format!(
                    "Invalid vm_managed_identity {mi:?}: expected managedIdentityResourceGroup/managedIdentityName"
                ),
            });
        }
        if config.subscription_id.trim().is_empty() {
            return Err(BackendError::Config {
                message: "subscription_id is required".into(),
            });
        }
        crate::http::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .build()
            .map_err(|e| BackendError::Transport(e.to_string()))?;
        let sources = TokenSource::chain(&config.creds, &config.tenant_id, &env);
        let authority = authority_host(&settings.endpoints, &env);
        let imds = settings
            .endpoints
            .get("azure", "imds")
            .unwrap_or(DEFAULT_IMDS)
            .to_string();
        let tokens = TokenProvider::new(sources, authority, imds, client.clone(), settings.retry);
        let base = settings
            .endpoints
            .get("azure", "management")
            .unwrap_or(DEFAULT_ARM_BASE)
            .to_string();
        let arm = ArmClient::new(
            client,
            &base,
            config.subscription_id.trim(),
            tokens,
            settings.retry,
        );
        Ok(Self {
            config,
            settings,
            arm,
            lro_timeout: DEFAULT_LRO_TIMEOUT,
            terminate_wait: DEFAULT_TERMINATE_WAIT,
            vm_create_timeout: DEFAULT_VM_CREATE_TIMEOUT,
            networks: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            skus: Mutex::new(HashMap::new()),
        })
    }

    /// Sets how often long-running operations are polled (without a `Retry-After` hint), how
    /// long creation-time operations are waited for, and how long `terminate_instance` waits
    /// before answering `NotYetTerminated`.
    pub fn with_timing(
        mut self,
        poll_interval: Duration,
        lro_timeout: Duration,
        terminate_wait: Duration,
    ) -> Self {
        self.arm.set_poll_interval(poll_interval);
        self.lro_timeout = lro_timeout;
        self.terminate_wait = terminate_wait;
        self
    }

    /// Sets how long `create_instance` waits for the VM's creation before deleting it and
    /// failing (default [`DEFAULT_VM_CREATE_TIMEOUT`]).
    pub fn with_vm_create_timeout(mut self, timeout: Duration) -> Self {
        self.vm_create_timeout = timeout;
        self
    }

    /// HTTP requests sent to ARM so far (each attempt counts; for metrics and tests).
    pub fn api_calls(&self) -> u64 {
        self.arm.calls()
    }

    /// The backend config (credentials included; never log it).
    pub fn config(&self) -> &AzureBackendConfigWithCreds {
        &self.config
    }

    /// Where tokens may come from, in the order they are tried.
    pub fn token_sources(&self) -> &[TokenSource] {
        self.arm.tokens().sources()
    }

    /// The source that yielded the tokens, once one has.
    pub async fn active_token_source(&self) -> Option<TokenSource> {
        self.arm.tokens().active_source().await
    }

    /// The resource group VMs of `project` go into: `resource_group`, else `dstack-<project>`.
    pub fn resource_group_for(&self, project: &str) -> String {
        match &self.config.resource_group {
            Some(rg) if !rg.trim().is_empty() => rg.trim().to_string(),
            _ => {
                let clean: String = project
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || "-_.()".contains(c) {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                format!("dstack-{clean}")
            }
        }
    }

    /// Whether VMs get public IPs (`public_ips`, default true).
    pub fn public_ips(&self) -> bool {
        self.config.public_ips.unwrap_or(true)
    }

    fn managed_identity_id(&self) -> Option<String> {
        let mi = self.config.vm_managed_identity.as_ref()?;
        let parts = split_id(mi, 2)?;
        Some(self.arm.resource_id(
            &parts[0],
            "Microsoft.ManagedIdentity/userAssignedIdentities",
            &parts[1],
        ))
    }

    fn cache_get_network(&self, key: &str) -> Option<NetworkChoice> {
        lock(&self.networks).get(key).cloned()
    }

    fn cache_put_network(&self, key: String, c: NetworkChoice) {
        lock(&self.networks).insert(key, c);
    }

    fn cache_get_image(&self, key: &str) -> Option<String> {
        lock(&self.images).get(key).cloned()
    }

    fn cache_put_image(&self, key: String, id: String) {
        lock(&self.images).insert(key, id);
    }

    fn cache_get_skus(&self, location: &str) -> Option<LocationSkus> {
        lock(&self.skus).get(location).cloned()
    }

    fn cache_put_skus(&self, location: String, s: LocationSkus) {
        lock(&self.skus).insert(location, s);
    }
}

#[async_trait::async_trait]
impl Compute for AzureCompute {
    fn backend_type(&self) -> BackendType {
        BackendType::Azure
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_instance: true,
            multinode: true,
            privileged: true,
            instance_volumes: true,
            ..Capabilities::default()
        }
    }

    #[tracing::instrument(level = "info", skip(self), fields(backend = "azure"))]
    async fn validate_credentials(&self) -> BackendResult<()> {
        let path = self.arm.sub_path("");
        match self.arm.get(&path, api::RESOURCES).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_auth() => Err(BackendError::InvalidCredentials {
                message: e.to_string(),
            }),
            Err(e) if e.is_not_found() => Err(BackendError::InvalidCredentials {
                message: format!(
                    "subscription {} not found or not accessible: {e}",
                    self.arm.subscription()
                ),
            }),
            Err(e) => Err(e.into()),
        }
    }

    #[tracing::instrument(level = "info", skip_all, fields(backend = "azure"))]
    async fn get_offers(
        &self,
        requirements: Option<&Requirements>,
    ) -> BackendResult<Vec<InstanceOfferWithAvailability>> {
        offers::get_offers(self, requirements).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "azure", instance_id = %jpd.instance_id, region = %jpd.region))]
    async fn update_provisioning_data(&self, jpd: &mut JobProvisioningData) -> BackendResult<()> {
        vms::update_provisioning_data(self, jpd).await
    }

    #[tracing::instrument(level = "info", skip(self, backend_data), fields(backend = "azure"))]
    async fn terminate_instance(
        &self,
        instance_id: &str,
        region: &str,
        backend_data: Option<&str>,
    ) -> BackendResult<()> {
        vms::terminate(self, instance_id, region, backend_data).await
    }

    fn as_create_instance(&self) -> Option<&dyn ComputeWithCreateInstance> {
        Some(self)
    }

    fn as_sweep(&self) -> Option<&dyn ComputeWithSweep> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl ComputeWithSweep for AzureCompute {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = "azure"))]
    async fn list_tagged_instances(&self, server_id: &str) -> BackendResult<Vec<TaggedInstance>> {
        sweep::list_tagged_instances(self, server_id).await
    }
}

#[async_trait::async_trait]
impl ComputeWithCreateInstance for AzureCompute {
    #[tracing::instrument(level = "info", skip_all, fields(
        backend = "azure",
        instance_type = %offer.instance.name,
        region = %offer.region,
        spot = offer.instance.resources.spot,
        instance_name = %config.instance_name,
    ))]
    async fn create_instance(
        &self,
        offer: &InstanceOfferWithAvailability,
        config: &InstanceConfiguration,
        _placement_group: Option<&PlacementGroupProvisioningData>,
    ) -> BackendResult<JobProvisioningData> {
        vms::create_instance(self, offer, config).await
    }
}
