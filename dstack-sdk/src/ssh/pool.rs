//! [`SshPool`]: one shared connection per (host, port, user, key fingerprints, jump chain),
//! reconnected when it dies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::connection::{ConnectOptions, ExecOutput, SshConnection};
use super::error::SshError;
use super::target::SshTarget;
use super::tunnel::{ConnectionSource, Tunnel};

/// What identifies a pooled connection. Two targets with the same key share a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Host name or address.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// SHA256 fingerprints of the private keys, in order.
    pub key_fingerprints: Vec<String>,
    /// The jump host's key, when connecting through one.
    pub jump: Option<Box<PoolKey>>,
}

impl PoolKey {
    /// The key for `target` (parses its private keys).
    pub fn for_target(target: &SshTarget) -> Result<PoolKey, SshError> {
        Ok(PoolKey {
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
            key_fingerprints: target.key_fingerprints()?,
            jump: match &target.proxy_jump {
                Some(j) => Some(Box::new(PoolKey::for_target(j)?)),
                None => None,
            },
        })
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<SshConnection>>>>;

struct PoolInner {
    options: ConnectOptions,
    health_check_after: Duration,
    slots: Mutex<HashMap<PoolKey, Slot>>,
}

/// A pool of SSH connections, cheap to clone (shared state). Concurrent callers for the same
/// target share one connection; a dead connection (server restarted, link dropped) is replaced
/// on the next use. Connections idle longer than `health_check_after` are pinged (keepalive,
/// waiting up to the options' `connect_timeout` for the reply) before reuse.
#[derive(Clone)]
pub struct SshPool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for SshPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshPool")
            .field("slots", &self.slot_count())
            .field("health_check_after", &self.inner.health_check_after)
            .finish()
    }
}

impl Default for SshPool {
    fn default() -> Self {
        Self::new(ConnectOptions::default())
    }
}

impl SshPool {
    /// A pool opening connections with `options`; idle connections are checked after 30 s.
    pub fn new(options: ConnectOptions) -> Self {
        Self::with_health_check(options, Duration::from_secs(30))
    }

    /// A pool that pings a connection before reuse when it has been idle longer than
    /// `health_check_after` (`Duration::ZERO`: always).
    pub fn with_health_check(options: ConnectOptions, health_check_after: Duration) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                options,
                health_check_after,
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The options new connections are opened with.
    pub fn options(&self) -> &ConnectOptions {
        &self.inner.options
    }

    /// A live connection to `target`: the pooled one if it is healthy, else a new one.
    pub async fn get(&self, target: &SshTarget) -> Result<Arc<SshConnection>, SshError> {
        let key = PoolKey::for_target(target)?;
        let slot = self.slot(&key);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.is_closed() {
                if conn.idle_for() < self.inner.health_check_after {
                    return Ok(conn.clone());
                }
                // A link that died silently (no FIN/RST) shows up here as a missing reply.
                if conn.ping(self.inner.options.connect_timeout).await.is_ok() {
                    return Ok(conn.clone());
                }
            }
            tracing::debug!(host = %target, step = "connect", "pooled connection is dead; reconnecting");
            *guard = None;
        }
        let conn = SshConnection::connect(target, &self.inner.options).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `command` on `target` (timeout: the pool's `exec_timeout`). When the pooled
    /// connection turns out dead before the command started, reconnects and tries once more.
    pub async fn exec(&self, target: &SshTarget, command: &str) -> Result<ExecOutput, SshError> {
        self.exec_with_timeout(target, command, self.inner.options.exec_timeout)
            .await
    }

    /// [`exec`](Self::exec) with an explicit timeout.
    pub async fn exec_with_timeout(
        &self,
        target: &SshTarget,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        let conn = self.get(target).await?;
        match conn.run(command, None, timeout).await {
            Ok(out) => Ok(out),
            Err(f) if !f.started => {
                tracing::debug!(host = %target, step = "exec", error = %f.error, "retrying on a fresh connection");
                self.invalidate(target, &conn);
                let conn = self.get(target).await?;
                conn.run(command, None, timeout).await.map_err(|f| f.error)
            }
            Err(f) => Err(f.error),
        }
    }

    /// Runs `command` as root on `target` (see [`SshConnection::exec_sudo`]), with the same
    /// retry as [`exec`](Self::exec).
    pub async fn exec_sudo(
        &self,
        target: &SshTarget,
        command: &str,
    ) -> Result<ExecOutput, SshError> {
        let timeout = self.inner.options.exec_timeout;
        let conn = self.get(target).await?;
        match conn.run_sudo(command, timeout).await {
            Ok(out) => Ok(out),
            Err(f) if !f.started => {
                self.invalidate(target, &conn);
                let conn = self.get(target).await?;
                conn.run_sudo(command, timeout).await.map_err(|f| f.error)
            }
            Err(f) => Err(f.error),
        }
    }

    /// A local listener forwarding to `remote_host:remote_port` on `target`. Each new local
    /// connection uses the pool's current connection, so the tunnel survives reconnects.
    pub async fn forward_local(
        &self,
        target: &SshTarget,
        remote_host: &str,
        remote_port: u16,
    ) -> Result<Tunnel, SshError> {
        let pool = self.clone();
        let tgt = target.clone();
        let source: ConnectionSource = Arc::new(move || {
            let pool = pool.clone();
            let tgt = tgt.clone();
            Box::pin(async move { pool.get(&tgt).await })
        });
        Tunnel::start(source, &target.to_string(), remote_host, remote_port).await
    }

    /// Forgets the connection to `target` (it closes once no caller holds it).
    pub fn evict(&self, target: &SshTarget) {
        if let Ok(key) = PoolKey::for_target(target)
            && let Ok(mut slots) = self.inner.slots.lock()
        {
            slots.remove(&key);
        }
    }

    /// Disconnects and forgets every pooled connection.
    pub async fn close_all(&self) {
        let slots: Vec<Slot> = match self.inner.slots.lock() {
            Ok(mut s) => s.drain().map(|(_, v)| v).collect(),
            Err(_) => return,
        };
        for slot in slots {
            if let Some(conn) = slot.lock().await.take() {
                conn.close().await;
            }
        }
    }

    /// How many targets have a slot (live or being reconnected).
    pub fn slot_count(&self) -> usize {
        self.inner.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    fn slot(&self, key: &PoolKey) -> Slot {
        match self.inner.slots.lock() {
            Ok(mut slots) => slots.entry(key.clone()).or_default().clone(),
            // A poisoned map only means another caller panicked; use a private slot.
            Err(_) => Slot::default(),
        }
    }

    /// Drops the pooled connection for `target` if it is still `conn`.
    fn invalidate(&self, target: &SshTarget, conn: &Arc<SshConnection>) {
        let Ok(key) = PoolKey::for_target(target) else {
            return;
        };
        let slot = self.slot(&key);
        if let Ok(mut guard) = slot.try_lock()
            && guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            *guard = None;
        }
    }
}
