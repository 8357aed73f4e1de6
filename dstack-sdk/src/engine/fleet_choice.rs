//! Which fleet serves a job, and the offers of a run plan (reference/offers.md §3.3; dstack
//! 0.22.5's `services/runs/plan.py`).
//!
//! | here | dstack |
//! |---|---|
//! | [`Engine::find_optimal_fleet`] | `find_optimal_fleet_with_offers` |
//! | [`Engine::job_plan_offers`] | `get_job_plans` + `_get_job_plan` |
//! | [`nodes_required`] | `get_nodes_required_num` |
//! | [`FleetInfo::can_create_instance`] | `can_create_new_cloud_instance_in_fleet` |
//!
//! A fleet is a candidate when it belongs to the project, is not deleted, is named by the
//! run's `fleets` (if given), is a `placement: cluster` fleet for multi-node jobs, and is not
//! clearly too small. Among candidates the chosen one minimises (no pool capacity, cheapest
//! available instance, cheapest available backend offer): fleets that fit on idle instances
//! win, then the cheapest existing instance, then the cheapest new one. Backend offers of a
//! fleet come from the fleet's profile and requirements combined with the run's (an
//! incompatible pair has none), capped at 100 per fleet while choosing.

use std::collections::HashMap;

use crate::engine::Engine;
use crate::engine::planner::{InstanceCandidate, instance_candidates};
use crate::models::configurations::RunConfiguration;
use crate::models::fleets::{Blocks, FleetSpec, InstanceGroupPlacement};
use crate::models::jobs::JobSpec;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::profiles::{CreationPolicy, Profile};
use crate::models::runs::RunSpec;
use crate::spec::combine::{
    combine_fleet_and_run_profiles, combine_fleet_and_run_requirements, restrict_profile_for_job,
};
use crate::spec::resources::fleet_requirements;

/// Backend offers considered per fleet while choosing (dstack's `_PER_FLEET_MAX_OFFERS`).
const PER_FLEET_MAX_OFFERS: usize = 100;

/// dstack's `get_nodes_required_num`: a task's node count, the sum of a service's minimum
/// replicas, 1 for a dev environment.
pub(crate) fn nodes_required(run_spec: &RunSpec) -> usize {
    let n = match &run_spec.configuration {
        RunConfiguration::Task(t) => t.node_groups().iter().map(|g| g.nodes).sum::<i64>(),
        RunConfiguration::Service(s) => s
            .replica_groups()
            .iter()
            .map(|g| g.replicas.min.unwrap_or(0))
            .sum(),
        RunConfiguration::DevEnvironment(_) => 1,
    };
    usize::try_from(n).unwrap_or(0)
}

/// The instance columns fleet choice needs for every non-deleted instance of a fleet.
#[derive(Debug, Clone, sqlx::FromRow)]
struct InstanceSlot {
    fleet_id: String,
    status: String,
    busy_blocks: i64,
    total_blocks: Option<i64>,
    provisioning_job_id: Option<String>,
}

impl InstanceSlot {
    /// dstack's `InstanceStatus.is_active`: not terminating or terminated.
    fn is_active(&self) -> bool {
        !matches!(self.status.as_str(), "TERMINATING" | "TERMINATED")
    }

    /// Busy, or a placeholder reserving a `nodes.max` slot.
    fn is_occupied(&self) -> bool {
        self.busy_blocks > 0 || (self.status == "PENDING" && self.provisioning_job_id.is_some())
    }
}

/// A candidate fleet: its row, configuration and instances' slots.
#[derive(Debug, Clone)]
pub(crate) struct FleetInfo {
    /// The fleet id.
    pub(crate) id: String,
    /// The fleet name.
    pub(crate) name: String,
    /// The stored spec.
    pub(crate) spec: FleetSpec,
    slots: Vec<InstanceSlot>,
}

impl FleetInfo {
    /// dstack's `can_create_new_cloud_instance_in_fleet`: a cloud fleet whose active
    /// instances are below `nodes.max`.
    pub(crate) fn can_create_instance(&self) -> bool {
        let c = &self.spec.configuration;
        if c.ssh_config.is_some() {
            return false;
        }
        let active = self.slots.iter().filter(|s| s.is_active()).count();
        c.nodes
            .as_ref()
            .and_then(|n| n.max)
            .is_none_or(|max| i64::try_from(active).unwrap_or(i64::MAX) < max)
    }

    /// dstack's `_run_can_fit_into_fleet`: `false` when the run cannot fit for sure.
    fn run_can_fit(&self, nodes_required: usize) -> bool {
        let c = &self.spec.configuration;
        let need = i64::try_from(nodes_required).unwrap_or(i64::MAX);
        if c.blocks == Blocks::Count(1)
            && let Some(max) = c.nodes.as_ref().and_then(|n| n.max)
        {
            let occupied = self.slots.iter().filter(|s| s.is_occupied()).count();
            return max - i64::try_from(occupied).unwrap_or(i64::MAX) >= need;
        }
        if c.ssh_config.is_some() {
            let idle: i64 = self
                .slots
                .iter()
                .map(|s| s.total_blocks.unwrap_or(1) - s.busy_blocks)
                .sum();
            return idle >= need;
        }
        true
    }

    /// The run's profile and the job's requirements combined with the fleet's, or `None`
    /// when they cannot be combined (the fleet then has no backend offers for the job).
    pub(crate) fn combined(
        &self,
        run_profile: &Profile,
        job: &JobSpec,
    ) -> Option<(Profile, crate::models::resources::Requirements)> {
        let mut profile =
            combine_fleet_and_run_profiles(&self.spec.merged_profile(), run_profile).ok()?;
        restrict_profile_for_job(&mut profile, job.jobs_per_replica > 1, None);
        let requirements =
            combine_fleet_and_run_requirements(&fleet_requirements(&self.spec), &job.requirements)
                .ok()?;
        Some((profile, requirements))
    }
}

/// The outcome of fleet choice.
pub(crate) struct FleetChoice {
    /// The chosen fleet.
    pub(crate) fleet: FleetInfo,
    /// Its instances' offers, cheapest first (only available ones when asked to exclude).
    pub(crate) instance_offers: Vec<InstanceCandidate>,
    /// Its backend offers for new capacity (uncapped), empty when skipped.
    pub(crate) backend_offers: Vec<InstanceOfferWithAvailability>,
}

/// Options of [`Engine::find_optimal_fleet`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChoiceOptions {
    /// Keep only available offers in the result (assignment).
    pub(crate) exclude_not_available: bool,
    /// Never look at backend offers (`creation_policy: reuse`).
    pub(crate) skip_backend_offers: bool,
    /// Skip backend offers when some fleet can take the job on its instances (assignment).
    pub(crate) skip_backend_offers_on_pool_capacity: bool,
}

/// One job's plan offers: the first `max_offers`, the untruncated count and the highest
/// price of all of them.
#[derive(Debug, Clone)]
pub(crate) struct PlanOffers {
    /// The offers, truncated.
    pub(crate) offers: Vec<InstanceOfferWithAvailability>,
    /// How many there were before truncation.
    pub(crate) total: usize,
    /// The highest price among all offers.
    pub(crate) max_price: Option<f64>,
}

/// Whether an instance offer is available (IDLE, or a free share of blocks).
fn available(c: &InstanceCandidate) -> bool {
    c.offer.availability.is_available()
}

impl Engine {
    /// The project's non-deleted fleets, narrowed to `only` (the run's fleet) or to the
    /// profile's `fleets`, each with the slots of its instances.
    async fn candidate_fleets(
        &self,
        project_id: &str,
        profile: &Profile,
        only: Option<&str>,
    ) -> crate::Result<Vec<FleetInfo>> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT f.id, f.name, f.spec, p.name FROM fleets f JOIN projects p \
             ON p.id = f.project_id WHERE f.project_id = $1 AND f.deleted = FALSE \
             ORDER BY f.created_at",
        )
        .bind(project_id)
        .fetch_all(self.store().reader())
        .await?;
        let names = profile.params.fleets.as_ref();
        let rows: Vec<_> = rows
            .into_iter()
            // `fleets: [name]` or `[project/name]` (fleets of other projects are not imported
            // here, so only this project's name can match).
            .filter(|(id, name, _, project)| {
                only.is_none_or(|o| o == id)
                    && names.is_none_or(|n| {
                        n.iter().any(|r| {
                            r.name == *name && r.project.as_ref().is_none_or(|p| p == project)
                        })
                    })
            })
            .collect();
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let slots: Vec<InstanceSlot> = sqlx::query_as(
            "SELECT fleet_id, status, busy_blocks, total_blocks, provisioning_job_id \
             FROM instances WHERE project_id = $1 AND deleted = FALSE AND fleet_id IS NOT NULL",
        )
        .bind(project_id)
        .fetch_all(self.store().reader())
        .await?;
        let mut by_fleet: HashMap<String, Vec<InstanceSlot>> = HashMap::new();
        for s in slots {
            by_fleet.entry(s.fleet_id.clone()).or_default().push(s);
        }
        Ok(rows
            .into_iter()
            .filter_map(|(id, name, spec, _)| {
                let spec: FleetSpec = serde_json::from_str(&spec)
                    .inspect_err(
                        |e| tracing::warn!(fleet = %name, error = %e, "unreadable fleet spec"),
                    )
                    .ok()?;
                let slots = by_fleet.remove(&id).unwrap_or_default();
                Some(FleetInfo {
                    id,
                    name,
                    spec,
                    slots,
                })
            })
            .collect())
    }

    /// A fleet's backend offers for `job` (dstack's `_get_backend_offers_in_fleet`): none
    /// for SSH fleets, full fleets or incompatible profiles/requirements.
    async fn backend_offers_in_fleet(
        &self,
        project_id: &str,
        fleet: &FleetInfo,
        run_profile: &Profile,
        job: &JobSpec,
        max: Option<usize>,
    ) -> crate::Result<Vec<InstanceOfferWithAvailability>> {
        if !fleet.can_create_instance() {
            return Ok(Vec::new());
        }
        let Some((profile, requirements)) = fleet.combined(run_profile, job) else {
            return Ok(Vec::new());
        };
        self.backend_offers(project_id, &requirements, &profile, max)
            .await
    }

    /// dstack's `find_optimal_fleet_with_offers` for one job of a run. `run_fleet` is the
    /// fleet the run already uses (multi-node workers, resubmissions): then only its
    /// instances are offered. `None` when no fleet is a candidate.
    pub(crate) async fn find_optimal_fleet(
        &self,
        project_id: &str,
        run_spec: &RunSpec,
        job: &JobSpec,
        run_fleet: Option<&str>,
        opts: ChoiceOptions,
    ) -> crate::Result<Option<FleetChoice>> {
        let profile = run_spec.merged_profile();
        if profile.params.instances.is_some() {
            // Pinned to instances: only those, never backend offers.
            let offers = self
                .targeted_instance_offers(
                    project_id,
                    run_spec,
                    job,
                    run_fleet,
                    opts.exclude_not_available,
                )
                .await?;
            let Some(fid) = offers.first().and_then(|c| c.row.fleet_id.clone()) else {
                return Ok(None);
            };
            let fleet = self
                .candidate_fleets(project_id, &profile, Some(&fid))
                .await?
                .into_iter()
                .next();
            return Ok(fleet.map(|fleet| FleetChoice {
                fleet,
                instance_offers: offers,
                backend_offers: Vec::new(),
            }));
        }
        let instances = self.offerable_instances(project_id).await?;
        let mut by_fleet: HashMap<String, Vec<_>> = HashMap::new();
        for row in instances {
            if let Some(f) = row.fleet_id.clone() {
                by_fleet.entry(f).or_default().push(row);
            }
        }
        let fleets = self
            .candidate_fleets(project_id, &profile, run_fleet)
            .await?;
        if run_fleet.is_some() {
            let Some(fleet) = fleets.into_iter().next() else {
                return Ok(None);
            };
            let mut offers = instance_candidates(
                by_fleet.remove(&fleet.id).unwrap_or_default(),
                job,
                &profile,
            );
            if opts.exclude_not_available {
                offers.retain(available);
            }
            return Ok(Some(FleetChoice {
                fleet,
                instance_offers: offers,
                backend_offers: Vec::new(),
            }));
        }
        let nodes = nodes_required(run_spec);
        let multinode = job.jobs_per_replica > 1;
        struct Candidate {
            fleet: FleetInfo,
            offers: Vec<InstanceCandidate>,
            min_price: f64,
            pool_capacity: bool,
        }
        let mut candidates = Vec::new();
        for fleet in fleets {
            if multinode
                && fleet.spec.configuration.placement != Some(InstanceGroupPlacement::Cluster)
            {
                continue;
            }
            if !fleet.run_can_fit(nodes) {
                tracing::debug!(fleet = %fleet.name, "run cannot fit into fleet");
                continue;
            }
            let all = instance_candidates(
                by_fleet.remove(&fleet.id).unwrap_or_default(),
                job,
                &profile,
            );
            let avail: Vec<&InstanceCandidate> = all.iter().filter(|c| available(c)).collect();
            let min_price = avail.first().map_or(f64::INFINITY, |c| c.offer.price);
            let pool_capacity = !avail.is_empty() && nodes <= avail.len();
            let offers = if opts.exclude_not_available {
                all.into_iter().filter(available).collect()
            } else {
                all
            };
            candidates.push(Candidate {
                fleet,
                offers,
                min_price,
                pool_capacity,
            });
        }
        let skip_backend = opts.skip_backend_offers
            || (opts.skip_backend_offers_on_pool_capacity
                && candidates.iter().any(|c| c.pool_capacity));
        let mut best: Option<(usize, (bool, f64, f64))> = None;
        for (i, c) in candidates.iter().enumerate() {
            let backend_min = if skip_backend {
                f64::INFINITY
            } else {
                self.backend_offers_in_fleet(
                    project_id,
                    &c.fleet,
                    &profile,
                    job,
                    Some(PER_FLEET_MAX_OFFERS),
                )
                .await?
                .iter()
                .find(|o| o.availability.is_available())
                .map_or(f64::INFINITY, |o| o.price)
            };
            let key = (!c.pool_capacity, c.min_price, backend_min);
            // `min` keeps the first of equal keys, as Python's `min` does.
            if best.as_ref().is_none_or(|(_, b)| lt(&key, b)) {
                best = Some((i, key));
            }
        }
        let Some((i, _)) = best else {
            return Ok(None);
        };
        let chosen = candidates.swap_remove(i);
        let backend_offers = if skip_backend {
            Vec::new()
        } else {
            let mut o = self
                .backend_offers_in_fleet(project_id, &chosen.fleet, &profile, job, None)
                .await?;
            if opts.exclude_not_available {
                o.retain(|o| o.availability.is_available());
            }
            o
        };
        Ok(Some(FleetChoice {
            fleet: chosen.fleet,
            instance_offers: chosen.offers,
            backend_offers,
        }))
    }

    /// The offers of one job's plan (dstack's `get_job_plans` for one job): a run pinned to
    /// instances (`instances:`) gets the selected instances' offers only; with
    /// `for_offers_only` (`dstack offer`, `gpus/list`) the offers of every selected fleet, or
    /// of the whole project (all its instances and every backend offer) when no fleet is
    /// named; otherwise the chosen fleet's. Instance offers come first, then a stable sort
    /// puts available offers first (`reverse`: available first, most expensive first).
    pub(crate) async fn job_plan_offers(
        &self,
        project_id: &str,
        run_spec: &RunSpec,
        job: &JobSpec,
        for_offers_only: bool,
        max_offers: usize,
        reverse: bool,
    ) -> crate::Result<PlanOffers> {
        let profile = run_spec.merged_profile();
        let skip_backend = profile.params.creation_policy == Some(CreationPolicy::Reuse);
        let mut offers: Vec<InstanceOfferWithAvailability> = if profile.params.instances.is_some() {
            // Pinned to instances (plan or `dstack offer`): the best fleet's selected ones.
            self.targeted_instance_offers(project_id, run_spec, job, None, false)
                .await?
                .into_iter()
                .map(|c| c.offer)
                .collect()
        } else if !for_offers_only {
            let opts = ChoiceOptions {
                skip_backend_offers: skip_backend,
                ..ChoiceOptions::default()
            };
            match self
                .find_optimal_fleet(project_id, run_spec, job, None, opts)
                .await?
            {
                Some(c) => c
                    .instance_offers
                    .into_iter()
                    .map(|c| c.offer)
                    .chain(c.backend_offers)
                    .collect(),
                None => Vec::new(),
            }
        } else if profile.params.fleets.is_some() {
            // `dstack offer --fleet`: every selected fleet, identical backend offers once.
            let fleets = self.candidate_fleets(project_id, &profile, None).await?;
            let ids: Vec<&str> = fleets.iter().map(|f| f.id.as_str()).collect();
            let rows = self
                .offerable_instances(project_id)
                .await?
                .into_iter()
                .filter(|r| r.fleet_id.as_deref().is_some_and(|f| ids.contains(&f)));
            let mut out: Vec<_> = instance_candidates(rows, job, &profile)
                .into_iter()
                .map(|c| c.offer)
                .collect();
            if !skip_backend {
                let mut seen = std::collections::HashSet::new();
                let mut backend = Vec::new();
                for f in &fleets {
                    for o in self
                        .backend_offers_in_fleet(project_id, f, &profile, job, None)
                        .await?
                    {
                        if seen.insert(serde_json::to_string(&o).unwrap_or_default()) {
                            backend.push(o);
                        }
                    }
                }
                backend.sort_by(|a, b| a.price.total_cmp(&b.price));
                out.extend(backend);
            }
            out
        } else {
            // No fleet named: the whole project's pool and every backend offer.
            let rows = self.offerable_instances(project_id).await?;
            let mut out: Vec<_> = instance_candidates(rows, job, &profile)
                .into_iter()
                .map(|c| c.offer)
                .collect();
            if !skip_backend {
                out.extend(
                    self.backend_offers(project_id, &job.requirements, &profile, None)
                        .await?,
                );
            }
            out
        };
        if reverse {
            offers.sort_by(|a, b| {
                (!a.availability.is_available())
                    .cmp(&!b.availability.is_available())
                    .then(b.price.total_cmp(&a.price))
            });
        } else {
            offers.sort_by_key(|o| !o.availability.is_available());
        }
        let total = offers.len();
        let max_price = offers.iter().map(|o| o.price).reduce(f64::max);
        offers.truncate(max_offers);
        Ok(PlanOffers {
            offers,
            total,
            max_price,
        })
    }
}

/// Tuple order of dstack's fleet sort key, `f64` compared totally.
fn lt(a: &(bool, f64, f64), b: &(bool, f64, f64)) -> bool {
    a.0.cmp(&b.0)
        .then(a.1.total_cmp(&b.1))
        .then(a.2.total_cmp(&b.2))
        .is_lt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_key_prefers_pool_capacity_then_prices() {
        let inf = f64::INFINITY;
        assert!(lt(&(false, inf, inf), &(true, 1.0, 0.5)));
        assert!(lt(&(true, 1.0, inf), &(true, inf, 0.1)));
        assert!(lt(&(true, inf, 0.1), &(true, inf, 0.2)));
        assert!(!lt(&(true, inf, 0.2), &(true, inf, 0.2)));
    }
}
