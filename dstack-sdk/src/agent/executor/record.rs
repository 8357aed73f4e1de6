//! A task's persistent state: one small JSON file (`task.json`) per task directory, rewritten
//! atomically on every state change, so that a restarted agent resumes where it left off.

use serde::{Deserialize, Serialize};

use super::RunnerState;
use crate::agent::protocol::{JobInfoResponse, JobState, JobStateEvent, TaskConfig, TaskStatus};

/// dstack's termination reason for a job stopped because `max_duration` passed.
pub const REASON_MAX_DURATION_EXCEEDED: &str = "max_duration_exceeded";
/// dstack's termination reason when the job's output exceeded the hourly log quota.
pub const REASON_LOG_QUOTA_EXCEEDED: &str = "log_quota_exceeded";
/// dstack's termination reason for failures of the executor itself.
pub const REASON_EXECUTOR_ERROR: &str = "executor_error";
/// dstack's termination reason when setting up the job's environment failed.
pub const REASON_CONTAINER_EXITED_WITH_ERROR: &str = "container_exited_with_error";
/// dstack's termination reason for a task whose job ended and handed over its logs.
pub const REASON_DONE_BY_RUNNER: &str = "done_by_runner";

/// Everything the agent keeps about a task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Submission order (the runner API serves the newest task).
    pub seq: u64,
    /// The submitted config (the registry password is not stored).
    pub config: TaskConfig,
    /// The shim-level status.
    pub status: TaskStatus,
    /// Why the task terminated.
    #[serde(default)]
    pub termination_reason: String,
    /// The termination message.
    #[serde(default)]
    pub termination_message: String,
    /// The GPUs assigned to the task.
    #[serde(default)]
    pub gpu_ids: Vec<String>,
    /// The job side.
    #[serde(default)]
    pub runner: RunnerRecord,
    /// What was added to the host user's `authorized_keys` (removed on teardown).
    #[serde(default)]
    pub host_keys: Option<crate::agent::authorized_keys::HostKeysRecord>,
    /// When `POST /api/tasks/{id}/remove` was answered (ms); the task lingers until teardown.
    #[serde(default)]
    pub removed_at_ms: Option<i64>,
}

/// The job side of a task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunnerRecord {
    /// The runner state machine.
    pub state: RunnerState,
    /// Job state transitions so far.
    #[serde(default)]
    pub job_states: Vec<JobStateEvent>,
    /// What `POST /api/run` answered.
    #[serde(default)]
    pub job_info: Option<JobInfoResponse>,
    /// The job's process, once started.
    #[serde(default)]
    pub process: Option<ProcessRecord>,
    /// A pending or carried-out stop.
    #[serde(default)]
    pub stop: Option<StopRecord>,
    /// When the job ended (ms).
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
    /// Whether a pull handed out everything after the job ended.
    #[serde(default)]
    pub logs_pulled: bool,
}

/// The job's process group (and session: the job runs as the leader of a session of its
/// own, with a pseudo-terminal as its controlling terminal).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The wrapper's pid, which is also the process group id and the session id.
    pub pid: u32,
    /// The pid of the process that copies the terminal's output into `job.out`.
    #[serde(default)]
    pub copier_pid: Option<u32>,
    /// The copier's start time in clock ticks.
    #[serde(default)]
    pub copier_start_time: Option<u64>,
    /// The wrapper's start time in clock ticks (guards against pid reuse after a restart).
    #[serde(default)]
    pub start_time: Option<u64>,
    /// When the job started (ms).
    pub started_at_ms: i64,
    /// When `max_duration` runs out (ms).
    #[serde(default)]
    pub deadline_ms: Option<i64>,
    /// Log bytes allowed per hour (`None`: unlimited).
    #[serde(default)]
    pub log_quota_hour: Option<i64>,
}

/// Why a job is being stopped; decides its final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopCause {
    /// `POST /api/stop`.
    Runner,
    /// `max_duration` passed.
    MaxDuration,
    /// The hourly log quota was exceeded.
    LogQuota {
        /// The quota, bytes per hour.
        quota: i64,
    },
    /// `POST /api/tasks/{id}/terminate`.
    Shim {
        /// The requested termination reason.
        reason: String,
        /// The requested message.
        message: String,
    },
}

impl StopCause {
    /// The final job state, termination reason and message for a job stopped for this cause.
    pub fn outcome(&self) -> (JobState, String, String) {
        match self {
            StopCause::Runner => (JobState::Terminated, String::new(), String::new()),
            StopCause::MaxDuration => (
                JobState::Terminated,
                REASON_MAX_DURATION_EXCEEDED.into(),
                "Max duration exceeded".into(),
            ),
            StopCause::LogQuota { quota } => (
                JobState::Failed,
                REASON_LOG_QUOTA_EXCEEDED.into(),
                format!("Job log output exceeded the hourly quota of {quota} bytes"),
            ),
            StopCause::Shim { reason, message } => {
                (JobState::Terminated, reason.clone(), message.clone())
            }
        }
    }
}

/// A stop in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRecord {
    /// Why.
    pub cause: StopCause,
    /// When it was requested (ms).
    pub requested_at_ms: i64,
    /// How long to wait after SIGTERM before SIGKILL (ms).
    pub grace_ms: u64,
    /// When SIGTERM was sent (ms).
    #[serde(default)]
    pub signalled_at_ms: Option<i64>,
    /// When SIGKILL was sent (ms).
    #[serde(default)]
    pub killed_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let mut rec = TaskRecord {
            seq: 3,
            config: TaskConfig::new("id", "name", "img"),
            status: TaskStatus::Running,
            termination_reason: String::new(),
            termination_message: String::new(),
            gpu_ids: vec![],
            runner: RunnerRecord::default(),
            host_keys: None,
            removed_at_ms: None,
        };
        rec.runner.stop = Some(StopRecord {
            cause: StopCause::Shim {
                reason: "terminated_by_user".into(),
                message: "m".into(),
            },
            requested_at_ms: 1,
            grace_ms: 10_000,
            signalled_at_ms: None,
            killed_at_ms: None,
        });
        let text = serde_json::to_string(&rec).unwrap();
        assert!(text.contains("\"kind\":\"shim\""));
        let back: TaskRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.runner.stop, rec.runner.stop);
        assert_eq!(back.runner.state, RunnerState::WaitSubmit);
    }

    #[test]
    fn outcomes() {
        let (state, reason, msg) = StopCause::MaxDuration.outcome();
        assert_eq!(
            (state, reason.as_str(), msg.as_str()),
            (
                JobState::Terminated,
                "max_duration_exceeded",
                "Max duration exceeded"
            )
        );
        assert_eq!(
            StopCause::LogQuota { quota: 10 }.outcome().0,
            JobState::Failed
        );
        assert_eq!(StopCause::Runner.outcome().1, "");
    }
}
