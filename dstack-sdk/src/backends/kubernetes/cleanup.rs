//! Termination and the sweep: delete a job's service, pod and registry secret (a missing
//! object is a success), and list what this server created by label.

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Api;
use kube::api::ListParams;

use super::KubernetesCompute;
use super::api;
use super::config::Cluster;
use super::jump::service_name;
use super::pods::registry_secret_name;
use crate::backends::common::tags::TAG_SERVER_ID;
use crate::backends::error::{BackendError, BackendResult};

impl KubernetesCompute {
    /// Deletes the pod's service, the pod and its registry secret; every object is tried,
    /// and the first error (if any) is returned after all attempts. 404 counts as deleted.
    pub(super) async fn delete_job_objects(
        &self,
        cluster: &Cluster,
        pod_name: &str,
    ) -> BackendResult<()> {
        let policy = &self.settings.retry;
        let ns = &cluster.namespace;
        let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
        let svc = service_name(pod_name);
        let secret = registry_secret_name(pod_name);
        let results = [
            (
                "service",
                svc.clone(),
                api::delete_opt(policy, &self.calls, &svcs, &svc).await,
            ),
            (
                "pod",
                pod_name.to_string(),
                api::delete_opt(policy, &self.calls, &pods, pod_name).await,
            ),
            (
                "secret",
                secret.clone(),
                api::delete_opt(policy, &self.calls, &secrets, &secret).await,
            ),
        ];
        let mut failed = Vec::new();
        for (what, name, r) in results {
            match r {
                Ok(true) => tracing::debug!(%what, %name, namespace = %ns, "deleted"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%what, %name, namespace = %ns, error = %e, "delete failed");
                    failed.push(format!("{what} {name}: {e}"));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BackendError::NotYetTerminated {
                message: format!(
                    "not all objects of {pod_name} were deleted in namespace {ns}: {}",
                    failed.join("; ")
                ),
            })
        }
    }

    /// Best-effort cleanup after a failed `run_job` (errors are logged: the objects carry our
    /// labels, so a sweep finds whatever is left).
    pub(super) async fn cleanup(&self, cluster: &Cluster, pod_name: &str) {
        if let Err(e) = self.delete_job_objects(cluster, pod_name).await {
            tracing::error!(pod = %pod_name, error = %e, "cleanup after a failed run_job incomplete; delete manually");
        }
    }

    /// The job pods this server created in `region` (label `dstack_server_id`), for a sweep
    /// against the database. Needs the `list` verb on pods, beyond the documented role.
    pub async fn list_labelled_pods(&self, region: &str) -> BackendResult<Vec<String>> {
        let cluster = self.cluster_for(region)?;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let lp = ListParams::default().labels(&format!(
            "{TAG_SERVER_ID}={},app.kubernetes.io/name=dstack-job",
            super::resources::label_value(&self.settings.server_id)
        ));
        let list = api::call(&self.settings.retry, &self.calls, "list pods", || {
            pods.list(&lp)
        })
        .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect())
    }
}
