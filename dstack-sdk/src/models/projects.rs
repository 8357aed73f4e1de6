//! Projects: [`Project`], [`Member`] and the `/api/projects/*` request bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::models::backends::BackendInfo;
use crate::models::users::{ProjectRole, User};

fn default_true() -> bool {
    true
}

/// What a member may do inside one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPermissions {
    /// Whether the member may create and change SSH fleets.
    pub can_manage_ssh_fleets: bool,
    /// Whether the member may manage project secrets (default false, for old servers).
    #[serde(default)]
    pub can_manage_secrets: bool,
}

/// A project member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The user.
    pub user: User,
    /// Their role in the project.
    pub project_role: ProjectRole,
    /// What the role allows, with the server's default permissions applied.
    pub permissions: MemberPermissions,
}

/// A project as the API returns it. `projects/list` always sends empty `backends` and `members`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// The project's id.
    pub project_id: Uuid,
    /// The project name (`^[a-zA-Z0-9-_]{1,50}$`).
    pub project_name: String,
    /// The owner.
    pub owner: User,
    /// When the project was created.
    #[serde(with = "crate::models::datetime::option", default)]
    pub created_at: Option<DateTime<Utc>>,
    /// Configured backends, without credentials.
    pub backends: Vec<BackendInfo>,
    /// Members, in membership order.
    pub members: Vec<Member>,
    /// Whether any user may see and join the project.
    #[serde(default)]
    pub is_public: bool,
    /// The templates repository URL, if set.
    #[serde(default)]
    pub templates_repo: Option<String>,
}

/// `projects/list` with `return_total_count: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectsInfoList {
    /// The number of projects matching the filter, over all pages.
    #[serde(default)]
    pub total_count: Option<u64>,
    /// This page of projects.
    pub projects: Vec<Project>,
}

/// The `projects/list` response: a plain list, or [`ProjectsInfoList`] when asked for a total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProjectsListResponse {
    /// `return_total_count: false` (the default).
    List(Vec<Project>),
    /// `return_total_count: true`.
    WithTotal(ProjectsInfoList),
}

fn default_projects_limit() -> u32 {
    2000
}

/// Body of `POST /api/projects/list` (optional; a missing body means all defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListProjectsRequest {
    /// Include public projects the caller has not joined (default true).
    #[serde(default = "default_true")]
    pub include_not_joined: bool,
    /// Only projects owned or joined by this user.
    #[serde(default)]
    pub username: Option<String>,
    /// Return `{total_count, projects}` instead of a plain list.
    #[serde(default)]
    pub return_total_count: bool,
    /// Case-insensitive substring filter on the name (`[a-zA-Z0-9-_]*`).
    #[serde(default)]
    pub name_pattern: Option<String>,
    /// Keyset cursor: `created_at` of the last project of the previous page.
    #[serde(with = "crate::models::datetime::option", default)]
    pub prev_created_at: Option<DateTime<Utc>>,
    /// Keyset cursor: id of the last project of the previous page.
    #[serde(default)]
    pub prev_id: Option<Uuid>,
    /// Page size, 0..=2000.
    #[serde(default = "default_projects_limit")]
    pub limit: u32,
    /// Oldest first when true.
    #[serde(default)]
    pub ascending: bool,
}

impl Default for ListProjectsRequest {
    fn default() -> Self {
        Self {
            include_not_joined: true,
            username: None,
            return_total_count: false,
            name_pattern: None,
            prev_created_at: None,
            prev_id: None,
            limit: default_projects_limit(),
            ascending: false,
        }
    }
}

/// Body of `projects/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateProjectRequest {
    /// The project name (`^[a-zA-Z0-9-_]{1,50}$`).
    pub project_name: String,
    /// Whether the project is public (default false).
    #[serde(default)]
    pub is_public: bool,
    /// The templates repository URL.
    #[serde(default)]
    pub templates_repo: Option<String>,
}

/// Body of `projects/{p}/update`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProjectRequest {
    /// New visibility, when given.
    #[serde(default)]
    pub is_public: Option<bool>,
    /// New templates repository, when given.
    #[serde(default)]
    pub templates_repo: Option<String>,
    /// Clear the templates repository.
    #[serde(default)]
    pub reset_templates_repo: bool,
}

/// Body of `projects/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteProjectsRequest {
    /// The names of the projects to delete.
    pub projects_names: Vec<String>,
}

/// One entry of `set_members` / `add_members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSetting {
    /// The user name or email.
    pub username: String,
    /// The role to give.
    pub project_role: ProjectRole,
}

/// Body of `projects/{p}/set_members` (replaces the member list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetProjectMembersRequest {
    /// The full new member list.
    pub members: Vec<MemberSetting>,
}

/// Body of `projects/{p}/add_members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddProjectMembersRequest {
    /// Members to add or whose role to update.
    pub members: Vec<MemberSetting>,
}

/// Body of `projects/{p}/remove_members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveProjectMembersRequest {
    /// User names to remove.
    pub usernames: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user() -> serde_json::Value {
        json!({
            "id": "8d1ef3a9-0c57-4b8e-a2f4-56c1d2e3f4a5",
            "username": "admin",
            "created_at": "2025-01-01T00:00:00Z",
            "global_role": "admin",
            "email": null,
            "active": true,
            "permissions": {"can_create_projects": true},
            "ssh_public_key": null
        })
    }

    fn project() -> serde_json::Value {
        json!({
            "project_id": "5b2c2a59-3a9b-4f43-9f0e-1b7f0c7a9d10",
            "project_name": "main",
            "owner": user(),
            "created_at": "2025-01-01T00:00:01.250000Z",
            "backends": [
                {"name": "aws", "config": {
                    "type": "aws", "regions": ["us-east-1"], "vpc_name": null, "vpc_ids": null,
                    "default_vpcs": null, "public_ips": null, "iam_instance_profile": null,
                    "tags": null, "os_images": null, "experimental_instance_types": null
                }},
                {"name": "runpod", "config": {
                    "type": "runpod", "regions": null, "community_cloud": false
                }}
            ],
            "members": [{
                "user": user(),
                "project_role": "admin",
                "permissions": {"can_manage_ssh_fleets": true, "can_manage_secrets": true}
            }],
            "is_public": false,
            "templates_repo": null
        })
    }

    #[test]
    fn project_round_trip() {
        let p: Project = serde_json::from_value(project()).unwrap();
        assert_eq!(p.members[0].project_role, ProjectRole::Admin);
        assert_eq!(p.backends.len(), 2);
        assert_eq!(serde_json::to_value(&p).unwrap(), project());
    }

    #[test]
    fn member_round_trip_and_defaults() {
        let m = json!({
            "user": user(), "project_role": "manager",
            "permissions": {"can_manage_ssh_fleets": false}
        });
        let m: Member = serde_json::from_value(m).unwrap();
        assert!(!m.permissions.can_manage_secrets);
        let out = serde_json::to_value(&m).unwrap();
        assert_eq!(
            out["permissions"],
            json!({"can_manage_ssh_fleets": false, "can_manage_secrets": false})
        );
    }

    #[test]
    fn requests_apply_defaults() {
        let r: ListProjectsRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(r, ListProjectsRequest::default());
        assert!(r.include_not_joined);
        let c: CreateProjectRequest =
            serde_json::from_value(json!({"project_name": "p", "extra": true})).unwrap();
        assert!(!c.is_public);
    }
}
