//! Executors: what runs a task. The shim API drives an [`Executor`] (task lifecycle); the
//! runner API drives a [`JobRunner`] (the job inside the task).
//!
//! Only the [`process::ProcessExecutor`] exists today: with no container engine, a task is a
//! directory under the agent home and its job runs as a supervised process group on the host,
//! so one object implements both traits. A Docker executor (bollard) would implement
//! [`Executor`] alone and start dstack's runner (or this agent's runner API) inside the
//! container; it is not implemented.

pub mod clock;
pub mod env;
pub mod logs;
pub mod pgroup;
pub mod process;
pub mod record;

use std::future::Future;

use serde::{Deserialize, Serialize};

use super::error::AgentResult;
use super::host::GpuInfo;
use super::protocol::{
    JobInfoResponse, PullResponse, SubmitBody, TaskConfig, TaskInfo, TaskListItem, TerminateRequest,
};

pub use process::{AttachSettings, ProcessExecutor, ProcessExecutorConfig, TaskRunner};

/// One read of the job's raw terminal output for `GET /logs_ws`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WsLogsPage {
    /// Output chunks newer than the asked timestamp, oldest first (raw bytes).
    pub events: Vec<crate::agent::protocol::LogEvent>,
    /// The job has ended and these are its last chunks: nothing newer will come.
    pub complete: bool,
}

/// The runner's state machine: `wait_submit → wait_run → serve_logs → wait_logs_finished`.
///
/// * `POST /api/submit` is accepted in `wait_submit` (and again in `wait_run`), else 409.
/// * Uploads and `POST /api/run` are accepted in `wait_run` only, else 409.
/// * `serve_logs` lasts while the job runs; `wait_logs_finished` once it ended (or was stopped
///   before it started): a `pull` in this state that returns everything ends the job's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    /// Waiting for `POST /api/submit`.
    #[default]
    WaitSubmit,
    /// Submitted; waiting for uploads and `POST /api/run`.
    WaitRun,
    /// The job runs; logs are served.
    ServeLogs,
    /// The job ended; waiting for the final pull.
    WaitLogsFinished,
}

impl RunnerState {
    /// The Go runner's name for the state, e.g. `wait_run`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::WaitSubmit => "wait_submit",
            RunnerState::WaitRun => "wait_run",
            RunnerState::ServeLogs => "serve_logs",
            RunnerState::WaitLogsFinished => "wait_logs_finished",
        }
    }

    /// Whether `POST /api/submit` is accepted.
    pub fn accepts_submit(self) -> bool {
        matches!(self, RunnerState::WaitSubmit | RunnerState::WaitRun)
    }

    /// Whether uploads and `POST /api/run` are accepted.
    pub fn accepts_run(self) -> bool {
        self == RunnerState::WaitRun
    }
}

/// The task lifecycle behind the shim API.
pub trait Executor: Send + Sync + 'static {
    /// `POST /api/tasks`: registers the task and starts preparing it. 409 if the id exists.
    fn submit_task(&self, config: TaskConfig)
    -> impl Future<Output = AgentResult<TaskInfo>> + Send;

    /// `GET /api/tasks/{id}`. 404 if unknown.
    fn task_info(&self, id: &str) -> AgentResult<TaskInfo>;

    /// `GET /api/tasks`, in submission order.
    fn list_tasks(&self) -> Vec<TaskListItem>;

    /// `POST /api/tasks/{id}/terminate`: stops whatever runs (polite signal, then a kill after
    /// `timeout` seconds) and marks the task terminated. Idempotent; the first recorded
    /// termination reason wins.
    fn terminate_task(
        &self,
        id: &str,
        request: TerminateRequest,
    ) -> impl Future<Output = AgentResult<TaskInfo>> + Send;

    /// `POST /api/tasks/{id}/remove`: deletes a terminated task and its files. 409 unless
    /// terminated.
    fn remove_task(&self, id: &str) -> impl Future<Output = AgentResult<()>> + Send;

    /// The host's accelerators, detected at startup.
    fn gpus(&self) -> &[GpuInfo];
}

/// The job behind the runner API (one job at a time: the newest task's).
pub trait JobRunner: Send + Sync + 'static {
    /// `POST /api/submit`.
    fn submit_job(&self, body: SubmitBody) -> AgentResult<()>;

    /// `POST /api/upload_archive`: stores a file archive for `file_archives`.
    fn upload_archive(&self, archive_id: &str, data: &[u8]) -> AgentResult<()>;

    /// `POST /api/upload_code`: stores the repo code blob.
    fn upload_code(&self, data: &[u8]) -> AgentResult<()>;

    /// `POST /api/run`: starts the job. `Ok(None)` when the job failed before starting (its
    /// state says why); the API then answers 200 without a body, as dstack's runner does.
    fn run_job(&self) -> AgentResult<Option<JobInfoResponse>>;

    /// `GET /api/pull?timestamp=`: job states and logs newer than `after`.
    fn pull(&self, after: i64) -> AgentResult<PullResponse>;

    /// `POST /api/stop`: stops the job (polite signal, then a kill after the grace period).
    fn stop_job(&self) -> AgentResult<()>;

    /// `GET /logs_ws`: the job's raw terminal output newer than `after` (ms timestamps).
    fn ws_logs(&self, after: i64) -> AgentResult<WsLogsPage>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_state_machine() {
        assert!(RunnerState::WaitSubmit.accepts_submit());
        assert!(RunnerState::WaitRun.accepts_submit());
        assert!(!RunnerState::ServeLogs.accepts_submit());
        assert!(!RunnerState::WaitSubmit.accepts_run());
        assert!(RunnerState::WaitRun.accepts_run());
        assert!(!RunnerState::WaitLogsFinished.accepts_run());
        assert_eq!(
            serde_json::to_string(&RunnerState::WaitLogsFinished).unwrap(),
            "\"wait_logs_finished\""
        );
    }
}
