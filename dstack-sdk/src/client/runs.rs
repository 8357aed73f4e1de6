//! `client.project(p).runs()` (the `/api/project/{p}/runs/*` and `repos/init` routes) and
//! `client.project(p).logs()` (`logs/poll`).

use serde_json::json;

use crate::models::logs::{JobSubmissionLogs, PollLogsRequest};
use crate::models::runs::{ApplyRunPlanInput, ListRunsRequest, Run, RunPlan, RunSpec};
use crate::routes::{PathParams, RouteId};

use super::{Client, ProjectHandle};

impl ProjectHandle {
    /// The project's runs.
    pub fn runs(&self) -> Runs {
        Runs {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }

    /// The project's job logs.
    pub fn logs(&self) -> Logs {
        Logs {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }
}

/// A project's runs. Obtain with [`ProjectHandle::runs`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client, spec: dstack_sdk::models::runs::RunSpec) -> dstack_sdk::Result<()> {
/// let runs = client.project("main").runs();
/// runs.init_virtual_repo().await?;
/// let run = runs.apply(&spec).await?;
/// runs.stop(&[run.run_spec.run_name.as_deref().unwrap_or_default()], false).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Runs {
    client: Client,
    project: String,
}

impl Runs {
    fn params(&self) -> PathParams {
        PathParams::project(&self.project)
    }

    /// `repos/init` for the virtual repo `none` (what the CLI does before a run without git).
    pub async fn init_virtual_repo(&self) -> crate::Result<()> {
        let _: serde_json::Value = self
            .client
            .call(
                RouteId::ReposInit,
                &self.params(),
                Some(&json!({"repo_id": "none", "repo_info": {"repo_type": "virtual"}})),
            )
            .await?;
        Ok(())
    }

    /// The plan for `spec`.
    pub async fn get_plan(&self, spec: &RunSpec) -> crate::Result<RunPlan> {
        self.client
            .call(
                RouteId::RunsGetPlan,
                &self.params(),
                Some(&json!({ "run_spec": spec })),
            )
            .await
    }

    /// Submits `spec` as a new run.
    pub async fn apply(&self, spec: &RunSpec) -> crate::Result<Run> {
        let plan = ApplyRunPlanInput {
            run_spec: spec.clone(),
            current_resource: None,
        };
        self.client
            .call(
                RouteId::RunsApply,
                &self.params(),
                Some(&json!({ "plan": plan, "force": false })),
            )
            .await
    }

    /// The run named `name`.
    pub async fn get(&self, name: &str) -> crate::Result<Run> {
        self.client
            .call(
                RouteId::RunsGet,
                &self.params(),
                Some(&json!({ "run_name": name })),
            )
            .await
    }

    /// This project's runs (first page, newest first).
    pub async fn list(&self, only_active: bool) -> crate::Result<Vec<Run>> {
        let req = ListRunsRequest {
            project_name: Some(self.project.clone()),
            only_active,
            ..ListRunsRequest::default()
        };
        self.client
            .call(RouteId::RunsList, &PathParams::default(), Some(&req))
            .await
    }

    /// Stops runs (`abort` skips the graceful stop).
    pub async fn stop(&self, names: &[&str], abort: bool) -> crate::Result<()> {
        let _: serde_json::Value = self
            .client
            .call(
                RouteId::RunsStop,
                &self.params(),
                Some(&json!({ "runs_names": names, "abort": abort })),
            )
            .await?;
        Ok(())
    }

    /// Polls `name` every `interval` until it is finished (done, failed, terminated) or
    /// `timeout` passes; returns the last state seen. Errors with `ErrorKind::Transport`
    /// on timeout, naming the status it was stuck in.
    pub async fn wait_finished(
        &self,
        name: &str,
        interval: std::time::Duration,
        timeout: std::time::Duration,
    ) -> crate::Result<Run> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let run = self.get(name).await?;
            if run.status.is_finished() {
                return Ok(run);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(crate::Error::new(
                    crate::ErrorKind::Transport,
                    format!(
                        "run {name} is still {} after {} s; check `dstack ps` and the server log",
                        run.status.as_str(),
                        timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Deletes finished runs.
    pub async fn delete(&self, names: &[&str]) -> crate::Result<()> {
        let _: serde_json::Value = self
            .client
            .call(
                RouteId::RunsDelete,
                &self.params(),
                Some(&json!({ "runs_names": names })),
            )
            .await?;
        Ok(())
    }
}

/// A project's job logs. Obtain with [`ProjectHandle::logs`].
#[derive(Clone, Debug)]
pub struct Logs {
    client: Client,
    project: String,
}

impl Logs {
    /// Follows the logs of `run_name`'s latest job submission (job 0 of replica 0): yields
    /// every line as it arrives and ends once the run has finished and everything was read.
    ///
    /// ```no_run
    /// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
    /// let mut follow = client.project("main").logs().follow("my-task");
    /// while let Some(event) = follow.next().await? {
    ///     print!("{}", String::from_utf8_lossy(&event.decode_message().unwrap_or_default()));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn follow(&self, run_name: &str) -> LogFollower {
        LogFollower {
            logs: self.clone(),
            runs: Runs {
                client: self.client.clone(),
                project: self.project.clone(),
            },
            run_name: run_name.to_string(),
            submission: None,
            last_ts: None,
            seen_at_last: 0,
            buffer: std::collections::VecDeque::new(),
            finished: false,
            interval: std::time::Duration::from_millis(500),
        }
    }

    /// One page of a job submission's logs.
    pub async fn poll(&self, req: &PollLogsRequest) -> crate::Result<JobSubmissionLogs> {
        self.client
            .call(
                RouteId::LogsPoll,
                &PathParams::project(&self.project),
                Some(req),
            )
            .await
    }
}

/// A log stream that follows a run (see [`Logs::follow`]). Call [`next`](Self::next) until
/// it returns `Ok(None)`.
#[derive(Debug)]
pub struct LogFollower {
    logs: Logs,
    runs: Runs,
    run_name: String,
    submission: Option<uuid::Uuid>,
    /// Timestamp of the last event handed out, and how many events carried it.
    last_ts: Option<chrono::DateTime<chrono::Utc>>,
    seen_at_last: usize,
    buffer: std::collections::VecDeque<crate::models::logs::LogEvent>,
    finished: bool,
    interval: std::time::Duration,
}

impl LogFollower {
    /// Sets how often the server is asked for new lines while the run is quiet.
    pub fn with_interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The next log event; `Ok(None)` once the run has finished and every line was read.
    pub async fn next(&mut self) -> crate::Result<Option<crate::models::logs::LogEvent>> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Ok(Some(e));
            }
            // Read the run's state before the page: a run that was finished before the poll
            // has no lines after it.
            let run = self.runs.get(&self.run_name).await?;
            let Some(sub) = run
                .jobs
                .first()
                .and_then(|j| j.job_submissions.last())
                .map(|s| s.id)
            else {
                if run.status.is_finished() {
                    return Ok(None);
                }
                tokio::time::sleep(self.interval).await;
                continue;
            };
            if self.submission != Some(sub) {
                // A resubmission (retry) starts a new log.
                self.submission = Some(sub);
                self.last_ts = None;
                self.seen_at_last = 0;
            }
            // `start_time` is exclusive: ask from just before the last timestamp and skip
            // the events of that timestamp already handed out.
            let start_time = self.last_ts.map(|t| t - chrono::Duration::microseconds(1));
            let page = self
                .logs
                .poll(&PollLogsRequest {
                    run_name: self.run_name.clone(),
                    job_submission_id: sub,
                    start_time,
                    end_time: None,
                    descending: false,
                    next_token: None,
                    limit: 1000,
                    diagnose: false,
                })
                .await?;
            let mut skip = if self.last_ts.is_some() {
                self.seen_at_last
            } else {
                0
            };
            let mut got = false;
            for e in page.logs {
                if skip > 0 && Some(e.timestamp) == self.last_ts {
                    skip -= 1;
                    continue;
                }
                if Some(e.timestamp) == self.last_ts {
                    self.seen_at_last += 1;
                } else {
                    self.last_ts = Some(e.timestamp);
                    self.seen_at_last = 1;
                }
                got = true;
                self.buffer.push_back(e);
            }
            if got {
                continue;
            }
            if self.finished {
                return Ok(None);
            }
            if run.status.is_finished() {
                // One more empty poll after the finish guarantees nothing is left.
                self.finished = true;
                continue;
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}
