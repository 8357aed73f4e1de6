//! SSH fleets end to end on loopback: the embedded engine deploys our own agent
//! (`dstack-server agent`) onto a real OpenSSH server as the user `dstack-test`, and the
//! fleet and instance routes and pipelines drive it.
//!
//! Each test starts its own `sshd` on a free 127.0.0.1 port (keys and config in a temp dir)
//! and its own engine whose agent uses free ports and a home and binary path in that temp
//! dir, so tests run in parallel. Needs root, `/usr/sbin/sshd`, `sudo` and the users
//! `dstack-test` / `dstack-nosudo` (created by `scripts/sshd-test-env.sh` when missing).
//! Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dstack_sdk::client::Client;
use dstack_sdk::engine::{Engine, EngineOptions};
use dstack_sdk::models::common::BackendType;
use dstack_sdk::models::fleets::FleetConfiguration;
use dstack_sdk::models::instances::{Instance, InstanceStatus, ListInstancesRequest};
use tokio::net::TcpStream;

#[path = "support/sshd.rs"]
mod sshd;

use sshd::{KeyPair, LoopbackSshd, NOSUDO_USER, SUDO_USER, free_port, keygen};

struct Fixture {
    sshd: LoopbackSshd,
    port: u16,
    sudo_key: KeyPair,
    nosudo_key: KeyPair,
    stranger_key: KeyPair,
    agent_home: PathBuf,
    agent_bin: PathBuf,
    shim_port: u16,
}

impl Fixture {
    async fn new() -> Fixture {
        let keys = tempfile::tempdir().unwrap();
        let sudo_key = keygen(&keys.path().join("sudo"));
        let nosudo_key = keygen(&keys.path().join("nosudo"));
        let stranger_key = keygen(&keys.path().join("stranger"));
        let sshd = LoopbackSshd::start(&[
            (SUDO_USER, &sudo_key.public_line),
            (NOSUDO_USER, &nosudo_key.public_line),
        ])
        .await;
        let dir = sshd.dir();
        Fixture {
            agent_home: dir.join("agent-home"),
            agent_bin: dir.join("bin").join("dstack-agent"),
            shim_port: free_port(),
            port: sshd.port,
            sshd,
            sudo_key,
            nosudo_key,
            stranger_key,
        }
    }

    fn server_dir(&self) -> PathBuf {
        self.sshd.tmp.path().join("server")
    }

    async fn engine(&self) -> (Engine, Client) {
        let mut o = EngineOptions::new(self.server_dir());
        o.config_disabled = true;
        o.pipelines.lease = Duration::from_secs(3);
        o.pipelines.workers = 4;
        o.agent.binary = Some(PathBuf::from(env!("CARGO_BIN_EXE_dstack-server")));
        o.agent.remote_path = self.agent_bin.display().to_string();
        o.agent.home = self.agent_home.display().to_string();
        o.agent.shim_port = self.shim_port;
        o.agent.runner_port = free_port();
        o.agent.health_timeout = Duration::from_secs(30);
        let (engine, info) = Engine::open(o).await.unwrap();
        let client = Client::with_engine(engine.clone(), &info.admin_token);
        (engine, client)
    }

    fn conf(&self, name: &str, user: &str, key: &KeyPair, port: u16) -> FleetConfiguration {
        serde_json::from_value(serde_json::json!({
            "type": "fleet",
            "name": name,
            "ssh_config": {
                "user": user,
                "port": port,
                "ssh_key": {"public": key.public_line, "private": key.private_pem},
                "hosts": ["127.0.0.1"],
            },
        }))
        .unwrap()
    }

    /// Kills this fixture's agent.
    fn kill_agent(&self) {
        sshd::kill_agent(&self.agent_home, &self.agent_bin);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// Polls the fleet's only instance until `done` holds, up to `limit`.
async fn wait_instance(
    client: &Client,
    fleet: &str,
    limit: Duration,
    done: impl Fn(&Instance) -> bool,
) -> Instance {
    let f = async {
        loop {
            let fleet = client.project("main").fleets().get(fleet).await.unwrap();
            if let Some(i) = fleet.instances.first()
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

async fn port_closed(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn nproc() -> i64 {
    std::thread::available_parallelism().unwrap().get() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_fleet_deploys_lists_and_deletes() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let fx = Fixture::new().await;
        let (engine, client) = fx.engine().await;
        let fleets = client.project("main").fleets();
        let conf = fx.conf("ssh-a", SUDO_USER, &fx.sudo_key, fx.port);

        let plan = fleets
            .get_plan(&dstack_sdk::client::fleet_spec(conf.clone()))
            .await
            .unwrap();
        assert_eq!(plan.action.map(|a| a.as_str()), Some("create"));
        let eff = plan.effective_spec.unwrap();
        assert!(
            eff.configuration.ssh_config.unwrap().ssh_key.is_none(),
            "private keys must not come back"
        );

        let fleet = fleets
            .apply_configuration(conf.clone(), false)
            .await
            .unwrap();
        assert_eq!(fleet.name, "ssh-a");
        assert_eq!(fleet.instances.len(), 1);
        assert_eq!(fleet.instances[0].status, InstanceStatus::Pending);
        assert_eq!(fleet.instances[0].backend, Some(BackendType::Remote));

        let inst = wait_instance(&client, "ssh-a", Duration::from_secs(150), |i| {
            i.status != InstanceStatus::Pending
        })
        .await;
        assert_eq!(
            inst.status,
            InstanceStatus::Idle,
            "deploy failed: {:?}",
            inst.termination_reason_message
        );
        let res = &inst.instance_type.as_ref().unwrap().resources;
        assert_eq!(res.cpus, nproc());
        assert!(res.memory_mib > 0 && res.disk.size_mib > 0, "{res:?}");
        assert_eq!(inst.hostname.as_deref(), Some("127.0.0.1"));
        assert_eq!(inst.region.as_deref(), Some("remote"));
        assert_eq!(inst.total_blocks, Some(1));
        // The agent answers on its port and the project key was added for dstack-test.
        assert!(
            TcpStream::connect(("127.0.0.1", fx.shim_port))
                .await
                .is_ok()
        );

        // get / list / instances list.
        let listed = fleets.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        let all = client.fleets_all(&serde_json::json!({})).await.unwrap();
        assert!(all.iter().any(|f| f.id == fleet.id));
        let by_id = fleets.get_by_id(fleet.id).await.unwrap();
        assert_eq!(by_id.instances[0].status, InstanceStatus::Idle);
        let instances = client
            .instances()
            .list(&ListInstancesRequest {
                fleet_ids: Some(vec![fleet.id]),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].id, inst.id);
        let got = client.instances().get("main", inst.id).await.unwrap();
        assert_eq!(got.fleet_name.as_deref(), Some("ssh-a"));

        // Re-planning the same configuration is an in-place update; a stale plan is refused.
        let plan = fleets
            .get_plan(&dstack_sdk::client::fleet_spec(conf.clone()))
            .await
            .unwrap();
        assert_eq!(plan.action.map(|a| a.as_str()), Some("update"));
        let err = fleets
            .apply(&dstack_sdk::client::fleet_spec(conf.clone()), None, false)
            .await
            .unwrap_err();
        assert!(err.message().contains("Resource has been changed"), "{err}");
        // A second fleet cannot take the same host.
        let err = fleets
            .apply_configuration(fx.conf("ssh-b", SUDO_USER, &fx.sudo_key, fx.port), false)
            .await
            .unwrap_err();
        assert!(err.message().contains("already assigned"), "{err}");

        // Delete: the instance terminates, the agent stops, the fleet disappears.
        fleets.delete(&["ssh-a"]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), async {
            while fleets.get("ssh-a").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await
        .expect("fleet was not deleted in time");
        let gone = fleets.get_by_id(fleet.id).await.unwrap();
        assert_eq!(gone.status.as_str(), "terminated");
        let inst = client.instances().get("main", inst.id).await.unwrap();
        assert_eq!(inst.status, InstanceStatus::Terminated);
        assert_eq!(
            inst.termination_reason.as_deref(),
            Some("terminated_by_user")
        );
        assert!(
            port_closed(fx.shim_port, Duration::from_secs(15)).await,
            "the agent still listens after the fleet was deleted"
        );
        assert!(!fx.agent_bin.exists(), "the agent binary was not removed");
        engine.stop_background();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_errors_name_the_step() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let fx = Fixture::new().await;
        let (engine, client) = fx.engine().await;
        let fleets = client.project("main").fleets();
        let cases = [
            (
                "wrong-key",
                fx.conf("wrong-key", SUDO_USER, &fx.stranger_key, fx.port),
                "auth",
            ),
            (
                "no-sudo",
                fx.conf("no-sudo", NOSUDO_USER, &fx.nosudo_key, fx.port),
                "sudo",
            ),
            (
                "unreachable",
                fx.conf("unreachable", SUDO_USER, &fx.sudo_key, free_port()),
                "connect",
            ),
        ];
        for (name, conf, step) in cases {
            fleets.apply_configuration(conf, false).await.unwrap();
            let inst = wait_instance(&client, name, Duration::from_secs(60), |i| {
                i.status != InstanceStatus::Pending
            })
            .await;
            assert_eq!(inst.status, InstanceStatus::Terminated, "{name}");
            assert_eq!(inst.termination_reason.as_deref(), Some("error"), "{name}");
            let msg = inst.termination_reason_message.unwrap_or_default();
            assert!(
                msg.contains(&format!("step `{step}`")) && msg.contains("127.0.0.1"),
                "{name}: {msg}"
            );
            fleets.delete(&[name]).await.unwrap();
        }
        // A cloud fleet is stored, but with no cloud backends its instance ends with no_offers.
        let cloud: FleetConfiguration = serde_json::from_value(
            serde_json::json!({"type": "fleet", "name": "cloud", "nodes": 1}),
        )
        .unwrap();
        fleets.apply_configuration(cloud, false).await.unwrap();
        let inst = wait_instance(&client, "cloud", Duration::from_secs(30), |i| {
            i.status == InstanceStatus::Terminated
        })
        .await;
        assert_eq!(inst.termination_reason.as_deref(), Some("no_offers"));
        // Validation: a host without a private key, and a bad name.
        let mut bad: serde_json::Value = serde_json::json!({
            "type": "fleet", "name": "no-key",
            "ssh_config": {"user": "u", "ssh_key": {"public": "x"}, "hosts": ["10.0.0.1"]}
        });
        let conf: FleetConfiguration = serde_json::from_value(bad.clone()).unwrap();
        let err = fleets.apply_configuration(conf, false).await.unwrap_err();
        assert!(err.message().contains("Private key not provided"), "{err}");
        bad["name"] = serde_json::json!("Bad_Name");
        bad["ssh_config"]["ssh_key"]["private"] = serde_json::json!(fx.sudo_key.private_pem);
        let conf: FleetConfiguration = serde_json::from_value(bad).unwrap();
        let err = fleets.apply_configuration(conf, false).await.unwrap_err();
        assert!(err.message().contains("regex"), "{err}");
        engine.stop_background();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_resumes_after_engine_restart() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let fx = Fixture::new().await;
        let conf = fx.conf("ssh-r", SUDO_USER, &fx.sudo_key, fx.port);
        {
            let (engine, client) = fx.engine().await;
            client
                .project("main")
                .fleets()
                .apply_configuration(conf, false)
                .await
                .unwrap();
            // Wait until the deploy is uploading the agent, then "kill" the engine.
            let started = std::time::SystemTime::now() - Duration::from_secs(1);
            let bin_dir = fx.agent_bin.parent().unwrap().to_path_buf();
            tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    let uploading = std::fs::read_dir("/tmp")
                        .map(|d| {
                            d.flatten().any(|e| {
                                e.file_name().to_string_lossy().starts_with("dstack-agent-")
                                    && e.metadata().is_ok_and(|m| {
                                        m.uid() != 0 && m.modified().is_ok_and(|t| t >= started)
                                    })
                            })
                        })
                        .unwrap_or(false);
                    if uploading || bin_dir.exists() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the deploy did not start");
            engine.stop_background();
            let fleet = client.project("main").fleets().get("ssh-r").await.unwrap();
            assert_eq!(fleet.instances[0].status, InstanceStatus::Pending);
            // The dead engine's lease is still on the row (checked when the sqlite3 CLI exists).
            let db = fx.server_dir().join("data").join("sqlite.db");
            if let Ok(out) = Command::new("sqlite3")
                .arg(&db)
                .arg("SELECT lock_owner FROM instances WHERE lock_token IS NOT NULL")
                .output()
            {
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "InstancePipeline",
                    "the instance should be leased when the engine dies"
                );
            }
        }
        // A new engine on the same directory re-claims the expired lease and finishes.
        let (engine, client) = fx.engine().await;
        let inst = wait_instance(&client, "ssh-r", Duration::from_secs(150), |i| {
            i.status != InstanceStatus::Pending
        })
        .await;
        assert_eq!(
            inst.status,
            InstanceStatus::Idle,
            "{:?}",
            inst.termination_reason_message
        );
        assert_eq!(inst.instance_type.unwrap().resources.cpus, nproc());
        client
            .project("main")
            .fleets()
            .delete(&["ssh-r"])
            .await
            .unwrap();
        assert!(port_closed(fx.shim_port, Duration::from_secs(60)).await);
        engine.stop_background();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_fleet_through_proxy_jump() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let fx = Fixture::new().await;
        let (engine, client) = fx.engine().await;
        let fleets = client.project("main").fleets();
        let key = serde_json::json!({"public": fx.sudo_key.public_line, "private": fx.sudo_key.private_pem});
        // The jump host is the same sshd; the target is reached through its direct-tcpip channel.
        let conf: FleetConfiguration = serde_json::from_value(serde_json::json!({
            "type": "fleet",
            "name": "ssh-pj",
            "ssh_config": {
                "user": SUDO_USER,
                "port": fx.port,
                "ssh_key": key,
                "proxy_jump": {
                    "hostname": "127.0.0.1", "port": fx.port, "user": SUDO_USER,
                    "identity_file": "unused", "ssh_key": key,
                },
                "hosts": ["localhost"],
            },
        }))
        .unwrap();
        fleets.apply_configuration(conf, false).await.unwrap();
        let inst = wait_instance(&client, "ssh-pj", Duration::from_secs(150), |i| {
            i.status != InstanceStatus::Pending
        })
        .await;
        assert_eq!(
            inst.status,
            InstanceStatus::Idle,
            "{:?}",
            inst.termination_reason_message
        );
        assert_eq!(inst.hostname.as_deref(), Some("localhost"));
        let fleet = fleets.get("ssh-pj").await.unwrap();
        let ssh = fleet.spec.configuration.ssh_config.unwrap();
        assert!(ssh.ssh_key.is_none() && ssh.proxy_jump.unwrap().ssh_key.is_none());
        fleets.delete(&["ssh-pj"]).await.unwrap();
        assert!(port_closed(fx.shim_port, Duration::from_secs(60)).await);
        engine.stop_background();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_during_deploy_cleans_up() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let fx = Fixture::new().await;
        let (engine, client) = fx.engine().await;
        let fleets = client.project("main").fleets();
        fleets
            .apply_configuration(fx.conf("ssh-d", SUDO_USER, &fx.sudo_key, fx.port), false)
            .await
            .unwrap();
        // Delete as soon as the host has the agent's directory (the deploy is under way).
        let bin_dir = fx.agent_bin.parent().unwrap().to_path_buf();
        tokio::time::timeout(Duration::from_secs(60), async {
            while !bin_dir.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the deploy did not start");
        fleets.delete(&["ssh-d"]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(90), async {
            while fleets.get("ssh-d").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await
        .expect("fleet was not deleted in time");
        assert!(port_closed(fx.shim_port, Duration::from_secs(30)).await);
        assert!(!fx.agent_bin.exists(), "the agent binary was not removed");
        engine.stop_background();
    })
    .await
    .expect("test timed out");
}
