//! Startup as dstack Enterprise does it (dstack-api.md §5.8): encryption keys and
//! `config.yml`, the `admin` user, the `main` project, and the backends the file lists.

use crate::models::projects::CreateProjectRequest;
use crate::models::users::{CreateUserRequest, GlobalRole};

use super::Engine;

/// What startup produced, for the server to print and to write into the CLI's config.
#[derive(Clone)]
pub struct StartupInfo {
    /// The admin user's token (set from `DSTACK_SERVER_ADMIN_TOKEN` at first creation only).
    pub admin_token: String,
    /// Whether the admin user was created by this start.
    pub admin_created: bool,
    /// The default project's name.
    pub default_project: String,
}

impl std::fmt::Debug for StartupInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupInfo")
            .field("admin_token", &"<redacted>")
            .field("admin_created", &self.admin_created)
            .field("default_project", &self.default_project)
            .finish()
    }
}

/// The name of the default project.
pub const DEFAULT_PROJECT: &str = "main";

pub(crate) async fn run(engine: &Engine) -> crate::Result<StartupInfo> {
    let config = super::config::load(engine)?;
    let (admin, admin_created) = match engine.user_by_name("admin").await? {
        Some(u) => (u, false),
        None => {
            let req = CreateUserRequest {
                username: "admin".into(),
                global_role: GlobalRole::Admin,
                email: None,
                active: true,
            };
            let token = engine.inner.options.admin_token.clone();
            (engine.create_user_row(&req, token.as_deref()).await?, true)
        }
    };
    if engine.project_by_name(DEFAULT_PROJECT).await?.is_none() {
        let req = CreateProjectRequest {
            project_name: DEFAULT_PROJECT.into(),
            is_public: false,
            templates_repo: None,
        };
        engine.create_project_row(&admin, &req).await?;
    }
    super::config::apply(engine, &admin, config).await?;
    let admin_token = engine.crypto().decrypt(admin.token())?;
    Ok(StartupInfo {
        admin_token,
        admin_created,
        default_project: DEFAULT_PROJECT.into(),
    })
}
