//! Runs pinned to specific instances (`instances:` in a run configuration or profile,
//! dstack 0.22.5's targeted instance offers, `services/runs/plan.py` and
//! `services/instances.py`).
//!
//! Each selector names an instance by `name`, by `hostname` (the instance's hostname or
//! internal IP, or an SSH host's address) or by `fleet` + `instance` number; `fleets:`
//! narrows them further. Such a run only ever goes to those instances — never to backend
//! offers or new capacity. The instances are grouped by fleet (multi-node runs only in
//! `placement: cluster` fleets, and only fleets with enough matching instances for every
//! node), and the fleet with free capacity and the cheapest available instance wins, as in
//! fleet choice. A job that finds none of them free fails with dstack's "Failed to use
//! specified instances".

use super::Engine;
use super::fleet_choice::nodes_required;
use super::planner::{InstanceCandidate, instance_candidates};
use super::services::instances::InstanceRow;
use crate::models::fleets::InstanceGroupPlacement;
use crate::models::jobs::JobSpec;
use crate::models::profiles::{InstanceSelector, Profile};
use crate::models::runs::RunSpec;

/// dstack's message for a job whose selected instances cannot take it.
pub(crate) const FAILED_TO_USE_INSTANCES: &str = "Failed to use specified instances";

/// The fleet facts a selector needs: its name and project.
pub(crate) struct FleetName<'a> {
    /// The fleet's name.
    pub(crate) name: &'a str,
    /// Its project's name.
    pub(crate) project: &'a str,
}

/// Whether `row` (in fleet `fleet`, with the SSH host `ssh_host` when it is an SSH
/// instance) matches `selector` (dstack's `instance_matches_selector`); `project` is the
/// run's project, the default of a fleet reference.
pub(crate) fn matches_selector(
    row: &InstanceRow,
    fleet: Option<&FleetName<'_>>,
    ssh_host: Option<&str>,
    project: &str,
    selector: &InstanceSelector,
) -> bool {
    match selector {
        InstanceSelector::Name { name } => row.name == *name,
        InstanceSelector::Hostname { hostname } => {
            let wanted = hostname.to_lowercase();
            let jpd = row.jpd();
            let jpd_hosts = jpd
                .iter()
                .flat_map(|j| [j.hostname.as_deref(), j.internal_ip.as_deref()])
                .flatten();
            jpd_hosts
                .chain(ssh_host)
                .any(|h| h.to_lowercase() == wanted)
        }
        InstanceSelector::FleetInstance {
            fleet: reference,
            instance,
        } => fleet.is_some_and(|f| {
            f.name == reference.name
                && row.instance_num == *instance
                && reference.project.as_deref().unwrap_or(project) == f.project
        }),
    }
}

/// The fleet a group of targeted instances belongs to, with what choosing among them needs.
struct Group {
    cluster: bool,
    rows: Vec<InstanceRow>,
}

impl Engine {
    /// The instance offers of a run with `instances:` (dstack's
    /// `get_targeted_instance_offers`): those of the best fleet among the selected
    /// instances, only available ones with `exclude_not_available`; empty when no fleet has
    /// enough of them. `run_fleet` limits them to the fleet the run already uses.
    pub(crate) async fn targeted_instance_offers(
        &self,
        project_id: &str,
        run_spec: &RunSpec,
        job: &JobSpec,
        run_fleet: Option<&str>,
        exclude_not_available: bool,
    ) -> crate::Result<Vec<InstanceCandidate>> {
        let profile: Profile = run_spec.merged_profile();
        let Some(selectors) = profile.params.instances.as_deref() else {
            return Ok(Vec::new());
        };
        let fleets: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT f.id, f.name, f.spec, p.name FROM fleets f JOIN projects p \
             ON p.id = f.project_id WHERE f.project_id = $1 AND f.deleted = FALSE",
        )
        .bind(project_id)
        .fetch_all(self.store().reader())
        .await?;
        let mut groups: Vec<(String, Group)> = Vec::new();
        for row in self.offerable_instances(project_id).await? {
            let Some(fid) = row.fleet_id.as_deref() else {
                continue;
            };
            if run_fleet.is_some_and(|f| f != fid) {
                continue;
            }
            let Some((_, fname, fspec, pname)) = fleets.iter().find(|(id, ..)| id == fid) else {
                continue;
            };
            let fleet = FleetName {
                name: fname,
                project: pname,
            };
            if let Some(refs) = &profile.params.fleets
                && !refs
                    .iter()
                    .any(|r| r.name == *fname && r.project.as_deref().is_none_or(|p| p == pname))
            {
                continue;
            }
            let ssh_host = self.remote_connection_info(&row)?.map(|r| r.host);
            if !selectors
                .iter()
                .any(|s| matches_selector(&row, Some(&fleet), ssh_host.as_deref(), pname, s))
            {
                continue;
            }
            match groups.iter_mut().find(|(id, _)| id == fid) {
                Some((_, g)) => g.rows.push(row),
                None => {
                    let cluster = serde_json::from_str::<crate::models::fleets::FleetSpec>(fspec)
                        .is_ok_and(|s| {
                            s.configuration.placement == Some(InstanceGroupPlacement::Cluster)
                        });
                    groups.push((
                        fid.to_string(),
                        Group {
                            cluster,
                            rows: vec![row],
                        },
                    ));
                }
            }
        }
        let multinode = job.jobs_per_replica > 1;
        let required = if multinode && job.job_num == 0 {
            nodes_required(run_spec)
        } else {
            1
        };
        let min_price = |o: &[&InstanceCandidate]| {
            o.iter()
                .map(|c| c.offer.price)
                .reduce(f64::min)
                .unwrap_or(f64::INFINITY)
        };
        let mut best: Option<((bool, f64, f64), Vec<InstanceCandidate>)> = None;
        for (_, group) in groups {
            if multinode && !group.cluster {
                continue;
            }
            let all = instance_candidates(group.rows, job, &profile);
            if all.len() < required {
                continue;
            }
            let available: Vec<&InstanceCandidate> = all
                .iter()
                .filter(|c| c.offer.availability.is_available())
                .collect();
            let key = (
                available.len() < required,
                min_price(&available),
                min_price(&all.iter().collect::<Vec<_>>()),
            );
            let offers: Vec<InstanceCandidate> = if exclude_not_available {
                all.into_iter()
                    .filter(|c| c.offer.availability.is_available())
                    .collect()
            } else {
                all
            };
            if offers.is_empty() {
                continue;
            }
            // `min` keeps the first of equal keys, as Python's `min` does.
            let better = best.as_ref().is_none_or(|(b, _)| {
                key.0
                    .cmp(&b.0)
                    .then(key.1.total_cmp(&b.1))
                    .then(key.2.total_cmp(&b.2))
                    .is_lt()
            });
            if better {
                best = Some((key, offers));
            }
        }
        Ok(best.map(|(_, o)| o).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::common::EntityReference;
    use crate::models::instances::InstanceStatus;

    fn row(name: &str, num: i64, jpd: Option<serde_json::Value>) -> InstanceRow {
        InstanceRow {
            id: "i".into(),
            name: name.into(),
            instance_num: num,
            project_id: "p".into(),
            fleet_id: Some("f".into()),
            created_at: chrono::Utc::now(),
            finished_at: None,
            status: InstanceStatus::Idle,
            unreachable: false,
            termination_reason: None,
            termination_reason_message: None,
            offer: None,
            job_provisioning_data: jpd.map(|j| j.to_string()),
            remote_connection_info: None,
            total_blocks: Some(1),
            busy_blocks: 0,
            deleted: false,
            provisioning_job_id: None,
        }
    }

    #[test]
    fn selectors_follow_dstack() {
        let fleet = FleetName {
            name: "gpus",
            project: "main",
        };
        let r = row("gpus-1", 1, None);
        let m = |s: InstanceSelector, host: Option<&str>| {
            matches_selector(&r, Some(&fleet), host, "main", &s)
        };
        assert!(m(
            InstanceSelector::Name {
                name: "gpus-1".into()
            },
            None
        ));
        assert!(!m(
            InstanceSelector::Name {
                name: "gpus-0".into()
            },
            None
        ));
        let by_num =
            |project: Option<&str>, name: &str, instance| InstanceSelector::FleetInstance {
                fleet: EntityReference {
                    project: project.map(str::to_string),
                    name: name.into(),
                },
                instance,
            };
        assert!(m(by_num(None, "gpus", 1), None));
        assert!(m(by_num(Some("main"), "gpus", 1), None));
        assert!(!m(by_num(Some("other"), "gpus", 1), None));
        assert!(!m(by_num(None, "gpus", 0), None));
        assert!(!m(by_num(None, "cpus", 1), None));
        // Hostnames: the SSH host, case-insensitively.
        let host = |h: &str| InstanceSelector::Hostname { hostname: h.into() };
        assert!(m(host("GPU-Box.local"), Some("gpu-box.local")));
        assert!(!m(host("10.0.0.9"), Some("gpu-box.local")));
    }
}
