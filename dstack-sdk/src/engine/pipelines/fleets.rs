//! `FleetPipeline` (dstack-api.md §4.5, §5.7): consolidates fleets that have `nodes` with
//! their spec, and deletes TERMINATING fleets once none of their instances is alive.
//!
//! Consolidation (dstack's `_consolidate_fleet_state_with_spec` /
//! `_maintain_fleet_nodes_in_min_max_range`) runs for a fleet that is not TERMINATING, has
//! `nodes`, has made fewer than 15 consecutive attempts, and whose back-off (1, 2, 5, 10,
//! then 30 min by `consolidation_attempt`, from `last_consolidated_at` or the creation) has
//! elapsed:
//!
//! 0. IDLE and PROVISIONING instances that no longer match the spec (after an in-place
//!    update of `resources`, `backends`, `regions`, `availability_zones`, `instance_types`,
//!    `spot_policy` or `max_price`; dstack's `_terminate_instances_not_matching_fleet_spec`)
//!    go TERMINATING with `fleet_spec_mismatch` and no longer count towards `nodes`;
//! 1. TERMINATED instances that are not deleted yet are marked deleted (they are replaced);
//! 2. with fewer live instances than `nodes.min`, PENDING instances are created at the lowest
//!    free `instance_num`s, replacing recycled ones (the instance pipeline provisions them);
//! 3. with more than `nodes.max`, surplus IDLE instances go TERMINATING
//!    (`max_instances_limit`).
//!
//! An attempt that had to change something increments `consolidation_attempt`; one that found
//! the fleet in shape resets it (so does an apply). Everything happens in one transaction,
//! guarded by the fleet's lease; instances that the instance pipeline holds are left alone.

use std::time::Duration;

use crate::engine::planner::instance_matches_fleet_spec;
use crate::engine::services::fleets::insert_pending_cloud_instance;
use crate::engine::{Engine, time};
use crate::models::fleets::{FleetNodesSpec, FleetSpec};
use crate::models::instances::InstanceTerminationReason;

use super::{Lease, Pipeline, PipelineKind, db_before};

/// The fleet pipeline.
pub(crate) struct FleetPipeline;

/// After this many consecutive attempts that had to change something, consolidation stops
/// until the fleet is applied again (dstack's `_MAX_CONSOLIDATION_ATTEMPTS`).
const MAX_CONSOLIDATION_ATTEMPTS: i64 = 15;

/// The consolidation back-off in units of `consolidation_backoff_unit` (1 min in dstack).
const CONSOLIDATION_DELAYS: [u32; 5] = [1, 2, 5, 10, 30];

impl Pipeline for FleetPipeline {
    const NAME: &'static str = "FleetPipeline";
    const KIND: PipelineKind = PipelineKind::Fleets;

    lease_impl!("fleets", "deleted = FALSE", |engine| engine
        .inner
        .options
        .pipelines
        .fleet_interval);

    async fn process(engine: Engine, id: String, token: String) {
        if let Err(e) = process_one(&engine, &id, &token).await {
            tracing::warn!(fleet = %id, error = %e, "fleet processing failed");
        }
    }
}

/// The back-off before consolidation attempt `attempt + 1`.
fn consolidation_delay(engine: &Engine, attempt: i64) -> Duration {
    let i = usize::try_from(attempt)
        .unwrap_or(0)
        .min(CONSOLIDATION_DELAYS.len() - 1);
    engine.inner.options.pipelines.consolidation_backoff_unit * CONSOLIDATION_DELAYS[i]
}

/// The fleet columns this pipeline reads.
#[derive(sqlx::FromRow)]
struct FleetState {
    name: String,
    project_id: String,
    status: String,
    spec: String,
    consolidation_attempt: i64,
    last_consolidated_at: Option<String>,
    created_at: String,
}

/// The instance columns consolidation reads.
#[derive(sqlx::FromRow)]
struct InstanceState {
    id: String,
    instance_num: i64,
    status: String,
    offer: Option<String>,
    job_provisioning_data: Option<String>,
    /// Held by the instance pipeline right now.
    locked: bool,
}

/// What one consolidation did.
#[derive(Default)]
struct Consolidated {
    /// Whether the fleet was out of shape (the attempt counts).
    changes_required: bool,
    /// How many PENDING instances were created.
    created: usize,
}

/// A terminating fleet whose instances are all gone deletes its placement groups before it
/// is finalised; `false` while one is left (the cloud may still see it in use).
#[cfg(feature = "backends")]
async fn placement_groups_gone(engine: &Engine, id: &str) -> crate::Result<bool> {
    let (project_id, status, alive): (String, String, i64) = sqlx::query_as(
        "SELECT f.project_id, f.status, (SELECT COUNT(*) FROM instances i WHERE \
         i.fleet_id = f.id AND i.deleted = FALSE AND i.status <> 'TERMINATED') \
         FROM fleets f WHERE f.id = $1",
    )
    .bind(id)
    .fetch_one(engine.store().reader())
    .await?;
    if status != "TERMINATING" {
        return Ok(true);
    }
    if alive > 0 {
        // Not before the instances are gone (the fleet is not finalised before either).
        return Ok(false);
    }
    engine.delete_fleet_placement_groups(&project_id, id).await
}

async fn process_one(engine: &Engine, id: &str, token: &str) -> crate::Result<()> {
    #[cfg(feature = "backends")]
    let groups_gone = placement_groups_gone(engine, id).await?;
    #[cfg(not(feature = "backends"))]
    let groups_gone = true;
    let now_t = time::now();
    let now = time::to_db(now_t);
    // One transaction on the single writer: every check and write sees the same state, and
    // nothing is written unless the fleet's lease still holds.
    let mut tx = engine.store().begin().await?;
    let fleet: Option<FleetState> = sqlx::query_as(
        "SELECT name, project_id, status, spec, consolidation_attempt, last_consolidated_at, \
         created_at FROM fleets WHERE id = $1 AND lock_token = $2",
    )
    .bind(id)
    .bind(token)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(fleet) = fleet else {
        tracing::debug!(fleet = %id, "lease lost before processing");
        return Ok(());
    };
    let spec: Option<FleetSpec> = serde_json::from_str(&fleet.spec).ok();
    let mut created = 0usize;
    let mut changed = false;
    if fleet.status != "TERMINATING"
        && let Some(spec) = &spec
        && let Some(nodes) = spec.configuration.nodes.as_ref()
        && !spec.autocreated
        && fleet.consolidation_attempt < MAX_CONSOLIDATION_ATTEMPTS
    {
        let since = fleet
            .last_consolidated_at
            .as_deref()
            .or(Some(fleet.created_at.as_str()))
            .and_then(time::from_db)
            .unwrap_or(now_t);
        let delay = consolidation_delay(engine, fleet.consolidation_attempt);
        if (now_t - since).to_std().unwrap_or_default() >= delay {
            let c = consolidate(&mut tx, id, &fleet, spec, nodes, &now).await?;
            created = c.created;
            changed = c.changes_required;
            let attempt = if c.changes_required {
                fleet.consolidation_attempt + 1
            } else {
                0
            };
            if attempt >= MAX_CONSOLIDATION_ATTEMPTS {
                tracing::warn!(fleet = %fleet.name, "Fleet consolidation stopped after \
                    {MAX_CONSOLIDATION_ATTEMPTS} attempts. Update the fleet to resume");
            }
            sqlx::query(
                "UPDATE fleets SET consolidation_attempt = $1, last_consolidated_at = $2 \
                 WHERE id = $3 AND lock_token = $4",
            )
            .bind(attempt)
            .bind(&now)
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
        }
    }
    if created == 0 && fleet.status == "TERMINATING" && groups_gone {
        let (alive,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM instances WHERE fleet_id = $1 AND deleted = FALSE \
             AND status <> 'TERMINATED'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if alive == 0 {
            let r = sqlx::query(
                "UPDATE fleets SET status = 'TERMINATED', deleted = TRUE, deleted_at = $1, \
                 last_processed_at = $1, lock_token = NULL, lock_expires_at = NULL, \
                 lock_owner = NULL WHERE id = $2 AND lock_token = $3",
            )
            .bind(&now)
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                sqlx::query(
                    "UPDATE instances SET deleted = TRUE, deleted_at = $1 \
                     WHERE fleet_id = $2 AND deleted = FALSE",
                )
                .bind(&now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::info!(fleet = %fleet.name, "fleet deleted");
            }
            return Ok(());
        }
    }
    let r = sqlx::query(
        "UPDATE fleets SET last_processed_at = $1, lock_token = NULL, lock_expires_at = NULL, \
         lock_owner = NULL WHERE id = $2 AND lock_token = $3",
    )
    .bind(&now)
    .bind(id)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        // The lease was lost mid-way: roll everything back (dropping the transaction).
        tracing::info!(fleet = %fleet.name, "lease lost while processing; changes dropped");
        return Ok(());
    }
    tx.commit().await?;
    if created > 0 {
        tracing::info!(fleet = %fleet.name, "Added {created} instances to fleet {}", fleet.name);
    }
    if changed {
        engine.hint(PipelineKind::Instances);
    }
    Ok(())
}

/// The lowest instance number not in `taken` (dstack's `get_next_instance_num`).
pub(crate) fn next_instance_num(taken: &[i64]) -> i64 {
    let mut n = 0;
    while taken.contains(&n) {
        n += 1;
    }
    n
}

/// Brings the fleet's instances in line with `nodes` (steps 1–3 of the module docs).
async fn consolidate(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: &str,
    fleet: &FleetState,
    spec: &FleetSpec,
    nodes: &FleetNodesSpec,
    now: &str,
) -> crate::Result<Consolidated> {
    let mut out = Consolidated::default();
    let rows: Vec<InstanceState> = sqlx::query_as(
        "SELECT id, instance_num, status, offer, job_provisioning_data, \
         (lock_expires_at IS NOT NULL AND lock_expires_at >= $2) AS locked FROM instances \
         WHERE fleet_id = $1 AND deleted = FALSE ORDER BY instance_num, created_at",
    )
    .bind(id)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    // 0. Provisioned instances that no longer fit the (updated) spec are recycled; they do
    //    not count towards `nodes` any more.
    let mut instances: Vec<(String, i64, String)> = Vec::with_capacity(rows.len());
    for row in rows {
        if !row.locked && matches!(row.status.as_str(), "IDLE" | "PROVISIONING") {
            let offer = row
                .offer
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok());
            let jpd = row
                .job_provisioning_data
                .as_deref()
                .and_then(|j| serde_json::from_str(j).ok());
            if !instance_matches_fleet_spec(offer.as_ref(), jpd.as_ref(), spec) {
                let r = sqlx::query(
                    "UPDATE instances SET status = 'TERMINATING', termination_reason = $1, \
                     termination_reason_message = 'Instance does not match fleet spec', \
                     skip_min_processing_interval = TRUE, last_processed_at = $2 \
                     WHERE id = $3 AND status = $4 AND busy_blocks = 0 \
                     AND (lock_expires_at IS NULL OR lock_expires_at < $2)",
                )
                .bind(InstanceTerminationReason::FleetSpecMismatch.as_str())
                .bind(now)
                .bind(&row.id)
                .bind(&row.status)
                .execute(&mut **tx)
                .await?;
                if r.rows_affected() == 1 {
                    out.changes_required = true;
                    tracing::info!(fleet = %fleet.name, instance = %row.id,
                        "terminating an instance that does not match the fleet spec");
                    continue;
                }
            }
        }
        instances.push((row.id, row.instance_num, row.status));
    }
    // 1. TERMINATED but not deleted: they are going to be replaced.
    for (iid, _, status) in &instances {
        if status == "TERMINATED" {
            out.changes_required = true;
            sqlx::query(
                "UPDATE instances SET deleted = TRUE, deleted_at = $1, last_processed_at = $1 \
                 WHERE id = $2 AND deleted = FALSE",
            )
            .bind(now)
            .bind(iid)
            .execute(&mut **tx)
            .await?;
        }
    }
    let active: Vec<&(String, i64, String)> = instances
        .iter()
        .filter(|(_, _, s)| s != "TERMINATED")
        .collect();
    let count = i64::try_from(active.len()).unwrap_or(i64::MAX);
    if count < nodes.min {
        // 2. Below `nodes.min`: create the missing instances.
        out.changes_required = true;
        let mut taken: Vec<i64> = active.iter().map(|(_, n, _)| *n).collect();
        for _ in count..nodes.min {
            let num = next_instance_num(&taken);
            taken.push(num);
            let iid = insert_pending_cloud_instance(
                tx,
                spec,
                &fleet.name,
                &fleet.project_id,
                id,
                num,
                now,
            )
            .await?;
            tracing::info!(fleet = %fleet.name, instance = %iid, instance_num = num,
                "Instance created to meet target fleet node count. Status: PENDING");
            out.created += 1;
        }
        return Ok(out);
    }
    let Some(max) = nodes.max.filter(|m| count > *m) else {
        return Ok(out);
    };
    // 3. Above `nodes.max`: terminate surplus IDLE instances that nobody is working on.
    out.changes_required = true;
    let mut redundant = count - max;
    for (iid, _, status) in &active {
        if redundant == 0 {
            break;
        }
        if status != "IDLE" {
            continue;
        }
        let r = sqlx::query(
            "UPDATE instances SET status = 'TERMINATING', termination_reason = $1, \
             termination_reason_message = 'Fleet has too many instances', \
             skip_min_processing_interval = TRUE, last_processed_at = $2, \
             lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
             WHERE id = $3 AND status = 'IDLE' AND busy_blocks = 0 \
             AND (lock_expires_at IS NULL OR lock_expires_at < $2)",
        )
        .bind(InstanceTerminationReason::MaxInstancesLimit.as_str())
        .bind(now)
        .bind(iid)
        .execute(&mut **tx)
        .await?;
        if r.rows_affected() == 1 {
            tracing::info!(fleet = %fleet.name, instance = %iid, "terminating a surplus idle instance");
            redundant -= 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::next_instance_num;

    #[test]
    fn lowest_free_instance_num() {
        assert_eq!(next_instance_num(&[]), 0);
        assert_eq!(next_instance_num(&[0, 1, 3]), 2);
        assert_eq!(next_instance_num(&[1, 2]), 0);
    }
}
