//! A real OpenSSH server on a free loopback port for the SSH-fleet tests: its own host key,
//! config and per-user authorized keys in a temp dir, killed on drop. Shared by
//! `fleets_ssh.rs` and `runs_ssh.rs` (`#[path = "support/sshd.rs"] mod sshd;`).
//!
//! Needs root, `/usr/sbin/sshd`, `sudo` and the users `dstack-test` / `dstack-nosudo`:
//! [`ensure_env`] runs `scripts/sshd-test-env.sh` when any is missing.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The test user with passwordless sudo.
pub const SUDO_USER: &str = "dstack-test";
/// The test user without sudo.
pub const NOSUDO_USER: &str = "dstack-nosudo";

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Prepares the machine once per test binary (packages, users, /run/sshd).
pub fn ensure_env() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let ready = Path::new("/usr/sbin/sshd").exists()
            && Path::new("/run/sshd").is_dir()
            && user_exists(SUDO_USER)
            && user_exists(NOSUDO_USER);
        if !ready {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sshd-test-env.sh");
            let status = Command::new("bash").arg(&script).status().unwrap();
            assert!(status.success(), "scripts/sshd-test-env.sh failed");
        }
    });
}

/// An ed25519 key pair in OpenSSH formats.
pub struct KeyPair {
    /// The private key (OpenSSH PEM).
    pub private_pem: String,
    /// The public key line.
    pub public_line: String,
}

/// Generates a key pair at `path` (and `path.pub`) with `ssh-keygen`.
pub fn keygen(path: &Path) -> KeyPair {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dstack-test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    KeyPair {
        private_pem: std::fs::read_to_string(path).unwrap(),
        public_line: std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string(),
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `chmod`.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A running sshd (killed on drop) and its temp dir.
pub struct LoopbackSshd {
    /// The temp dir (host key, config, authorized keys, log; free for the test's own files).
    pub tmp: tempfile::TempDir,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
}

impl LoopbackSshd {
    /// Starts sshd accepting `authorized` (user, public key line) pairs, and waits until it
    /// greets.
    pub async fn start(authorized: &[(&str, &str)]) -> LoopbackSshd {
        ensure_env();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        set_mode(&dir, 0o755);
        keygen(&dir.join("host_ed25519"));
        let ak = dir.join("authorized_keys");
        std::fs::create_dir(&ak).unwrap();
        set_mode(&ak, 0o755);
        for (user, key) in authorized {
            let file = ak.join(user);
            let mut text = std::fs::read_to_string(&file).unwrap_or_default();
            text.push_str(key);
            text.push('\n');
            std::fs::write(&file, text).unwrap();
            set_mode(&file, 0o644);
        }
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\n\
                 PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys/%u\n\
                 StrictModes no\nUsePAM no\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AllowTcpForwarding yes\nMaxStartups 100\nMaxSessions 100\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                let mut buf = [0u8; 4];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
                    && buf[..n].starts_with(b"SSH-")
                {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "sshd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        LoopbackSshd {
            tmp,
            port,
            child: Some(child),
        }
    }

    /// The temp dir's path.
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().to_path_buf()
    }
}

impl Drop for LoopbackSshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills an agent started by a test: its process group (by the pid file in `agent_home`) and
/// any process still running `agent_bin` (only processes that test started match that path).
pub fn kill_agent(agent_home: &Path, agent_bin: &Path) {
    if let Ok(pid) = std::fs::read_to_string(agent_home.join("agent.pid")) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", pid.trim())])
            .stderr(Stdio::null())
            .status();
    }
    let needle = agent_bin.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}
