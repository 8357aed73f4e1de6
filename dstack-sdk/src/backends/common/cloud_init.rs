//! Cloud-init user data and the host-agent bootstrap (our equivalent of dstack's
//! `get_shim_commands` + `get_cloud_config`).
//!
//! The rendered `#cloud-config`:
//! - `ssh_authorized_keys`: the project key (and user keys) for the image's default user;
//! - `write_files`: the agent's environment (`/root/.dstack/agent.env`, mode 0600) and its
//!   systemd unit (`/etc/systemd/system/dstack-agent.service`);
//! - `runcmd`: one `sh -c` that patches Docker's cgroup driver (errors ignored), optionally
//!   sets up `ufw`, downloads the agent (`dstack-server`, run as `dstack-server agent`) from
//!   the configured URL with retries, installs it to `/usr/local/bin/dstack-agent`, and
//!   enables and starts the unit (systemd restarts it 3 s after any exit).

use indexmap::IndexMap;
use serde::Serialize;

use super::settings::BackendSettings;

/// The shim API port (the agent's default, dstack's 10998).
pub const DEFAULT_SHIM_PORT: u16 = 10998;
/// The runner API port (the agent's default, dstack's 10999).
pub const DEFAULT_RUNNER_PORT: u16 = 10999;
/// Where the agent binary is installed on VMs (the same path SSH fleets use).
pub const AGENT_BINARY_PATH: &str = "/usr/local/bin/dstack-agent";
/// The agent home on VMs.
pub const AGENT_HOME: &str = "/root/.dstack";
/// The systemd unit name.
pub const AGENT_UNIT: &str = "dstack-agent.service";
/// The private networks `ufw` lets in when no CIDRs are given (dstack's defaults).
pub const DEFAULT_PRIVATE_SUBNETS: &[&str] = &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

/// Quotes `s` for a POSIX shell (single quotes).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// How the host agent gets onto a VM and starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentBootstrap {
    /// The expanded download URL.
    pub download_url: String,
    /// Install path.
    pub binary_path: String,
    /// Agent home.
    pub home: String,
    /// Shim API port.
    pub shim_port: u16,
    /// Runner API port.
    pub runner_port: u16,
    /// Extra environment for the agent (backend specifics).
    pub env: IndexMap<String, String>,
    /// `Some(cidrs)`: configure `ufw` (deny incoming except SSH and `cidrs`); `None`: leave
    /// the host firewall alone (the cloud's security group does the job).
    pub firewall_allow: Option<Vec<String>>,
    /// Switch Docker to the cgroupfs driver (NVIDIA images need it); errors are ignored.
    pub docker_cgroupfs_patch: bool,
}

impl AgentBootstrap {
    /// The bootstrap for a VM of `arch` (`amd64` / `arm64`) with the server's settings.
    pub fn new(settings: &BackendSettings, arch: &str) -> Self {
        Self {
            download_url: settings.agent_download.url(&settings.agent_version, arch),
            binary_path: AGENT_BINARY_PATH.to_string(),
            home: AGENT_HOME.to_string(),
            shim_port: DEFAULT_SHIM_PORT,
            runner_port: DEFAULT_RUNNER_PORT,
            env: IndexMap::new(),
            firewall_allow: None,
            docker_cgroupfs_patch: true,
        }
    }

    /// Adds an environment variable for the agent.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Enables the `ufw` setup, letting in SSH and `cidrs` (dstack's private subnets when
    /// empty).
    pub fn with_firewall(mut self, cidrs: Vec<String>) -> Self {
        self.firewall_allow = Some(if cidrs.is_empty() {
            DEFAULT_PRIVATE_SUBNETS
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            cidrs
        });
        self
    }

    /// The agent's environment file (`KEY=value` lines, values quoted for systemd).
    pub fn env_file(&self) -> String {
        let mut vars: IndexMap<String, String> = IndexMap::new();
        vars.insert("DSTACK_SHIM_HOME".into(), self.home.clone());
        vars.insert("DSTACK_SHIM_HTTP_PORT".into(), self.shim_port.to_string());
        vars.insert(
            "DSTACK_RUNNER_HTTP_PORT".into(),
            self.runner_port.to_string(),
        );
        for (k, v) in &self.env {
            vars.insert(k.clone(), v.clone());
        }
        vars.iter()
            .map(|(k, v)| format!("{k}=\"{}\"\n", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect()
    }

    /// The systemd unit that runs the agent.
    pub fn systemd_unit(&self) -> String {
        format!(
            "[Unit]\nDescription=dstack agent\nAfter=network-online.target\nWants=network-online.target\n\
             StartLimitIntervalSec=0\n\n[Service]\nType=simple\nUser=root\nRestart=always\nRestartSec=3\n\
             WorkingDirectory={h}\nEnvironmentFile={h}/agent.env\n\
             ExecStart={bin} agent --home {h} --shim-port {shim} --runner-port {runner}\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            h = self.home,
            bin = self.binary_path,
            shim = self.shim_port,
            runner = self.runner_port,
        )
    }

    /// The shell commands (run as root, joined with `&&` into one `sh -c`).
    pub fn commands(&self) -> Vec<String> {
        let mut c = Vec::new();
        if self.docker_cgroupfs_patch {
            c.push(
                "{ if [ -f /etc/docker/daemon.json ] && command -v jq >/dev/null; then \
                 jq '.[\"exec-opts\"] = ((.[\"exec-opts\"] // []) + [\"native.cgroupdriver=cgroupfs\"] | unique)' \
                 /etc/docker/daemon.json > /tmp/daemon.json && mv /tmp/daemon.json /etc/docker/daemon.json && \
                 systemctl restart docker; fi; } || true"
                    .to_string(),
            );
        }
        if let Some(cidrs) = &self.firewall_allow {
            let mut ufw = vec![
                "ufw --force reset".to_string(),
                "ufw default deny incoming".to_string(),
                "ufw default allow outgoing".to_string(),
                "ufw allow ssh".to_string(),
            ];
            for cidr in cidrs {
                ufw.push(format!("ufw allow from {}", shell_quote(cidr)));
            }
            ufw.push("ufw --force enable".to_string());
            c.push(format!("{{ {}; }} || true", ufw.join(" && ")));
        }
        let bin = shell_quote(&self.binary_path);
        c.push(format!(
            "tmp=$(mktemp) && curl -fsSL --retry 10 --retry-delay 3 --retry-all-errors \
             --connect-timeout 10 -o \"$tmp\" {url} && install -m 0755 \"$tmp\" {bin} && rm -f \"$tmp\"",
            url = shell_quote(&self.download_url),
        ));
        c.push(format!("{{ chcon -t bin_t {bin} 2>/dev/null || true; }}"));
        c.push(format!(
            "mkdir -p {h} && chmod 700 {h}",
            h = shell_quote(&self.home)
        ));
        c.push(format!(
            "systemctl daemon-reload && systemctl enable --now {AGENT_UNIT}"
        ));
        c
    }
}

#[derive(Serialize)]
struct WriteFile {
    path: String,
    permissions: String,
    owner: String,
    content: String,
}

#[derive(Serialize)]
struct CloudConfig {
    ssh_authorized_keys: Vec<String>,
    write_files: Vec<WriteFile>,
    runcmd: Vec<Vec<String>>,
}

/// The `#cloud-config` user data: `authorized_keys` for the image's default user, the
/// agent's env file and unit, and the bootstrap commands.
pub fn render_cloud_config(authorized_keys: &[String], bootstrap: &AgentBootstrap) -> String {
    let config = CloudConfig {
        ssh_authorized_keys: authorized_keys
            .iter()
            .map(|k| k.trim().to_string())
            .collect(),
        write_files: vec![
            WriteFile {
                path: format!("{}/agent.env", bootstrap.home),
                permissions: "0600".into(),
                owner: "root:root".into(),
                content: bootstrap.env_file(),
            },
            WriteFile {
                path: format!("/etc/systemd/system/{AGENT_UNIT}"),
                permissions: "0644".into(),
                owner: "root:root".into(),
                content: bootstrap.systemd_unit(),
            },
        ],
        runcmd: vec![vec![
            "sh".into(),
            "-c".into(),
            bootstrap.commands().join(" && "),
        ]],
    };
    // Serialising plain strings and lists cannot fail; fall back to an empty document.
    let body = serde_yaml::to_string(&config).unwrap_or_default();
    format!("#cloud-config\n{body}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::backends::common::settings::AgentDownload;

    fn bootstrap() -> AgentBootstrap {
        let settings = BackendSettings::new("srv").with_agent_download(AgentDownload::Template(
            "https://dl.example/{version}/agent-{arch}".into(),
        ));
        let mut b = AgentBootstrap::new(&settings, "amd64");
        b.download_url = "https://dl.example/1.2.3/agent-amd64".into();
        b.with_env("DSTACK_BACKEND", "aws")
            .with_firewall(vec!["172.31.0.0/16".into()])
    }

    #[test]
    fn cloud_config_snapshot() {
        let out = render_cloud_config(&["ssh-ed25519 AAAAC3Nza project\n".into()], &bootstrap());
        let expected = r#"#cloud-config
ssh_authorized_keys:
- ssh-ed25519 AAAAC3Nza project
write_files:
- path: /root/.dstack/agent.env
  permissions: '0600'
  owner: root:root
  content: |
    DSTACK_SHIM_HOME="/root/.dstack"
    DSTACK_SHIM_HTTP_PORT="10998"
    DSTACK_RUNNER_HTTP_PORT="10999"
    DSTACK_BACKEND="aws"
- path: /etc/systemd/system/dstack-agent.service
  permissions: '0644'
  owner: root:root
  content: |
    [Unit]
    Description=dstack agent
    After=network-online.target
    Wants=network-online.target
    StartLimitIntervalSec=0

    [Service]
    Type=simple
    User=root
    Restart=always
    RestartSec=3
    WorkingDirectory=/root/.dstack
    EnvironmentFile=/root/.dstack/agent.env
    ExecStart=/usr/local/bin/dstack-agent agent --home /root/.dstack --shim-port 10998 --runner-port 10999

    [Install]
    WantedBy=multi-user.target
runcmd:
- - sh
  - -c
  - '{ if [ -f /etc/docker/daemon.json ] && command -v jq >/dev/null; then jq ''.["exec-opts"] = ((.["exec-opts"] // []) + ["native.cgroupdriver=cgroupfs"] | unique)'' /etc/docker/daemon.json > /tmp/daemon.json && mv /tmp/daemon.json /etc/docker/daemon.json && systemctl restart docker; fi; } || true && { ufw --force reset && ufw default deny incoming && ufw default allow outgoing && ufw allow ssh && ufw allow from 172.31.0.0/16 && ufw --force enable; } || true && tmp=$(mktemp) && curl -fsSL --retry 10 --retry-delay 3 --retry-all-errors --connect-timeout 10 -o "$tmp" https://dl.example/1.2.3/agent-amd64 && install -m 0755 "$tmp" /usr/local/bin/dstack-agent && rm -f "$tmp" && { chcon -t bin_t /usr/local/bin/dstack-agent 2>/dev/null || true; } && mkdir -p /root/.dstack && chmod 700 /root/.dstack && systemctl daemon-reload && systemctl enable --now dstack-agent.service'
"#;
        if out != expected {
            panic!("cloud-config changed:\n{out}");
        }
        // It is valid YAML and round-trips the command.
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert!(v["runcmd"][0][2].as_str().unwrap().contains("enable --now"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("https://a/b-c_1.2"), "https://a/b-c_1.2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("x?y&z"), "'x?y&z'");
    }
}
