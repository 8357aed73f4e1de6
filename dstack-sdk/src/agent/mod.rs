//! The host agent: dstack's shim API (port 10998) and runner API (port 10999) served by one
//! process, so the server can drive this agent or dstack's Go agents alike — plus the wire
//! types and typed clients for both APIs.
//!
//! | module | what it holds |
//! |---|---|
//! | [`protocol`] | wire types of both APIs, with dstack's JSON field names |
//! | [`client`] | `ShimClient` / `RunnerClient` over reqwest (feature `http`) |
//! | [`host`] | host facts (`host_info.json`), GPU detection and name normalisation |
//! | [`executor`] | the `Executor`/`JobRunner` traits and the process executor |
//! | [`server`] | the axum routers (runner API with `/logs_ws`) |
//! | [`sshd`] | the per-task SSH server (what `sshd` on port 10022 is in dstack's container) |
//! | [`authorized_keys`] | the host user's `authorized_keys` edits for `host_ssh_keys` |
//!
//! Today the agent runs tasks with the process executor (no container engine): the shim's task
//! and the runner's job are the same local process group, run on a pseudo-terminal as dstack's
//! runner does. The agent listens on loopback by default: the server reaches it through SSH
//! tunnels.
//!
//! ## Attaching (`dstack apply` without `-d`, `dstack attach`)
//!
//! The dstack CLI jumps through the host's own sshd (`<run>-host`: `host_ssh_user` with the
//! run's key, which the agent appends to that user's `authorized_keys` while the task lives)
//! to the task's "container" SSH server (`<run>`: `localhost:<ports[10022]>`), forwards port
//! 10999 and streams `ws://localhost:<port>/logs_ws`. So for each task submitted through the
//! shim API the agent:
//!
//! * starts an SSH server ([`sshd`]) on loopback, port 10022 when free (else a free one;
//!   [`AgentOptions::ssh_port`]), reported in the task's `ports` as
//!   `{"host": <port>, "container": 10022}`; it accepts the task's `container_ssh_keys` and
//!   serves `direct-tcpip` (10999 → this task's runner API, other ports → `127.0.0.1`) and
//!   `session` channels (exec, shell, PTY) with the job's environment;
//! * adds `host_ssh_keys` to `host_ssh_user`'s `~/.ssh/authorized_keys` and later removes
//!   exactly the lines it added ([`authorized_keys`]);
//! * serves `GET /logs_ws?start_time=` on the runner API: the job's raw terminal output as
//!   binary frames, live until the job ended, then a normal close;
//! * keeps all of this after `POST /api/tasks/{id}/remove` (which answers at once) until the
//!   job ended at least [`AgentOptions::attach_linger`] ago, because a CLI usually attaches
//!   after a short job already finished.
//!
//! ```no_run
//! # async fn demo() -> dstack_sdk::Result<()> {
//! use dstack_sdk::agent::{AgentOptions, run_agent};
//! run_agent(AgentOptions::new("/root/.dstack")).await
//! # }
//! ```

pub mod authorized_keys;
#[cfg(feature = "http")]
pub mod client;
mod error;
pub mod executor;
mod fsutil;
pub mod host;
pub mod multipart;
pub mod protocol;
pub mod server;
pub mod sshd;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use error::{AgentError, AgentResult};
pub use executor::{AttachSettings, ProcessExecutor, ProcessExecutorConfig, TaskRunner};

/// The shim API's default port.
pub const DEFAULT_SHIM_PORT: u16 = 10998;
/// The runner API's default port.
pub const DEFAULT_RUNNER_PORT: u16 = 10999;
/// The default [`AgentOptions::attach_linger`].
pub const DEFAULT_ATTACH_LINGER: Duration = Duration::from_secs(60);

/// How the agent runs (the equivalent of the `dstack-server agent` flags).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentOptions {
    /// The agent home: `host_info.json` and `tasks/` live here (dstack's shim uses
    /// `/root/.dstack`).
    pub home: PathBuf,
    /// The address both APIs listen on (default `127.0.0.1`: reached through SSH tunnels).
    pub bind_address: IpAddr,
    /// The shim API port (default 10998; 0 picks a free one).
    pub shim_port: u16,
    /// The runner API port (default 10999; 0 picks a free one).
    pub runner_port: u16,
    /// The version both healthchecks report (default: the dstack release this SDK speaks).
    pub version: String,
    /// The largest upload accepted by the runner API, bytes.
    pub max_upload_bytes: usize,
    /// Process executor tunables.
    pub executor: ProcessExecutorConfig,
    /// The port each task's SSH server tries first (default 10022, dstack's container SSH
    /// port); when taken, the OS picks one. 0 always picks a free one.
    pub ssh_port: u16,
    /// How long a removed task keeps its SSH server, host keys and logs after its job ended
    /// (default 60 s), for CLIs that attach late.
    pub attach_linger: Duration,
    /// Runner mode's own SSH server (default none; see [`RunnerSshOptions`]).
    pub runner_ssh: Option<RunnerSshOptions>,
}

/// The SSH server of an agent that stands for dstack's runner in a container (a Kubernetes
/// job pod): what `dstack-runner --ssh-port 10022 --ssh-authorized-key …` starts. It is there
/// from the agent's start, before any job is submitted, because the server reaches the runner
/// API through it; port 10999 (`direct-tcpip` to `localhost`) is this agent's runner API,
/// other ports are `127.0.0.1:<port>`. Sessions run in the agent's own environment.
#[derive(Debug, Clone)]
pub struct RunnerSshOptions {
    /// The address to listen on (the pod's address).
    pub bind: IpAddr,
    /// The port (dstack's 10022; 0 lets the OS pick).
    pub port: u16,
    /// The public keys accepted (OpenSSH `authorized_keys` lines).
    pub authorized_keys: Vec<String>,
}

impl AgentOptions {
    /// Defaults with the given home directory.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self {
            home: home.into(),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            shim_port: DEFAULT_SHIM_PORT,
            runner_port: DEFAULT_RUNNER_PORT,
            version: crate::DSTACK_VERSION.to_string(),
            max_upload_bytes: 1 << 30,
            executor: ProcessExecutorConfig::default(),
            ssh_port: sshd::CONTAINER_SSH_PORT,
            attach_linger: DEFAULT_ATTACH_LINGER,
            runner_ssh: None,
        }
    }
}

impl Default for AgentOptions {
    /// Home `$HOME/.dstack` (`/root/.dstack` without `$HOME`), as dstack's shim.
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        Self::new(home.join(".dstack"))
    }
}

/// The two listening sockets, bound before the agent starts (tests bind port 0).
#[derive(Debug)]
pub struct AgentListeners {
    /// The shim API listener.
    pub shim: TcpListener,
    /// The runner API listener.
    pub runner: TcpListener,
}

impl AgentListeners {
    /// Binds both ports of `options`.
    pub async fn bind(options: &AgentOptions) -> AgentResult<Self> {
        let bind = |port: u16| async move {
            let addr = SocketAddr::new(options.bind_address, port);
            TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind {
                    addr: addr.to_string(),
                    source,
                })
        };
        Ok(Self {
            shim: bind(options.shim_port).await?,
            runner: bind(options.runner_port).await?,
        })
    }
}

/// A started agent. Dropping it leaves the servers running until the runtime ends; call
/// [`AgentHandle::shutdown`] to stop serving (jobs keep running and survive a restart).
#[derive(Debug)]
pub struct AgentHandle {
    shim_addr: SocketAddr,
    runner_addr: SocketAddr,
    executor: ProcessExecutor,
    stop: watch::Sender<bool>,
    shutdown_requested: Arc<Notify>,
    servers: Vec<JoinHandle<()>>,
    runner_ssh: Option<sshd::SshEndpoint>,
}

impl AgentHandle {
    /// Where the shim API listens.
    pub fn shim_addr(&self) -> SocketAddr {
        self.shim_addr
    }

    /// Where the runner API listens.
    pub fn runner_addr(&self) -> SocketAddr {
        self.runner_addr
    }

    /// `http://<shim addr>`.
    pub fn shim_url(&self) -> String {
        format!("http://{}", self.shim_addr)
    }

    /// `http://<runner addr>`.
    pub fn runner_url(&self) -> String {
        format!("http://{}", self.runner_addr)
    }

    /// The port of runner mode's SSH server, when [`AgentOptions::runner_ssh`] asked for one.
    pub fn runner_ssh_port(&self) -> Option<u16> {
        self.runner_ssh.as_ref().map(sshd::SshEndpoint::port)
    }

    /// The executor behind both APIs.
    pub fn executor(&self) -> &ProcessExecutor {
        &self.executor
    }

    /// Resolves when a client asked the agent to exit (`POST /api/shutdown`).
    pub async fn shutdown_requested(&self) {
        self.shutdown_requested.notified().await;
    }

    /// Stops serving and supervising. Running jobs are left alone; an agent started later on
    /// the same home picks them up.
    pub async fn shutdown(self) {
        drop(self.runner_ssh);
        self.stop.send_replace(true);
        for server in self.servers {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.executor.shutdown();
        tracing::info!("agent stopped");
    }
}

/// Starts the agent on pre-bound listeners: detects the host, writes `host_info.json`,
/// loads (or creates) the SSH host key, restores tasks from the home directory (reopening
/// their SSH endpoints) and serves both APIs.
#[tracing::instrument(level = "info", skip_all, fields(home = %options.home.display()))]
pub async fn start_agent(
    options: AgentOptions,
    listeners: AgentListeners,
) -> crate::Result<AgentHandle> {
    fsutil::create_dir_all(&options.home)?;
    let facts = host::collect(&options.home).await;
    if let Err(e) = host::write_host_info(&options.home, &facts.info) {
        tracing::warn!(error = %e, "cannot write host_info.json");
    }
    let executor =
        ProcessExecutor::open(&options.home, facts.gpus, options.executor.clone()).await?;
    let host_key = sshd::load_or_create_host_key(&options.home)?;
    let ssh_config = sshd::server_config(host_key);
    let mut attach = AttachSettings::new(ssh_config.clone());
    attach.bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
    attach.preferred_port = options.ssh_port;
    attach.linger = options.attach_linger;
    attach.version = options.version.clone();
    attach.max_upload_bytes = options.max_upload_bytes;
    executor.enable_attach(attach);
    let shared = Arc::new(executor.clone());
    let shutdown_requested = Arc::new(Notify::new());
    let shim = server::shim_router(
        shared.clone(),
        server::ShimContext {
            version: options.version.clone(),
            shutdown: shutdown_requested.clone(),
        },
    );
    let runner = server::runner_router(shared, options.version.clone(), options.max_upload_bytes)
        .merge(task_runner_routes(
            executor.clone(),
            options.version.clone(),
            options.max_upload_bytes,
        ));
    let runner_ssh = match &options.runner_ssh {
        Some(o) => Some(start_runner_ssh(
            ssh_config,
            o,
            runner.clone(),
            &options.home,
        )?),
        None => None,
    };
    let addr = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| AgentError::Internal(format!("cannot read the listening address: {e}")))
    };
    let shim_addr = addr(&listeners.shim)?;
    let runner_addr = addr(&listeners.runner)?;
    let (stop, _) = watch::channel(false);
    let serve = |listener: TcpListener, app: axum::Router, name: &'static str| {
        let mut stopped = stop.subscribe();
        tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(api = name, error = %e, "agent API server failed");
            }
        })
    };
    let servers = vec![
        serve(listeners.shim, shim, "shim"),
        serve(listeners.runner, runner, "runner"),
    ];
    tracing::info!(%shim_addr, %runner_addr, "agent listening");
    Ok(AgentHandle {
        shim_addr,
        runner_addr,
        executor,
        stop,
        shutdown_requested,
        servers,
        runner_ssh,
    })
}

/// Starts runner mode's SSH server (see [`RunnerSshOptions`]).
fn start_runner_ssh(
    config: Arc<russh::server::Config>,
    o: &RunnerSshOptions,
    runner: axum::Router,
    home: &std::path::Path,
) -> AgentResult<sshd::SshEndpoint> {
    let cwd = home.to_path_buf();
    let env: sshd::EnvProvider = Arc::new(move || sshd::SessionEnv {
        env: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
        cwd: cwd.clone(),
    });
    let endpoint = sshd::start(
        config,
        sshd::EndpointParams {
            task_id: "runner".into(),
            allowed_keys: o.authorized_keys.clone(),
            bind: o.bind,
            preferred_port: o.port,
            runner,
            env,
        },
    )?;
    if o.port != 0 && endpoint.port() != o.port {
        // Clients expect the runner's SSH port; another one would never be found.
        return Err(AgentError::Internal(format!(
            "cannot listen on {}:{} for the runner's SSH server (taken)",
            o.bind, o.port
        )));
    }
    tracing::info!(bind = %o.bind, port = endpoint.port(), keys = o.authorized_keys.len(),
        "runner SSH server listening");
    Ok(endpoint)
}

/// The runner API of one task under `/tasks/{id}/…` on the runner port (e.g.
/// `/tasks/{id}/api/pull`): what the server uses when several jobs share this host (blocks,
/// or nodes of a multi-node run on one agent), since the plain paths serve the newest task
/// only. Unknown tasks answer 404.
fn task_runner_routes(
    executor: ProcessExecutor,
    version: String,
    max_upload: usize,
) -> axum::Router {
    use axum::extract::{Path, Request, State};
    use axum::response::IntoResponse;
    use tower::ServiceExt;

    #[derive(Clone)]
    struct Ctx {
        executor: ProcessExecutor,
        version: String,
        max_upload: usize,
    }

    async fn forward(
        State(ctx): State<Ctx>,
        Path((id, rest)): Path<(String, String)>,
        mut req: Request,
    ) -> axum::response::Response {
        let runner = match ctx.executor.task_runner(&id) {
            Ok(r) => r,
            Err(e) => {
                return (axum::http::StatusCode::NOT_FOUND, format!("{e}\n")).into_response();
            }
        };
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        match format!("/{rest}{query}").parse::<axum::http::Uri>() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => {
                return (axum::http::StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
            }
        }
        let router = server::runner_router(Arc::new(runner), ctx.version, ctx.max_upload);
        match router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    axum::Router::new()
        .route("/tasks/{id}/{*rest}", axum::routing::any(forward))
        .with_state(Ctx {
            executor,
            version,
            max_upload,
        })
}

/// Runs the agent until SIGINT/SIGTERM or `POST /api/shutdown`: binds both ports, prints
/// where it listens (the actual ports when 0 was asked for) and serves.
pub async fn run_agent(options: AgentOptions) -> crate::Result<()> {
    let listeners = AgentListeners::bind(&options).await?;
    let handle = start_agent(options, listeners).await?;
    println!(
        "dstack agent listening: shim API http://{}, runner API http://{}",
        handle.shim_addr(),
        handle.runner_addr()
    );
    tokio::select! {
        _ = handle.shutdown_requested() => {}
        _ = termination_signal() => {}
    }
    handle.shutdown().await;
    Ok(())
}

async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
