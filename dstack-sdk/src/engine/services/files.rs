//! Uploads: `files/upload_archive` / `files/get_archive_by_hash` (a configuration's `files:`)
//! and `repos/upload_code` (a repo's diff). The HTTP front turns the multipart form into an
//! [`UploadBody`](crate::routes::UploadBody); blobs are stored in the database and handed to
//! the runner before the job starts.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::engine::auth::Ctx;
use crate::engine::{Engine, time};
use crate::routes::UploadBody;
use crate::{Error, ErrorKind};

use super::parse_body;

/// Body of `files/get_archive_by_hash`.
#[derive(Debug, Deserialize, Serialize)]
struct GetArchiveByHashRequest {
    hash: String,
}

fn decode_upload(body: Option<Value>) -> crate::Result<(UploadBody, Vec<u8>)> {
    let up: UploadBody = parse_body(body)?;
    if up.file_name.is_empty() {
        return Err(Error::bad_request(
            "The upload has no file name; send the content hash as the file name",
        ));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(&up.data_b64)
        .map_err(|e| Error::bad_request(format!("Bad upload encoding: {e}")))?;
    Ok((up, data))
}

impl Engine {
    /// `POST /api/files/upload_archive`: stores the archive once per (user, hash).
    pub(crate) async fn files_upload_archive(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let (up, data) = decode_upload(body)?;
        let user = ctx.user()?;
        let mut tx = self.store().begin().await?;
        sqlx::query(
            "INSERT INTO file_archives (id, user_id, blob_hash, blob, created_at) \
             VALUES ($1,$2,$3,$4,$5) ON CONFLICT (user_id, blob_hash) DO NOTHING",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&user.id)
        .bind(&up.file_name)
        .bind(&data)
        .bind(time::to_db(time::now()))
        .execute(&mut *tx)
        .await?;
        let (id,): (String,) =
            sqlx::query_as("SELECT id FROM file_archives WHERE user_id = $1 AND blob_hash = $2")
                .bind(&user.id)
                .bind(&up.file_name)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        tracing::debug!(hash = %up.file_name, bytes = data.len(), "file archive stored");
        Ok(json!({"id": id, "hash": up.file_name}))
    }

    /// `POST /api/files/get_archive_by_hash`: the caller's archive with that hash.
    pub(crate) async fn files_get_archive_by_hash(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: GetArchiveByHashRequest = parse_body(body)?;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT id FROM file_archives WHERE user_id = $1 AND blob_hash = $2")
                .bind(&ctx.user()?.id)
                .bind(&req.hash)
                .fetch_optional(self.store().reader())
                .await?;
        let (id,) = row.ok_or_else(Error::not_found)?;
        Ok(json!({"id": id, "hash": req.hash}))
    }

    /// `POST /api/project/{project}/repos/upload_code?repo_id=…`: stores a repo's code blob
    /// under its hash.
    pub(crate) async fn repos_upload_code(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let (up, data) = decode_upload(body)?;
        let project = ctx.project()?;
        let repo_name = up
            .repo_id
            .as_deref()
            .ok_or_else(|| Error::bad_request("repo_id is required"))?;
        let repo_id = self
            .repo_row_id(&project.id, repo_name)
            .await?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("Repo {repo_name} does not exist"),
                )
            })?;
        let mut tx = self.store().begin().await?;
        sqlx::query(
            "INSERT INTO codes (id, repo_id, blob_hash, blob) VALUES ($1,$2,$3,$4) \
             ON CONFLICT (repo_id, blob_hash) DO NOTHING",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(&repo_id)
        .bind(&up.file_name)
        .bind(&data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Value::Null)
    }

    /// The stored archive `id` (for the runner upload).
    pub(crate) async fn file_archive_blob(&self, id: &str) -> crate::Result<Option<Vec<u8>>> {
        let row: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT blob FROM file_archives WHERE id = $1")
                .bind(id)
                .fetch_optional(self.store().reader())
                .await?;
        Ok(row.map(|r| r.0))
    }

    /// The stored code blob of a run's repo with `hash`.
    pub(crate) async fn code_blob(
        &self,
        repo_id: &str,
        hash: &str,
    ) -> crate::Result<Option<Vec<u8>>> {
        let row: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT blob FROM codes WHERE repo_id = $1 AND blob_hash = $2")
                .bind(repo_id)
                .bind(hash)
                .fetch_optional(self.store().reader())
                .await?;
        Ok(row.and_then(|r| r.0))
    }
}
