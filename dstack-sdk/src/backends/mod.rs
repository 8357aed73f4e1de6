//! Cloud backends: the [`Compute`] interface and one implementation per cloud.
//!
//! | item | what it is |
//! |---|---|
//! | [`compute`] | [`Compute`] and the capability traits ([`ComputeWithCreateInstance`], [`ComputeWithRunJob`], [`ComputeWithPlacementGroups`]), [`InstanceConfiguration`] |
//! | [`common`] | plumbing every cloud shares: retries with back-off, HTTP with retries, endpoint overrides, resource tags, cloud-init and the agent bootstrap, catalog offers, the offer fall-through loop |
//! | `aws` | EC2 (feature `aws`) |
//! | `kubernetes` | pods behind a per-project SSH jump pod (feature `kubernetes`) |
//! | `gcp` | Compute Engine (feature `gcp`) |
//! | `azure` | Azure Resource Manager VMs (feature `azure`) |
//!
//! The engine builds a backend from a stored config with [`for_config`] and then only talks
//! to the returned `Arc<dyn Compute>`:
//!
//! ```no_run
//! # #[cfg(feature = "aws")]
//! # async fn demo(
//! #     config: dstack_sdk::models::backends::AnyBackendConfigWithCreds,
//! #     offers: Vec<dstack_sdk::models::offers::InstanceOfferWithAvailability>,
//! #     instance: dstack_sdk::backends::InstanceConfiguration,
//! # ) -> Result<(), dstack_sdk::backends::BackendError> {
//! use dstack_sdk::backends::{self, BackendSettings, common::provision};
//! let settings = BackendSettings::new("server-1");
//! let compute = backends::for_config(&config, &settings).await?;
//! compute.validate_credentials().await?;               // `invalid_credentials` on failure
//! let (offer, mut jpd) = provision::create_first_available(&*compute, &offers, &instance, None).await?;
//! while jpd.hostname.is_none() {
//!     compute.update_provisioning_data(&mut jpd).await?;  // poll, never blocks long
//! }
//! compute.terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref()).await?;
//! # let _ = offer; Ok(()) }
//! ```

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
pub mod common;
pub mod compute;
mod error;
#[cfg(feature = "gcp")]
pub mod gcp;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;

use std::sync::Arc;

pub use common::settings::{AgentDownload, BackendSettings};
pub use compute::{
    Capabilities, Compute, ComputeWithCreateInstance, ComputeWithPlacementGroups,
    ComputeWithRunJob, InstanceConfiguration, JobLaunch, PlacementGroupConfig,
    PlacementGroupProvisioningData,
};
pub use error::{BackendError, BackendResult};

use crate::models::backends::{AnyBackendConfigWithCreds, BackendType};

/// The backend types this build can create a [`Compute`] for.
pub fn supported_backends() -> Vec<BackendType> {
    [
        #[cfg(feature = "aws")]
        BackendType::Aws,
        #[cfg(feature = "kubernetes")]
        BackendType::Kubernetes,
        #[cfg(feature = "gcp")]
        BackendType::Gcp,
        #[cfg(feature = "azure")]
        BackendType::Azure,
    ]
    .to_vec()
}

/// Builds the [`Compute`] for a stored backend config (credentials included).
///
/// Does not call the cloud: use [`Compute::validate_credentials`] when a backend is created
/// or updated through the API. A backend type that this build does not include gives
/// [`BackendError::Unsupported`] (`backend_not_available`).
pub async fn for_config(
    config: &AnyBackendConfigWithCreds,
    settings: &BackendSettings,
) -> BackendResult<Arc<dyn Compute>> {
    match config {
        #[cfg(feature = "aws")]
        AnyBackendConfigWithCreds::Aws(c) => {
            let compute = aws::AwsCompute::new(c.clone(), settings.clone()).await?;
            Ok(Arc::new(compute))
        }
        #[cfg(feature = "kubernetes")]
        AnyBackendConfigWithCreds::Kubernetes(c) => {
            let compute = kubernetes::KubernetesCompute::new(c.clone(), settings.clone()).await?;
            Ok(Arc::new(compute))
        }
        #[cfg(feature = "gcp")]
        AnyBackendConfigWithCreds::Gcp(c) => {
            let compute = gcp::GcpCompute::new(c.clone(), settings.clone()).await?;
            Ok(Arc::new(compute))
        }
        #[cfg(feature = "azure")]
        AnyBackendConfigWithCreds::Azure(c) => {
            let compute = azure::AzureCompute::new(c.clone(), settings.clone()).await?;
            Ok(Arc::new(compute))
        }
        other => {
            let _ = settings;
            Err(BackendError::Unsupported(format!(
                "backend {:?} is not built into this binary (supported: {:?})",
                other.type_str(),
                supported_backends()
            )))
        }
    }
}
