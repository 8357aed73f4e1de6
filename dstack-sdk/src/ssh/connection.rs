//! [`SshConnection`]: one authenticated SSH session (direct or through a jump host), and
//! running commands on it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tracing::Instrument;

use super::error::{SshError, short_command};
use super::target::SshTarget;

/// Longest wait for the server to confirm a new channel.
const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do with the server's host key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Accept any host key and record it (trust on first use, like dstack's
    /// `AutoAddPolicy`). Read it from [`SshConnection::host_key`] and pin it next time.
    #[default]
    AcceptAny,
    /// Accept only host keys whose SHA256 fingerprint (`SHA256:…`, as printed by
    /// `ssh-keygen -lf`) is in the list. Applies to every hop, jump hosts included.
    Pinned(Vec<String>),
}

/// Timeouts and policies for opening connections.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Limit for the TCP connect plus the SSH handshake, and separately for authentication, per
    /// hop. dstack uses 10 s.
    pub connect_timeout: Duration,
    /// Default limit for [`SshConnection::exec`] and [`SshConnection::exec_sudo`].
    pub exec_timeout: Duration,
    /// Send an SSH keepalive after this much silence from the server (`None`: never).
    pub keepalive_interval: Option<Duration>,
    /// Close the connection after this many unanswered keepalives.
    pub keepalive_max: usize,
    /// Host-key check.
    pub host_key_policy: HostKeyPolicy,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            exec_timeout: Duration::from_secs(60),
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            host_key_policy: HostKeyPolicy::AcceptAny,
        }
    }
}

/// The host key a server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// Key algorithm, e.g. `ssh-ed25519`.
    pub algorithm: String,
    /// SHA256 fingerprint, `SHA256:…` (what [`HostKeyPolicy::Pinned`] compares).
    pub fingerprint: String,
    /// The public key in OpenSSH format (`ssh-ed25519 AAAA…`), as for `known_hosts`.
    pub openssh: String,
}

/// The result of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; 255 when the command was killed by a signal (as the `ssh` client reports).
    pub exit_status: u32,
    /// The signal name (`KILL`, `TERM`, …) when the command was killed by one.
    pub exit_signal: Option<String>,
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr.
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.exit_status == 0 && self.exit_signal.is_none()
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An exec failure, with whether the command may have started (a pool retries only when it
/// certainly did not).
#[derive(Debug)]
pub(crate) struct ExecFailure {
    pub(crate) error: SshError,
    pub(crate) started: bool,
}

/// The russh client handler: checks and records the host key.
pub(crate) struct ClientHandler {
    policy: HostKeyPolicy,
    seen: Arc<Mutex<Option<HostKey>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let public: PublicKey = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
        let record = HostKey {
            algorithm: public.algorithm().to_string(),
            fingerprint: fingerprint.clone(),
            openssh: public.to_openssh().unwrap_or_default(),
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(record);
        }
        Ok(match &self.policy {
            HostKeyPolicy::AcceptAny => true,
            HostKeyPolicy::Pinned(allowed) => allowed.iter().any(|f| f.trim() == fingerprint),
        })
    }
}

/// One authenticated SSH connection. Cheap to share (`Arc`): any number of commands, uploads
/// and tunnel channels run concurrently over it. Dropping the last `Arc` closes it (and the
/// jump connection it rides on, if no one else holds that).
pub struct SshConnection {
    label: String,
    user: String,
    handle: Handle<ClientHandler>,
    host_key: HostKey,
    options: ConnectOptions,
    jump: Option<Arc<SshConnection>>,
    last_ok: Mutex<Instant>,
}

impl std::fmt::Debug for SshConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConnection")
            .field("target", &self.label)
            .field("host_key", &self.host_key.fingerprint)
            .field("jump", &self.jump.as_ref().map(|j| j.label.clone()))
            .field("closed", &self.is_closed())
            .finish()
    }
}

type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<SshConnection>, SshError>> + Send + 'a>>;

impl SshConnection {
    /// Connects to `target` (through its `proxy_jump` chain, if any), checks the host key per
    /// `options.host_key_policy`, and authenticates with each private key in turn.
    pub async fn connect(
        target: &SshTarget,
        options: &ConnectOptions,
    ) -> Result<Arc<SshConnection>, SshError> {
        connect_boxed(target, options).await
    }

    /// `user@host:port` of this connection.
    pub fn target_label(&self) -> &str {
        &self.label
    }

    /// The remote user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The host key the server presented (record it to pin it later).
    pub fn host_key(&self) -> &HostKey {
        &self.host_key
    }

    /// The jump host's connection, when this one goes through a proxy jump.
    pub fn jump(&self) -> Option<&Arc<SshConnection>> {
        self.jump.as_ref()
    }

    /// The options this connection was opened with.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Whether the session (or the jump session carrying it) has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed() || self.jump.as_ref().is_some_and(|j| j.is_closed())
    }

    /// Sends a keepalive and waits for the reply, up to `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), SshError> {
        let span = tracing::debug_span!("ssh", host = %self.label, step = "ping");
        let res = tokio::time::timeout(timeout, self.handle.send_ping())
            .instrument(span)
            .await;
        match res {
            Ok(Ok(())) if !self.is_closed() => {
                self.touch();
                Ok(())
            }
            Ok(Ok(())) => Err(self.connection_lost("the connection closed")),
            Ok(Err(e)) => Err(self.connection_lost(&e.to_string())),
            Err(_) => Err(self.connection_lost(&format!(
                "no keepalive reply within {}s",
                timeout.as_secs_f32()
            ))),
        }
    }

    /// How long since this connection last did something successfully.
    pub fn idle_for(&self) -> Duration {
        self.last_ok.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Disconnects politely. Channels still open fail afterwards.
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }

    /// Runs `command` (through the user's login shell, as `ssh host command` does) with the
    /// default exec timeout. A non-zero exit status is not an error: check
    /// [`ExecOutput::success`]. Output is collected in memory, so keep it modest; stdin is
    /// closed at once. On timeout the server is asked to kill the command and the channel is
    /// closed.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput, SshError> {
        self.exec_with_timeout(command, self.options.exec_timeout)
            .await
    }

    /// [`exec`](Self::exec) with an explicit timeout for the whole command.
    pub async fn exec_with_timeout(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        self.run(command, None, timeout).await.map_err(|f| f.error)
    }

    /// Runs `command` with `stdin` as its standard input.
    pub async fn exec_with_stdin(
        &self,
        command: &str,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        self.run(command, Some(stdin), timeout)
            .await
            .map_err(|f| f.error)
    }

    /// Runs `command` as root: `sudo -n -- sh -c '<command>'` (directly under `sh -c` when
    /// the SSH user is root). Fails with [`SshError::Sudo`] when sudo itself refuses (no
    /// passwordless sudo, sudo missing); the command's own failures come back as output.
    pub async fn exec_sudo(&self, command: &str) -> Result<ExecOutput, SshError> {
        self.exec_sudo_with_timeout(command, self.options.exec_timeout)
            .await
    }

    /// [`exec_sudo`](Self::exec_sudo) with an explicit timeout.
    pub async fn exec_sudo_with_timeout(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, SshError> {
        self.run_sudo(command, timeout).await.map_err(|f| f.error)
    }

    /// Checks that `sudo -n` works for this user.
    pub async fn check_sudo(&self) -> Result<(), SshError> {
        let out = self.exec_sudo("true").await?;
        if out.success() {
            Ok(())
        } else {
            Err(SshError::Sudo {
                target: self.label.clone(),
                user: self.user.clone(),
                reason: format!(
                    "`sudo -n true` exited with {}: {}",
                    out.exit_status,
                    first_line(&out.stderr_lossy())
                ),
            })
        }
    }

    pub(crate) fn handle(&self) -> &Handle<ClientHandler> {
        &self.handle
    }

    pub(crate) fn touch(&self) {
        if let Ok(mut t) = self.last_ok.lock() {
            *t = Instant::now();
        }
    }

    fn connection_lost(&self, reason: &str) -> SshError {
        SshError::Exec {
            target: self.label.clone(),
            command: "(keepalive)".into(),
            reason: reason.to_string(),
        }
    }

    pub(crate) async fn run_sudo(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, ExecFailure> {
        let as_root = self.user == "root";
        let full = if as_root {
            format!("sh -c {}", shell_quote(command))
        } else {
            format!("sudo -n -- sh -c {}", shell_quote(command))
        };
        let span = tracing::debug_span!("ssh", host = %self.label, step = "sudo");
        let out = self.run(&full, None, timeout).instrument(span).await?;
        if !as_root && let Some(reason) = sudo_refusal(&out) {
            return Err(ExecFailure {
                error: SshError::Sudo {
                    target: self.label.clone(),
                    user: self.user.clone(),
                    reason,
                },
                started: true,
            });
        }
        Ok(out)
    }

    /// Opens a session channel, runs `command`, feeds `stdin` (then EOF), and collects output.
    pub(crate) async fn run(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, ExecFailure> {
        let span = tracing::debug_span!(
            "ssh",
            host = %self.label,
            step = "exec",
            command = %short_command(command)
        );
        self.run_inner(command, stdin, timeout)
            .instrument(span)
            .await
    }

    async fn run_inner(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, ExecFailure> {
        let started_at = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let fail = |reason: String, started: bool| ExecFailure {
            error: SshError::Exec {
                target: self.label.clone(),
                command: short_command(command),
                reason,
            },
            started,
        };
        let open_limit = timeout.min(CHANNEL_OPEN_TIMEOUT);
        let mut channel =
            match tokio::time::timeout(open_limit, self.handle.channel_open_session()).await {
                Ok(Ok(ch)) => ch,
                Ok(Err(e)) => {
                    return Err(fail(
                        format!("could not open a session channel: {e}"),
                        false,
                    ));
                }
                Err(_) => {
                    return Err(fail(
                        format!(
                            "the server did not open a session channel within {}s",
                            open_limit.as_secs_f32()
                        ),
                        false,
                    ));
                }
            };
        let send = async {
            if let Err(e) = channel.exec(true, command).await {
                return Err(fail(format!("could not send the command: {e}"), false));
            }
            if let Some(input) = stdin
                && !input.is_empty()
                && let Err(e) = channel.data_bytes(input.to_vec()).await
            {
                return Err(fail(format!("could not send stdin: {e}"), true));
            }
            // Commands that read stdin must see EOF, or they wait forever.
            let _ = channel.eof().await;
            Ok(())
        };
        match tokio::time::timeout_at(deadline, send).await {
            Ok(res) => res?,
            Err(_) => {
                abandon(&channel).await;
                return Err(fail(
                    format!(
                        "timed out after {}s sending the command",
                        timeout.as_secs_f32()
                    ),
                    true,
                ));
            }
        }

        let mut out = ExecOutput {
            exit_status: 255,
            exit_signal: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let mut got_status = false;
        loop {
            let msg = match tokio::time::timeout_at(deadline, channel.wait()).await {
                Ok(m) => m,
                Err(_) => {
                    abandon(&channel).await;
                    return Err(fail(
                        format!("timed out after {}s", timeout.as_secs_f32()),
                        true,
                    ));
                }
            };
            match msg {
                Some(ChannelMsg::Data { data }) => out.stdout.extend_from_slice(&data),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    out.stderr.extend_from_slice(&data)
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    out.exit_status = exit_status;
                    got_status = true;
                }
                Some(ChannelMsg::ExitSignal {
                    signal_name,
                    error_message,
                    ..
                }) => {
                    out.exit_status = 255;
                    out.exit_signal = Some(signal_label(&signal_name));
                    if !error_message.is_empty() {
                        out.stderr.extend_from_slice(error_message.as_bytes());
                    }
                    got_status = true;
                }
                Some(ChannelMsg::Failure) if !got_status => {
                    return Err(fail("the server refused to run the command".into(), false));
                }
                Some(ChannelMsg::Close) | None => break,
                Some(_) => {}
            }
        }
        if !got_status {
            return Err(fail(
                "the channel closed without an exit status (connection lost?)".into(),
                true,
            ));
        }
        self.touch();
        tracing::debug!(
            exit_status = out.exit_status,
            elapsed_ms = started_at.elapsed().as_millis() as u64,
            "command finished"
        );
        Ok(out)
    }
}

/// Gives up on a channel after a timeout: asks the server to kill the command and closes the
/// channel, without waiting more than a second for either.
async fn abandon(channel: &russh::Channel<client::Msg>) {
    let cleanup = async {
        let _ = channel.signal(russh::Sig::KILL).await;
        let _ = channel.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), cleanup).await;
}

/// Quotes `s` for a POSIX shell (single quotes; embedded `'` become `'\''`).
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn signal_label(sig: &russh::Sig) -> String {
    let dbg = format!("{sig:?}");
    // `Custom("FOO")` → `FOO`.
    dbg.strip_prefix("Custom(\"")
        .and_then(|s| s.strip_suffix("\")"))
        .map(str::to_string)
        .unwrap_or(dbg)
}

/// When sudo itself refused (rather than the command failing), what it said.
fn sudo_refusal(out: &ExecOutput) -> Option<String> {
    let stderr = out.stderr_lossy();
    let first = first_line(&stderr);
    match out.exit_status {
        1 if first.starts_with("sudo:") => {
            let refusal = [
                "password is required",
                "not in the sudoers",
                "is not allowed to",
                "may not run sudo",
                "a terminal is required",
                "no tty present",
                "account validation failure",
            ];
            refusal.iter().any(|r| first.contains(r)).then_some(first)
        }
        126 | 127
            if first.contains("sudo: command not found")
                || first.contains("sudo: not found")
                || first.starts_with("sudo:") =>
        {
            Some(format!("sudo is not available ({first})"))
        }
        _ => None,
    }
}

fn connect_boxed<'a>(target: &'a SshTarget, options: &'a ConnectOptions) -> ConnectFuture<'a> {
    Box::pin(async move {
        let span = tracing::debug_span!("ssh", host = %target, step = "connect");
        connect_impl(target, options).instrument(span).await
    })
}

async fn connect_impl(
    target: &SshTarget,
    options: &ConnectOptions,
) -> Result<Arc<SshConnection>, SshError> {
    let label = target.to_string();
    let keys = target.parse_keys()?;
    let jump = match &target.proxy_jump {
        Some(j) => Some(connect_boxed(j, options).await?),
        None => None,
    };
    let connect_err = |reason: String| SshError::Connect {
        target: label.clone(),
        host: target.host.clone(),
        port: target.port,
        reason,
    };
    let seen = Arc::new(Mutex::new(None));
    let handler = ClientHandler {
        policy: options.host_key_policy.clone(),
        seen: seen.clone(),
    };
    let config = Arc::new(client::Config {
        keepalive_interval: options.keepalive_interval,
        keepalive_max: options.keepalive_max,
        inactivity_timeout: None,
        nodelay: true,
        ..Default::default()
    });
    let limit = options.connect_timeout;

    let handshake = async {
        match &jump {
            Some(j) => {
                let channel = j
                    .handle
                    .channel_open_direct_tcpip(
                        target.host.clone(),
                        u32::from(target.port),
                        "127.0.0.1",
                        0,
                    )
                    .await
                    .map_err(|e| {
                        connect_err(format!(
                            "jump host {} could not open a channel to {} ({e}); check \
                             `AllowTcpForwarding yes` on the jump host and that it can reach \
                             the target",
                            j.label,
                            target.host_port()
                        ))
                    })?;
                client::connect_stream(config, channel.into_stream(), handler)
                    .await
                    .map_err(|e| handshake_error(e, &seen, target, options, &connect_err))
            }
            None => {
                let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                    .await
                    .map_err(|e| connect_err(format!("TCP connect: {e}")))?;
                let _ = tcp.set_nodelay(true);
                client::connect_stream(config, tcp, handler)
                    .await
                    .map_err(|e| handshake_error(e, &seen, target, options, &connect_err))
            }
        }
    };
    let mut handle = tokio::time::timeout(limit, handshake).await.map_err(|_| {
        connect_err(format!(
            "timed out after {}s (TCP connect and SSH handshake)",
            limit.as_secs_f32()
        ))
    })??;
    let host_key = seen
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .ok_or_else(|| connect_err("the server presented no host key".into()))?;
    tracing::debug!(host_key = %host_key.fingerprint, "handshake done");

    let auth_span = tracing::debug_span!("ssh", host = %label, step = "auth");
    tokio::time::timeout(limit, authenticate(&mut handle, target, &keys))
        .instrument(auth_span)
        .await
        .map_err(|_| {
            connect_err(format!(
                "authentication timed out after {}s",
                limit.as_secs_f32()
            ))
        })??;
    tracing::debug!("authenticated");

    Ok(Arc::new(SshConnection {
        label,
        user: target.user.clone(),
        handle,
        host_key,
        options: options.clone(),
        jump,
        last_ok: Mutex::new(Instant::now()),
    }))
}

fn handshake_error(
    e: russh::Error,
    seen: &Arc<Mutex<Option<HostKey>>>,
    target: &SshTarget,
    options: &ConnectOptions,
    connect_err: &dyn Fn(String) -> SshError,
) -> SshError {
    if let (russh::Error::UnknownKey, HostKeyPolicy::Pinned(expected)) =
        (&e, &options.host_key_policy)
    {
        let actual = seen
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|k| k.fingerprint.clone()))
            .unwrap_or_else(|| "(none)".into());
        return SshError::HostKeyMismatch {
            target: target.to_string(),
            expected: expected.join(", "),
            actual,
        };
    }
    connect_err(format!("SSH handshake: {e}"))
}

async fn authenticate(
    handle: &mut Handle<ClientHandler>,
    target: &SshTarget,
    keys: &[PrivateKey],
) -> Result<(), SshError> {
    let mut rsa_hash: Option<Option<HashAlg>> = None;
    for (i, key) in keys.iter().enumerate() {
        let hash = if key.algorithm().is_rsa() {
            match rsa_hash {
                Some(h) => h,
                None => {
                    let h = handle
                        .best_supported_rsa_hash()
                        .await
                        .ok()
                        .flatten()
                        .flatten();
                    rsa_hash = Some(h);
                    h
                }
            }
        } else {
            None
        };
        let fingerprint = key.public_key().fingerprint(HashAlg::Sha256);
        let res = handle
            .authenticate_publickey(
                target.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key.clone()), hash),
            )
            .await
            .map_err(|e| SshError::Connect {
                target: target.to_string(),
                host: target.host.clone(),
                port: target.port,
                reason: format!("connection failed during authentication: {e}"),
            })?;
        if res.success() {
            return Ok(());
        }
        tracing::debug!(key = i + 1, %fingerprint, "key rejected");
    }
    Err(SshError::Auth {
        target: target.to_string(),
        user: target.user.clone(),
        host: target.host.clone(),
        key_count: keys.len(),
        fingerprints: keys
            .iter()
            .map(|k| k.public_key().fingerprint(HashAlg::Sha256).to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(status: u32, stderr: &str) -> ExecOutput {
        ExecOutput {
            exit_status: status,
            exit_signal: None,
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn quotes_for_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn recognises_sudo_refusals() {
        assert!(sudo_refusal(&out(1, "sudo: a password is required\n")).is_some());
        assert!(sudo_refusal(&out(1, "u is not in the sudoers file.")).is_none());
        assert!(
            sudo_refusal(&out(
                1,
                "sudo: user u is not allowed to execute '/bin/sh' as root"
            ))
            .is_some()
        );
        assert!(sudo_refusal(&out(127, "bash: line 1: sudo: command not found")).is_some());
        assert!(sudo_refusal(&out(1, "grep: nothing")).is_none());
        assert!(sudo_refusal(&out(0, "")).is_none());
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_label(&russh::Sig::KILL), "KILL");
        assert_eq!(signal_label(&russh::Sig::Custom("USR1".into())), "USR1");
    }
}
