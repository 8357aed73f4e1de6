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
    // Each handler's future is boxed: `call` stays small however large one handler's state
    // machine grows (an embedded client polls it on the caller's stack).
    let value = match route {
        ServerGetInfo => Ok(json!({ "server_version": crate::SERVER_VERSION })),
        BackendsListTypes => Ok(json!(crate::engine::services::backends::available_types())),

        UsersList => Box::pin(engine.users_list(&ctx, body)).await,
        UsersGetMyUser => Box::pin(engine.users_get_my_user(&ctx)).await,
        UsersGetUser => Box::pin(engine.users_get_user(&ctx, body)).await,
        UsersCreate => Box::pin(engine.users_create(&ctx, body)).await,
        UsersUpdate => Box::pin(engine.users_update(&ctx, body)).await,
        UsersRefreshToken => Box::pin(engine.users_refresh_token(&ctx, body)).await,
        UsersRefreshSshKey => Box::pin(engine.users_refresh_ssh_key(&ctx, body)).await,
        UsersDelete => Box::pin(engine.users_delete(&ctx, body)).await,

        ProjectsList => Box::pin(engine.projects_list(&ctx, body)).await,
        ProjectsListOnlyNoFleets => Box::pin(engine.projects_list_only_no_fleets(&ctx)).await,
        ProjectsCreate => Box::pin(engine.projects_create(&ctx, body)).await,
        ProjectsDelete => Box::pin(engine.projects_delete(&ctx, body)).await,
        ProjectsGet => Box::pin(engine.projects_get(&ctx)).await,
        ProjectsSetMembers => Box::pin(engine.projects_set_members(&ctx, body)).await,
        ProjectsAddMembers => Box::pin(engine.projects_add_members(&ctx, body)).await,
        ProjectsRemoveMembers => Box::pin(engine.projects_remove_members(&ctx, body)).await,
        ProjectsUpdate => Box::pin(engine.projects_update(&ctx, body)).await,

        BackendsCreate => Box::pin(engine.backends_create(&ctx, body, false)).await,
        BackendsUpdate => Box::pin(engine.backends_create(&ctx, body, true)).await,
        BackendsDelete => Box::pin(engine.backends_delete(&ctx, body)).await,
        BackendsConfigInfo => Box::pin(engine.backends_config_info(&ctx, backend)).await,
        BackendsCreateYaml => Box::pin(engine.backends_yaml(&ctx, body, false)).await,
        BackendsUpdateYaml => Box::pin(engine.backends_yaml(&ctx, body, true)).await,
        BackendsGetYaml => Box::pin(engine.backends_get_yaml(&ctx, backend)).await,

        SecretsList => Box::pin(engine.secrets_list(&ctx)).await,
        SecretsGet => Box::pin(engine.secrets_get(&ctx, body)).await,
        SecretsCreateOrUpdate => Box::pin(engine.secrets_create_or_update(&ctx, body)).await,
        SecretsDelete => Box::pin(engine.secrets_delete(&ctx, body)).await,

        FleetsListAll => Box::pin(engine.fleets_list_all(&ctx, body)).await,
        FleetsList => Box::pin(engine.fleets_list_project(&ctx, body)).await,
        FleetsGet => Box::pin(engine.fleets_get(&ctx, body)).await,
        FleetsGetPlan => Box::pin(engine.fleets_get_plan(&ctx, body)).await,
        FleetsApply => Box::pin(engine.fleets_apply(&ctx, body)).await,
        FleetsDelete => Box::pin(engine.fleets_delete(&ctx, body)).await,
        FleetsDeleteInstances => Box::pin(engine.fleets_delete_instances(&ctx, body)).await,
        InstancesList => Box::pin(engine.instances_list(&ctx, body)).await,
        InstancesGet => Box::pin(engine.instances_get(&ctx, body)).await,

        ReposList => Box::pin(engine.repos_list(&ctx)).await,
        ReposGet => Box::pin(engine.repos_get(&ctx, body)).await,
        ReposInit => Box::pin(engine.repos_init(&ctx, body)).await,
        ReposDelete => Box::pin(engine.repos_delete(&ctx, body)).await,

        RunsList => {
            return Box::pin(engine.runs_list(&ctx, body))
                .await
                .map(Reply::Json);
        }
        RunsGet => Box::pin(engine.runs_get(&ctx, body)).await,
        RunsGetPlan => Box::pin(engine.runs_get_plan(&ctx, body)).await,
        RunsApply => Box::pin(engine.runs_apply(&ctx, body)).await,
        RunsStop => Box::pin(engine.runs_stop(&ctx, body)).await,
        RunsDelete => Box::pin(engine.runs_delete(&ctx, body)).await,
        LogsPoll => Box::pin(engine.logs_poll(&ctx, body)).await,
        GpusList => Box::pin(engine.gpus_list(&ctx, body)).await,
        UsersPublicKeysList => Box::pin(engine.public_keys_list(&ctx)).await,
        UsersPublicKeysAdd => Box::pin(engine.public_keys_add(&ctx, body)).await,
        UsersPublicKeysDelete => Box::pin(engine.public_keys_delete(&ctx, body)).await,
        ReposUploadCode => Box::pin(engine.repos_upload_code(&ctx, body)).await,
        FilesUploadArchive => Box::pin(engine.files_upload_archive(&ctx, body)).await,
        FilesGetArchiveByHash => Box::pin(engine.files_get_archive_by_hash(&ctx, body)).await,

        #[allow(unreachable_patterns)]
        _ => Err(Error::new(
            ErrorKind::Internal,
            format!("route {route:?} is not implemented"),
        )),
    };
    value.map(Reply::Value)
}
