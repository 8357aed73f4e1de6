//! The SSH-fleet fixture of the engine-level run tests (`runs_ssh.rs`, `runs_blocks.rs`): a
//! key, a real `sshd` on loopback that accepts it, the agent's paths, and an embedded engine
//! that deploys `dstack-server` as the agent. Needs the including test to declare
//! `mod sshd` (`tests/support/sshd.rs`) and to be a `server-bin` test (for
//! `CARGO_BIN_EXE_dstack-server`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use dstack_sdk::client::Client;
use dstack_sdk::engine::{Engine, EngineOptions};

use crate::sshd::{self, LoopbackSshd, SUDO_USER, free_port, keygen};

/// A temp dir with a key, a running sshd and the agent's paths for this test.
pub struct Fixture {
    pub sshd: LoopbackSshd,
    pub port: u16,
    pub private_pem: String,
    pub public_line: String,
    pub agent_home: PathBuf,
    pub agent_bin: PathBuf,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let keys = tempfile::tempdir().unwrap();
        let key = keygen(&keys.path().join("client"));
        let sshd = LoopbackSshd::start(&[(SUDO_USER, &key.public_line)]).await;
        let dir = sshd.dir();
        Fixture {
            agent_home: dir.join("agent-home"),
            agent_bin: dir.join("bin").join("dstack-agent"),
            port: sshd.port,
            sshd,
            private_pem: key.private_pem,
            public_line: key.public_line,
        }
    }

    pub async fn engine(&self) -> (Engine, Client) {
        let mut o = EngineOptions::new(self.sshd.tmp.path().join("server"));
        o.config_disabled = true;
        o.pipelines.lease = Duration::from_secs(5);
        o.pipelines.workers = 4;
        o.agent.binary = Some(PathBuf::from(env!("CARGO_BIN_EXE_dstack-server")));
        o.agent.remote_path = self.agent_bin.display().to_string();
        o.agent.home = self.agent_home.display().to_string();
        o.agent.shim_port = free_port();
        o.agent.runner_port = free_port();
        o.agent.health_timeout = Duration::from_secs(30);
        let (engine, info) = Engine::open(o).await.unwrap();
        let client = Client::with_engine(engine.clone(), &info.admin_token);
        (engine, client)
    }

    /// Kills this fixture's agent.
    pub fn kill_agent(&self) {
        sshd::kill_agent(&self.agent_home, &self.agent_bin);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill_agent();
    }
}
