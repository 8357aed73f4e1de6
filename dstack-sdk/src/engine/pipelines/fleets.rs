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

    async fn claim(engine: &Engine, limit: i64, lease: &Lease) -> crate::Result<Vec<String>> {
        let mut tx = engine.store().begin().await?;
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE fleets SET lock_token = $1, lock_expires_at = $2, lock_owner = $3, \
             skip_min_processing_interval = FALSE \
             WHERE id IN (SELECT id FROM fleets \
               WHERE deleted = FALSE AND status = 'TERMINATING' \
               AND (lock_expires_at IS NULL OR lock_expires_at < $4) \
               AND (lock_owner IS NULL OR lock_owner = $3) \
               AND (skip_min_processing_interval = TRUE OR last_processed_at <= $5) \
               ORDER BY last_processed_at LIMIT $6) \
             RETURNING id",
        )
        .bind(&lease.token)
        .bind(&lease.expires_at)
        .bind(Self::NAME)
        .bind(&lease.now)
        .bind(db_before(MIN_INTERVAL))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn heartbeat(
        engine: &Engine,
        id: &str,
        token: &str,
        expires_at: &str,
    ) -> crate::Result<bool> {
        let mut tx = engine.store().begin().await?;
        let r =
            sqlx::query("UPDATE fleets SET lock_expires_at = $1 WHERE id = $2 AND lock_token = $3")
                .bind(expires_at)
                .bind(id)
                .bind(token)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(r.rows_affected() == 1)
    }

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
