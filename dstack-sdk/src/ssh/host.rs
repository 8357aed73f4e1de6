//! Facts about the remote host that the SSH-fleet install needs: CPU architecture and systemd.

use super::connection::SshConnection;
use super::error::SshError;

/// The host's CPU architecture, as dstack supports it (64-bit only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostArch {
    /// x86-64 (`uname -m` = `x86_64`).
    Amd64,
    /// AArch64 (`uname -m` = `aarch64` / `arm64`).
    Arm64,
}

impl HostArch {
    /// Interprets free-form architecture text like dstack's `normalize_arch`: 32-bit names are
    /// rejected, `x86*`/`amd*` → amd64, `arm*`/`aarch*` → arm64.
    pub fn from_uname(machine: &str) -> Result<HostArch, String> {
        let lower = machine.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err("empty architecture".into());
        }
        if lower.contains("32") || lower == "i386" || lower == "i686" {
            return Err(format!("32-bit architectures are not supported: {machine}"));
        }
        if lower.starts_with("x86") || lower.starts_with("amd") {
            return Ok(HostArch::Amd64);
        }
        if lower.starts_with("arm") || lower.starts_with("aarch") {
            return Ok(HostArch::Arm64);
        }
        Err(format!("unsupported architecture: {machine}"))
    }

    /// Go's GOARCH name (`amd64` / `arm64`), used in agent download URLs.
    pub fn go_arch(self) -> &'static str {
        match self {
            HostArch::Amd64 => "amd64",
            HostArch::Arm64 => "arm64",
        }
    }

    /// dstack's `cpu_arch` wire value (`x86` / `arm`).
    pub fn cpu_arch(self) -> &'static str {
        match self {
            HostArch::Amd64 => "x86",
            HostArch::Arm64 => "arm",
        }
    }
}

/// What the host says about systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdStatus {
    /// The version from `systemctl --version` (`None`: systemctl is not installed).
    pub version: Option<u32>,
    /// Whether systemd is the running init (`/run/systemd/system` exists).
    pub booted: bool,
}

impl SystemdStatus {
    /// Whether units can be installed and started (`systemctl` present and systemd running).
    pub fn usable(&self) -> bool {
        self.version.is_some() && self.booted
    }
}

impl SshConnection {
    /// Runs `uname -m` and maps it to a [`HostArch`].
    pub async fn detect_arch(&self) -> Result<HostArch, SshError> {
        let out = self.exec("uname -m").await?;
        let machine = out.stdout_lossy();
        let fail = |reason: String| SshError::Detect {
            target: self.target_label().to_string(),
            what: "CPU architecture".into(),
            reason,
        };
        if !out.success() || !out.stderr.is_empty() {
            return Err(fail(format!(
                "`uname -m` failed (exit {}): {}",
                out.exit_status,
                out.stderr_lossy().trim()
            )));
        }
        HostArch::from_uname(&machine).map_err(fail)
    }

    /// Checks for `systemctl` and a running systemd (`/run/systemd/system`).
    pub async fn detect_systemd(&self) -> Result<SystemdStatus, SshError> {
        let out = self
            .exec(
                "systemctl --version 2>/dev/null | head -n 1; \
                 if [ -d /run/systemd/system ]; then echo BOOTED=1; else echo BOOTED=0; fi",
            )
            .await?;
        Ok(parse_systemd(&out.stdout_lossy()))
    }
}

fn parse_systemd(stdout: &str) -> SystemdStatus {
    let mut version = None;
    let mut booted = false;
    for line in stdout.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("systemd ") {
            version = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u32>().ok());
        } else if line == "BOOTED=1" {
            booted = true;
        }
    }
    SystemdStatus { version, booted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_uname() {
        assert_eq!(HostArch::from_uname("x86_64\n"), Ok(HostArch::Amd64));
        assert_eq!(HostArch::from_uname("aarch64"), Ok(HostArch::Arm64));
        assert_eq!(HostArch::from_uname("arm64"), Ok(HostArch::Arm64));
        assert!(HostArch::from_uname("i686").is_err());
        assert!(HostArch::from_uname("armv7l_32").is_err());
        assert!(HostArch::from_uname("riscv64").is_err());
        assert_eq!(HostArch::Amd64.go_arch(), "amd64");
        assert_eq!(HostArch::Arm64.cpu_arch(), "arm");
    }

    #[test]
    fn parses_systemd() {
        let s = parse_systemd("systemd 252 (252.39-1~deb12u1)\nBOOTED=1\n");
        assert_eq!(s.version, Some(252));
        assert!(s.usable());
        let s = parse_systemd("BOOTED=0\n");
        assert_eq!(
            s,
            SystemdStatus {
                version: None,
                booted: false
            }
        );
        assert!(!s.usable());
    }
}
