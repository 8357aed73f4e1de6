//! [`SshError`]: what went wrong, on which host, at which step, and what to fix.

use crate::{Error, ErrorKind};

/// The step of an SSH operation that failed; useful for metrics and for deciding whether to
/// retry (connect and tunnel failures are usually transient, auth and sudo failures are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SshStep {
    /// Parsing the private keys given for the target.
    Keys,
    /// TCP connect, SSH handshake, or opening the `direct-tcpip` channel of a proxy jump.
    Connect,
    /// Checking the server's host key.
    HostKey,
    /// Public-key authentication.
    Auth,
    /// Running a command.
    Exec,
    /// Running a command under `sudo -n`.
    Sudo,
    /// Uploading a file over SFTP.
    Upload,
    /// Opening a `direct-tcpip` channel or a local listener for a tunnel.
    Tunnel,
    /// Interpreting what the host reported (architecture, systemd).
    Detect,
}

impl SshStep {
    /// The lowercase name used in messages and tracing spans.
    pub fn as_str(self) -> &'static str {
        match self {
            SshStep::Keys => "keys",
            SshStep::Connect => "connect",
            SshStep::HostKey => "host key",
            SshStep::Auth => "auth",
            SshStep::Exec => "exec",
            SshStep::Sudo => "sudo",
            SshStep::Upload => "upload",
            SshStep::Tunnel => "tunnel",
            SshStep::Detect => "detect",
        }
    }
}

impl std::fmt::Display for SshStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of the SSH layer. Every message names the target (`user@host:port`) and the step,
/// and says what to check. It never contains key material.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// No private key was given for the target.
    #[error("no SSH private key given for {target}: add at least one private key")]
    NoKeys {
        /// `user@host:port`.
        target: String,
    },
    /// A private key could not be parsed.
    #[error(
        "private key #{index} for {target} cannot be used ({reason}): give an unencrypted \
         OpenSSH or PEM private key (ed25519, ecdsa or rsa)"
    )]
    InvalidKey {
        /// `user@host:port`.
        target: String,
        /// 1-based position of the key in the list.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// TCP connect, handshake or the proxy-jump channel failed.
    #[error(
        "connect to {target} failed: {reason}; check that {host}:{port} is reachable, that sshd \
         listens on port {port} and that the firewall allows it"
    )]
    Connect {
        /// `user@host:port`.
        target: String,
        /// Host name or address.
        host: String,
        /// SSH port.
        port: u16,
        /// What failed (includes "timed out after Ns" for timeouts).
        reason: String,
    },
    /// The host presented a key other than the pinned one.
    #[error(
        "host key of {target} changed: expected one of [{expected}], got {actual}; if the host \
         was reinstalled, forget its recorded host key, otherwise treat this as an attack"
    )]
    HostKeyMismatch {
        /// `user@host:port`.
        target: String,
        /// The pinned fingerprints, comma-separated.
        expected: String,
        /// The fingerprint the host presented.
        actual: String,
    },
    /// The server rejected every key.
    #[error(
        "auth failed for {target} with {key_count} key(s) [{fingerprints}]: check that the \
         public key is in ~{user}/.ssh/authorized_keys on {host} and that the user exists"
    )]
    Auth {
        /// `user@host:port`.
        target: String,
        /// Remote user name.
        user: String,
        /// Host name or address.
        host: String,
        /// How many keys were tried.
        key_count: usize,
        /// SHA256 fingerprints of the tried keys, comma-separated.
        fingerprints: String,
    },
    /// Running a command failed at the SSH level (not a non-zero exit status).
    #[error("exec on {target} failed: {reason} (command: {command})")]
    Exec {
        /// `user@host:port`.
        target: String,
        /// The command (first line, shortened).
        command: String,
        /// What failed (includes "timed out after Ns" for timeouts).
        reason: String,
    },
    /// `sudo -n` refused to run.
    #[error(
        "sudo on {target} failed: {reason}; give {user} passwordless sudo (e.g. \
         `{user} ALL=(ALL) NOPASSWD:ALL` in /etc/sudoers.d/) and make sure sudo is installed"
    )]
    Sudo {
        /// `user@host:port`.
        target: String,
        /// Remote user name.
        user: String,
        /// What sudo said.
        reason: String,
    },
    /// An SFTP upload failed.
    #[error(
        "upload to {target}:{path} failed: {reason}; check that {user} may write to the \
         directory and that sshd has the sftp subsystem enabled"
    )]
    Upload {
        /// `user@host:port`.
        target: String,
        /// Remote user name.
        user: String,
        /// Remote destination path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// A tunnel could not be opened or a forwarded connection failed.
    #[error(
        "tunnel via {target} to {remote} failed: {reason}; check `AllowTcpForwarding yes` in \
         the host's sshd_config and that something listens on {remote} on the host"
    )]
    Tunnel {
        /// `user@host:port` of the SSH host.
        target: String,
        /// `host:port` as seen from the SSH host.
        remote: String,
        /// What failed.
        reason: String,
    },
    /// The host reported something we cannot use (e.g. a 32-bit CPU).
    #[error("{what} on {target}: {reason}")]
    Detect {
        /// `user@host:port`.
        target: String,
        /// What was being detected.
        what: String,
        /// Why the answer is unusable.
        reason: String,
    },
}

impl SshError {
    /// The step that failed.
    pub fn step(&self) -> SshStep {
        match self {
            SshError::NoKeys { .. } | SshError::InvalidKey { .. } => SshStep::Keys,
            SshError::Connect { .. } => SshStep::Connect,
            SshError::HostKeyMismatch { .. } => SshStep::HostKey,
            SshError::Auth { .. } => SshStep::Auth,
            SshError::Exec { .. } => SshStep::Exec,
            SshError::Sudo { .. } => SshStep::Sudo,
            SshError::Upload { .. } => SshStep::Upload,
            SshError::Tunnel { .. } => SshStep::Tunnel,
            SshError::Detect { .. } => SshStep::Detect,
        }
    }

    /// `user@host:port` of the target the error is about.
    pub fn target(&self) -> &str {
        match self {
            SshError::NoKeys { target }
            | SshError::InvalidKey { target, .. }
            | SshError::Connect { target, .. }
            | SshError::HostKeyMismatch { target, .. }
            | SshError::Auth { target, .. }
            | SshError::Exec { target, .. }
            | SshError::Sudo { target, .. }
            | SshError::Upload { target, .. }
            | SshError::Tunnel { target, .. }
            | SshError::Detect { target, .. } => target,
        }
    }

    /// Whether retrying later (with a fresh connection) may help: network-level failures.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::Connect { .. }
                | SshError::Exec { .. }
                | SshError::Upload { .. }
                | SshError::Tunnel { .. }
        )
    }

    /// The [`ErrorKind`] this maps to in the SDK's public error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SshError::NoKeys { .. } | SshError::InvalidKey { .. } => ErrorKind::Validation,
            SshError::Auth { .. } => ErrorKind::InvalidCredentials,
            SshError::Sudo { .. } | SshError::Detect { .. } => ErrorKind::Validation,
            SshError::Connect { .. }
            | SshError::HostKeyMismatch { .. }
            | SshError::Exec { .. }
            | SshError::Upload { .. }
            | SshError::Tunnel { .. } => ErrorKind::Transport,
        }
    }
}

impl From<SshError> for Error {
    fn from(e: SshError) -> Self {
        Error::new(e.kind(), e.to_string())
    }
}

/// Shortens a command for error messages: first line, at most 120 characters.
pub(crate) fn short_command(command: &str) -> String {
    let first = command.lines().next().unwrap_or("").trim();
    let mut out: String = first.chars().take(120).collect();
    if out.len() < first.len() || command.trim().lines().count() > 1 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_message_names_host_and_fix() {
        let e = SshError::Auth {
            target: "ubuntu@10.0.0.5:22".into(),
            user: "ubuntu".into(),
            host: "10.0.0.5".into(),
            key_count: 1,
            fingerprints: "SHA256:abc".into(),
        };
        let msg = e.to_string();
        assert!(msg.starts_with("auth failed for ubuntu@10.0.0.5:22 with 1 key(s)"));
        assert!(msg.contains("~ubuntu/.ssh/authorized_keys"));
        assert_eq!(e.step(), SshStep::Auth);
        let sdk: Error = e.into();
        assert_eq!(sdk.kind(), ErrorKind::InvalidCredentials);
    }

    #[test]
    fn short_command_cuts() {
        assert_eq!(short_command("uname -m"), "uname -m");
        assert_eq!(short_command("a\nb"), "a…");
        let long = "x".repeat(200);
        assert_eq!(short_command(&long).chars().count(), 121);
    }
}
