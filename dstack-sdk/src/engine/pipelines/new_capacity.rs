//! New capacity for a job in a cloud fleet (dstack 0.22.5's placeholder path in
//! `jobs_submitted.py`), in two ticks of the job:
//!
//! 1. **Reserve**: the chosen fleet has no free instance for the job, so a PENDING instance
//!    `<fleet>-<n>` is inserted for it (`provisioning_job_id` = the job) in the same
//!    transaction that counts the fleet's active instances: `nodes.max` is a hard limit
//!    ("Fleet is at capacity") and instance numbers stay unique. The instance pipeline
//!    leaves placeholders alone.
//! 2. **Provision**: the job's worker tries the available offers of the fleet's backends that
//!    satisfy the fleet's and the run's profile and requirements combined (at most 25; a
//!    multi-node job only on backends that support it, and a worker — which waits for its
//!    master to be provisioned — only in its master's backend and region). The
//!    first created VM promotes the placeholder to PROVISIONING with one block, busy for this
//!    job (dstack's `_promote_placeholder_instance`), and the job goes `provisioning`. From
//!    there the instance pipeline waits for the VM's address and deploys the agent, and the
//!    job starts once the instance is up. If nothing can be created the job fails with
//!    `failed_to_start_due_to_no_capacity` and a message listing the offers' errors, and the
//!    placeholder is deleted.
//!
//! A job stopped before its placeholder was provisioned deletes it ([`drop_placeholder`]);
//! one stopped while its new instance is coming up leaves an instance that becomes IDLE in
//! the fleet (and ends with the fleet's `idle_duration`).

use super::*;
use crate::engine::fleet_choice::FleetInfo;

/// Reserves a placeholder instance for `job` in `fleet`, or fails the job when the fleet
/// cannot take another instance.
pub(super) async fn reserve_placeholder(
    engine: &Engine,
    job: &JobRow,
    project_id: &str,
    fleet: &FleetInfo,
) -> crate::Result<()> {
    let now = time::to_db(time::now());
    // The store has one writer: counting and inserting in one transaction is atomic.
    let mut tx = engine.store().begin().await?;
    let instances: Vec<(i64, String)> = sqlx::query_as(
        "SELECT instance_num, status FROM instances WHERE fleet_id = $1 AND deleted = FALSE",
    )
    .bind(&fleet.id)
    .fetch_all(&mut *tx)
    .await?;
    let active = instances
        .iter()
        .filter(|(_, s)| s != "TERMINATING" && s != "TERMINATED")
        .count();
    let c = &fleet.spec.configuration;
    let full = c.ssh_config.is_some()
        || c.nodes
            .as_ref()
            .and_then(|n| n.max)
            .is_some_and(|max| i64::try_from(active).unwrap_or(i64::MAX) >= max);
    if full {
        drop(tx);
        return no_capacity(engine, job, "Fleet is at capacity").await;
    }
    let taken: Vec<i64> = instances.iter().map(|(n, _)| *n).collect();
    let num = crate::engine::pipelines::fleets::next_instance_num(&taken);
    let iid = crate::engine::services::fleets::insert_pending_cloud_instance(
        &mut tx,
        &fleet.spec,
        &fleet.name,
        project_id,
        &fleet.id,
        num,
        &now,
    )
    .await?;
    sqlx::query(
        "UPDATE instances SET provisioning_job_id = $1, skip_min_processing_interval = FALSE \
         WHERE id = $2",
    )
    .bind(&job.id)
    .bind(&iid)
    .execute(&mut *tx)
    .await?;
    let r = sqlx::query(
        "UPDATE jobs SET instance_id = $1, instance_assigned = TRUE, last_processed_at = $2, \
         skip_min_processing_interval = TRUE \
         WHERE id = $3 AND status = 'submitted' AND instance_id IS NULL",
    )
    .bind(&iid)
    .bind(&now)
    .bind(&job.id)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        // Stopped meanwhile: dropping the transaction drops the placeholder too.
        return Ok(());
    }
    set_run_fleet(&mut tx, &job.run_id, Some(&fleet.id)).await?;
    tx.commit().await?;
    tracing::info!(job = %job.id, fleet = %fleet.name, instance = %format!("{}-{num}", fleet.name),
        "Instance created for job. Instance status: PENDING");
    engine.hint(PipelineKind::Jobs);
    engine.hint(PipelineKind::Runs);
    Ok(())
}

/// The placeholder of a job that no longer needs it is deleted (never provisioned).
pub(super) async fn drop_placeholder(
    engine: &Engine,
    job: &JobRow,
    inst: &InstanceRow,
) -> crate::Result<()> {
    let now = time::to_db(time::now());
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE instances SET status = 'TERMINATED', deleted = TRUE, deleted_at = $1, \
         finished_at = $1, last_processed_at = $1, termination_reason = 'terminated_by_user' \
         WHERE id = $2 AND status = 'PENDING' AND provisioning_job_id = $3",
    )
    .bind(&now)
    .bind(&inst.id)
    .bind(&job.id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE jobs SET instance_released = TRUE WHERE id = $1")
        .bind(&job.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(job = %job.id, instance = %inst.name, "placeholder instance deleted");
    Ok(())
}

/// Whether `iid` is still this job's placeholder; if not (its fleet was deleted), the job
/// is unassigned so that the next tick chooses again.
async fn own_placeholder(
    engine: &Engine,
    job: &JobRow,
    iid: &str,
) -> crate::Result<Option<InstanceRow>> {
    let inst = instance_row(engine, iid).await?;
    if let Some(i) = inst.filter(|i| {
        !i.deleted && i.is_placeholder() && i.provisioning_job_id.as_deref() == Some(&job.id)
    }) {
        return Ok(Some(i));
    }
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE jobs SET instance_id = NULL, instance_assigned = FALSE \
         WHERE id = $1 AND status = 'submitted'",
    )
    .bind(&job.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(job = %job.id, instance = %iid, "the job's placeholder is gone; choosing again");
    Ok(None)
}

/// A build without cloud backends cannot provision: the job fails.
#[cfg(not(feature = "backends"))]
pub(super) async fn provision(engine: &Engine, job: &JobRow, iid: &str) -> crate::Result<()> {
    let Some(inst) = own_placeholder(engine, job, iid).await? else {
        return Ok(());
    };
    drop_placeholder(engine, job, &inst).await?;
    no_capacity(
        engine,
        job,
        "No offers found: this server was built without cloud backends",
    )
    .await
}

/// Creates the cloud instance for the job's placeholder (step 2 of the module docs).
#[cfg(feature = "backends")]
pub(super) async fn provision(
    engine: &Engine,
    job: &JobRow,
    iid: &str,
    spec: &JobSpec,
    run_spec: &RunSpec,
) -> crate::Result<()> {
    use crate::engine::cloud::Provisioned;
    use crate::models::fleets::FleetSpec;
    use crate::spec::combine::{
        combine_fleet_and_run_profiles, combine_fleet_and_run_requirements,
        restrict_profile_for_job,
    };

    let Some(inst) = own_placeholder(engine, job, iid).await? else {
        return Ok(());
    };
    let fleet_id = inst.fleet_id.clone().unwrap_or_default();
    let (fleet_name, fleet_spec): (String, String) =
        sqlx::query_as("SELECT name, spec FROM fleets WHERE id = $1")
            .bind(&fleet_id)
            .fetch_one(engine.store().reader())
            .await?;
    let fleet_spec: FleetSpec = serde_json::from_str(&fleet_spec)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("stored fleet spec: {e}")))?;
    // Multi-node: only backends that can run it, and a worker where its master is.
    let master = if spec.job_num > 0 {
        super::master_provisioning(engine, job).await?
    } else {
        None
    };
    let combined =
        combine_fleet_and_run_profiles(&fleet_spec.merged_profile(), &run_spec.merged_profile())
            .ok()
            .map(|mut profile| {
                restrict_profile_for_job(
                    &mut profile,
                    spec.jobs_per_replica > 1,
                    master
                        .as_ref()
                        .map(|m| (m.base_backend.unwrap_or(m.backend), m.region.as_str())),
                );
                profile
            })
            .zip(
                combine_fleet_and_run_requirements(
                    &crate::spec::resources::fleet_requirements(&fleet_spec),
                    &spec.requirements,
                )
                .ok(),
            );
    let outcome = match &combined {
        Some((profile, requirements)) => {
            tracing::info!(job = %job.id, fleet = %fleet_name, instance = %inst.name,
                "provisioning new capacity");
            engine
                .provision_new_capacity(&inst, &fleet_name, &fleet_spec, requirements, profile)
                .await?
        }
        None => Provisioned::Failed(format!(
            "No offers matching the run requirements in fleet '{fleet_name}': the run's \
             resources or profile do not fit the fleet's"
        )),
    };
    match outcome {
        Provisioned::Created(jpd, offer) => promote(engine, job, &inst, &jpd, &offer).await,
        Provisioned::Failed(mut message) => {
            // Container backends (Kubernetes) run the job itself in a container.
            if let Some((profile, requirements)) = &combined {
                let run = run_row(engine, &job.run_id)
                    .await?
                    .ok_or_else(Error::not_found)?;
                match super::container_jobs::create_container(
                    engine,
                    job,
                    &inst.project_id,
                    &run,
                    run_spec,
                    requirements,
                    profile,
                )
                .await?
                {
                    super::container_jobs::Created::Container(c) => {
                        return promote_container(engine, job, &inst, *c).await;
                    }
                    super::container_jobs::Created::Failed(m) => message = m,
                    super::container_jobs::Created::NoOffers => {}
                }
            }
            tracing::info!(job = %job.id, fleet = %fleet_name, %message, "provisioning failed");
            drop_placeholder(engine, job, &inst).await?;
            no_capacity(engine, job, &message).await
        }
    }
}

/// dstack's `_promote_placeholder_instance`: the placeholder becomes the PROVISIONING
/// instance of the created VM, one block busy for the job, and the job goes `provisioning`.
#[cfg(feature = "backends")]
async fn promote(
    engine: &Engine,
    job: &JobRow,
    inst: &InstanceRow,
    jpd: &JobProvisioningData,
    offer: &InstanceOfferWithAvailability,
) -> crate::Result<()> {
    let mut tx = engine.store().begin().await?;
    let taken = write_promotion(&mut tx, job, inst, jpd, offer, "PROVISIONING").await?;
    if !taken {
        // Stopped while the VM was being created: the instance joins the fleet as a free one.
        sqlx::query("UPDATE instances SET busy_blocks = 0 WHERE id = $1")
            .bind(&inst.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(job = %job.id, instance = %inst.name, backend = %jpd.backend.as_str(),
        region = %jpd.region, instance_type = %offer.instance.name, price = offer.price,
        "new capacity created for the job");
    engine.hint(PipelineKind::Instances);
    engine.hint(PipelineKind::Runs);
    engine.hint(PipelineKind::Jobs);
    Ok(())
}

/// The placeholder becomes the fleet instance standing for the job's container (BUSY at
/// once: there is no host agent to deploy; the job's runner is the container). It is
/// terminated with its job, as dstack does with container-backend instances.
#[cfg(feature = "backends")]
async fn promote_container(
    engine: &Engine,
    job: &JobRow,
    inst: &InstanceRow,
    c: super::container_jobs::Container,
) -> crate::Result<()> {
    let mut tx = engine.store().begin().await?;
    let taken = write_promotion(&mut tx, job, inst, &c.jpd, &c.offer, "BUSY").await?;
    if !taken {
        drop(tx);
        tracing::warn!(job = %job.id, container = %c.jpd.instance_id,
            "the job moved on while its container was created; deleting the container");
        if let Err(e) = super::container_jobs::delete_container(c.compute.as_ref(), &c.jpd).await {
            tracing::warn!(job = %job.id, error = %e, "cannot delete the container; delete it by hand");
        }
        return drop_placeholder(engine, job, inst).await;
    }
    tx.commit().await?;
    tracing::info!(job = %job.id, instance = %inst.name, backend = %c.jpd.backend.as_str(),
        container = %c.jpd.instance_id, "job container created in the fleet");
    engine.hint(PipelineKind::Runs);
    engine.hint(PipelineKind::Jobs);
    Ok(())
}

/// The writes of a promotion, in the caller's transaction: the placeholder becomes an
/// instance in `status` with the created resource's provisioning data and offer, one block
/// busy for the job; the job goes `provisioning` with the same data. `false` when the job
/// had moved on (stopped meanwhile). A container instance (`dockerized: false`) ends with
/// its job (idle time 0).
#[cfg(feature = "backends")]
async fn write_promotion(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    job: &JobRow,
    inst: &InstanceRow,
    jpd: &JobProvisioningData,
    offer: &InstanceOfferWithAvailability,
    status: &str,
) -> crate::Result<bool> {
    let now = time::to_db(time::now());
    let mut offer = offer.clone();
    offer.blocks = 1;
    offer.total_blocks = 1;
    let jpd_json = serde_json::to_string(jpd).ok();
    sqlx::query(
        "UPDATE instances SET status = $1, job_provisioning_data = $2, offer = $3, \
         backend = $4, region = $5, price = $6, total_blocks = 1, busy_blocks = 1, \
         started_at = $7, last_processed_at = $7, skip_min_processing_interval = TRUE, \
         termination_idle_time = CASE WHEN $8 THEN termination_idle_time ELSE 0 END \
         WHERE id = $9",
    )
    .bind(status)
    .bind(&jpd_json)
    .bind(serde_json::to_string(&offer).ok())
    .bind(jpd.backend.as_str())
    .bind(&jpd.region)
    .bind(offer.price)
    .bind(&now)
    .bind(jpd.dockerized)
    .bind(&inst.id)
    .execute(&mut **tx)
    .await?;
    let r = sqlx::query(
        "UPDATE jobs SET status = $1, job_provisioning_data = $2, job_runtime_data = $3, \
         instance_released = FALSE, last_processed_at = $4, skip_min_processing_interval = TRUE \
         WHERE id = $5 AND status = 'submitted'",
    )
    .bind(enum_to_db(JobStatus::Provisioning))
    .bind(&jpd_json)
    .bind(prepare_job_runtime_data(&offer).to_string())
    .bind(&now)
    .bind(&job.id)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}
