//! Who is calling and what they may do: token lookup and the route permission checks of
//! dstack-api.md §1.2.

use crate::models::users::{GlobalRole, ProjectRole};
use crate::routes::Auth;
use crate::{Error, ErrorKind, HttpShape};

use super::Engine;
use super::services::projects::ProjectRow;
use super::services::users::UserRow;

/// The authenticated caller of a route, and the project the route is scoped to.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The caller (`None` only for routes with [`Auth::None`]).
    pub user: Option<UserRow>,
    /// The route's project, when it has one.
    pub project: Option<ProjectRow>,
    /// The caller's role in that project (`None` for non-members, including global admins
    /// who are not members).
    pub role: Option<ProjectRole>,
}

impl Ctx {
    /// The caller; an internal error for unauthenticated routes (a bug in the table).
    pub fn user(&self) -> crate::Result<&UserRow> {
        self.user
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "route has no caller"))
    }

    /// The route's project.
    pub fn project(&self) -> crate::Result<&ProjectRow> {
        self.project
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "route has no project"))
    }

    /// Whether the caller is a global admin.
    pub fn is_global_admin(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| u.global_role == GlobalRole::Admin)
    }

    /// The caller's effective project role: global admins act as project admins.
    pub fn effective_role(&self) -> Option<ProjectRole> {
        if self.is_global_admin() {
            Some(ProjectRole::Admin)
        } else {
            self.role
        }
    }
}

pub(crate) fn invalid_token() -> Error {
    Error::new(ErrorKind::Unauthenticated, "Invalid token")
}

pub(crate) fn access_denied() -> Error {
    Error::new(ErrorKind::Forbidden, "Access denied")
}

fn project_not_found() -> Error {
    Error::new(ErrorKind::NotFound, "Not found").with_shape(HttpShape::DependencyNotFound)
}

/// Resolves the token and applies the route's check.
pub(crate) async fn authorize(
    engine: &Engine,
    auth: Auth,
    token: Option<&str>,
    project_name: Option<&str>,
) -> crate::Result<Ctx> {
    if auth == Auth::None {
        return Ok(Ctx {
            user: None,
            project: None,
            role: None,
        });
    }
    let token = token.ok_or_else(|| Error::new(ErrorKind::Unauthenticated, "Not authenticated"))?;
    let user = engine
        .user_by_token(token)
        .await?
        .ok_or_else(invalid_token)?;
    let mut ctx = Ctx {
        user: Some(user),
        project: None,
        role: None,
    };
    if let Some(name) = project_name {
        let snap = engine
            .project_snapshot(name)
            .await?
            .ok_or_else(project_not_found)?;
        ctx.role = snap.roles.get(&ctx.user()?.id).copied();
        ctx.project = Some(snap.row.clone());
    }
    let role = ctx.effective_role();
    let public = ctx.project.as_ref().is_some_and(|p| p.is_public);
    let allowed = match auth {
        Auth::None | Auth::Authenticated => true,
        Auth::GlobalAdmin => ctx.is_global_admin(),
        Auth::ProjectMember | Auth::ProjectManagerOrSelfLeave => role.is_some(),
        Auth::ProjectMemberOrPublic => role.is_some() || public,
        Auth::ProjectManager => matches!(role, Some(ProjectRole::Admin | ProjectRole::Manager)),
        Auth::ProjectManagerOrPublic => {
            public || matches!(role, Some(ProjectRole::Admin | ProjectRole::Manager))
        }
        Auth::ProjectAdmin => role == Some(ProjectRole::Admin),
    };
    if allowed {
        Ok(ctx)
    } else {
        Err(access_denied())
    }
}
