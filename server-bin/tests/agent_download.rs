//! `GET /agent/download/dstack-server-linux-{arch}`: the server serves its own binary (the
//! agent) for its architecture, other architectures from `DSTACK_AGENT_BINARIES_DIR`, and 404
//! for the rest; no token needed (cloud-init downloads it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(binaries_dir: Option<&std::path::Path>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dstack-server"));
    cmd.env("DSTACK_SERVER_DIR", dir.path())
        .env("DSTACK_SERVER_PORT", port.to_string())
        .env("DSTACK_SERVER_HOST", "127.0.0.1")
        .env("DSTACK_SERVER_ADMIN_TOKEN", "agent-download-token")
        .env("DSTACK_DO_NOT_UPDATE_DEFAULT_PROJECT", "1")
        .env("DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED", "1")
        .env("HOME", dir.path())
        .env_remove("DSTACK_AGENT_BINARY")
        .env_remove("DSTACK_AGENT_BINARIES_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(d) = binaries_dir {
        cmd.env("DSTACK_AGENT_BINARIES_DIR", d);
    }
    let mut child = cmd.spawn().expect("start dstack-server");
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("is running at") {
            break;
        }
    }
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Server {
        url,
        child,
        _dir: dir,
    }
}

fn own_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no agent for {other}"),
    }
}

fn other_arch() -> &'static str {
    if own_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

async fn get(url: &str) -> (u16, Vec<u8>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn serves_its_own_binary_and_404_for_other_arches() {
    let srv = start(None);
    let own = std::fs::read(env!("CARGO_BIN_EXE_dstack-server")).unwrap();
    let (st, body) = get(&format!(
        "{}/agent/download/dstack-server-linux-{}",
        srv.url,
        own_arch()
    ))
    .await;
    assert_eq!(st, 200);
    assert!(
        body == own,
        "the served agent differs from the server binary"
    );
    // Twice: the second download comes from the in-memory copy.
    let (st, body2) = get(&format!(
        "{}/agent/download/dstack-server-linux-{}",
        srv.url,
        own_arch()
    ))
    .await;
    assert_eq!(st, 200);
    assert!(body2 == own);
    for file in [
        format!("dstack-server-linux-{}", other_arch()),
        "dstack-server-linux-riscv64".into(),
        "dstack-server-linux-..".into(),
        "something-else".into(),
    ] {
        let (st, _) = get(&format!("{}/agent/download/{file}", srv.url)).await;
        assert_eq!(st, 404, "{file}");
    }
}

#[tokio::test]
async fn serves_other_arches_from_the_binaries_dir() {
    let bins = tempfile::tempdir().unwrap();
    let fake: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(
        bins.path()
            .join(format!("dstack-server-linux-{}", other_arch())),
        &fake,
    )
    .unwrap();
    let srv = start(Some(bins.path()));
    let (st, body) = get(&format!(
        "{}/agent/download/dstack-server-linux-{}",
        srv.url,
        other_arch()
    ))
    .await;
    assert_eq!(st, 200);
    assert!(body == fake);
    // Its own arch still comes from the running binary.
    let (st, body) = get(&format!(
        "{}/agent/download/dstack-server-linux-{}",
        srv.url,
        own_arch()
    ))
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        body.len() as u64,
        std::fs::metadata(env!("CARGO_BIN_EXE_dstack-server"))
            .unwrap()
            .len()
    );
}
