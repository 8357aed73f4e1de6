//! The sweep of leaked cloud resources.
//!
//! Every cloud resource the engine creates is tagged (labelled, on GCP and Kubernetes) with
//! this server's id (`dstack_server_id`) and the row it was created for
//! (`dstack_instance_id`): VMs, Cloud TPU nodes and Elastic IPs name an `instances` row, job
//! containers (Kubernetes job pods with their service and registry secret) the `jobs` row
//! ([`TaggedKind`]). The database can lose track of a resource: the server stopped between
//! the cloud's create call and the row write, a create was retried after a half-failed
//! attempt, or a terminate was lost. A periodic task (first shortly after startup, then every
//! `DSTACK_SERVER_SWEEP_INTERVAL` seconds, default 600; `0` disables it) lists, for every
//! backend of every project that supports it
//! ([`Compute::as_sweep`](crate::backends::Compute::as_sweep)), the resources tagged with this
//! server's id, and deletes
//! ([`ComputeWithSweep::delete_tagged`](crate::backends::compute::ComputeWithSweep::delete_tagged))
//! those that are leaked. This module alone decides what is leaked:
//!
//! - the owner row is missing (no `instances` / `jobs` row with that id);
//! - the instance row is deleted or `TERMINATED`, or the job row is finished
//!   (`terminated`, `aborted`, `failed`, `done`);
//! - the owner row is alive but its provisioning data names another cloud instance
//!   (`instance_id`): the resource is a left-over of an earlier create attempt for the same
//!   row (not for addresses, whose id the row does not hold);
//!
//! and only when
//!
//! - it is not attached to anything ([`TaggedInstance::attached_to`]: an associated Elastic
//!   IP goes with its instance, and is released once that instance is gone and the address
//!   is no longer associated), and
//! - it is older than a grace period ([`SWEEP_GRACE`]), so that a resource whose row is
//!   being written is never touched. Resources without a known creation time are left
//!   alone. Elastic IPs have no creation time in `DescribeAddresses`; the AWS backend tags
//!   them with `dstack_allocated_at` at allocation and the age comes from that tag (older
//!   untagged addresses are left alone).
//!
//! Resources without a `dstack_instance_id` tag (not created for a row) are left alone.
//! dstack itself has no such sweep.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::Engine;
use crate::backends::BackendError;
use crate::backends::compute::{ComputeWithSweep, TaggedInstance, TaggedKind};
use crate::models::jobs::JobStatus;

/// How often the sweep runs by default (`DSTACK_SERVER_SWEEP_INTERVAL`).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How old a cloud resource must be before the sweep may delete it.
pub const SWEEP_GRACE: Duration = Duration::from_secs(600);
/// How long after startup the first sweep runs.
pub const FIRST_SWEEP_DELAY: Duration = Duration::from_secs(60);

/// What one sweep pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Tagged cloud resources listed (over every backend, duplicates removed).
    pub listed: usize,
    /// Cloud ids of the leaked resources whose deletion was started (or finished): instances
    /// and TPU nodes terminated, addresses released, job containers deleted.
    pub terminated: Vec<String>,
    /// Cloud ids of leaked resources left alone because they are younger than the grace
    /// period (or their creation time is unknown).
    pub too_young: Vec<String>,
    /// One line per backend that could not be listed or resource that could not be deleted.
    pub errors: Vec<String>,
}

/// The owner row of a tagged resource, as the sweep reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OwnerRow {
    /// `instances.status` (`TERMINATED`, …) or `jobs.status` (`terminated`, …).
    status: String,
    /// `instances.deleted` (always false for jobs).
    deleted: bool,
    /// The `instance_id` of the row's provisioning data, when it has one.
    cloud_id: Option<String>,
}

/// Why the tagged resource `t` is leaked given its owner row, or `None` when it is not
/// (see the module docs; the grace period is checked by the caller).
fn leak_reason(t: &TaggedInstance, row: Option<&OwnerRow>) -> Option<String> {
    if t.attached_to.is_some() {
        return None;
    }
    let job = t.kind.owned_by_job();
    let Some(row) = row else {
        return Some(if job { "no job row" } else { "no instance row" }.to_string());
    };
    if job {
        if JobStatus::FINISHED
            .iter()
            .any(|s| s.as_str() == row.status.as_str())
        {
            return Some(format!("job {}", row.status));
        }
    } else if row.deleted {
        return Some("instance row deleted".to_string());
    } else if row.status == "TERMINATED" {
        return Some("instance row terminated".to_string());
    }
    match (&row.cloud_id, t.kind) {
        (_, TaggedKind::Address) => None,
        (Some(id), _) if !id.is_empty() && *id != t.instance_id => Some(format!(
            "superseded: the {} row names {id}",
            if job { "job" } else { "instance" }
        )),
        _ => None,
    }
}

/// The `instance_id` of a stored `job_provisioning_data`.
fn provisioned_cloud_id(jpd: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(jpd?).ok()?;
    v.get("instance_id")?.as_str().map(str::to_string)
}

/// The sweep interval from `DSTACK_SERVER_SWEEP_INTERVAL` (seconds; `0` disables).
fn sweep_interval() -> Duration {
    std::env::var("DSTACK_SERVER_SWEEP_INTERVAL")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_SWEEP_INTERVAL, Duration::from_secs)
}

impl Engine {
    /// Starts the periodic sweep (see the module docs) unless `DSTACK_SERVER_SWEEP_INTERVAL`
    /// is `0`. The task holds the engine weakly and ends when the engine is dropped.
    pub(crate) fn start_sweep(&self) {
        let interval = sweep_interval();
        if interval.is_zero() {
            tracing::info!("the sweep of leaked cloud resources is disabled");
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let task = async move {
            tokio::time::sleep(FIRST_SWEEP_DELAY).await;
            loop {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let engine = Engine { inner };
                match engine.sweep_cloud_instances(SWEEP_GRACE).await {
                    Ok(r) if !r.terminated.is_empty() || !r.errors.is_empty() => tracing::info!(
                        listed = r.listed,
                        terminated = r.terminated.len(),
                        errors = r.errors.len(),
                        "sweep done"
                    ),
                    Ok(r) => tracing::debug!(listed = r.listed, "sweep done; nothing leaked"),
                    Err(e) => tracing::warn!(error = %e, "sweep failed"),
                }
                drop(engine);
                tokio::time::sleep(interval).await;
            }
        };
        tokio::spawn(task.instrument(tracing::info_span!("sweep")));
    }

    /// Runs one sweep pass now: lists the cloud resources tagged with this server's id in
    /// every project backend that can list them, and deletes those that are leaked (see the
    /// module docs) and older than `grace`. The periodic task calls it with [`SWEEP_GRACE`];
    /// tests and operators may call it directly.
    ///
    /// A backend that cannot be built or listed, or a resource that cannot be deleted, is
    /// reported in [`SweepReport::errors`] and does not stop the pass; only database errors
    /// fail it.
    pub async fn sweep_cloud_instances(&self, grace: Duration) -> crate::Result<SweepReport> {
        let server_id = self.server_id();
        let backends: Vec<(String, String)> = sqlx::query_as(
            "SELECT b.project_id, b.type FROM backends b JOIN projects p ON p.id = b.project_id \
             WHERE p.deleted = FALSE ORDER BY b.created_at",
        )
        .fetch_all(self.store().reader())
        .await?;
        let mut report = SweepReport::default();
        let mut seen: HashSet<(String, TaggedKind, String)> = HashSet::new();
        for (project_id, backend_type) in backends {
            let compute = match self.compute_for(&project_id, &backend_type).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(project_id = %project_id, backend = %backend_type, error = %e, "sweep: cannot build the backend");
                    report
                        .errors
                        .push(format!("{backend_type} ({project_id}): {e}"));
                    continue;
                }
            };
            let Some(sweep) = compute.as_sweep() else {
                continue;
            };
            let listed = match sweep.list_tagged_instances(&server_id).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(project_id = %project_id, backend = %backend_type, error = %e, "sweep: cannot list tagged resources");
                    report
                        .errors
                        .push(format!("{backend_type} ({project_id}): {e}"));
                    continue;
                }
            };
            for t in listed {
                if !seen.insert((backend_type.clone(), t.kind, t.instance_id.clone())) {
                    continue;
                }
                report.listed += 1;
                self.sweep_one(sweep, &backend_type, &project_id, &t, grace, &mut report)
                    .await?;
            }
        }
        Ok(report)
    }

    /// The row that owns `t` (an instance row, or a job row for job containers).
    async fn owner_row(&self, t: &TaggedInstance, id: &str) -> crate::Result<Option<OwnerRow>> {
        if t.kind.owned_by_job() {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, job_provisioning_data FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.store().reader())
                    .await?;
            return Ok(row.map(|(status, jpd)| OwnerRow {
                status,
                deleted: false,
                cloud_id: provisioned_cloud_id(jpd.as_deref()),
            }));
        }
        let row: Option<(String, bool, Option<String>)> = sqlx::query_as(
            "SELECT status, deleted, job_provisioning_data FROM instances WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.store().reader())
        .await?;
        Ok(row.map(|(status, deleted, jpd)| OwnerRow {
            status,
            deleted,
            cloud_id: provisioned_cloud_id(jpd.as_deref()),
        }))
    }

    /// Decides on (and maybe deletes) one tagged resource.
    async fn sweep_one(
        &self,
        sweep: &dyn ComputeWithSweep,
        backend_type: &str,
        project_id: &str,
        t: &TaggedInstance,
        grace: Duration,
        report: &mut SweepReport,
    ) -> crate::Result<()> {
        let Some(dstack_id) = t.dstack_instance_id.as_deref() else {
            return Ok(());
        };
        if t.attached_to.is_some() {
            // Goes with what it is attached to; no row lookup needed.
            return Ok(());
        }
        let row = self.owner_row(t, dstack_id).await?;
        let Some(reason) = leak_reason(t, row.as_ref()) else {
            return Ok(());
        };
        let age = t
            .created_at
            .and_then(|c| (chrono::Utc::now() - c).to_std().ok());
        if age.is_none_or(|a| a < grace) {
            tracing::debug!(
                backend = %backend_type,
                kind = %t.kind,
                cloud_id = %t.instance_id,
                dstack_instance_id = %dstack_id,
                reason = %reason,
                "sweep: leaked resource is within the grace period (or its age is unknown); left alone"
            );
            report.too_young.push(t.instance_id.clone());
            return Ok(());
        }
        tracing::info!(
            backend = %backend_type,
            project_id = %project_id,
            kind = %t.kind,
            cloud_id = %t.instance_id,
            region = %t.region,
            state = %t.state,
            dstack_instance_id = %dstack_id,
            reason = %reason,
            "sweep: deleting a leaked cloud resource"
        );
        match sweep.delete_tagged(t).await {
            Ok(()) | Err(BackendError::NotYetTerminated { .. }) => {
                report.terminated.push(t.instance_id.clone());
            }
            Err(e) => {
                tracing::warn!(
                    backend = %backend_type,
                    kind = %t.kind,
                    cloud_id = %t.instance_id,
                    error = %e,
                    "sweep: cannot delete a leaked cloud resource"
                );
                report
                    .errors
                    .push(format!("{backend_type} {} {}: {e}", t.kind, t.instance_id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, deleted: bool, cloud_id: Option<&str>) -> OwnerRow {
        OwnerRow {
            status: status.into(),
            deleted,
            cloud_id: cloud_id.map(str::to_string),
        }
    }

    #[test]
    fn leak_reasons_of_instance_owned_resources() {
        let vm = TaggedInstance::new("i-1", "r", "running");
        let reason = |r: Option<&OwnerRow>| leak_reason(&vm, r);
        assert_eq!(reason(None).as_deref(), Some("no instance row"));
        assert_eq!(
            reason(Some(&row("IDLE", true, None))).as_deref(),
            Some("instance row deleted")
        );
        assert_eq!(
            reason(Some(&row("TERMINATED", false, Some("i-1")))).as_deref(),
            Some("instance row terminated")
        );
        for alive in ["PENDING", "PROVISIONING", "IDLE", "BUSY", "TERMINATING"] {
            assert_eq!(reason(Some(&row(alive, false, None))), None, "{alive}");
            assert_eq!(
                reason(Some(&row(alive, false, Some("i-1")))),
                None,
                "{alive}"
            );
            assert_eq!(
                reason(Some(&row(alive, false, Some("i-2")))).as_deref(),
                Some("superseded: the instance row names i-2"),
                "{alive}"
            );
        }
        let tpu = TaggedInstance::new("node-1", "r", "READY").with_kind(TaggedKind::TpuNode);
        assert!(leak_reason(&tpu, Some(&row("IDLE", false, Some("node-0")))).is_some());
        assert!(leak_reason(&tpu, None).is_some());
    }

    #[test]
    fn addresses_are_judged_by_their_row_only_when_unattached() {
        let mut eip =
            TaggedInstance::new("eipalloc-1", "r", "unassociated").with_kind(TaggedKind::Address);
        // The row names its VM, never the address: no "superseded" for addresses.
        assert_eq!(
            leak_reason(&eip, Some(&row("IDLE", false, Some("i-1")))),
            None
        );
        assert_eq!(
            leak_reason(&eip, Some(&row("TERMINATED", false, Some("i-1")))).as_deref(),
            Some("instance row terminated")
        );
        assert_eq!(leak_reason(&eip, None).as_deref(), Some("no instance row"));
        eip.attached_to = Some("eipassoc-1".into());
        assert_eq!(leak_reason(&eip, None), None);
    }

    #[test]
    fn leak_reasons_of_job_containers() {
        let pod =
            TaggedInstance::new("job-pod-ab12", "r", "Running").with_kind(TaggedKind::JobContainer);
        assert_eq!(leak_reason(&pod, None).as_deref(), Some("no job row"));
        for done in ["terminated", "aborted", "failed", "done"] {
            assert_eq!(
                leak_reason(&pod, Some(&row(done, false, Some("job-pod-ab12")))),
                Some(format!("job {done}"))
            );
        }
        for alive in [
            "submitted",
            "provisioning",
            "pulling",
            "running",
            "terminating",
        ] {
            assert_eq!(leak_reason(&pod, Some(&row(alive, false, None))), None);
            assert_eq!(
                leak_reason(&pod, Some(&row(alive, false, Some("job-pod-ab12")))),
                None
            );
        }
        assert_eq!(
            leak_reason(&pod, Some(&row("running", false, Some("job-pod-cd34")))).as_deref(),
            Some("superseded: the job row names job-pod-cd34")
        );
    }

    #[test]
    fn cloud_id_of_provisioning_data() {
        assert_eq!(
            provisioned_cloud_id(Some(r#"{"instance_id":"i-1","region":"r"}"#)).as_deref(),
            Some("i-1")
        );
        assert_eq!(provisioned_cloud_id(Some("not json")), None);
        assert_eq!(provisioned_cloud_id(None), None);
    }
}
