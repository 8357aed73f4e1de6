//! The one route table of the dstack HTTP API.
//!
//! Each route is described once — its path template and the permission it needs — and
//! everything else derives from this table: the server registers a handler per entry, the
//! engine dispatches on [`RouteId`], and the typed client builds request URLs from it. So the
//! client cannot drift from the server.
//!
//! ```
//! use dstack_sdk::routes::{RouteId, PathParams};
//! let path = RouteId::ProjectsGet.path(&PathParams::project("main"));
//! assert_eq!(path, "/api/projects/main/get");
//! assert_eq!(RouteId::ProjectsGet.spec().auth, dstack_sdk::routes::Auth::ProjectMemberOrPublic);
//! ```

/// The permission check a route applies before its handler runs (dstack-api.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No token needed.
    None,
    /// Any valid token of an active user.
    Authenticated,
    /// Global role `admin`.
    GlobalAdmin,
    /// A member of the project (any role); global admins always pass.
    ProjectMember,
    /// A member, or anyone when the project is public.
    ProjectMemberOrPublic,
    /// Project role admin or manager.
    ProjectManager,
    /// Admin/manager, or anyone on a public project (the service limits what they may do).
    ProjectManagerOrPublic,
    /// Any member (the service restricts non-managers to removing themselves).
    ProjectManagerOrSelfLeave,
    /// Project role admin.
    ProjectAdmin,
}

/// Values for the `{project}` and `{backend}` placeholders of a path template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathParams {
    /// The project name.
    pub project: Option<String>,
    /// The backend type (for `backends/{backend}/...`).
    pub backend: Option<String>,
}

impl PathParams {
    /// Parameters for a project-scoped route.
    pub fn project(name: impl Into<String>) -> Self {
        Self {
            project: Some(name.into()),
            backend: None,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Which route.
    pub id: RouteId,
    /// The path template with `{project}` / `{backend}` placeholders (axum syntax).
    pub path: &'static str,
    /// The permission check.
    pub auth: Auth,
}

macro_rules! route_table {
    ($( $(#[$doc:meta])* $id:ident => $path:literal, $auth:ident; )*) => {
        /// Every API route this SDK speaks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum RouteId {
            $( $(#[$doc])* $id, )*
        }

        /// The whole table, in declaration order.
        pub const ROUTES: &[RouteSpec] = &[
            $( RouteSpec { id: RouteId::$id, path: $path, auth: Auth::$auth }, )*
        ];

        impl RouteId {
            /// This route's row of the table.
            pub fn spec(self) -> RouteSpec {
                match self {
                    $( RouteId::$id => RouteSpec { id: RouteId::$id, path: $path, auth: Auth::$auth }, )*
                }
            }
        }
    };
}

route_table! {
    /// `POST /api/server/get_info`
    ServerGetInfo => "/api/server/get_info", None;
    /// `POST /api/backends/list_types`
    BackendsListTypes => "/api/backends/list_types", None;

    /// `POST /api/users/list`
    UsersList => "/api/users/list", Authenticated;
    /// `POST /api/users/get_my_user`
    UsersGetMyUser => "/api/users/get_my_user", Authenticated;
    /// `POST /api/users/get_user`
    UsersGetUser => "/api/users/get_user", Authenticated;
    /// `POST /api/users/create`
    UsersCreate => "/api/users/create", GlobalAdmin;
    /// `POST /api/users/update`
    UsersUpdate => "/api/users/update", GlobalAdmin;
    /// `POST /api/users/refresh_token`
    UsersRefreshToken => "/api/users/refresh_token", Authenticated;
    /// `POST /api/users/refresh_ssh_key`
    UsersRefreshSshKey => "/api/users/refresh_ssh_key", Authenticated;
    /// `POST /api/users/public_keys/list`
    UsersPublicKeysList => "/api/users/public_keys/list", Authenticated;
    /// `POST /api/users/public_keys/add`
    UsersPublicKeysAdd => "/api/users/public_keys/add", Authenticated;
    /// `POST /api/users/public_keys/delete`
    UsersPublicKeysDelete => "/api/users/public_keys/delete", Authenticated;
    /// `POST /api/users/delete`
    UsersDelete => "/api/users/delete", GlobalAdmin;

    /// `POST /api/projects/list`
    ProjectsList => "/api/projects/list", Authenticated;
    /// `POST /api/projects/list_only_no_fleets`
    ProjectsListOnlyNoFleets => "/api/projects/list_only_no_fleets", Authenticated;
    /// `POST /api/projects/create`
    ProjectsCreate => "/api/projects/create", Authenticated;
    /// `POST /api/projects/delete`
    ProjectsDelete => "/api/projects/delete", Authenticated;
    /// `POST /api/projects/{project}/get`
    ProjectsGet => "/api/projects/{project}/get", ProjectMemberOrPublic;
    /// `POST /api/projects/{project}/set_members`
    ProjectsSetMembers => "/api/projects/{project}/set_members", ProjectManager;
    /// `POST /api/projects/{project}/add_members`
    ProjectsAddMembers => "/api/projects/{project}/add_members", ProjectManagerOrPublic;
    /// `POST /api/projects/{project}/remove_members`
    ProjectsRemoveMembers => "/api/projects/{project}/remove_members", ProjectManagerOrSelfLeave;
    /// `POST /api/projects/{project}/update`
    ProjectsUpdate => "/api/projects/{project}/update", ProjectAdmin;

    /// `POST /api/project/{project}/backends/create`
    BackendsCreate => "/api/project/{project}/backends/create", ProjectAdmin;
    /// `POST /api/project/{project}/backends/update`
    BackendsUpdate => "/api/project/{project}/backends/update", ProjectAdmin;
    /// `POST /api/project/{project}/backends/delete`
    BackendsDelete => "/api/project/{project}/backends/delete", ProjectAdmin;
    /// `POST /api/project/{project}/backends/{backend}/config_info`
    BackendsConfigInfo => "/api/project/{project}/backends/{backend}/config_info", ProjectAdmin;
    /// `POST /api/project/{project}/backends/create_yaml`
    BackendsCreateYaml => "/api/project/{project}/backends/create_yaml", ProjectAdmin;
    /// `POST /api/project/{project}/backends/update_yaml`
    BackendsUpdateYaml => "/api/project/{project}/backends/update_yaml", ProjectAdmin;
    /// `POST /api/project/{project}/backends/{backend}/get_yaml`
    BackendsGetYaml => "/api/project/{project}/backends/{backend}/get_yaml", ProjectAdmin;

    /// `POST /api/project/{project}/secrets/list`
    SecretsList => "/api/project/{project}/secrets/list", ProjectManager;
    /// `POST /api/project/{project}/secrets/get`
    SecretsGet => "/api/project/{project}/secrets/get", ProjectManager;
    /// `POST /api/project/{project}/secrets/create_or_update`
    SecretsCreateOrUpdate => "/api/project/{project}/secrets/create_or_update", ProjectManager;
    /// `POST /api/project/{project}/secrets/delete`
    SecretsDelete => "/api/project/{project}/secrets/delete", ProjectManager;

    /// `POST /api/fleets/list` (all projects the caller can see; keyset pagination)
    FleetsListAll => "/api/fleets/list", Authenticated;
    /// `POST /api/project/{project}/fleets/list`
    FleetsList => "/api/project/{project}/fleets/list", ProjectMember;
    /// `POST /api/project/{project}/fleets/get`
    FleetsGet => "/api/project/{project}/fleets/get", ProjectMember;
    /// `POST /api/project/{project}/fleets/get_plan`
    FleetsGetPlan => "/api/project/{project}/fleets/get_plan", ProjectMember;
    /// `POST /api/project/{project}/fleets/apply`
    FleetsApply => "/api/project/{project}/fleets/apply", ProjectMember;
    /// `POST /api/project/{project}/fleets/delete`
    FleetsDelete => "/api/project/{project}/fleets/delete", ProjectMember;
    /// `POST /api/project/{project}/fleets/delete_instances`
    FleetsDeleteInstances => "/api/project/{project}/fleets/delete_instances", ProjectMember;

    /// `POST /api/instances/list` (all projects the caller can see; keyset pagination)
    InstancesList => "/api/instances/list", Authenticated;
    /// `POST /api/project/{project}/instances/get`
    InstancesGet => "/api/project/{project}/instances/get", ProjectMember;

    /// `POST /api/project/{project}/repos/list`
    ReposList => "/api/project/{project}/repos/list", ProjectMember;
    /// `POST /api/project/{project}/repos/get`
    ReposGet => "/api/project/{project}/repos/get", ProjectMember;
    /// `POST /api/project/{project}/repos/init`
    ReposInit => "/api/project/{project}/repos/init", ProjectMember;
    /// `POST /api/project/{project}/repos/delete`
    ReposDelete => "/api/project/{project}/repos/delete", ProjectMember;

    /// `POST /api/runs/list` (all projects the caller can see; keyset pagination)
    RunsList => "/api/runs/list", Authenticated;
    /// `POST /api/project/{project}/runs/get`
    RunsGet => "/api/project/{project}/runs/get", ProjectMember;
    /// `POST /api/project/{project}/runs/get_plan`
    RunsGetPlan => "/api/project/{project}/runs/get_plan", ProjectMember;
    /// `POST /api/project/{project}/runs/apply`
    RunsApply => "/api/project/{project}/runs/apply", ProjectMember;
    /// `POST /api/project/{project}/runs/stop`
    RunsStop => "/api/project/{project}/runs/stop", ProjectMember;
    /// `POST /api/project/{project}/runs/delete`
    RunsDelete => "/api/project/{project}/runs/delete", ProjectMember;

    /// `POST /api/project/{project}/logs/poll`
    LogsPoll => "/api/project/{project}/logs/poll", ProjectMember;

    /// `POST /api/project/{project}/gpus/list`
    GpusList => "/api/project/{project}/gpus/list", ProjectMember;

    /// `POST /api/project/{project}/repos/upload_code?repo_id=…` (multipart `file`, named by
    /// the code hash)
    ReposUploadCode => "/api/project/{project}/repos/upload_code", ProjectMember;
    /// `POST /api/files/upload_archive` (multipart `file`, named by the archive hash)
    FilesUploadArchive => "/api/files/upload_archive", Authenticated;
    /// `POST /api/files/get_archive_by_hash`
    FilesGetArchiveByHash => "/api/files/get_archive_by_hash", Authenticated;
}

/// The JSON body the engine receives for an upload route: the HTTP front decodes the
/// multipart form into it (`data_b64` is the file, base64) and adds the query parameters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UploadBody {
    /// The uploaded file's name (the client's content hash).
    pub file_name: String,
    /// The file's bytes, standard base64.
    pub data_b64: String,
    /// `repo_id` from the query string (`repos/upload_code`).
    #[serde(default)]
    pub repo_id: Option<String>,
}

impl RouteId {
    /// Whether the route takes a multipart file upload instead of a JSON body, and the
    /// largest upload it accepts (dstack: 2 MiB for code, `DSTACK_SERVER_FILE_UPLOAD_LIMIT`
    /// for archives).
    pub fn upload_limit(self) -> Option<usize> {
        match self {
            RouteId::ReposUploadCode => Some(2 * 1024 * 1024),
            RouteId::FilesUploadArchive => Some(32 * 1024 * 1024),
            _ => None,
        }
    }

    /// The concrete path with placeholders filled in (percent-encoding is left to the
    /// transport; dstack names are URL-safe by their regexes).
    pub fn path(self, params: &PathParams) -> String {
        let mut p = self.spec().path.to_string();
        if let Some(project) = &params.project {
            p = p.replace("{project}", project);
        }
        if let Some(backend) = &params.backend {
            p = p.replace("{backend}", backend);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for r in ROUTES {
            assert_eq!(r.id.spec(), *r);
            assert!(r.path.starts_with("/api/"));
            let scoped = r.path.contains("{project}");
            let project_auth = matches!(
                r.auth,
                Auth::ProjectMember
                    | Auth::ProjectMemberOrPublic
                    | Auth::ProjectManager
                    | Auth::ProjectManagerOrPublic
                    | Auth::ProjectManagerOrSelfLeave
                    | Auth::ProjectAdmin
            );
            assert_eq!(scoped, project_auth, "{:?}", r.id);
        }
        let mut paths: Vec<_> = ROUTES.iter().map(|r| r.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), ROUTES.len(), "duplicate paths");
    }
}
