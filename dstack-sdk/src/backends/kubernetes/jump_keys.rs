//! The [`JumpKeyInstaller`] over SSH (feature `ssh`): connects to the jump pod as `root` with
//! the project's private key and runs [`install_keys_command`], as dstack's server does with
//! the system `ssh` client.

use std::fmt;
use std::time::Duration;

use super::jump::{JumpKeyInstaller, install_keys_command};
use crate::backends::error::BackendResult;
use crate::models::instances::SshConnectionParams;
use crate::ssh::{ConnectOptions, SshConnection, SshTarget};

/// Installs run keys on the jump pod over SSH with the project's private key.
#[derive(Clone)]
pub struct SshJumpKeyInstaller {
    project_private_key: String,
    options: ConnectOptions,
}

impl fmt::Debug for SshJumpKeyInstaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshJumpKeyInstaller")
            .field("project_private_key", &"<redacted>")
            .field("connect_timeout", &self.options.connect_timeout)
            .finish()
    }
}

impl SshJumpKeyInstaller {
    /// An installer with the project's private key (OpenSSH PEM); 3 s connect timeout as
    /// dstack's `ConnectTimeout=3`, any host key (the jump pod makes fresh ones at start).
    pub fn new(project_private_key: impl Into<String>) -> Self {
        let options = ConnectOptions {
            connect_timeout: Duration::from_secs(3),
            exec_timeout: Duration::from_secs(15),
            ..ConnectOptions::default()
        };
        Self {
            project_private_key: project_private_key.into(),
            options,
        }
    }
}

#[async_trait::async_trait]
impl JumpKeyInstaller for SshJumpKeyInstaller {
    #[tracing::instrument(level = "debug", skip_all, fields(project = %project, jump = %format!("{}@{}:{}", jump.username, jump.hostname, jump.port)))]
    async fn install(
        &self,
        project: &str,
        jump: &SshConnectionParams,
        public_keys: &[String],
    ) -> BackendResult<bool> {
        let command = install_keys_command(public_keys);
        if command.is_empty() {
            return Ok(true);
        }
        let target = SshTarget::new(&jump.hostname, jump.port, &jump.username)
            .with_key(self.project_private_key.clone());
        let conn = match SshConnection::connect(&target, &self.options).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "jump pod does not accept SSH yet");
                return Ok(false);
            }
        };
        let out = conn.exec(&command).await;
        conn.close().await;
        match out {
            Ok(o) if o.success() => Ok(true),
            Ok(o) => {
                tracing::debug!(stderr = %o.stderr_lossy(), "installing keys on the jump pod failed");
                Ok(false)
            }
            Err(e) => {
                tracing::debug!(error = %e, "installing keys on the jump pod failed");
                Ok(false)
            }
        }
    }
}
