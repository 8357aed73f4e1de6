//! The host agent in process mode, driven through its HTTP APIs with the typed clients:
//! jobs that succeed, fail, are terminated, exceed `max_duration`, use uploads, and survive an
//! agent restart. Every agent runs in-process on free loopback ports with its own home.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use dstack_sdk::agent::client::{RunnerClient, ShimClient};
use dstack_sdk::agent::protocol::{
    FileArchive, JobState, JobStateEvent, LogEvent, SubmitBody, TaskConfig, TaskStatus,
    TerminateRequest,
};
use dstack_sdk::agent::{AgentError, AgentHandle, AgentListeners, AgentOptions, start_agent};

type TestResult = anyhow::Result<()>;

/// Fails instead of hanging.
async fn within<F: Future<Output = TestResult>>(secs: u64, f: F) -> TestResult {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .map_err(|_| anyhow::anyhow!("test timed out after {secs}s"))?
}

async fn start(home: &Path) -> anyhow::Result<(AgentHandle, ShimClient, RunnerClient)> {
    let mut options = AgentOptions::new(home);
    options.shim_port = 0;
    options.runner_port = 0;
    options.executor.runner_stop_grace = Duration::from_secs(2);
    options.ssh_port = 0;
    options.attach_linger = Duration::ZERO;
    let listeners = AgentListeners::bind(&options).await?;
    let handle = start_agent(options, listeners).await?;
    assert_ne!(handle.shim_addr().port(), 0);
    let shim = ShimClient::new(&handle.shim_url())?;
    let runner = RunnerClient::new(&handle.runner_url())?;
    Ok((handle, shim, runner))
}

fn body(job_id: &str, commands: &[&str], max_duration: Option<i64>) -> SubmitBody {
    let mut b = SubmitBody::default();
    b.run.id = format!("run-of-{job_id}");
    b.run.run_spec.run_name = "test-run".into();
    b.run.run_spec.repo_id = "repo".into();
    b.run.run_spec.repo_data.repo_type = "virtual".into();
    b.run.run_spec.configuration.kind = "task".into();
    b.job_submission.id = job_id.into();
    b.job_spec.jobs_per_replica = 1;
    b.job_spec.commands = commands.iter().map(|c| c.to_string()).collect();
    b.job_spec.max_duration = max_duration;
    b.job_spec.env.insert("GREETING".into(), "hello".into());
    b
}

/// Shim task + runner submit + run, as the server does it.
async fn launch(shim: &ShimClient, runner: &RunnerClient, b: &SubmitBody) -> TestResult {
    let id = &b.job_submission.id;
    let info = shim
        .submit_task(&TaskConfig::new(
            id.clone(),
            "test-run-0-0",
            "dstackai/base",
        ))
        .await?;
    assert_eq!(info.status, TaskStatus::Running);
    // The task's SSH server (dstack's container port 10022) is published on a free port.
    let ports = info.ports.unwrap_or_default();
    assert!(
        ports.len() == 1 && ports[0].container == 10022 && ports[0].host != 0,
        "{ports:?}"
    );
    runner.submit(b).await?;
    let job = runner
        .run()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no job info"))?;
    assert!(job.working_dir.starts_with('/'), "{job:?}");
    assert!(!job.username.is_empty());
    Ok(())
}

/// Everything pulled so far.
#[derive(Default)]
struct Pulled {
    timestamp: i64,
    states: Vec<JobStateEvent>,
    logs: Vec<LogEvent>,
    runner_logs: Vec<LogEvent>,
    has_more: bool,
}

impl Pulled {
    fn text(&self) -> String {
        self.logs
            .iter()
            .map(|l| String::from_utf8_lossy(&l.message).into_owned())
            .collect()
    }

    fn last_state(&self) -> Option<&JobStateEvent> {
        self.states.last()
    }
}

async fn pull_once(runner: &RunnerClient, p: &mut Pulled) -> TestResult {
    let r = runner.pull(p.timestamp).await?;
    assert!(r.last_updated >= p.timestamp, "last_updated went back");
    p.timestamp = r.last_updated;
    p.states.extend(r.job_states);
    p.logs.extend(r.job_logs);
    p.runner_logs.extend(r.runner_logs);
    p.has_more = r.has_more.unwrap_or(true);
    Ok(())
}

/// Pulls until `done` says so.
async fn pull_until(
    runner: &RunnerClient,
    p: &mut Pulled,
    done: impl Fn(&Pulled) -> bool,
) -> TestResult {
    loop {
        pull_once(runner, p).await?;
        if done(p) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pulls until the job reached a final state and the runner has nothing more.
async fn pull_to_end(runner: &RunnerClient, p: &mut Pulled) -> TestResult {
    pull_until(runner, p, |p| {
        p.last_state().is_some_and(|s| s.state.is_final()) && !p.has_more
    })
    .await
}

fn strictly_increasing(events: &[i64]) -> bool {
    events.windows(2).all(|w| w[0] < w[1])
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && f.first() != Some(&"Z") {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn runs_commands_and_streams_logs() -> TestResult {
    within(60, async {
        let home = tempfile::tempdir()?;
        let (agent, shim, runner) = start(home.path()).await?;

        let hc = shim.healthcheck().await?;
        assert_eq!(hc.service, "dstack-shim");
        assert_eq!(runner.healthcheck().await?.service, "dstack-runner");
        assert!(shim.instance_info().await?.is_some());
        assert_eq!(shim.components().await?.components.len(), 2);
        assert!(runner.metrics().await?.is_none());
        let host_info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(home.path().join("host_info.json"))?)?;
        assert!(host_info["cpus"].as_u64().unwrap_or(0) >= 1, "{host_info}");
        assert!(host_info["memory"].as_u64().unwrap_or(0) > 0);

        // Runner calls out of order are 409s.
        assert!(matches!(
            runner.run().await,
            Err(AgentError::Status { status: 409, .. })
        ));

        let b = body(
            "job-ok",
            &["/bin/sh", "-c", "echo $GREETING && python3 -c 'print(2+2)'"],
            None,
        );
        launch(&shim, &runner, &b).await?;
        // A second submit of the same task id and a second run are conflicts.
        let dup = shim
            .submit_task(&TaskConfig::new("job-ok", "x", "img"))
            .await;
        assert!(
            matches!(dup, Err(AgentError::Status { status: 409, .. })),
            "{dup:?}"
        );
        assert!(matches!(
            runner.run().await,
            Err(AgentError::Status { status: 409, .. })
        ));
        assert!(matches!(
            runner.submit(&b).await,
            Err(AgentError::Status { status: 409, .. })
        ));

        let mut p = Pulled::default();
        pull_to_end(&runner, &mut p).await?;
        let states: Vec<JobState> = p.states.iter().map(|s| s.state).collect();
        assert_eq!(states, vec![JobState::Running, JobState::Done]);
        assert_eq!(p.last_state().and_then(|s| s.exit_status), Some(0));
        let text = p.text();
        let (hello, four) = (text.find("hello\n"), text.find("4\n"));
        assert!(
            hello.is_some() && four.is_some() && hello < four,
            "logs: {text:?}"
        );
        let ts: Vec<i64> = p.logs.iter().map(|l| l.timestamp).collect();
        assert!(strictly_increasing(&ts), "{ts:?}");
        let all: Vec<i64> = {
            let mut v: Vec<i64> = p
                .states
                .iter()
                .map(|s| s.timestamp)
                .chain(p.logs.iter().map(|l| l.timestamp))
                .collect();
            v.sort();
            v
        };
        assert!(
            strictly_increasing(&all),
            "timestamps are unique across states and logs"
        );
        assert!(!p.runner_logs.is_empty());

        // Nothing newer than last_updated.
        let again = runner.pull(p.timestamp).await?;
        assert!(again.job_logs.is_empty() && again.job_states.is_empty());
        assert_eq!(again.has_more, Some(false));

        // The final pull ended the task, as a container exits with its runner.
        let task = shim.get_task("job-ok").await?;
        assert_eq!(
            (task.status, task.termination_reason.as_str()),
            (TaskStatus::Terminated, "done_by_runner")
        );
        let listed = shim.list_tasks().await?;
        assert_eq!(listed.tasks.len(), 1);

        let t = shim
            .terminate_task(
                "job-ok",
                &TerminateRequest {
                    termination_reason: "done_by_runner".into(),
                    timeout: 0,
                    ..Default::default()
                },
            )
            .await?;
        assert_eq!(t.status, TaskStatus::Terminated);
        shim.remove_task("job-ok").await?;
        assert!(matches!(
            shim.get_task("job-ok").await,
            Err(AgentError::Status { status: 404, .. })
        ));
        // Teardown (SSH server, files) follows once the attach linger (0 here) passed.
        let dir = home.path().join("tasks/job-ok");
        let deadline = Instant::now() + Duration::from_secs(5);
        while dir.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!dir.exists());
        agent.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn failing_command_reports_exit_status() -> TestResult {
    within(60, async {
        let home = tempfile::tempdir()?;
        let (agent, shim, runner) = start(home.path()).await?;
        launch(
            &shim,
            &runner,
            &body(
                "job-fail",
                &["/bin/sh", "-c", "echo oops >&2; exit 3"],
                None,
            ),
        )
        .await?;
        let mut p = Pulled::default();
        pull_to_end(&runner, &mut p).await?;
        let last = p.last_state().ok_or_else(|| anyhow::anyhow!("no state"))?;
        assert_eq!((last.state, last.exit_status), (JobState::Failed, Some(3)));
        assert!(p.text().contains("oops"), "{}", p.text());
        // Removing needs a terminated task.
        assert!(matches!(
            shim.remove_task("nope").await,
            Err(AgentError::Status { status: 404, .. })
        ));
        agent.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn terminate_stops_the_process_group() -> TestResult {
    within(60, async {
        let home = tempfile::tempdir()?;
        let (agent, shim, runner) = start(home.path()).await?;
        let script = "sleep 600 & echo pgid=$(cut -d' ' -f5 /proc/self/stat); sleep 600";
        launch(
            &shim,
            &runner,
            &body("job-long", &["/bin/sh", "-c", script], None),
        )
        .await?;
        let mut p = Pulled::default();
        pull_until(&runner, &mut p, |p| p.text().contains("pgid=")).await?;
        let text = p.text();
        let pgid: i32 = text
            .split("pgid=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no pgid in {text:?}"))?;
        assert!(
            group_members(pgid).len() >= 2,
            "the job and its background sleep run"
        );
        // Not terminated yet: removal is refused.
        assert!(matches!(
            shim.remove_task("job-long").await,
            Err(AgentError::Status { status: 409, .. })
        ));

        let grace = 3;
        let started = Instant::now();
        let info = shim
            .terminate_task(
                "job-long",
                &TerminateRequest {
                    termination_reason: "terminated_by_user".into(),
                    termination_message: "stopped by the test".into(),
                    timeout: grace,
                },
            )
            .await?;
        assert!(
            started.elapsed() < Duration::from_secs(grace + 2),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(info.status, TaskStatus::Terminated);
        assert_eq!(info.termination_reason, "terminated_by_user");
        assert!(
            group_members(pgid).is_empty(),
            "process group {pgid} still has {:?}",
            group_members(pgid)
        );

        pull_to_end(&runner, &mut p).await?;
        let states: Vec<JobState> = p.states.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            vec![
                JobState::Running,
                JobState::Terminating,
                JobState::Terminated
            ]
        );
        assert_eq!(
            p.last_state().map(|s| s.termination_reason.as_str()),
            Some("terminated_by_user")
        );
        shim.remove_task("job-long").await?;
        agent.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn runner_stop_terminates_the_job() -> TestResult {
    within(60, async {
        let home = tempfile::tempdir()?;
        let (agent, shim, runner) = start(home.path()).await?;
        launch(
            &shim,
            &runner,
            &body("job-stop", &["/bin/sh", "-c", "echo up; sleep 600"], None),
        )
        .await?;
        let mut p = Pulled::default();
        pull_until(&runner, &mut p, |p| p.text().contains("up")).await?;
        runner.stop().await?;
        pull_to_end(&runner, &mut p).await?;
        let last = p.last_state().ok_or_else(|| anyhow::anyhow!("no state"))?;
        assert_eq!(
            (last.state, last.termination_reason.as_str()),
            (JobState::Terminated, "")
        );
        agent.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn max_duration_is_enforced() -> TestResult {
    within(60, async {
        let home = tempfile::tempdir()?;
        let (agent, shim, runner) = start(home.path()).await?;
        let started = Instant::now();
        launch(
            &shim,
            &runner,
            &body("job-slow", &["/bin/sh", "-c", "sleep 600"], Some(1)),
        )
        .await?;
        let mut p = Pulled::default();
        pull_to_end(&runner, &mut p).await?;
        let last = p.last_state().ok_or_else(|| anyhow::anyhow!("no state"))?;
        assert_eq!(last.state, JobState::Terminated);
        assert_eq!(last.termination_reason, "max_duration_exceeded");
        assert_eq!(last.termination_message, "Max duration exceeded");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        agent.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn uploads_code_and_file_archives() -> TestResult {
    within(60, async {
        let home = tempfile::tempdir()?;
        let src = tempfile::tempdir()?;
        std::fs::write(src.path().join("main.txt"), "code-ok\n")?;
        std::fs::create_dir(src.path().join("cfg"))?;
        std::fs::write(src.path().join("cfg/app.conf"), "file-ok\n")?;
        let tar = |out: &str, args: &[&str]| -> anyhow::Result<Vec<u8>> {
            let path = src.path().join(out);
            let st = std::process::Command::new("tar")
                .arg("-cf")
                .arg(&path)
                .arg("-C")
                .arg(src.path())
                .args(args)
                .status()?;
            anyhow::ensure!(st.success(), "tar failed");
            Ok(std::fs::read(path)?)
        };
        let code = tar("code.tar", &["main.txt"])?;
        let archive = tar("files.tar", &["cfg"])?;

        let (agent, shim, runner) = start(home.path()).await?;
        let mut b = body(
            "job-files",
            &[
                "/bin/sh",
                "-c",
                "cat repo/main.txt conf/app.conf; echo $DSTACK_RUN_NAME",
            ],
            None,
        );
        b.job_spec.repo_dir = Some("repo".into());
        b.job_spec.file_archives = vec![FileArchive {
            id: "archive-1".into(),
            path: "conf".into(),
        }];
        shim.submit_task(&TaskConfig::new("job-files", "n", "img"))
            .await?;
        // Uploads before submit are conflicts.
        assert!(matches!(
            runner.upload_code(code.clone()).await,
            Err(AgentError::Status { status: 409, .. })
        ));
        runner.submit(&b).await?;
        runner.upload_archive("archive-1", &archive).await?;
        runner.upload_code(code).await?;
        runner.run().await?;
        let mut p = Pulled::default();
        pull_to_end(&runner, &mut p).await?;
        assert_eq!(
            p.last_state().map(|s| s.state),
            Some(JobState::Done),
            "{:?} {}",
            p.states,
            p.text()
        );
        assert_eq!(p.text(), "code-ok\nfile-ok\ntest-run\n");
        agent.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn restart_keeps_state_and_logs() -> TestResult {
    within(60, async {
        let home = tempfile::tempdir()?;
        let (agent, shim, runner) = start(home.path()).await?;
        let script = "echo before; sleep 3; echo after";
        launch(
            &shim,
            &runner,
            &body("job-restart", &["/bin/sh", "-c", script], None),
        )
        .await?;
        let mut first = Pulled::default();
        pull_until(&runner, &mut first, |p| p.text().contains("before")).await?;
        agent.shutdown().await;

        // A new agent on the same home (new ports) sees the task, its states and its logs,
        // and follows the still-running job to its end.
        let (agent, shim, runner) = start(home.path()).await?;
        let task = shim.get_task("job-restart").await?;
        assert_eq!(task.status, TaskStatus::Running);
        let mut p = Pulled::default();
        pull_once(&runner, &mut p).await?;
        assert!(p.text().contains("before"), "{}", p.text());
        assert_eq!(p.states.first().map(|s| s.state), Some(JobState::Running));
        let before_ts: Vec<i64> = first.logs.iter().map(|l| l.timestamp).collect();
        let again_ts: Vec<i64> = p
            .logs
            .iter()
            .map(|l| l.timestamp)
            .take(before_ts.len())
            .collect();
        assert_eq!(
            before_ts, again_ts,
            "the same events with the same timestamps"
        );
        // Incremental pulls continue from the old agent's timestamps.
        let mut cont = Pulled {
            timestamp: first.timestamp,
            ..Pulled::default()
        };
        pull_to_end(&runner, &mut cont).await?;
        assert!(!cont.text().contains("before"), "{}", cont.text());
        assert!(cont.text().contains("after"), "{}", cont.text());
        let last = cont
            .last_state()
            .ok_or_else(|| anyhow::anyhow!("no state"))?;
        assert_eq!((last.state, last.exit_status), (JobState::Done, Some(0)));
        agent.shutdown().await;
        Ok(())
    })
    .await
}
