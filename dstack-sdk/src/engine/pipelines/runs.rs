//! The run pipeline's work on one run, as dstack 0.22.5 does it
//! (`background/pipeline_tasks/runs/`: `active.py`, `pending.py`, `terminating.py`):
//!
//! * an **active** run (`submitted`, `provisioning`, `running`) is judged replica by replica
//!   from the latest submission of each of its jobs ([`analyze`]):
//!   - a replica with a job that failed for good (no retry policy, an event the policy does
//!     not list, or the retry window passed) fails the run: `terminating` with `job_failed`
//!     or `retry_limit_exceeded`;
//!   - a replica with a job the policy retries is **retried as a whole**: its unfinished
//!     jobs are terminated ("Run is to be resubmitted") and every job of the replica gets a
//!     new submission, at once while another replica is still active, or after the back-off
//!     of a `pending` run when none is;
//!   - otherwise the run is `running`, `provisioning` or `submitted` after its most advanced
//!     replica, and `terminating` with `all_jobs_done` once every job is done or, with
//!     `stop_criteria: master-done`, once a master is done;
//! * a **pending** run gets new submissions of its replicas once dstack's back-off (15 s,
//!   30 s, 1, 2, 5, then 10 min) since its jobs last changed has passed;
//! * a **terminating** run terminates its unfinished jobs and takes its final status when
//!   every job has finished.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{PipelineKind, latest_jobs, multinode, run_nodes, run_row};
use crate::engine::services::runs::{JobRow, RunRow, enum_from_db, enum_to_db};
use crate::engine::{Engine, time};
use crate::models::jobs::{JobStatus, JobTerminationReason};
use crate::models::profiles::RetryEvent;
use crate::models::runs::{RunSpec, RunStatus, RunTerminationReason};

/// A write transaction of the state store.
type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// The message on jobs terminated so that their replica can be resubmitted (dstack's).
const RESUBMIT_MESSAGE: &str = "Run is to be resubmitted";

/// What the retry policy says about a job that failed (dstack's `_should_retry_job` and
/// `_is_retry_duration_exceeded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetryVerdict {
    /// Not retried: no policy, or a reason or event the policy does not cover.
    No,
    /// Retried by the policy, but its window has passed.
    LimitExceeded,
    /// To be retried.
    Retry,
}

/// The latest submission of one job, as the run analysis sees it.
#[derive(Clone, Copy, Debug)]
struct JobState {
    replica_num: i64,
    status: JobStatus,
    reason: Option<JobTerminationReason>,
    /// The policy's verdict, for jobs that need one ([`needs_retry_evaluation`]).
    retry: Option<RetryVerdict>,
}

/// Where an active run goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transition {
    /// Stop the run's jobs; the run ends with the reason's status.
    Terminating(RunTerminationReason),
    /// A job runs.
    Running,
    /// A job is being provisioned or pulled.
    Provisioning,
    /// Jobs wait for an instance.
    Submitted,
    /// Every replica that is not done is to be retried after the back-off.
    Pending,
}

/// The verdict on an active run: where it goes and which replicas are retried.
#[derive(Debug, PartialEq, Eq)]
struct Analysis {
    transition: Transition,
    replicas_to_retry: Vec<i64>,
}

/// Whether a job's status and reason ask the retry policy (dstack's
/// `_job_needs_retry_evaluation`): failed, or stopped for a reason other than being done or
/// scaled down.
fn needs_retry_evaluation(status: JobStatus, reason: Option<JobTerminationReason>) -> bool {
    status == JobStatus::Failed
        || (matches!(
            status,
            JobStatus::Terminating | JobStatus::Terminated | JobStatus::Aborted
        ) && !matches!(
            reason,
            Some(JobTerminationReason::DoneByRunner | JobTerminationReason::ScaledDown)
        ))
}

/// dstack's `_analyze_active_run` and `_get_active_run_transition`, on the latest
/// submission of every job of the run. `master_done`: `stop_criteria: master-done` and a
/// master job is done.
fn analyze(jobs: &[JobState], master_done: bool) -> Analysis {
    let replicas: BTreeSet<i64> = jobs.iter().map(|j| j.replica_num).collect();
    let mut contributed: BTreeSet<u8> = BTreeSet::new();
    let mut job_failed = false;
    let mut replicas_to_retry = Vec::new();
    // Contributions, by rank: the run takes the most advanced one.
    const DONE: u8 = 0;
    const SUBMITTED: u8 = 1;
    const PROVISIONING: u8 = 2;
    const RUNNING: u8 = 3;
    const FAILED: u8 = 4;
    for replica in replicas {
        let mut mine = BTreeSet::new();
        let mut retry = false;
        for job in jobs.iter().filter(|j| j.replica_num == replica) {
            let done_by_runner = job.reason == Some(JobTerminationReason::DoneByRunner);
            if job.status == JobStatus::Done
                || (job.status == JobStatus::Terminating && done_by_runner)
            {
                mine.insert(DONE);
                continue;
            }
            if job.reason == Some(JobTerminationReason::ScaledDown) {
                continue;
            }
            match job.status {
                JobStatus::Running => {
                    mine.insert(RUNNING);
                    continue;
                }
                JobStatus::Provisioning | JobStatus::Pulling => {
                    mine.insert(PROVISIONING);
                    continue;
                }
                JobStatus::Submitted => {
                    mine.insert(SUBMITTED);
                    continue;
                }
                _ => {}
            }
            match job.retry {
                Some(RetryVerdict::Retry) => retry = true,
                Some(RetryVerdict::LimitExceeded) => {
                    mine.insert(FAILED);
                }
                Some(RetryVerdict::No) | None => {
                    mine.insert(FAILED);
                    job_failed = true;
                }
            }
        }
        if mine.contains(&FAILED) {
            contributed.insert(FAILED);
            continue;
        }
        if retry {
            replicas_to_retry.push(replica);
        } else {
            contributed.extend(mine);
        }
    }
    let transition = if contributed.contains(&FAILED) {
        Transition::Terminating(if job_failed {
            RunTerminationReason::JobFailed
        } else {
            RunTerminationReason::RetryLimitExceeded
        })
    } else if master_done {
        Transition::Terminating(RunTerminationReason::AllJobsDone)
    } else if contributed.contains(&RUNNING) {
        Transition::Running
    } else if contributed.contains(&PROVISIONING) {
        Transition::Provisioning
    } else if contributed.contains(&SUBMITTED) {
        Transition::Submitted
    } else if contributed.contains(&DONE) && replicas_to_retry.is_empty() {
        Transition::Terminating(RunTerminationReason::AllJobsDone)
    } else {
        Transition::Pending
    };
    Analysis {
        transition,
        replicas_to_retry,
    }
}

/// One tick of the run pipeline for run `id`.
pub(super) async fn process_run(engine: &Engine, id: &str) -> crate::Result<()> {
    let Some(run) = run_row(engine, id).await? else {
        return Ok(());
    };
    match enum_from_db(&run.status).unwrap_or(RunStatus::Failed) {
        RunStatus::Pending => resubmit_when_due(engine, &run).await,
        RunStatus::Terminating => {
            let reason = run
                .termination_reason
                .as_deref()
                .and_then(RunTerminationReason::from_wire)
                .unwrap_or(RunTerminationReason::StoppedByUser);
            terminate(engine, &run, reason).await
        }
        status if status.is_finished() => Ok(()),
        status => process_active(engine, &run, status).await,
    }
}

/// An active run: its next status from its replicas, with retried replicas resubmitted.
async fn process_active(engine: &Engine, run: &RunRow, status: RunStatus) -> crate::Result<()> {
    let jobs = latest_jobs(engine, &run.id).await?;
    let criteria = serde_json::from_str::<RunSpec>(&run.run_spec)
        .ok()
        .and_then(|s| s.merged_profile().params.stop_criteria);
    let master_done = multinode::stops_on_master_done(criteria, &run_nodes(&jobs));
    let mut states = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let status = job.status();
        let reason = job
            .termination_reason
            .as_deref()
            .and_then(JobTerminationReason::from_wire);
        let retry = if needs_retry_evaluation(status, reason) {
            Some(retry_verdict(engine, run, job).await?)
        } else {
            None
        };
        states.push(JobState {
            replica_num: job.replica_num,
            status,
            reason,
            retry,
        });
    }
    let analysis = analyze(&states, master_done);
    let now = time::to_db(time::now());
    let retried: Vec<&JobRow> = jobs
        .iter()
        .filter(|j| analysis.replicas_to_retry.contains(&j.replica_num))
        .collect();
    match analysis.transition {
        Transition::Terminating(reason) => {
            set_run_status(engine, run, RunStatus::Terminating, Some(reason)).await?;
            terminate(engine, run, reason).await
        }
        Transition::Pending => {
            let mut tx = engine.store().begin().await?;
            stop_for_resubmission(&mut tx, &retried, &now).await?;
            // A new fleet may be chosen on the next attempt (dstack unassigns the run).
            sqlx::query(
                "UPDATE runs SET status = 'pending', termination_reason = NULL, \
                 resubmission_attempt = resubmission_attempt + 1, fleet_id = NULL, \
                 last_processed_at = $1 WHERE id = $2",
            )
            .bind(&now)
            .bind(&run.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            engine.hint(PipelineKind::Jobs);
            tracing::info!(run = %run.run_name, "a job failed; the run waits to be resubmitted by its retry policy");
            Ok(())
        }
        active => {
            if !retried.is_empty() {
                // Another replica is still active: the failed ones start over at once.
                let mut tx = engine.store().begin().await?;
                stop_for_resubmission(&mut tx, &retried, &now).await?;
                resubmit(&mut tx, run, &retried, &now).await?;
                tx.commit().await?;
                engine.hint(PipelineKind::Jobs);
                tracing::info!(run = %run.run_name, replicas = ?analysis.replicas_to_retry,
                    "replicas resubmitted by the retry policy");
            }
            let next = match active {
                Transition::Running => RunStatus::Running,
                Transition::Provisioning => RunStatus::Provisioning,
                _ => RunStatus::Submitted,
            };
            if next != status || run.termination_reason.is_some() {
                set_run_status(engine, run, next, None).await?;
            }
            Ok(())
        }
    }
}

/// Writes a run's status and reason (a run that starts provisioning starts its retry
/// back-off over, as in dstack).
async fn set_run_status(
    engine: &Engine,
    run: &RunRow,
    status: RunStatus,
    reason: Option<RunTerminationReason>,
) -> crate::Result<()> {
    if enum_from_db::<RunStatus>(&run.status) == Some(status)
        && run.termination_reason.as_deref() == reason.map(RunTerminationReason::as_str)
    {
        return Ok(());
    }
    let mut tx = engine.store().begin().await?;
    sqlx::query(
        "UPDATE runs SET status = $1, termination_reason = $2, last_processed_at = $3, \
         resubmission_attempt = CASE WHEN $1 = 'provisioning' THEN 0 \
         ELSE resubmission_attempt END WHERE id = $4",
    )
    .bind(enum_to_db(status))
    .bind(reason.map(RunTerminationReason::as_str))
    .bind(time::to_db(time::now()))
    .bind(&run.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(run = %run.run_name, status = %status.as_str(), "run status changed");
    Ok(())
}

/// Marks the unfinished jobs among `jobs` for termination with `reason`: those with an
/// instance or a container go `terminating` (the job pipeline stops them), the others
/// finish at once.
async fn stop_jobs(
    tx: &mut Tx,
    jobs: &[&JobRow],
    reason: JobTerminationReason,
    message: Option<&str>,
    now: &str,
) -> crate::Result<()> {
    for job in jobs {
        let status = job.status();
        if status.is_finished() || status == JobStatus::Terminating {
            continue;
        }
        let placed = job.instance_id.is_some() || job.job_provisioning_data.is_some();
        let next = if placed {
            JobStatus::Terminating
        } else {
            reason.to_status()
        };
        sqlx::query(
            "UPDATE jobs SET status = $1, termination_reason = $2, \
             termination_reason_message = COALESCE($3, termination_reason_message), \
             finished_at = CASE WHEN $4 THEN $5 ELSE finished_at END, \
             skip_min_processing_interval = TRUE WHERE id = $6",
        )
        .bind(enum_to_db(next))
        .bind(reason.as_str())
        .bind(message)
        .bind(next.is_finished())
        .bind(now)
        .bind(&job.id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Stops the unfinished jobs of replicas that are retried as a whole (dstack's
/// `_build_terminate_retrying_jobs_map`).
async fn stop_for_resubmission(tx: &mut Tx, jobs: &[&JobRow], now: &str) -> crate::Result<()> {
    let reason = JobTerminationReason::TerminatedByServer;
    stop_jobs(tx, jobs, reason, Some(RESUBMIT_MESSAGE), now).await
}

/// A terminating run: its unfinished jobs are stopped; once all have finished the run takes
/// the final status of `reason`.
async fn terminate(
    engine: &Engine,
    run: &RunRow,
    reason: RunTerminationReason,
) -> crate::Result<()> {
    let jobs = latest_jobs(engine, &run.id).await?;
    let now = time::to_db(time::now());
    let mut tx = engine.store().begin().await?;
    let all: Vec<&JobRow> = jobs.iter().collect();
    stop_jobs(
        &mut tx,
        &all,
        reason.to_job_termination_reason(),
        None,
        &now,
    )
    .await?;
    tx.commit().await?;
    engine.hint(PipelineKind::Jobs);
    if jobs_all_finished(engine, &run.id).await? {
        set_run_status(engine, run, reason.to_status(), Some(reason)).await?;
    }
    Ok(())
}

/// What the retry policy of `job` (failed or stopped) says: its reason must map to an event
/// the policy lists, and the window must not have passed — counted from the run's
/// submission for `no-capacity` before the job ever got an instance, else from the last
/// submission that was provisioned (a job that never was and failed otherwise is not
/// retried).
async fn retry_verdict(engine: &Engine, run: &RunRow, job: &JobRow) -> crate::Result<RetryVerdict> {
    let Some(retry) = job.spec()?.retry else {
        return Ok(RetryVerdict::No);
    };
    let Some(event) = job
        .termination_reason
        .as_deref()
        .and_then(JobTerminationReason::from_wire)
        .and_then(JobTerminationReason::to_retry_event)
    else {
        return Ok(RetryVerdict::No);
    };
    if !retry.on_events.contains(&event) {
        return Ok(RetryVerdict::No);
    }
    let provisioned: Option<(String,)> = sqlx::query_as(
        "SELECT last_processed_at FROM jobs WHERE run_id = $1 AND job_num = $2 \
         AND replica_num = $3 AND job_provisioning_data IS NOT NULL \
         ORDER BY submission_num DESC LIMIT 1",
    )
    .bind(&run.id)
    .bind(job.job_num)
    .bind(job.replica_num)
    .fetch_optional(engine.store().reader())
    .await?;
    let since = match (&provisioned, event) {
        (None, RetryEvent::NoCapacity) => time::from_db(&run.submitted_at),
        (Some((at,)), _) => time::from_db(at),
        (None, _) => return Ok(RetryVerdict::No),
    };
    let elapsed = since.map_or(i64::MAX, |t| (time::now() - t).num_seconds());
    Ok(if elapsed > retry.duration {
        RetryVerdict::LimitExceeded
    } else {
        RetryVerdict::Retry
    })
}

/// dstack's back-off between resubmissions of a pending run.
fn retry_delay(attempt: i64) -> Duration {
    const DELAYS: [u64; 6] = [15, 30, 60, 120, 300, 600];
    let i = usize::try_from(attempt.saturating_sub(1)).unwrap_or(0);
    Duration::from_secs(DELAYS[i.min(DELAYS.len() - 1)])
}

/// A pending run: once the back-off since its jobs last changed has passed, every replica
/// that is not done gets a new submission of all its jobs, and the run is `submitted`.
async fn resubmit_when_due(engine: &Engine, run: &RunRow) -> crate::Result<()> {
    let (attempt,): (i64,) = sqlx::query_as("SELECT resubmission_attempt FROM runs WHERE id = $1")
        .bind(&run.id)
        .fetch_one(engine.store().reader())
        .await?;
    let jobs = latest_jobs(engine, &run.id).await?;
    let last = jobs
        .iter()
        .filter_map(|j| time::from_db(&j.last_processed_at))
        .max()
        .unwrap_or_else(time::now);
    let waited = (time::now() - last).to_std().unwrap_or_default();
    if attempt > 0 && waited < retry_delay(attempt) {
        return Ok(());
    }
    let not_done: BTreeSet<i64> = jobs
        .iter()
        .filter(|j| j.status() != JobStatus::Done)
        .map(|j| j.replica_num)
        .collect();
    let retried: Vec<&JobRow> = jobs
        .iter()
        .filter(|j| not_done.contains(&j.replica_num))
        .collect();
    let now = time::to_db(time::now());
    let mut tx = engine.store().begin().await?;
    resubmit(&mut tx, run, &retried, &now).await?;
    sqlx::query(
        "UPDATE runs SET status = 'submitted', termination_reason = NULL, last_processed_at = $1 \
         WHERE id = $2",
    )
    .bind(&now)
    .bind(&run.id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(run = %run.run_name, attempt, "run resubmitted by its retry policy");
    engine.hint(PipelineKind::Jobs);
    Ok(())
}

/// New `submitted` submissions of `jobs` (the next `submission_num`, the same spec).
async fn resubmit(tx: &mut Tx, run: &RunRow, jobs: &[&JobRow], now: &str) -> crate::Result<()> {
    for job in jobs {
        sqlx::query(
            "INSERT INTO jobs (id, project_id, run_id, run_name, job_num, job_name, replica_num, \
             submission_num, deployment_num, submitted_at, last_processed_at, status, \
             job_spec_data) SELECT $1, project_id, run_id, run_name, job_num, job_name, \
             replica_num, $2, deployment_num, $3, $3, 'submitted', job_spec_data \
             FROM jobs WHERE id = $4",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(job.submission_num + 1)
        .bind(now)
        .bind(&job.id)
        .execute(&mut **tx)
        .await?;
    }
    tracing::debug!(run = %run.run_name, jobs = jobs.len(), "jobs resubmitted");
    Ok(())
}

/// Whether every submission of the run's jobs has finished.
async fn jobs_all_finished(engine: &Engine, run_id: &str) -> crate::Result<bool> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT status FROM jobs WHERE run_id = $1")
        .bind(run_id)
        .fetch_all(engine.store().reader())
        .await?;
    Ok(rows
        .iter()
        .all(|(s,)| enum_from_db::<JobStatus>(s).is_some_and(JobStatus::is_finished)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(replica_num: i64, status: JobStatus) -> JobState {
        JobState {
            replica_num,
            status,
            reason: None,
            retry: None,
        }
    }

    fn failed(replica_num: i64, retry: RetryVerdict) -> JobState {
        JobState {
            replica_num,
            status: JobStatus::Failed,
            reason: Some(JobTerminationReason::ContainerExitedWithError),
            retry: Some(retry),
        }
    }

    fn verdict(jobs: &[JobState]) -> (Transition, Vec<i64>) {
        let a = analyze(jobs, false);
        (a.transition, a.replicas_to_retry)
    }

    #[test]
    fn the_most_advanced_replica_sets_the_status() {
        use JobStatus as S;
        let jobs = [job(0, S::Submitted), job(1, S::Pulling), job(2, S::Done)];
        assert_eq!(verdict(&jobs), (Transition::Provisioning, vec![]));
        let jobs = [job(0, S::Submitted), job(0, S::Running)];
        assert_eq!(verdict(&jobs), (Transition::Running, vec![]));
        let jobs = [job(0, S::Done), job(1, S::Done)];
        assert_eq!(
            verdict(&jobs),
            (
                Transition::Terminating(RunTerminationReason::AllJobsDone),
                vec![]
            )
        );
        // A worker stopped because its master is done counts as done.
        let stopping = JobState {
            reason: Some(JobTerminationReason::DoneByRunner),
            ..job(0, S::Terminating)
        };
        assert_eq!(
            verdict(&[job(0, S::Done), stopping]).0,
            Transition::Terminating(RunTerminationReason::AllJobsDone)
        );
    }

    #[test]
    fn a_failure_for_good_fails_the_run() {
        use JobStatus as S;
        let jobs = [job(0, S::Running), failed(1, RetryVerdict::No)];
        assert_eq!(
            verdict(&jobs).0,
            Transition::Terminating(RunTerminationReason::JobFailed)
        );
        let jobs = [job(0, S::Running), failed(1, RetryVerdict::LimitExceeded)];
        assert_eq!(
            verdict(&jobs).0,
            Transition::Terminating(RunTerminationReason::RetryLimitExceeded)
        );
        // `job_failed` wins over `retry_limit_exceeded`.
        let jobs = [
            failed(0, RetryVerdict::LimitExceeded),
            failed(1, RetryVerdict::No),
        ];
        assert_eq!(
            verdict(&jobs).0,
            Transition::Terminating(RunTerminationReason::JobFailed)
        );
        // Even a master that is done does not turn a failure into success.
        let jobs = [job(0, S::Done), failed(0, RetryVerdict::No)];
        assert_eq!(
            analyze(&jobs, true).transition,
            Transition::Terminating(RunTerminationReason::JobFailed)
        );
    }

    #[test]
    fn a_retried_node_retries_its_whole_replica() {
        use JobStatus as S;
        // Node 1 of replica 0 failed while node 0 still runs: the replica is retried and
        // contributes nothing; replica 1 keeps the run running.
        let jobs = [
            job(0, S::Running),
            failed(0, RetryVerdict::Retry),
            job(1, S::Running),
        ];
        assert_eq!(verdict(&jobs), (Transition::Running, vec![0]));
        // With no other active replica the run goes pending.
        let jobs = [job(0, S::Running), failed(0, RetryVerdict::Retry)];
        assert_eq!(verdict(&jobs), (Transition::Pending, vec![0]));
        // A done replica beside a retried one: pending, not done.
        let jobs = [job(0, S::Done), failed(1, RetryVerdict::Retry)];
        assert_eq!(verdict(&jobs), (Transition::Pending, vec![1]));
        // `master-done` overrides a retry.
        let jobs = [job(0, S::Done), failed(0, RetryVerdict::Retry)];
        assert_eq!(
            analyze(&jobs, true).transition,
            Transition::Terminating(RunTerminationReason::AllJobsDone)
        );
    }

    #[test]
    fn scaled_down_jobs_are_ignored() {
        let scaled = JobState {
            reason: Some(JobTerminationReason::ScaledDown),
            ..job(1, JobStatus::Terminated)
        };
        assert!(!needs_retry_evaluation(scaled.status, scaled.reason));
        assert_eq!(
            verdict(&[job(0, JobStatus::Running), scaled]),
            (Transition::Running, vec![])
        );
    }

    #[test]
    fn stopped_jobs_need_the_policy_unless_done() {
        use JobTerminationReason as R;
        assert!(needs_retry_evaluation(JobStatus::Failed, None));
        assert!(needs_retry_evaluation(
            JobStatus::Terminating,
            Some(R::InterruptedByNoCapacity)
        ));
        assert!(needs_retry_evaluation(
            JobStatus::Terminated,
            Some(R::TerminatedByUser)
        ));
        assert!(!needs_retry_evaluation(
            JobStatus::Terminating,
            Some(R::DoneByRunner)
        ));
        assert!(!needs_retry_evaluation(JobStatus::Running, None));
    }

    #[test]
    fn back_off_follows_dstack() {
        let secs: Vec<u64> = (1..=8).map(|a| retry_delay(a).as_secs()).collect();
        assert_eq!(secs, [15, 30, 60, 120, 300, 600, 600, 600]);
    }
}
