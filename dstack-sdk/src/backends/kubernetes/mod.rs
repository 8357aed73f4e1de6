//! The Kubernetes backend (feature `kubernetes`): one pod per job, reached through a
//! per-project SSH jump pod.
//!
//! | file | concept |
//! |---|---|
//! | [`config`] | kubeconfig (inline `data` or `filename`), contexts → clusters (regions), namespaces, clients |
//! | [`api`] | kube errors → [`BackendError`] (401 → `invalid_credentials`), the retried call (429/5xx back-off), 404 helpers |
//! | [`resources`] | quantities, labels (dstack's + the sweep ids), GPU models from node labels, requests/limits |
//! | [`offers`] | offers from nodes' `allocatable` and GPU labels, requirement fitting |
//! | [`jump`] | the jump pod + NodePort service, the jump host (`ssh_proxy`), [`JumpKeyInstaller`] |
//! | `jump_keys` | `SshJumpKeyInstaller`: the installer over SSH with the project key (feature `ssh`) |
//! | [`pods`] | job pods: registry secret, pod spec, scheduling wait, ClusterIP service, provisioning-data polling |
//! | [`cleanup`] | termination (service, pod, secret; 404 = done), the labelled-pod listing for sweeps |
//!
//! The RBAC the dstack docs list is enough: `namespaces` get/create, `pods` and `services`
//! get/create/delete, `nodes` list (plus `secrets` create/delete when runs use private
//! registries, and `pods` list for [`KubernetesCompute::list_labelled_pods`]).
//!
//! Jobs are not dockerized (`dockerized: false`): the pod's main process is dstack's
//! `dstack-runner` (runner API on 10999, `sshd` on 10022), as in dstack. The provisioning
//! data gives `root@<service cluster IP>:10022` with `ssh_proxy` = the jump pod
//! (`root@<proxy_jump.hostname or a node's ExternalIP>:<nodePort>`), which is what the CLI's
//! attach path uses.

pub mod api;
pub mod cleanup;
pub mod config;
pub mod jump;
#[cfg(feature = "ssh")]
pub mod jump_keys;
pub mod offers;
pub mod pods;
pub mod resources;
pub mod sweep;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;

pub use jump::JumpKeyInstaller;

use crate::backends::common::settings::BackendSettings;
use crate::backends::compute::{
    Capabilities, Compute, ComputeWithRunJob, InstanceConfiguration, JobLaunch,
};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::backends::kubernetes::KubernetesBackendConfigWithCreds;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::resources::Requirements;

use self::config::Cluster;

/// How long `run_job` waits for the kubelet to start a pod (dstack's 10 s).
pub const DEFAULT_SCHEDULING_TIMEOUT: Duration = Duration::from_secs(10);

/// The Kubernetes backend.
#[derive(Debug)]
pub struct KubernetesCompute {
    config: KubernetesBackendConfigWithCreds,
    settings: BackendSettings,
    clusters: Vec<Cluster>,
    calls: AtomicU64,
    scheduling_timeout: Duration,
    poll_interval: Duration,
    jump_keys: Option<Arc<dyn JumpKeyInstaller>>,
}

impl KubernetesCompute {
    /// Builds the backend from its config: parses the kubeconfig and makes one client per
    /// cluster (no API call; see [`Compute::validate_credentials`]).
    pub async fn new(
        config: KubernetesBackendConfigWithCreds,
        settings: BackendSettings,
    ) -> BackendResult<Self> {
        let clusters = config::clusters(&config, &settings).await?;
        Ok(Self {
            config,
            settings,
            clusters,
            calls: AtomicU64::new(0),
            scheduling_timeout: DEFAULT_SCHEDULING_TIMEOUT,
            poll_interval: Duration::from_millis(500),
            jump_keys: None,
        })
    }

    /// Sets how long `run_job` waits for the pod to start, and how often it looks.
    pub fn with_scheduling_timeout(mut self, timeout: Duration, poll_interval: Duration) -> Self {
        self.scheduling_timeout = timeout;
        self.poll_interval = poll_interval;
        self
    }

    /// Sets what appends run keys to the jump pod (the engine's SSH client with the project
    /// key). Without one, `ssh_proxy` is still filled but only the project key gets through.
    pub fn with_jump_key_installer(mut self, installer: Arc<dyn JumpKeyInstaller>) -> Self {
        self.jump_keys = Some(installer);
        self
    }

    /// The clusters (regions), in config order.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// The backend config (the kubeconfig included; never log it).
    pub fn config(&self) -> &KubernetesBackendConfigWithCreds {
        &self.config
    }

    /// The API calls made so far (each attempt counts; for metrics and tests).
    pub fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    async fn list_nodes(&self, cluster: &Cluster) -> BackendResult<Vec<Node>> {
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        let lp = ListParams::default();
        let list = api::call(&self.settings.retry, &self.calls, "list nodes", || {
            nodes.list(&lp)
        })
        .await?;
        Ok(list.items)
    }
}

#[async_trait::async_trait]
impl Compute for KubernetesCompute {
    fn backend_type(&self) -> BackendType {
        BackendType::Kubernetes
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            run_job: true,
            multinode: true,
            privileged: true,
            ..Capabilities::default()
        }
    }

    #[tracing::instrument(level = "info", skip(self), fields(backend = "kubernetes"))]
    async fn validate_credentials(&self) -> BackendResult<()> {
        for cluster in &self.clusters {
            let nodes: Api<Node> = Api::all(cluster.client.clone());
            let lp = ListParams::default().limit(1);
            let r = api::call(&self.settings.retry, &self.calls, "list nodes", || {
                nodes.list(&lp)
            })
            .await;
            match r {
                Ok(_) => {}
                Err(BackendError::InvalidCredentials { message }) => {
                    return Err(BackendError::InvalidCredentials {
                        message: format!("context {:?}: {message}", cluster.context),
                    });
                }
                Err(BackendError::Cloud { code, message, .. }) if code == "403" => {
                    return Err(BackendError::InvalidCredentials {
                        message: format!(
                            "context {:?}: the credentials may not list nodes ({message}); \
                             grant the role from the kubernetes backend docs",
                            cluster.context
                        ),
                    });
                }
                Err(e) => {
                    return Err(BackendError::InvalidCredentials {
                        message: format!(
                            "context {:?}: cannot reach the API server: {e}",
                            cluster.context
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    #[tracing::instrument(level = "info", skip_all, fields(backend = "kubernetes"))]
    async fn get_offers(
        &self,
        requirements: Option<&Requirements>,
    ) -> BackendResult<Vec<InstanceOfferWithAvailability>> {
        let mut out = Vec::new();
        let mut last_err = None;
        let mut ok = 0usize;
        for cluster in &self.clusters {
            match self.list_nodes(cluster).await {
                Ok(nodes) => {
                    ok += 1;
                    out.extend(offers::offers_from_nodes(
                        &nodes,
                        &cluster.region,
                        requirements,
                    ));
                }
                Err(e) => {
                    tracing::warn!(context = %cluster.context, error = %e, "cannot get offers from cluster");
                    last_err = Some(e);
                }
            }
        }
        match last_err {
            Some(e) if ok == 0 => Err(e),
            _ => Ok(out),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = "kubernetes", instance_id = %jpd.instance_id, region = %jpd.region))]
    async fn update_provisioning_data(&self, jpd: &mut JobProvisioningData) -> BackendResult<()> {
        self.update_impl(jpd).await
    }

    #[tracing::instrument(
        level = "info",
        skip(self, _backend_data),
        fields(backend = "kubernetes")
    )]
    async fn terminate_instance(
        &self,
        instance_id: &str,
        region: &str,
        _backend_data: Option<&str>,
    ) -> BackendResult<()> {
        let cluster = self.cluster_for(region)?;
        self.delete_job_objects(cluster, instance_id).await
    }

    fn as_run_job(&self) -> Option<&dyn ComputeWithRunJob> {
        Some(self)
    }

    fn as_sweep(&self) -> Option<&dyn crate::backends::compute::ComputeWithSweep> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl ComputeWithRunJob for KubernetesCompute {
    #[tracing::instrument(level = "info", skip_all, fields(
        backend = "kubernetes",
        node = %offer.instance.name,
        region = %offer.region,
        instance_name = %config.instance_name,
        run = %job.run_name,
        job = %job.job_name,
    ))]
    async fn run_job(
        &self,
        offer: &InstanceOfferWithAvailability,
        config: &InstanceConfiguration,
        job: &JobLaunch,
    ) -> BackendResult<JobProvisioningData> {
        self.run_job_impl(offer, config, job).await
    }
}
