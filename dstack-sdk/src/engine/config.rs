//! The server's `config.yml`: encryption keys, default permissions, projects and their
//! backends, applied at every start as dstack does (dstack-api.md §6.3).

use std::path::PathBuf;

use crate::models::projects::CreateProjectRequest;
use crate::spec::server_config::{DefaultPermissions, EncryptionKeyConfig, ServerConfig};
use crate::{Error, ErrorKind};

use super::Engine;
use super::crypto::{Crypto, EncryptionKey};
use super::services::users::UserRow;

/// `config.yml` as read at startup.
pub(crate) struct Loaded {
    path: PathBuf,
    config: Option<ServerConfig>,
}

/// Reads and validates `config.yml`, then installs its encryption keys and permissions.
pub(crate) fn load(engine: &Engine) -> crate::Result<Loaded> {
    let path = engine.inner.options.server_dir.join("config.yml");
    if engine.inner.options.config_disabled {
        return Ok(Loaded { path, config: None });
    }
    let config =
        if path.exists() {
            Some(ServerConfig::load(&path).map_err(|e| {
                Error::new(ErrorKind::Validation, format!("{}: {e}", path.display()))
            })?)
        } else {
            None
        };
    if let Some(cfg) = &config {
        let mut keys = Vec::new();
        for k in cfg.encryption.iter().flat_map(|e| e.keys.iter()) {
            keys.push(match k {
                EncryptionKeyConfig::Aes(aes) => EncryptionKey::aes(&aes.name, &aes.secret)?,
                EncryptionKeyConfig::Identity(_) => EncryptionKey::Identity,
            });
        }
        let crypto = Crypto::new(keys);
        match engine.inner.crypto.write() {
            Ok(mut c) => *c = crypto,
            Err(p) => *p.into_inner() = crypto,
        }
        let perms: DefaultPermissions = cfg.permissions();
        match engine.inner.permissions.write() {
            Ok(mut c) => *c = perms,
            Err(pe) => *pe.into_inner() = perms,
        }
    }
    Ok(Loaded { path, config })
}

/// Creates listed projects, creates or updates listed backends, deletes unlisted ones; writes
/// a default file when there is none.
pub(crate) async fn apply(engine: &Engine, admin: &UserRow, loaded: Loaded) -> crate::Result<()> {
    if engine.inner.options.config_disabled {
        return Ok(());
    }
    let Some(cfg) = loaded.config else {
        return write_default(engine, &loaded.path).await;
    };
    for name in cfg.projects.iter().map(|p| p.name.clone()) {
        let backends = cfg.project_backends(&name).map_err(|e| {
            Error::new(
                ErrorKind::Validation,
                format!("{}: {e}", loaded.path.display()),
            )
        })?;
        let project = match engine.project_by_name(&name).await? {
            Some(p) => p,
            None => {
                let req = CreateProjectRequest {
                    project_name: name.clone(),
                    is_public: false,
                    templates_repo: None,
                };
                engine.create_project_row(admin, &req).await?
            }
        };
        let mut listed = Vec::new();
        for backend in backends {
            let (ty, with_creds, _) = super::services::backends::normalize_typed(&backend)?;
            match engine.backend_config_with_creds(&project.id, &ty).await? {
                Some(stored) if stored == with_creds => {}
                Some(_) => {
                    engine.upsert_backend(&project.id, with_creds, true).await?;
                    tracing::info!(project = %name, backend = %ty, "backend updated from config.yml");
                }
                None => {
                    engine
                        .upsert_backend(&project.id, with_creds, false)
                        .await?;
                    tracing::info!(project = %name, backend = %ty, "backend created from config.yml");
                }
            }
            listed.push(ty);
        }
        let unlisted: Vec<String> = engine
            .backend_infos(&project.id)
            .await?
            .into_iter()
            .map(|b| b.name)
            .filter(|t| !listed.contains(t))
            .collect();
        if !unlisted.is_empty() {
            engine.delete_backends(&project.id, &unlisted).await?;
            tracing::info!(project = %name, backends = ?unlisted, "backends not in config.yml deleted");
        }
    }
    Ok(())
}

async fn write_default(engine: &Engine, path: &std::path::Path) -> crate::Result<()> {
    let mut backends = Vec::new();
    if let Some(main) = engine
        .project_by_name(super::startup::DEFAULT_PROJECT)
        .await?
    {
        for b in engine.backend_infos(&main.id).await? {
            if let Some(cfg) = engine.backend_config_with_creds(&main.id, &b.name).await? {
                backends.push(cfg);
            }
        }
    }
    let doc = serde_json::json!({"projects": [{"name": super::startup::DEFAULT_PROJECT, "backends": backends}]});
    let text =
        serde_yaml::to_string(&doc).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    }
    std::fs::write(path, text).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("cannot write {}: {e}", path.display()),
        )
    })
}
