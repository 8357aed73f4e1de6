//! The job containers this server created, for the engine's sweep.
//!
//! A job container is a job pod with its `ClusterIP` service (`<pod>-service`) and, for
//! private registries, its registry secret (`<pod>-registry-auth`); all three carry the same
//! labels ([`build_labels`](super::resources::build_labels)): `dstack_server_id`,
//! `dstack_instance_id` (the **job** id: container backends have no instance row),
//! `app.kubernetes.io/name=dstack-job` and `app.kubernetes.io/instance=<pod>`.
//!
//! In every cluster (region) the pods, services and secrets labelled with this server's id
//! and the job component are listed (`GET …/namespaces/{ns}/{pods,services,secrets}` with a
//! label selector) and grouped by `app.kubernetes.io/instance` into one
//! [`TaggedKind::JobContainer`] per pod name — also when the pod itself is gone and only its
//! service or secret is left. Its creation time is the earliest of the group's objects; its
//! state the pod's phase, or `orphaned` without a pod. Deletion is
//! [`Compute::terminate_instance`](crate::backends::Compute::terminate_instance) with the pod
//! name, which deletes all three (a missing object is a success). The per-project SSH jump
//! pods (`app.kubernetes.io/name=dstack-ssh-proxy`) belong to no job and are never listed.
//!
//! Listing needs the `list` verb on pods, services and secrets in the namespace, beyond the
//! role the Backends page documents (which is all provisioning needs). Without it (403) the
//! cluster, or its services or secrets, are simply not swept (logged at debug level); any
//! other listing error skips them with a warning (the first error is returned when no cluster
//! could be listed).

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::ListParams;
use serde::de::DeserializeOwned;

use super::KubernetesCompute;
use super::api;
use super::config::Cluster;
use super::resources::{LABEL_APP_INSTANCE, LABEL_APP_NAME, label_value};
use crate::backends::common::tags::{TAG_INSTANCE_ID, TAG_SERVER_ID};
use crate::backends::compute::{ComputeWithSweep, TaggedInstance, TaggedKind};
use crate::backends::error::BackendResult;

/// The `app.kubernetes.io/name` of job objects.
pub const JOB_COMPONENT: &str = "dstack-job";

/// The state of a job container whose pod is gone (only its service or secret is left).
pub const ORPHANED: &str = "orphaned";

/// What the objects of one job container say, merged.
#[derive(Debug, Default)]
struct Group {
    dstack_instance_id: Option<String>,
    created_at: Option<DateTime<Utc>>,
    pod_phase: Option<String>,
    has_pod: bool,
}

impl Group {
    /// Adds one object's metadata (and the pod's phase, for a pod).
    fn add(&mut self, meta: &ObjectMeta, pod_phase: Option<Option<String>>) {
        let labels = meta.labels.as_ref();
        if self.dstack_instance_id.is_none() {
            self.dstack_instance_id = labels
                .and_then(|l| l.get(TAG_INSTANCE_ID))
                .filter(|v| !v.is_empty())
                .cloned();
        }
        let created = meta.creation_timestamp.as_ref().and_then(|t| {
            let nanos = u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0);
            DateTime::<Utc>::from_timestamp(t.0.as_second(), nanos)
        });
        self.created_at = match (self.created_at, created) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(phase) = pod_phase {
            self.has_pod = true;
            self.pod_phase = phase;
        }
    }

    fn into_tagged(self, pod_name: String, region: &str) -> TaggedInstance {
        let state = if self.has_pod {
            self.pod_phase.unwrap_or_else(|| "Unknown".to_string())
        } else {
            ORPHANED.to_string()
        };
        let mut t =
            TaggedInstance::new(pod_name, region, state).with_kind(TaggedKind::JobContainer);
        t.dstack_instance_id = self.dstack_instance_id;
        t.created_at = self.created_at;
        t
    }
}

/// The pod name (`app.kubernetes.io/instance`) an object belongs to.
fn pod_name_of(meta: &ObjectMeta) -> Option<String> {
    meta.labels
        .as_ref()?
        .get(LABEL_APP_INSTANCE)
        .filter(|v| !v.is_empty())
        .cloned()
}

/// The label selector of this server's job objects.
fn selector(server_id: &str) -> String {
    format!(
        "{TAG_SERVER_ID}={},{LABEL_APP_NAME}={JOB_COMPONENT}",
        label_value(server_id)
    )
}

impl KubernetesCompute {
    /// Lists the objects of type `K` matching `lp` in the cluster's namespace.
    async fn list_labelled<K>(
        &self,
        cluster: &Cluster,
        what: &str,
        lp: &ListParams,
    ) -> BackendResult<Vec<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        let objects: Api<K> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let list = api::call(&self.settings.retry, &self.calls, what, || objects.list(lp)).await?;
        Ok(list.items)
    }

    /// The job containers of one cluster; see the module docs.
    async fn sweep_cluster(
        &self,
        cluster: &Cluster,
        server_id: &str,
    ) -> BackendResult<Vec<TaggedInstance>> {
        let lp = ListParams::default().labels(&selector(server_id));
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        // The role the Backends page lists grants no `list`: then there is nothing to sweep,
        // which is not worth a warning every pass.
        let pods: Vec<Pod> = match self.list_labelled(cluster, "list pods", &lp).await {
            Err(e) if api::is_forbidden(&e) => {
                tracing::debug!(region = %cluster.region, error = %e,
                    "the role cannot list pods; job pods are not swept");
                return Ok(Vec::new());
            }
            other => other?,
        };
        for pod in &pods {
            if let Some(name) = pod_name_of(&pod.metadata) {
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                groups
                    .entry(name)
                    .or_default()
                    .add(&pod.metadata, Some(phase));
            }
        }
        match self
            .list_labelled::<Service>(cluster, "list services", &lp)
            .await
        {
            Ok(services) => {
                for svc in &services {
                    if let Some(name) = pod_name_of(&svc.metadata) {
                        groups.entry(name).or_default().add(&svc.metadata, None);
                    }
                }
            }
            Err(e) if api::is_forbidden(&e) => tracing::debug!(region = %cluster.region,
                error = %e, "the role cannot list services; orphaned services are not swept"),
            Err(e) => tracing::warn!(region = %cluster.region, error = %e,
                "cannot list job services; orphaned services are not swept"),
        }
        match self
            .list_labelled::<Secret>(cluster, "list secrets", &lp)
            .await
        {
            Ok(secrets) => {
                for secret in &secrets {
                    if let Some(name) = pod_name_of(&secret.metadata) {
                        groups.entry(name).or_default().add(&secret.metadata, None);
                    }
                }
            }
            Err(e) if api::is_forbidden(&e) => tracing::debug!(region = %cluster.region,
                error = %e, "the role cannot list secrets; orphaned secrets are not swept"),
            Err(e) => tracing::warn!(region = %cluster.region, error = %e,
                "cannot list job secrets; orphaned secrets are not swept"),
        }
        Ok(groups
            .into_iter()
            .map(|(name, g)| g.into_tagged(name, &cluster.region))
            .collect())
    }
}

#[async_trait::async_trait]
impl ComputeWithSweep for KubernetesCompute {
    #[tracing::instrument(level = "debug", skip_all, fields(backend = "kubernetes"))]
    async fn list_tagged_instances(&self, server_id: &str) -> BackendResult<Vec<TaggedInstance>> {
        let mut out = Vec::new();
        let mut listed = false;
        let mut first_error = None;
        for cluster in &self.clusters {
            match self.sweep_cluster(cluster, server_id).await {
                Ok(found) => {
                    listed = true;
                    out.extend(found);
                }
                Err(e) => {
                    tracing::warn!(region = %cluster.region, error = %e,
                        "cannot list job pods; the cluster is not swept");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !listed => Err(e),
            _ => Ok(out),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta(name: &str, pod: &str, job: Option<&str>, created: &str) -> ObjectMeta {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_APP_INSTANCE.to_string(), pod.to_string());
        if let Some(j) = job {
            labels.insert(TAG_INSTANCE_ID.to_string(), j.to_string());
        }
        ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                created.parse().unwrap(),
            )),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn groups_merge_into_one_job_container() {
        let mut g = Group::default();
        g.add(&meta("p-service", "p", None, "2024-05-01T10:05:00Z"), None);
        g.add(
            &meta("p", "p", Some("job-1"), "2024-05-01T10:01:00Z"),
            Some(Some("Running".into())),
        );
        let t = g.into_tagged("p".into(), "ctx-a");
        assert_eq!(t.kind, TaggedKind::JobContainer);
        assert_eq!(t.state, "Running");
        assert_eq!(t.dstack_instance_id.as_deref(), Some("job-1"));
        assert_eq!(
            t.created_at.unwrap().to_rfc3339(),
            "2024-05-01T10:01:00+00:00"
        );

        let mut orphan = Group::default();
        orphan.add(
            &meta(
                "q-registry-auth",
                "q",
                Some("job-2"),
                "2024-05-01T10:00:00Z",
            ),
            None,
        );
        let t = orphan.into_tagged("q".into(), "ctx-a");
        assert_eq!(t.state, ORPHANED);
        assert_eq!(t.region, "ctx-a");
        assert_eq!(
            selector("SRV.1"),
            "dstack_server_id=srv_1,app.kubernetes.io/name=dstack-job"
        );
    }
}
