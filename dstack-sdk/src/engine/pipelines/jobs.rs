//! `JobPipeline` and `RunPipeline` (dstack-api.md §4.1–4.2, §5.2–5.5), first slice for SSH
//! fleets:
//!
//! * a **submitted** job goes to the fleet dstack would choose (`fleet_choice.rs`): it takes
//!   the cheapest free instance or share of blocks there (the instance turns BUSY, the job
//!   `provisioning`); a cloud fleet without one provisions new capacity for the job
//!   (`new_capacity.rs`); with no fleet at all, or `nodes.max` reached, the job fails with
//!   `failed_to_start_due_to_no_capacity`;
//! * a **provisioning** job is started through an SSH tunnel to the instance's agent: shim
//!   task submit, runner submit and run (→ `running`);
//! * a **running** job is pulled every tick; logs are stored per submission, and a final
//!   runner state finishes the job (the shim task is removed, the instance is IDLE again);
//! * a **terminating** job is stopped (shim terminate + remove) and finished;
//! * a run's status follows its jobs; a stopped run terminates its jobs.

use std::time::Duration;

use serde_json::json;
use tracing::Instrument;

use crate::agent::client::{RunnerClient, ShimClient};
use crate::agent::protocol::runner::{JobInfoResponse, JobState, SubmitBody};
use crate::agent::protocol::shim::{TaskConfig, TaskStatus, TerminateRequest};
use crate::engine::fleet_choice::ChoiceOptions;
use crate::engine::services::instances::{InstanceRow, select_instances};
use crate::engine::services::runs::{JobRow, RunRow, enum_to_db, select_jobs};
use crate::engine::{Engine, time};
use crate::models::instances::InstanceStatus;
use crate::models::jobs::{
    JobProvisioningData, JobRuntimeData, JobSpec, JobStatus, JobTerminationReason,
};
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::profiles::{CreationPolicy, StartupOrder};
use crate::models::runs::RunSpec;
use crate::{Error, ErrorKind};

use super::{Lease, Pipeline, PipelineKind, db_before};

/// New capacity for a job: placeholder instances in cloud fleets.
#[path = "new_capacity.rs"]
mod new_capacity;

/// Jobs on container backends (`run_job`: Kubernetes): see its module docs.
#[cfg(feature = "backends")]
#[path = "container_jobs.rs"]
mod container_jobs;

/// Multi-node run options (`startup_order`, `stop_criteria`): see its module docs.
#[path = "multinode.rs"]
mod multinode;

/// The run pipeline's work on one run (status, retry, termination): see its module docs.
#[path = "runs.rs"]
mod runs;
use runs::process_run;

/// The job pipeline.
pub(crate) struct JobPipeline;
/// The run pipeline.
pub(crate) struct RunPipeline;

/// Min interval between two ticks of one job or run.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl Pipeline for JobPipeline {
    const NAME: &'static str = "JobPipeline";
    const KIND: PipelineKind = PipelineKind::Jobs;

    lease_impl!(
        "jobs",
        "status IN ('submitted', 'provisioning', 'pulling', 'running', 'terminating')"
    );

    async fn process(engine: Engine, id: String, token: String) {
        let span = tracing::info_span!("job", %id);
        if let Err(e) = process_job(&engine, &id, &token).instrument(span).await {
            tracing::warn!(%id, error = %e, "job processing failed");
        }
        let _ = release(&engine, "jobs", &id, &token).await;
    }
}

impl Pipeline for RunPipeline {
    const NAME: &'static str = "RunPipeline";
    const KIND: PipelineKind = PipelineKind::Runs;

    lease_impl!(
        "runs",
        "deleted = FALSE AND status IN ('pending', 'submitted', 'provisioning', 'running', \
         'terminating')"
    );

    async fn process(engine: Engine, id: String, token: String) {
        let span = tracing::info_span!("run", %id);
        if let Err(e) = process_run(&engine, &id).instrument(span).await {
            tracing::warn!(%id, error = %e, "run processing failed");
        }
        let _ = release(&engine, "runs", &id, &token).await;
    }
}

async fn release(engine: &Engine, table: &str, id: &str, token: &str) -> crate::Result<()> {
    let sql = if table == "jobs" {
        "UPDATE jobs SET lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL, \
         last_processed_at = $1 WHERE id = $2 AND lock_token = $3"
    } else {
        "UPDATE runs SET lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL, \
         last_processed_at = $1 WHERE id = $2 AND lock_token = $3"
    };
    let mut tx = engine.store().begin().await?;
    sqlx::query(sql)
        .bind(time::to_db(time::now()))
        .bind(id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn job_row(engine: &Engine, id: &str) -> crate::Result<Option<JobRow>> {
    Ok(sqlx::query_as(
        "SELECT id, run_id, job_num, replica_num, submission_num, deployment_num, \
         submitted_at, last_processed_at, finished_at, status, termination_reason, \
         termination_reason_message, exit_status, job_spec_data, job_provisioning_data, \
         job_runtime_data, instance_id FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(engine.store().reader())
    .await?)
}

async fn run_row(engine: &Engine, id: &str) -> crate::Result<Option<RunRow>> {
    Ok(sqlx::query_as(
        "SELECT id, project_id, user_id, run_name, submitted_at, last_processed_at, status, \
         termination_reason, run_spec, deployment_num, deleted, jobs_rev FROM runs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(engine.store().reader())
    .await?)
}

async fn instance_row(engine: &Engine, id: &str) -> crate::Result<Option<InstanceRow>> {
    Ok(sqlx::query_as(select_instances!("id = $1"))
        .bind(id)
        .fetch_optional(engine.store().reader())
        .await?)
}

/// Sets a job's status (and optionally more columns through `extra`).
async fn set_job_status(
    engine: &Engine,
    id: &str,
    status: JobStatus,
    reason: Option<JobTerminationReason>,
    message: Option<&str>,
    exit_status: Option<i64>,
) -> crate::Result<()> {
    let now = time::to_db(time::now());
    let finished = status.is_finished().then(|| now.clone());
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE jobs SET status = $1, termination_reason = COALESCE($2, termination_reason), \
         termination_reason_message = COALESCE($3, termination_reason_message), \
         exit_status = COALESCE($4, exit_status), finished_at = COALESCE($5, finished_at), \
         last_processed_at = $6 WHERE id = $7",
    )
    .bind(enum_to_db(status))
    .bind(reason.map(JobTerminationReason::as_str))
    .bind(message)
    .bind(exit_status)
    .bind(finished)
    .bind(&now)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(job = %id, status = %status.as_str(), "job status changed");
    engine.hint(PipelineKind::Runs);
    Ok(())
}

/// Gives a job's blocks back to its instance (dstack's `_release_instance`): `busy_blocks`
/// drops by the job's share (`job_runtime_data.offer.blocks`, 1 without one) and the instance
/// is IDLE again once no block is busy (an instance still provisioning for the job becomes
/// IDLE once it is up). Exactly once per job (`instance_released`), so it is
/// called *before* the job's final status is written: a tick cut off in between redoes it.
async fn release_instance(engine: &Engine, job: &JobRow, instance_id: &str) -> crate::Result<()> {
    let blocks = job_blocks(job);
    let mut tx = engine.store().begin().await?;
    let first = sqlx::query(
        "UPDATE jobs SET instance_released = TRUE WHERE id = $1 AND instance_released = FALSE",
    )
    .bind(&job.id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first {
        return Ok(());
    }
    sqlx::query(
        "UPDATE instances SET busy_blocks = MAX(busy_blocks - $1, 0), \
         status = CASE WHEN status = 'BUSY' AND busy_blocks - $1 <= 0 THEN 'IDLE' \
         ELSE status END, last_processed_at = $2 \
         WHERE id = $3 AND status IN ('PROVISIONING', 'BUSY')",
    )
    .bind(blocks)
    .bind(time::to_db(time::now()))
    .bind(instance_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(job = %job.id, instance = %instance_id, blocks, "job unassigned from instance");
    Ok(())
}

/// The job's parsed `job_runtime_data`, if any.
fn job_runtime(job: &JobRow) -> Option<JobRuntimeData> {
    job.job_runtime_data
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

/// How many blocks of its instance a job occupies (dstack's `_get_job_occupied_blocks`).
fn job_blocks(job: &JobRow) -> i64 {
    job_runtime(job)
        .and_then(|r| r.offer)
        .map_or(1, |o| o.blocks.max(1))
}

/// dstack's `_prepare_job_runtime_data`: a job on a part of a shared instance gets its CPU,
/// GPU and memory share; a whole instance gets none (all of it). The agent runs jobs as host
/// processes, so the network mode is `host` either way.
fn prepare_job_runtime_data(offer: &InstanceOfferWithAvailability) -> serde_json::Value {
    let partial = offer.blocks < offer.total_blocks;
    let r = &offer.instance.resources;
    json!({
        "network_mode": "host",
        "gpu": partial.then_some(r.gpus.len()),
        "cpu": partial.then_some(r.cpus as f64),
        "memory": partial.then_some(r.memory_mib as f64 / 1024.0),
        "ports": null,
        "volume_names": null,
        "offer": offer,
        "working_dir": null,
        "username": null,
    })
}

/// Clients of an instance's shim and runner, through the engine's pooled tunnels.
struct AgentLink {
    shim: ShimClient,
    runner: RunnerClient,
}

impl AgentLink {
    /// The runner client is bound to the job's own task (`/tasks/{id}` on the agent's
    /// runner port), so several jobs on one instance (blocks) never reach each other's job.
    async fn open(engine: &Engine, inst: &InstanceRow, job_id: &str) -> crate::Result<Self> {
        let agent = &engine.inner.options.agent;
        let shim_addr = engine.instance_tunnel(inst, agent.shim_port).await?;
        let runner_addr = engine.instance_tunnel(inst, agent.runner_port).await?;
        let shim = ShimClient::new(&format!("http://{shim_addr}")).map_err(agent_err)?;
        let runner = RunnerClient::new(&format!("http://{runner_addr}/tasks/{job_id}"))
            .map_err(agent_err)?;
        Ok(Self { shim, runner })
    }

    /// Nothing to tear down: the tunnels stay pooled for the next tick.
    async fn close(self) {}
}

fn agent_err(e: crate::agent::AgentError) -> Error {
    Error::new(ErrorKind::Internal, e.to_string())
}

async fn process_job(engine: &Engine, id: &str, token: &str) -> crate::Result<()> {
    let Some(job) = job_row(engine, id).await? else {
        return Ok(());
    };
    #[cfg(feature = "backends")]
    if job.status() != JobStatus::Running && container_jobs::is_container_job(&job) {
        return container_jobs::process(engine, &job, token).await;
    }
    match job.status() {
        JobStatus::Submitted => assign_instance(engine, &job, token).await,
        JobStatus::Provisioning | JobStatus::Pulling => start_job(engine, &job).await,
        JobStatus::Running => pull_job(engine, &job, token).await,
        JobStatus::Terminating => terminate_job(engine, &job).await,
        _ => Ok(()),
    }
}

/// SUBMITTED: dstack's assignment (`jobs_submitted.py`). The run's fleet is chosen as for
/// its plan ([`Engine::find_optimal_fleet`], only available offers); the job takes the
/// cheapest free instance (or share of blocks) of that fleet. A cloud fleet without one gets
/// a placeholder instance for the job ([`new_capacity`]), which the next tick provisions.
/// Without any fleet, a container backend (Kubernetes) may run the job directly.
async fn assign_instance(engine: &Engine, job: &JobRow, token: &str) -> crate::Result<()> {
    let spec = job.spec()?;
    let project_id: (String,) = sqlx::query_as("SELECT project_id FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(engine.store().reader())
        .await?;
    let run = run_row(engine, &job.run_id)
        .await?
        .ok_or_else(Error::not_found)?;
    let run_spec: RunSpec = serde_json::from_str(&run.run_spec)
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    // A placeholder is reserved: create the cloud instance for it.
    if let Some(iid) = job.instance_id.clone() {
        #[cfg(feature = "backends")]
        return new_capacity::provision(engine, job, &iid, &spec, &run_spec).await;
        #[cfg(not(feature = "backends"))]
        return new_capacity::provision(engine, job, &iid).await;
    }
    let profile = run_spec.merged_profile();
    // Multi-node: the master (job 0) picks the fleet; the other nodes wait for it and then
    // take other whole instances of that fleet.
    let multinode = spec.jobs_per_replica > 1;
    let (run_fleet,): (Option<String>,) = sqlx::query_as("SELECT fleet_id FROM runs WHERE id = $1")
        .bind(&job.run_id)
        .fetch_one(engine.store().reader())
        .await?;
    if multinode
        && spec.job_num > 0
        && (run_fleet.is_none() || master_provisioning(engine, job).await?.is_none())
    {
        tracing::debug!(job = %job.id, "waiting for master job to be provisioned");
        return Ok(());
    }
    let reuse = profile.params.creation_policy == Some(CreationPolicy::Reuse);
    let opts = ChoiceOptions {
        exclude_not_available: true,
        skip_backend_offers: reuse,
        skip_backend_offers_on_pool_capacity: true,
    };
    let choice = engine
        .find_optimal_fleet(&project_id.0, &run_spec, &spec, run_fleet.as_deref(), opts)
        .await?;
    let Some(choice) = choice else {
        // A project without any fleet may still run jobs straight on a container backend
        // (Kubernetes), as before dstack required fleets; with fleets, dstack's answer holds.
        #[cfg(feature = "backends")]
        let (fleets,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM fleets WHERE project_id = $1 AND deleted = FALSE")
                .bind(&project_id.0)
                .fetch_one(engine.store().reader())
                .await?;
        #[cfg(feature = "backends")]
        match if fleets == 0 && profile.params.instances.is_none() {
            container_jobs::run_on_backend(engine, job, token, &project_id.0, &run, &run_spec)
                .await?
        } else {
            container_jobs::Launch::NoOffers
        } {
            container_jobs::Launch::Started => return Ok(()),
            container_jobs::Launch::Failed(message) => {
                return no_capacity(engine, job, &message).await;
            }
            container_jobs::Launch::NoOffers => {}
        }
        #[cfg(not(feature = "backends"))]
        let _ = token;
        let message = if profile.params.instances.is_some() {
            crate::engine::instance_selectors::FAILED_TO_USE_INSTANCES
        } else if profile.params.fleets.is_some() {
            "Failed to use specified fleets"
        } else {
            "No matching fleet found. Possible reasons: \
             https://dstack.ai/docs/guides/troubleshooting/#no-fleets"
        };
        return no_capacity(engine, job, message).await;
    };
    if choice.instance_offers.is_empty() {
        if profile.params.instances.is_some() {
            let message = crate::engine::instance_selectors::FAILED_TO_USE_INSTANCES;
            return no_capacity(engine, job, message).await;
        }
        if reuse {
            return no_capacity(engine, job, "Could not reuse any instance for this job").await;
        }
        return new_capacity::reserve_placeholder(engine, job, &project_id.0, &choice.fleet).await;
    }
    for c in choice.instance_offers {
        let (inst, offer) = (c.row, c.offer);
        let blocks = offer.blocks.max(1);
        let jrd = prepare_job_runtime_data(&offer);
        let now = time::to_db(time::now());
        let mut tx = engine.store().begin().await?;
        // Takes the blocks only if they are still free (another job may have won them).
        let r = sqlx::query(
            "UPDATE instances SET status = 'BUSY', busy_blocks = busy_blocks + $1, \
             last_processed_at = $2 WHERE id = $3 AND status IN ('IDLE', 'BUSY') \
             AND deleted = FALSE AND busy_blocks + $1 <= COALESCE(total_blocks, 1)",
        )
        .bind(blocks)
        .bind(&now)
        .bind(&inst.id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            continue;
        }
        let r = sqlx::query(
            "UPDATE jobs SET status = $1, instance_id = $2, instance_assigned = TRUE, \
             instance_released = FALSE, job_provisioning_data = $3, job_runtime_data = $4, \
             last_processed_at = $5, skip_min_processing_interval = TRUE \
             WHERE id = $6 AND status = 'submitted'",
        )
        .bind(enum_to_db(JobStatus::Provisioning))
        .bind(&inst.id)
        .bind(&inst.job_provisioning_data)
        .bind(jrd.to_string())
        .bind(&now)
        .bind(&job.id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            // Stopped meanwhile: the transaction is dropped, the blocks stay free.
            return Ok(());
        }
        set_run_fleet(&mut tx, &job.run_id, inst.fleet_id.as_deref()).await?;
        tx.commit().await?;
        tracing::info!(
            job = %job.id,
            instance = %inst.name,
            blocks,
            total_blocks = offer.total_blocks,
            "instance assigned"
        );
        engine.hint(PipelineKind::Runs);
        engine.hint(PipelineKind::Jobs);
        return Ok(());
    }
    // Every free instance was taken meanwhile: choose again on a later tick (dstack resets
    // the job's lock for a retry rather than provisioning in a fleet that may not be best).
    tracing::debug!(job = %job.id, "the chosen instances were taken; retrying assignment");
    Ok(())
}

/// Records the fleet a run's first placed job went to (later nodes and resubmissions stay
/// there until the run is unassigned).
async fn set_run_fleet(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    run_id: &str,
    fleet_id: Option<&str>,
) -> crate::Result<()> {
    sqlx::query("UPDATE runs SET fleet_id = COALESCE(fleet_id, $1) WHERE id = $2")
        .bind(fleet_id)
        .bind(run_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Fails a submitted job with `failed_to_start_due_to_no_capacity`.
async fn no_capacity(engine: &Engine, job: &JobRow, message: &str) -> crate::Result<()> {
    set_job_status(
        engine,
        &job.id,
        JobStatus::Failed,
        Some(JobTerminationReason::FailedToStartDueToNoCapacity),
        Some(message),
        None,
    )
    .await
}

async fn job_instance(engine: &Engine, job: &JobRow) -> crate::Result<InstanceRow> {
    let iid = job
        .instance_id
        .as_deref()
        .ok_or_else(|| Error::new(ErrorKind::Internal, "job has no instance"))?;
    instance_row(engine, iid)
        .await?
        .ok_or_else(Error::not_found)
}

/// PROVISIONING → PULLING: submits the shim task with the keys that let the run's user in
/// (dstack's `host_ssh_user`/`host_ssh_keys` for the host hop, `container_ssh_keys` for the
/// job's own SSH endpoint).
async fn start_job(engine: &Engine, job: &JobRow) -> crate::Result<()> {
    if job.status() == JobStatus::Pulling {
        return start_runner(engine, job).await;
    }
    let inst = job_instance(engine, job).await?;
    if inst.deleted || inst.status == InstanceStatus::Terminated {
        // dstack's `_wait_for_instance_provisioning_data`: the job's instance is gone.
        return set_job_status(
            engine,
            &job.id,
            JobStatus::Terminating,
            Some(JobTerminationReason::WaitingInstanceLimitExceeded),
            Some("Instance is terminated"),
            None,
        )
        .await;
    }
    if matches!(
        inst.status,
        InstanceStatus::Pending | InstanceStatus::Provisioning
    ) {
        // New capacity still coming up: the instance pipeline deploys it (or gives up at its
        // deadline, which ends this wait above).
        return Ok(());
    }
    // The instance's provisioning data is final now (new capacity got its address): the job
    // shows it, and clients attach with it.
    if inst.job_provisioning_data.is_some()
        && inst.job_provisioning_data != job.job_provisioning_data
    {
        let mut tx = engine.store().begin().await?;
        sqlx::query("UPDATE jobs SET job_provisioning_data = $1 WHERE id = $2")
            .bind(&inst.job_provisioning_data)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    let run = run_row(engine, &job.run_id)
        .await?
        .ok_or_else(Error::not_found)?;
    let run_spec: RunSpec = serde_json::from_str(&run.run_spec)
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    // dstack's `_should_wait_for_other_nodes`: a multi-node job starts in its replica's
    // `startup_order` (it stays `provisioning`, with no shim task, until then).
    let order = run_spec.merged_profile().params.startup_order;
    if order.is_some_and(|o| o != StartupOrder::Any) {
        let nodes = run_nodes(&latest_jobs(engine, &job.run_id).await?);
        if let Some(why) = multinode::startup_wait(order, (job.replica_num, job.job_num), &nodes) {
            tracing::debug!(job = %job.id, "{why}");
            return Ok(());
        }
    }
    let spec = job.spec()?;
    let project_key: Option<(String,)> = sqlx::query_as(
        "SELECT p.ssh_public_key FROM projects p JOIN runs r ON r.project_id = p.id \
             WHERE r.id = $1",
    )
    .bind(&run.id)
    .fetch_optional(engine.store().reader())
    .await?;
    let user_key = run_spec
        .ssh_key_pub
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let jpd: Option<serde_json::Value> = inst
        .job_provisioning_data
        .as_deref()
        .or(job.job_provisioning_data.as_deref())
        .and_then(|s| serde_json::from_str(s).ok());
    let host_user = jpd
        .as_ref()
        .and_then(|v| v.get("username"))
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let mut task = TaskConfig::new(
        job.id.clone(),
        spec.job_name.clone(),
        spec.image_name.clone(),
    );
    task.privileged = spec.privileged;
    // A job on a part of a shared instance gets its share (dstack's shim task `gpu`, `cpu`,
    // `memory`); the agent then exposes only its GPUs (`CUDA_VISIBLE_DEVICES`, …).
    if let Some(jrd) = job_runtime(job) {
        if let Some(g) = jrd.gpu {
            task.gpu = g;
        }
        if let Some(c) = jrd.cpu {
            task.cpu = c;
        }
        if let Some(m) = jrd.memory {
            task.memory = (m.0 * 1024.0 * 1024.0 * 1024.0).round() as i64;
        }
    }
    task.container_ssh_keys = project_key
        .iter()
        .map(|(k,)| k.trim().to_string())
        .chain(user_key.map(str::to_string))
        .collect();
    if let Some(k) = user_key {
        task.host_ssh_user = host_user;
        task.host_ssh_keys = vec![k.to_string()];
    }
    let link = match AgentLink::open(engine, &inst, &job.id).await {
        Ok(l) => l,
        Err(e) => return agent_unreachable(engine, job, e).await,
    };
    let result = link.shim.submit_task(&task).await;
    link.close().await;
    match result {
        Ok(_) => {}
        // Submitted by an earlier tick whose write-back was lost: carry on.
        Err(e) if e.http_status() == 409 => {}
        // No answer (a tunnel dropped, the agent restarting): tried again on the next tick,
        // up to the agent wait limit; only an answer refusing the task fails the job.
        Err(e @ crate::agent::AgentError::Transport(_)) => {
            return agent_unreachable(engine, job, agent_err(e)).await;
        }
        Err(e) => return fail_start(engine, job, &inst, agent_err(e)).await,
    }
    set_job_status(engine, &job.id, JobStatus::Pulling, None, None, None).await
}

/// PULLING → RUNNING: once the shim task runs, records its port mapping and hands the job
/// to the runner (submit + run).
async fn start_runner(engine: &Engine, job: &JobRow) -> crate::Result<()> {
    let inst = job_instance(engine, job).await?;
    let run = run_row(engine, &job.run_id)
        .await?
        .ok_or_else(Error::not_found)?;
    let run_spec: RunSpec = serde_json::from_str(&run.run_spec)
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    let spec = job.spec()?;
    let Some(cluster_info) = cluster_info(engine, job).await? else {
        tracing::debug!(job = %job.id, "waiting for the other nodes to get instances");
        return Ok(());
    };
    let link = match AgentLink::open(engine, &inst, &job.id).await {
        Ok(l) => l,
        Err(e) => return agent_unreachable(engine, job, e).await,
    };
    let result = async {
        let info = link.shim.get_task(&job.id).await.map_err(agent_err)?;
        match info.status {
            TaskStatus::Running => {}
            TaskStatus::Terminated => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    format!(
                        "the agent stopped the task: {} {}",
                        info.termination_reason, info.termination_message
                    ),
                ));
            }
            _ => return Ok(None),
        }
        let job_info = submit_to_runner(
            engine,
            job,
            &run,
            &run_spec,
            &spec,
            Some(&cluster_info),
            &link.runner,
        )
        .await?;
        Ok(Some((info, job_info)))
    }
    .await;
    link.close().await;
    match result {
        Ok(None) => Ok(()),
        Ok(Some((task, job_info))) => {
            let ports: serde_json::Map<String, serde_json::Value> = task
                .ports
                .unwrap_or_default()
                .iter()
                .map(|p| (p.container.to_string(), json!(p.host)))
                .collect();
            let host_user = job
                .job_provisioning_data
                .as_deref()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .and_then(|v| v.get("username").and_then(|u| u.as_str()).map(String::from));
            let username = job_info
                .as_ref()
                .map(|j| j.username.clone())
                .filter(|u| !u.is_empty())
                .or(host_user);
            let working_dir = job_info.map(|j| j.working_dir).filter(|w| !w.is_empty());
            // The assignment's runtime data (offer, share) plus what the agent reported.
            let mut jrd = job
                .job_runtime_data
                .as_deref()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| json!({"network_mode": "host"}));
            jrd["ports"] = json!((!ports.is_empty()).then_some(ports));
            jrd["working_dir"] = json!(working_dir);
            jrd["username"] = json!(username);
            let mut tx = engine.store().begin().await?;
            sqlx::query("UPDATE jobs SET job_runtime_data = $1 WHERE id = $2")
                .bind(jrd.to_string())
                .bind(&job.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            set_job_status(engine, &job.id, JobStatus::Running, None, None, None).await
        }
        Err(e) => fail_start(engine, job, &inst, e).await,
    }
}

/// dstack's `_get_cluster_info` for a job's replica: every node's internal IP (its
/// instance's `internal_ip`, else empty) in `job_num` order, the master's IP and the GPUs per
/// node (the job's share on a shared instance, else the instance's GPUs). `None` while a
/// node of a multi-node replica has no instance yet: the nodes start together once all have
/// one (their IPs go into every node's environment).
async fn cluster_info(engine: &Engine, job: &JobRow) -> crate::Result<Option<serde_json::Value>> {
    let gpus_of = |j: &JobRow| -> Option<(String, i64)> {
        let jpd: JobProvisioningData =
            serde_json::from_str(j.job_provisioning_data.as_deref()?).ok()?;
        let gpus = job_runtime(j)
            .and_then(|r| r.offer)
            .map_or(jpd.instance_type.resources.gpus.len(), |o| {
                o.instance.resources.gpus.len()
            });
        Some((jpd.internal_ip.unwrap_or_default(), gpus as i64))
    };
    let siblings: Vec<JobRow> = latest_jobs(engine, &job.run_id)
        .await?
        .into_iter()
        .filter(|j| j.replica_num == job.replica_num)
        .collect();
    let mut ips = Vec::new();
    let mut gpus_per_node = Vec::new();
    for j in &siblings {
        match gpus_of(j) {
            Some((ip, gpus)) => {
                ips.push(ip);
                gpus_per_node.push(gpus);
            }
            None => return Ok(None),
        }
    }
    let gpus_per_job = gpus_of(job).map_or(0, |(_, g)| g);
    Ok(Some(json!({
        "job_ips": ips,
        "master_job_ip": ips.first().cloned().unwrap_or_default(),
        "gpus_per_job": gpus_per_job,
        "gpus_per_node": gpus_per_node,
    })))
}

/// Hands a job to its runner (dstack's `_submit_job_to_runner`): submit with the run and job
/// specs (and the cluster of a multi-node replica), the file archives, the repo code, then
/// run. Shared by jobs on fleet instances and
/// jobs in container-backend pods.
async fn submit_to_runner(
    engine: &Engine,
    job: &JobRow,
    run: &RunRow,
    run_spec: &RunSpec,
    spec: &JobSpec,
    cluster_info: Option<&serde_json::Value>,
    runner: &RunnerClient,
) -> crate::Result<Option<JobInfoResponse>> {
    let body = json!({
        "run": {
            "id": run.id,
            "run_spec": {
                "run_name": run.run_name,
                "repo_id": run_spec.repo_id.clone().unwrap_or_else(|| "none".into()),
                "repo_data": run_spec.repo_data.clone().map_or_else(
                    || json!({"repo_type": "virtual"}),
                    |d| serde_json::to_value(d).unwrap_or(serde_json::Value::Null),
                ),
                "configuration": {"type": run_spec.configuration.kind()},
                "configuration_path": run_spec.configuration_path.clone().unwrap_or_default(),
            },
        },
        "job_spec": spec,
        "job_submission": {"id": job.id},
        "cluster_info": cluster_info,
        "secrets": {},
    });
    let body: SubmitBody = serde_json::from_value(body)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("submit body: {e}")))?;
    runner.submit(&body).await.map_err(agent_err)?;
    for fa in &spec.file_archives {
        let id = fa.id.to_string();
        let data = engine.file_archive_blob(&id).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "file archive {id} for {} is gone; apply the run again",
                    fa.path
                ),
            )
        })?;
        runner.upload_archive(&id, &data).await.map_err(agent_err)?;
    }
    let repo: Option<(Option<String>,)> = sqlx::query_as("SELECT repo_id FROM runs WHERE id = $1")
        .bind(&run.id)
        .fetch_optional(engine.store().reader())
        .await?;
    if let (Some(hash), Some(repo)) = (
        spec.repo_code_hash.as_deref(),
        repo.and_then(|r| r.0).as_deref(),
    ) && let Some(code) = engine.code_blob(repo, hash).await?
    {
        runner.upload_code(code).await.map_err(agent_err)?;
    }
    runner.run().await.map_err(agent_err)
}

/// How long a job may wait for an unreachable agent before it fails.
const AGENT_WAIT_LIMIT: Duration = Duration::from_secs(10 * 60);

/// The agent could not be reached (SSH or tunnel): retried on later ticks, failed with
/// `waiting_runner_limit_exceeded` after [`AGENT_WAIT_LIMIT`] in this state.
async fn agent_unreachable(engine: &Engine, job: &JobRow, e: Error) -> crate::Result<()> {
    let since = time::from_db(&job.submitted_at).unwrap_or_else(time::now);
    let waited = (time::now() - since).to_std().unwrap_or_default();
    tracing::warn!(job = %job.id, error = %e, "the host agent is unreachable");
    if waited < AGENT_WAIT_LIMIT {
        return Ok(());
    }
    let inst = job_instance(engine, job).await?;
    release_instance(engine, job, &inst.id).await?;
    set_job_status(
        engine,
        &job.id,
        JobStatus::Failed,
        Some(JobTerminationReason::WaitingRunnerLimitExceeded),
        Some(&format!(
            "The host agent did not answer for {} s: {}. Check that the host is up and \
             reachable over SSH.",
            AGENT_WAIT_LIMIT.as_secs(),
            e.message()
        )),
        None,
    )
    .await
}

/// The agent refused the job: it fails with `executor_error` and the instance is released.
async fn fail_start(
    engine: &Engine,
    job: &JobRow,
    inst: &InstanceRow,
    e: Error,
) -> crate::Result<()> {
    tracing::warn!(job = %job.id, error = %e, "starting the job failed");
    release_instance(engine, job, &inst.id).await?;
    set_job_status(
        engine,
        &job.id,
        JobStatus::Failed,
        Some(JobTerminationReason::ExecutorError),
        Some(e.message()),
        None,
    )
    .await
}

async fn store_logs(
    engine: &Engine,
    job: &JobRow,
    source: &str,
    logs: &[crate::agent::protocol::runner::LogEvent],
) -> crate::Result<()> {
    if logs.is_empty() {
        return Ok(());
    }
    let project: (String,) = sqlx::query_as("SELECT project_id FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(engine.store().reader())
        .await?;
    let mut tx = engine.store().begin().await?;
    for l in logs {
        sqlx::query(
            "INSERT INTO job_logs (project_id, job_submission_id, log_source, timestamp_us, message) \
             VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(&project.0)
        .bind(&job.id)
        .bind(source)
        .bind(l.timestamp.saturating_mul(1000))
        .bind(&l.message)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn pull_job(engine: &Engine, job: &JobRow, token: &str) -> crate::Result<()> {
    if let Some(max) = job.spec()?.max_duration.filter(|m| *m > 0) {
        let age = time::from_db(&job.submitted_at).map(|t| (time::now() - t).num_seconds());
        if age.is_some_and(|a| a > max) {
            tracing::info!(job = %job.id, max, "max_duration exceeded; stopping the job");
            let mut tx = engine.store().begin().await?;
            sqlx::query(
                "UPDATE jobs SET status = 'terminating', termination_reason = $1, \
                 skip_min_processing_interval = TRUE WHERE id = $2 AND status = 'running'",
            )
            .bind(JobTerminationReason::MaxDurationExceeded.as_str())
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            engine.hint(PipelineKind::Jobs);
            return Ok(());
        }
    }
    #[cfg(feature = "backends")]
    if container_jobs::is_container_job(job) {
        return container_jobs::pull(engine, job, token).await;
    }
    #[cfg(not(feature = "backends"))]
    let _ = token;
    let inst = job_instance(engine, job).await?;
    let ts: (Option<i64>,) = sqlx::query_as("SELECT runner_timestamp FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(engine.store().reader())
        .await?;
    let mut timestamp = ts.0.unwrap_or(0);
    let link = match AgentLink::open(engine, &inst, &job.id).await {
        Ok(l) => l,
        Err(e) => return job_disconnected(engine, job, &inst, e).await,
    };
    let mut final_state = None;
    let result = async {
        // `has_more` stays true while the job runs; pull again only while pages come full.
        for _ in 0..20 {
            let r = link.runner.pull(timestamp).await.map_err(agent_err)?;
            let empty =
                r.job_logs.is_empty() && r.runner_logs.is_empty() && r.job_states.is_empty();
            store_logs(engine, job, "stdout", &r.job_logs).await?;
            store_logs(engine, job, "runner", &r.runner_logs).await?;
            if let Some(s) = r.job_states.iter().rev().find(|s| s.state.is_final()) {
                final_state = Some(s.clone());
            }
            timestamp = r.last_updated.max(timestamp);
            if !r.has_more.unwrap_or(false) {
                break;
            }
            if empty {
                if final_state.is_none() {
                    break;
                }
                // Finished but the runner still has output to hand over: wait a little
                // (bounded by the loop) so no trailing log lines are lost.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE jobs SET runner_timestamp = $1, \
         disconnected_at = CASE WHEN $2 THEN NULL ELSE disconnected_at END WHERE id = $3",
    )
    .bind(timestamp)
    .bind(result.is_ok())
    .bind(&job.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Err(e) = result {
        link.close().await;
        return job_disconnected(engine, job, &inst, e).await;
    }
    let Some(state) = final_state else {
        link.close().await;
        return Ok(());
    };
    let (status, reason) = match state.state {
        JobState::Done => (JobStatus::Done, JobTerminationReason::DoneByRunner),
        JobState::Terminated => (
            JobStatus::Terminated,
            JobTerminationReason::TerminatedByServer,
        ),
        _ => (
            JobStatus::Failed,
            JobTerminationReason::ContainerExitedWithError,
        ),
    };
    stop_task(&link, &job.id, reason.as_str(), 0).await;
    link.close().await;
    let message =
        (!state.termination_message.is_empty()).then_some(state.termination_message.as_str());
    release_instance(engine, job, &inst.id).await?;
    set_job_status(
        engine,
        &job.id,
        status,
        Some(reason),
        message,
        state.exit_status.map(i64::from),
    )
    .await
}

async fn set_disconnected_at(engine: &Engine, id: &str, at: String) -> crate::Result<()> {
    let mut tx = engine.store().begin().await?;
    sqlx::query("UPDATE jobs SET disconnected_at = $1 WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A running job's agent did not answer: the first failure is recorded; once it lasts past
/// the disconnect timeout the job fails with `instance_unreachable` and the instance is
/// released (its own pipeline checks the host).
async fn job_disconnected(
    engine: &Engine,
    job: &JobRow,
    inst: &InstanceRow,
    e: Error,
) -> crate::Result<()> {
    let since: (Option<String>,) = sqlx::query_as("SELECT disconnected_at FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(engine.store().reader())
        .await?;
    let now = time::now();
    let Some(since) = since.0.as_deref().and_then(time::from_db) else {
        tracing::warn!(job = %job.id, instance = %inst.name, error = %e, "lost contact with the job's agent");
        set_disconnected_at(engine, &job.id, time::to_db(now)).await?;
        return Ok(());
    };
    let limit = engine.inner.options.pipelines.job_disconnect_timeout;
    if (now - since).to_std().unwrap_or_default() < limit {
        return Ok(());
    }
    release_instance(engine, job, &inst.id).await?;
    set_job_status(
        engine,
        &job.id,
        JobStatus::Failed,
        Some(JobTerminationReason::InstanceUnreachable),
        Some(&format!(
            "The agent on {} has not answered for {} s ({}). Check that the host is up and \
             that `dstack-agent` runs there; add `retry` to the configuration to resubmit \
             automatically.",
            inst.name,
            limit.as_secs(),
            e.message()
        )),
        None,
    )
    .await
}

async fn stop_task(link: &AgentLink, id: &str, reason: &str, timeout: u64) {
    let req = TerminateRequest {
        termination_reason: reason.to_string(),
        timeout,
        ..Default::default()
    };
    if let Err(e) = link.shim.terminate_task(id, &req).await {
        tracing::debug!(job = %id, error = %e, "terminate task");
    }
    if let Err(e) = link.shim.remove_task(id).await {
        tracing::debug!(job = %id, error = %e, "remove task");
    }
}

async fn terminate_job(engine: &Engine, job: &JobRow) -> crate::Result<()> {
    let reason = job
        .termination_reason
        .as_deref()
        .and_then(JobTerminationReason::from_wire)
        .unwrap_or(JobTerminationReason::TerminatedByUser);
    let inst = match job.instance_id.as_deref() {
        Some(iid) => instance_row(engine, iid).await?,
        None => None,
    };
    if let Some(inst) = inst.as_ref().filter(|i| i.is_placeholder()) {
        // Never provisioned: the reservation goes away with the job.
        new_capacity::drop_placeholder(engine, job, inst).await?;
    } else if let Some(inst) = inst {
        // An instance still coming up has no agent to stop yet.
        let up = matches!(inst.status, InstanceStatus::Idle | InstanceStatus::Busy);
        let link = if up {
            Some(AgentLink::open(engine, &inst, &job.id).await)
        } else {
            None
        };
        match link {
            None => {}
            Some(Ok(link)) => {
                // Graceful stop within `stop_duration` (dstack's default 5 min); an abort
                // kills at once.
                let grace = if reason == JobTerminationReason::AbortedByUser {
                    0
                } else {
                    job.spec()
                        .ok()
                        .and_then(|s| s.stop_duration)
                        .and_then(|d| u64::try_from(d).ok())
                        .unwrap_or(0)
                };
                let _ = link.runner.stop().await;
                stop_task(&link, &job.id, reason.as_str(), grace).await;
                link.close().await;
            }
            Some(Err(e)) => tracing::warn!(job = %job.id, error = %e, "cannot reach the agent"),
        }
        release_instance(engine, job, &inst.id).await?;
    }
    set_job_status(
        engine,
        &job.id,
        reason.to_status(),
        Some(reason),
        None,
        None,
    )
    .await
}

/// The provisioning data of the master (`job_num` 0, latest submission) of `job`'s replica,
/// once it has some (dstack's `_get_master_job_provisioning_data`).
async fn master_provisioning(
    engine: &Engine,
    job: &JobRow,
) -> crate::Result<Option<JobProvisioningData>> {
    let jpd: Option<(Option<String>,)> = sqlx::query_as(
        "SELECT job_provisioning_data FROM jobs WHERE run_id = $1 AND replica_num = $2 \
         AND job_num = 0 ORDER BY submission_num DESC LIMIT 1",
    )
    .bind(&job.run_id)
    .bind(job.replica_num)
    .fetch_optional(engine.store().reader())
    .await?;
    Ok(jpd
        .and_then(|(j,)| j)
        .and_then(|j| serde_json::from_str(&j).ok()))
}

/// The jobs of a run as the multi-node rules see them.
fn run_nodes(jobs: &[JobRow]) -> Vec<multinode::Node> {
    jobs.iter()
        .map(|j| multinode::Node {
            replica_num: j.replica_num,
            job_num: j.job_num,
            status: j.status(),
        })
        .collect()
}

/// The latest submission of every job of a run.
async fn latest_jobs(engine: &Engine, run_id: &str) -> crate::Result<Vec<JobRow>> {
    Ok(sqlx::query_as(select_jobs!(
        "run_id = $1 AND submission_num = (SELECT MAX(k.submission_num) FROM jobs k \
         WHERE k.run_id = jobs.run_id AND k.job_num = jobs.job_num \
         AND k.replica_num = jobs.replica_num) ORDER BY replica_num, job_num"
    ))
    .bind(run_id)
    .fetch_all(engine.store().reader())
    .await?)
}
