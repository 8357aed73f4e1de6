//! Route → service dispatch: the engine side of the route table.

use serde_json::{Value, json};

use crate::routes::{PathParams, RouteId};
use crate::{Error, ErrorKind};

use super::Engine;
use super::auth::authorize;

/// A route's answer: a JSON value, or JSON text a service wrote directly (large lists whose
/// items are cached as text, e.g. `runs/list`).
#[derive(Debug)]
pub(crate) enum Reply {
    /// A JSON value.
    Value(Value),
    /// Serialised JSON.
    Json(Vec<u8>),
}

impl Reply {
    /// The answer as a JSON value.
    pub(crate) fn into_value(self) -> crate::Result<Value> {
        match self {
            Reply::Value(v) => Ok(v),
            Reply::Json(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::new(ErrorKind::Internal, e.to_string())),
        }
    }

    /// The answer as JSON text.
    pub(crate) fn into_bytes(self) -> crate::Result<Vec<u8>> {
        match self {
            Reply::Value(v) => {
                serde_json::to_vec(&v).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))
            }
            Reply::Json(b) => Ok(b),
        }
    }
}

#[tracing::instrument(level = "debug", skip(engine, token, body), fields(route = ?route))]
pub(crate) async fn call(
    engine: &Engine,
    route: RouteId,
    token: Option<&str>,
    params: &PathParams,
    body: Option<Value>,
) -> crate::Result<Reply> {
    let spec = route.spec();
    let ctx = authorize(engine, spec.auth, token, params.project.as_deref()).await?;
    let backend = params.backend.as_deref().unwrap_or_default();
    use RouteId::*;
    let value = match route {
        ServerGetInfo => Ok(json!({ "server_version": crate::SERVER_VERSION })),
        BackendsListTypes => Ok(json!(crate::engine::services::backends::available_types())),

        UsersList => engine.users_list(&ctx, body).await,
        UsersGetMyUser => engine.users_get_my_user(&ctx).await,
        UsersGetUser => engine.users_get_user(&ctx, body).await,
        UsersCreate => engine.users_create(&ctx, body).await,
        UsersUpdate => engine.users_update(&ctx, body).await,
        UsersRefreshToken => engine.users_refresh_token(&ctx, body).await,
        UsersRefreshSshKey => engine.users_refresh_ssh_key(&ctx, body).await,
        UsersDelete => engine.users_delete(&ctx, body).await,

        ProjectsList => engine.projects_list(&ctx, body).await,
        ProjectsListOnlyNoFleets => engine.projects_list_only_no_fleets(&ctx).await,
        ProjectsCreate => engine.projects_create(&ctx, body).await,
        ProjectsDelete => engine.projects_delete(&ctx, body).await,
        ProjectsGet => engine.projects_get(&ctx).await,
        ProjectsSetMembers => engine.projects_set_members(&ctx, body).await,
        ProjectsAddMembers => engine.projects_add_members(&ctx, body).await,
        ProjectsRemoveMembers => engine.projects_remove_members(&ctx, body).await,
        ProjectsUpdate => engine.projects_update(&ctx, body).await,

        BackendsCreate => engine.backends_create(&ctx, body, false).await,
        BackendsUpdate => engine.backends_create(&ctx, body, true).await,
        BackendsDelete => engine.backends_delete(&ctx, body).await,
        BackendsConfigInfo => engine.backends_config_info(&ctx, backend).await,
        BackendsCreateYaml => engine.backends_yaml(&ctx, body, false).await,
        BackendsUpdateYaml => engine.backends_yaml(&ctx, body, true).await,
        BackendsGetYaml => engine.backends_get_yaml(&ctx, backend).await,

        SecretsList => engine.secrets_list(&ctx).await,
        SecretsGet => engine.secrets_get(&ctx, body).await,
        SecretsCreateOrUpdate => engine.secrets_create_or_update(&ctx, body).await,
        SecretsDelete => engine.secrets_delete(&ctx, body).await,

        FleetsListAll => engine.fleets_list_all(&ctx, body).await,
        FleetsList => engine.fleets_list_project(&ctx, body).await,
        FleetsGet => engine.fleets_get(&ctx, body).await,
        FleetsGetPlan => engine.fleets_get_plan(&ctx, body).await,
        FleetsApply => engine.fleets_apply(&ctx, body).await,
        FleetsDelete => engine.fleets_delete(&ctx, body).await,
        FleetsDeleteInstances => engine.fleets_delete_instances(&ctx, body).await,
        InstancesList => engine.instances_list(&ctx, body).await,
        InstancesGet => engine.instances_get(&ctx, body).await,

        ReposList => engine.repos_list(&ctx).await,
        ReposGet => engine.repos_get(&ctx, body).await,
        ReposInit => engine.repos_init(&ctx, body).await,
        ReposDelete => engine.repos_delete(&ctx, body).await,

        RunsList => return engine.runs_list(&ctx, body).await.map(Reply::Json),
        RunsGet => engine.runs_get(&ctx, body).await,
        RunsGetPlan => engine.runs_get_plan(&ctx, body).await,
        RunsApply => engine.runs_apply(&ctx, body).await,
        RunsStop => engine.runs_stop(&ctx, body).await,
        RunsDelete => engine.runs_delete(&ctx, body).await,
        LogsPoll => engine.logs_poll(&ctx, body).await,
        GpusList => engine.gpus_list(&ctx, body).await,
        UsersPublicKeysList => engine.public_keys_list(&ctx).await,
        UsersPublicKeysAdd => engine.public_keys_add(&ctx, body).await,
        UsersPublicKeysDelete => engine.public_keys_delete(&ctx, body).await,
        ReposUploadCode => engine.repos_upload_code(&ctx, body).await,
        FilesUploadArchive => engine.files_upload_archive(&ctx, body).await,
        FilesGetArchiveByHash => engine.files_get_archive_by_hash(&ctx, body).await,

        #[allow(unreachable_patterns)]
        _ => Err(Error::new(
            ErrorKind::Internal,
            format!("route {route:?} is not implemented"),
        )),
    };
    value.map(Reply::Value)
}
