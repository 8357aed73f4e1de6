//! Project backends: configs stored without credentials, credentials encrypted
//! (dstack-api.md §2.4). Until each cloud's provisioning lands, a backend's config is checked
//! for shape (the typed config of its `type`), not against the cloud.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::engine::auth::Ctx;
use crate::engine::{Engine, time};
use crate::models::backends::{
    AnyBackendConfigWithCreds, BackendInfo, BackendYamlRequest, DeleteBackendsRequest,
};
use crate::{Error, ErrorKind};

use super::{parse_body, to_json};

/// The backend types of the Backends page, which this build accepts in `backends/create`
/// (`/api/backends/list_types`).
pub const AVAILABLE_TYPES: &[&str] = &[
    "amddevcloud",
    "aws",
    "azure",
    "cloudrift",
    "cudo",
    "datacrunch",
    "digitalocean",
    "gcp",
    "hotaisle",
    "kubernetes",
    "lambda",
    "nebius",
    "oci",
    "runpod",
    "vastai",
    "verda",
    "vultr",
];

/// [`AVAILABLE_TYPES`] as a list.
pub fn available_types() -> Vec<&'static str> {
    AVAILABLE_TYPES.to_vec()
}

/// A validated backend config: `(type, full config with creds, config without creds)`.
pub(crate) fn normalize(config: Value) -> crate::Result<(String, Value, Value)> {
    let typed = AnyBackendConfigWithCreds::parse(&config, true)?;
    normalize_typed(&typed)
}

/// [`normalize`] for an already typed config; refuses types this build does not provide.
pub(crate) fn normalize_typed(
    typed: &AnyBackendConfigWithCreds,
) -> crate::Result<(String, Value, Value)> {
    let ty = typed.type_str().to_string();
    if !AVAILABLE_TYPES.contains(&ty.as_str()) {
        return Err(Error::new(
            ErrorKind::BackendNotAvailable,
            format!(
                "Backend {ty} is not available: supported types are {}",
                AVAILABLE_TYPES.join(", ")
            ),
        ));
    }
    Ok((ty, to_json(typed)?, to_json(&typed.without_creds())?))
}

impl Engine {
    pub(crate) async fn backend_infos(&self, project_id: &str) -> crate::Result<Vec<BackendInfo>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT type, config FROM backends WHERE project_id = $1 ORDER BY created_at",
        )
        .bind(project_id)
        .fetch_all(self.store().reader())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (ty, config) in rows {
            let config: Value = serde_json::from_str(&config)
                .map_err(|e| Error::new(ErrorKind::Internal, format!("stored {ty} config: {e}")))?;
            let config = crate::models::backends::AnyBackendConfig::parse(&config, false)?;
            out.push(BackendInfo { name: ty, config });
        }
        Ok(out)
    }

    /// The full config (with creds) of one backend.
    pub(crate) async fn backend_config_with_creds(
        &self,
        project_id: &str,
        ty: &str,
    ) -> crate::Result<Option<Value>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT auth FROM backends WHERE project_id = $1 AND type = $2")
                .bind(project_id)
                .bind(ty)
                .fetch_optional(self.store().reader())
                .await?;
        row.map(|(auth,)| {
            let plain = self.crypto().decrypt(&auth)?;
            serde_json::from_str(&plain).map_err(|e| {
                Error::new(ErrorKind::Internal, format!("stored {ty} credentials: {e}"))
            })
        })
        .transpose()
    }

    /// Creates (`update == false`) or replaces a backend.
    pub(crate) async fn upsert_backend(
        &self,
        project_id: &str,
        config: Value,
        update: bool,
    ) -> crate::Result<Value> {
        let (ty, with_creds, without) = normalize(config)?;
        let exists = self
            .backend_config_with_creds(project_id, &ty)
            .await?
            .is_some();
        if exists && !update {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("Backend {ty} already exists"),
            ));
        }
        if !exists && update {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("Backend {ty} does not exist"),
            ));
        }
        let auth = self.crypto().encrypt(&with_creds.to_string());
        let mut tx = self.store().begin().await?;
        if exists {
            sqlx::query(
                "UPDATE backends SET config = $1, auth = $2 WHERE project_id = $3 AND type = $4",
            )
            .bind(without.to_string())
            .bind(auth)
            .bind(project_id)
            .bind(&ty)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO backends (id, project_id, type, config, auth, created_at) VALUES ($1,$2,$3,$4,$5,$6)",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(project_id)
            .bind(&ty)
            .bind(without.to_string())
            .bind(auth)
            .bind(time::to_db(time::now()))
            .execute(&mut *tx)
            .await
            .map_err(|e| super::users::unique_violation(e, "Backend already exists"))?;
        }
        self.commit_identity(tx).await?;
        Ok(with_creds)
    }

    /// Deletes backends of a project by type; types that are not configured are skipped, as
    /// dstack does.
    pub(crate) async fn delete_backends(
        &self,
        project_id: &str,
        types: &[String],
    ) -> crate::Result<()> {
        let mut tx = self.store().begin().await?;
        for ty in types {
            sqlx::query("DELETE FROM backends WHERE project_id = $1 AND type = $2")
                .bind(project_id)
                .bind(ty)
                .execute(&mut *tx)
                .await?;
        }
        self.commit_identity(tx).await?;
        Ok(())
    }

    pub(crate) async fn backends_create(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
        update: bool,
    ) -> crate::Result<Value> {
        let body =
            body.ok_or_else(|| Error::validation(&["body"], "A backend config is required"))?;
        #[cfg(feature = "backends")]
        {
            let (_, with_creds, _) = normalize(body.clone())?;
            self.validate_backend_credentials(&with_creds).await?;
        }
        self.upsert_backend(&ctx.project()?.id, body, update).await
    }

    pub(crate) async fn backends_yaml(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
        update: bool,
    ) -> crate::Result<Value> {
        let req: BackendYamlRequest = parse_body(body)?;
        let typed = AnyBackendConfigWithCreds::from_yaml_str(&req.config_yaml)?;
        let (_, with_creds, _) = normalize_typed(&typed)?;
        #[cfg(feature = "backends")]
        self.validate_backend_credentials(&with_creds).await?;
        self.upsert_backend(&ctx.project()?.id, with_creds, update)
            .await?;
        Ok(Value::Null)
    }

    pub(crate) async fn backends_delete(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: DeleteBackendsRequest = parse_body(body)?;
        let names: Vec<String> = req
            .backends_names
            .iter()
            .map(|t| t.as_str().to_string())
            .collect();
        self.delete_backends(&ctx.project()?.id, &names).await?;
        Ok(Value::Null)
    }

    pub(crate) async fn backends_config_info(&self, ctx: &Ctx, ty: &str) -> crate::Result<Value> {
        self.backend_config_with_creds(&ctx.project()?.id, ty)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("Backend {ty} does not exist")))
    }

    pub(crate) async fn backends_get_yaml(&self, ctx: &Ctx, ty: &str) -> crate::Result<Value> {
        let config = self.backends_config_info(ctx, ty).await?;
        let typed = AnyBackendConfigWithCreds::parse(&config, false)?;
        Ok(json!({"name": ty, "config_yaml": typed.to_yaml()}))
    }
}
