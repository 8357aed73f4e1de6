//! The SSH-fleet fixture of the engine-level run tests (`runs_ssh.rs`, `runs_blocks.rs`): a
//! key, a real `sshd` on loopback that accepts it, the agent's paths, and an embedded engine
//! that deploys `dstack-server` as the agent; and the waits and task spec those tests share. Needs the including test to declare
//! `mod sshd` (`tests/support/sshd.rs`) and to be a `server-bin` test (for
//! `CARGO_BIN_EXE_dstack-server`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use dstack_sdk::client::Client;
use dstack_sdk::engine::{Engine, EngineOptions};
use dstack_sdk::models::instances::Instance;
use dstack_sdk::models::runs::{Run, RunSpec};

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

/// Waits until the `idx`-th instance of fleet `ssh` satisfies `done`.
pub async fn wait_instance(
    client: &Client,
    idx: usize,
    limit: Duration,
    done: impl Fn(&Instance) -> bool,
) -> Instance {
    let f = async {
        loop {
            let fleet = client.project("main").fleets().get("ssh").await.unwrap();
            if let Some(i) = fleet.instances.get(idx)
                && done(i)
            {
                return i.clone();
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(limit, f)
        .await
        .expect("instance did not reach the expected state in time")
}

/// Waits until run `name` satisfies `done`.
pub async fn wait_run(
    client: &Client,
    name: &str,
    limit: Duration,
    done: impl Fn(&Run) -> bool,
) -> Run {
    let f = async {
        loop {
            let run = client.project("main").runs().get(name).await.unwrap();
            if done(&run) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => {
            let run = client.project("main").runs().get(name).await.unwrap();
            panic!("run {name} did not reach the expected state in time: {run:#?}");
        }
    }
}

/// A task run spec with `commands` and small resources.
pub fn task(name: &str, commands: &[&str]) -> RunSpec {
    serde_json::from_value(serde_json::json!({
        "run_name": name,
        "repo_id": "none",
        "repo_data": {"repo_type": "virtual"},
        "configuration": {
            "type": "task",
            "commands": commands,
            "resources": {"cpu": "1..", "memory": "0.1GB..", "disk": "1GB.."},
        },
    }))
    .unwrap()
}

/// A multi-node task run spec: [`task`] with `nodes` and the configuration's `extra` keys
/// (e.g. `startup_order`, `stop_criteria`).
pub fn multinode_task(
    name: &str,
    nodes: u32,
    commands: &[&str],
    extra: serde_json::Value,
) -> RunSpec {
    let mut conf = serde_json::json!({
        "type": "task",
        "nodes": nodes,
        "commands": commands,
        "resources": {"cpu": "1..", "memory": "0.1GB..", "disk": "1GB.."},
    });
    for (k, v) in extra.as_object().expect("extra is an object") {
        conf[k] = v.clone();
    }
    serde_json::from_value(serde_json::json!({
        "run_name": name,
        "repo_id": "none",
        "repo_data": {"repo_type": "virtual"},
        "configuration": conf,
    }))
    .unwrap()
}
