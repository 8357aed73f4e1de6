//! Projects and their members (dstack-api.md §2.3, §6.1).

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::auth::Ctx;
use crate::engine::{Engine, time};
use crate::models::projects::{
    AddProjectMembersRequest, CreateProjectRequest, DeleteProjectsRequest, ListProjectsRequest,
    Member, MemberPermissions, MemberSetting, Project, ProjectsInfoList, ProjectsListResponse,
    RemoveProjectMembersRequest, SetProjectMembersRequest, UpdateProjectRequest,
};
use crate::models::users::{GlobalRole, ProjectRole};
use crate::{Error, ErrorKind};

use super::users::{UserRow, unique_violation};
use super::{deleted_name, generate_ssh_keypair, parse_body, to_json, valid_name};
use crate::engine::read_cache::ProjectSnapshot;

/// A `projects` row.
#[derive(Debug, Clone)]
pub struct ProjectRow {
    /// Id.
    pub id: String,
    /// Name (mangled once deleted).
    pub name: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The owner's user id.
    pub owner_id: String,
    /// Whether any user may see and join it.
    pub is_public: bool,
    /// Templates repository URL.
    pub templates_repo: Option<String>,
    /// The project's SSH public key (used on SSH-fleet hosts).
    pub ssh_public_key: String,
}

type RawProject = (String, String, String, String, bool, Option<String>, String);
/// `SELECT <project columns> FROM projects WHERE <cond>` as a static string.
macro_rules! select_projects {
    ($cond:literal) => {
        concat!(
            "SELECT id, name, created_at, owner_id, is_public, templates_repo, ssh_public_key \
             FROM projects WHERE ",
            $cond
        )
    };
}

impl From<RawProject> for ProjectRow {
    fn from(r: RawProject) -> Self {
        ProjectRow {
            id: r.0,
            name: r.1,
            created_at: time::from_db(&r.2).unwrap_or_default(),
            owner_id: r.3,
            is_public: r.4,
            templates_repo: r.5,
            ssh_public_key: r.6,
        }
    }
}

/// Adds one member row inside a write transaction.
async fn insert_member(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    project_id: &str,
    user_id: &str,
    role: ProjectRole,
    member_num: i64,
) -> crate::Result<()> {
    sqlx::query(
        "INSERT INTO members (id, project_id, user_id, project_role, member_num) \
         VALUES ($1,$2,$3,$4,$5)",
    )
    .bind(Uuid::new_v4().to_string())
    .bind(project_id)
    .bind(user_id)
    .bind(project_role_to_db(role))
    .bind(member_num)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn project_role_to_db(r: ProjectRole) -> &'static str {
    match r {
        ProjectRole::Admin => "admin",
        ProjectRole::Manager => "manager",
        ProjectRole::User => "user",
    }
}

fn project_role_from_db(s: &str) -> ProjectRole {
    match s {
        "admin" => ProjectRole::Admin,
        "manager" => ProjectRole::Manager,
        _ => ProjectRole::User,
    }
}

impl Engine {
    /// A non-deleted project by name (case-insensitive).
    pub(crate) async fn project_by_name(&self, name: &str) -> crate::Result<Option<ProjectRow>> {
        let q = select_projects!("lower(name) = lower($1) AND NOT deleted");
        let row: Option<RawProject> = sqlx::query_as(q)
            .bind(name)
            .fetch_optional(self.store().reader())
            .await?;
        Ok(row.map(ProjectRow::from))
    }

    /// All non-deleted projects, served from the read cache.
    async fn all_projects(&self) -> crate::Result<std::sync::Arc<Vec<ProjectRow>>> {
        if let Some(rows) = self.inner.cache.project_rows() {
            return Ok(rows);
        }
        let generation = self.inner.cache.generation();
        let rows = std::sync::Arc::new(self.all_projects_uncached().await?);
        self.inner.cache.put_project_rows(rows.clone(), generation);
        Ok(rows)
    }

    async fn all_projects_uncached(&self) -> crate::Result<Vec<ProjectRow>> {
        let q = select_projects!("NOT deleted");
        let rows: Vec<RawProject> = sqlx::query_as(q).fetch_all(self.store().reader()).await?;
        Ok(rows.into_iter().map(ProjectRow::from).collect())
    }

    /// The user's role in the project, if a member.
    pub(crate) async fn member_role(
        &self,
        project_id: &str,
        user_id: &str,
    ) -> crate::Result<Option<ProjectRole>> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT project_role FROM members WHERE project_id = $1 AND user_id = $2",
        )
        .bind(project_id)
        .bind(user_id)
        .fetch_optional(self.store().reader())
        .await?;
        Ok(row.map(|r| project_role_from_db(&r.0)))
    }

    /// The project's row, member roles and full model, served from the read cache.
    pub(crate) async fn project_snapshot(
        &self,
        name: &str,
    ) -> crate::Result<Option<std::sync::Arc<ProjectSnapshot>>> {
        let key = name.to_lowercase();
        if let Some(p) = self.inner.cache.project(&key) {
            return Ok(Some(p));
        }
        let generation = self.inner.cache.generation();
        let Some(row) = self.project_by_name(name).await? else {
            return Ok(None);
        };
        let roles = self
            .members(&row.id)
            .await?
            .into_iter()
            .map(|(u, r)| (u.id, r))
            .collect();
        let full = self.project_model(&row, true).await?;
        let snap = std::sync::Arc::new(ProjectSnapshot { row, roles, full });
        self.inner.cache.put_project(key, snap.clone(), generation);
        Ok(Some(snap))
    }

    /// Ids of the projects the user is a member of.
    async fn member_project_ids(
        &self,
        user_id: &str,
    ) -> crate::Result<std::sync::Arc<std::collections::HashSet<String>>> {
        if let Some(ids) = self.inner.cache.memberships(user_id) {
            return Ok(ids);
        }
        let generation = self.inner.cache.generation();
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT project_id FROM members WHERE user_id = $1")
                .bind(user_id)
                .fetch_all(self.store().reader())
                .await?;
        let ids = std::sync::Arc::new(rows.into_iter().map(|r| r.0).collect());
        self.inner.cache.put_memberships(
            user_id.to_string(),
            std::sync::Arc::clone(&ids),
            generation,
        );
        Ok(ids)
    }

    /// Members with their user rows, in `member_num` order.
    async fn members(&self, project_id: &str) -> crate::Result<Vec<(UserRow, ProjectRole)>> {
        type Row = (
            String,
            String,
            String,
            String,
            String,
            Option<String>,
            bool,
            Option<String>,
            Option<String>,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT u.id, u.name, u.created_at, u.token, u.global_role, u.email, u.active, \
             u.ssh_private_key, u.ssh_public_key, m.project_role \
             FROM members m JOIN users u ON u.id = m.user_id \
             WHERE m.project_id = $1 ORDER BY m.member_num",
        )
        .bind(project_id)
        .fetch_all(self.store().reader())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let role = project_role_from_db(&r.9);
                (
                    UserRow::from((r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8)),
                    role,
                )
            })
            .collect())
    }

    pub(crate) fn member_permissions(
        &self,
        user: &UserRow,
        role: ProjectRole,
    ) -> MemberPermissions {
        let perms = self.permissions();
        let admin = user.global_role == GlobalRole::Admin || role == ProjectRole::Admin;
        MemberPermissions {
            can_manage_ssh_fleets: admin
                || role == ProjectRole::Manager
                || perms.allow_non_admins_manage_ssh_fleets,
            can_manage_secrets: admin
                || (role == ProjectRole::Manager && perms.allow_managers_manage_secrets),
        }
    }

    /// The wire [`Project`]; `full` adds members and backends (`projects/list` leaves them empty).
    pub(crate) async fn project_model(&self, p: &ProjectRow, full: bool) -> crate::Result<Project> {
        let owner = self
            .user_by_id(&p.owner_id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Internal, "project owner missing"))?;
        let (members, backends) = if full {
            let members = self
                .members(&p.id)
                .await?
                .into_iter()
                .map(|(u, role)| Member {
                    permissions: self.member_permissions(&u, role),
                    user: self.user_model(&u),
                    project_role: role,
                })
                .collect();
            (members, self.backend_infos(&p.id).await?)
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Project {
            project_id: Uuid::parse_str(&p.id).unwrap_or_default(),
            project_name: p.name.clone(),
            owner: self.user_model(&owner),
            created_at: Some(p.created_at),
            backends,
            members,
            is_public: p.is_public,
            templates_repo: p.templates_repo.clone(),
        })
    }

    /// The model `projects/list` shows (members and backends empty), from the read cache.
    async fn project_list_model(&self, p: &ProjectRow) -> crate::Result<Project> {
        match self.project_snapshot(&p.name).await? {
            Some(snap) => {
                let mut m = snap.full.clone();
                m.members.clear();
                m.backends.clear();
                Ok(m)
            }
            None => self.project_model(p, false).await,
        }
    }

    /// Creates a project owned by `owner` (who becomes its admin).
    pub(crate) async fn create_project_row(
        &self,
        owner: &UserRow,
        req: &CreateProjectRequest,
    ) -> crate::Result<ProjectRow> {
        if !valid_name(&req.project_name, 50) {
            return Err(Error::validation(
                &["project_name"],
                "Project name should match regex '^[a-zA-Z0-9-_]{1,50}$'",
            ));
        }
        if self.project_by_name(&req.project_name).await?.is_some() {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "Project already exists",
            ));
        }
        let (private, public) = generate_ssh_keypair(&format!("{}@dstack", req.project_name))?;
        let id = Uuid::new_v4().to_string();
        let mut tx = self.store().begin().await?;
        sqlx::query(
            "INSERT INTO projects (id, name, created_at, owner_id, is_public, templates_repo, \
             deleted, ssh_private_key, ssh_public_key) VALUES ($1,$2,$3,$4,$5,$6,FALSE,$7,$8)",
        )
        .bind(&id)
        .bind(&req.project_name)
        .bind(time::to_db(time::now()))
        .bind(&owner.id)
        .bind(req.is_public)
        .bind(&req.templates_repo)
        .bind(self.crypto().encrypt(&private))
        .bind(&public)
        .execute(&mut *tx)
        .await
        .map_err(|e| unique_violation(e, "Project already exists"))?;
        insert_member(&mut tx, &id, &owner.id, ProjectRole::Admin, 0).await?;
        self.commit_identity(tx).await?;
        self.project_by_name(&req.project_name)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Internal, "project vanished"))
    }

    pub(crate) async fn projects_list(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: ListProjectsRequest = parse_body(body)?;
        let me = ctx.user()?;
        let joined = self.member_project_ids(&me.id).await?;
        let mut visible: Vec<ProjectRow> = self
            .all_projects()
            .await?
            .iter()
            .filter(|p| {
                me.global_role == GlobalRole::Admin
                    || joined.contains(&p.id)
                    || (req.include_not_joined && p.is_public)
            })
            .cloned()
            .collect();
        if let Some(pat) = req.name_pattern.as_deref().filter(|s| !s.is_empty()) {
            let pat = pat.to_lowercase();
            visible.retain(|p| p.name.to_lowercase().contains(&pat));
        }
        let total = visible.len() as u64;
        let page = super::paginate(
            visible,
            |p| (p.created_at, p.id.clone()),
            req.prev_created_at,
            req.prev_id.map(|i| i.to_string()),
            req.ascending,
            req.limit as usize,
        );
        let mut projects = Vec::with_capacity(page.len());
        for p in &page {
            projects.push(self.project_list_model(p).await?);
        }
        let resp = if req.return_total_count {
            ProjectsListResponse::WithTotal(ProjectsInfoList {
                total_count: Some(total),
                projects,
            })
        } else {
            ProjectsListResponse::List(projects)
        };
        to_json(&resp)
    }

    pub(crate) async fn projects_list_only_no_fleets(&self, ctx: &Ctx) -> crate::Result<Value> {
        let me = ctx.user()?;
        let joined = self.member_project_ids(&me.id).await?;
        let mut out = Vec::new();
        let mut projects: Vec<ProjectRow> = self.all_projects().await?.to_vec();
        projects.sort_by_key(|p| p.created_at);
        for p in projects {
            if joined.contains(&p.id) && !self.project_has_fleets(&p.id).await? {
                out.push(self.project_list_model(&p).await?);
            }
        }
        to_json(&out)
    }

    /// Whether the project has non-deleted fleets.
    pub(crate) async fn project_has_fleets(&self, project_id: &str) -> crate::Result<bool> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM fleets WHERE project_id = $1 AND NOT deleted")
                .bind(project_id)
                .fetch_one(self.store().reader())
                .await?;
        Ok(n > 0)
    }

    pub(crate) async fn projects_create(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: CreateProjectRequest = parse_body(body)?;
        let me = ctx.user()?;
        if me.global_role != GlobalRole::Admin {
            if !self.permissions().allow_non_admins_create_projects {
                return Err(Error::forbidden_action("Only admins can create projects"));
            }
            let (owned,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM projects WHERE owner_id = $1 AND NOT deleted")
                    .bind(&me.id)
                    .fetch_one(self.store().reader())
                    .await?;
            let quota = i64::from(self.inner.options.user_project_quota);
            if owned >= quota {
                return Err(Error::bad_request(format!(
                    "User project quota exceeded: a user may own at most {quota} projects"
                )));
            }
        }
        let row = self.create_project_row(me, &req).await?;
        to_json(&self.project_model(&row, true).await?)
    }

    pub(crate) async fn projects_delete(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: DeleteProjectsRequest = parse_body(body)?;
        let me = ctx.user()?;
        let mut targets = Vec::new();
        for name in &req.projects_names {
            let p = self
                .project_by_name(name)
                .await?
                .ok_or_else(|| Error::bad_request(format!("Project {name} does not exist")))?;
            if me.global_role != GlobalRole::Admin
                && p.owner_id != me.id
                && self.member_role(&p.id, &me.id).await? != Some(ProjectRole::Admin)
            {
                return Err(Error::forbidden_action("Access denied"));
            }
            if self.project_has_fleets(&p.id).await? {
                return Err(Error::bad_request(format!(
                    "Project {name} has fleets: delete them first"
                )));
            }
            targets.push(p);
        }
        let now = time::now();
        let mut tx = self.store().begin().await?;
        for p in &targets {
            sqlx::query(
                "UPDATE projects SET deleted = TRUE, original_name = name, name = $1 WHERE id = $2",
            )
            .bind(deleted_name(now))
            .bind(&p.id)
            .execute(&mut *tx)
            .await?;
        }
        self.commit_identity(tx).await?;
        Ok(Value::Null)
    }

    pub(crate) async fn projects_get(&self, ctx: &Ctx) -> crate::Result<Value> {
        match self.project_snapshot(&ctx.project()?.name).await? {
            Some(snap) => to_json(&snap.full),
            None => Err(Error::not_found()),
        }
    }

    pub(crate) async fn projects_update(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: UpdateProjectRequest = parse_body(body)?;
        let p = ctx.project()?;
        let is_public = req.is_public.unwrap_or(p.is_public);
        let templates_repo = if req.reset_templates_repo {
            None
        } else {
            req.templates_repo
                .clone()
                .or_else(|| p.templates_repo.clone())
        };
        let mut tx = self.store().begin().await?;
        sqlx::query("UPDATE projects SET is_public = $1, templates_repo = $2 WHERE id = $3")
            .bind(is_public)
            .bind(&templates_repo)
            .bind(&p.id)
            .execute(&mut *tx)
            .await?;
        self.commit_identity(tx).await?;
        let row = self
            .project_by_name(&p.name)
            .await?
            .ok_or_else(Error::not_found)?;
        to_json(&self.project_model(&row, true).await?)
    }

    /// Resolves member settings to users; unknown users are skipped (`set_members`) or an
    /// error (`add_members`).
    async fn resolve_members(
        &self,
        members: &[MemberSetting],
        skip_unknown: bool,
    ) -> crate::Result<Vec<(UserRow, ProjectRole)>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for m in members {
            if !seen.insert(m.username.to_lowercase()) {
                return Err(Error::bad_request(format!(
                    "Duplicate username {} in members",
                    m.username
                )));
            }
            match self.user_by_name_or_email(&m.username).await? {
                Some(u) => out.push((u, m.project_role)),
                None if skip_unknown => {}
                None => return Err(Error::bad_request(format!("User {} not found", m.username))),
            }
        }
        Ok(out)
    }

    pub(crate) async fn projects_set_members(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: SetProjectMembersRequest = parse_body(body)?;
        let p = ctx.project()?;
        let new = self.resolve_members(&req.members, true).await?;
        if ctx.effective_role() != Some(ProjectRole::Admin) {
            // A manager may not change the set of admins.
            let old_admins: std::collections::BTreeSet<String> = self
                .members(&p.id)
                .await?
                .into_iter()
                .filter(|(_, r)| *r == ProjectRole::Admin)
                .map(|(u, _)| u.id)
                .collect();
            let new_admins: std::collections::BTreeSet<String> = new
                .iter()
                .filter(|(_, r)| *r == ProjectRole::Admin)
                .map(|(u, _)| u.id.clone())
                .collect();
            if old_admins != new_admins {
                return Err(Error::forbidden_action(
                    "Only project admins can manage admins",
                ));
            }
        }
        let mut tx = self.store().begin().await?;
        sqlx::query("DELETE FROM members WHERE project_id = $1")
            .bind(&p.id)
            .execute(&mut *tx)
            .await?;
        for (i, (u, role)) in new.iter().enumerate() {
            insert_member(&mut tx, &p.id, &u.id, *role, i as i64).await?;
        }
        self.commit_identity(tx).await?;
        to_json(&self.project_model(p, true).await?)
    }

    pub(crate) async fn projects_add_members(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: AddProjectMembersRequest = parse_body(body)?;
        let p = ctx.project()?;
        let me = ctx.user()?;
        let role = ctx.effective_role();
        let add = self.resolve_members(&req.members, false).await?;
        match role {
            Some(ProjectRole::Admin) => {}
            Some(ProjectRole::Manager) => {
                if add.iter().any(|(_, r)| *r == ProjectRole::Admin) {
                    return Err(Error::forbidden_action(
                        "Only project admins can add admins",
                    ));
                }
            }
            _ => {
                // A non-member (or plain user) joining a public project: only themself, as user.
                let self_join = p.is_public
                    && add.len() == 1
                    && add[0].0.id == me.id
                    && add[0].1 == ProjectRole::User;
                if !self_join {
                    return Err(Error::forbidden_action(
                        "On a public project you can only add yourself with the user role",
                    ));
                }
            }
        }
        let existing = self.members(&p.id).await?;
        let mut next_num = existing.len() as i64;
        let mut tx = self.store().begin().await?;
        for (u, r) in &add {
            if let Some((_, old_role)) = existing.iter().find(|(eu, _)| eu.id == u.id) {
                if *old_role == ProjectRole::Admin && role != Some(ProjectRole::Admin) {
                    return Err(Error::forbidden_action(
                        "Only project admins can change admins",
                    ));
                }
                sqlx::query(
                    "UPDATE members SET project_role = $1 WHERE project_id = $2 AND user_id = $3",
                )
                .bind(project_role_to_db(*r))
                .bind(&p.id)
                .bind(&u.id)
                .execute(&mut *tx)
                .await?;
            } else {
                insert_member(&mut tx, &p.id, &u.id, *r, next_num).await?;
                next_num += 1;
            }
        }
        self.commit_identity(tx).await?;
        to_json(&self.project_model(p, true).await?)
    }

    pub(crate) async fn projects_remove_members(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: RemoveProjectMembersRequest = parse_body(body)?;
        let p = ctx.project()?;
        let me = ctx.user()?;
        let role = ctx.effective_role();
        let members = self.members(&p.id).await?;
        let mut remove = Vec::new();
        for name in &req.usernames {
            let Some((u, r)) = members
                .iter()
                .find(|(u, _)| u.name.eq_ignore_ascii_case(name))
            else {
                return Err(Error::bad_request(format!(
                    "User {name} is not a member of the project"
                )));
            };
            let manager = matches!(role, Some(ProjectRole::Admin | ProjectRole::Manager));
            if !manager && u.id != me.id {
                return Err(Error::forbidden_action("You can only remove yourself"));
            }
            if *r == ProjectRole::Admin
                && u.id != me.id
                && !ctx.is_global_admin()
                && role != Some(ProjectRole::Admin)
            {
                return Err(Error::forbidden_action("Only admins can remove admins"));
            }
            remove.push(u.id.clone());
        }
        let admins_left = members
            .iter()
            .filter(|(u, r)| *r == ProjectRole::Admin && !remove.contains(&u.id))
            .count();
        if admins_left == 0 && members.iter().any(|(_, r)| *r == ProjectRole::Admin) {
            return Err(Error::bad_request("Cannot remove the last project admin"));
        }
        let mut tx = self.store().begin().await?;
        for id in &remove {
            sqlx::query("DELETE FROM members WHERE project_id = $1 AND user_id = $2")
                .bind(&p.id)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        self.commit_identity(tx).await?;
        to_json(&self.project_model(p, true).await?)
    }
}
