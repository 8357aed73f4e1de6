//! `client.project(p).secrets()`: the `/api/project/{p}/secrets/*` routes.

use crate::models::secrets::{
    CreateOrUpdateSecretRequest, DeleteSecretsRequest, GetSecretRequest, Secret,
};
use crate::routes::{PathParams, RouteId};

use super::Client;

/// A project's secrets. Obtain with [`ProjectHandle::secrets`](super::ProjectHandle::secrets).
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// let secrets = client.project("main").secrets();
/// secrets.set("HF_TOKEN", "hf_xxx").await?;
/// assert_eq!(secrets.get("HF_TOKEN").await?.value.as_deref(), Some("hf_xxx"));
/// secrets.delete(&["HF_TOKEN"]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Secrets {
    pub(super) client: Client,
    pub(super) project: String,
}

impl Secrets {
    fn params(&self) -> PathParams {
        PathParams::project(&self.project)
    }

    /// Secret names (values are `None` in listings).
    pub async fn list(&self) -> crate::Result<Vec<Secret>> {
        self.client
            .call(RouteId::SecretsList, &self.params(), None::<&()>)
            .await
    }

    /// One secret with its value.
    pub async fn get(&self, name: &str) -> crate::Result<Secret> {
        let req = GetSecretRequest { name: name.into() };
        self.client
            .call(RouteId::SecretsGet, &self.params(), Some(&req))
            .await
    }

    /// Creates or replaces a secret.
    pub async fn set(&self, name: &str, value: &str) -> crate::Result<Secret> {
        let req = CreateOrUpdateSecretRequest {
            name: name.into(),
            value: value.into(),
        };
        self.client
            .call(RouteId::SecretsCreateOrUpdate, &self.params(), Some(&req))
            .await
    }

    /// Deletes secrets; fails without deleting any if one name is missing.
    pub async fn delete(&self, names: &[&str]) -> crate::Result<()> {
        let req = DeleteSecretsRequest {
            secrets_names: names.iter().map(|s| s.to_string()).collect(),
        };
        let _: serde_json::Value = self
            .client
            .call(RouteId::SecretsDelete, &self.params(), Some(&req))
            .await?;
        Ok(())
    }
}
