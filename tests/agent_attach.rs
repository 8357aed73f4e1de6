#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Attaching to a job the agent runs, the way the dstack CLI does it: the system OpenSSH
//! client logs into the task's SSH server with a key from `container_ssh_keys`, forwards the
//! runner port 10999 and reads `/logs_ws` over a websocket; `ssh <run> cmd` runs commands; the
//! task's `host_ssh_keys` appear in the host user's `authorized_keys` while the task lives; the
//! job runs on a terminal. Every agent runs in-process on free loopback ports with its own home.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dstack_sdk::agent::executor::{Executor, JobRunner};
use dstack_sdk::agent::protocol::{JobState, SubmitBody, TaskConfig, TaskStatus, TerminateRequest};
use dstack_sdk::agent::{AgentHandle, AgentListeners, AgentOptions, start_agent};
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

type TestResult = anyhow::Result<()>;

const HOST_USER: &str = "dstack-test";

/// Tests that edit the host user's `authorized_keys` run one at a time.
static HOST_USER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn within<F: Future<Output = TestResult>>(secs: u64, f: F) -> TestResult {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .map_err(|_| anyhow::anyhow!("test timed out after {secs}s"))?
}

async fn start(home: &Path, ssh_port: u16, linger: Duration) -> anyhow::Result<AgentHandle> {
    let mut options = AgentOptions::new(home);
    options.shim_port = 0;
    options.runner_port = 0;
    options.ssh_port = ssh_port;
    options.attach_linger = linger;
    options.executor.runner_stop_grace = Duration::from_secs(2);
    let listeners = AgentListeners::bind(&options).await?;
    Ok(start_agent(options, listeners).await?)
}

/// `ssh-keygen -t ed25519`: returns (private key path, public key line).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    keygen_typed(dir, name, &["-t", "ed25519"])
}

/// `ssh-keygen` with the given type arguments.
fn keygen_typed(dir: &Path, name: &str, kind: &[&str]) -> (PathBuf, String) {
    let path = dir.join(name);
    let status = std::process::Command::new("ssh-keygen")
        .arg("-q")
        .args(kind)
        .args(["-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (path, public.trim().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn body(job_id: &str, commands: &[&str]) -> SubmitBody {
    let mut b = SubmitBody::default();
    b.run.id = format!("run-of-{job_id}");
    b.run.run_spec.run_name = "attach-run".into();
    b.run.run_spec.repo_data.repo_type = "virtual".into();
    b.run.run_spec.configuration.kind = "task".into();
    b.job_submission.id = job_id.into();
    b.job_spec.jobs_per_replica = 1;
    b.job_spec.commands = commands.iter().map(|c| c.to_string()).collect();
    b.job_spec.env.insert("GREETING".into(), "hello".into());
    b
}

/// Submits a task with `container_ssh_keys` and runs `commands` in it; returns its SSH port.
async fn launch(
    agent: &AgentHandle,
    id: &str,
    container_keys: &[&str],
    commands: &[&str],
) -> anyhow::Result<u16> {
    let ex = agent.executor();
    let mut config = TaskConfig::new(id, format!("{id}-0-0"), "dstackai/base");
    config.container_ssh_keys = container_keys.iter().map(|k| k.to_string()).collect();
    let info = ex.submit_task(config).await?;
    assert_eq!(info.status, TaskStatus::Running);
    let ports = info.ports.unwrap_or_default();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].container, 10022);
    ex.submit_job(body(id, commands))?;
    assert!(ex.run_job()?.is_some());
    Ok(ports[0].host)
}

/// Pulls (the server's way) until the job ended and everything was handed out.
async fn wait_finished(agent: &AgentHandle) -> anyhow::Result<Vec<JobState>> {
    let mut after = 0;
    let mut states = Vec::new();
    loop {
        let r = agent.executor().pull(after)?;
        after = r.last_updated;
        states.extend(r.job_states.iter().map(|s| s.state));
        if r.has_more == Some(false) {
            return Ok(states);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ssh_base(key: &Path, port: u16) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/usr/bin/ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
        "-i",
    ])
    .arg(key)
    .args(["-p", &port.to_string()])
    .stdin(Stdio::null())
    .kill_on_drop(true);
    cmd
}

/// `ssh -N -L <local>:localhost:<remote>` until dropped; waits for the forward to work.
async fn forward(
    key: &Path,
    port: u16,
    remote: u16,
) -> anyhow::Result<(tokio::process::Child, u16)> {
    let local = free_port();
    let mut cmd = ssh_base(key, port);
    cmd.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("{local}:localhost:{remote}"),
        "root@127.0.0.1",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).await?;
            }
            anyhow::bail!("ssh -L exited with {status}: {err}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .is_ok()
        {
            return Ok((child, local));
        }
        anyhow::ensure!(Instant::now() < deadline, "the forward never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.1 GET through the forward.
async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Reads `/logs_ws` until the server closes; every message must be binary.
async fn read_ws(port: u16, query: &str) -> anyhow::Result<String> {
    let url = format!("ws://127.0.0.1:{port}/logs_ws{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    let mut text = Vec::new();
    let mut closed = false;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Binary(b) => text.extend_from_slice(&b),
            Message::Close(frame) => {
                if let Some(f) = frame {
                    anyhow::ensure!(u16::from(f.code) == 1000, "close frame {f:?}");
                }
                closed = true;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => anyhow::bail!("unexpected message {other:?}"),
        }
    }
    anyhow::ensure!(closed, "no close frame");
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// `ssh root@127.0.0.1 <command>`: (exit code, stdout, stderr).
async fn ssh_exec(
    key: &Path,
    port: u16,
    extra: &[&str],
    command: &str,
) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = ssh_base(key, port);
    cmd.args(extra).arg("root@127.0.0.1").arg(command);
    let out = cmd.output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn cli_style_attach_over_openssh() -> TestResult {
    within(120, async {
        let home = tempfile::tempdir()?;
        let keys = tempfile::tempdir()?;
        let (key, public) = keygen(keys.path(), "user");
        let (stranger, _) = keygen(keys.path(), "stranger");
        // dstack's CLI user keys are RSA.
        let (rsa, rsa_public) = keygen_typed(keys.path(), "rsa", &["-t", "rsa", "-b", "2048"]);
        let agent = start(home.path(), 0, Duration::from_secs(60)).await?;

        // A short job that finished before anyone attached.
        let done_port = launch(
            &agent,
            "job-done",
            &[&format!("{public} with a comment"), &rsa_public],
            &["/bin/sh", "-c", "for i in 1 2 3; do echo line-$i; done"],
        )
        .await?;
        assert_eq!(
            wait_finished(&agent).await?,
            vec![JobState::Running, JobState::Done]
        );

        let (_fwd, local) = forward(&key, done_port, 10999).await?;
        let health = http_get(local, "/api/healthcheck").await?;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.contains("dstack-runner"), "{health}");
        assert_eq!(read_ws(local, "").await?, "line-1\nline-2\nline-3\n");
        // start_time as Python's isoformat() writes it, URL-encoded: before and after the job.
        assert_eq!(
            read_ws(
                local,
                "?start_time=2000-01-01T00%3A00%3A00.123456%2B00%3A00"
            )
            .await?,
            "line-1\nline-2\nline-3\n"
        );
        assert_eq!(
            read_ws(local, "?start_time=2999-01-01T00%3A00%3A00%2B00%3A00").await?,
            ""
        );

        // exec: output, exit status, the job's environment and working directory.
        let (code, out, err) = ssh_exec(&key, done_port, &[], "echo hi").await?;
        assert_eq!((code, out.as_str()), (0, "hi\n"), "{err}");
        let (code, out, err) = ssh_exec(&rsa, done_port, &[], "echo rsa").await?;
        assert_eq!((code, out.as_str()), (0, "rsa\n"), "{err}");
        let (code, out, _) = ssh_exec(&key, done_port, &[], "echo $GREETING; pwd; exit 3").await?;
        assert_eq!(code, 3);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first(), Some(&"hello"), "{out}");
        assert!(
            lines
                .get(1)
                .is_some_and(|d| d.ends_with("/tasks/job-done/work")),
            "{out}"
        );
        // A PTY session (ssh -tt) gets a terminal.
        let (code, out, _) = ssh_exec(&key, done_port, &["-tt"], "tty").await?;
        assert_eq!(code, 0);
        assert!(out.trim().starts_with("/dev/pts/"), "{out:?}");
        // An interactive login shell on a terminal (`ssh <run>`).
        let mut sh = ssh_base(&key, done_port);
        sh.args(["-tt", "root@127.0.0.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = sh.spawn()?;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"echo $((40+2))\nexit 7\n").await?;
        let out = child.wait_with_output().await?;
        drop(stdin);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(7), "{text}");
        assert!(text.contains("42"), "{text}");
        // A key not in container_ssh_keys is refused.
        let (code, _, err) = ssh_exec(&stranger, done_port, &[], "true").await?;
        assert_eq!(code, 255, "{err}");
        assert!(err.contains("Permission denied"), "{err}");
        // Forwards outside the task are refused.
        let mut cmd = ssh_base(&key, done_port);
        cmd.args(["-W", "192.0.2.1:22", "root@127.0.0.1"]);
        let out = cmd.output().await?;
        assert!(!out.status.success());

        // A job still printing: the stream follows it to its end, through the task's own
        // endpoint (a second task is the runner API's current one now).
        let live_port = launch(
            &agent,
            "job-live",
            &[&public],
            &[
                "/bin/sh",
                "-c",
                "i=0; while [ $i -lt 5 ]; do echo tick-$i; i=$((i+1)); sleep 0.3; done",
            ],
        )
        .await?;
        assert_ne!(live_port, done_port);
        let (_fwd2, local2) = forward(&key, live_port, 10999).await?;
        let started = Instant::now();
        let text = read_ws(local2, "").await?;
        assert_eq!(text, "tick-0\ntick-1\ntick-2\ntick-3\ntick-4\n");
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "it followed the job live"
        );
        // The first task's endpoint still serves the first task's job.
        assert_eq!(read_ws(local, "").await?, "line-1\nline-2\nline-3\n");

        agent.shutdown().await;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn job_runs_on_a_terminal_and_stops() -> TestResult {
    within(90, async {
        let home = tempfile::tempdir()?;
        let agent = start(home.path(), 0, Duration::ZERO).await?;
        let ex = agent.executor();
        launch(
            &agent,
            "job-tty",
            &[],
            &["/bin/bash", "-i", "-c", "echo hello; tty"],
        )
        .await?;
        wait_finished(&agent).await?;
        let r = ex.pull(0)?;
        let text: String = r
            .job_logs
            .iter()
            .map(|l| String::from_utf8_lossy(&l.message).into_owned())
            .collect();
        assert!(text.contains("hello"), "{text:?}");
        assert!(text.contains("/dev/pts/"), "{text:?}");
        assert!(
            !text.contains("cannot set terminal process group"),
            "{text:?}"
        );
        assert!(!text.contains("no job control"), "{text:?}");
        assert_eq!(r.job_states.last().and_then(|s| s.exit_status), Some(0));
        let t = TerminateRequest {
            termination_reason: "done_by_runner".into(),
            ..Default::default()
        };
        ex.terminate_task("job-tty", t).await?;
        ex.remove_task("job-tty").await?;

        // Stop (SIGTERM to the job's session, SIGKILL after 2 s) ends an interactive bash
        // (which ignores SIGTERM) and its sleep.
        launch(
            &agent,
            "job-sleep",
            &[],
            &["/bin/bash", "-i", "-c", "sleep 600; echo after"],
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        ex.stop_job()?;
        let states = wait_finished(&agent).await?;
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(states.last(), Some(&JobState::Terminated), "{states:?}");
        agent.shutdown().await;
        Ok(())
    })
    .await
}

fn authorized_keys_path() -> PathBuf {
    let out = std::process::Command::new("getent")
        .args(["passwd", HOST_USER])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let home = line
        .trim()
        .split(':')
        .nth(5)
        .unwrap_or_default()
        .to_string();
    assert!(
        !home.is_empty(),
        "user {HOST_USER} is missing: run scripts/sshd-test-env.sh as root"
    );
    PathBuf::from(home).join(".ssh/authorized_keys")
}

fn count_key(path: &Path, public: &str) -> usize {
    let blob = public.split_whitespace().nth(1).unwrap();
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(blob))
        .count()
}

#[tokio::test]
async fn host_keys_live_as_long_as_the_task() -> TestResult {
    ensure_sshd_env();
    let _serial = HOST_USER_LOCK.lock().await;
    within(60, async {
        let path = authorized_keys_path();
        let home = tempfile::tempdir()?;
        let keys = tempfile::tempdir()?;
        let (_, fresh) = keygen(keys.path(), "fresh");
        let (_, pre) = keygen(keys.path(), "pre");
        // A line that was there before the task (same key, another comment in the request).
        let ssh_dir = path.parent().unwrap();
        std::fs::create_dir_all(ssh_dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        std::io::Write::write_all(&mut f, format!("{pre}\n").as_bytes())?;
        drop(f);

        let linger = Duration::from_secs(2);
        let preferred = free_port();
        let agent = start(home.path(), preferred, linger).await?;
        let ex = agent.executor();
        let mut config = TaskConfig::new("job-keys", "keys-0-0", "dstackai/base");
        config.host_ssh_user = HOST_USER.into();
        config.host_ssh_keys = vec![
            fresh.clone(),
            format!("{} other-comment", pre.rsplit_once(' ').unwrap().0),
        ];
        let info = ex.submit_task(config).await?;
        assert_eq!(info.ports.unwrap_or_default()[0].host, preferred);
        assert_eq!(count_key(&path, &fresh), 1);
        assert_eq!(
            count_key(&path, &pre),
            1,
            "an existing key is not added twice"
        );
        let meta = std::fs::metadata(&path)?;
        assert_eq!(std::os::unix::fs::MetadataExt::mode(&meta) & 0o777, 0o600);

        ex.submit_job(body("job-keys", &["/bin/true"]))?;
        ex.run_job()?;
        wait_finished(&agent).await?;
        ex.terminate_task("job-keys", TerminateRequest::default())
            .await?;
        let removed_at = Instant::now();
        ex.remove_task("job-keys").await?;
        assert!(
            removed_at.elapsed() < Duration::from_secs(1),
            "remove answers at once"
        );
        // Lingering: the keys and the SSH port stay; a new task still starts (another port).
        assert_eq!(count_key(&path, &fresh), 1);
        assert_eq!(ex.ssh_port("job-keys"), Some(preferred));
        let next = ex
            .submit_task(TaskConfig::new("job-next", "next-0-0", "img"))
            .await?;
        let next_port = next.ports.unwrap_or_default()[0].host;
        assert_ne!(next_port, preferred);

        let deadline = Instant::now() + linger + Duration::from_secs(5);
        while count_key(&path, &fresh) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            count_key(&path, &fresh),
            0,
            "the added key is removed after the linger"
        );
        assert_eq!(
            count_key(&path, &pre),
            1,
            "the line that was there before survives"
        );
        assert!(ex.ssh_port("job-keys").is_none());
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", preferred))
                .await
                .is_err()
        );
        assert!(!home.path().join("tasks/job-keys").exists());

        // Unknown host users fail the submission.
        let mut bad = TaskConfig::new("job-bad", "bad-0-0", "img");
        bad.host_ssh_user = "no-such-user-dstack".into();
        bad.host_ssh_keys = vec![fresh.clone()];
        let err = ex.submit_task(bad).await.unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");

        agent.shutdown().await;
        // Leave the file as it was.
        let text = std::fs::read_to_string(&path)?;
        let kept: String = text
            .split_inclusive('\n')
            .filter(|l| l.trim() != pre)
            .collect();
        std::fs::write(&path, kept)?;
        Ok(())
    })
    .await
}

/// Runs `scripts/sshd-test-env.sh` when sshd or the test user is missing.
fn ensure_sshd_env() {
    let ready = Path::new("/usr/sbin/sshd").exists()
        && Path::new("/run/sshd").is_dir()
        && std::process::Command::new("id")
            .arg(HOST_USER)
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sshd-test-env.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .status()
            .unwrap();
        assert!(status.success(), "scripts/sshd-test-env.sh failed");
    }
}

/// The host's own sshd (the `<run>-host` hop): default `~/.ssh/authorized_keys`.
async fn start_sshd(dir: &Path) -> anyhow::Result<(tokio::process::Child, u16)> {
    let port = free_port();
    let (host_key, _) = keygen(dir, "host_ed25519");
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {dir}/sshd.pid\n\
             StrictModes no\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAllowTcpForwarding yes\nLogLevel ERROR\n",
            key = host_key.display(),
            dir = dir.display()
        ),
    )?;
    let child = tokio::process::Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "sshd did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, port))
}

/// The dstack CLI's attach, step by step (`core/services/ssh/attach.py`): SSH config hosts
/// `<run>-host` (the host's sshd as the host user) and `<run>` (`localhost:<ports[10022]>`
/// through `ProxyJump <run>-host`), then `ssh -F cfg -i key -N -f -o ControlMaster=auto -S sock
/// -L <local>:localhost:10999 <run>` and `ws://localhost:<local>/logs_ws`.
#[tokio::test]
async fn cli_attach_through_the_host_sshd() -> TestResult {
    ensure_sshd_env();
    let _serial = HOST_USER_LOCK.lock().await;
    within(90, async {
        let home = tempfile::tempdir()?;
        let dir = tempfile::tempdir()?;
        let (key, public) = keygen(dir.path(), "run-key");
        let (_sshd, sshd_port) = start_sshd(dir.path()).await?;
        let agent = start(home.path(), 0, Duration::from_secs(30)).await?;
        let ex = agent.executor();
        let mut config = TaskConfig::new("job-cli", "cli-run-0-0", "dstackai/base");
        config.host_ssh_user = HOST_USER.into();
        config.host_ssh_keys = vec![public.clone()];
        config.container_ssh_keys = vec![public.clone()];
        let info = ex.submit_task(config).await?;
        let container_port = info.ports.unwrap_or_default()[0].host;
        ex.submit_job(body(
            "job-cli",
            &["/bin/sh", "-c", "echo from-the-job; echo done"],
        ))?;
        ex.run_job()?;
        wait_finished(&agent).await?;

        let cfg = dir.path().join("ssh_config");
        let run = "cli-run";
        std::fs::write(
            &cfg,
            format!(
                "Host {run}-host\n  HostName 127.0.0.1\n  Port {sshd_port}\n  User {HOST_USER}\n  \
                 IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
                 UserKnownHostsFile /dev/null\n\n\
                 Host {run}\n  HostName localhost\n  Port {container_port}\n  User root\n  \
                 IdentityFile {key}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  \
                 UserKnownHostsFile /dev/null\n  ProxyJump {run}-host\n",
                key = key.display()
            ),
        )?;
        let sock = dir.path().join("control.sock");
        let local = free_port();
        let common = |cmd: &mut tokio::process::Command| {
            cmd.arg("-F")
                .arg(&cfg)
                .arg("-i")
                .arg(&key)
                .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=yes"])
                .stdin(Stdio::null())
                .kill_on_drop(true);
        };
        let mut open = tokio::process::Command::new("/usr/bin/ssh");
        common(&mut open);
        // `-f` forks a background master that keeps inherited pipes open: log to a file.
        let log = dir.path().join("tunnel.log");
        let status = open
            .arg("-E")
            .arg(&log)
            .args(["-N", "-f", "-o", "ControlMaster=auto", "-S"])
            .arg(&sock)
            .args([
                "-o",
                "ExitOnForwardFailure=yes",
                "-o",
                "ServerAliveInterval=0",
                "-L",
                &format!("{local}:localhost:10999"),
                run,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        assert!(
            status.success(),
            "ssh -f failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert_eq!(read_ws(local, "").await?, "from-the-job\ndone\n");

        // `ssh <run> cmd` through the same config.
        let mut exec = tokio::process::Command::new("/usr/bin/ssh");
        common(&mut exec);
        let out = exec.args([run, "echo via-proxyjump"]).output().await?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "via-proxyjump\n");

        let mut close = tokio::process::Command::new("/usr/bin/ssh");
        common(&mut close);
        close
            .arg("-S")
            .arg(&sock)
            .args(["-O", "exit", run])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = close.status().await?;

        ex.terminate_task("job-cli", TerminateRequest::default())
            .await?;
        ex.remove_task("job-cli").await?;
        agent.shutdown().await;
        // The key added for the task goes with it (the agent stopped before the linger ran
        // out: a new agent on the same home finishes the teardown).
        let agent = start(home.path(), 0, Duration::from_secs(30)).await?;
        assert_eq!(count_key(&authorized_keys_path(), &public), 0);
        agent.shutdown().await;
        Ok(())
    })
    .await
}
