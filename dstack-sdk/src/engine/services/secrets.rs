//! Project secrets, encrypted at rest (dstack-api.md §2.11).

use serde_json::Value;
use uuid::Uuid;

use crate::Error;
use crate::engine::auth::Ctx;
use crate::engine::{Engine, time};
use crate::models::secrets::{
    CreateOrUpdateSecretRequest, DeleteSecretsRequest, GetSecretRequest, Secret,
};
use crate::models::users::ProjectRole;

use super::{parse_body, to_json, valid_name};

impl Engine {
    /// `can_manage_secrets`: global and project admins; managers when the server allows it.
    fn check_can_manage_secrets(&self, ctx: &Ctx) -> crate::Result<()> {
        let ok = match ctx.effective_role() {
            Some(ProjectRole::Admin) => true,
            Some(ProjectRole::Manager) => self.permissions().allow_managers_manage_secrets,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(Error::forbidden_action("Access denied"))
        }
    }

    pub(crate) async fn secrets_list(&self, ctx: &Ctx) -> crate::Result<Value> {
        self.check_can_manage_secrets(ctx)?;
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, name FROM secrets WHERE project_id = $1 ORDER BY name")
                .bind(&ctx.project()?.id)
                .fetch_all(self.store().reader())
                .await?;
        let list: Vec<Secret> = rows
            .into_iter()
            .map(|(id, name)| Secret {
                id: Uuid::parse_str(&id).unwrap_or_default(),
                name,
                value: None,
            })
            .collect();
        to_json(&list)
    }

    async fn secret(&self, project_id: &str, name: &str) -> crate::Result<Option<Secret>> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, name, value FROM secrets WHERE project_id = $1 AND name = $2",
        )
        .bind(project_id)
        .bind(name)
        .fetch_optional(self.store().reader())
        .await?;
        row.map(|(id, name, value)| {
            Ok(Secret {
                id: Uuid::parse_str(&id).unwrap_or_default(),
                name,
                value: Some(self.crypto().decrypt(&value)?),
            })
        })
        .transpose()
    }

    pub(crate) async fn secrets_get(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        self.check_can_manage_secrets(ctx)?;
        let req: GetSecretRequest = parse_body(body)?;
        let s = self
            .secret(&ctx.project()?.id, &req.name)
            .await?
            .ok_or_else(Error::not_found)?;
        to_json(&s)
    }

    pub(crate) async fn secrets_create_or_update(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        self.check_can_manage_secrets(ctx)?;
        let req: CreateOrUpdateSecretRequest = parse_body(body)?;
        if !valid_name(&req.name, 200) {
            return Err(Error::validation(
                &["name"],
                "Secret name should match regex '^[A-Za-z0-9-_]{1,200}$'",
            ));
        }
        if req.value.chars().count() > 5000 {
            return Err(Error::validation(
                &["value"],
                "Secret value length must not exceed 5000",
            ));
        }
        let project_id = ctx.project()?.id.clone();
        let now = time::to_db(time::now());
        let enc = self.crypto().encrypt(&req.value);
        let mut tx = self.store().begin().await?;
        sqlx::query(
            "INSERT INTO secrets (id, project_id, name, value, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,$5) \
             ON CONFLICT (project_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&project_id)
        .bind(&req.name)
        .bind(enc)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let s = self
            .secret(&project_id, &req.name)
            .await?
            .ok_or_else(Error::not_found)?;
        to_json(&s)
    }

    pub(crate) async fn secrets_delete(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        self.check_can_manage_secrets(ctx)?;
        let req: DeleteSecretsRequest = parse_body(body)?;
        let project_id = &ctx.project()?.id;
        let mut tx = self.store().begin().await?;
        for name in &req.secrets_names {
            let r = sqlx::query("DELETE FROM secrets WHERE project_id = $1 AND name = $2")
                .bind(project_id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 0 {
                // Dropping the transaction rolls back the names deleted so far.
                return Err(Error::new(
                    crate::ErrorKind::NotFound,
                    format!("Secret {name} not found"),
                ));
            }
        }
        tx.commit().await?;
        Ok(Value::Null)
    }
}
