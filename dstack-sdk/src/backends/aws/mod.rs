//! The AWS (EC2) backend.
//!
//! | file | concept |
//! |---|---|
//! | [`client`] | credentials (`access_key` or the default chain) and per-region SDK clients |
//! | [`errors`] | SDK errors → [`BackendError`], throttling/capacity/credential codes, the retried call |
//! | [`offers`] | catalog offers + Service Quotas (availability) + zones per instance type |
//! | [`images`] | AMI selection (`os_images` or the defaults) |
//! | [`networking`] | VPC and subnet choice (`vpc_name`, `vpc_ids`, `default_vpcs`, `public_ips`), security group |
//! | [`instances`] | `RunInstances` per zone with fall-through, polling, termination, EIPs, spot |
//! | [`placement`] | cluster placement groups |
//! | [`cache`] | TTL caches (with coalescing) for the image, network and security group lookups |
//! | [`sweep`] | the instances and Elastic IPs this server tagged, in every configured region (for the engine's sweep) |
//!
//! Every call is counted ([`AwsCompute::api_calls`]) and runs through the shared back-off
//! (throttling such as `RequestLimitExceeded` is retried). The per-instance lookups (AMI,
//! VPC/subnets/route tables, security group) are cached per region for 600 s, like dstack.

pub mod cache;
pub mod client;
pub mod errors;
pub mod images;
pub mod instances;
pub mod networking;
pub mod offers;
pub mod placement;
pub mod sweep;

use std::sync::atomic::{AtomicU64, Ordering};

use indexmap::IndexMap;

use crate::backends::common::settings::BackendSettings;
use crate::backends::compute::{
    Capabilities, Compute, ComputeWithCreateInstance, ComputeWithPlacementGroups, ComputeWithSweep,
    InstanceConfiguration, PlacementGroupConfig, PlacementGroupProvisioningData, TaggedInstance,
};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::backends::aws::AwsBackendConfigWithCreds;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::Requirements;

use self::client::{AwsClients, DEFAULT_REGION, RegionClients};

/// The AWS backend: EC2 instances that run the host agent.
#[derive(Debug)]
pub struct AwsCompute {
    config: AwsBackendConfigWithCreds,
    settings: BackendSettings,
    clients: AwsClients,
    calls: AtomicU64,
    facts: offers::OfferFactsCache,
    lookups: cache::LookupCache,
}

impl AwsCompute {
    /// Builds the backend (loads credentials; makes no AWS call).
    pub async fn new(
        config: AwsBackendConfigWithCreds,
        settings: BackendSettings,
    ) -> BackendResult<Self> {
        if let Some(tags) = &config.tags {
            crate::backends::common::tags::validate_tags(tags)
                .map_err(|message| BackendError::Config { message })?;
        }
        let home = config
            .regions
            .as_ref()
            .and_then(|r| r.first())
            .map(String::as_str)
            .unwrap_or(DEFAULT_REGION)
            .to_string();
        let clients = AwsClients::new(&config.creds, &home, &settings).await;
        Ok(Self {
            config,
            settings,
            clients,
            calls: AtomicU64::new(0),
            facts: offers::OfferFactsCache::default(),
            lookups: cache::LookupCache::default(),
        })
    }

    /// The AWS API calls made so far (each attempt counts; for metrics and tests).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The backend config (credentials included; never log it).
    pub fn config(&self) -> &AwsBackendConfigWithCreds {
        &self.config
    }

    fn home_region(&self) -> &str {
        self.config
            .regions
            .as_ref()
            .and_then(|r| r.first())
            .map(String::as_str)
            .unwrap_or(DEFAULT_REGION)
    }

    fn region(&self, region: &str) -> RegionClients {
        self.clients.region(region)
    }

    fn backend_tags(&self) -> Option<&IndexMap<String, String>> {
        self.config.tags.as_ref()
    }

    /// Runs one EC2/Service Quotas call with the shared back-off and counts it.
    async fn call<T, Fut>(&self, what: &str, op: impl FnMut() -> Fut) -> BackendResult<T>
    where
        Fut: std::future::Future<Output = BackendResult<T>>,
    {
        errors::call(&self.settings.retry, what, &self.calls, op).await
    }
}

#[async_trait::async_trait]
impl Compute for AwsCompute {
    fn backend_type(&self) -> BackendType {
        BackendType::Aws
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

    #[tracing::instrument(level = "info", skip(self), fields(backend = "aws"))]
    async fn validate_credentials(&self) -> BackendResult<()> {
        let region = self.home_region().to_string();
        let ec2 = self.region(&region).ec2;
        let out = self
            .call("DescribeRegions", || async {
                ec2.describe_regions()
                    .send()
                    .await
                    .map_err(errors::map_sdk_error)
            })
            .await
            .map_err(|e| match e {
                BackendError::Cloud { code, message, .. }
                    if code == "UnauthorizedOperation" || code == "AccessDenied" =>
                {
                    BackendError::InvalidCredentials {
                        message: format!("{code}: {message}"),
                    }
                }
                other => other,
            })?;
        if let Some(wanted) = &self.config.regions {
            let known: Vec<&str> = out
                .regions()
                .iter()
                .filter_map(|r| r.region_name())
                .collect();
            let unknown: Vec<&String> = wanted
                .iter()
                .filter(|r| !known.contains(&r.as_str()))
                .collect();
            if !known.is_empty() && !unknown.is_empty() {
                return Err(BackendError::Config {
                    message: format!("Unknown or disabled AWS regions: {unknown:?}"),
                });
            }
        }
        Ok(())
    }

    #[tracing::instrument(level = "info", skip_all, fields(backend = "aws"))]
    async fn get_offers(
        &self,
        requirements: Option<&Requirements>,
    ) -> BackendResult<Vec<InstanceOfferWithAvailability>> {
        offers::get_offers(self, requirements).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "aws", instance_id = %jpd.instance_id, region = %jpd.region))]
    async fn update_provisioning_data(&self, jpd: &mut JobProvisioningData) -> BackendResult<()> {
        instances::update_provisioning_data(self, jpd).await
    }

    #[tracing::instrument(level = "info", skip(self, backend_data), fields(backend = "aws"))]
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
impl ComputeWithSweep for AwsCompute {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = "aws"))]
    async fn list_tagged_instances(&self, server_id: &str) -> BackendResult<Vec<TaggedInstance>> {
        sweep::list_tagged_instances(self, server_id).await
    }

    #[tracing::instrument(level = "info", skip_all, fields(backend = "aws", kind = %t.kind, id = %t.instance_id, region = %t.region))]
    async fn delete_tagged(&self, t: &TaggedInstance) -> BackendResult<()> {
        sweep::delete_tagged(self, t).await
    }
}

#[async_trait::async_trait]
impl ComputeWithCreateInstance for AwsCompute {
    #[tracing::instrument(level = "info", skip_all, fields(
        backend = "aws",
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
impl ComputeWithPlacementGroups for AwsCompute {
    #[tracing::instrument(level = "info", skip_all, fields(backend = "aws", name = %config.name, region = %config.region))]
    async fn create_placement_group(
        &self,
        config: &PlacementGroupConfig,
    ) -> BackendResult<PlacementGroupProvisioningData> {
        placement::create(self, config).await
    }

    #[tracing::instrument(level = "info", skip_all, fields(backend = "aws", name = %pg.name, region = %pg.region))]
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
        // dstack's `_offer_supports_placement_group`: burstable t2/t3 cannot join a cluster
        // placement group; everything else can (EFA is a separate question).
        let name = &offer.instance.name;
        pg.region == offer.region && !name.starts_with("t2.") && !name.starts_with("t3.")
    }
}
