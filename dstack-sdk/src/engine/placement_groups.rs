//! Placement groups of cloud `placement: cluster` fleets (dstack 0.22.5's
//! `services/placement.py` and the placement part of new-capacity provisioning).
//!
//! * The first real instance of an empty cluster fleet, on a backend with placement groups,
//!   uses a suitable group of the fleet or creates one (`<fleet>-<8 hex>-pg`) for its offer;
//!   an offer no group can take is skipped ("no compatible placement group"). A new group
//!   that ends up unused (its offer failed, or another offer won) is deleted at once.
//! * Later instances go into the fleet's group: offers it cannot take are skipped.
//! * When the fleet is deleted its groups are deleted in the cloud before the fleet is
//!   finalised (a group still in use is retried on the fleet's next tick).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use uuid::Uuid;

use crate::backends::{
    BackendError, Compute, PlacementGroupConfig, PlacementGroupProvisioningData,
};
use crate::engine::{Engine, time};
use crate::models::common::BackendType;
use crate::models::offers::InstanceOfferWithAvailability;

/// One stored placement group.
#[derive(Debug, Clone, sqlx::FromRow)]
struct GroupRow {
    id: String,
    name: String,
    backend: String,
    region: String,
    backend_data: Option<String>,
}

impl GroupRow {
    fn data(&self) -> Option<PlacementGroupProvisioningData> {
        Some(PlacementGroupProvisioningData {
            backend: BackendType::from_wire(&self.backend)?,
            name: self.name.clone(),
            region: self.region.clone(),
            backend_data: self.backend_data.clone(),
        })
    }
}

/// The placement state of one cluster fleet during one provisioning attempt.
pub(crate) struct FleetPlacement {
    project_id: String,
    project_name: String,
    fleet_id: String,
    fleet_name: String,
    /// No real (non-placeholder) instance yet: this attempt may create a group.
    empty: bool,
    groups: Vec<GroupRow>,
    /// Groups created by this attempt.
    created: Vec<GroupRow>,
}

/// One lock per cluster fleet: its instances choose (and create) placement groups one at a
/// time, so that instances provisioned together share one group.
static FLEET_LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

impl FleetPlacement {
    /// The fleet's placement lock (held while its instance is created).
    pub(crate) async fn lock(fleet_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = match FLEET_LOCKS.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            locks.entry(fleet_id.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// The placement group for `offer` on `compute`: `Ok(None)` when the backend has no
    /// placement groups, `Err(reason)` when the offer must be skipped.
    pub(crate) async fn for_offer(
        &mut self,
        engine: &Engine,
        compute: &dyn Compute,
        offer: &InstanceOfferWithAvailability,
    ) -> crate::Result<Result<Option<PlacementGroupProvisioningData>, String>> {
        let Some(pgs) = compute.as_placement_groups() else {
            return Ok(Ok(None));
        };
        let suitable = self
            .groups
            .iter()
            .chain(&self.created)
            .filter_map(GroupRow::data)
            .find(|g| g.backend == offer.backend && pgs.is_suitable_placement_group(g, offer));
        if let Some(g) = suitable {
            return Ok(Ok(Some(g)));
        }
        if !self.empty {
            if self.groups.is_empty() {
                // A fleet whose instances predate its group (or that never had one).
                return Ok(Ok(None));
            }
            return Ok(Err("no compatible placement group".into()));
        }
        let name = format!(
            "{}-{}-pg",
            self.fleet_name,
            &Uuid::new_v4().simple().to_string()[..8]
        );
        // dstack's `_offer_supports_placement_group`, asked before anything is created.
        let would_be = PlacementGroupProvisioningData {
            backend: offer.backend,
            name: name.clone(),
            region: offer.region.clone(),
            backend_data: None,
        };
        if !pgs.is_suitable_placement_group(&would_be, offer) {
            return Ok(Err(format!(
                "no compatible placement group ({} cannot join a cluster placement group)",
                offer.instance.name
            )));
        }
        let config = PlacementGroupConfig {
            name,
            project_name: self.project_name.clone(),
            region: offer.region.clone(),
            fleet_id: Uuid::parse_str(&self.fleet_id).ok(),
        };
        let pg = match pgs.create_placement_group(&config).await {
            Ok(pg) => pg,
            Err(e @ BackendError::InvalidCredentials { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(fleet = %self.fleet_name, error = %e, "cannot create a placement group");
                return Ok(Err(format!("no compatible placement group: {e}")));
            }
        };
        let row = GroupRow {
            id: Uuid::new_v4().to_string(),
            name: pg.name.clone(),
            backend: pg.backend.as_str().to_string(),
            region: pg.region.clone(),
            backend_data: pg.backend_data.clone(),
        };
        let mut tx = engine.store().begin().await?;
        sqlx::query(
            "INSERT INTO placement_groups (id, project_id, fleet_id, name, backend, region, \
             backend_data, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.id)
        .bind(&self.project_id)
        .bind(&self.fleet_id)
        .bind(&row.name)
        .bind(&row.backend)
        .bind(&row.region)
        .bind(&row.backend_data)
        .bind(time::to_db(time::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(fleet = %self.fleet_name, placement_group = %row.name,
            region = %row.region, "placement group created");
        self.created.push(row);
        Ok(Ok(Some(pg)))
    }

    /// Deletes the groups this attempt created and did not use (`used` is the winner's).
    pub(crate) async fn finish(
        self,
        engine: &Engine,
        used: Option<&PlacementGroupProvisioningData>,
    ) {
        for g in self.created {
            if used.is_some_and(|u| u.name == g.name && u.region == g.region) {
                continue;
            }
            if let Err(e) = engine.delete_group(&self.project_id, &g).await {
                tracing::warn!(placement_group = %g.name, error = %e,
                    "cannot delete an unused placement group; the fleet's deletion retries it");
            }
        }
    }
}

impl Engine {
    /// The placement state of a cloud fleet for provisioning `instance_id`, `None` unless
    /// the fleet has `placement: cluster`. Hold [`FleetPlacement::lock`] across the
    /// decision and the instance's creation.
    pub(crate) async fn fleet_placement(
        &self,
        project_id: &str,
        fleet_id: &str,
        fleet_name: &str,
        instance_id: &str,
        cluster: bool,
    ) -> crate::Result<Option<FleetPlacement>> {
        if !cluster {
            return Ok(None);
        }
        let (project_name,): (String,) = sqlx::query_as("SELECT name FROM projects WHERE id = $1")
            .bind(project_id)
            .fetch_one(self.store().reader())
            .await?;
        // Other instances already created in the cloud (placeholders and PENDING rows are not).
        let (real,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM instances WHERE fleet_id = $1 AND id <> $2 \
             AND deleted = FALSE AND status <> 'TERMINATED' \
             AND job_provisioning_data IS NOT NULL",
        )
        .bind(fleet_id)
        .bind(instance_id)
        .fetch_one(self.store().reader())
        .await?;
        let groups: Vec<GroupRow> = sqlx::query_as(
            "SELECT id, name, backend, region, backend_data FROM placement_groups \
             WHERE fleet_id = $1 AND deleted = FALSE ORDER BY created_at",
        )
        .bind(fleet_id)
        .fetch_all(self.store().reader())
        .await?;
        Ok(Some(FleetPlacement {
            project_id: project_id.to_string(),
            project_name,
            fleet_id: fleet_id.to_string(),
            fleet_name: fleet_name.to_string(),
            empty: real == 0,
            groups,
            created: Vec::new(),
        }))
    }

    /// Deletes one group in the cloud and marks it deleted.
    async fn delete_group(&self, project_id: &str, g: &GroupRow) -> crate::Result<()> {
        let compute = self.compute_for(project_id, &g.backend).await?;
        if let (Some(compute), Some(data)) = (compute, g.data())
            && let Some(pgs) = compute.as_placement_groups()
        {
            pgs.delete_placement_group(&data).await?;
        }
        let mut tx = self.store().begin().await?;
        sqlx::query("UPDATE placement_groups SET deleted = TRUE, deleted_at = $1 WHERE id = $2")
            .bind(time::to_db(time::now()))
            .bind(&g.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(placement_group = %g.name, "placement group deleted");
        Ok(())
    }

    /// Deletes every group of a fleet that is going away; `true` once none is left (a group
    /// the cloud still sees in use is retried later).
    pub(crate) async fn delete_fleet_placement_groups(
        &self,
        project_id: &str,
        fleet_id: &str,
    ) -> crate::Result<bool> {
        let groups: Vec<GroupRow> = sqlx::query_as(
            "SELECT id, name, backend, region, backend_data FROM placement_groups \
             WHERE fleet_id = $1 AND deleted = FALSE",
        )
        .bind(fleet_id)
        .fetch_all(self.store().reader())
        .await?;
        let mut all = true;
        for g in &groups {
            if let Err(e) = self.delete_group(project_id, g).await {
                tracing::info!(placement_group = %g.name, error = %e,
                    "placement group not deleted yet; retrying later");
                all = false;
            }
        }
        Ok(all)
    }
}
