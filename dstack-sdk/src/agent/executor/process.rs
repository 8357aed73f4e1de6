//! The process executor: used when no container engine is available.
//!
//! A task is a directory `<home>/tasks/<id>/`; its job is the job spec's `commands` run as
//! given (e.g. `["/bin/bash", "-i", "-c", "<joined commands>"]`) in a process group of its own,
//! with the job's environment plus the `DSTACK_*` variables. Output goes to `job.out` and is
//! cut into line chunks with strictly increasing millisecond timestamps; job states, logs and
//! the task's state are persisted (`task.json`, `*_logs.jsonl`), so an agent restart loses
//! nothing and a running job is picked up again.
//!
//! The job runs on a pseudo-terminal, as under dstack's runner: its stdout and stderr are one
//! stream (with `\n` line ends: see [`pgroup`]), and interactive shells (`bash -i`) get job
//! control. `pull`
//! hands out that output with ANSI escapes removed; `GET /logs_ws` streams it raw.
//!
//! With [`ProcessExecutor::enable_attach`], each task submitted through the shim API gets an
//! SSH endpoint ([`crate::agent::sshd`]) and its `host_ssh_keys` are added to the host user's
//! `authorized_keys` ([`crate::agent::authorized_keys`]). `POST /api/tasks/{id}/remove`
//! answers at once, but the endpoint, the keys and the task's files stay until the job ended at
//! least `attach_linger` ago, so a CLI attaching late still gets the logs.
//!
//! Layout of a task directory:
//!
//! | file | what |
//! |---|---|
//! | `task.json` | [`TaskRecord`] (statuses, job states, process, stop) |
//! | `submit.json` | the runner submit body (0600: it may hold credentials) |
//! | `job.out` | raw stdout+stderr of the job |
//! | `exit_status` | written by the wrapper when the commands exit |
//! | `job_logs.jsonl`, `runner_logs.jsonl` | the events `pull` hands out |
//! | `job_ws_logs.jsonl` | the raw terminal output `GET /logs_ws` streams |
//! | `code.blob`, `file_archives/` | uploads |
//! | `work/` | the default working directory |

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use nix::sys::signal::Signal;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use super::clock::{MonotonicClock, now_ms};
use super::env::{JobPaths, dstack_env, expand_path, layer_env, mpi_hostfile, visible_devices};
use super::logs::{LineAssembler, LogStream, strip_ansi};
use super::pgroup::{self, SpawnSpec};
use super::record::{
    ProcessRecord, REASON_CONTAINER_EXITED_WITH_ERROR, REASON_DONE_BY_RUNNER,
    REASON_EXECUTOR_ERROR, RunnerRecord, StopCause, StopRecord, TaskRecord,
};
use super::{Executor, JobRunner, RunnerState, WsLogsPage};
use crate::agent::authorized_keys;
use crate::agent::error::{AgentError, AgentResult};
use crate::agent::fsutil;
use crate::agent::host::GpuInfo;
use crate::agent::protocol::{
    FileArchive, JobInfoResponse, JobState, JobStateEvent, LogEvent, PortMapping, PullResponse,
    SubmitBody, TaskConfig, TaskInfo, TaskListItem, TaskStatus, TerminateRequest,
};
use crate::agent::sshd::{SessionEnv, SshEndpoint};

const TASKS_DIR: &str = "tasks";
const TASK_FILE: &str = "task.json";
const SUBMIT_FILE: &str = "submit.json";
const OUTPUT_FILE: &str = "job.out";
const EXIT_FILE: &str = "exit_status";
const JOB_LOGS_FILE: &str = "job_logs.jsonl";
const RUNNER_LOGS_FILE: &str = "runner_logs.jsonl";
const WS_LOGS_FILE: &str = "job_ws_logs.jsonl";
const CODE_FILE: &str = "code.blob";
const ARCHIVES_DIR: &str = "file_archives";
const WORK_DIR: &str = "work";

/// Tunables of the process executor.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProcessExecutorConfig {
    /// How often a running job's output and process are checked.
    pub poll_interval: Duration,
    /// SIGTERM → SIGKILL delay for `POST /api/stop` and `max_duration` (dstack: 10 s).
    pub runner_stop_grace: Duration,
    /// How long a finished job waits for its final pull before its task counts as
    /// terminated anyway (dstack: 5 min).
    pub logs_wait: Duration,
    /// At most this many log bytes per pull answer (the rest comes with `has_more`).
    pub max_pull_bytes: usize,
    /// Log bytes kept in memory per stream (older ones are read from disk).
    pub memory_log_bytes: usize,
    /// An unfinished output line is emitted after waiting this long.
    pub line_flush_delay: Duration,
    /// An unfinished output line is emitted once it is this long.
    pub max_line_bytes: usize,
    /// Time limit for unpacking the code and file archives.
    pub setup_timeout: Duration,
}

impl Default for ProcessExecutorConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(100),
            runner_stop_grace: Duration::from_secs(10),
            logs_wait: Duration::from_secs(300),
            max_pull_bytes: 4 << 20,
            memory_log_bytes: 8 << 20,
            line_flush_delay: Duration::from_millis(500),
            max_line_bytes: 32 << 10,
            setup_timeout: Duration::from_secs(600),
        }
    }
}

/// What the per-task SSH endpoints need (see [`ProcessExecutor::enable_attach`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct AttachSettings {
    /// The russh server configuration (host key, auth methods).
    pub ssh_config: Arc<russh::server::Config>,
    /// The address endpoints listen on (loopback).
    pub bind: std::net::IpAddr,
    /// The port tried first (10022; 0: always a free one).
    pub preferred_port: u16,
    /// How long after its job ended a removed task keeps its endpoint, host keys and logs.
    pub linger: Duration,
    /// The version the task's runner API reports.
    pub version: String,
    /// The largest upload the task's runner API accepts.
    pub max_upload_bytes: usize,
}

impl AttachSettings {
    /// Settings with the given server configuration, port 10022 on loopback, a 60 s linger.
    pub fn new(ssh_config: Arc<russh::server::Config>) -> Self {
        Self {
            ssh_config,
            bind: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            preferred_port: crate::agent::sshd::CONTAINER_SSH_PORT,
            linger: Duration::from_secs(60),
            version: crate::DSTACK_VERSION.to_string(),
            max_upload_bytes: 1 << 30,
        }
    }
}

impl std::fmt::Debug for AttachSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachSettings")
            .field("bind", &self.bind)
            .field("preferred_port", &self.preferred_port)
            .field("linger", &self.linger)
            .finish()
    }
}

/// Runs tasks as process groups on the host; implements both [`Executor`] and [`JobRunner`].
/// Cheap to clone.
#[derive(Clone)]
pub struct ProcessExecutor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcessExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessExecutor")
            .field("home", &self.inner.home)
            .field("tasks", &lock(&self.inner.tasks).len())
            .finish()
    }
}

struct Inner {
    home: PathBuf,
    tasks_dir: PathBuf,
    config: ProcessExecutorConfig,
    gpus: Vec<GpuInfo>,
    tasks: Mutex<BTreeMap<String, Arc<Task>>>,
    /// Removed tasks whose teardown waits for the attach linger.
    lingering: Mutex<BTreeMap<String, Arc<Task>>>,
    attach: OnceLock<AttachSettings>,
    seq: AtomicU64,
    background: Mutex<Vec<AbortHandle>>,
}

struct Task {
    id: String,
    dir: PathBuf,
    state: Mutex<TaskState>,
    /// Wakes the supervisor (a stop was requested).
    wake: Notify,
    /// `true` once the job ended (or will never start).
    finished: watch::Sender<bool>,
    supervisor: Mutex<Option<AbortHandle>>,
    /// The task's SSH endpoint (dropped on teardown).
    endpoint: Mutex<Option<SshEndpoint>>,
}

struct TaskState {
    record: TaskRecord,
    submit: Option<SubmitBody>,
    clock: MonotonicClock,
    job_logs: LogStream,
    runner_logs: LogStream,
    /// Raw terminal output for `GET /logs_ws`.
    ws_logs: LogStream,
    /// The SSH endpoint's port, once started.
    ssh_port: Option<u16>,
    /// The job's environment and working directory (for SSH sessions), once it started.
    session_env: Option<SessionEnv>,
}

/// Everything needed to start a job, resolved by `POST /api/run`.
#[derive(Debug, Clone)]
struct PreparedJob {
    argv: Vec<String>,
    env: IndexMap<String, String>,
    working_dir: PathBuf,
    repo_dir: String,
    home: String,
    credentials: Option<(u32, u32)>,
    max_duration: Option<i64>,
    log_quota_hour: Option<i64>,
    repo_type: String,
    repo_exists_action: Option<String>,
    file_archives: Vec<FileArchive>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn valid_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Task {
    fn new(id: String, dir: PathBuf, state: TaskState, finished: bool) -> Arc<Self> {
        let (tx, _) = watch::channel(finished);
        Arc::new(Self {
            id,
            dir,
            state: Mutex::new(state),
            wake: Notify::new(),
            finished: tx,
            supervisor: Mutex::new(None),
            endpoint: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TaskState> {
        lock(&self.state)
    }

    fn save(&self, st: &TaskState) -> AgentResult<()> {
        let body =
            serde_json::to_vec_pretty(&st.record).map_err(|e| AgentError::json("task.json", e))?;
        fsutil::write_atomic(&self.dir.join(TASK_FILE), &body)
    }

    /// Saves, logging instead of failing (used where the in-memory state already changed).
    fn save_or_log(&self, st: &TaskState) {
        if let Err(e) = self.save(st) {
            tracing::error!(task = %self.id, error = %e, "cannot persist task state");
        }
    }
}

impl TaskState {
    fn push_state(
        &mut self,
        state: JobState,
        reason: &str,
        message: &str,
        exit_status: Option<i32>,
    ) {
        let timestamp = self.clock.tick();
        self.record.runner.job_states.push(JobStateEvent {
            state,
            timestamp,
            termination_reason: reason.to_string(),
            termination_message: message.to_string(),
            exit_status,
        });
        let exit = exit_status
            .map(|c| format!(", exit status {c}"))
            .unwrap_or_default();
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason}: {message})")
        };
        self.runner_log(&format!(
            "Job state changed to {}{why}{exit}",
            state.as_str()
        ));
    }

    fn runner_log(&mut self, message: &str) {
        let timestamp = self.clock.tick();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let line = format!("{now} {message}\n");
        let event = LogEvent {
            message: line.into_bytes(),
            timestamp,
        };
        if let Err(e) = self.runner_logs.append(vec![event], None) {
            tracing::warn!(error = %e, "cannot write runner log");
        }
    }

    fn info(&self, id: &str) -> TaskInfo {
        let r = &self.record;
        TaskInfo {
            id: id.to_string(),
            status: r.status,
            termination_reason: r.termination_reason.clone(),
            termination_message: r.termination_message.clone(),
            ports: matches!(r.status, TaskStatus::Running | TaskStatus::Terminated).then(|| {
                self.ssh_port
                    .map(|host| PortMapping {
                        host,
                        container: crate::agent::sshd::CONTAINER_SSH_PORT,
                    })
                    .into_iter()
                    .collect()
            }),
            image_pull_progress: None,
            container_name: r.config.name.clone(),
            container_id: String::new(),
            gpus_ids: Some(r.gpu_ids.clone()),
        }
    }

    fn mark_terminated(&mut self, reason: &str, message: &str) {
        if self.record.status != TaskStatus::Terminated {
            self.record.status = TaskStatus::Terminated;
            self.record.termination_reason = reason.to_string();
            self.record.termination_message = message.to_string();
        } else if self.record.termination_reason.is_empty() {
            // The server always terminates, even terminated tasks: keep the first reason.
            self.record.termination_reason = reason.to_string();
            self.record.termination_message = message.to_string();
        }
    }
}

impl ProcessExecutor {
    /// Opens the executor over `home` (creating `home/tasks`), restores the tasks a previous
    /// agent left there and resumes supervising their running jobs. Needs a Tokio runtime.
    #[tracing::instrument(level = "info", skip(gpus, config))]
    pub async fn open(
        home: &Path,
        gpus: Vec<GpuInfo>,
        config: ProcessExecutorConfig,
    ) -> AgentResult<Self> {
        let tasks_dir = home.join(TASKS_DIR);
        fsutil::create_dir_all(&tasks_dir)?;
        let inner = Arc::new(Inner {
            home: home.to_path_buf(),
            tasks_dir,
            config,
            gpus,
            tasks: Mutex::new(BTreeMap::new()),
            lingering: Mutex::new(BTreeMap::new()),
            attach: OnceLock::new(),
            seq: AtomicU64::new(1),
            background: Mutex::new(Vec::new()),
        });
        let executor = Self { inner };
        executor.restore()?;
        Ok(executor)
    }

    /// The agent home.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// Stops supervising (for an agent shutdown or restart): background work is cancelled,
    /// while the jobs' processes keep running and are picked up by the next agent.
    pub fn shutdown(&self) {
        for handle in lock(&self.inner.background).drain(..) {
            handle.abort();
        }
        // SSH endpoints close too (a restarted agent opens them again); lingering tasks are
        // torn down by the next agent.
        let tasks: Vec<Arc<Task>> = lock(&self.inner.tasks)
            .values()
            .chain(lock(&self.inner.lingering).values())
            .cloned()
            .collect();
        for task in tasks {
            drop(lock(&task.endpoint).take());
        }
    }

    /// Turns on the per-task SSH endpoints and host access keys' teardown linger: every task
    /// submitted from now on (and every task already known) gets an SSH endpoint. Call once;
    /// later calls are ignored.
    pub fn enable_attach(&self, settings: AttachSettings) {
        if self.inner.attach.set(settings).is_err() {
            return;
        }
        let tasks: Vec<Arc<Task>> = lock(&self.inner.tasks).values().cloned().collect();
        for task in tasks {
            if let Err(e) = self.start_endpoint(&task) {
                tracing::error!(task = %task.id, error = %e, "cannot start the task's SSH endpoint");
            }
        }
    }

    /// The SSH port of a task's endpoint, if it has one (lingering tasks included).
    pub fn ssh_port(&self, id: &str) -> Option<u16> {
        let task = lock(&self.inner.tasks)
            .get(id)
            .cloned()
            .or_else(|| lock(&self.inner.lingering).get(id).cloned())?;
        task.lock().ssh_port
    }

    /// A runner API view bound to one task (what its SSH endpoint serves on port 10999),
    /// unlike the executor's own [`JobRunner`] impl, which serves the newest task.
    pub fn task_runner(&self, id: &str) -> AgentResult<TaskRunner> {
        let task = lock(&self.inner.tasks)
            .get(id)
            .cloned()
            .or_else(|| lock(&self.inner.lingering).get(id).cloned())
            .ok_or_else(|| AgentError::NotFound(format!("task {id}: not found")))?;
        Ok(TaskRunner {
            executor: self.clone(),
            task,
        })
    }

    fn start_endpoint(&self, task: &Arc<Task>) -> AgentResult<()> {
        let Some(settings) = self.inner.attach.get() else {
            return Ok(());
        };
        let mut slot = lock(&task.endpoint);
        if slot.is_some() {
            return Ok(());
        }
        let runner = crate::agent::server::runner_router(
            Arc::new(TaskRunner {
                executor: self.clone(),
                task: task.clone(),
            }),
            settings.version.clone(),
            settings.max_upload_bytes,
        );
        let weak = Arc::downgrade(task);
        let fallback_dir = task.dir.join(WORK_DIR);
        let env: crate::agent::sshd::EnvProvider = Arc::new(move || {
            weak.upgrade()
                .and_then(|t| t.lock().session_env.clone())
                .unwrap_or_else(|| SessionEnv {
                    env: std::env::vars_os()
                        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                        .collect(),
                    cwd: fallback_dir.clone(),
                })
        });
        let allowed_keys = task.lock().record.config.container_ssh_keys.clone();
        let endpoint = crate::agent::sshd::start(
            settings.ssh_config.clone(),
            crate::agent::sshd::EndpointParams {
                task_id: task.id.clone(),
                allowed_keys,
                bind: settings.bind,
                preferred_port: settings.preferred_port,
                runner,
                env,
            },
        )?;
        task.lock().ssh_port = Some(endpoint.port());
        *slot = Some(endpoint);
        Ok(())
    }

    /// Schedules the teardown of a removed task: when its job ended at least the attach
    /// linger ago.
    fn schedule_teardown(&self, task: &Arc<Task>) {
        let linger = self
            .inner
            .attach
            .get()
            .map(|a| a.linger)
            .unwrap_or_default();
        let wait = {
            let st = task.lock();
            let now = now_ms();
            let ended = st.record.runner.finished_at_ms.unwrap_or(now).min(now);
            let since = u64::try_from(now - ended).unwrap_or(0);
            linger.saturating_sub(Duration::from_millis(since))
        };
        let executor = self.clone();
        let task = task.clone();
        self.spawn_bg(async move {
            tokio::time::sleep(wait).await;
            executor.teardown(&task);
        });
    }

    /// Ends a removed task for good: its SSH endpoint, the host keys it added and its files.
    #[tracing::instrument(level = "info", skip_all, fields(task = %task.id))]
    fn teardown(&self, task: &Arc<Task>) {
        {
            let mut lingering = lock(&self.inner.lingering);
            if lingering
                .get(&task.id)
                .is_some_and(|t| Arc::ptr_eq(t, task))
            {
                lingering.remove(&task.id);
            }
        }
        drop(lock(&task.endpoint).take());
        task.lock().ssh_port = None;
        self.release_host_keys(task);
        if let Err(e) = std::fs::remove_dir_all(&task.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(error = %e, "cannot remove the task directory");
            let trash = self
                .inner
                .tasks_dir
                .join(format!(".trash-{}-{}", task.id, now_ms()));
            if let Err(e) = std::fs::rename(&task.dir, &trash) {
                tracing::error!(error = %e, "cannot move the task directory away");
            }
        }
        tracing::info!("task torn down");
    }

    /// Removes the host keys this task added — except keys another task of this agent still
    /// wants, whose removal becomes that task's job.
    fn release_host_keys(&self, task: &Arc<Task>) {
        let Some(mine) = task.lock().record.host_keys.clone() else {
            return;
        };
        if mine.added.is_empty() {
            return;
        }
        let others: Vec<Arc<Task>> = {
            let tasks = lock(&self.inner.tasks);
            let lingering = lock(&self.inner.lingering);
            tasks
                .values()
                .chain(lingering.values())
                .filter(|t| !Arc::ptr_eq(t, task))
                .cloned()
                .collect()
        };
        let mut remove = Vec::new();
        'lines: for line in &mine.added {
            let Some(id) = authorized_keys::key_id(line) else {
                continue;
            };
            for other in &others {
                let mut st = other.lock();
                if let Some(theirs) = st.record.host_keys.as_mut()
                    && theirs.path == mine.path
                    && theirs.wanted.contains(&id)
                {
                    theirs.added.push(line.clone());
                    other.save_or_log(&st);
                    continue 'lines;
                }
            }
            remove.push(line.clone());
        }
        if let Err(e) = authorized_keys::remove_lines(&mine, &remove) {
            tracing::error!(error = %e, "cannot remove host access keys");
        }
        let mut st = task.lock();
        if let Some(k) = st.record.host_keys.as_mut() {
            k.added.clear();
        }
    }

    fn restore(&self) -> AgentResult<()> {
        let entries = std::fs::read_dir(&self.inner.tasks_dir)
            .map_err(|e| AgentError::io("cannot list tasks", &self.inner.tasks_dir, e))?;
        let mut max_seq = 0;
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(id) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            if !valid_name(&id) || !dir.join(TASK_FILE).exists() {
                continue;
            }
            match self.load_task(&id, &dir) {
                Ok(task) if task.lock().record.removed_at_ms.is_some() => {
                    // Removed before the agent stopped: its linger is over (torn down once
                    // every other task is known, which may still want its host keys).
                    removed.push(task);
                }
                Ok(task) => {
                    max_seq = max_seq.max(task.lock().record.seq);
                    lock(&self.inner.tasks).insert(id, task);
                }
                Err(e) => {
                    tracing::error!(task = %id, error = %e, "cannot restore task, skipping it")
                }
            }
        }
        for task in removed {
            self.teardown(&task);
        }
        self.inner.seq.store(max_seq + 1, Ordering::SeqCst);
        let tasks: Vec<Arc<Task>> = lock(&self.inner.tasks).values().cloned().collect();
        for task in tasks {
            self.resume(&task);
        }
        Ok(())
    }

    fn load_task(&self, id: &str, dir: &Path) -> AgentResult<Arc<Task>> {
        let path = dir.join(TASK_FILE);
        let text =
            std::fs::read(&path).map_err(|e| AgentError::io("cannot read task state", &path, e))?;
        let record: TaskRecord = serde_json::from_slice(&text)
            .map_err(|e| AgentError::json(path.display().to_string(), e))?;
        let submit_path = dir.join(SUBMIT_FILE);
        let submit = match std::fs::read(&submit_path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .map_err(|e| AgentError::json(submit_path.display().to_string(), e))?,
            ),
            Err(_) => None,
        };
        let mem = self.inner.config.memory_log_bytes;
        let job_logs = LogStream::open(dir.join(JOB_LOGS_FILE), mem)?;
        let runner_logs = LogStream::open(dir.join(RUNNER_LOGS_FILE), mem)?;
        let ws_logs = LogStream::open(dir.join(WS_LOGS_FILE), mem)?;
        let last = [
            ws_logs.last_timestamp(),
            record.runner.job_states.last().map(|s| s.timestamp),
            job_logs.last_timestamp(),
            runner_logs.last_timestamp(),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0);
        let finished = record.runner.state == RunnerState::WaitLogsFinished;
        let state = TaskState {
            record,
            submit,
            clock: MonotonicClock::starting_after(last),
            job_logs,
            runner_logs,
            ws_logs,
            ssh_port: None,
            session_env: None,
        };
        Ok(Task::new(
            id.to_string(),
            dir.to_path_buf(),
            state,
            finished,
        ))
    }

    /// Picks a restored task up where the previous agent left it.
    fn resume(&self, task: &Arc<Task>) {
        let mut st = task.lock();
        if !matches!(
            st.record.status,
            TaskStatus::Running | TaskStatus::Terminated
        ) {
            // Process-mode preparation is synchronous; a task caught in between is ready.
            st.record.status = TaskStatus::Running;
            st.record.config.registry_password.clear();
        }
        match (st.record.runner.state, st.record.runner.process) {
            (RunnerState::ServeLogs, Some(_)) => {
                st.runner_log("Agent restarted: resuming supervision of the job");
                task.save_or_log(&st);
                drop(st);
                tracing::info!(task = %task.id, "resuming a running job");
                let handle = self.spawn_bg(supervise(self.inner.clone(), task.clone(), None, None));
                *lock(&task.supervisor) = Some(handle);
            }
            (RunnerState::ServeLogs, None) => {
                st.push_state(
                    JobState::Failed,
                    REASON_EXECUTOR_ERROR,
                    "The agent restarted while the job was being set up",
                    None,
                );
                finish_locked(task, &mut st);
                drop(st);
                self.arm_logs_wait(task);
            }
            (RunnerState::WaitLogsFinished, _) => {
                let pending =
                    st.record.status == TaskStatus::Running && !st.record.runner.logs_pulled;
                drop(st);
                if pending {
                    self.arm_logs_wait(task);
                }
            }
            _ => {}
        }
    }

    fn spawn_bg<F>(&self, fut: F) -> AbortHandle
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(fut).abort_handle();
        let mut bg = lock(&self.inner.background);
        bg.retain(|h| !h.is_finished());
        bg.push(handle.clone());
        handle
    }

    /// After the job ended, the task counts as terminated (`done_by_runner`) once the final
    /// pull happened or `logs_wait` passed, as a dstack container exits with its runner.
    fn arm_logs_wait(&self, task: &Arc<Task>) {
        let task = task.clone();
        let wait = {
            let st = task.lock();
            let finished = st.record.runner.finished_at_ms.unwrap_or_else(now_ms);
            let elapsed = u64::try_from(now_ms() - finished).unwrap_or(0);
            self.inner
                .config
                .logs_wait
                .saturating_sub(Duration::from_millis(elapsed))
        };
        self.spawn_bg(async move {
            tokio::time::sleep(wait).await;
            let mut st = task.lock();
            if st.record.status == TaskStatus::Running {
                st.runner_log("No final pull within the logs wait period: the task is done");
                st.mark_terminated(REASON_DONE_BY_RUNNER, "");
                task.save_or_log(&st);
            }
        });
    }

    fn task(&self, id: &str) -> AgentResult<Arc<Task>> {
        lock(&self.inner.tasks)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("task {id}: not found")))
    }

    /// The task the runner API serves: the newest one.
    fn current(&self) -> Option<Arc<Task>> {
        let tasks = lock(&self.inner.tasks);
        tasks.values().max_by_key(|t| t.lock().record.seq).cloned()
    }

    fn create_task(&self, mut config: TaskConfig) -> AgentResult<Arc<Task>> {
        if !valid_name(&config.id) {
            return Err(AgentError::BadRequest(format!(
                "invalid id {:?}: use letters, digits, '-', '_' and '.'",
                config.id
            )));
        }
        let lingering = lock(&self.inner.lingering).remove(&config.id);
        if let Some(old) = lingering {
            // The same id again: the old task's linger ends now.
            self.teardown(&old);
        }
        let mut tasks = lock(&self.inner.tasks);
        if tasks.contains_key(&config.id) {
            return Err(AgentError::Conflict(format!(
                "request error: task {} is already submitted",
                config.id
            )));
        }
        let host_keys = if config.host_ssh_user.is_empty() || config.host_ssh_keys.is_empty() {
            None
        } else {
            Some(authorized_keys::add_keys(
                &config.host_ssh_user,
                &config.host_ssh_keys,
            )?)
        };
        let undo_keys = |keys: &Option<authorized_keys::HostKeysRecord>| {
            if let Some(k) = keys
                && let Err(e) = authorized_keys::remove_lines(k, &k.added)
            {
                tracing::error!(error = %e, "cannot remove host access keys");
            }
        };
        let dir = self.inner.tasks_dir.join(&config.id);
        if let Err(e) = fsutil::create_dir_all(&dir) {
            undo_keys(&host_keys);
            return Err(e);
        }
        let mem = self.inner.config.memory_log_bytes;
        // A leftover directory (e.g. a removal that failed half-way) is started afresh.
        for stale in [
            JOB_LOGS_FILE,
            RUNNER_LOGS_FILE,
            WS_LOGS_FILE,
            OUTPUT_FILE,
            EXIT_FILE,
            SUBMIT_FILE,
        ] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let gpu_ids = self.allocate_gpus(&tasks, config.gpu);
        config.registry_password.clear();
        if config.container_user.is_empty() {
            config.container_user = "root".into();
        }
        if config.network_mode.is_empty() {
            config.network_mode = crate::agent::protocol::shim::NETWORK_MODE_HOST.into();
        }
        let record = TaskRecord {
            seq: self.inner.seq.fetch_add(1, Ordering::SeqCst),
            config,
            status: TaskStatus::Running,
            termination_reason: String::new(),
            termination_message: String::new(),
            gpu_ids: Vec::new(),
            runner: RunnerRecord::default(),
            host_keys,
            removed_at_ms: None,
        };
        let opened = (|| -> AgentResult<_> {
            Ok((
                LogStream::open(dir.join(JOB_LOGS_FILE), mem)?,
                LogStream::open(dir.join(RUNNER_LOGS_FILE), mem)?,
                LogStream::open(dir.join(WS_LOGS_FILE), mem)?,
            ))
        })();
        let (job_logs, runner_logs, ws_logs) = match opened {
            Ok(x) => x,
            Err(e) => {
                undo_keys(&record.host_keys);
                return Err(e);
            }
        };
        let state = TaskState {
            record,
            submit: None,
            clock: MonotonicClock::default(),
            job_logs,
            runner_logs,
            ws_logs,
            ssh_port: None,
            session_env: None,
        };
        let id = state.record.config.id.clone();
        let task = Task::new(id.clone(), dir, state, false);
        {
            let mut st = task.lock();
            match gpu_ids {
                Ok(ids) => st.record.gpu_ids = ids,
                Err(msg) => {
                    st.runner_log(&msg);
                    st.mark_terminated(REASON_EXECUTOR_ERROR, &msg);
                    st.record.runner.state = RunnerState::WaitLogsFinished;
                    task.finished.send_replace(true);
                }
            }
            task.save(&st)?;
        }
        tasks.insert(id, task.clone());
        Ok(task)
    }

    /// Picks GPUs not held by other live tasks: `-1` all free ones, `N` exactly N.
    fn allocate_gpus(
        &self,
        tasks: &BTreeMap<String, Arc<Task>>,
        wanted: i64,
    ) -> Result<Vec<String>, String> {
        if wanted == 0 || self.inner.gpus.is_empty() {
            return Ok(Vec::new());
        }
        let busy: Vec<String> = tasks
            .values()
            .flat_map(|t| {
                let st = t.lock();
                if st.record.status == TaskStatus::Terminated {
                    Vec::new()
                } else {
                    st.record.gpu_ids.clone()
                }
            })
            .collect();
        let free: Vec<String> = self
            .inner
            .gpus
            .iter()
            .map(|g| {
                if g.id.is_empty() {
                    g.index.clone()
                } else {
                    g.id.clone()
                }
            })
            .filter(|id| !busy.contains(id))
            .collect();
        if wanted < 0 {
            return Ok(free);
        }
        let wanted = wanted as usize;
        if free.len() < wanted {
            return Err(format!(
                "not enough GPUs: {wanted} requested, {} free",
                free.len()
            ));
        }
        Ok(free.into_iter().take(wanted).collect())
    }

    /// The runner's task, created on the fly for a submit without a shim task (the runner
    /// API can then be used alone, as on container backends).
    fn runner_task_for_submit(
        &self,
        pinned: Option<&Arc<Task>>,
        body: &SubmitBody,
    ) -> AgentResult<Arc<Task>> {
        if let Some(task) = pinned.cloned().or_else(|| self.current()) {
            return Ok(task);
        }
        let id = if valid_name(&body.job_submission.id) {
            body.job_submission.id.clone()
        } else {
            format!("job-{}", now_ms())
        };
        let name = if body.run_spec().run_name.is_empty() {
            id.clone()
        } else {
            body.run_spec().run_name.clone()
        };
        self.create_task(TaskConfig::new(id, name, ""))
    }

    fn runner_task(&self, pinned: Option<&Arc<Task>>) -> AgentResult<Arc<Task>> {
        pinned
            .cloned()
            .or_else(|| self.current())
            .ok_or_else(|| AgentError::Conflict("no job submitted".into()))
    }

    fn prepare(
        &self,
        task: &Task,
        st: &mut TaskState,
        body: &SubmitBody,
    ) -> Result<PreparedJob, String> {
        let spec = &body.job_spec;
        if spec.commands.is_empty() {
            return Err("the job has no commands".into());
        }
        let (user, credentials) = resolve_user(spec.user.as_ref(), st)?;
        let home = user
            .as_ref()
            .map(|u| u.dir.display().to_string())
            .filter(|d| Path::new(d).is_dir());
        let home = home
            .or_else(|| std::env::var("HOME").ok())
            .unwrap_or_else(|| "/".into());
        let username = user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_else(current_username);

        let working_dir = match &spec.working_dir {
            Some(wd) => {
                let wd = expand_path(wd, None, &home)
                    .map_err(|e| format!("Failed to set job working dir ({e})"))?;
                if !wd.starts_with('/') {
                    return Err(format!(
                        "Failed to set job working dir (working dir must be absolute: {wd})"
                    ));
                }
                PathBuf::from(wd)
            }
            None => task.dir.join(WORK_DIR),
        };
        std::fs::create_dir_all(&working_dir).map_err(|e| {
            format!(
                "Failed to set job working dir ({}: {e})",
                working_dir.display()
            )
        })?;
        if let Some((uid, gid)) = credentials {
            let _ = std::os::unix::fs::chown(&working_dir, Some(uid), Some(gid));
            for f in [OUTPUT_FILE, EXIT_FILE] {
                let _ = std::fs::File::create(task.dir.join(f));
                let _ = std::os::unix::fs::chown(task.dir.join(f), Some(uid), Some(gid));
            }
            let _ = std::fs::remove_file(task.dir.join(EXIT_FILE));
            let _ = std::os::unix::fs::chown(&task.dir, Some(uid), Some(gid));
        }
        let working_dir_str = working_dir.display().to_string();
        let repo_dir = match &spec.repo_dir {
            Some(rd) => expand_path(rd, Some(&working_dir_str), &home)
                .map_err(|e| format!("Failed to set up the repo ({e})"))?,
            None => working_dir_str.clone(),
        };

        let cluster = body.cluster_info.clone().unwrap_or_default();
        let hostfile = task.dir.join("mpi").join("hostfile");
        let content = mpi_hostfile(
            &cluster.job_ips,
            &cluster.gpus_per_node,
            cluster.gpus_per_job,
        )
        .map_err(|e| format!("Failed to write the MPI hostfile ({e})"))?;
        fsutil::create_dir_all(hostfile.parent().unwrap_or(&task.dir))
            .map_err(|e| e.to_string())?;
        std::fs::write(&hostfile, content)
            .map_err(|e| format!("Failed to write the MPI hostfile ({e})"))?;

        let paths = JobPaths {
            repo_dir: repo_dir.clone(),
            working_dir: working_dir_str,
            mpi_hostfile: hostfile.display().to_string(),
        };
        let dstack = dstack_env(body, &paths);
        let vendor = self.inner.gpus.first().map(|g| g.vendor);
        let all_gpus = st.record.config.gpu < 0;
        let mut defaults: Vec<(String, String)> = vec![("PYTHONUNBUFFERED".into(), "1".into())];
        defaults.extend(visible_devices(
            vendor,
            &st.record.gpu_ids,
            all_gpus || st.record.gpu_ids.is_empty(),
        ));
        let defaults: Vec<(&str, &str)> = defaults
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let base = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let env = layer_env(base, &defaults, &dstack, body, Some(&home));

        st.record.runner.job_info = Some(JobInfoResponse {
            working_dir: paths.working_dir.clone(),
            username,
        });
        Ok(PreparedJob {
            argv: spec.commands.clone(),
            env,
            working_dir,
            repo_dir,
            home,
            credentials,
            max_duration: spec.max_duration.filter(|d| *d > 0),
            log_quota_hour: body.log_quota_hour.filter(|q| *q > 0),
            repo_type: body.repo_data().repo_type.clone(),
            repo_exists_action: spec.repo_exists_action.clone(),
            file_archives: spec.file_archives.clone(),
        })
    }

    /// Asks a running job to stop; the supervisor signals it. The first cause wins, a shorter
    /// grace period is honoured.
    fn request_stop(task: &Task, st: &mut TaskState, cause: StopCause, grace: Duration) {
        let grace_ms = grace.as_millis() as u64;
        match &mut st.record.runner.stop {
            Some(stop) => {
                if grace_ms < stop.grace_ms {
                    stop.grace_ms = grace_ms;
                }
            }
            None => {
                st.record.runner.stop = Some(StopRecord {
                    cause,
                    requested_at_ms: now_ms(),
                    grace_ms,
                    signalled_at_ms: None,
                    killed_at_ms: None,
                });
                st.push_state(JobState::Terminating, "", "", None);
            }
        }
        task.save_or_log(st);
        task.wake.notify_one();
    }
}

/// Marks the job ended (runner state `wait_logs_finished`) and wakes terminate waiters.
fn finish_locked(task: &Task, st: &mut TaskState) {
    st.record.runner.state = RunnerState::WaitLogsFinished;
    if st.record.runner.finished_at_ms.is_none() {
        st.record.runner.finished_at_ms = Some(now_ms());
    }
    task.save_or_log(st);
    task.finished.send_replace(true);
}

/// The job user (when one was asked for) and the `(uid, gid)` to switch to.
type ResolvedUser = (Option<nix::unistd::User>, Option<(u32, u32)>);

fn current_username() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| uid.to_string())
}

/// The job user, and the credentials to switch to it when that is possible (the agent runs
/// as root). Without root the job runs as the agent's user, as dstack's runner does without
/// the capabilities.
fn resolve_user(
    user: Option<&crate::agent::protocol::UnixUser>,
    st: &mut TaskState,
) -> Result<ResolvedUser, String> {
    let Some(spec) = user else {
        return Ok((None, None));
    };
    let found = if let Some(uid) = spec.uid {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(|e| format!("Failed to set job user ({e})"))?
    } else if let Some(name) = &spec.username {
        Some(
            nix::unistd::User::from_name(name)
                .map_err(|e| format!("Failed to set job user ({e})"))?
                .ok_or_else(|| format!("Failed to set job user (unknown user {name})"))?,
        )
    } else {
        return Err("Failed to set job user (neither uid nor username is set)".into());
    };
    let me = nix::unistd::geteuid();
    let uid = spec.uid.or(found.as_ref().map(|u| u.uid.as_raw()));
    let gid = spec
        .gid
        .or(found.as_ref().map(|u| u.gid.as_raw()))
        .unwrap_or(0);
    match uid {
        Some(uid) if uid == me.as_raw() => Ok((found, None)),
        Some(uid) if me.is_root() => Ok((found, Some((uid, gid)))),
        Some(uid) => {
            st.runner_log(&format!(
                "Cannot switch to uid {uid}: the agent does not run as root; running as {}",
                current_username()
            ));
            Ok((None, None))
        }
        None => Ok((found, None)),
    }
}

impl Executor for ProcessExecutor {
    #[tracing::instrument(level = "info", skip(self, config), fields(task = %config.id))]
    async fn submit_task(&self, config: TaskConfig) -> AgentResult<TaskInfo> {
        for (value, field) in [
            (&config.id, "id"),
            (&config.name, "name"),
            (&config.image_name, "image_name"),
        ] {
            if value.is_empty() {
                return Err(AgentError::BadRequest(format!("empty {field}")));
            }
        }
        let task = self.create_task(config)?;
        if let Err(e) = self.start_endpoint(&task) {
            tracing::error!(error = %e, "cannot start the task's SSH endpoint");
            lock(&self.inner.tasks).remove(&task.id);
            self.teardown(&task);
            return Err(e);
        }
        let mut st = task.lock();
        st.runner_log("Task submitted (process mode: no image is pulled)");
        Ok(st.info(&task.id))
    }

    fn task_info(&self, id: &str) -> AgentResult<TaskInfo> {
        let task = self.task(id)?;
        let st = task.lock();
        Ok(st.info(&task.id))
    }

    fn list_tasks(&self) -> Vec<TaskListItem> {
        let tasks: Vec<Arc<Task>> = lock(&self.inner.tasks).values().cloned().collect();
        let mut items: Vec<(u64, TaskListItem)> = tasks
            .iter()
            .map(|t| {
                let st = t.lock();
                (
                    st.record.seq,
                    TaskListItem {
                        id: t.id.clone(),
                        status: st.record.status,
                    },
                )
            })
            .collect();
        items.sort_by_key(|(seq, _)| *seq);
        items.into_iter().map(|(_, item)| item).collect()
    }

    #[tracing::instrument(level = "info", skip(self, request), fields(reason = %request.termination_reason, timeout = request.timeout))]
    async fn terminate_task(&self, id: &str, request: TerminateRequest) -> AgentResult<TaskInfo> {
        let task = self.task(id)?;
        let grace = Duration::from_secs(request.timeout);
        let pid = {
            let mut st = task.lock();
            match st.record.runner.state {
                RunnerState::WaitSubmit | RunnerState::WaitRun => finish_locked(&task, &mut st),
                RunnerState::ServeLogs => {
                    let cause = StopCause::Shim {
                        reason: request.termination_reason.clone(),
                        message: request.termination_message.clone(),
                    };
                    Self::request_stop(&task, &mut st, cause, grace);
                }
                RunnerState::WaitLogsFinished => {}
            }
            st.record.runner.process.map(|p| p.pid)
        };
        let mut finished = task.finished.subscribe();
        let limit = grace + Duration::from_secs(15);
        if tokio::time::timeout(limit, finished.wait_for(|f| *f))
            .await
            .is_err()
        {
            tracing::warn!(task = %id, "the job did not finish in time after termination");
        }
        // Processes the job left behind (background jobs) go with the task, as they would
        // with its container.
        if let Some(pid) = pid {
            kill_group(pid, grace).await;
        }
        let mut st = task.lock();
        st.mark_terminated(&request.termination_reason, &request.termination_message);
        task.save(&st)?;
        Ok(st.info(&task.id))
    }

    #[tracing::instrument(level = "info", skip(self))]
    async fn remove_task(&self, id: &str) -> AgentResult<()> {
        let task = self.task(id)?;
        let pid = {
            let st = task.lock();
            if st.record.status != TaskStatus::Terminated {
                return Err(AgentError::Conflict(format!(
                    "request error: cannot remove task {id} with {} status",
                    st.record.status
                )));
            }
            st.record.runner.process.map(|p| p.pid)
        };
        if let Some(pid) = pid {
            kill_group(pid, Duration::ZERO).await;
        }
        if let Some(handle) = lock(&task.supervisor).take() {
            handle.abort();
        }
        {
            let mut tasks = lock(&self.inner.tasks);
            if !tasks.get(id).is_some_and(|t| Arc::ptr_eq(t, &task)) {
                return Ok(());
            }
            tasks.remove(id);
        }
        {
            let mut st = task.lock();
            st.record.removed_at_ms = Some(now_ms());
            task.save_or_log(&st);
        }
        // The endpoint, host keys and files stay for the attach linger (answering now).
        lock(&self.inner.lingering).insert(id.to_string(), task.clone());
        self.schedule_teardown(&task);
        Ok(())
    }

    fn gpus(&self) -> &[GpuInfo] {
        &self.inner.gpus
    }
}

impl ProcessExecutor {
    #[tracing::instrument(level = "info", skip(self, pinned, body), fields(job = %body.job_submission.id))]
    fn submit_job_on(&self, pinned: Option<&Arc<Task>>, body: SubmitBody) -> AgentResult<()> {
        let task = self.runner_task_for_submit(pinned, &body)?;
        let mut st = task.lock();
        if st.record.status == TaskStatus::Terminated || !st.record.runner.state.accepts_submit() {
            return Err(AgentError::Conflict(format!(
                "Conflict: the runner is in state {}",
                st.record.runner.state.as_str()
            )));
        }
        if st.record.runner.state == RunnerState::WaitRun {
            tracing::warn!(task = %task.id, "job already submitted, submitting again");
        }
        let bytes = serde_json::to_vec(&body).map_err(|e| AgentError::json("submit body", e))?;
        fsutil::write_atomic(&task.dir.join(SUBMIT_FILE), &bytes)?;
        st.runner_log(&format!(
            "Job submitted: run {} ({}), job {}",
            body.run_spec().run_name,
            body.run.id,
            body.job_submission.id
        ));
        st.submit = Some(body);
        st.record.runner.state = RunnerState::WaitRun;
        task.save(&st)
    }

    fn upload_archive_on(
        &self,
        pinned: Option<&Arc<Task>>,
        archive_id: &str,
        data: &[u8],
    ) -> AgentResult<()> {
        if !valid_name(archive_id) {
            return Err(AgentError::BadRequest(format!(
                "invalid archive id {archive_id:?}"
            )));
        }
        let task = self.runner_task(pinned)?;
        let mut st = task.lock();
        if !st.record.runner.state.accepts_run() {
            return Err(AgentError::Conflict(format!(
                "Conflict: the runner is in state {}",
                st.record.runner.state.as_str()
            )));
        }
        let dir = task.dir.join(ARCHIVES_DIR);
        fsutil::create_dir_all(&dir)?;
        fsutil::write_atomic(&dir.join(archive_id), data)?;
        st.runner_log(&format!(
            "File archive {archive_id} uploaded ({} bytes)",
            data.len()
        ));
        Ok(())
    }

    fn upload_code_on(&self, pinned: Option<&Arc<Task>>, data: &[u8]) -> AgentResult<()> {
        let task = self.runner_task(pinned)?;
        let mut st = task.lock();
        if !st.record.runner.state.accepts_run() {
            return Err(AgentError::Conflict(format!(
                "Conflict: the runner is in state {}",
                st.record.runner.state.as_str()
            )));
        }
        fsutil::write_atomic(&task.dir.join(CODE_FILE), data)?;
        st.runner_log(&format!("Code uploaded ({} bytes)", data.len()));
        Ok(())
    }

    #[tracing::instrument(level = "info", skip(self, pinned))]
    fn run_job_on(&self, pinned: Option<&Arc<Task>>) -> AgentResult<Option<JobInfoResponse>> {
        let task = self.runner_task(pinned)?;
        let mut st = task.lock();
        if !st.record.runner.state.accepts_run() {
            return Err(AgentError::Conflict(format!(
                "Conflict: the runner is in state {}",
                st.record.runner.state.as_str()
            )));
        }
        let body = st
            .submit
            .clone()
            .ok_or_else(|| AgentError::Conflict("Conflict: no job submitted".into()))?;
        st.record.runner.state = RunnerState::ServeLogs;
        match self.prepare(&task, &mut st, &body) {
            Err(message) => {
                st.runner_log(&message);
                st.push_state(JobState::Failed, REASON_EXECUTOR_ERROR, &message, None);
                finish_locked(&task, &mut st);
                drop(st);
                self.arm_logs_wait(&task);
                Ok(None)
            }
            Ok(job) => {
                let info = st.record.runner.job_info.clone();
                st.runner_log(&format!(
                    "Run job: {:?} in {}",
                    job.argv,
                    job.working_dir.display()
                ));
                task.save(&st)?;
                drop(st);
                let handle = self.spawn_bg(start_job(self.clone(), task.clone(), job));
                *lock(&task.supervisor) = Some(handle);
                Ok(info)
            }
        }
    }

    fn pull_on(&self, pinned: Option<&Arc<Task>>, after: i64) -> AgentResult<PullResponse> {
        let Some(task) = pinned.cloned().or_else(|| self.current()) else {
            return Ok(PullResponse {
                last_updated: after.max(0),
                no_connections_secs: Some(0),
                has_more: Some(true),
                ..PullResponse::default()
            });
        };
        let mut st = task.lock();
        let latest = st.clock.latest();
        let max = self.inner.config.max_pull_bytes;
        let (job_logs, cut_job) = st.job_logs.since(after, latest, &mut max.clone())?;
        let (runner_logs, cut_runner) = st.runner_logs.since(after, latest, &mut max.clone())?;
        let (job_logs, runner_logs, cutoff) =
            page(job_logs, cut_job, runner_logs, cut_runner, latest, max);
        let job_states: Vec<JobStateEvent> = st
            .record
            .runner
            .job_states
            .iter()
            .filter(|s| s.timestamp > after && s.timestamp <= cutoff)
            .cloned()
            .collect();
        let complete = cutoff == latest;
        let finished = st.record.runner.state == RunnerState::WaitLogsFinished;
        if finished && complete && !st.record.runner.logs_pulled {
            st.record.runner.logs_pulled = true;
            if st.record.status == TaskStatus::Running {
                st.mark_terminated(REASON_DONE_BY_RUNNER, "");
            }
            task.save_or_log(&st);
        }
        Ok(PullResponse {
            job_states,
            job_logs,
            runner_logs,
            last_updated: cutoff,
            no_connections_secs: Some(0),
            has_more: Some(!(finished && complete)),
        })
    }

    #[tracing::instrument(level = "info", skip(self, pinned))]
    fn stop_job_on(&self, pinned: Option<&Arc<Task>>) -> AgentResult<()> {
        let Some(task) = pinned.cloned().or_else(|| self.current()) else {
            return Ok(());
        };
        let mut st = task.lock();
        match st.record.runner.state {
            RunnerState::WaitSubmit | RunnerState::WaitRun => {
                st.runner_log("Stop requested before the job started");
                finish_locked(&task, &mut st);
                drop(st);
                self.arm_logs_wait(&task);
            }
            RunnerState::ServeLogs => {
                st.runner_log("Stop requested");
                Self::request_stop(
                    &task,
                    &mut st,
                    StopCause::Runner,
                    self.inner.config.runner_stop_grace,
                );
            }
            RunnerState::WaitLogsFinished => {}
        }
        Ok(())
    }
}

/// A runner API bound to one task (see [`ProcessExecutor::task_runner`]).
#[derive(Clone)]
pub struct TaskRunner {
    executor: ProcessExecutor,
    task: Arc<Task>,
}

impl std::fmt::Debug for TaskRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskRunner")
            .field("task", &self.task.id)
            .finish()
    }
}

impl JobRunner for ProcessExecutor {
    fn submit_job(&self, body: SubmitBody) -> AgentResult<()> {
        self.submit_job_on(None, body)
    }
    fn upload_archive(&self, archive_id: &str, data: &[u8]) -> AgentResult<()> {
        self.upload_archive_on(None, archive_id, data)
    }
    fn upload_code(&self, data: &[u8]) -> AgentResult<()> {
        self.upload_code_on(None, data)
    }
    fn run_job(&self) -> AgentResult<Option<JobInfoResponse>> {
        self.run_job_on(None)
    }
    fn pull(&self, after: i64) -> AgentResult<PullResponse> {
        self.pull_on(None, after)
    }
    fn stop_job(&self) -> AgentResult<()> {
        self.stop_job_on(None)
    }
    fn ws_logs(&self, after: i64) -> AgentResult<WsLogsPage> {
        self.ws_logs_on(None, after)
    }
}

impl JobRunner for TaskRunner {
    fn submit_job(&self, body: SubmitBody) -> AgentResult<()> {
        self.executor.submit_job_on(Some(&self.task), body)
    }
    fn upload_archive(&self, archive_id: &str, data: &[u8]) -> AgentResult<()> {
        self.executor
            .upload_archive_on(Some(&self.task), archive_id, data)
    }
    fn upload_code(&self, data: &[u8]) -> AgentResult<()> {
        self.executor.upload_code_on(Some(&self.task), data)
    }
    fn run_job(&self) -> AgentResult<Option<JobInfoResponse>> {
        self.executor.run_job_on(Some(&self.task))
    }
    fn pull(&self, after: i64) -> AgentResult<PullResponse> {
        self.executor.pull_on(Some(&self.task), after)
    }
    fn stop_job(&self) -> AgentResult<()> {
        self.executor.stop_job_on(Some(&self.task))
    }
    fn ws_logs(&self, after: i64) -> AgentResult<WsLogsPage> {
        self.executor.ws_logs_on(Some(&self.task), after)
    }
}

impl ProcessExecutor {
    fn ws_logs_on(&self, pinned: Option<&Arc<Task>>, after: i64) -> AgentResult<WsLogsPage> {
        let Some(task) = pinned.cloned().or_else(|| self.current()) else {
            return Ok(WsLogsPage::default());
        };
        let st = task.lock();
        let finished = st.record.runner.state == RunnerState::WaitLogsFinished;
        let latest = st.clock.latest();
        let mut budget = self.inner.config.max_pull_bytes;
        let (events, cut) = st.ws_logs.since(after, latest, &mut budget)?;
        Ok(WsLogsPage {
            events,
            complete: finished && !cut,
        })
    }
}

/// Cuts one pull answer out of both log streams: events in timestamp order while `max` bytes
/// last (at least one), never past what a budget-limited stream left unread. Returns the
/// events and the newest timestamp the answer covers (`latest` when it holds everything).
fn page(
    job: Vec<LogEvent>,
    job_cut: bool,
    runner: Vec<LogEvent>,
    runner_cut: bool,
    latest: i64,
    max: usize,
) -> (Vec<LogEvent>, Vec<LogEvent>, i64) {
    let mut limit = latest;
    for (events, cut) in [(&job, job_cut), (&runner, runner_cut)] {
        if cut && let Some(last) = events.last() {
            limit = limit.min(last.timestamp);
        }
    }
    let mut merged: Vec<(i64, usize)> = job
        .iter()
        .chain(runner.iter())
        .map(|e| (e.timestamp, e.message.len()))
        .filter(|(t, _)| *t <= limit)
        .collect();
    merged.sort_unstable();
    let mut cutoff = limit;
    let mut used = 0usize;
    for (i, (_, len)) in merged.iter().enumerate() {
        if i > 0 && used + len > max {
            cutoff = merged[i - 1].0;
            break;
        }
        used += len;
    }
    let keep = |events: Vec<LogEvent>| -> Vec<LogEvent> {
        events
            .into_iter()
            .filter(|e| e.timestamp <= cutoff)
            .collect()
    };
    (keep(job), keep(runner), cutoff)
}

/// SIGTERM to the group, SIGKILL after `grace` if anything is left, then a short wait.
async fn kill_group(pgid: u32, grace: Duration) {
    if !pgroup::group_alive(pgid) {
        return;
    }
    tracing::info!(pgid, "signalling leftover processes of the task");
    let _ = pgroup::signal_group(pgid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pgroup::group_alive(pgid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pgroup::group_alive(pgid) {
        let _ = pgroup::signal_group(pgid, Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && pgroup::group_alive(pgid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sets up the repo and file archives, starts the process, then supervises it.
async fn start_job(executor: ProcessExecutor, task: Arc<Task>, job: PreparedJob) {
    if let Err((reason, message)) = setup(&executor, &task, &job).await {
        let mut st = task.lock();
        st.push_state(JobState::Failed, reason, &message, None);
        finish_locked(&task, &mut st);
        drop(st);
        executor.arm_logs_wait(&task);
        return;
    }
    let spawned = {
        let mut st = task.lock();
        if st.record.runner.stop.is_some() {
            let (state, reason, message) = st
                .record
                .runner
                .stop
                .as_ref()
                .map(|s| s.cause.outcome())
                .unwrap_or((JobState::Terminated, String::new(), String::new()));
            st.push_state(state, &reason, &message, None);
            finish_locked(&task, &mut st);
            None
        } else {
            let _ = std::fs::remove_file(task.dir.join(EXIT_FILE));
            let out = task.dir.join(OUTPUT_FILE);
            let exit = task.dir.join(EXIT_FILE);
            let spec = SpawnSpec {
                argv: &job.argv,
                env: &job.env,
                cwd: &job.working_dir,
                output: &out,
                exit_file: &exit,
                credentials: job.credentials,
            };
            st.session_env = Some(SessionEnv {
                env: job.env.clone(),
                cwd: job.working_dir.clone(),
            });
            match pgroup::spawn(&spec) {
                Ok(spawned) => {
                    let started = now_ms();
                    let pid = spawned.pid;
                    st.record.runner.process = Some(ProcessRecord {
                        pid,
                        start_time: pgroup::read_stat(pid).map(|s| s.start_time),
                        copier_pid: spawned.copier_pid,
                        copier_start_time: spawned
                            .copier_pid
                            .and_then(pgroup::read_stat)
                            .map(|s| s.start_time),
                        started_at_ms: started,
                        deadline_ms: job
                            .max_duration
                            .map(|d| started.saturating_add(d.saturating_mul(1000))),
                        log_quota_hour: job.log_quota_hour,
                    });
                    st.push_state(JobState::Running, "", "", None);
                    task.save_or_log(&st);
                    Some((spawned.child, spawned.copier))
                }
                Err(e) => {
                    st.push_state(
                        JobState::Failed,
                        REASON_EXECUTOR_ERROR,
                        &e.to_string(),
                        None,
                    );
                    finish_locked(&task, &mut st);
                    None
                }
            }
        }
    };
    match spawned {
        Some((child, copier)) => {
            supervise(executor.inner.clone(), task, Some(child), Some(copier)).await
        }
        None => executor.arm_logs_wait(&task),
    }
}

/// Unpacks the code (local and virtual repos) and the file archives.
async fn setup(
    executor: &ProcessExecutor,
    task: &Task,
    job: &PreparedJob,
) -> Result<(), (&'static str, String)> {
    let timeout = executor.inner.config.setup_timeout;
    let code = task.dir.join(CODE_FILE);
    let has_code = std::fs::metadata(&code)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if has_code {
        match job.repo_type.as_str() {
            "local" | "virtual" => {
                let repo_fail = |e: String| (REASON_CONTAINER_EXITED_WITH_ERROR, format!("Failed to set up the repo ({e})"));
                let dir = Path::new(&job.repo_dir);
                let non_empty = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
                if non_empty {
                    if job.repo_exists_action.as_deref() == Some("error") {
                        return Err(repo_fail(format!("repo dir is not empty: {}", job.repo_dir)));
                    }
                    task.lock().runner_log(&format!("Skipping repo checkout: repo dir is not empty: {}", job.repo_dir));
                } else {
                    std::fs::create_dir_all(dir).map_err(|e| repo_fail(e.to_string()))?;
                    let args = vec!["-xf".into(), code.display().to_string(), "-C".into(), job.repo_dir.clone()];
                    run_tar(&args, job.credentials, timeout).await.map_err(repo_fail)?;
                    task.lock().runner_log(&format!("Code extracted into {}", job.repo_dir));
                }
            }
            other => task.lock().runner_log(&format!(
                "Repos of type {other:?} are not checked out by the process executor; the job runs without the code"
            )),
        }
    }
    for fa in &job.file_archives {
        let fail = |e: String| {
            (
                REASON_EXECUTOR_ERROR,
                format!("Failed to set up files ({e})"),
            )
        };
        let archive = task.dir.join(ARCHIVES_DIR).join(&fa.id);
        if !valid_name(&fa.id) || !archive.exists() {
            return Err(fail(format!("file archive {} was not uploaded", fa.id)));
        }
        let dest = expand_path(
            &fa.path,
            Some(&job.working_dir.display().to_string()),
            &job.home,
        )
        .map_err(fail)?;
        let dest = Path::new(&dest);
        let (Some(parent), Some(name)) = (dest.parent(), dest.file_name().and_then(|n| n.to_str()))
        else {
            return Err(fail(format!("invalid destination {}", fa.path)));
        };
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
        let _ = std::fs::remove_dir_all(dest).or_else(|_| std::fs::remove_file(dest));
        // The archive holds one top-level entry, unpacked under the destination's name.
        let delim = [',', '|', '#', '@', '%', ':', ';']
            .into_iter()
            .find(|c| !name.contains(*c))
            .unwrap_or(',');
        let replacement = name.replace('\\', "\\\\").replace('&', "\\&");
        let args = vec![
            "-xf".into(),
            archive.display().to_string(),
            "-C".into(),
            parent.display().to_string(),
            format!("--transform=s{delim}^[^/]*{delim}{replacement}{delim}"),
        ];
        run_tar(&args, job.credentials, timeout)
            .await
            .map_err(fail)?;
        task.lock().runner_log(&format!(
            "File archive {} extracted into {}",
            fa.id,
            dest.display()
        ));
    }
    Ok(())
}

async fn run_tar(
    args: &[String],
    credentials: Option<(u32, u32)>,
    timeout: Duration,
) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("tar");
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some((uid, gid)) = credentials {
        cmd.uid(uid).gid(gid);
    }
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "tar: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!("cannot run tar: {e}")),
        Err(_) => Err("tar timed out".into()),
    }
}

/// Reads what the job wrote past `offset` (at most `max` bytes).
fn read_output(path: &Path, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Per-job capture state of the supervisor.
struct Capture {
    path: PathBuf,
    /// Bytes read from the output file.
    read_to: u64,
    /// Bytes of the output file already in the raw (`/logs_ws`) stream.
    ws_to: u64,
    assembler: LineAssembler,
    quota: Option<(i64, i64, u64, u64)>, // (quota, started_at_ms, hour, bytes in hour)
    over_quota: bool,
}

impl Capture {
    /// Moves new output into the job log (`drain`: everything, including an unfinished line).
    fn pump(&mut self, task: &Task, drain: bool) {
        const CHUNK: usize = 1 << 20;
        loop {
            let data = match read_output(&self.path, self.read_to, CHUNK) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(task = %task.id, error = %e, "cannot read job output");
                    Vec::new()
                }
            };
            let now = Instant::now();
            let start = self.read_to;
            self.read_to += data.len() as u64;
            if self.read_to > self.ws_to {
                let skip = usize::try_from(self.ws_to.saturating_sub(start)).unwrap_or(0);
                let raw = data.get(skip..).unwrap_or_default().to_vec();
                self.ws_to = self.read_to;
                let mut st = task.lock();
                let timestamp = st.clock.tick();
                let event = LogEvent {
                    message: raw,
                    timestamp,
                };
                if let Err(e) = st.ws_logs.append(vec![event], Some(self.ws_to)) {
                    tracing::error!(task = %task.id, error = %e, "cannot persist raw job output");
                }
            }
            let mut chunks = self.assembler.push(&data, now);
            let more = data.len() == CHUNK;
            if drain && !more {
                chunks.extend(self.assembler.flush());
            } else {
                chunks.extend(self.assembler.flush_stale(now));
            }
            if !chunks.is_empty() {
                self.emit(task, chunks);
            }
            if !more {
                break;
            }
        }
    }

    fn emit(&mut self, task: &Task, chunks: Vec<Vec<u8>>) {
        let offset = self.read_to - self.assembler.pending_len() as u64;
        let mut st = task.lock();
        let mut events = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            if self.over_quota {
                break;
            }
            if let Some((quota, started, hour, bytes)) = self.quota.as_mut() {
                let h = u64::try_from((now_ms() - *started) / 3_600_000).unwrap_or(0);
                if h != *hour {
                    *hour = h;
                    *bytes = 0;
                }
                if (*bytes + chunk.len() as u64) as i64 > *quota {
                    self.over_quota = true;
                    break;
                }
                *bytes += chunk.len() as u64;
            }
            let message = strip_ansi(&chunk);
            if message.is_empty() {
                continue;
            }
            let timestamp = st.clock.tick();
            events.push(LogEvent { message, timestamp });
        }
        if events.is_empty() {
            return;
        }
        if let Err(e) = st.job_logs.append(events, Some(offset)) {
            tracing::error!(task = %task.id, error = %e, "cannot persist job logs");
        }
    }
}

/// Watches a running job: captures output, enforces `max_duration` and the log quota,
/// carries out stops (SIGTERM, then SIGKILL after the grace period) and records how it ended.
/// `child` is the process handle when this agent started the job; a restarted agent passes
/// `None` and tells from `/proc` and the wrapper's exit file.
#[tracing::instrument(level = "debug", skip_all, fields(task = %task.id))]
async fn supervise(
    inner: Arc<Inner>,
    task: Arc<Task>,
    mut child: Option<std::process::Child>,
    mut copier: Option<tokio::process::Child>,
) {
    let (process, offset, ws_offset) = {
        let st = task.lock();
        (
            st.record.runner.process,
            st.job_logs.last_offset(),
            st.ws_logs.last_offset(),
        )
    };
    let Some(process) = process else { return };
    let mut capture = Capture {
        path: task.dir.join(OUTPUT_FILE),
        read_to: offset,
        ws_to: ws_offset,
        assembler: LineAssembler::new(inner.config.line_flush_delay, inner.config.max_line_bytes),
        quota: process
            .log_quota_hour
            .map(|q| (q, process.started_at_ms, 0, 0)),
        over_quota: false,
    };
    let exit_file = task.dir.join(EXIT_FILE);
    let mut exited: Option<Option<i32>> = None;
    loop {
        capture.pump(&task, false);

        if exited.is_none() {
            match child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => {
                    exited = Some(
                        pgroup::read_exit_file(&exit_file).or_else(|| pgroup::exit_code(status)),
                    );
                }
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot wait for the job; watching /proc instead");
                    child = None;
                }
                None => {
                    if !pgroup::process_alive(process.pid, process.start_time) {
                        exited = Some(pgroup::read_exit_file(&exit_file));
                    }
                }
            }
        }

        let now = now_ms();
        {
            let mut st = task.lock();
            if st.record.runner.stop.is_none() && exited.is_none() {
                if capture.over_quota {
                    let quota = process.log_quota_hour.unwrap_or_default();
                    st.runner_log(&format!("Log quota of {quota} bytes per hour exceeded"));
                    ProcessExecutor::request_stop(
                        &task,
                        &mut st,
                        StopCause::LogQuota { quota },
                        Duration::ZERO,
                    );
                } else if process.deadline_ms.is_some_and(|d| now >= d) {
                    st.runner_log("Max duration exceeded");
                    let grace = inner.config.runner_stop_grace;
                    ProcessExecutor::request_stop(&task, &mut st, StopCause::MaxDuration, grace);
                }
            }
            if let Some(stop) = st.record.runner.stop.clone() {
                let mut changed = false;
                if stop.signalled_at_ms.is_none() {
                    st.runner_log("Sending SIGTERM to the job's process group");
                    if let Err(e) = pgroup::signal_group(process.pid, Signal::SIGTERM) {
                        tracing::warn!(error = %e, "cannot signal the job");
                    }
                    if let Some(s) = st.record.runner.stop.as_mut() {
                        s.signalled_at_ms = Some(now);
                    }
                    changed = true;
                }
                let signalled = st
                    .record
                    .runner
                    .stop
                    .as_ref()
                    .and_then(|s| s.signalled_at_ms)
                    .unwrap_or(now);
                if stop.killed_at_ms.is_none()
                    && now >= signalled + stop.grace_ms as i64
                    && pgroup::group_alive(process.pid)
                {
                    st.runner_log("Grace period over: sending SIGKILL to the job's process group");
                    if let Err(e) = pgroup::signal_group(process.pid, Signal::SIGKILL) {
                        tracing::warn!(error = %e, "cannot kill the job");
                    }
                    if let Some(s) = st.record.runner.stop.as_mut() {
                        s.killed_at_ms = Some(now);
                    }
                    changed = true;
                }
                if changed {
                    task.save_or_log(&st);
                }
            }
        }

        if let Some(code) = exited {
            let stop = task.lock().record.runner.stop.clone();
            let done = match &stop {
                None => true,
                // A stopped job is over when its whole group is gone (or long after SIGKILL).
                Some(s) => {
                    !pgroup::group_alive(process.pid)
                        || s.killed_at_ms.is_some_and(|k| now_ms() - k > 5_000)
                }
            };
            if done {
                // The copier exits once the terminal is closed by every process of the job.
                let deadline = Instant::now() + Duration::from_secs(3);
                match copier.as_mut() {
                    Some(c) => {
                        let _ = tokio::time::timeout_at(deadline.into(), c.wait()).await;
                    }
                    None => {
                        while Instant::now() < deadline
                            && process.copier_pid.is_some_and(|p| {
                                pgroup::process_alive(p, process.copier_start_time)
                            })
                        {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                capture.pump(&task, true);
                let mut st = task.lock();
                match stop {
                    Some(s) => {
                        let (state, reason, message) = s.cause.outcome();
                        st.push_state(state, &reason, &message, None);
                    }
                    None if capture.over_quota => {
                        let (state, reason, message) = StopCause::LogQuota {
                            quota: process.log_quota_hour.unwrap_or_default(),
                        }
                        .outcome();
                        st.push_state(state, &reason, &message, None);
                    }
                    None => match code {
                        Some(0) => st.push_state(JobState::Done, "", "", Some(0)),
                        Some(c) => st.push_state(JobState::Failed, "", "", Some(c)),
                        None => st.push_state(
                            JobState::Failed,
                            "",
                            "The job's process disappeared; its exit status is unknown",
                            None,
                        ),
                    },
                }
                finish_locked(&task, &mut st);
                drop(st);
                ProcessExecutor {
                    inner: inner.clone(),
                }
                .arm_logs_wait(&task);
                return;
            }
        }

        tokio::select! {
            _ = tokio::time::sleep(inner.config.poll_interval) => {}
            _ = task.wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(commands: &[&str]) -> SubmitBody {
        let mut b = SubmitBody::default();
        b.job_submission.id = "job".into();
        b.job_spec.commands = commands.iter().map(|c| c.to_string()).collect();
        b
    }

    fn ev(t: i64, n: usize) -> LogEvent {
        LogEvent {
            message: vec![b'x'; n],
            timestamp: t,
        }
    }

    #[test]
    fn pages_merge_both_streams() {
        // Everything fits.
        let (j, r, cut) = page(
            vec![ev(1, 5), ev(3, 5)],
            false,
            vec![ev(2, 5)],
            false,
            9,
            100,
        );
        assert_eq!((j.len(), r.len(), cut), (2, 1, 9));
        // The budget stops the walk at ts 2.
        let (j, r, cut) = page(
            vec![ev(1, 5), ev(3, 5)],
            false,
            vec![ev(2, 5)],
            false,
            9,
            10,
        );
        assert_eq!((j.len(), r.len(), cut), (1, 1, 2));
        // A stream cut by its own budget bounds the page even if the other has more.
        let (j, r, cut) = page(
            vec![ev(5, 5)],
            true,
            vec![ev(1, 1), ev(6, 1)],
            false,
            9,
            100,
        );
        assert_eq!((j.len(), r.len(), cut), (1, 1, 5));
        // One oversized event still makes progress.
        let (j, r, cut) = page(vec![ev(4, 500)], true, vec![], false, 9, 10);
        assert_eq!((j.len(), r.len(), cut), (1, 0, 4));
    }

    #[tokio::test]
    async fn pull_pages_through_logs_without_gaps() {
        let home = tempfile::tempdir().unwrap();
        let config = ProcessExecutorConfig {
            max_pull_bytes: 64,
            poll_interval: Duration::from_millis(20),
            ..ProcessExecutorConfig::default()
        };
        let ex = ProcessExecutor::open(home.path(), Vec::new(), config)
            .await
            .unwrap();
        ex.submit_task(TaskConfig::new("t1", "n", "img"))
            .await
            .unwrap();
        ex.submit_job(body(&[
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 40 ]; do echo line-$i; i=$((i+1)); done",
        ]))
        .unwrap();
        assert!(ex.run_job().unwrap().is_some());
        let mut after = 0;
        let mut text = String::new();
        let mut states = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "timed out; got {text:?}");
            let r = ex.pull(after).unwrap();
            let bytes: usize = r
                .job_logs
                .iter()
                .chain(&r.runner_logs)
                .map(|e| e.message.len())
                .sum();
            assert!(
                bytes <= 64 || r.job_logs.len() + r.runner_logs.len() == 1,
                "page too big: {bytes}"
            );
            assert!(r.last_updated >= after);
            after = r.last_updated;
            text.extend(
                r.job_logs
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.message).into_owned()),
            );
            states.extend(r.job_states.iter().map(|s| s.state));
            if r.has_more == Some(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let expected: String = (0..40).map(|i| format!("line-{i}\n")).collect();
        assert_eq!(text, expected);
        assert_eq!(states, vec![JobState::Running, JobState::Done]);
        assert_eq!(ex.task_info("t1").unwrap().status, TaskStatus::Terminated);
        ex.shutdown();
    }

    #[tokio::test]
    async fn runner_state_machine_conflicts_and_prep_failures() {
        let home = tempfile::tempdir().unwrap();
        let ex = ProcessExecutor::open(home.path(), Vec::new(), ProcessExecutorConfig::default())
            .await
            .unwrap();
        // Runner-only use: a submit without a shim task creates one.
        assert!(matches!(ex.run_job(), Err(AgentError::Conflict(_))));
        assert!(matches!(ex.upload_code(b"x"), Err(AgentError::Conflict(_))));
        let mut b = body(&["/bin/true"]);
        b.job_spec.working_dir = Some("relative/dir".into());
        ex.submit_job(b.clone()).unwrap();
        ex.submit_job(b).unwrap(); // resubmit while waiting for run is allowed
        assert_eq!(ex.list_tasks().len(), 1);
        // A relative working dir fails the job before it starts: 200 without job info.
        assert!(ex.run_job().unwrap().is_none());
        let r = ex.pull(0).unwrap();
        let last = r.job_states.last().unwrap();
        assert_eq!(
            (last.state, last.termination_reason.as_str()),
            (JobState::Failed, "executor_error")
        );
        assert_eq!(r.has_more, Some(false));
        assert!(matches!(
            ex.submit_job(body(&["/bin/true"])),
            Err(AgentError::Conflict(_))
        ));
        // Bad task configs.
        let bad = ex.submit_task(TaskConfig::new("../x", "n", "img")).await;
        assert!(matches!(bad, Err(AgentError::BadRequest(_))));
        let empty = ex.submit_task(TaskConfig::new("ok", "n", "")).await;
        assert!(matches!(empty, Err(AgentError::BadRequest(m)) if m == "empty image_name"));
        ex.shutdown();
    }
}
