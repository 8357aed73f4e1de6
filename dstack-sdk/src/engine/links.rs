//! Pooled SSH links to instances: one SSH connection per host (the engine's [`SshPool`]) and
//! one local tunnel per (instance, remote port), kept while they work. The job pipeline
//! reaches the host agent through them; the service proxy reaches a job's port.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::Engine;
use crate::engine::services::instances::InstanceRow;
use crate::engine::ssh_deploy::target_of;
#[cfg(feature = "backends")]
use crate::models::jobs::JobProvisioningData;
use crate::ssh::{ConnectOptions, SshPool, SshTarget, Tunnel};
use crate::{Error, ErrorKind};

/// The engine's SSH pool and tunnel cache.
pub(crate) struct Links {
    pool: SshPool,
    tunnels: Mutex<HashMap<(String, u16), Arc<Tunnel>>>,
}

impl Default for Links {
    fn default() -> Self {
        let opts = ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            ..ConnectOptions::default()
        };
        Self {
            pool: SshPool::new(opts),
            tunnels: Mutex::new(HashMap::new()),
        }
    }
}

impl Links {
    /// Forgets every tunnel of an instance or a container job (it was terminated, its host
    /// changed, or a tunnel stopped working).
    pub(crate) fn forget_instance(&self, instance_id: &str) {
        if let Ok(mut t) = self.tunnels.lock() {
            t.retain(|(id, _), _| id != instance_id);
        }
    }
}

impl Engine {
    /// A local address that reaches `127.0.0.1:port` on the instance's host through the
    /// pooled SSH connection (opened on first use, reused afterwards).
    pub(crate) async fn instance_tunnel(
        &self,
        inst: &InstanceRow,
        port: u16,
    ) -> crate::Result<std::net::SocketAddr> {
        if let Some(t) = self
            .inner
            .links
            .tunnels
            .lock()
            .ok()
            .and_then(|t| t.get(&(inst.id.clone(), port)).cloned())
        {
            return Ok(t.local_addr());
        }
        let rci = self.remote_connection_info(inst)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("instance {} has no SSH connection info", inst.name),
            )
        })?;
        self.tunnel_to(&inst.id, &target_of(&rci), port).await
    }

    /// A local address that reaches `127.0.0.1:port` on `target` (which may go through a
    /// proxy jump, as a container backend's job pod does), pooled under `key` (an instance
    /// or a job id) like [`Engine::instance_tunnel`]; [`Links::forget_instance`] with the
    /// same key drops it.
    pub(crate) async fn tunnel_to(
        &self,
        key: &str,
        target: &SshTarget,
        port: u16,
    ) -> crate::Result<std::net::SocketAddr> {
        let links = &self.inner.links;
        let key = (key.to_string(), port);
        if let Some(t) = links.tunnels.lock().ok().and_then(|t| t.get(&key).cloned()) {
            return Ok(t.local_addr());
        }
        let tunnel = links
            .pool
            .forward_local(target, "127.0.0.1", port)
            .await
            .map_err(|e| Error::new(ErrorKind::Transport, e.to_string()))?;
        let addr = tunnel.local_addr();
        if let Ok(mut t) = links.tunnels.lock() {
            // A concurrent caller may have won the race; either tunnel works.
            t.entry(key).or_insert_with(|| Arc::new(tunnel));
        }
        Ok(addr)
    }

    /// A local address that reaches `127.0.0.1:port` inside a container backend's job
    /// container (`dockerized: false`, e.g. a Kubernetes job pod): SSH to the container's own
    /// `sshd` (`jpd.username@jpd.hostname:jpd.ssh_port`) through `jpd.ssh_proxy` (the jump
    /// pod), both with the project key; pooled under the job id.
    #[cfg(feature = "backends")]
    pub(crate) async fn container_tunnel(
        &self,
        job_id: &str,
        project_id: &str,
        jpd: &JobProvisioningData,
        port: u16,
    ) -> crate::Result<std::net::SocketAddr> {
        let key = self.project_private_key(project_id).await?;
        let target = container_target(jpd, &key)?;
        self.tunnel_to(job_id, &target, port).await
    }
}

/// The SSH target of a job container's `sshd` (`username@hostname:ssh_port`) through its
/// `ssh_proxy`, both with `key`.
#[cfg(feature = "backends")]
fn container_target(jpd: &JobProvisioningData, key: &str) -> crate::Result<SshTarget> {
    let host = jpd.hostname.clone().ok_or_else(|| {
        Error::new(
            ErrorKind::Internal,
            "the job's container has no address yet",
        )
    })?;
    let port = jpd
        .ssh_port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(22);
    let mut target = SshTarget::new(host, port, jpd.username.clone()).with_key(key.to_string());
    if let Some(p) = &jpd.ssh_proxy {
        target = target.with_proxy_jump(
            SshTarget::new(p.hostname.clone(), p.port, p.username.clone())
                .with_key(key.to_string()),
        );
    }
    Ok(target)
}
