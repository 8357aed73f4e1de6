//! The embedded engine: state store, services and (later) pipelines.
//!
//! An [`Engine`] is what the `dstack-server` binary serves over HTTP and what
//! [`crate::client::Client::embedded`] calls in-process. Every API call enters through
//! [`Engine::call`] with a [`RouteId`], the caller's token and the JSON body, so the HTTP front
//! and the embedded client share one code path, one permission check and one error mapping.

pub mod auth;
#[cfg(feature = "backends")]
mod cloud;
pub mod config;
pub mod crypto;
mod dispatch;
mod fleet_choice;
/// Runs pinned to specific instances (`instances:`).
mod instance_selectors;
mod links;
pub mod pipelines;
#[cfg(feature = "backends")]
mod placement_groups;
mod planner;
mod read_cache;
mod run_json_cache;
pub mod services;
pub mod ssh_deploy;
pub mod startup;
pub mod store;
#[cfg(feature = "backends")]
pub mod sweep;
mod time;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::routes::{PathParams, RouteId};
use crate::{Error, ErrorKind};

pub use crate::spec::server_config::DefaultPermissions;
pub use startup::StartupInfo;
use store::{Store, StoreError};

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The server directory (`$DSTACK_SERVER_DIR`, default `~/.dstack/server`).
    pub server_dir: PathBuf,
    /// Database URL (`$DSTACK_DATABASE_URL`); default `<server_dir>/data/sqlite.db`.
    pub database_url: Option<String>,
    /// Token for the `admin` user at its first creation (`$DSTACK_SERVER_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Skip reading `config.yml` (`$DSTACK_SERVER_CONFIG_DISABLED`).
    pub config_disabled: bool,
    /// The per-user project quota for non-admins (`$DSTACK_USER_PROJECT_DEFAULT_QUOTA`).
    pub user_project_quota: u32,
    /// Background pipelines (`$DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED` turns them off).
    pub pipelines: pipelines::PipelineOptions,
    /// How the agent is installed on SSH-fleet hosts (`$DSTACK_AGENT_BINARY`).
    pub agent: ssh_deploy::AgentDeployOptions,
}

impl EngineOptions {
    /// Options for a server directory with every other setting at its default.
    pub fn new(server_dir: impl Into<PathBuf>) -> Self {
        Self {
            server_dir: server_dir.into(),
            database_url: None,
            admin_token: None,
            config_disabled: false,
            user_project_quota: 10,
            pipelines: pipelines::PipelineOptions::default(),
            agent: ssh_deploy::AgentDeployOptions::default(),
        }
    }

    /// Reads the dstack environment variables on top of [`EngineOptions::new`].
    pub fn from_env(server_dir: impl Into<PathBuf>) -> Self {
        let mut o = Self::new(server_dir);
        o.database_url = std::env::var("DSTACK_DATABASE_URL")
            .ok()
            .filter(|s| !s.is_empty());
        o.admin_token = std::env::var("DSTACK_SERVER_ADMIN_TOKEN")
            .ok()
            .filter(|s| !s.is_empty());
        o.config_disabled = env_flag("DSTACK_SERVER_CONFIG_DISABLED");
        if let Some(q) = std::env::var("DSTACK_USER_PROJECT_DEFAULT_QUOTA")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            o.user_project_quota = q;
        }
        o.pipelines.enabled = !env_flag("DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED");
        if let Some(s) = std::env::var("DSTACK_SERVER_JOB_DISCONNECT_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            o.pipelines.job_disconnect_timeout = std::time::Duration::from_secs(s);
        }
        o.agent = ssh_deploy::AgentDeployOptions::from_env();
        o
    }
}

pub(crate) fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) cache: read_cache::ReadCache,
    /// Serialised finished runs for `runs/list`.
    pub(crate) run_json: run_json_cache::RunJsonCache,
    pub(crate) crypto: std::sync::RwLock<crypto::Crypto>,
    pub(crate) permissions: std::sync::RwLock<DefaultPermissions>,
    pub(crate) options: EngineOptions,
    pub(crate) pipelines: pipelines::Pipelines,
    pub(crate) catalog: planner::EngineCatalog,
    pub(crate) links: links::Links,
    #[cfg(feature = "backends")]
    pub(crate) computes: cloud::Computes,
}

/// The engine: cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("server_dir", &self.inner.options.server_dir)
            .finish()
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        Error::new(ErrorKind::Internal, e.to_string())
    }
}

impl From<crypto::CryptoError> for Error {
    fn from(e: crypto::CryptoError) -> Self {
        Error::new(ErrorKind::Internal, e.to_string())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::from(StoreError::from(e))
    }
}

impl Engine {
    /// Opens the engine: database (migrated), encryption keys and `config.yml`, then the
    /// `admin` user and `main` project as dstack does at startup.
    pub async fn open(options: EngineOptions) -> crate::Result<(Self, StartupInfo)> {
        let store = match &options.database_url {
            Some(url) => Store::open_url(url).await?,
            None => Store::open_sqlite(&options.server_dir.join("data").join("sqlite.db")).await?,
        };
        Self::start(store, options).await
    }

    /// An engine on a fresh in-memory database (for tests and throwaway use).
    pub async fn in_memory(options: EngineOptions) -> crate::Result<(Self, StartupInfo)> {
        Self::start(Store::open_memory().await?, options).await
    }

    /// Loads the offer catalog from `GPUHUNT_CATALOG_DIR` (gpuhunt's CSV layout) when set.
    /// Without it, backends offer nothing and plans list existing instances only.
    fn load_catalog(&self) {
        match crate::offers::Catalog::from_env_dir() {
            Some(Ok(c)) => {
                tracing::info!(rows = c.len(), "offer catalog loaded");
                self.inner.catalog.replace(c);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "cannot load the offer catalog"),
            None => tracing::info!(
                "no offer catalog: set GPUHUNT_CATALOG_DIR to a directory of gpuhunt CSV files"
            ),
        }
    }

    async fn start(store: Store, options: EngineOptions) -> crate::Result<(Self, StartupInfo)> {
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                cache: read_cache::ReadCache::default(),
                run_json: run_json_cache::RunJsonCache::default(),
                crypto: std::sync::RwLock::new(crypto::Crypto::default()),
                permissions: std::sync::RwLock::new(DefaultPermissions::default()),
                options,
                pipelines: pipelines::Pipelines::default(),
                catalog: planner::EngineCatalog::default(),
                links: links::Links::default(),
                #[cfg(feature = "backends")]
                computes: cloud::Computes::default(),
            }),
        };
        engine.load_catalog();
        let info = startup::run(&engine).await?;
        if engine.inner.options.pipelines.enabled {
            engine.start_pipelines();
            #[cfg(feature = "backends")]
            engine.start_sweep();
        }
        Ok((engine, info))
    }

    /// Calls one API route as the holder of `token` with a JSON `body` (`None` = no body).
    ///
    /// This is the single entry point the HTTP server and the embedded client share.
    pub async fn call(
        &self,
        route: RouteId,
        token: Option<&str>,
        params: &PathParams,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        dispatch::call(self, route, token, params, body)
            .await?
            .into_value()
    }

    /// Like [`Engine::call`], but answers with the JSON text (what the HTTP server sends):
    /// large lists built from cached JSON are not parsed back into values.
    pub async fn call_json(
        &self,
        route: RouteId,
        token: Option<&str>,
        params: &PathParams,
        body: Option<Value>,
    ) -> crate::Result<Vec<u8>> {
        dispatch::call(self, route, token, params, body)
            .await?
            .into_bytes()
    }

    /// Commits a write to users, projects, members or backends and invalidates the read cache.
    pub(crate) async fn commit_identity(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    ) -> crate::Result<()> {
        tx.commit().await?;
        self.inner.cache.invalidate();
        Ok(())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn crypto(&self) -> crypto::Crypto {
        match self.inner.crypto.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn permissions(&self) -> DefaultPermissions {
        match self.inner.permissions.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
