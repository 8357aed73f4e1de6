//! Users: [`User`], [`UserWithCreds`], roles, and the `/api/users/*` request bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// A user's server-wide role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GlobalRole {
    /// Manages everything: users, every project.
    Admin,
    /// Manages themself and the projects they belong to.
    User,
}

/// A member's role inside one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    /// Backends, gateways, members (including admins), secrets, project settings.
    Admin,
    /// Members except admins; secrets only when the server allows it.
    Manager,
    /// Runs, fleets, volumes and the rest of the day-to-day work.
    User,
}

/// What a user may do server-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPermissions {
    /// Whether the user may create projects.
    pub can_create_projects: bool,
}

/// A user as the API returns it (`users/list`, `users/create`, `Project.owner`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: Uuid,
    /// The user name (`^[a-zA-Z0-9-_]{1,60}$`).
    pub username: String,
    /// When the user was created.
    #[serde(with = "crate::models::datetime::option", default)]
    pub created_at: Option<DateTime<Utc>>,
    /// The server-wide role.
    pub global_role: GlobalRole,
    /// The user's email, if set.
    #[serde(default)]
    pub email: Option<String>,
    /// Whether the user may log in.
    pub active: bool,
    /// Server-wide permissions.
    pub permissions: UserPermissions,
    /// The public half of the user's server-managed SSH key.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
}

/// The token part of [`UserWithCreds`]. Its `Debug` output hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTokenCreds {
    /// The user's API token.
    pub token: String,
}

impl fmt::Debug for UserTokenCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserTokenCreds")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A user with their token and SSH private key (`get_my_user`, `get_user`, `refresh_token`).
///
/// Serialises as the [`User`] fields followed by `creds` and `ssh_private_key`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct UserWithCreds {
    /// The user.
    #[serde(flatten)]
    pub user: User,
    /// The API token.
    pub creds: UserTokenCreds,
    /// The private half of the user's server-managed SSH key.
    #[serde(default)]
    pub ssh_private_key: Option<String>,
}

impl fmt::Debug for UserWithCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserWithCreds")
            .field("user", &self.user)
            .field("creds", &self.creds)
            .field(
                "ssh_private_key",
                &self.ssh_private_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// `users/list` with `return_total_count: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsersInfoList {
    /// The number of users matching the filter, over all pages.
    #[serde(default)]
    pub total_count: Option<u64>,
    /// This page of users.
    pub users: Vec<User>,
}

/// The `users/list` response: a plain list, or [`UsersInfoList`] when the total was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum UsersListResponse {
    /// `return_total_count: false` (the default, for 0.20 clients).
    List(Vec<User>),
    /// `return_total_count: true`.
    WithTotal(UsersInfoList),
}

fn default_users_limit() -> u32 {
    2000
}

/// Body of `POST /api/users/list` (optional; a missing body means all defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListUsersRequest {
    /// Return `{total_count, users}` instead of a plain list.
    #[serde(default)]
    pub return_total_count: bool,
    /// Case-insensitive substring filter on the user name (`[a-zA-Z0-9-_]*`).
    #[serde(default)]
    pub name_pattern: Option<String>,
    /// Keyset cursor: `created_at` of the last user of the previous page.
    #[serde(with = "crate::models::datetime::option", default)]
    pub prev_created_at: Option<DateTime<Utc>>,
    /// Keyset cursor: id of the last user of the previous page.
    #[serde(default)]
    pub prev_id: Option<Uuid>,
    /// Page size, 0..=2000.
    #[serde(default = "default_users_limit")]
    pub limit: u32,
    /// Oldest first when true.
    #[serde(default)]
    pub ascending: bool,
}

impl Default for ListUsersRequest {
    fn default() -> Self {
        Self {
            return_total_count: false,
            name_pattern: None,
            prev_created_at: None,
            prev_id: None,
            limit: default_users_limit(),
            ascending: false,
        }
    }
}

/// Body of `users/get_user`, `users/refresh_token` and `users/refresh_ssh_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetUserRequest {
    /// The user name.
    pub username: String,
}

fn default_true() -> bool {
    true
}

/// Body of `users/create` and `users/update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUserRequest {
    /// The user name (`^[a-zA-Z0-9-_]{1,60}$`).
    pub username: String,
    /// The server-wide role.
    pub global_role: GlobalRole,
    /// The email, if any.
    #[serde(default)]
    pub email: Option<String>,
    /// Whether the user may log in (default true).
    #[serde(default = "default_true")]
    pub active: bool,
}

/// Body of `users/update` (the same fields as create).
pub type UpdateUserRequest = CreateUserRequest;

/// Body of `users/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteUsersRequest {
    /// The user names to delete.
    pub users: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user_json() -> serde_json::Value {
        json!({
            "id": "0e1f7a2c-8a5b-4c1d-9a3e-2b4c6d8e0f11",
            "username": "admin",
            "created_at": "2025-03-04T10:11:12.345678Z",
            "global_role": "admin",
            "email": null,
            "active": true,
            "permissions": {"can_create_projects": true},
            "ssh_public_key": "ssh-rsa AAAAB3Nza admin"
        })
    }

    #[test]
    fn user_round_trip() {
        let u: User = serde_json::from_value(user_json()).unwrap();
        assert_eq!(u.global_role, GlobalRole::Admin);
        assert_eq!(serde_json::to_value(&u).unwrap(), user_json());
    }

    #[test]
    fn user_with_creds_round_trip_and_redacts() {
        let mut v = user_json();
        let o = v.as_object_mut().unwrap();
        o.insert("creds".into(), json!({"token": "b6d7c3e2-secret-token"}));
        o.insert(
            "ssh_private_key".into(),
            json!("-----BEGIN RSA PRIVATE KEY-----"),
        );
        let u: UserWithCreds = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&u).unwrap(), v);
        // Field order: User fields first, then creds.
        let s = serde_json::to_string(&u).unwrap();
        assert!(s.find("\"ssh_public_key\"").unwrap() < s.find("\"creds\"").unwrap());
        let dbg = format!("{u:?}");
        assert!(!dbg.contains("secret-token"), "{dbg}");
        assert!(!dbg.contains("BEGIN RSA"), "{dbg}");
    }

    #[test]
    fn list_request_defaults_and_lenient() {
        let r: ListUsersRequest = serde_json::from_value(json!({"unknown": 1})).unwrap();
        assert_eq!(r, ListUsersRequest::default());
        assert_eq!(r.limit, 2000);
        let c: CreateUserRequest =
            serde_json::from_value(json!({"username": "bob", "global_role": "user"})).unwrap();
        assert!(c.active);
    }

    #[test]
    fn list_response_shapes() {
        let plain: UsersListResponse = serde_json::from_value(json!([user_json()])).unwrap();
        assert!(matches!(plain, UsersListResponse::List(ref l) if l.len() == 1));
        let with_total: UsersListResponse =
            serde_json::from_value(json!({"total_count": 1, "users": [user_json()]})).unwrap();
        assert!(matches!(with_total, UsersListResponse::WithTotal(_)));
    }
}
