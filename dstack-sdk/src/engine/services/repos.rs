//! Repos of a project (dstack-api.md §2.7): `init` (upsert), `get`, `list`, `delete`.
//!
//! A repo is `{repo_id, repo_info}`; `repo_info` is kept verbatim (its `repo_type` is
//! `remote`, `local` or `virtual`). Credentials of remote repos are stored but never
//! returned unless asked for with `include_creds`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Error;
use crate::engine::Engine;
use crate::engine::auth::Ctx;

use super::{parse_body, to_json};

/// `repos/init` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InitRepoRequest {
    repo_id: String,
    repo_info: Value,
    #[serde(default)]
    repo_creds: Option<Value>,
}

/// `repos/get` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GetRepoRequest {
    repo_id: String,
    include_creds: bool,
}

/// `repos/delete` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeleteReposRequest {
    repos_ids: Vec<String>,
}

fn repo_type(info: &Value) -> crate::Result<String> {
    match info.get("repo_type").and_then(Value::as_str) {
        Some(t @ ("remote" | "local" | "virtual")) => Ok(t.to_string()),
        _ => Err(Error::validation(
            &["body", "repo_info"],
            "Unable to extract tag using discriminator 'repo_type'",
        )),
    }
}

impl Engine {
    /// The internal id of a repo by its name (`repo_id`) in a project.
    pub(crate) async fn repo_row_id(
        &self,
        project_id: &str,
        name: &str,
    ) -> crate::Result<Option<String>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM repos WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name)
                .fetch_optional(self.store().reader())
                .await?;
        Ok(row.map(|r| r.0))
    }

    pub(crate) async fn repos_init(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: InitRepoRequest = parse_body(body)?;
        let kind = repo_type(&req.repo_info)?;
        let project_id = ctx.project()?.id.clone();
        let info = req.repo_info.to_string();
        let creds = req
            .repo_creds
            .as_ref()
            .map(|c| self.crypto().encrypt(&c.to_string()));
        let mut tx = self.store().begin().await?;
        sqlx::query(
            "INSERT INTO repos (id, project_id, name, type, info, creds) VALUES ($1,$2,$3,$4,$5,$6) \
             ON CONFLICT (project_id, name) DO UPDATE SET type = excluded.type, \
             info = excluded.info, creds = excluded.creds",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&project_id)
        .bind(&req.repo_id)
        .bind(&kind)
        .bind(info)
        .bind(creds)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::debug!(repo_id = %req.repo_id, repo_type = %kind, "repo initialised");
        Ok(Value::Null)
    }

    pub(crate) async fn repos_get(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: GetRepoRequest = parse_body(body)?;
        let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT name, type, info, creds FROM repos WHERE project_id = $1 AND name = $2",
        )
        .bind(&ctx.project()?.id)
        .bind(&req.repo_id)
        .fetch_optional(self.store().reader())
        .await?;
        let (name, kind, info, creds) = row.ok_or_else(Error::not_found)?;
        let info: Value = serde_json::from_str(&info).unwrap_or(Value::Null);
        let creds = match creds {
            Some(c) if req.include_creds && kind == "remote" => {
                let plain = self.crypto().decrypt(&c)?;
                serde_json::from_str(&plain).unwrap_or(Value::Null)
            }
            _ => Value::Null,
        };
        Ok(serde_json::json!({"repo_id": name, "repo_info": info, "repo_creds": creds}))
    }

    pub(crate) async fn repos_list(&self, ctx: &Ctx) -> crate::Result<Value> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, info FROM repos WHERE project_id = $1 ORDER BY name")
                .bind(&ctx.project()?.id)
                .fetch_all(self.store().reader())
                .await?;
        let list: Vec<Value> = rows
            .into_iter()
            .map(|(name, info)| {
                let info: Value = serde_json::from_str(&info).unwrap_or(Value::Null);
                serde_json::json!({"repo_id": name, "repo_info": info})
            })
            .collect();
        to_json(&list)
    }

    pub(crate) async fn repos_delete(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: DeleteReposRequest = parse_body(body)?;
        let project_id = &ctx.project()?.id;
        let mut tx = self.store().begin().await?;
        for name in &req.repos_ids {
            sqlx::query("DELETE FROM repos WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Value::Null)
    }
}
