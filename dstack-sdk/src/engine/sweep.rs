//! The sweep of leaked cloud instances.
//!
//! Every VM the engine creates is tagged with this server's id (`dstack_server_id`) and the
//! instance row it was created for (`dstack_instance_id`). The database can lose track of a
//! VM: the server stopped between the cloud's create call and the row write, or a terminate
//! was lost. A periodic task (first shortly after startup, then every
//! `DSTACK_SERVER_SWEEP_INTERVAL` seconds, default 600; `0` disables it) lists, for every
//! backend of every project that supports it
//! ([`Compute::as_sweep`](crate::backends::Compute::as_sweep)), the instances tagged with this
//! server's id, and terminates those
//!
//! - whose `dstack_instance_id` names no instance row, or
//! - whose row is deleted or `TERMINATED`,
//!
//! but only once the cloud instance is older than a grace period ([`SWEEP_GRACE`]), so that a
//! VM whose row is being written is never touched. Instances without a creation time or
//! without a `dstack_instance_id` tag (resources not created for an instance row) are left
//! alone. dstack itself has no such sweep.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::Engine;
use crate::backends::compute::TaggedInstance;
use crate::backends::{BackendError, Compute};

/// How often the sweep runs by default (`DSTACK_SERVER_SWEEP_INTERVAL`).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(600);
/// How old a cloud instance must be before the sweep may terminate it.
pub const SWEEP_GRACE: Duration = Duration::from_secs(600);
/// How long after startup the first sweep runs.
pub const FIRST_SWEEP_DELAY: Duration = Duration::from_secs(60);

/// What one sweep pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Tagged cloud instances listed (over every backend, duplicates removed).
    pub listed: usize,
    /// Cloud ids of the instances whose termination was started (or finished).
    pub terminated: Vec<String>,
    /// Cloud ids of leaked instances left alone because they are younger than the grace
    /// period (or their creation time is unknown).
    pub too_young: Vec<String>,
    /// One line per backend that could not be listed or instance that could not be
    /// terminated.
    pub errors: Vec<String>,
}

/// Why a tagged instance is leaked, or `None` when its row is alive.
fn leak_reason(row: Option<&(String, bool)>) -> Option<&'static str> {
    match row {
        None => Some("no instance row"),
        Some((_, true)) => Some("instance row deleted"),
        Some((status, false)) if status == "TERMINATED" => Some("instance row terminated"),
        Some(_) => None,
    }
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
            tracing::info!("the sweep of leaked cloud instances is disabled");
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

    /// Runs one sweep pass now: lists the cloud instances tagged with this server's id in
    /// every project backend that can list them, and terminates those the database does not
    /// know (or knows as terminated or deleted) that are older than `grace`. The periodic
    /// task calls it with [`SWEEP_GRACE`]; tests and operators may call it directly.
    ///
    /// A backend that cannot be built or listed, or an instance that cannot be terminated,
    /// is reported in [`SweepReport::errors`] and does not stop the pass; only database
    /// errors fail it.
    pub async fn sweep_cloud_instances(&self, grace: Duration) -> crate::Result<SweepReport> {
        let server_id = self.server_id();
        let backends: Vec<(String, String)> = sqlx::query_as(
            "SELECT b.project_id, b.type FROM backends b JOIN projects p ON p.id = b.project_id \
             WHERE p.deleted = FALSE ORDER BY b.created_at",
        )
        .fetch_all(self.store().reader())
        .await?;
        let mut report = SweepReport::default();
        let mut seen: HashSet<(String, String)> = HashSet::new();
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
                    tracing::warn!(project_id = %project_id, backend = %backend_type, error = %e, "sweep: cannot list tagged instances");
                    report
                        .errors
                        .push(format!("{backend_type} ({project_id}): {e}"));
                    continue;
                }
            };
            for t in listed {
                if !seen.insert((backend_type.clone(), t.instance_id.clone())) {
                    continue;
                }
                report.listed += 1;
                self.sweep_one(
                    &*compute,
                    &backend_type,
                    &project_id,
                    &t,
                    grace,
                    &mut report,
                )
                .await?;
            }
        }
        Ok(report)
    }

    /// Decides on (and maybe terminates) one tagged instance.
    async fn sweep_one(
        &self,
        compute: &dyn Compute,
        backend_type: &str,
        project_id: &str,
        t: &TaggedInstance,
        grace: Duration,
        report: &mut SweepReport,
    ) -> crate::Result<()> {
        let Some(dstack_id) = t.dstack_instance_id.as_deref() else {
            return Ok(());
        };
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT status, deleted FROM instances WHERE id = $1")
                .bind(dstack_id)
                .fetch_optional(self.store().reader())
                .await?;
        let Some(reason) = leak_reason(row.as_ref()) else {
            return Ok(());
        };
        let age = t
            .created_at
            .and_then(|c| (chrono::Utc::now() - c).to_std().ok());
        if age.is_none_or(|a| a < grace) {
            tracing::debug!(
                backend = %backend_type,
                cloud_instance = %t.instance_id,
                dstack_instance_id = %dstack_id,
                reason,
                "sweep: leaked instance is within the grace period; left alone"
            );
            report.too_young.push(t.instance_id.clone());
            return Ok(());
        }
        tracing::info!(
            backend = %backend_type,
            project_id = %project_id,
            cloud_instance = %t.instance_id,
            region = %t.region,
            state = %t.state,
            dstack_instance_id = %dstack_id,
            reason,
            "sweep: terminating a leaked cloud instance"
        );
        match compute
            .terminate_instance(&t.instance_id, &t.region, t.backend_data.as_deref())
            .await
        {
            Ok(()) | Err(BackendError::NotYetTerminated { .. }) => {
                report.terminated.push(t.instance_id.clone());
            }
            Err(e) => {
                tracing::warn!(
                    backend = %backend_type,
                    cloud_instance = %t.instance_id,
                    error = %e,
                    "sweep: cannot terminate a leaked cloud instance"
                );
                report
                    .errors
                    .push(format!("{backend_type} {}: {e}", t.instance_id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_reasons() {
        assert_eq!(leak_reason(None), Some("no instance row"));
        assert_eq!(
            leak_reason(Some(&("IDLE".into(), true))),
            Some("instance row deleted")
        );
        assert_eq!(
            leak_reason(Some(&("TERMINATED".into(), false))),
            Some("instance row terminated")
        );
        for alive in ["PENDING", "PROVISIONING", "IDLE", "BUSY", "TERMINATING"] {
            assert_eq!(leak_reason(Some(&(alive.into(), false))), None, "{alive}");
        }
    }
}
