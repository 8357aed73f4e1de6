//! `client.projects()` and `client.project(name)`: the `/api/projects/*` routes.

use crate::models::projects::{
    AddProjectMembersRequest, CreateProjectRequest, DeleteProjectsRequest, ListProjectsRequest,
    MemberSetting, Project, ProjectsListResponse, RemoveProjectMembersRequest,
    SetProjectMembersRequest, UpdateProjectRequest,
};
use crate::models::users::ProjectRole;
use crate::routes::{PathParams, RouteId};

use super::{Backends, Client, Secrets};

/// Projects of the server. Obtain with [`Client::projects`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// let p = client.projects().create("research", false).await?;
/// assert_eq!(p.project_name, "research");
/// for p in client.projects().list().await? { println!("{}", p.project_name); }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Projects {
    pub(super) client: Client,
}

impl Projects {
    /// Projects you are a member of, plus public ones (admins see all).
    pub async fn list(&self) -> crate::Result<Vec<Project>> {
        self.list_with(&ListProjectsRequest::default()).await
    }

    /// Projects with filters and keyset pagination.
    pub async fn list_with(&self, req: &ListProjectsRequest) -> crate::Result<Vec<Project>> {
        let resp: ProjectsListResponse = self
            .client
            .call(RouteId::ProjectsList, &PathParams::default(), Some(req))
            .await?;
        Ok(match resp {
            ProjectsListResponse::List(l) => l,
            ProjectsListResponse::WithTotal(t) => t.projects,
        })
    }

    /// Creates a project; you become its owner and admin.
    pub async fn create(&self, name: &str, is_public: bool) -> crate::Result<Project> {
        let req = CreateProjectRequest {
            project_name: name.into(),
            is_public,
            templates_repo: None,
        };
        self.client
            .call(RouteId::ProjectsCreate, &PathParams::default(), Some(&req))
            .await
    }

    /// Deletes projects (soft delete).
    pub async fn delete(&self, names: &[&str]) -> crate::Result<()> {
        let req = DeleteProjectsRequest {
            projects_names: names.iter().map(|s| s.to_string()).collect(),
        };
        let _: serde_json::Value = self
            .client
            .call(RouteId::ProjectsDelete, &PathParams::default(), Some(&req))
            .await?;
        Ok(())
    }
}

/// One project. Obtain with [`Client::project`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// let main = client.project("main");
/// let p = main.get().await?;
/// let names: Vec<_> = p.members.iter().map(|m| m.user.username.clone()).collect();
/// # let _ = names; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ProjectHandle {
    pub(super) client: Client,
    pub(super) name: String,
}

impl ProjectHandle {
    fn params(&self) -> PathParams {
        PathParams::project(&self.name)
    }

    /// The project with its members and backends.
    pub async fn get(&self) -> crate::Result<Project> {
        self.client
            .call(RouteId::ProjectsGet, &self.params(), None::<&()>)
            .await
    }

    /// Changes `is_public` and/or the templates repository (project admins).
    pub async fn update(&self, req: &UpdateProjectRequest) -> crate::Result<Project> {
        self.client
            .call(RouteId::ProjectsUpdate, &self.params(), Some(req))
            .await
    }

    /// Member management.
    pub fn members(&self) -> Members {
        Members {
            project: self.clone(),
        }
    }

    /// The project's backends (project admins).
    pub fn backends(&self) -> Backends {
        Backends {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }

    /// The project's secrets (project admins; managers when allowed).
    pub fn secrets(&self) -> Secrets {
        Secrets {
            client: self.client.clone(),
            project: self.name.clone(),
        }
    }
}

/// A project's members. Obtain with [`ProjectHandle::members`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// use dstack_sdk::models::users::ProjectRole;
/// client.project("main").members().add(&[("alice", ProjectRole::User)]).await?;
/// client.project("main").members().remove(&["alice"]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Members {
    project: ProjectHandle,
}

fn settings(members: &[(&str, ProjectRole)]) -> Vec<MemberSetting> {
    members
        .iter()
        .map(|(u, r)| MemberSetting {
            username: u.to_string(),
            project_role: *r,
        })
        .collect()
}

impl Members {
    /// Replaces the member list (unknown users are skipped, as dstack does).
    pub async fn set(&self, members: &[(&str, ProjectRole)]) -> crate::Result<Project> {
        let req = SetProjectMembersRequest {
            members: settings(members),
        };
        self.project
            .client
            .call(
                RouteId::ProjectsSetMembers,
                &self.project.params(),
                Some(&req),
            )
            .await
    }

    /// Adds members or changes their roles.
    pub async fn add(&self, members: &[(&str, ProjectRole)]) -> crate::Result<Project> {
        let req = AddProjectMembersRequest {
            members: settings(members),
        };
        self.project
            .client
            .call(
                RouteId::ProjectsAddMembers,
                &self.project.params(),
                Some(&req),
            )
            .await
    }

    /// Removes members (non-managers may remove only themselves).
    pub async fn remove(&self, usernames: &[&str]) -> crate::Result<Project> {
        let req = RemoveProjectMembersRequest {
            usernames: usernames.iter().map(|s| s.to_string()).collect(),
        };
        self.project
            .client
            .call(
                RouteId::ProjectsRemoveMembers,
                &self.project.params(),
                Some(&req),
            )
            .await
    }
}
