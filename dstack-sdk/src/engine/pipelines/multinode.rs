//! Multi-node run options of the job and run pipelines, as dstack 0.22.5 applies them:
//!
//! * `startup_order` (dstack's `_should_wait_for_other_nodes`,
//!   `background/pipeline_tasks/jobs_running.py`): a job of a multi-node replica stays
//!   `provisioning` (its shim task is not submitted) while the order says it must wait —
//!   with `master-first` a worker waits until the replica's master (`job_num` 0) is
//!   `running`; with `workers-first` the master waits until every other job of its replica
//!   is `running`; `any` (the default) never waits;
//! * `stop_criteria` (dstack's `_should_stop_on_master_done`,
//!   `background/pipeline_tasks/runs/active.py`): with `master-done` the run goes
//!   `terminating` with `all_jobs_done` as soon as a master job is `done`; its other jobs
//!   are then terminated with `done_by_runner` (so they end `done`) and the run ends `done`.
//!
//! A single-node run has no workers: neither option changes anything for it.

use crate::models::jobs::JobStatus;
use crate::models::profiles::{StartupOrder, StopCriteria};

/// The latest submission of one job of a run, as the multi-node rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Node {
    /// The job's replica.
    pub(super) replica_num: i64,
    /// The job's number in its replica (0 = the master).
    pub(super) job_num: i64,
    /// The status of the job's latest submission.
    pub(super) status: JobStatus,
}

/// Why `job` must not start yet under `order` (dstack's `_should_wait_for_other_nodes`,
/// startup-order part), given the latest submissions of its run's jobs; `None` when it may
/// start. A master missing from `jobs` counts as not running.
pub(super) fn startup_wait(
    order: Option<StartupOrder>,
    job: (i64, i64),
    jobs: &[Node],
) -> Option<&'static str> {
    let (replica_num, job_num) = job;
    let in_replica = || jobs.iter().filter(move |n| n.replica_num == replica_num);
    match order.unwrap_or(StartupOrder::Any) {
        StartupOrder::MasterFirst if job_num != 0 => {
            let master_running = in_replica()
                .find(|n| n.job_num == 0)
                .is_some_and(|n| n.status == JobStatus::Running);
            (!master_running).then_some("waiting for master job to become running")
        }
        StartupOrder::WorkersFirst if job_num == 0 => in_replica()
            .any(|n| n.job_num != job_num && n.status != JobStatus::Running)
            .then_some("waiting for worker job to become running"),
        _ => None,
    }
}

/// Whether the run is finished by its master under `criteria` (dstack's
/// `_should_stop_on_master_done`): `master-done` and some master job (`job_num` 0) is
/// `done`.
pub(super) fn stops_on_master_done(criteria: Option<StopCriteria>, jobs: &[Node]) -> bool {
    criteria == Some(StopCriteria::MasterDone)
        && jobs
            .iter()
            .any(|n| n.job_num == 0 && n.status == JobStatus::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(job_num: i64, status: JobStatus) -> Node {
        Node {
            replica_num: 0,
            job_num,
            status,
        }
    }

    #[test]
    fn any_order_never_waits() {
        let jobs = [
            node(0, JobStatus::Provisioning),
            node(1, JobStatus::Provisioning),
        ];
        for order in [None, Some(StartupOrder::Any)] {
            assert_eq!(startup_wait(order, (0, 0), &jobs), None);
            assert_eq!(startup_wait(order, (0, 1), &jobs), None);
        }
    }

    #[test]
    fn master_first_holds_workers_until_master_runs() {
        let order = Some(StartupOrder::MasterFirst);
        let mut jobs = [
            node(0, JobStatus::Pulling),
            node(1, JobStatus::Provisioning),
        ];
        assert_eq!(startup_wait(order, (0, 0), &jobs), None);
        assert!(startup_wait(order, (0, 1), &jobs).is_some());
        jobs[0].status = JobStatus::Running;
        assert_eq!(startup_wait(order, (0, 1), &jobs), None);
        // A finished master no longer counts as running (dstack waits on).
        jobs[0].status = JobStatus::Done;
        assert!(startup_wait(order, (0, 1), &jobs).is_some());
        // Another replica's master is not this worker's.
        let other = [
            Node {
                replica_num: 1,
                job_num: 0,
                status: JobStatus::Running,
            },
            node(1, JobStatus::Provisioning),
        ];
        assert!(startup_wait(order, (0, 1), &other).is_some());
    }

    #[test]
    fn workers_first_holds_master_until_all_workers_run() {
        let order = Some(StartupOrder::WorkersFirst);
        let mut jobs = [
            node(0, JobStatus::Provisioning),
            node(1, JobStatus::Running),
            node(2, JobStatus::Pulling),
        ];
        assert!(startup_wait(order, (0, 0), &jobs).is_some());
        assert_eq!(startup_wait(order, (0, 1), &jobs), None);
        assert_eq!(startup_wait(order, (0, 2), &jobs), None);
        jobs[2].status = JobStatus::Running;
        assert_eq!(startup_wait(order, (0, 0), &jobs), None);
        // A single-node run has no workers to wait for.
        assert_eq!(startup_wait(order, (0, 0), &jobs[..1]), None);
    }

    #[test]
    fn master_done_stops_the_run() {
        let mut jobs = [node(0, JobStatus::Running), node(1, JobStatus::Running)];
        let md = Some(StopCriteria::MasterDone);
        assert!(!stops_on_master_done(md, &jobs));
        jobs[1].status = JobStatus::Done;
        assert!(!stops_on_master_done(md, &jobs));
        jobs[0].status = JobStatus::Done;
        jobs[1].status = JobStatus::Running;
        assert!(stops_on_master_done(md, &jobs));
        assert!(!stops_on_master_done(None, &jobs));
        assert!(!stops_on_master_done(Some(StopCriteria::AllDone), &jobs));
    }
}
