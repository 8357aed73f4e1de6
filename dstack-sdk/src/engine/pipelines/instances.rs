//! `InstancePipeline` (dstack-api.md §4.4, §5.6): deploys pending SSH instances, provisions
//! pending cloud instances, terminates terminating instances (in the cloud, or stopping the
//! agent on SSH hosts, best effort), and watches IDLE and BUSY instances:
//!
//! * **idle timeout**: an IDLE instance with policy `DESTROY_AFTER_IDLE`, no unfinished job and
//!   idle for longer than its `termination_idle_time` goes TERMINATING (`idle_timeout`), unless
//!   its fleet would drop to `nodes.min` or below (dstack's `process_idle_timeout`);
//! * **health check**: the host agent's shim healthcheck through the pooled SSH tunnel
//!   ([`Engine::instance_tunnel`]). A failure sets `unreachable`; for cloud instances it also
//!   sets `termination_deadline` (first failure + the unreachable timeout, 20 min), after
//!   which the instance goes TERMINATING (`unreachable`). A success clears both. SSH-fleet
//!   instances are only flagged, never terminated.
//!
//! IDLE and BUSY instances are ticked every `instance_check_interval` (14 s); the others every
//! 7 s or at once when hinted.

use std::time::Duration;

use tracing::Instrument;

use crate::engine::services::instances::{InstanceRow, select_instances};
use crate::engine::ssh_deploy::{self, Deployed};
use crate::engine::{Engine, time};
use crate::models::fleets::FleetSpec;
use crate::models::instances::{InstanceStatus, InstanceTerminationReason};
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;

use super::{Lease, Pipeline, PipelineKind, db_before};

/// The instance pipeline.
pub(crate) struct InstancePipeline;

/// dstack's min processing interval for pending, provisioning and terminating instances.
const MIN_INTERVAL: Duration = Duration::from_secs(7);

/// How long one health check of an instance may take (SSH connect + HTTP).
#[cfg(all(feature = "agent", feature = "http"))]
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

impl Pipeline for InstancePipeline {
    const NAME: &'static str = "InstancePipeline";
    const KIND: PipelineKind = PipelineKind::Instances;

    async fn claim(engine: &Engine, limit: i64, lease: &Lease) -> crate::Result<Vec<String>> {
        let check_interval = engine.inner.options.pipelines.instance_check_interval;
        let mut tx = engine.store().begin().await?;
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE instances SET lock_token = $1, lock_expires_at = $2, lock_owner = $3, \
             skip_min_processing_interval = FALSE \
             WHERE id IN (SELECT id FROM instances WHERE deleted = FALSE \
               AND status IN ('PENDING', 'PROVISIONING', 'IDLE', 'BUSY', 'TERMINATING') \
               AND NOT (status = 'PENDING' AND provisioning_job_id IS NOT NULL) \
               AND (lock_expires_at IS NULL OR lock_expires_at < $4) \
               AND (lock_owner IS NULL OR lock_owner = $3) \
               AND (skip_min_processing_interval = TRUE \
                 OR (status IN ('IDLE', 'BUSY') AND last_processed_at <= $6) \
                 OR (status NOT IN ('IDLE', 'BUSY') AND last_processed_at <= $5)) \
               ORDER BY last_processed_at LIMIT $7) RETURNING id",
        )
        .bind(&lease.token)
        .bind(&lease.expires_at)
        .bind(Self::NAME)
        .bind(&lease.now)
        .bind(db_before(MIN_INTERVAL))
        .bind(db_before(check_interval))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    heartbeat_impl!("instances");

    async fn process(engine: Engine, id: String, token: String) {
        let span = tracing::info_span!("instance", %id);
        if let Err(e) = process_one(&engine, &id, &token).instrument(span).await {
            tracing::warn!(%id, error = %e, "instance processing failed");
            let _ = release(&engine, &id, &token).await;
        }
    }
}

/// Clears our lease without other changes (the row is retried after the min interval).
async fn release(engine: &Engine, id: &str, token: &str) -> crate::Result<()> {
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE instances SET lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL, \
         last_processed_at = $1 WHERE id = $2 AND lock_token = $3",
    )
    .bind(time::to_db(time::now()))
    .bind(id)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn leased_row(engine: &Engine, id: &str, token: &str) -> crate::Result<Option<InstanceRow>> {
    let row: Option<InstanceRow> = sqlx::query_as(select_instances!("id = $1 AND lock_token = $2"))
        .bind(id)
        .bind(token)
        .fetch_optional(engine.store().reader())
        .await?;
    Ok(row)
}

async fn process_one(engine: &Engine, id: &str, token: &str) -> crate::Result<()> {
    let Some(row) = leased_row(engine, id, token).await? else {
        tracing::debug!(%id, "lease lost before processing");
        return Ok(());
    };
    match row.status {
        InstanceStatus::Pending | InstanceStatus::Provisioning => {
            match engine.remote_connection_info(&row)? {
                Some(_) => deploy_ssh(engine, &row, token).await,
                #[cfg(feature = "backends")]
                None => provision_cloud(engine, &row, token).await,
                #[cfg(not(feature = "backends"))]
                None => {
                    finish(
                        engine,
                        &row,
                        token,
                        Finish::Terminated(
                            InstanceTerminationReason::NoOffers,
                            "No offers found: this server was built without cloud backends".into(),
                        ),
                    )
                    .await
                }
            }
        }
        InstanceStatus::Terminating => {
            #[cfg(feature = "backends")]
            if let Some(jpd) = row.jpd().filter(|j| j.backend.as_str() != "remote") {
                match engine.terminate_cloud_instance(&row, &jpd).await {
                    Ok(true) => return finish(engine, &row, token, Finish::Deleted).await,
                    Ok(false) => return release(engine, id, token).await,
                    Err(e) => {
                        tracing::warn!(instance = %row.name, error = %e, "cloud termination failed; retrying");
                        return release(engine, id, token).await;
                    }
                }
            }
            if let Some(rci) = engine.remote_connection_info(&row)? {
                let opts = engine.inner.options.agent.clone();
                match tokio::time::timeout(
                    Duration::from_secs(60),
                    ssh_deploy::remove_agent(&rci, &opts),
                )
                .await
                {
                    Ok(Ok(())) => tracing::info!(instance = %row.name, "agent stopped"),
                    Ok(Err(e)) => {
                        tracing::warn!(instance = %row.name, error = %e, "cannot stop the agent; leaving it")
                    }
                    Err(_) => {
                        tracing::warn!(instance = %row.name, "stopping the agent timed out; leaving it")
                    }
                }
            }
            finish(engine, &row, token, Finish::Deleted).await
        }
        InstanceStatus::Idle => {
            if maybe_terminate_idle(engine, &row, token).await? {
                return Ok(());
            }
            check_health(engine, &row, token).await
        }
        // A container-backend instance stands for its job's container: no host agent to
        // check; the job watches its runner and the instance ends with the job.
        InstanceStatus::Busy if row.jpd().is_some_and(|j| !j.dockerized) => {
            release(engine, id, token).await
        }
        InstanceStatus::Busy => check_health(engine, &row, token).await,
        InstanceStatus::Terminated => release(engine, id, token).await,
    }
}

enum Finish {
    /// Deployed: IDLE with the host's resources (BUSY when a job holds blocks already).
    Idle(Box<Deployed>),
    /// Failed: TERMINATED with a reason and message.
    Terminated(InstanceTerminationReason, String),
    /// Terminated and deleted (after TERMINATING).
    Deleted,
}

async fn deploy_ssh(engine: &Engine, row: &InstanceRow, token: &str) -> crate::Result<()> {
    let Some(rci) = engine.remote_connection_info(row)? else {
        return Ok(());
    };
    let opts = engine.inner.options.agent.clone();
    let deadline =
        row.created_at + chrono::Duration::from_std(opts.deploy_timeout).unwrap_or_default();
    let left = (deadline - time::now()).to_std().unwrap_or_default();
    let timeout_result = |_row: &InstanceRow| {
        Finish::Terminated(
            InstanceTerminationReason::ProvisioningTimeout,
            format!(
                "Deploying the agent to {} did not finish within {}s; check that the host is \
                 reachable and retry by re-applying the fleet",
                rci.host,
                opts.deploy_timeout.as_secs()
            ),
        )
    };
    if left.is_zero() {
        return finish(engine, row, token, timeout_result(row)).await;
    }
    let (project_key,): (String,) =
        sqlx::query_as("SELECT ssh_public_key FROM projects WHERE id = $1")
            .bind(&row.project_id)
            .fetch_one(engine.store().reader())
            .await?;
    tracing::info!(instance = %row.name, host = %rci.host, "deploying the agent");
    let outcome = tokio::time::timeout(left, ssh_deploy::deploy(&rci, &project_key, &opts)).await;
    let result = match outcome {
        Err(_) => timeout_result(row),
        Ok(Ok(d))
            if crate::engine::planner::divisible_into_blocks(
                d.resources.cpus,
                d.gpu_count,
                row.total_blocks,
            )
            .is_none() =>
        {
            Finish::Terminated(
                InstanceTerminationReason::Error,
                "Cannot split into blocks".into(),
            )
        }
        Ok(Ok(d)) => Finish::Idle(Box::new(d)),
        // A cloud VM whose sshd is not up yet (or whose cloud-init has not yet authorised the
        // key) is retried until the deadline, as dstack does: its first SSH attempts usually
        // come before the VM has booted.
        Ok(Err(e))
            if matches!(e.step, "connect" | "host key" | "auth")
                && row.jpd().is_some_and(|j| j.backend.as_str() != "remote") =>
        {
            tracing::info!(instance = %row.name, error = %e, "the cloud instance is not reachable over SSH yet; will retry the deploy");
            return release(engine, &row.id, token).await;
        }
        Ok(Err(e)) => {
            tracing::warn!(instance = %row.name, error = %e, "deploy failed");
            Finish::Terminated(InstanceTerminationReason::Error, e.to_string())
        }
    };
    finish(engine, row, token, result).await
}

/// The final write: only while our token holds and the status is still the one we read.
async fn finish(engine: &Engine, row: &InstanceRow, token: &str, f: Finish) -> crate::Result<()> {
    // A failed cloud instance must not stay behind in the cloud.
    #[cfg(feature = "backends")]
    if let Finish::Terminated(..) = &f
        && let Some(jpd) = row.jpd().filter(|j| j.backend.as_str() != "remote")
        && let Err(e) = engine.terminate_cloud_instance(row, &jpd).await
    {
        tracing::warn!(instance = %row.name, error = %e, "cannot terminate the failed cloud instance");
    }
    let now = time::to_db(time::now());
    let status_read = crate::engine::services::instances::status_to_db(row.status);
    let mut tx = engine.store().begin().await?;
    let affected = match f {
        Finish::Idle(d) => {
            let mut jpd: Option<JobProvisioningData> = row.jpd();
            let mut offer: Option<InstanceOfferWithAvailability> = row.offer();
            let cloud = jpd.as_ref().is_some_and(|j| j.backend.as_str() != "remote");
            if let Some(j) = jpd.as_mut().filter(|_| !cloud) {
                j.instance_type.resources = d.resources.clone();
                if j.internal_ip.is_none() {
                    j.internal_ip = d
                        .addresses
                        .first()
                        .map(|a| a.split('/').next().unwrap_or(a).to_string());
                }
            }
            if let Some(o) = offer.as_mut().filter(|_| !cloud) {
                o.instance.resources = d.resources.clone();
            }
            // dstack's `is_divisible_into_blocks` (`auto`: per GPU, else per CPU).
            let total_blocks = crate::engine::planner::divisible_into_blocks(
                d.resources.cpus,
                d.gpu_count,
                row.total_blocks,
            )
            .unwrap_or(1);
            let jpd = jpd.and_then(|j| serde_json::to_string(&j).ok());
            let offer = offer.and_then(|o| serde_json::to_string(&o).ok());
            tracing::info!(instance = %row.name, cpus = d.resources.cpus, memory_mib = d.resources.memory_mib, gpus = d.resources.gpus.len(), busy_blocks = row.busy_blocks, "instance is up");
            sqlx::query(
                "UPDATE instances SET status = CASE WHEN busy_blocks > 0 THEN 'BUSY' ELSE 'IDLE' END, \
                 job_provisioning_data = $1, offer = $2, \
                 total_blocks = $3, started_at = $4, last_processed_at = $4, \
                 lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
                 WHERE id = $5 AND lock_token = $6 AND status = $7",
            )
            .bind(jpd)
            .bind(offer)
            .bind(total_blocks)
            .bind(&now)
            .bind(&row.id)
            .bind(token)
            .bind(status_read)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }
        Finish::Terminated(reason, message) => {
            engine.inner.links.forget_instance(&row.id);
            tracing::info!(instance = %row.name, reason = reason.as_str(), %message, "instance terminated");
            sqlx::query(
                "UPDATE instances SET status = 'TERMINATED', termination_reason = $1, \
                 termination_reason_message = $2, finished_at = $3, last_processed_at = $3, \
                 lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
                 WHERE id = $4 AND lock_token = $5 AND status = $6",
            )
            .bind(reason.as_str())
            .bind(message)
            .bind(&now)
            .bind(&row.id)
            .bind(token)
            .bind(status_read)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }
        Finish::Deleted => {
            engine.inner.links.forget_instance(&row.id);
            sqlx::query(
                "UPDATE instances SET status = 'TERMINATED', deleted = TRUE, deleted_at = $1, \
             finished_at = COALESCE(finished_at, $1), last_processed_at = $1, \
             lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
             WHERE id = $2 AND lock_token = $3 AND status = $4",
            )
            .bind(&now)
            .bind(&row.id)
            .bind(token)
            .bind(status_read)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }
    };
    if affected == 1
        && let Some(fid) = &row.fleet_id
    {
        // Let the fleet pipeline look at the fleet now (it may be waiting for this instance).
        sqlx::query("UPDATE fleets SET skip_min_processing_interval = TRUE WHERE id = $1")
            .bind(fid)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    if affected == 1 {
        engine.hint(PipelineKind::Fleets);
        Ok(())
    } else {
        // The status changed under us (e.g. the user deleted the fleet mid-deploy) or the
        // lease was lost: let the row be processed again promptly.
        tracing::info!(instance = %row.name, "instance changed while processing; will retry");
        let mut tx = engine.store().begin().await?;
        sqlx::query(
            "UPDATE instances SET lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL, \
             skip_min_processing_interval = TRUE WHERE id = $1 AND lock_token = $2",
        )
        .bind(&row.id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        engine.hint(PipelineKind::Instances);
        Ok(())
    }
}

/// A cloud instance: PENDING → created on the cheapest available offer (PROVISIONING);
/// PROVISIONING → polled until the VM has an address, which becomes its SSH connection info
/// (the VM's user with the project key); the SSH deploy path then makes it IDLE.
#[cfg(feature = "backends")]
async fn provision_cloud(engine: &Engine, row: &InstanceRow, token: &str) -> crate::Result<()> {
    use crate::engine::cloud::{Provisioned, ssh_endpoint};
    let Some(mut jpd) = row.jpd() else {
        return match engine.provision_cloud_instance(row).await? {
            Provisioned::Created(jpd, offer) => {
                tracing::info!(instance = %row.name, backend = %jpd.backend.as_str(),
                    instance_id = %jpd.instance_id, region = %jpd.region, "cloud instance created");
                let mut tx = engine.store().begin().await?;
                sqlx::query(
                    "UPDATE instances SET status = 'PROVISIONING', job_provisioning_data = $1, \
                     offer = $2, backend = $3, region = $4, price = $5, last_processed_at = $6, \
                     lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
                     WHERE id = $7 AND lock_token = $8",
                )
                .bind(serde_json::to_string(&jpd).ok())
                .bind(serde_json::to_string(&offer).ok())
                .bind(jpd.backend.as_str())
                .bind(&jpd.region)
                .bind(offer.price)
                .bind(time::to_db(time::now()))
                .bind(&row.id)
                .bind(token)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                engine.hint(PipelineKind::Instances);
                Ok(())
            }
            Provisioned::Failed(msg) => {
                finish(
                    engine,
                    row,
                    token,
                    Finish::Terminated(InstanceTerminationReason::NoOffers, msg),
                )
                .await
            }
        };
    };
    let deadline = row.created_at
        + chrono::Duration::from_std(engine.inner.options.agent.deploy_timeout).unwrap_or_default();
    let fail = |msg: String| Finish::Terminated(InstanceTerminationReason::Error, msg);
    let ready = match engine.poll_cloud_instance(row, &mut jpd).await {
        Ok(r) => r,
        Err(e) => {
            let _ = engine.terminate_cloud_instance(row, &jpd).await;
            return finish(
                engine,
                row,
                token,
                fail(format!("The cloud instance failed: {e}")),
            )
            .await;
        }
    };
    if !ready {
        if time::now() > deadline {
            let _ = engine.terminate_cloud_instance(row, &jpd).await;
            return finish(
                engine,
                row,
                token,
                Finish::Terminated(
                    InstanceTerminationReason::ProvisioningTimeout,
                    "The cloud instance got no address in time; it was terminated".into(),
                ),
            )
            .await;
        }
        return release(engine, &row.id, token).await;
    }
    let Some((host, port)) = ssh_endpoint(&jpd) else {
        return release(engine, &row.id, token).await;
    };
    let (private, public): (Option<String>, String) =
        sqlx::query_as("SELECT ssh_private_key, ssh_public_key FROM projects WHERE id = $1")
            .bind(&row.project_id)
            .fetch_one(engine.store().reader())
            .await?;
    let private = match private {
        Some(p) => Some(engine.crypto().decrypt(&p)?),
        None => None,
    };
    let rci = serde_json::json!({
        "host": host,
        "port": port,
        "ssh_user": jpd.username,
        "ssh_keys": [{"public": public, "private": private}],
        "ssh_proxy": null,
        "ssh_proxy_keys": null,
        "env": {},
    });
    let rci = engine.crypto().encrypt(&rci.to_string());
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE instances SET job_provisioning_data = $1, remote_connection_info = $2, \
         last_processed_at = $3, skip_min_processing_interval = TRUE, \
         lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
         WHERE id = $4 AND lock_token = $5",
    )
    .bind(serde_json::to_string(&jpd).ok())
    .bind(rci)
    .bind(time::to_db(time::now()))
    .bind(&row.id)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(instance = %row.name, host = ?jpd.hostname, "cloud instance is up; deploying the agent over SSH");
    engine.hint(PipelineKind::Instances);
    Ok(())
}

/// The lifecycle columns of an instance that [`InstanceRow`] does not carry.
struct Lifecycle {
    /// `DESTROY_AFTER_IDLE` or `DONT_DESTROY`.
    policy: Option<String>,
    /// Seconds an IDLE instance may stay idle (−1: never terminated).
    idle_time: Option<i64>,
    /// When an unreachable cloud instance is given up.
    deadline: Option<chrono::DateTime<chrono::Utc>>,
}

async fn lifecycle(engine: &Engine, id: &str) -> crate::Result<Lifecycle> {
    let (policy, idle_time, deadline): (Option<String>, Option<i64>, Option<String>) =
        sqlx::query_as(
            "SELECT termination_policy, termination_idle_time, termination_deadline \
             FROM instances WHERE id = $1",
        )
        .bind(id)
        .fetch_one(engine.store().reader())
        .await?;
    Ok(Lifecycle {
        policy,
        idle_time,
        deadline: deadline.as_deref().and_then(time::from_db),
    })
}

/// dstack's `can_terminate_fleet_instances_on_idle_duration`: a fleet with `nodes` keeps
/// its instances once only `nodes.min` or fewer are left (avoids a terminate-create loop).
async fn can_terminate_on_idle(engine: &Engine, fleet_id: &str) -> crate::Result<bool> {
    let spec: Option<(String,)> = sqlx::query_as("SELECT spec FROM fleets WHERE id = $1")
        .bind(fleet_id)
        .fetch_optional(engine.store().reader())
        .await?;
    let Some(spec) = spec.and_then(|(s,)| serde_json::from_str::<FleetSpec>(&s).ok()) else {
        return Ok(true);
    };
    let Some(nodes) = spec
        .configuration
        .nodes
        .as_ref()
        .filter(|_| !spec.autocreated)
    else {
        return Ok(true);
    };
    let (active,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM instances WHERE fleet_id = $1 AND deleted = FALSE \
         AND status NOT IN ('TERMINATING', 'TERMINATED')",
    )
    .bind(fleet_id)
    .fetch_one(engine.store().reader())
    .await?;
    Ok(active > nodes.min)
}

/// dstack's `process_idle_timeout`: `true` when the instance went TERMINATING (`idle_timeout`)
/// or changed under us (nothing more to do this tick).
async fn maybe_terminate_idle(
    engine: &Engine,
    row: &InstanceRow,
    token: &str,
) -> crate::Result<bool> {
    let lc = lifecycle(engine, &row.id).await?;
    if lc.policy.as_deref() != Some("DESTROY_AFTER_IDLE") {
        return Ok(false);
    }
    let Some(idle_time) = lc.idle_time.filter(|t| *t >= 0) else {
        return Ok(false);
    };
    // The instance is idle since its creation or since its last job was processed.
    let (unfinished, last_job): (Option<i64>, Option<String>) = sqlx::query_as(
        "SELECT SUM(CASE WHEN status IN ('done', 'failed', 'terminated', 'aborted') \
         THEN 0 ELSE 1 END), MAX(COALESCE(finished_at, last_processed_at)) \
         FROM jobs WHERE instance_id = $1",
    )
    .bind(&row.id)
    .fetch_one(engine.store().reader())
    .await?;
    if unfinished.unwrap_or(0) > 0 {
        return Ok(false);
    }
    let since = last_job
        .as_deref()
        .and_then(time::from_db)
        .map_or(row.created_at, |t| t.max(row.created_at));
    let idle = time::now() - since;
    if idle <= chrono::Duration::seconds(idle_time) {
        return Ok(false);
    }
    if let Some(fid) = &row.fleet_id
        && !can_terminate_on_idle(engine, fid).await?
    {
        return Ok(false);
    }
    let message = format!("Instance idle for {}s", idle.num_seconds());
    let now = time::to_db(time::now());
    let mut tx = engine.store().begin().await?;
    let affected = sqlx::query(
        "UPDATE instances SET status = 'TERMINATING', termination_reason = $1, \
         termination_reason_message = $2, last_processed_at = $3, \
         skip_min_processing_interval = TRUE, \
         lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
         WHERE id = $4 AND lock_token = $5 AND status = 'IDLE' AND busy_blocks = 0 \
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE instance_id = $4 \
           AND status NOT IN ('done', 'failed', 'terminated', 'aborted'))",
    )
    .bind(InstanceTerminationReason::IdleTimeout.as_str())
    .bind(&message)
    .bind(&now)
    .bind(&row.id)
    .bind(token)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if affected == 1 {
        tracing::info!(instance = %row.name, %message, "idle instance is terminating");
        engine.hint(PipelineKind::Instances);
    } else {
        // A job took the instance (or the lease was lost): nothing to do this tick.
        release(engine, &row.id, token).await?;
    }
    Ok(true)
}

/// The shim healthcheck through the pooled tunnel; `Err` says why the agent is unreachable.
#[cfg(all(feature = "agent", feature = "http"))]
async fn probe(engine: &Engine, row: &InstanceRow) -> Result<(), String> {
    use crate::agent::client::ShimClient;
    let port = engine.inner.options.agent.shim_port;
    let check = async {
        let addr = engine
            .instance_tunnel(row, port)
            .await
            .map_err(|e| format!("SSH or tunnel error: {}", e.message()))?;
        let shim = ShimClient::new(&format!("http://{addr}")).map_err(|e| e.to_string())?;
        shim.healthcheck()
            .await
            .map(|_| ())
            .map_err(|e| format!("shim.healthcheck(): request error: {e}"))
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "the agent did not answer within {} s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

/// Without the agent client there is nothing to probe: instances count as reachable.
#[cfg(not(all(feature = "agent", feature = "http")))]
async fn probe(_engine: &Engine, _row: &InstanceRow) -> Result<(), String> {
    Ok(())
}

/// dstack's `check_instance` for IDLE and BUSY instances: updates `unreachable` and, for
/// cloud instances, `termination_deadline`; past the deadline the instance goes TERMINATING
/// (`unreachable`).
async fn check_health(engine: &Engine, row: &InstanceRow, token: &str) -> crate::Result<()> {
    let Some(jpd) = row.jpd().filter(|j| j.hostname.is_some()) else {
        return release(engine, &row.id, token).await;
    };
    let ssh = jpd.backend.as_str() == "remote";
    let outcome = probe(engine, row).await;
    let lc = lifecycle(engine, &row.id).await?;
    let now = time::now();
    let status_read = crate::engine::services::instances::status_to_db(row.status);
    let mut tx = engine.store().begin().await?;
    let affected = match &outcome {
        Ok(()) => {
            if row.unreachable {
                tracing::info!(instance = %row.name, "instance is reachable again");
            }
            sqlx::query(
                "UPDATE instances SET unreachable = FALSE, termination_deadline = NULL, \
                 last_processed_at = $1, lock_token = NULL, lock_expires_at = NULL, \
                 lock_owner = NULL WHERE id = $2 AND lock_token = $3 AND status = $4",
            )
            .bind(time::to_db(now))
            .bind(&row.id)
            .bind(token)
            .bind(status_read)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }
        Err(msg) => {
            engine.inner.links.forget_instance(&row.id);
            let deadline = if ssh {
                None
            } else {
                let timeout = engine.inner.options.pipelines.instance_unreachable_timeout;
                Some(lc.deadline.unwrap_or_else(|| {
                    now + chrono::Duration::from_std(timeout).unwrap_or_default()
                }))
            };
            let give_up = deadline.is_some_and(|d| now > d);
            tracing::warn!(instance = %row.name, reason = %msg, ?deadline, give_up, "instance is unreachable");
            sqlx::query(
                "UPDATE instances SET unreachable = TRUE, termination_deadline = $1, \
                 status = CASE WHEN $2 THEN 'TERMINATING' ELSE status END, \
                 termination_reason = CASE WHEN $2 THEN $3 ELSE termination_reason END, \
                 skip_min_processing_interval = $2, last_processed_at = $4, \
                 lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
                 WHERE id = $5 AND lock_token = $6 AND status = $7",
            )
            .bind(deadline.map(time::to_db))
            .bind(give_up)
            .bind(InstanceTerminationReason::Unreachable.as_str())
            .bind(time::to_db(now))
            .bind(&row.id)
            .bind(token)
            .bind(status_read)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        }
    };
    tx.commit().await?;
    if affected == 0 {
        // The status changed under us (a job was assigned or released): check again later.
        return release(engine, &row.id, token).await;
    }
    if outcome.is_err() {
        // A give-up is due for termination now; otherwise this is a no-op.
        engine.hint(PipelineKind::Instances);
    }
    Ok(())
}
