//! Users: create, update, list, tokens, SSH keys and soft delete (dstack-api.md §2.2).

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::auth::Ctx;
use crate::engine::crypto::token_hash;
use crate::engine::{Engine, time};
use crate::models::users::{
    CreateUserRequest, DeleteUsersRequest, GetUserRequest, GlobalRole, ListUsersRequest, User,
    UserPermissions, UserTokenCreds, UserWithCreds, UsersInfoList, UsersListResponse,
};
use crate::{Error, ErrorKind};

use super::{deleted_name, generate_ssh_keypair, parse_body, to_json, valid_name};

/// A `users` row (the token stays encrypted).
#[derive(Debug, Clone)]
pub struct UserRow {
    /// Id.
    pub id: String,
    /// Name (mangled once deleted).
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Encrypted token.
    token: String,
    /// Global role.
    pub global_role: GlobalRole,
    /// Email.
    pub email: Option<String>,
    /// Whether the user may log in.
    pub active: bool,
    /// SSH private key (encrypted).
    ssh_private_key: Option<String>,
    /// SSH public key.
    pub ssh_public_key: Option<String>,
}

/// `SELECT <user columns> FROM users WHERE <cond>` as a static string.
macro_rules! select_users {
    ($cond:literal) => {
        concat!(
            "SELECT id, name, created_at, token, global_role, email, active, ssh_private_key, \
             ssh_public_key FROM users WHERE ",
            $cond
        )
    };
}

type RawUser = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    bool,
    Option<String>,
    Option<String>,
);

fn role_from_db(s: &str) -> GlobalRole {
    if s.eq_ignore_ascii_case("admin") {
        GlobalRole::Admin
    } else {
        GlobalRole::User
    }
}

fn role_to_db(r: GlobalRole) -> &'static str {
    match r {
        GlobalRole::Admin => "admin",
        GlobalRole::User => "user",
    }
}

impl From<RawUser> for UserRow {
    fn from(r: RawUser) -> Self {
        UserRow {
            id: r.0,
            name: r.1,
            created_at: time::from_db(&r.2).unwrap_or_default(),
            token: r.3,
            global_role: role_from_db(&r.4),
            email: r.5,
            active: r.6,
            ssh_private_key: r.7,
            ssh_public_key: r.8,
        }
    }
}

impl UserRow {
    /// The stored (encrypted) token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

impl Engine {
    /// The active, non-deleted user holding `token`.
    pub(crate) async fn user_by_token(&self, token: &str) -> crate::Result<Option<UserRow>> {
        let hash = token_hash(token);
        if let Some(u) = self.inner.cache.user(&hash) {
            return Ok(Some(u));
        }
        let generation = self.inner.cache.generation();
        let q = select_users!("token_hash = $1 AND active AND NOT deleted");
        let row: Option<RawUser> = sqlx::query_as(q)
            .bind(&hash)
            .fetch_optional(self.store().reader())
            .await?;
        let Some(row) = row.map(UserRow::from) else {
            return Ok(None);
        };
        // The hash found the row; the stored token must also match exactly.
        if self.crypto().decrypt(&row.token)? == token {
            self.inner.cache.put_user(hash, row.clone(), generation);
            Ok(Some(row))
        } else {
            Ok(None)
        }
    }

    /// A non-deleted user by name (case-insensitive).
    pub(crate) async fn user_by_name(&self, name: &str) -> crate::Result<Option<UserRow>> {
        let q = select_users!("lower(name) = lower($1) AND NOT deleted");
        let row: Option<RawUser> = sqlx::query_as(q)
            .bind(name)
            .fetch_optional(self.store().reader())
            .await?;
        Ok(row.map(UserRow::from))
    }

    /// A non-deleted user by name or email (as `set_members` accepts).
    pub(crate) async fn user_by_name_or_email(&self, s: &str) -> crate::Result<Option<UserRow>> {
        if let Some(u) = self.user_by_name(s).await? {
            return Ok(Some(u));
        }
        let q = select_users!("lower(email) = lower($1) AND NOT deleted");
        let row: Option<RawUser> = sqlx::query_as(q)
            .bind(s)
            .fetch_optional(self.store().reader())
            .await?;
        Ok(row.map(UserRow::from))
    }

    /// A user by id (deleted ones included: owners of old projects).
    pub(crate) async fn user_by_id(&self, id: &str) -> crate::Result<Option<UserRow>> {
        let q = select_users!("id = $1");
        let row: Option<RawUser> = sqlx::query_as(q)
            .bind(id)
            .fetch_optional(self.store().reader())
            .await?;
        Ok(row.map(UserRow::from))
    }

    /// The wire [`User`] for a row.
    pub(crate) fn user_model(&self, u: &UserRow) -> User {
        let can_create_projects = u.global_role == GlobalRole::Admin
            || self.permissions().allow_non_admins_create_projects;
        User {
            id: Uuid::parse_str(&u.id).unwrap_or_default(),
            username: u.name.clone(),
            created_at: Some(u.created_at),
            global_role: u.global_role,
            email: u.email.clone(),
            active: u.active,
            permissions: UserPermissions {
                can_create_projects,
            },
            ssh_public_key: u.ssh_public_key.clone(),
        }
    }

    fn user_with_creds(&self, u: &UserRow) -> crate::Result<UserWithCreds> {
        let crypto = self.crypto();
        Ok(UserWithCreds {
            user: self.user_model(u),
            creds: UserTokenCreds {
                token: crypto.decrypt(&u.token)?,
            },
            ssh_private_key: u
                .ssh_private_key
                .as_deref()
                .map(|k| crypto.decrypt(k))
                .transpose()?,
        })
    }

    /// Creates a user; `token` defaults to a random UUID4.
    pub(crate) async fn create_user_row(
        &self,
        req: &CreateUserRequest,
        token: Option<&str>,
    ) -> crate::Result<UserRow> {
        if !valid_name(&req.username, 60) {
            return Err(Error::validation(
                &["username"],
                "Username should match regex '^[a-zA-Z0-9-_]{1,60}$'",
            ));
        }
        if self.user_by_name(&req.username).await?.is_some() {
            return Err(Error::new(ErrorKind::AlreadyExists, "User already exists"));
        }
        let token = token
            .map(str::to_string)
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let (private, public) = generate_ssh_keypair(&format!("{}@dstack", req.username))?;
        let crypto = self.crypto();
        let id = Uuid::new_v4().to_string();
        let now = time::now();
        let mut tx = self.store().begin().await?;
        sqlx::query(
            "INSERT INTO users (id, name, created_at, token, token_hash, global_role, email, active, \
             deleted, ssh_private_key, ssh_public_key) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,FALSE,$9,$10)",
        )
        .bind(&id)
        .bind(&req.username)
        .bind(time::to_db(now))
        .bind(crypto.encrypt(&token))
        .bind(token_hash(&token))
        .bind(role_to_db(req.global_role))
        .bind(&req.email)
        .bind(req.active)
        .bind(crypto.encrypt(&private))
        .bind(&public)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_violation(e, "User already exists"))?;
        self.commit_identity(tx).await?;
        self.user_by_id(&id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Internal, "user vanished"))
    }

    pub(crate) async fn users_list(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: ListUsersRequest = parse_body(body)?;
        let me = ctx.user()?;
        let mut users: Vec<UserRow> = if me.global_role == GlobalRole::Admin {
            let q = select_users!("NOT deleted");
            let rows: Vec<RawUser> = sqlx::query_as(q).fetch_all(self.store().reader()).await?;
            rows.into_iter().map(UserRow::from).collect()
        } else {
            vec![me.clone()]
        };
        if let Some(p) = req.name_pattern.as_deref().filter(|p| !p.is_empty()) {
            let p = p.to_lowercase();
            users.retain(|u| u.name.to_lowercase().contains(&p));
        }
        let total = users.len() as u64;
        let page = super::paginate(
            users,
            |u| (u.created_at, u.id.clone()),
            req.prev_created_at,
            req.prev_id.map(|i| i.to_string()),
            req.ascending,
            req.limit as usize,
        );
        let users: Vec<User> = page.iter().map(|u| self.user_model(u)).collect();
        let resp = if req.return_total_count {
            UsersListResponse::WithTotal(UsersInfoList {
                total_count: Some(total),
                users,
            })
        } else {
            UsersListResponse::List(users)
        };
        to_json(&resp)
    }

    pub(crate) async fn users_get_my_user(&self, ctx: &Ctx) -> crate::Result<Value> {
        to_json(&self.user_with_creds(ctx.user()?)?)
    }

    pub(crate) async fn users_get_user(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: GetUserRequest = parse_body(body)?;
        let me = ctx.user()?;
        let target = self.user_by_name(&req.username).await?;
        match target {
            Some(u) if me.global_role == GlobalRole::Admin || u.id == me.id => {
                to_json(&self.user_with_creds(&u)?)
            }
            _ => Err(Error::not_found()),
        }
    }

    /// The user (re-read after a write) with credentials, as JSON.
    async fn user_with_creds_json(&self, id: &str) -> crate::Result<Value> {
        let row = self.user_by_id(id).await?.ok_or_else(Error::not_found)?;
        to_json(&self.user_with_creds(&row)?)
    }

    pub(crate) async fn users_create(
        &self,
        _ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: CreateUserRequest = parse_body(body)?;
        let row = self.create_user_row(&req, None).await?;
        to_json(&self.user_model(&row))
    }

    pub(crate) async fn users_update(
        &self,
        _ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: CreateUserRequest = parse_body(body)?;
        let Some(u) = self.user_by_name(&req.username).await? else {
            return Err(Error::not_found());
        };
        let mut tx = self.store().begin().await?;
        sqlx::query("UPDATE users SET global_role = $1, email = $2, active = $3 WHERE id = $4")
            .bind(role_to_db(req.global_role))
            .bind(&req.email)
            .bind(req.active)
            .bind(&u.id)
            .execute(&mut *tx)
            .await?;
        self.commit_identity(tx).await?;
        let row = self.user_by_id(&u.id).await?.ok_or_else(Error::not_found)?;
        to_json(&self.user_model(&row))
    }

    /// Admins may act on anyone; others only on themselves (403 otherwise).
    async fn self_or_admin_target(&self, ctx: &Ctx, username: &str) -> crate::Result<UserRow> {
        let me = ctx.user()?;
        let target = self.user_by_name(username).await?;
        match target {
            Some(u) if me.global_role == GlobalRole::Admin || u.id == me.id => Ok(u),
            Some(_) => Err(Error::forbidden_action("Access denied")),
            None if me.global_role == GlobalRole::Admin => Err(Error::not_found()),
            None => Err(Error::forbidden_action("Access denied")),
        }
    }

    pub(crate) async fn users_refresh_token(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: GetUserRequest = parse_body(body)?;
        let u = self.self_or_admin_target(ctx, &req.username).await?;
        let token = Uuid::new_v4().to_string();
        let mut tx = self.store().begin().await?;
        sqlx::query("UPDATE users SET token = $1, token_hash = $2 WHERE id = $3")
            .bind(self.crypto().encrypt(&token))
            .bind(token_hash(&token))
            .bind(&u.id)
            .execute(&mut *tx)
            .await?;
        self.commit_identity(tx).await?;
        self.user_with_creds_json(&u.id).await
    }

    pub(crate) async fn users_refresh_ssh_key(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: GetUserRequest = parse_body(body)?;
        let u = self.self_or_admin_target(ctx, &req.username).await?;
        let (private, public) = generate_ssh_keypair(&format!("{}@dstack", u.name))?;
        let mut tx = self.store().begin().await?;
        sqlx::query("UPDATE users SET ssh_private_key = $1, ssh_public_key = $2 WHERE id = $3")
            .bind(self.crypto().encrypt(&private))
            .bind(&public)
            .bind(&u.id)
            .execute(&mut *tx)
            .await?;
        self.commit_identity(tx).await?;
        self.user_with_creds_json(&u.id).await
    }

    pub(crate) async fn users_delete(
        &self,
        _ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: DeleteUsersRequest = parse_body(body)?;
        let mut targets = Vec::new();
        for name in &req.users {
            if name == "admin" {
                return Err(Error::bad_request("User 'admin' cannot be deleted"));
            }
            match self.user_by_name(name).await? {
                Some(u) => targets.push(u),
                None => return Err(Error::bad_request(format!("User {name} not found"))),
            }
        }
        let now = time::now();
        let mut tx = self.store().begin().await?;
        for u in &targets {
            sqlx::query(
                "UPDATE users SET deleted = TRUE, active = FALSE, original_name = name, name = $1 \
                 WHERE id = $2",
            )
            .bind(deleted_name(now))
            .bind(&u.id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM members WHERE user_id = $1")
                .bind(&u.id)
                .execute(&mut *tx)
                .await?;
        }
        self.commit_identity(tx).await?;
        Ok(Value::Null)
    }
}

/// Maps a unique-constraint violation (a concurrent duplicate) to `resource_exists`.
pub(crate) fn unique_violation(e: sqlx::Error, msg: &str) -> Error {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return Error::new(ErrorKind::AlreadyExists, msg);
    }
    Error::from(e)
}
