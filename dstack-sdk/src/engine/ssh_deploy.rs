//! Deploying our host agent onto an SSH-fleet host (backends.md §3, with our own agent binary
//! instead of a downloaded `dstack-shim`).
//!
//! Steps, each named in errors: connect (with the host's keys, through its proxy jump),
//! detect the CPU architecture, add the project key to `~/.ssh/authorized_keys`, check
//! passwordless sudo, upload the agent binary by SFTP (skipped when the host already has the
//! same bytes), write its env file, start it (a systemd unit when the host runs systemd, else
//! a supervised background loop with a pid file), wait for its healthcheck through an SSH
//! tunnel, and read `host_info.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::models::common::EnvValue;
use crate::models::offers::{Disk, Gpu, Resources};
use crate::models::resources::{AcceleratorVendor, CpuArch};
use crate::ssh::{ConnectOptions, HostArch, SshConnection, SshError, SshTarget, shell_quote};

use super::services::instances::RemoteConnectionInfo;

/// Where and how the agent is installed on SSH-fleet hosts (part of
/// [`EngineOptions`](super::EngineOptions)).
#[derive(Debug, Clone)]
pub struct AgentDeployOptions {
    /// The local agent binary to upload (`$DSTACK_AGENT_BINARY`; default: the running
    /// executable, i.e. `dstack-server`, whose `agent` subcommand is the agent).
    pub binary: Option<PathBuf>,
    /// The installed path on the host.
    pub remote_path: String,
    /// The agent home on the host (`host_info.json`, env file, pid file, logs).
    pub home: String,
    /// The agent's shim API port on the host's loopback.
    pub shim_port: u16,
    /// The agent's runner API port on the host's loopback.
    pub runner_port: u16,
    /// The longest a deploy may take before the instance ends with `provisioning_timeout`.
    pub deploy_timeout: Duration,
    /// How long to wait for the agent's healthcheck after starting it.
    pub health_timeout: Duration,
}

impl Default for AgentDeployOptions {
    fn default() -> Self {
        Self {
            binary: None,
            remote_path: "/usr/local/bin/dstack-agent".into(),
            home: "/root/.dstack".into(),
            shim_port: 10998,
            runner_port: 10999,
            deploy_timeout: Duration::from_secs(600),
            health_timeout: Duration::from_secs(60),
        }
    }
}

impl AgentDeployOptions {
    /// Defaults, with these variables applied when set: `DSTACK_AGENT_BINARY`,
    /// `DSTACK_AGENT_REMOTE_PATH`, `DSTACK_AGENT_HOME`, `DSTACK_AGENT_SHIM_PORT`,
    /// `DSTACK_AGENT_RUNNER_PORT`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let d = Self::default();
        Self {
            binary: std::env::var_os("DSTACK_AGENT_BINARY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            remote_path: var("DSTACK_AGENT_REMOTE_PATH").unwrap_or(d.remote_path),
            home: var("DSTACK_AGENT_HOME").unwrap_or(d.home),
            shim_port: var("DSTACK_AGENT_SHIM_PORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(d.shim_port),
            runner_port: var("DSTACK_AGENT_RUNNER_PORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(d.runner_port),
            ..d
        }
    }

    fn local_binary(&self) -> Result<PathBuf, String> {
        match &self.binary {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find the running executable: {e}")),
        }
    }

    fn unit_name(&self) -> String {
        let base = Path::new(&self.remote_path)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dstack-agent".into());
        format!("{base}.service")
    }
}

/// A failed deploy: which host, which step, and what to fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("SSH deploy to {host} failed at step `{step}`: {message}")]
pub(crate) struct DeployError {
    /// `user@host:port`.
    pub(crate) host: String,
    /// The step (`connect`, `auth`, `sudo`, `upload`, `start`, `health`, …).
    pub(crate) step: &'static str,
    /// The cause and the fix.
    pub(crate) message: String,
}

/// What a successful deploy learned about the host.
#[derive(Debug, Clone)]
pub(crate) struct Deployed {
    /// The host's hardware.
    pub(crate) resources: Resources,
    /// GPU count (for `blocks: auto`).
    pub(crate) gpu_count: i64,
    /// Non-loopback addresses (CIDR).
    pub(crate) addresses: Vec<String>,
}

/// `host_info.json` as the agent writes it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct HostInfo {
    #[serde(default)]
    gpu_vendor: String,
    #[serde(default)]
    gpu_name: String,
    #[serde(default)]
    gpu_memory: u64,
    #[serde(default)]
    gpu_count: u32,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    disk_size: u64,
    #[serde(default)]
    cpus: u32,
    #[serde(default)]
    memory: u64,
}

/// The SSH target of an instance.
pub(crate) fn target_of(rci: &RemoteConnectionInfo) -> SshTarget {
    let mut t = SshTarget::new(rci.host.clone(), rci.port, rci.ssh_user.clone());
    for k in &rci.ssh_keys {
        if let Some(p) = &k.private {
            t = t.with_key(p.clone());
        }
    }
    if let Some(proxy) = &rci.ssh_proxy {
        let mut j = SshTarget::new(proxy.hostname.clone(), proxy.port, proxy.username.clone());
        for k in rci.ssh_proxy_keys.iter().flatten() {
            if let Some(p) = &k.private {
                j = j.with_key(p.clone());
            }
        }
        t = t.with_proxy_jump(j);
    }
    t
}

fn ssh_err(host: &str, e: SshError) -> DeployError {
    DeployError {
        host: host.to_string(),
        step: e.step().as_str(),
        message: e.to_string(),
    }
}

fn fail(host: &str, step: &'static str, message: impl Into<String>) -> DeployError {
    DeployError {
        host: host.to_string(),
        step,
        message: message.into(),
    }
}

/// `KEY="value"` with the characters special inside double quotes escaped.
fn env_line(key: &str, value: &str) -> String {
    let mut v = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            v.push('\\');
        }
        v.push(c);
    }
    format!("{key}=\"{v}\"\n")
}

type HashCache = Mutex<HashMap<PathBuf, (std::time::SystemTime, String)>>;

/// SHA-256 of a local file, cached by path and mtime.
async fn local_sha256(path: &Path) -> Result<String, String> {
    static CACHE: OnceLock<HashCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("cannot read the agent binary {}: {e}", path.display()))?;
    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    if let Ok(c) = cache.lock()
        && let Some((m, h)) = c.get(path)
        && *m == mtime
    {
        return Ok(h.clone());
    }
    let p = path.to_path_buf();
    let hash = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let mut f = std::fs::File::open(&p)
            .map_err(|e| format!("cannot read the agent binary {}: {e}", p.display()))?;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut f, &mut h)
            .map_err(|e| format!("cannot read the agent binary {}: {e}", p.display()))?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| format!("hashing the agent binary failed: {e}"))??;
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_path_buf(), (mtime, hash.clone()));
    }
    Ok(hash)
}

/// One HTTP GET over a local TCP address (the tunnel), `Connection: close`; returns
/// `(status, body)`.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| "no reply within 5s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "malformed HTTP reply".to_string())?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "malformed HTTP status line".to_string())?;
    Ok((status, body.to_string()))
}

/// Deploys (or re-deploys) the agent on the host of `rci`.
#[tracing::instrument(level = "info", skip_all, fields(host = %rci.host, port = rci.port, user = %rci.ssh_user))]
pub(crate) async fn deploy(
    rci: &RemoteConnectionInfo,
    project_public_key: &str,
    opts: &AgentDeployOptions,
) -> Result<Deployed, DeployError> {
    let target = target_of(rci);
    let label = format!("{}@{}:{}", rci.ssh_user, rci.host, rci.port);
    let host = label.as_str();
    let conn = SshConnection::connect(&target, &ConnectOptions::default())
        .await
        .map_err(|e| ssh_err(host, e))?;
    let result = deploy_on(&conn, host, rci, project_public_key, opts).await;
    conn.close().await;
    result
}

async fn deploy_on(
    conn: &Arc<SshConnection>,
    host: &str,
    rci: &RemoteConnectionInfo,
    project_public_key: &str,
    opts: &AgentDeployOptions,
) -> Result<Deployed, DeployError> {
    // Architecture: our binary runs only on hosts of the architecture it was built for.
    let arch = conn.detect_arch().await.map_err(|e| ssh_err(host, e))?;
    let local = HostArch::from_uname(std::env::consts::ARCH)
        .map_err(|e| fail(host, "arch", format!("this server's architecture: {e}")))?;
    if arch != local {
        return Err(fail(
            host,
            "arch",
            format!(
                "the host is {} but the agent binary is built for {}; set DSTACK_AGENT_BINARY to \
                 an agent built for {}",
                arch.go_arch(),
                local.go_arch(),
                arch.go_arch()
            ),
        ));
    }
    tracing::debug!(arch = arch.go_arch(), "connected");

    // The project key, so that the server's later connections (runs, attach) get in.
    let key = project_public_key.trim();
    let key_body: String = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    if !key_body.is_empty() {
        let line = format!("{key_body} # added by dstack");
        let cmd = format!(
            "mkdir -p ~/.ssh && chmod 700 ~/.ssh && touch ~/.ssh/authorized_keys && \
             chmod 600 ~/.ssh/authorized_keys && \
             (grep -qF {body} ~/.ssh/authorized_keys || printf '%s\\n' {line} >> ~/.ssh/authorized_keys)",
            body = shell_quote(&key_body),
            line = shell_quote(&line),
        );
        let out = conn.exec(&cmd).await.map_err(|e| ssh_err(host, e))?;
        if !out.success() {
            return Err(fail(
                host,
                "authorized_keys",
                format!(
                    "cannot add the project key to ~/.ssh/authorized_keys (exit {}): {}; check \
                     that the home directory of {} is writable",
                    out.exit_status,
                    out.stderr_lossy().trim(),
                    rci.ssh_user
                ),
            ));
        }
    }

    conn.check_sudo().await.map_err(|e| ssh_err(host, e))?;

    // Upload the agent unless the host already has the same bytes.
    let local_bin = opts.local_binary().map_err(|m| fail(host, "upload", m))?;
    let hash = local_sha256(&local_bin)
        .await
        .map_err(|m| fail(host, "upload", m))?;
    let remote = shell_quote(&opts.remote_path);
    let out = conn
        .exec_sudo(&format!("sha256sum {remote} 2>/dev/null || true"))
        .await
        .map_err(|e| ssh_err(host, e))?;
    let same = out
        .stdout_lossy()
        .split_whitespace()
        .next()
        .is_some_and(|h| h == hash);
    if !same {
        // Partial uploads of deploys that were cut off (a killed server) are left in /tmp;
        // remove this user's stale ones.
        let _ = conn
            .exec(
                "find /tmp -maxdepth 1 -user \"$(id -u)\" -name 'dstack-agent-*' -mmin +10 \
                 -exec rm -f {} + 2>/dev/null; true",
            )
            .await;
        let tmp = format!("/tmp/dstack-agent-{}", uuid::Uuid::new_v4().simple());
        conn.upload_file(&local_bin, &tmp, 0o755)
            .await
            .map_err(|e| ssh_err(host, e))?;
        let dir = Path::new(&opts.remote_path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        let out = conn
            .exec_sudo(&format!(
                "mkdir -p {dir} && mv -f {tmp} {remote} && chown root:root {remote} && chmod 755 {remote}",
                dir = shell_quote(&dir),
                tmp = shell_quote(&tmp),
            ))
            .await
            .map_err(|e| ssh_err(host, e))?;
        if !out.success() {
            return Err(fail(
                host,
                "upload",
                format!(
                    "cannot install the agent at {}: {}",
                    opts.remote_path,
                    out.stderr_lossy().trim()
                ),
            ));
        }
        tracing::info!(path = %opts.remote_path, "agent uploaded");
    }

    // The env file.
    let home = shell_quote(&opts.home);
    let mut env = String::new();
    env.push_str(&env_line("DSTACK_SHIM_HOME", &opts.home));
    env.push_str(&env_line(
        "DSTACK_SHIM_HTTP_PORT",
        &opts.shim_port.to_string(),
    ));
    env.push_str(&env_line(
        "DSTACK_RUNNER_HTTP_PORT",
        &opts.runner_port.to_string(),
    ));
    env.push_str(&env_line("DSTACK_SERVICE_MODE", "1"));
    for (k, v) in &rci.env.0 {
        if let EnvValue::Value(v) = v {
            env.push_str(&env_line(k, v));
        }
    }
    let tmp_env = format!("/tmp/dstack-agent-env-{}", uuid::Uuid::new_v4().simple());
    conn.upload_bytes(&tmp_env, env.as_bytes(), 0o600)
        .await
        .map_err(|e| ssh_err(host, e))?;
    let out = conn
        .exec_sudo(&format!(
            "mkdir -p {home} && chmod 700 {home} && mv -f {tmp} {home}/agent.env && \
             chown root:root {home}/agent.env && rm -f {home}/host_info.json",
            tmp = shell_quote(&tmp_env)
        ))
        .await
        .map_err(|e| ssh_err(host, e))?;
    if !out.success() {
        return Err(fail(
            host,
            "env",
            format!(
                "cannot write {}/agent.env: {}",
                opts.home,
                out.stderr_lossy().trim()
            ),
        ));
    }

    // Start (or restart) the agent.
    let systemd = conn.detect_systemd().await.map_err(|e| ssh_err(host, e))?;
    let args = format!(
        "agent --home {home} --shim-port {} --runner-port {}",
        opts.shim_port, opts.runner_port
    );
    if systemd.usable() {
        let unit = opts.unit_name();
        let text = format!(
            "[Unit]\nDescription=dstack agent\nAfter=network-online.target\n\
             StartLimitIntervalSec=3600\n\n[Service]\nType=simple\nUser=root\nRestart=always\n\
             RestartSec=3\nWorkingDirectory={h}\nEnvironmentFile={h}/agent.env\n\
             ExecStart={bin} {args}\n\n[Install]\nWantedBy=multi-user.target\n",
            h = opts.home,
            bin = opts.remote_path,
        );
        let tmp_unit = format!("/tmp/dstack-agent-unit-{}", uuid::Uuid::new_v4().simple());
        conn.upload_bytes(&tmp_unit, text.as_bytes(), 0o644)
            .await
            .map_err(|e| ssh_err(host, e))?;
        let out = conn
            .exec_sudo(&format!(
                "mv -f {tmp} /etc/systemd/system/{unit} && systemctl daemon-reload && \
                 systemctl enable {unit} && systemctl restart {unit}",
                tmp = shell_quote(&tmp_unit),
                unit = shell_quote(&unit),
            ))
            .await
            .map_err(|e| ssh_err(host, e))?;
        if !out.success() {
            return Err(fail(
                host,
                "start",
                format!(
                    "systemctl could not start {unit}: {}; see `journalctl -u {unit}` on the host",
                    out.stderr_lossy().trim()
                ),
            ));
        }
    } else {
        // A supervised loop in its own process group; the pid file lets a re-deploy or a
        // termination stop the whole group.
        let script = format!(
            "H={home}; B={remote}; \
             if [ -f \"$H/agent.pid\" ]; then P=$(cat \"$H/agent.pid\"); \
             kill -TERM \"-$P\" 2>/dev/null || kill -TERM \"$P\" 2>/dev/null; sleep 1; fi; \
             nohup setsid sh -c 'echo $$ > \"$0/agent.pid\"; set -a; . \"$0/agent.env\"; set +a; \
             while true; do \"$1\" agent --home \"$0\" --shim-port \"$2\" --runner-port \"$3\" \
             >> \"$0/agent.log\" 2>&1; sleep 3; done' \"$H\" \"$B\" {sp} {rp} \
             > /dev/null 2>&1 < /dev/null &",
            sp = opts.shim_port,
            rp = opts.runner_port,
        );
        let out = conn
            .exec_sudo(&script)
            .await
            .map_err(|e| ssh_err(host, e))?;
        if !out.success() {
            return Err(fail(
                host,
                "start",
                format!(
                    "cannot start the agent loop (exit {}): {}",
                    out.exit_status,
                    out.stderr_lossy().trim()
                ),
            ));
        }
    }
    tracing::debug!(systemd = systemd.usable(), "agent started");

    // Healthcheck through a tunnel to the agent's loopback port.
    let tunnel = conn
        .forward_local("127.0.0.1", opts.shim_port)
        .await
        .map_err(|e| ssh_err(host, e))?;
    let deadline = tokio::time::Instant::now() + opts.health_timeout;
    let mut last_err;
    loop {
        match http_get(tunnel.local_addr(), "/api/healthcheck").await {
            Ok((200, body)) if body.contains("dstack-shim") => break,
            Ok((status, body)) => {
                last_err = format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                )
            }
            Err(e) => last_err = e,
        }
        if tokio::time::Instant::now() >= deadline {
            let log = conn
                .exec_sudo(&format!("tail -n 20 {home}/agent.log 2>/dev/null"))
                .await
                .map(|o| o.stdout_lossy())
                .unwrap_or_default();
            return Err(fail(
                host,
                "health",
                format!(
                    "the agent did not answer on 127.0.0.1:{} within {}s ({last_err}); check \
                     {}/agent.log on the host{}",
                    opts.shim_port,
                    opts.health_timeout.as_secs(),
                    opts.home,
                    if log.trim().is_empty() {
                        String::new()
                    } else {
                        format!(". Last log lines: {}", log.trim())
                    }
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(tunnel);

    // Host facts.
    let mut info = None;
    for _ in 0..20 {
        let out = conn
            .exec_sudo(&format!("cat {home}/host_info.json 2>/dev/null"))
            .await
            .map_err(|e| ssh_err(host, e))?;
        if out.success()
            && let Ok(i) = serde_json::from_slice::<HostInfo>(&out.stdout)
        {
            info = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let info = info.ok_or_else(|| {
        fail(
            host,
            "host_info",
            format!("the agent did not write {}/host_info.json", opts.home),
        )
    })?;
    Ok(resources_of(&info, arch))
}

fn resources_of(info: &HostInfo, arch: HostArch) -> Deployed {
    const MIB: u64 = 1024 * 1024;
    let vendor = match info.gpu_vendor.as_str() {
        "nvidia" => Some(AcceleratorVendor::Nvidia),
        "amd" => Some(AcceleratorVendor::Amd),
        "intel" => Some(AcceleratorVendor::Intel),
        "tenstorrent" => Some(AcceleratorVendor::Tenstorrent),
        _ => None,
    };
    let gpus: Vec<Gpu> = match vendor {
        Some(vendor) if info.gpu_count > 0 => (0..info.gpu_count)
            .map(|_| Gpu {
                name: info.gpu_name.clone(),
                memory_mib: info.gpu_memory as i64,
                vendor,
            })
            .collect(),
        _ => vec![],
    };
    let resources = Resources {
        cpus: i64::from(info.cpus),
        memory_mib: (info.memory / MIB) as i64,
        gpus,
        spot: false,
        disk: Disk {
            size_mib: (info.disk_size / MIB) as i64,
        },
        cpu_arch: Some(match arch {
            HostArch::Arm64 => CpuArch::Arm,
            _ => CpuArch::X86,
        }),
        description: String::new(),
    };
    Deployed {
        gpu_count: i64::from(info.gpu_count),
        resources,
        addresses: info.addresses.clone(),
    }
}

/// Stops and removes the agent on the host, best effort (errors are returned for logging).
#[tracing::instrument(level = "info", skip_all, fields(host = %rci.host, port = rci.port))]
pub(crate) async fn remove_agent(
    rci: &RemoteConnectionInfo,
    opts: &AgentDeployOptions,
) -> Result<(), DeployError> {
    let target = target_of(rci);
    let label = format!("{}@{}:{}", rci.ssh_user, rci.host, rci.port);
    let options = ConnectOptions {
        connect_timeout: Duration::from_secs(10),
        exec_timeout: Duration::from_secs(30),
        ..ConnectOptions::default()
    };
    let conn = SshConnection::connect(&target, &options)
        .await
        .map_err(|e| ssh_err(&label, e))?;
    let unit = shell_quote(&opts.unit_name());
    let script = format!(
        "H={home}; B={bin}; \
         if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] && \
         [ -f /etc/systemd/system/{unit} ]; then systemctl disable --now {unit} >/dev/null 2>&1; \
         rm -f /etc/systemd/system/{unit}; systemctl daemon-reload >/dev/null 2>&1; fi; \
         if [ -f \"$H/agent.pid\" ]; then P=$(cat \"$H/agent.pid\"); \
         kill -TERM \"-$P\" 2>/dev/null || kill -TERM \"$P\" 2>/dev/null; rm -f \"$H/agent.pid\"; fi; \
         rm -f \"$B\"",
        home = shell_quote(&opts.home),
        bin = shell_quote(&opts.remote_path),
    );
    let res = conn.exec_sudo(&script).await;
    conn.close().await;
    let out = res.map_err(|e| ssh_err(&label, e))?;
    if out.success() {
        Ok(())
    } else {
        Err(fail(
            &label,
            "stop",
            format!("stopping the agent failed: {}", out.stderr_lossy().trim()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_escape() {
        assert_eq!(env_line("A", "x\"$y`\\"), "A=\"x\\\"\\$y\\`\\\\\"\n");
    }

    #[test]
    fn resources_from_host_info() {
        let info = HostInfo {
            gpu_vendor: "nvidia".into(),
            gpu_name: "A10G".into(),
            gpu_memory: 24576,
            gpu_count: 2,
            addresses: vec!["10.0.0.2/24".into()],
            disk_size: 100 * 1024 * 1024 * 1024,
            cpus: 8,
            memory: 32 * 1024 * 1024 * 1024,
        };
        let d = resources_of(&info, HostArch::Amd64);
        assert_eq!(d.resources.cpus, 8);
        assert_eq!(d.resources.memory_mib, 32 * 1024);
        assert_eq!(d.resources.gpus.len(), 2);
        assert_eq!(d.resources.disk.size_mib, 100 * 1024);
        assert_eq!(d.gpu_count, 2);
    }
}
