//! `client.project(p).backends()`: the `/api/project/{p}/backends/*` routes.

use serde_json::{Value, json};

use crate::routes::{PathParams, RouteId};

use super::Client;

/// A project's backends (cloud accounts). Obtain with
/// [`ProjectHandle::backends`](super::ProjectHandle::backends).
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// let backends = client.project("main").backends();
/// backends.create_yaml("type: lambda\ncreds:\n  type: api_key\n  api_key: KEY\n").await?;
/// let yaml = backends.get_yaml("lambda").await?;
/// backends.delete(&["lambda"]).await?;
/// # let _ = yaml; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Backends {
    pub(super) client: Client,
    pub(super) project: String,
}

impl Backends {
    fn params(&self) -> PathParams {
        PathParams::project(&self.project)
    }

    /// Creates a backend from a config with credentials (a JSON object with `type`).
    pub async fn create(&self, config: &Value) -> crate::Result<Value> {
        self.client
            .call(RouteId::BackendsCreate, &self.params(), Some(config))
            .await
    }

    /// Replaces an existing backend's config.
    pub async fn update(&self, config: &Value) -> crate::Result<Value> {
        self.client
            .call(RouteId::BackendsUpdate, &self.params(), Some(config))
            .await
    }

    /// Creates a backend from its `config.yml` YAML.
    pub async fn create_yaml(&self, yaml: &str) -> crate::Result<()> {
        let _: Value = self
            .client
            .call(
                RouteId::BackendsCreateYaml,
                &self.params(),
                Some(&json!({"config_yaml": yaml})),
            )
            .await?;
        Ok(())
    }

    /// Replaces a backend from its YAML.
    pub async fn update_yaml(&self, yaml: &str) -> crate::Result<()> {
        let _: Value = self
            .client
            .call(
                RouteId::BackendsUpdateYaml,
                &self.params(),
                Some(&json!({"config_yaml": yaml})),
            )
            .await?;
        Ok(())
    }

    /// The backend's YAML, credentials included.
    pub async fn get_yaml(&self, backend_type: &str) -> crate::Result<String> {
        let mut p = self.params();
        p.backend = Some(backend_type.into());
        let v: Value = self
            .client
            .call(RouteId::BackendsGetYaml, &p, None::<&()>)
            .await?;
        Ok(v.get("config_yaml")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// The backend's config with credentials.
    pub async fn config_info(&self, backend_type: &str) -> crate::Result<Value> {
        let mut p = self.params();
        p.backend = Some(backend_type.into());
        self.client
            .call(RouteId::BackendsConfigInfo, &p, None::<&()>)
            .await
    }

    /// Deletes backends by type.
    pub async fn delete(&self, backend_types: &[&str]) -> crate::Result<()> {
        let _: Value = self
            .client
            .call(
                RouteId::BackendsDelete,
                &self.params(),
                Some(&json!({"backends_names": backend_types})),
            )
            .await?;
        Ok(())
    }
}
