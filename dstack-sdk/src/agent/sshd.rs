//! The task's SSH server: what dstack's runner provides by starting `sshd` on port 10022 inside
//! the job container. With the process executor there is no container, so the agent serves
//! one SSH endpoint per task itself (russh), for the dstack CLI's attach (`ssh -L …:localhost:10999`
//! to stream `/logs_ws`, plus the configuration's ports), `ssh <run>` shells and IDEs.
//!
//! * Listens on loopback (reached with `ProxyJump <run>-host` through the host's own sshd), on
//!   the preferred port (10022) when free, else on a port the OS picks; the shim reports it in
//!   the task's `ports` as `{"host": <port>, "container": 10022}`.
//! * Host key: one ed25519 key per agent (`<home>/ssh_host_ed25519_key`, 0600).
//! * Auth: `publickey` only, against the task's `container_ssh_keys` (type + base64 compared).
//!   Any user name is accepted; sessions run as the agent's OS user.
//! * `direct-tcpip` to `localhost`/`127.0.0.1`/`::1` only: port 10999 reaches the runner API of
//!   this very task, any other port `127.0.0.1:<port>` (the job's own ports).
//! * `session` channels: `exec` (the user's shell with `-c`), `shell`, `pty-req`,
//!   `window-change`, `env`; the job's environment and working directory once it started. No
//!   subsystems (no SFTP).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use nix::sys::signal::Signal;
use russh::keys::PrivateKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::{AbortHandle, JoinSet};

use super::authorized_keys::key_id;
use super::error::{AgentError, AgentResult};
use super::executor::pgroup;

/// The port dstack's runner starts `sshd` on inside the container.
pub const CONTAINER_SSH_PORT: u16 = 10022;
/// dstack's runner API port inside the container (what the CLI forwards to).
pub const CONTAINER_RUNNER_PORT: u32 = 10999;
/// The host key's file name in the agent home.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Where and how session processes run.
#[derive(Debug, Clone)]
pub struct SessionEnv {
    /// The complete environment.
    pub env: IndexMap<String, String>,
    /// The working directory.
    pub cwd: PathBuf,
}

/// Gives the environment for a new session (the job's, once it started).
pub type EnvProvider = Arc<dyn Fn() -> SessionEnv + Send + Sync>;

/// Loads the agent's ed25519 host key, generating it (0600) on first use.
pub fn load_or_create_host_key(home: &Path) -> AgentResult<PrivateKey> {
    let path = home.join(HOST_KEY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ssh_key::PrivateKey::random(
                &mut ssh_key::rand_core::OsRng,
                ssh_key::Algorithm::Ed25519,
            )
            .map_err(|e| AgentError::Internal(format!("cannot generate the SSH host key: {e}")))?;
            let pem = key.to_openssh(ssh_key::LineEnding::LF).map_err(|e| {
                AgentError::Internal(format!("cannot encode the SSH host key: {e}"))
            })?;
            write_private(&path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), "generated the SSH host key");
            pem.to_string()
        }
        Err(e) => return Err(AgentError::io("cannot read the SSH host key", &path, e)),
    };
    russh::keys::decode_secret_key(&text, None).map_err(|e| {
        AgentError::Internal(format!(
            "cannot load the SSH host key {}: {e}",
            path.display()
        ))
    })
}

fn write_private(path: &Path, body: &[u8]) -> AgentResult<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AgentError::io("cannot write the SSH host key", &tmp, e))?;
    f.write_all(body)
        .and_then(|()| f.sync_all())
        .map_err(|e| AgentError::io("cannot write the SSH host key", &tmp, e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| AgentError::io("cannot write the SSH host key", path, e))
}

/// The russh server configuration for task endpoints: the host key, `publickey` only, no idle
/// timeout (a quiet attach may last hours), keepalives instead.
pub fn server_config(host_key: PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(60)),
        keepalive_max: 5,
        nodelay: true,
        ..Default::default()
    })
}

/// What one task's endpoint serves.
pub struct EndpointParams {
    /// The task id (for logs).
    pub task_id: String,
    /// The task's `container_ssh_keys`.
    pub allowed_keys: Vec<String>,
    /// The address to listen on (loopback).
    pub bind: IpAddr,
    /// The port to try first (10022; 0 lets the OS pick).
    pub preferred_port: u16,
    /// The runner API of this task, served on a private loopback port for port 10999.
    pub runner: axum::Router,
    /// The environment of new sessions.
    pub env: EnvProvider,
}

impl std::fmt::Debug for EndpointParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointParams")
            .field("task_id", &self.task_id)
            .field("allowed_keys", &self.allowed_keys.len())
            .field("bind", &self.bind)
            .field("preferred_port", &self.preferred_port)
            .finish()
    }
}

/// A running task endpoint; dropping it stops listening and closes its connections.
#[derive(Debug)]
pub struct SshEndpoint {
    port: u16,
    runner_addr: SocketAddr,
    tasks: Vec<AbortHandle>,
}

impl SshEndpoint {
    /// The SSH port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where this task's runner API listens (what port 10999 is forwarded to).
    pub fn runner_addr(&self) -> SocketAddr {
        self.runner_addr
    }
}

impl Drop for SshEndpoint {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
}

/// Starts a task's SSH endpoint (needs a Tokio runtime).
#[tracing::instrument(level = "info", skip_all, fields(task = %params.task_id))]
pub fn start(
    config: Arc<russh::server::Config>,
    params: EndpointParams,
) -> AgentResult<SshEndpoint> {
    let preferred = SocketAddr::new(params.bind, params.preferred_port);
    let listener = match bind(preferred) {
        Ok(l) => l,
        Err(e) if params.preferred_port != 0 => {
            tracing::info!(port = params.preferred_port, error = %e, "preferred SSH port taken; using another");
            bind(SocketAddr::new(params.bind, 0)).map_err(|source| AgentError::Bind {
                addr: SocketAddr::new(params.bind, 0).to_string(),
                source,
            })?
        }
        Err(source) => {
            return Err(AgentError::Bind {
                addr: preferred.to_string(),
                source,
            });
        }
    };
    let port = listener
        .local_addr()
        .map_err(|e| AgentError::Internal(format!("cannot read the SSH address: {e}")))?
        .port();
    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let runner_listener = bind(loopback).map_err(|source| AgentError::Bind {
        addr: loopback.to_string(),
        source,
    })?;
    let runner_addr = runner_listener
        .local_addr()
        .map_err(|e| AgentError::Internal(format!("cannot read the runner address: {e}")))?;
    let runner = params.runner.clone();
    let runner_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(runner_listener, runner).await {
            tracing::warn!(error = %e, "task runner endpoint failed");
        }
    });
    let allowed: Vec<String> = params
        .allowed_keys
        .iter()
        .filter_map(|k| key_id(k))
        .collect();
    let ctx = Arc::new(Ctx {
        task_id: params.task_id.clone(),
        allowed,
        runner_addr,
        env: params.env.clone(),
    });
    let task_id = params.task_id.clone();
    let accept = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(task = %task_id, error = %e, "SSH accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while conns.try_join_next().is_some() {}
            let _ = stream.set_nodelay(true);
            let handler = Conn {
                ctx: ctx.clone(),
                user: String::new(),
            };
            let config = config.clone();
            conns.spawn(async move {
                match russh::server::run_stream(config, stream, handler).await {
                    Ok(session) => {
                        if let Err(e) = session.await {
                            tracing::debug!(%peer, error = %e, "SSH connection ended");
                        }
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "SSH handshake failed"),
                }
            });
        }
    });
    tracing::info!(port, %runner_addr, "task SSH endpoint listening");
    Ok(SshEndpoint {
        port,
        runner_addr,
        tasks: vec![accept.abort_handle(), runner_task.abort_handle()],
    })
}

struct Ctx {
    task_id: String,
    allowed: Vec<String>,
    runner_addr: SocketAddr,
    env: EnvProvider,
}

struct Conn {
    ctx: Arc<Ctx>,
    user: String,
}

impl Conn {
    fn allowed(&self, key: &russh::keys::PublicKey) -> bool {
        key.to_openssh()
            .ok()
            .and_then(|k| key_id(&k))
            .is_some_and(|id| self.ctx.allowed.contains(&id))
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.allowed(offer.public_key) {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.allowed(key.public_key) {
            self.user = user.to_string();
            tracing::info!(task = %self.ctx.task_id, user, "SSH login");
            Ok(Auth::Accept)
        } else {
            tracing::info!(task = %self.ctx.task_id, user, "SSH key refused");
            Ok(Auth::reject())
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            reply.accept().await;
            run_session(channel, ctx).await;
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let target = match (host_to_connect, u16::try_from(port_to_connect)) {
            (_, Ok(0)) | (_, Err(_)) => None,
            (_, Ok(_)) if port_to_connect == CONTAINER_RUNNER_PORT => Some(self.ctx.runner_addr),
            ("localhost" | "127.0.0.1", Ok(p)) => {
                Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p))
            }
            ("::1" | "[::1]", Ok(p)) => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), p)),
            _ => None,
        };
        let local = matches!(host_to_connect, "localhost" | "127.0.0.1" | "::1" | "[::1]");
        let Some(target) = target.filter(|_| local) else {
            tracing::info!(task = %self.ctx.task_id, host = host_to_connect, port = port_to_connect, "refused a forward outside the task");
            tokio::spawn(reply.reject(ChannelOpenFailure::AdministrativelyProhibited));
            return Ok(());
        };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(target).await {
                Ok(mut tcp) => {
                    let _ = tcp.set_nodelay(true);
                    reply.accept().await;
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                }
                Err(e) => {
                    tracing::debug!(%target, error = %e, "forward target refused");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }
}

/// The agent user's login shell (`/bin/sh` when unknown).
fn login_shell() -> PathBuf {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.shell)
        .filter(|s| s.is_file())
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

struct PtyReq {
    term: String,
    cols: u16,
    rows: u16,
}

fn clamp(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// One `session` channel: collects `pty-req`/`env` until `exec` or `shell`, runs it, pipes
/// data both ways and reports the exit status.
#[tracing::instrument(level = "debug", skip_all, fields(task = %ctx.task_id))]
async fn run_session(mut channel: Channel<Msg>, ctx: Arc<Ctx>) {
    let mut extra_env: Vec<(String, String)> = Vec::new();
    let mut pty: Option<PtyReq> = None;
    let command: Option<String> = loop {
        match channel.wait().await {
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                pty = Some(PtyReq {
                    term,
                    cols: clamp(col_width),
                    rows: clamp(row_height),
                });
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if let Some(p) = pty.as_mut() {
                    p.cols = clamp(col_width);
                    p.rows = clamp(row_height);
                }
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) => extra_env.push((variable_name, variable_value)),
            Some(ChannelMsg::Exec { command, .. }) => {
                break Some(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestShell { .. }) => break None,
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return,
            Some(_) => {}
        }
    };
    let mut session_env = (ctx.env)();
    for (k, v) in extra_env {
        session_env.env.insert(k, v);
    }
    if !session_env.cwd.is_dir() {
        session_env.cwd = PathBuf::from(
            session_env
                .env
                .get("HOME")
                .cloned()
                .unwrap_or_else(|| "/".into()),
        );
    }
    tracing::debug!(
        exec = command.is_some(),
        pty = pty.is_some(),
        "session starts"
    );
    let code = match pty {
        Some(p) => run_with_pty(channel, command, session_env, p).await,
        None => run_with_pipes(channel, command, session_env).await,
    };
    tracing::debug!(?code, "session ended");
}

fn shell_command(shell: &Path, command: &Option<String>) -> (Vec<String>, Option<String>) {
    match command {
        Some(c) => (vec!["-c".into(), c.clone()], None),
        None => {
            let name = shell
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sh".into());
            (Vec::new(), Some(format!("-{name}")))
        }
    }
}

async fn finish(tx: &russh::ChannelWriteHalf<Msg>, code: Option<i32>) {
    let code = code.unwrap_or(255);
    let _ = tx.exit_status(u32::try_from(code).unwrap_or(255)).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

async fn fail(tx: &russh::ChannelWriteHalf<Msg>, message: String) -> Option<i32> {
    let _ = tx.data_bytes(format!("{message}\r\n")).await;
    finish(tx, Some(127)).await;
    Some(127)
}

fn kill_session(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = pgroup::signal_group(pid, Signal::SIGHUP);
        let _ = pgroup::signal_group(pid, Signal::SIGKILL);
    }
}

async fn run_with_pipes(
    channel: Channel<Msg>,
    command: Option<String>,
    env: SessionEnv,
) -> Option<i32> {
    let (mut rx, tx) = channel.split();
    let shell = login_shell();
    let (args, arg0) = shell_command(&shell, &command);
    let mut cmd = tokio::process::Command::new(&shell);
    cmd.args(&args)
        .env_clear()
        .envs(env.env.iter())
        .current_dir(&env.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(a) = arg0 {
        cmd.arg0(a);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx
                .extended_data_bytes(1, format!("cannot start {}: {e}\r\n", shell.display()))
                .await;
            finish(&tx, Some(127)).await;
            return Some(127);
        }
    };
    let pid = child.id();
    let mut stdin = child.stdin.take();
    let mut copies = JoinSet::new();
    if let Some(mut out) = child.stdout.take() {
        let mut w = tx.make_writer();
        copies.spawn(async move {
            let _ = tokio::io::copy(&mut out, &mut w).await;
        });
    }
    if let Some(mut err) = child.stderr.take() {
        let mut w = tx.make_writer_ext(Some(1));
        copies.spawn(async move {
            let _ = tokio::io::copy(&mut err, &mut w).await;
        });
    }
    let status = loop {
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if let Some(s) = stdin.as_mut() && s.write_all(&data).await.is_err() {
                        stdin = None;
                    }
                }
                Some(ChannelMsg::Eof) => stdin = None,
                Some(ChannelMsg::Close) | None => {
                    kill_session(pid);
                    return None;
                }
                Some(_) => {}
            },
            status = child.wait() => break status.ok(),
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while copies.join_next().await.is_some() {}
    })
    .await;
    let code = status.and_then(pgroup::exit_code);
    finish(&tx, code).await;
    code
}

async fn run_with_pty(
    channel: Channel<Msg>,
    command: Option<String>,
    env: SessionEnv,
    req: PtyReq,
) -> Option<i32> {
    let (mut rx, tx) = channel.split();
    let (pty, pts) = match pty_process::open() {
        Ok(x) => x,
        Err(e) => return fail(&tx, format!("cannot allocate a terminal: {e}")).await,
    };
    if req.rows > 0 && req.cols > 0 {
        let _ = pty.resize(pty_process::Size::new(req.rows, req.cols));
    }
    let shell = login_shell();
    let (args, arg0) = shell_command(&shell, &command);
    let term = if req.term.is_empty() {
        "xterm".to_string()
    } else {
        req.term.clone()
    };
    let mut cmd = pty_process::Command::new(&shell)
        .args(&args)
        .env_clear()
        .envs(env.env.iter())
        .env("TERM", term)
        .current_dir(&env.cwd)
        .kill_on_drop(true);
    if let Some(a) = arg0 {
        cmd = cmd.arg0(a);
    }
    let mut child = match cmd.spawn(pts) {
        Ok(c) => c,
        Err(e) => return fail(&tx, format!("cannot start {}: {e}", shell.display())).await,
    };
    let pid = child.id();
    let (mut reader, mut writer) = pty.into_split();
    let mut out = tx.make_writer();
    let copy = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = out.flush().await;
                }
            }
        }
    });
    let status = loop {
        tokio::select! {
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let _ = writer.write_all(&data).await;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    let _ = writer.resize(pty_process::Size::new(clamp(row_height), clamp(col_width)));
                }
                Some(ChannelMsg::Close) | None => {
                    kill_session(pid);
                    copy.abort();
                    return None;
                }
                Some(_) => {}
            },
            status = child.wait() => break status.ok(),
        }
    };
    let abort = copy.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), copy)
        .await
        .is_err()
    {
        abort.abort();
    }
    let code = status.and_then(pgroup::exit_code);
    finish(&tx, code).await;
    code
}
