//! `FleetPipeline` (dstack-api.md §4.5, §5.7): deletes TERMINATING fleets once none of their
//! instances is alive. Consolidation of cloud fleets (`nodes.min`/`max`) is not done yet.

use std::time::Duration;

use crate::engine::{Engine, time};

use super::{Lease, Pipeline, PipelineKind, db_before};

/// The fleet pipeline.
pub(crate) struct FleetPipeline;

/// dstack's min processing interval for fleets.
const MIN_INTERVAL: Duration = Duration::from_secs(15);

impl Pipeline for FleetPipeline {
    const NAME: &'static str = "FleetPipeline";
    const KIND: PipelineKind = PipelineKind::Fleets;

    lease_impl!("fleets", "deleted = FALSE AND status = 'TERMINATING'");

    async fn process(engine: Engine, id: String, token: String) {
        if let Err(e) = process_one(&engine, &id, &token).await {
            tracing::warn!(fleet = %id, error = %e, "fleet processing failed");
        }
    }
}

async fn process_one(engine: &Engine, id: &str, token: &str) -> crate::Result<()> {
    let now = time::to_db(time::now());
    // One transaction on the single writer: the check and the delete see the same state.
    let mut tx = engine.store().begin().await?;
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
             last_processed_at = $1, lock_token = NULL, lock_expires_at = NULL, lock_owner = NULL \
             WHERE id = $2 AND lock_token = $3",
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
            tracing::info!(fleet = %id, "fleet deleted");
        }
    } else {
        sqlx::query(
            "UPDATE fleets SET last_processed_at = $1, lock_token = NULL, lock_expires_at = NULL, \
             lock_owner = NULL WHERE id = $2 AND lock_token = $3",
        )
        .bind(&now)
        .bind(id)
        .bind(token)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
