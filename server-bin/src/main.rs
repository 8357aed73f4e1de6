//! `dstack-server`: the dstack server (Enterprise flavour) on top of `dstack-sdk`.
//!
//! Configuration comes from the same environment variables as dstack's Python server:
//! `DSTACK_SERVER_HOST` (default `127.0.0.1`), `DSTACK_SERVER_PORT` (default `3000`) and
//! `DSTACK_SERVER_DIR` (default `~/.dstack/server`).

mod cli_config;
mod http;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use dstack_sdk::engine::{Engine, EngineOptions};
use tracing_subscriber::EnvFilter;

/// Command-line flags; every flag can also be given through its environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "dstack-server",
    version,
    about = "The dstack server (Enterprise flavour)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "DSTACK_SERVER_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free port).
    #[arg(long, env = "DSTACK_SERVER_PORT", default_value_t = 3000)]
    port: u16,
    /// Server state directory (SQLite database, config.yml).
    #[arg(long, env = "DSTACK_SERVER_DIR")]
    server_dir: Option<PathBuf>,
    /// Log level filter (e.g. `info`, `debug`, `dstack_sdk=debug`).
    #[arg(long, env = "DSTACK_SERVER_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Run something other than the server (default: the server).
    #[command(subcommand)]
    command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the host agent (dstack's shim API and runner API, process executor).
    Agent(AgentArgs),
}

/// `dstack-server agent` flags; dstack-shim's environment variables work too.
#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// Agent home: `host_info.json` and the task directories (default `~/.dstack`).
    #[arg(long, env = "DSTACK_SHIM_HOME")]
    home: Option<PathBuf>,
    /// Shim API port (0 picks a free port).
    #[arg(long, env = "DSTACK_SHIM_HTTP_PORT", default_value_t = dstack_sdk::agent::DEFAULT_SHIM_PORT)]
    shim_port: u16,
    /// Runner API port (0 picks a free port).
    #[arg(long, env = "DSTACK_RUNNER_HTTP_PORT", default_value_t = dstack_sdk::agent::DEFAULT_RUNNER_PORT)]
    runner_port: u16,
    /// Address both APIs listen on (the server reaches them through SSH tunnels).
    #[arg(long, env = "DSTACK_AGENT_BIND_ADDRESS", default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Port each task's SSH server tries first (dstack's container port; a free one when
    /// taken; 0 always picks a free one).
    #[arg(long, env = "DSTACK_RUNNER_SSH_PORT", default_value_t = 10022)]
    ssh_port: u16,
    /// Seconds a removed task keeps its SSH server, host keys and logs after its job ended,
    /// for CLIs that attach late.
    #[arg(long, env = "DSTACK_AGENT_ATTACH_LINGER", default_value_t = 60)]
    attach_linger: u64,
    /// Runner mode (the agent stands for dstack-runner in a container, e.g. a Kubernetes job
    /// pod): also serve the job's SSH server on `--bind`:PORT from the start, as
    /// `dstack-runner --ssh-port` does (port 10999 through it is the runner API).
    #[arg(long)]
    runner_ssh_port: Option<u16>,
    /// A public key the runner-mode SSH server accepts (repeat for more), as
    /// `dstack-runner --ssh-authorized-key`.
    #[arg(long = "ssh-authorized-key")]
    ssh_authorized_keys: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log_level).context("invalid log level")?)
        .init();
    if let Some(Command::Agent(agent)) = args.command {
        let mut options = dstack_sdk::agent::AgentOptions::default();
        if let Some(home) = agent.home {
            options.home = home;
        }
        options.shim_port = agent.shim_port;
        options.runner_port = agent.runner_port;
        options.bind_address = agent.bind;
        options.ssh_port = agent.ssh_port;
        options.attach_linger = std::time::Duration::from_secs(agent.attach_linger);
        options.runner_ssh =
            agent
                .runner_ssh_port
                .map(|port| dstack_sdk::agent::RunnerSshOptions {
                    bind: agent.bind,
                    port,
                    authorized_keys: agent.ssh_authorized_keys.clone(),
                });
        return dstack_sdk::agent::run_agent(options)
            .await
            .context("agent failed");
    }

    let server_dir = match args.server_dir {
        Some(dir) => dir,
        None => home_dir()
            .context("cannot find the home directory: set DSTACK_SERVER_DIR")?
            .join(".dstack")
            .join("server"),
    };
    std::fs::create_dir_all(&server_dir)
        .with_context(|| format!("cannot create server directory {}", server_dir.display()))?;

    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid listen address {}:{}", args.host, args.port))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}: is another server running there?"))?;
    let local = listener.local_addr()?;

    let options = EngineOptions::from_env(&server_dir);
    let (engine, info) = Engine::open(options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the engine in {}: {e}", server_dir.display()))?;
    let url = format!("http://{local}");
    if !env_flag("DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT")
        && let Err(e) =
            cli_config::update_default_project(&info.default_project, &url, &info.admin_token)
    {
        tracing::warn!("could not update the CLI config ~/.dstack/config.yml: {e:#}");
    }
    let app = http::router(http::AppState::new(engine));
    // The token is printed (never logged) so that the operator can log in, as dstack does.
    println!("The admin user token is {:?}", info.admin_token);
    tracing::info!(
        version = dstack_sdk::SERVER_VERSION,
        "dstack-server started"
    );
    println!("The dstack server is running at {url}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server error")?;
    Ok(())
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
