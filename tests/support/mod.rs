//! Helpers shared by the integration tests: start our server or the real dstack server on
//! loopback in a throwaway directory, and stop it when the guard drops.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server process.
pub struct ServerProc {
    pub url: String,
    pub admin_token: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl ServerProc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Starts our `dstack-server` binary on a free port in `dir` (created if `None`).
pub fn start_ours(dir: Option<tempfile::TempDir>, admin_token: &str) -> ServerProc {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dstack-server"))
        .env("DSTACK_SERVER_DIR", dir.path())
        .env("DSTACK_SERVER_PORT", port.to_string())
        .env("DSTACK_SERVER_HOST", "127.0.0.1")
        .env("DSTACK_SERVER_ADMIN_TOKEN", admin_token)
        .env("DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT", "1")
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start dstack-server");
    let stdout = child.stdout.take().unwrap();
    let mut token = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("The admin user token is ") {
            token = t.trim_matches('"').to_string();
        }
        if line.contains("is running at") {
            break;
        }
    }
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url, Duration::from_secs(30));
    ServerProc {
        url,
        admin_token: token,
        dir,
        child,
    }
}

/// The oracle venv (real dstack 0.22.5), created on first use by scripts/oracle-venv.sh.
pub fn oracle_venv() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/oracle-venv.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/oracle-venv.sh");
    assert!(out.status.success(), "oracle venv setup failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Starts the real dstack server (`dstack server`) on a free port.
pub fn start_python(admin_token: &str) -> ServerProc {
    let venv = oracle_venv();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(venv.join("bin/dstack"))
        .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("DSTACK_SERVER_DIR", dir.path().join("server"))
        .env("DSTACK_SERVER_ADMIN_TOKEN", admin_token)
        .env("DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT", "1")
        .env("DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED", "1")
        .env("HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dstack server");
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url, Duration::from_secs(120));
    ServerProc {
        url,
        admin_token: admin_token.to_string(),
        dir,
        child,
    }
}

fn wait_healthy(url: &str, timeout: Duration) {
    let start = Instant::now();
    let addr = url.trim_start_matches("http://").to_string();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthcheck HTTP/1.0\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.contains("running") {
                return;
            }
        }
        assert!(
            start.elapsed() < timeout,
            "server at {url} did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
