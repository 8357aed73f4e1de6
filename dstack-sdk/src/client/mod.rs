//! Typed async clients for the dstack API.
//!
//! One [`Client`] talks either to a remote server over HTTP ([`Client::new`]) or to an
//! in-process engine ([`Client::embedded`]); the resource handles are the same either way.
//!
//! ```no_run
//! # async fn demo() -> dstack_sdk::Result<()> {
//! use dstack_sdk::client::Client;
//! let client = Client::new("http://127.0.0.1:3000", "my-token")?;
//! let me = client.users().get_my_user().await?;
//! let main = client.project("main").get().await?;
//! println!("{} is in {} with {} members", me.user.username, main.project_name, main.members.len());
//! # Ok(()) }
//! ```

mod backends;
mod fleets;
mod instances;
mod offers;
mod projects;
mod runs;
mod secrets;
mod transport;
mod users;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::routes::{PathParams, RouteId};
use crate::{Error, ErrorKind};

pub use backends::Backends;
pub use fleets::{Fleets, fleet_spec};
pub use instances::Instances;
pub use offers::Offers;
pub use projects::{Members, ProjectHandle, Projects};
pub use runs::{LogFollower, Logs, Runs};
pub use secrets::Secrets;
pub use users::Users;

use transport::Transport;

/// A dstack API client: cheap to clone, safe to share between tasks.
#[derive(Clone, Debug)]
pub struct Client {
    transport: Arc<Transport>,
}

impl Client {
    /// A client for the server at `url` (e.g. `http://127.0.0.1:3000`) acting as the holder
    /// of `token`.
    ///
    /// ```
    /// let client = dstack_sdk::client::Client::new("http://127.0.0.1:3000", "token").unwrap();
    /// # let _ = client;
    /// ```
    #[cfg(feature = "http")]
    pub fn new(url: &str, token: &str) -> crate::Result<Self> {
        Ok(Self {
            transport: Arc::new(Transport::Http(transport::HttpTransport::new(url, token)?)),
        })
    }

    /// A client that runs the engine in-process over the server directory `dir` (SQLite in
    /// `dir/data/sqlite.db`, `dir/config.yml`), acting as the `admin` user. No server needed.
    ///
    /// ```no_run
    /// # async fn demo() -> dstack_sdk::Result<()> {
    /// let client = dstack_sdk::client::Client::embedded("/tmp/dstack-state").await?;
    /// let projects = client.projects().list().await?;
    /// assert!(projects.iter().any(|p| p.project_name == "main"));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "engine")]
    pub async fn embedded(dir: impl Into<std::path::PathBuf>) -> crate::Result<Self> {
        let (engine, info) =
            crate::engine::Engine::open(crate::engine::EngineOptions::from_env(dir)).await?;
        Ok(Self::with_engine(engine, &info.admin_token))
    }

    /// A client over an already opened engine, acting as the holder of `token`.
    #[cfg(feature = "engine")]
    pub fn with_engine(engine: crate::engine::Engine, token: &str) -> Self {
        Self {
            transport: Arc::new(Transport::Embedded(transport::EmbeddedTransport {
                engine,
                token: token.to_string(),
            })),
        }
    }

    /// The same connection acting as another user.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            transport: Arc::new(self.transport.with_token(token)),
        }
    }

    /// Users: list, create, update, delete, tokens.
    pub fn users(&self) -> Users {
        Users {
            client: self.clone(),
        }
    }

    /// Projects: list, create, delete.
    pub fn projects(&self) -> Projects {
        Projects {
            client: self.clone(),
        }
    }

    /// One project: its members, backends and secrets.
    pub fn project(&self, name: &str) -> ProjectHandle {
        ProjectHandle {
            client: self.clone(),
            name: name.to_string(),
        }
    }

    /// The server's version string (`POST /api/server/get_info`).
    pub async fn server_version(&self) -> crate::Result<Option<String>> {
        let v: Value = self
            .call(RouteId::ServerGetInfo, &PathParams::default(), None::<&()>)
            .await?;
        Ok(v.get("server_version")
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// Calls a route with a typed body and decodes the typed response.
    pub(crate) async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        route: RouteId,
        params: &PathParams,
        body: Option<&B>,
    ) -> crate::Result<T> {
        let body = body
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode request: {e}")))?;
        let v = self.transport.call(route, params, body).await?;
        serde_json::from_value(v).map_err(|e| {
            Error::new(
                ErrorKind::Transport,
                format!("unexpected response from {route:?}: {e}"),
            )
        })
    }
}
