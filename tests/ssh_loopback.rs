//! The SSH layer (`dstack_sdk::ssh`) against a real OpenSSH server on loopback — no mocks.
//!
//! Each test starts its own `sshd -D -e` on a free 127.0.0.1 port with its own host key,
//! config and authorized keys in a temp dir, and kills it (with its session processes) when
//! done. It needs root, `/usr/sbin/sshd`, `sudo`, and the users `dstack-test` (passwordless
//! sudo) and `dstack-nosudo`; when any is missing it runs `scripts/sshd-test-env.sh`, which
//! installs them with apt-get. Every test is bounded by a timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dstack_sdk::ErrorKind;
use dstack_sdk::ssh::{
    ConnectOptions, HostArch, HostKeyPolicy, SshConnection, SshError, SshPool, SshStep, SshTarget,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEST_TIMEOUT: Duration = Duration::from_secs(90);
const SUDO_USER: &str = "dstack-test";
const NOSUDO_USER: &str = "dstack-nosudo";

/// Runs `f` under [`TEST_TIMEOUT`] so a broken server or client can never hang the suite.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test timed out");
}

// ---------------------------------------------------------------------------------------------
// Environment: sshd binary, sudo, test users.
// ---------------------------------------------------------------------------------------------

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_env() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let ready = Path::new("/usr/sbin/sshd").exists()
            && Path::new("/run/sshd").is_dir()
            && Command::new("sudo")
                .arg("-V")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            && user_exists(SUDO_USER)
            && user_exists(NOSUDO_USER);
        if !ready {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sshd-test-env.sh");
            let status = Command::new("bash")
                .arg(&script)
                .status()
                .expect("run scripts/sshd-test-env.sh");
            assert!(
                status.success(),
                "scripts/sshd-test-env.sh failed ({status}); it needs root and apt access"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Keys.
// ---------------------------------------------------------------------------------------------

struct KeyPair {
    private_pem: String,
    public_line: String,
}

fn keygen(path: &Path, kind: &str) -> KeyPair {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "dstack-sdk-test", "-f"])
        .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let status = cmd.status().expect("ssh-keygen");
    assert!(status.success());
    KeyPair {
        private_pem: std::fs::read_to_string(path).unwrap(),
        public_line: std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string(),
    }
}

fn fingerprint_of(pub_path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// One sshd instance.
// ---------------------------------------------------------------------------------------------

/// `pid`'s process tree by depth: `[[pid], [children], [grandchildren], …]`.
fn process_levels(pid: u32) -> Vec<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // Fields after the last ')': state ppid ...
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut levels = vec![vec![pid]];
    while let Some(last) = levels.last() {
        let next: Vec<u32> = last
            .iter()
            .flat_map(|p| children.get(p).cloned().unwrap_or_default())
            .collect();
        if next.is_empty() {
            break;
        }
        levels.push(next);
    }
    levels
}

/// Every process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    process_levels(pid).into_iter().skip(1).flatten().collect()
}

/// Kills `pid` and every process below it (sshd forks a privileged and an unprivileged child
/// per connection, and those run the commands). Only processes we started are touched.
fn kill_tree(pid: u32) {
    // Deepest first, pausing between levels so each parent still alive reaps its children
    // (no zombies left for an init that does not reap).
    for level in process_levels(pid).into_iter().rev() {
        for p in level {
            let _ = Command::new("kill")
                .args(["-9", &p.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

struct Sshd {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Sshd {
    /// Writes the config for `port` into `dir` (which must hold `host_ed25519` and
    /// `authorized_keys/<user>`), starts sshd, and waits until it answers with its banner.
    async fn start(dir: &Path, port: u16) -> Sshd {
        let mut sshd = Sshd {
            dir: dir.to_path_buf(),
            port,
            child: None,
            log: dir.join("sshd.log"),
        };
        sshd.spawn();
        sshd.wait_ready().await;
        sshd
    }

    fn spawn(&mut self) {
        let config = self.dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {dir}/host_ed25519\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys/%u\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AllowTcpForwarding yes\n\
                 MaxStartups 100\n\
                 MaxSessions 100\n\
                 LogLevel DEBUG1\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n",
                port = self.port,
                dir = self.dir.display()
            ),
        )
        .unwrap();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start /usr/sbin/sshd");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("sshd exited with {status}: {}", self.log_text());
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut buf = [0u8; 8];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
                    && buf[..n].starts_with(b"SSH-")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sshd did not come up on port {}: {}",
                self.port,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills sshd and all its session processes (existing connections drop).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) every session process but keeps the listener: existing connections
    /// go silent without a FIN, as when a link drops; new connections still work.
    fn freeze_sessions(&self) {
        let Some(child) = self.child.as_ref() else {
            return;
        };
        for p in descendants(child.id()) {
            let _ = Command::new("kill")
                .args(["-STOP", &p.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Kills it and starts it again on the same port with the same config and host key.
    async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temp dir with a host key, client keys for both users, and a running sshd.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    sshd: Sshd,
    sudo_key: KeyPair,
    nosudo_key: KeyPair,
    rsa_key: KeyPair,
    stranger_key: KeyPair,
    host_fingerprint: String,
}

impl Fixture {
    async fn new() -> Fixture {
        ensure_env();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // sshd reads AuthorizedKeysFile as the logging-in user: let them traverse and read.
        set_mode(&dir, 0o755);
        let host = dir.join("host_ed25519");
        keygen(&host, "ed25519");
        let host_fingerprint = fingerprint_of(&host.with_extension("pub"));
        let keys = dir.join("client");
        std::fs::create_dir(&keys).unwrap();
        let sudo_key = keygen(&keys.join("sudo"), "ed25519");
        let nosudo_key = keygen(&keys.join("nosudo"), "ed25519");
        let rsa_key = keygen(&keys.join("rsa"), "rsa");
        let stranger_key = keygen(&keys.join("stranger"), "ed25519");
        let ak = dir.join("authorized_keys");
        std::fs::create_dir(&ak).unwrap();
        set_mode(&ak, 0o755);
        std::fs::write(
            ak.join(SUDO_USER),
            format!("{}\n{}\n", sudo_key.public_line, rsa_key.public_line),
        )
        .unwrap();
        std::fs::write(
            ak.join(NOSUDO_USER),
            format!("{}\n", nosudo_key.public_line),
        )
        .unwrap();
        set_mode(&ak.join(SUDO_USER), 0o644);
        set_mode(&ak.join(NOSUDO_USER), 0o644);
        let sshd = Sshd::start(&dir, free_port()).await;
        Fixture {
            _tmp: tmp,
            dir,
            sshd,
            sudo_key,
            nosudo_key,
            rsa_key,
            stranger_key,
            host_fingerprint,
        }
    }

    fn target(&self) -> SshTarget {
        SshTarget::new("127.0.0.1", self.sshd.port, SUDO_USER).with_key(&self.sudo_key.private_pem)
    }

    fn nosudo_target(&self) -> SshTarget {
        SshTarget::new("127.0.0.1", self.sshd.port, NOSUDO_USER)
            .with_key(&self.nosudo_key.private_pem)
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn opts() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        exec_timeout: Duration::from_secs(30),
        ..ConnectOptions::default()
    }
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, SshError>) -> SshError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exit_codes_stderr_stdin_and_host_facts() {
    bounded(async {
        let fx = Fixture::new().await;
        let conn = SshConnection::connect(&fx.target(), &opts()).await.unwrap();

        // Host key recorded (TOFU) and equal to what ssh-keygen says.
        assert_eq!(conn.host_key().fingerprint, fx.host_fingerprint);
        assert_eq!(conn.host_key().algorithm, "ssh-ed25519");
        assert!(conn.host_key().openssh.starts_with("ssh-ed25519 "));

        let out = conn.exec("echo out; echo err >&2; exit 3").await.unwrap();
        assert_eq!(out.exit_status, 3);
        assert!(!out.success());
        assert_eq!(out.stdout_lossy(), "out\n");
        assert_eq!(out.stderr_lossy(), "err\n");

        let out = conn.exec("whoami").await.unwrap();
        assert!(out.success());
        assert_eq!(out.stdout_lossy().trim(), SUDO_USER);

        let out = conn
            .exec_with_stdin("tr a-z A-Z", b"hello stdin", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.stdout_lossy(), "HELLO STDIN");

        // A command killed by a signal.
        let out = conn.exec("kill -9 $$").await.unwrap();
        assert_eq!(out.exit_signal.as_deref(), Some("KILL"));
        assert_eq!(out.exit_status, 255);

        // Exec timeout.
        let started = Instant::now();
        let err = expect_err(
            conn.exec_with_timeout("sleep 30", Duration::from_millis(500))
                .await,
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.step(), SshStep::Exec);
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("127.0.0.1:{}", fx.sshd.port))
        );

        // Commands still run concurrently on the same connection afterwards.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let c = conn.clone();
            tasks.push(tokio::spawn(async move {
                c.exec(&format!("echo {i}")).await.unwrap().stdout_lossy()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().trim(), i.to_string());
        }

        // Host facts.
        let machine =
            String::from_utf8(Command::new("uname").arg("-m").output().unwrap().stdout).unwrap();
        assert_eq!(
            conn.detect_arch().await.unwrap(),
            HostArch::from_uname(&machine).unwrap()
        );
        let systemd = conn.detect_systemd().await.unwrap();
        assert_eq!(systemd.booted, Path::new("/run/systemd/system").is_dir());
        assert_eq!(
            systemd.version.is_some(),
            Command::new("systemctl")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        );

        // Pinned host keys: the right one connects, a wrong one is refused with both prints.
        let pinned = ConnectOptions {
            host_key_policy: HostKeyPolicy::Pinned(vec![fx.host_fingerprint.clone()]),
            ..opts()
        };
        SshConnection::connect(&fx.target(), &pinned).await.unwrap();
        let wrong = ConnectOptions {
            host_key_policy: HostKeyPolicy::Pinned(vec!["SHA256:nope".into()]),
            ..opts()
        };
        let err = expect_err(SshConnection::connect(&fx.target(), &wrong).await);
        assert_eq!(err.step(), SshStep::HostKey);
        assert!(err.to_string().contains(&fx.host_fingerprint), "{err}");

        conn.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudo_works_for_sudoer_and_fails_clearly_otherwise() {
    bounded(async {
        let fx = Fixture::new().await;
        let conn = SshConnection::connect(&fx.target(), &opts()).await.unwrap();
        conn.check_sudo().await.unwrap();
        let out = conn.exec_sudo("id -u; echo \"it's $HOME\"").await.unwrap();
        assert!(out.success(), "{out:?}");
        let text = out.stdout_lossy();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("0"));
        assert!(lines.next().unwrap().starts_with("it's "));
        // The command's own failure is output, not a sudo error.
        let out = conn.exec_sudo("exit 4").await.unwrap();
        assert_eq!(out.exit_status, 4);

        let conn = SshConnection::connect(&fx.nosudo_target(), &opts())
            .await
            .unwrap();
        let out = conn.exec("whoami").await.unwrap();
        assert_eq!(out.stdout_lossy().trim(), NOSUDO_USER);
        let err = expect_err(conn.exec_sudo("id -u").await);
        assert_eq!(err.step(), SshStep::Sudo);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("sudo on {NOSUDO_USER}@127.0.0.1:")),
            "{msg}"
        );
        assert!(msg.contains("NOPASSWD"), "{msg}");
        let err = expect_err(conn.check_sudo().await);
        assert!(matches!(err, SshError::Sudo { .. }), "{err}");
        let sdk: dstack_sdk::Error = err.into();
        assert_eq!(sdk.kind(), ErrorKind::Validation);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_tries_each_key_and_names_the_host_on_failure() {
    bounded(async {
        let fx = Fixture::new().await;
        let port = fx.sshd.port;

        // Only a key the server does not know.
        let stranger =
            SshTarget::new("127.0.0.1", port, SUDO_USER).with_key(&fx.stranger_key.private_pem);
        let err = expect_err(SshConnection::connect(&stranger, &opts()).await);
        assert_eq!(err.step(), SshStep::Auth);
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "auth failed for {SUDO_USER}@127.0.0.1:{port} with 1 key(s)"
            )),
            "{msg}"
        );
        assert!(msg.contains(".ssh/authorized_keys"), "{msg}");
        assert!(!msg.contains("PRIVATE KEY"));
        let sdk: dstack_sdk::Error = err.into();
        assert_eq!(sdk.kind(), ErrorKind::InvalidCredentials);

        // A wrong key first, then the right one: the second is used.
        let both = SshTarget::new("127.0.0.1", port, SUDO_USER)
            .with_key(&fx.stranger_key.private_pem)
            .with_key(&fx.sudo_key.private_pem);
        let conn = SshConnection::connect(&both, &opts()).await.unwrap();
        assert!(conn.exec("true").await.unwrap().success());

        // RSA keys authenticate too (rsa-sha2 signatures).
        let rsa = SshTarget::new("127.0.0.1", port, SUDO_USER).with_key(&fx.rsa_key.private_pem);
        let conn = SshConnection::connect(&rsa, &opts()).await.unwrap();
        assert!(conn.exec("true").await.unwrap().success());

        // The right key for another user is the wrong key here.
        let mixed =
            SshTarget::new("127.0.0.1", port, NOSUDO_USER).with_key(&fx.sudo_key.private_pem);
        let err = expect_err(SshConnection::connect(&mixed, &opts()).await);
        assert!(matches!(err, SshError::Auth { .. }), "{err}");

        // Garbage instead of a key fails before any network traffic.
        let bad = SshTarget::new("127.0.0.1", port, SUDO_USER).with_key("not a key");
        let err = expect_err(SshConnection::connect(&bad, &opts()).await);
        assert_eq!(err.step(), SshStep::Keys);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_ports_fail_fast_with_host_port() {
    bounded(async {
        ensure_env();
        let tmp = tempfile::tempdir().unwrap();
        let key = keygen(&tmp.path().join("k"), "ed25519");

        // Nothing listens: connection refused.
        let port = free_port();
        let target = SshTarget::new("127.0.0.1", port, "nobody").with_key(&key.private_pem);
        let started = Instant::now();
        let err = expect_err(SshConnection::connect(&target, &opts()).await);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(err.step(), SshStep::Connect);
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(msg.contains("reachable"), "{msg}");
        assert_eq!(dstack_sdk::Error::from(err).kind(), ErrorKind::Transport);

        // Something accepts TCP but never speaks SSH: the handshake times out.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let target = SshTarget::new("127.0.0.1", port, "nobody").with_key(&key.private_pem);
        let quick = ConnectOptions {
            connect_timeout: Duration::from_secs(1),
            ..opts()
        };
        let started = Instant::now();
        let err = expect_err(SshConnection::connect(&target, &quick).await);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "{took:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("timed out after 1s"), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        drop(silent);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_uploads_are_atomic_with_mode_and_parents() {
    bounded(async {
        let fx = Fixture::new().await;
        let conn = SshConnection::connect(&fx.target(), &opts()).await.unwrap();
        let base = format!("/home/{SUDO_USER}/upload-{}", uuid_like());

        // 5 MB of pseudo-random bytes into a directory that does not exist yet.
        let mut data = vec![0u8; 5 * 1024 * 1024 + 123];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let local = fx.dir.join("blob.bin");
        std::fs::write(&local, &data).unwrap();
        let remote = format!("{base}/a/b/blob.bin");
        let started = Instant::now();
        let n = conn.upload_file(&local, &remote, 0o755).await.unwrap();
        eprintln!("uploaded {n} bytes in {:?}", started.elapsed());
        assert_eq!(n, data.len() as u64);
        let out = conn
            .exec(&format!("stat -c '%a %s' {remote}; sha256sum < {remote}"))
            .await
            .unwrap();
        let text = out.stdout_lossy();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), format!("755 {}", data.len()));
        let local_sum = Command::new("sha256sum").arg(&local).output().unwrap();
        let local_sum = String::from_utf8(local_sum.stdout).unwrap();
        assert_eq!(
            lines.next().unwrap().split_whitespace().next(),
            local_sum.split_whitespace().next()
        );
        // No temp files left behind.
        let out = conn.exec(&format!("ls -A {base}/a/b")).await.unwrap();
        assert_eq!(out.stdout_lossy().trim(), "blob.bin");

        // A script: upload, run, replace atomically while it exists, run again.
        let script = format!("{base}/bin/hello.sh");
        conn.upload_bytes(&script, b"#!/bin/sh\necho \"hello $1\"\n", 0o755)
            .await
            .unwrap();
        let out = conn.exec(&format!("{script} world")).await.unwrap();
        assert_eq!(out.stdout_lossy(), "hello world\n");
        conn.upload_bytes(&script, b"#!/bin/sh\necho \"bye $1\"\n", 0o700)
            .await
            .unwrap();
        let out = conn
            .exec(&format!("{script} now; stat -c %a {script}"))
            .await
            .unwrap();
        assert_eq!(out.stdout_lossy(), "bye now\n700\n");

        // A mode without the execute bit is honoured exactly (no umask surprises).
        let env_file = format!("{base}/shim.env");
        conn.upload_bytes(&env_file, b"A=\"1\"\n", 0o600)
            .await
            .unwrap();
        let out = conn.exec(&format!("stat -c %a {env_file}")).await.unwrap();
        assert_eq!(out.stdout_lossy().trim(), "600");

        // Writing where the user may not: an upload error naming host and path.
        let err = expect_err(conn.upload_bytes("/root/nope/x.txt", b"x", 0o644).await);
        assert_eq!(err.step(), SshStep::Upload);
        let msg = err.to_string();
        assert!(msg.contains("/root/nope/x.txt"), "{msg}");
        assert!(msg.contains(&format!("{SUDO_USER}@127.0.0.1:")), "{msg}");

        conn.exec(&format!("rm -rf {base}")).await.unwrap();
    })
    .await;
}

/// A tiny HTTP server on 127.0.0.1: answers every request with its path, then closes.
async fn start_http_echo() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = format!("{{\"path\":\"{path}\"}}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (port, task)
}

async fn http_get(local_port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", local_port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_carry_many_concurrent_connections() {
    bounded(async {
        let fx = Fixture::new().await;
        let (http_port, server) = start_http_echo().await;
        let conn = SshConnection::connect(&fx.target(), &opts()).await.unwrap();

        let tunnel = conn.forward_local("localhost", http_port).await.unwrap();
        assert_eq!(tunnel.remote(), format!("localhost:{http_port}"));
        assert!(tunnel.http_base_url().starts_with("http://127.0.0.1:"));
        let port = tunnel.local_port();
        let mut tasks = Vec::new();
        for i in 0..20 {
            tasks.push(tokio::spawn(async move {
                http_get(port, &format!("/api/healthcheck/{i}")).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let resp = t.await.unwrap();
            assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
            assert!(
                resp.ends_with(&format!("{{\"path\":\"/api/healthcheck/{i}\"}}")),
                "{resp}"
            );
        }

        // An in-process stream, no listener.
        let mut stream = conn.open_stream("127.0.0.1", http_port).await.unwrap();
        stream
            .write_all(b"GET /direct HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut resp = String::new();
        stream.read_to_string(&mut resp).await.unwrap();
        assert!(resp.ends_with("{\"path\":\"/direct\"}"), "{resp}");

        // A closed remote port: the local connection is closed, and open_stream says why.
        let dead_port = free_port();
        let err = expect_err(conn.open_stream("127.0.0.1", dead_port).await);
        assert_eq!(err.step(), SshStep::Tunnel);
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{dead_port}")),
            "{err}"
        );
        let dead = conn.forward_local("127.0.0.1", dead_port).await.unwrap();
        let mut s = TcpStream::connect(dead.local_addr()).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
            .await
            .expect("forwarded connection to a closed port must be closed")
            .unwrap_or(0);
        assert_eq!(n, 0);

        // Dropping the tunnel stops the listener.
        drop(tunnel);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_jump_through_a_second_sshd() {
    bounded(async {
        let target_fx = Fixture::new().await;
        let jump_fx = Fixture::new().await;
        let jump = SshTarget::new("127.0.0.1", jump_fx.sshd.port, NOSUDO_USER)
            .with_key(&jump_fx.nosudo_key.private_pem);
        let target = target_fx.target().with_proxy_jump(jump.clone());
        assert!(!format!("{target:?}").contains("PRIVATE KEY"));

        let conn = SshConnection::connect(&target, &opts()).await.unwrap();
        let out = conn.exec("whoami").await.unwrap();
        assert_eq!(out.stdout_lossy().trim(), SUDO_USER);
        assert_eq!(conn.host_key().fingerprint, target_fx.host_fingerprint);
        let via = conn.jump().expect("jump connection");
        assert_eq!(via.host_key().fingerprint, jump_fx.host_fingerprint);
        assert_eq!(
            via.target_label(),
            format!("{NOSUDO_USER}@127.0.0.1:{}", jump_fx.sshd.port)
        );
        // The jump sshd carried it in a direct-tcpip channel to the target's port.
        let log = jump_fx.sshd.log_text();
        assert!(
            log.contains(&format!("target 127.0.0.1 port {}", target_fx.sshd.port)),
            "jump sshd log has no direct-tcpip to the target:\n{log}"
        );
        // SFTP and sudo work through the jump too.
        conn.upload_bytes(
            &format!("/tmp/jump-{}.txt", uuid_like()),
            b"via jump",
            0o644,
        )
        .await
        .unwrap();
        assert!(conn.exec_sudo("true").await.unwrap().success());

        // A jump host that refuses auth: the error names the jump host.
        let bad_jump = SshTarget::new("127.0.0.1", jump_fx.sshd.port, NOSUDO_USER)
            .with_key(&jump_fx.stranger_key.private_pem);
        let err = expect_err(
            SshConnection::connect(&target_fx.target().with_proxy_jump(bad_jump), &opts()).await,
        );
        assert_eq!(err.step(), SshStep::Auth);
        assert_eq!(
            err.target(),
            format!("{NOSUDO_USER}@127.0.0.1:{}", jump_fx.sshd.port)
        );

        // A target the jump host cannot reach: a connect error naming the target.
        let nowhere = free_port();
        let err = expect_err(
            SshConnection::connect(
                &SshTarget::new("127.0.0.1", nowhere, SUDO_USER)
                    .with_key(&target_fx.sudo_key.private_pem)
                    .with_proxy_jump(jump),
                &opts(),
            )
            .await,
        );
        assert_eq!(err.step(), SshStep::Connect);
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{nowhere}")),
            "{err}"
        );
        assert!(err.to_string().contains("jump host"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_shares_and_reconnects_after_sshd_restart() {
    bounded(async {
        let mut fx = Fixture::new().await;
        let (http_port, server) = start_http_echo().await;
        let pool = SshPool::new(opts());
        let target = fx.target();

        let a = pool.get(&target).await.unwrap();
        let b = pool.get(&target).await.unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same target, same connection");
        assert_eq!(pool.slot_count(), 1);
        drop((a, b));

        // Concurrent users share one connection.
        let mut tasks = Vec::new();
        for i in 0..10 {
            let pool = pool.clone();
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                pool.exec(&target, &format!("echo {i}"))
                    .await
                    .unwrap()
                    .stdout_lossy()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().trim(), i.to_string());
        }
        assert_eq!(pool.slot_count(), 1);
        let before = pool.get(&target).await.unwrap();

        let tunnel = pool
            .forward_local(&target, "localhost", http_port)
            .await
            .unwrap();
        assert!(
            http_get(tunnel.local_port(), "/before")
                .await
                .contains("/before")
        );

        // The server goes away with every session, then comes back on the same port.
        fx.sshd.restart().await;

        let out = pool.exec(&target, "echo back").await.unwrap();
        assert_eq!(out.stdout_lossy(), "back\n");
        let after = pool.get(&target).await.unwrap();
        assert!(
            !Arc::ptr_eq(&before, &after),
            "a new connection after the restart"
        );
        assert!(before.is_closed());
        // The pool's tunnel keeps working: new local connections use the new SSH connection.
        assert!(
            http_get(tunnel.local_port(), "/after")
                .await
                .contains("/after")
        );

        // Restart again and go straight to sudo: the pool recovers there too.
        fx.sshd.restart().await;
        assert!(pool.exec_sudo(&target, "true").await.unwrap().success());

        // Another target (user) gets its own slot.
        pool.exec(&fx.nosudo_target(), "true").await.unwrap();
        assert_eq!(pool.slot_count(), 2);
        pool.close_all().await;
        assert_eq!(pool.slot_count(), 0);
        server.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_pings_idle_connections_and_replaces_silent_ones() {
    bounded(async {
        let fx = Fixture::new().await;
        let quick = ConnectOptions {
            connect_timeout: Duration::from_secs(2),
            // No background keepalives: only the pool's health check may notice.
            keepalive_interval: None,
            ..opts()
        };
        // Zero: ping before every reuse.
        let pool = SshPool::with_health_check(quick, Duration::ZERO);
        let target = fx.target();
        let first = pool.get(&target).await.unwrap();
        let again = pool.get(&target).await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "a healthy connection is reused"
        );

        // The link goes silent: no FIN, no replies.
        fx.sshd.freeze_sessions();
        let started = Instant::now();
        let out = pool.exec(&target, "echo fresh").await.unwrap();
        assert_eq!(out.stdout_lossy(), "fresh\n");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(6), "{took:?}");
        let now = pool.get(&target).await.unwrap();
        assert!(
            !Arc::ptr_eq(&first, &now),
            "the silent connection was replaced"
        );
    })
    .await;
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
