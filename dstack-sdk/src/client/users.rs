//! `client.users()`: the `/api/users/*` routes.

use crate::models::users::{
    CreateUserRequest, DeleteUsersRequest, GetUserRequest, GlobalRole, ListUsersRequest, User,
    UserWithCreds, UsersListResponse,
};
use crate::routes::{PathParams, RouteId};

use super::Client;

/// Users of the server. Obtain with [`Client::users`].
///
/// ```no_run
/// # async fn demo(client: dstack_sdk::client::Client) -> dstack_sdk::Result<()> {
/// use dstack_sdk::models::users::GlobalRole;
/// let alice = client.users().create("alice", GlobalRole::User, None).await?;
/// let token = client.users().get("alice").await?.creds.token;
/// client.users().delete(&["alice"]).await?;
/// # let _ = (alice, token); Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Users {
    pub(super) client: Client,
}

impl Users {
    /// All users (admins) or just yourself (others).
    pub async fn list(&self) -> crate::Result<Vec<User>> {
        self.list_with(&ListUsersRequest::default()).await
    }

    /// Users with filters and keyset pagination.
    pub async fn list_with(&self, req: &ListUsersRequest) -> crate::Result<Vec<User>> {
        let resp: UsersListResponse = self
            .client
            .call(RouteId::UsersList, &PathParams::default(), Some(req))
            .await?;
        Ok(match resp {
            UsersListResponse::List(l) => l,
            UsersListResponse::WithTotal(t) => t.users,
        })
    }

    /// The caller, with their token and SSH private key.
    pub async fn get_my_user(&self) -> crate::Result<UserWithCreds> {
        self.client
            .call(RouteId::UsersGetMyUser, &PathParams::default(), None::<&()>)
            .await
    }

    /// A user with credentials (admins, or yourself).
    pub async fn get(&self, username: &str) -> crate::Result<UserWithCreds> {
        let req = GetUserRequest {
            username: username.into(),
        };
        self.client
            .call(RouteId::UsersGetUser, &PathParams::default(), Some(&req))
            .await
    }

    /// Creates a user (global admins only).
    pub async fn create(
        &self,
        username: &str,
        global_role: GlobalRole,
        email: Option<&str>,
    ) -> crate::Result<User> {
        let req = CreateUserRequest {
            username: username.into(),
            global_role,
            email: email.map(str::to_string),
            active: true,
        };
        self.client
            .call(RouteId::UsersCreate, &PathParams::default(), Some(&req))
            .await
    }

    /// Updates a user's role, email and active flag (global admins only).
    pub async fn update(&self, req: &CreateUserRequest) -> crate::Result<User> {
        self.client
            .call(RouteId::UsersUpdate, &PathParams::default(), Some(req))
            .await
    }

    /// Issues a new token for `username` (admins, or yourself); the old one stops working.
    pub async fn refresh_token(&self, username: &str) -> crate::Result<UserWithCreds> {
        let req = GetUserRequest {
            username: username.into(),
        };
        self.client
            .call(
                RouteId::UsersRefreshToken,
                &PathParams::default(),
                Some(&req),
            )
            .await
    }

    /// Issues a new SSH keypair for `username` (admins, or yourself).
    pub async fn refresh_ssh_key(&self, username: &str) -> crate::Result<UserWithCreds> {
        let req = GetUserRequest {
            username: username.into(),
        };
        self.client
            .call(
                RouteId::UsersRefreshSshKey,
                &PathParams::default(),
                Some(&req),
            )
            .await
    }

    /// Deletes users (soft delete; global admins only; `admin` cannot be deleted).
    pub async fn delete(&self, usernames: &[&str]) -> crate::Result<()> {
        let req = DeleteUsersRequest {
            users: usernames.iter().map(|s| s.to_string()).collect(),
        };
        let _: serde_json::Value = self
            .client
            .call(RouteId::UsersDelete, &PathParams::default(), Some(&req))
            .await?;
        Ok(())
    }
}
