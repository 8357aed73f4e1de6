//! Jobs on container backends (dstack's `ComputeWithRunJob`: Kubernetes; RunPod and Vast.ai
//! when they exist here), driven by the job pipeline:
//!
//! * a **submitted** job that no idle fleet instance fits gets the cheapest available offer
//!   of the project's container backends, and `run_job` creates its container (a pod running
//!   dstack's runner). The job keeps no instance: its `job_provisioning_data` (with
//!   `dockerized: false`, the pod name as `instance_id`) is the whole state, written with the
//!   lease token, so a restarted server carries on from the database;
//! * a **provisioning** job is polled with `update_provisioning_data` until the pod has an
//!   address and the backend's `ssh_proxy` (the jump pod, which then also accepts the run's
//!   key); then the runner is reached directly over SSH through that proxy (no shim) and
//!   gets the job (submit, archives, code, run) → `running`;
//! * a **running** job is pulled like a job on an instance; a final runner state deletes the
//!   pod and finishes the job. A runner that stops answering is checked against the backend:
//!   a pod that vanished or finished fails the job at once with a message saying so;
//! * a **terminating** job (stop, abort, run failure) asks the runner to stop, deletes the pod
//!   (`terminate_instance` with the pod name) and finishes; a failed deletion is retried on
//!   the next tick.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use crate::agent::client::RunnerClient;
use crate::agent::protocol::runner::JobState;
use crate::backends::common::provision::MAX_OFFERS_TRIED;
use crate::backends::{BackendError, Compute, InstanceConfiguration, JobLaunch};
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;

use super::{
    AGENT_WAIT_LIMIT, Duration, Engine, Error, ErrorKind, JobRow, JobStatus, JobTerminationReason,
    PipelineKind, RunRow, RunSpec, agent_err, run_row, store_logs, submit_to_runner, time,
};

/// The runner API's port inside a job container (dstack's `DSTACK_RUNNER_HTTP_PORT`: the
/// container's command starts the runner there), whatever port host agents use
/// (`DSTACK_AGENT_RUNNER_PORT`).
const CONTAINER_RUNNER_PORT: u16 = 10999;

/// What [`run_on_backend`] did for a submitted job.
pub(super) enum Launch {
    /// A container was created (or the job moved on meanwhile and it was deleted again).
    Started,
    /// No container backend of the project has an offer for the job.
    NoOffers,
    /// Offers were tried and none could be used; the message says why.
    Failed(String),
}

/// The stored provisioning data of a job.
fn provisioning_data(job: &JobRow) -> Option<JobProvisioningData> {
    job.job_provisioning_data
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
}

/// Whether the job runs in a container-backend container (not dockerized: the runner is the
/// container's main process), with or without a fleet instance standing for it.
pub(super) fn is_container_job(job: &JobRow) -> bool {
    provisioning_data(job).is_some_and(|j| !j.dockerized)
}

async fn job_project(engine: &Engine, job: &JobRow) -> crate::Result<String> {
    let (p,): (String,) = sqlx::query_as("SELECT project_id FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(engine.store().reader())
        .await?;
    Ok(p)
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Internal, e.to_string())
}

/// Sets the job's status (and reason, message, exit status) while this worker's lease holds;
/// `false` when the lease was lost (another worker owns the job now).
#[allow(clippy::too_many_arguments)]
async fn set_status(
    engine: &Engine,
    job: &JobRow,
    token: &str,
    status: JobStatus,
    reason: Option<JobTerminationReason>,
    message: Option<&str>,
    exit_status: Option<i64>,
) -> crate::Result<bool> {
    let now = time::to_db(time::now());
    let finished = status.is_finished().then(|| now.clone());
    let mut tx = engine.store().begin().await?;
    let r = sqlx::query(
        "UPDATE jobs SET status = $1, termination_reason = COALESCE($2, termination_reason), \
         termination_reason_message = COALESCE($3, termination_reason_message), \
         exit_status = COALESCE($4, exit_status), finished_at = COALESCE($5, finished_at), \
         last_processed_at = $6, skip_min_processing_interval = TRUE \
         WHERE id = $7 AND lock_token = $8",
    )
    .bind(super::enum_to_db(status))
    .bind(reason.map(JobTerminationReason::as_str))
    .bind(message)
    .bind(exit_status)
    .bind(finished)
    .bind(&now)
    .bind(&job.id)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 1
        && status.is_finished()
        && let Some(iid) = &job.instance_id
    {
        // The fleet instance standing for this job's container (dstack terminates
        // container-backend instances with their job): its container is gone now.
        sqlx::query(
            "UPDATE instances SET status = 'TERMINATED', deleted = TRUE, deleted_at = $1, \
             finished_at = $1, last_processed_at = $1, busy_blocks = 0, \
             termination_reason = COALESCE(termination_reason, 'idle_timeout') \
             WHERE id = $2 AND deleted = FALSE",
        )
        .bind(&now)
        .bind(iid)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let ok = r.rows_affected() == 1;
    if ok {
        tracing::info!(job = %job.id, status = %status.as_str(), "job status changed");
        engine.hint(PipelineKind::Runs);
        engine.hint(PipelineKind::Jobs);
    }
    Ok(ok)
}

/// Stores updated provisioning data while the lease holds.
async fn store_jpd(
    engine: &Engine,
    job: &JobRow,
    token: &str,
    jpd: &JobProvisioningData,
) -> crate::Result<bool> {
    let data = serde_json::to_string(jpd).map_err(internal)?;
    let mut tx = engine.store().begin().await?;
    let r =
        sqlx::query("UPDATE jobs SET job_provisioning_data = $1 WHERE id = $2 AND lock_token = $3")
            .bind(data)
            .bind(&job.id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(r.rows_affected() == 1)
}

/// A container created for a job.
pub(super) struct Container {
    /// The backend that runs it.
    pub(super) compute: Arc<dyn Compute>,
    /// The offer it was created from.
    pub(super) offer: InstanceOfferWithAvailability,
    /// Its provisioning data (`dockerized: false`).
    pub(super) jpd: JobProvisioningData,
}

/// What [`create_container`] did.
pub(super) enum Created {
    /// A container runs the job's runner.
    Container(Box<Container>),
    /// No container backend has an offer for the job.
    NoOffers,
    /// Offers were tried and none could be used; the message says why.
    Failed(String),
}

/// Tries the project's container backends for a submitted job without a fleet (see the
/// module docs): the job's own requirements and the run's profile.
pub(super) async fn run_on_backend(
    engine: &Engine,
    job: &JobRow,
    token: &str,
    project_id: &str,
    run: &RunRow,
    run_spec: &RunSpec,
) -> crate::Result<Launch> {
    let spec = job.spec()?;
    let profile = run_spec.merged_profile();
    match create_container(
        engine,
        job,
        project_id,
        run,
        run_spec,
        &spec.requirements,
        &profile,
    )
    .await?
    {
        Created::Container(c) => claim(engine, job, token, &c.compute, c.jpd).await,
        Created::NoOffers => Ok(Launch::NoOffers),
        Created::Failed(m) => Ok(Launch::Failed(m)),
    }
}

/// Creates the job's container on the cheapest available offer of the project's container
/// backends that satisfies `requirements` and `profile` (at most 25 offers tried).
pub(super) async fn create_container(
    engine: &Engine,
    job: &JobRow,
    project_id: &str,
    run: &RunRow,
    run_spec: &RunSpec,
    requirements: &crate::models::resources::Requirements,
    profile: &crate::models::profiles::Profile,
) -> crate::Result<Created> {
    let spec = job.spec()?;
    let types: Vec<(String,)> =
        sqlx::query_as("SELECT type FROM backends WHERE project_id = $1 ORDER BY created_at")
            .bind(project_id)
            .fetch_all(engine.store().reader())
            .await?;
    let mut candidates: Vec<(Arc<dyn Compute>, InstanceOfferWithAvailability)> = Vec::new();
    for (ty,) in types {
        if let Some(allowed) = &profile.params.backends
            && !allowed.iter().any(|b| b.as_str() == ty)
        {
            continue;
        }
        let compute = match engine.compute_for(project_id, &ty).await {
            Ok(Some(c)) if c.as_run_job().is_some() => c,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(backend = %ty, error = %e, "cannot build the backend");
                continue;
            }
        };
        match compute.get_offers(Some(requirements)).await {
            Ok(offers) => {
                for o in offers {
                    let region_ok = profile
                        .params
                        .regions
                        .as_ref()
                        .is_none_or(|r| r.iter().any(|r| r.eq_ignore_ascii_case(&o.region)));
                    if region_ok && o.availability.is_available() {
                        candidates.push((compute.clone(), o));
                    }
                }
            }
            Err(e) => tracing::warn!(backend = %ty, error = %e, "cannot get offers"),
        }
    }
    if candidates.is_empty() {
        return Ok(Created::NoOffers);
    }
    candidates.sort_by(|a, b| a.1.price.total_cmp(&b.1.price));
    let (project_name, project_key): (String, String) =
        sqlx::query_as("SELECT name, ssh_public_key FROM projects WHERE id = $1")
            .bind(project_id)
            .fetch_one(engine.store().reader())
            .await?;
    let user: Option<(String,)> = sqlx::query_as(
        "SELECT u.name FROM users u JOIN runs r ON r.user_id = u.id WHERE r.id = $1",
    )
    .bind(&run.id)
    .fetch_optional(engine.store().reader())
    .await?;
    let mut keys = vec![project_key.trim().to_string()];
    if let Some(k) = run_spec
        .ssh_key_pub
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        keys.push(k.to_string());
    }
    // One pod per submission: a resubmission must not collide with a pod still being deleted.
    let instance_name = if job.submission_num > 0 {
        format!("{}-{}", spec.job_name, job.submission_num)
    } else {
        spec.job_name.clone()
    };
    let mut config = InstanceConfiguration::new(
        project_name,
        Uuid::parse_str(&job.id).unwrap_or_default(),
        instance_name,
        keys,
    );
    if let Some((u,)) = user {
        config = config.with_user(u);
    }
    let mut launch = JobLaunch::new(&run.run_name, &spec.job_name, &spec.image_name)
        .with_privileged(spec.privileged)
        .with_requirements(requirements.clone());
    for (k, v) in &spec.env {
        launch = launch.with_env(k, v);
    }
    if let Some(a) = &spec.registry_auth {
        launch = launch.with_registry_auth(&a.username, &a.password);
    }
    let mut last = String::new();
    let tried = candidates.len().min(MAX_OFFERS_TRIED);
    for (compute, offer) in candidates.iter().take(MAX_OFFERS_TRIED) {
        let Some(rj) = compute.as_run_job() else {
            continue;
        };
        match rj.run_job(offer, &config, &launch).await {
            Ok(jpd) => {
                return Ok(Created::Container(Box::new(Container {
                    compute: compute.clone(),
                    offer: offer.clone(),
                    jpd,
                })));
            }
            Err(e @ BackendError::InvalidCredentials { .. }) => {
                return Ok(Created::Failed(format!(
                    "The {} backend rejected its credentials: {e}; update the backend config",
                    offer.backend.as_str()
                )));
            }
            Err(e) => {
                tracing::warn!(job = %job.id, backend = %offer.backend.as_str(),
                    offer = %offer.instance.name, error = %e, "run_job failed");
                last = e.to_string();
            }
        }
    }
    Ok(Created::Failed(format!(
        "No capacity on the project's container backends: {tried} offer(s) tried; last \
         error: {last}. Check `dstack offer` and the run's resources"
    )))
}

/// Records a created container on the job; when the lease was lost or the job moved on
/// meanwhile (stopped while `run_job` ran), the container is deleted again.
async fn claim(
    engine: &Engine,
    job: &JobRow,
    token: &str,
    compute: &Arc<dyn Compute>,
    jpd: JobProvisioningData,
) -> crate::Result<Launch> {
    let data = serde_json::to_string(&jpd).map_err(internal)?;
    let now = time::to_db(time::now());
    let mut tx = engine.store().begin().await?;
    let r = sqlx::query(
        "UPDATE jobs SET status = 'provisioning', job_provisioning_data = $1, \
         last_processed_at = $2, skip_min_processing_interval = TRUE \
         WHERE id = $3 AND lock_token = $4 AND status = 'submitted'",
    )
    .bind(&data)
    .bind(&now)
    .bind(&job.id)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if r.rows_affected() != 1 {
        tracing::warn!(job = %job.id, pod = %jpd.instance_id,
            "the job moved on while its container was created; deleting the container");
        if let Err(e) = delete_container(compute.as_ref(), &jpd).await {
            tracing::warn!(job = %job.id, pod = %jpd.instance_id, error = %e,
                "cannot delete the container; delete it by hand");
        }
        return Ok(Launch::Started);
    }
    tracing::info!(job = %job.id, backend = %jpd.backend.as_str(), container = %jpd.instance_id,
        "job container created");
    engine.hint(PipelineKind::Runs);
    engine.hint(PipelineKind::Jobs);
    Ok(Launch::Started)
}

pub(super) async fn delete_container(
    compute: &dyn Compute,
    jpd: &JobProvisioningData,
) -> crate::Result<()> {
    compute
        .terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
        .await
        .map_err(Error::from)
}

/// The job's backend, or an error saying it is no longer configured.
async fn job_compute(
    engine: &Engine,
    project_id: &str,
    jpd: &JobProvisioningData,
) -> crate::Result<Arc<dyn Compute>> {
    engine
        .compute_for(project_id, jpd.backend.as_str())
        .await?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::BackendNotAvailable,
                format!(
                    "the {} backend of the job's container is no longer configured; add it \
                     back to delete the container {}",
                    jpd.backend.as_str(),
                    jpd.instance_id
                ),
            )
        })
}

/// A client of the container's runner API through a pooled tunnel keyed by the job id.
async fn runner_client(
    engine: &Engine,
    job: &JobRow,
    project_id: &str,
    jpd: &JobProvisioningData,
) -> crate::Result<RunnerClient> {
    let addr = engine
        .container_tunnel(&job.id, project_id, jpd, CONTAINER_RUNNER_PORT)
        .await?;
    RunnerClient::new(&format!("http://{addr}")).map_err(agent_err)
}

/// Processes a container job in a non-submitted status.
pub(super) async fn process(engine: &Engine, job: &JobRow, token: &str) -> crate::Result<()> {
    match job.status() {
        JobStatus::Provisioning | JobStatus::Pulling => start(engine, job, token).await,
        JobStatus::Running => pull(engine, job, token).await,
        JobStatus::Terminating => terminate(engine, job, token).await,
        _ => Ok(()),
    }
}

/// Fails a job that has not started, deleting its container.
async fn fail_start(
    engine: &Engine,
    job: &JobRow,
    token: &str,
    jpd: &JobProvisioningData,
    reason: JobTerminationReason,
    message: &str,
) -> crate::Result<()> {
    tracing::warn!(job = %job.id, container = %jpd.instance_id, %message, "the job's container failed to start");
    let project_id = job_project(engine, job).await?;
    if let Ok(compute) = job_compute(engine, &project_id, jpd).await
        && let Err(e) = delete_container(compute.as_ref(), jpd).await
    {
        // Keep the job terminating: the next tick deletes the container again.
        tracing::warn!(job = %job.id, error = %e, "cannot delete the container yet");
        set_status(
            engine,
            job,
            token,
            JobStatus::Terminating,
            Some(reason),
            Some(message),
            None,
        )
        .await?;
        return Ok(());
    }
    engine.inner.links.forget_instance(&job.id);
    set_status(
        engine,
        job,
        token,
        JobStatus::Failed,
        Some(reason),
        Some(message),
        None,
    )
    .await?;
    Ok(())
}

/// A starting job whose container is not reachable yet: failed after [`AGENT_WAIT_LIMIT`].
async fn still_waiting(
    engine: &Engine,
    job: &JobRow,
    token: &str,
    jpd: &JobProvisioningData,
    why: &str,
) -> crate::Result<()> {
    let since = time::from_db(&job.submitted_at).unwrap_or_else(time::now);
    let waited = (time::now() - since).to_std().unwrap_or_default();
    tracing::debug!(job = %job.id, %why, "the job's container is not ready yet");
    if waited < AGENT_WAIT_LIMIT {
        return Ok(());
    }
    let message = format!(
        "The runner in container {} did not answer within {} s ({why}). Check the image \
         (it must have /bin/sh and be able to download dstack-runner) and the backend's \
         SSH proxy.",
        jpd.instance_id,
        AGENT_WAIT_LIMIT.as_secs()
    );
    fail_start(
        engine,
        job,
        token,
        jpd,
        JobTerminationReason::WaitingRunnerLimitExceeded,
        &message,
    )
    .await
}

/// PROVISIONING → RUNNING: waits for the container's address and SSH proxy, then hands the
/// job to its runner.
async fn start(engine: &Engine, job: &JobRow, token: &str) -> crate::Result<()> {
    let Some(mut jpd) = provisioning_data(job) else {
        return Ok(());
    };
    let project_id = job_project(engine, job).await?;
    if jpd.hostname.is_none() || jpd.ssh_proxy.is_none() {
        let compute = match job_compute(engine, &project_id, &jpd).await {
            Ok(c) => c,
            Err(e) => {
                let msg = e.message().to_string();
                return fail_start(
                    engine,
                    job,
                    token,
                    &jpd,
                    JobTerminationReason::ExecutorError,
                    &msg,
                )
                .await;
            }
        };
        match compute.update_provisioning_data(&mut jpd).await {
            Ok(()) => {}
            Err(e @ BackendError::Provisioning { .. }) => {
                let msg = format!("The job's container failed: {e}; apply the run again");
                return fail_start(
                    engine,
                    job,
                    token,
                    &jpd,
                    JobTerminationReason::ExecutorError,
                    &msg,
                )
                .await;
            }
            Err(e) => return still_waiting(engine, job, token, &jpd, &e.to_string()).await,
        }
        if !store_jpd(engine, job, token, &jpd).await? {
            return Ok(());
        }
        if jpd.hostname.is_none() || jpd.ssh_proxy.is_none() {
            return still_waiting(engine, job, token, &jpd, "no address or SSH proxy yet").await;
        }
    }
    let runner = match runner_client(engine, job, &project_id, &jpd).await {
        Ok(r) => r,
        Err(e) => return still_waiting(engine, job, token, &jpd, e.message()).await,
    };
    if let Err(e) = runner.healthcheck().await {
        engine.inner.links.forget_instance(&job.id);
        return still_waiting(engine, job, token, &jpd, &e.to_string()).await;
    }
    let run = run_row(engine, &job.run_id)
        .await?
        .ok_or_else(Error::not_found)?;
    let run_spec: RunSpec = serde_json::from_str(&run.run_spec).map_err(internal)?;
    let spec = job.spec()?;
    let job_info = match submit_to_runner(engine, job, &run, &run_spec, &spec, None, &runner).await
    {
        Ok(i) => i,
        Err(e) => {
            let msg = format!("The runner refused the job: {}", e.message());
            return fail_start(
                engine,
                job,
                token,
                &jpd,
                JobTerminationReason::ExecutorError,
                &msg,
            )
            .await;
        }
    };
    let username = job_info
        .as_ref()
        .map(|j| j.username.clone())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| jpd.username.clone());
    let working_dir = job_info.map(|j| j.working_dir).filter(|w| !w.is_empty());
    let jrd = json!({
        "network_mode": "host",
        "gpu": null,
        "cpu": null,
        "memory": null,
        "ports": null,
        "volume_names": null,
        "offer": null,
        "working_dir": working_dir,
        "username": username,
    });
    let mut tx = engine.store().begin().await?;
    sqlx::query("UPDATE jobs SET job_runtime_data = $1 WHERE id = $2 AND lock_token = $3")
        .bind(jrd.to_string())
        .bind(&job.id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    set_status(engine, job, token, JobStatus::Running, None, None, None).await?;
    Ok(())
}

/// RUNNING: pulls the runner; a final state deletes the container and finishes the job.
pub(super) async fn pull(engine: &Engine, job: &JobRow, token: &str) -> crate::Result<()> {
    let Some(jpd) = provisioning_data(job) else {
        return Ok(());
    };
    let project_id = job_project(engine, job).await?;
    let ts: (Option<i64>,) = sqlx::query_as("SELECT runner_timestamp FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(engine.store().reader())
        .await?;
    let mut timestamp = ts.0.unwrap_or(0);
    let runner = match runner_client(engine, job, &project_id, &jpd).await {
        Ok(r) => r,
        Err(e) => return lost(engine, job, token, &project_id, &jpd, e).await,
    };
    let mut final_state = None;
    let result = async {
        for _ in 0..20 {
            let r = runner.pull(timestamp).await.map_err(agent_err)?;
            let empty =
                r.job_logs.is_empty() && r.runner_logs.is_empty() && r.job_states.is_empty();
            store_logs(engine, job, "stdout", &r.job_logs).await?;
            store_logs(engine, job, "runner", &r.runner_logs).await?;
            if let Some(s) = r.job_states.iter().rev().find(|s| s.state.is_final()) {
                final_state = Some(s.clone());
            }
            timestamp = r.last_updated.max(timestamp);
            if !r.has_more.unwrap_or(false) || (empty && final_state.is_none()) {
                break;
            }
            if empty {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE jobs SET runner_timestamp = $1, \
         disconnected_at = CASE WHEN $2 THEN NULL ELSE disconnected_at END \
         WHERE id = $3 AND lock_token = $4",
    )
    .bind(timestamp)
    .bind(result.is_ok())
    .bind(&job.id)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    if let Err(e) = result {
        engine.inner.links.forget_instance(&job.id);
        return lost(engine, job, token, &project_id, &jpd, e).await;
    }
    let Some(state) = final_state else {
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
    let message =
        (!state.termination_message.is_empty()).then_some(state.termination_message.as_str());
    let exit = state.exit_status.map(i64::from);
    // Recorded first, so a failed deletion is retried by the terminating path with the
    // runner's outcome kept.
    set_status(
        engine,
        job,
        token,
        JobStatus::Terminating,
        Some(reason),
        message,
        exit,
    )
    .await?;
    let deleted = match job_compute(engine, &project_id, &jpd).await {
        Ok(c) => delete_container(c.as_ref(), &jpd).await,
        Err(e) => Err(e),
    };
    match deleted {
        Ok(()) => {
            engine.inner.links.forget_instance(&job.id);
            set_status(engine, job, token, status, None, None, None).await?;
        }
        Err(e) => {
            tracing::warn!(job = %job.id, container = %jpd.instance_id, error = %e,
                "cannot delete the finished job's container yet; retrying");
        }
    }
    Ok(())
}

/// The runner of a running job did not answer: a container that vanished or finished fails
/// the job at once; otherwise it fails after the disconnect timeout.
async fn lost(
    engine: &Engine,
    job: &JobRow,
    token: &str,
    project_id: &str,
    jpd: &JobProvisioningData,
    e: Error,
) -> crate::Result<()> {
    if let Ok(compute) = job_compute(engine, project_id, jpd).await {
        let mut probe = jpd.clone();
        if let Err(be @ BackendError::Provisioning { .. }) =
            compute.update_provisioning_data(&mut probe).await
        {
            let msg = format!(
                "The job's container {} is gone or stopped ({be}); it was deleted, evicted, \
                 or its node went away. Add `retry` to the configuration to resubmit \
                 automatically.",
                jpd.instance_id
            );
            // Whatever is left of it (its service) goes too.
            let _ = delete_container(compute.as_ref(), jpd).await;
            engine.inner.links.forget_instance(&job.id);
            set_status(
                engine,
                job,
                token,
                JobStatus::Failed,
                Some(JobTerminationReason::InstanceUnreachable),
                Some(&msg),
                None,
            )
            .await?;
            return Ok(());
        }
    }
    let since: (Option<String>,) = sqlx::query_as("SELECT disconnected_at FROM jobs WHERE id = $1")
        .bind(&job.id)
        .fetch_one(engine.store().reader())
        .await?;
    let now = time::now();
    let Some(since) = since.0.as_deref().and_then(time::from_db) else {
        tracing::warn!(job = %job.id, container = %jpd.instance_id, error = %e,
            "lost contact with the job's runner");
        let mut tx = engine.store().begin().await?;
        sqlx::query("UPDATE jobs SET disconnected_at = $1 WHERE id = $2 AND lock_token = $3")
            .bind(time::to_db(now))
            .bind(&job.id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(());
    };
    let limit = engine.inner.options.pipelines.job_disconnect_timeout;
    if (now - since).to_std().unwrap_or_default() < limit {
        return Ok(());
    }
    let msg = format!(
        "The runner in container {} has not answered for {} s ({}). Check the backend's SSH \
         proxy; add `retry` to the configuration to resubmit automatically.",
        jpd.instance_id,
        limit.as_secs(),
        e.message()
    );
    fail_start(
        engine,
        job,
        token,
        jpd,
        JobTerminationReason::InstanceUnreachable,
        &msg,
    )
    .await
}

/// TERMINATING: stops the runner (best effort), deletes the container, finishes the job.
async fn terminate(engine: &Engine, job: &JobRow, token: &str) -> crate::Result<()> {
    let reason = job
        .termination_reason
        .as_deref()
        .and_then(JobTerminationReason::from_wire)
        .unwrap_or(JobTerminationReason::TerminatedByUser);
    let Some(jpd) = provisioning_data(job) else {
        set_status(
            engine,
            job,
            token,
            reason.to_status(),
            Some(reason),
            None,
            None,
        )
        .await?;
        return Ok(());
    };
    let project_id = job_project(engine, job).await?;
    if jpd.hostname.is_some()
        && reason != JobTerminationReason::DoneByRunner
        && let Ok(Ok(runner)) = tokio::time::timeout(
            Duration::from_secs(10),
            runner_client(engine, job, &project_id, &jpd),
        )
        .await
        && let Err(e) = tokio::time::timeout(Duration::from_secs(10), runner.stop()).await
    {
        tracing::debug!(job = %job.id, error = %e, "runner stop timed out");
    }
    match job_compute(engine, &project_id, &jpd).await {
        Ok(compute) => {
            if let Err(e) = delete_container(compute.as_ref(), &jpd).await {
                tracing::warn!(job = %job.id, container = %jpd.instance_id, error = %e,
                    "cannot delete the job's container yet; retrying");
                return Ok(());
            }
        }
        Err(e) => tracing::warn!(job = %job.id, error = %e,
            "the job's container cannot be deleted from here"),
    }
    engine.inner.links.forget_instance(&job.id);
    tracing::info!(job = %job.id, container = %jpd.instance_id, "job container deleted");
    set_status(
        engine,
        job,
        token,
        reason.to_status(),
        Some(reason),
        None,
        None,
    )
    .await?;
    Ok(())
}
