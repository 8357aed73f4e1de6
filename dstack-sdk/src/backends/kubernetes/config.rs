//! The kubeconfig and the clusters it names (dstack's `get_clusters_from_backend_config`).
//!
//! With `contexts`, every listed context is one cluster and one region (the context name);
//! its namespace is the context's (default `default`) and its jump host the context's
//! `proxy_jump`. Without `contexts` (the legacy form), the kubeconfig's `current-context` is
//! the only cluster, region `""`, with the top-level `proxy_jump` and `namespace` (default
//! `default`).

use std::fmt;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::backends::common::settings::BackendSettings;
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::kubernetes::{
    KubernetesBackendConfigWithCreds, KubernetesContext, KubernetesProxyJumpConfig,
};

/// The region of the legacy single-cluster setup (no `contexts`).
pub const LEGACY_REGION: &str = "";

/// One cluster (one kubeconfig context) and how to reach it.
#[derive(Clone)]
pub struct Cluster {
    /// The kubeconfig context.
    pub context: String,
    /// The region name offers and provisioning data carry.
    pub region: String,
    /// The namespace every object goes into.
    pub namespace: String,
    /// The SSH jump host settings.
    pub proxy_jump: KubernetesProxyJumpConfig,
    /// The API client.
    pub client: kube::Client,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("context", &self.context)
            .field("region", &self.region)
            .field("namespace", &self.namespace)
            .field("proxy_jump", &self.proxy_jump)
            .finish_non_exhaustive()
    }
}

/// The kubeconfig text: `data`, or the file `filename` names (`~` expanded) when `data` is
/// empty. Errors never contain the kubeconfig.
pub fn kubeconfig_text(config: &KubernetesBackendConfigWithCreds) -> BackendResult<String> {
    if !config.kubeconfig.data.trim().is_empty() {
        return Ok(config.kubeconfig.data.clone());
    }
    let name = config.kubeconfig.filename.trim();
    if name.is_empty() {
        return Err(BackendError::Config {
            message: "kubeconfig: neither data nor filename is set".into(),
        });
    }
    let path = match name.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|h| std::path::PathBuf::from(h).join(rest))
            .unwrap_or_else(|| name.into()),
        None => name.into(),
    };
    std::fs::read_to_string(&path).map_err(|e| BackendError::Config {
        message: format!("cannot read kubeconfig {}: {e}", path.display()),
    })
}

/// Parses the kubeconfig (YAML or JSON).
pub fn parse_kubeconfig(text: &str) -> BackendResult<Kubeconfig> {
    Kubeconfig::from_yaml(text).map_err(|e| BackendError::Config {
        message: format!("invalid kubeconfig: {}", redact_kube_error(&e.to_string())),
    })
}

/// kube's errors quote YAML positions, not contents; keep only the first line anyway.
fn redact_kube_error(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// The clusters of a backend config, each with its own client (no API call is made).
pub async fn clusters(
    config: &KubernetesBackendConfigWithCreds,
    settings: &BackendSettings,
) -> BackendResult<Vec<Cluster>> {
    let kubeconfig = parse_kubeconfig(&kubeconfig_text(config)?)?;
    let mut out = Vec::new();
    match &config.contexts {
        Some(contexts) => {
            if contexts.is_empty() {
                return Err(BackendError::Config {
                    message: "contexts: at least one kubeconfig context is required".into(),
                });
            }
            if config.proxy_jump.is_some() {
                return Err(BackendError::Config {
                    message: "proxy_jump must not be set if contexts is set".into(),
                });
            }
            if config.namespace.is_some() {
                return Err(BackendError::Config {
                    message: "namespace must not be set if contexts is set".into(),
                });
            }
            let mut seen: Vec<&str> = Vec::new();
            let mut duplicates: Vec<&str> = Vec::new();
            for ctx in contexts {
                if seen.contains(&ctx.name()) {
                    if !duplicates.contains(&ctx.name()) {
                        duplicates.push(ctx.name());
                    }
                } else {
                    seen.push(ctx.name());
                }
            }
            if !duplicates.is_empty() {
                duplicates.sort_unstable();
                return Err(BackendError::Config {
                    message: format!("duplicate contexts: {}", duplicates.join(", ")),
                });
            }
            for ctx in contexts {
                let name = ctx.name().to_string();
                let proxy_jump = match ctx {
                    KubernetesContext::Config(c) => c.proxy_jump.clone().unwrap_or_default(),
                    KubernetesContext::Name(_) => KubernetesProxyJumpConfig::default(),
                };
                let (client, namespace) =
                    client_for(&kubeconfig, Some(&name), settings.request_timeout).await?;
                out.push(Cluster {
                    region: name.clone(),
                    context: name,
                    namespace,
                    proxy_jump,
                    client,
                });
            }
        }
        None => {
            let Some(current) = kubeconfig.current_context.clone() else {
                return Err(BackendError::Config {
                    message: "kubeconfig has no current-context; set it or list `contexts`".into(),
                });
            };
            let (client, context_ns) =
                client_for(&kubeconfig, Some(&current), settings.request_timeout).await?;
            let namespace = config
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".to_string());
            if context_ns != namespace {
                tracing::warn!(
                    context = %current,
                    kubeconfig_namespace = %context_ns,
                    backend_namespace = %namespace,
                    "namespace mismatch: the deprecated backend `namespace` is used"
                );
            }
            out.push(Cluster {
                context: current,
                region: LEGACY_REGION.to_string(),
                namespace,
                proxy_jump: config.proxy_jump.clone().unwrap_or_default(),
                client,
            });
        }
    }
    Ok(out)
}

async fn client_for(
    kubeconfig: &Kubeconfig,
    context: Option<&str>,
    timeout: Duration,
) -> BackendResult<(kube::Client, String)> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    let mut cfg = kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &options)
        .await
        .map_err(|e| BackendError::Config {
            message: format!(
                "kubeconfig context {:?}: {}",
                context.unwrap_or_default(),
                redact_kube_error(&e.to_string())
            ),
        })?;
    // One retry mechanism: ours (the settings' back-off, counted per attempt), not kube's.
    cfg.default_retry = false;
    cfg.read_timeout = Some(timeout);
    cfg.write_timeout = Some(timeout);
    cfg.connect_timeout = Some(timeout.min(Duration::from_secs(30)));
    let namespace = cfg.default_namespace.clone();
    let client = kube::Client::try_from(cfg).map_err(|e| BackendError::Config {
        message: format!(
            "kubeconfig context {:?}: cannot build a client: {}",
            context.unwrap_or_default(),
            redact_kube_error(&e.to_string())
        ),
    })?;
    Ok((client, namespace))
}
