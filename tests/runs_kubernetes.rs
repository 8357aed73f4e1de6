//! Runs on the Kubernetes backend end to end on loopback: the engine creates the job pod on
//! the fake API server (`support/fake_k8s.rs`), whose kubelet "starts" it by running our own
//! agent in runner mode (no shim) on the pod's own loopback address (`127.1.x.y`, which its
//! `ClusterIP` service gets too), with the runner's SSH server on port 10022 accepting the keys
//! of the pod's command, as `dstack-runner --ssh-port 10022 --ssh-authorized-key …` does. The
//! jump pod's NodePort is a real OpenSSH server on loopback that accepts the keys from the
//! jump pod's command (the project key; the run key the engine's `JumpKeyInstaller` appends),
//! with `HOME` in a temp dir. The engine reaches the runner API (10999) through that proxy
//! jump and the pod's SSH server.
//!
//! Needs root and `/usr/sbin/sshd` (`scripts/sshd-test-env.sh` installs what is missing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fake_k8s.rs"]
mod fake_k8s;
#[path = "support/sshd.rs"]
mod sshd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dstack_sdk::agent::{AgentHandle, AgentListeners, AgentOptions, RunnerSshOptions, start_agent};
use dstack_sdk::client::Client;
use dstack_sdk::engine::{Engine, EngineOptions};
use dstack_sdk::models::logs::PollLogsRequest;
use dstack_sdk::models::runs::{Run, RunSpec, RunStatus};
use serde_json::{Value, json};

use fake_k8s::{PodHook, TOKEN};

/// The runner's SSH port in a job pod (`pods::RUNNER_SSH_PORT`).
const POD_SSH_PORT: u16 = 10022;

/// The jump pod's sshd (127.0.0.1:`node_port`), accepting `root` with the keys in
/// `home/.ssh/authorized_keys`.
struct PodSshd {
    dir: tempfile::TempDir,
    node_port: u16,
    child: Child,
}

impl PodSshd {
    fn authorized_keys(dir: &Path) -> PathBuf {
        dir.join("home").join(".ssh").join("authorized_keys")
    }

    async fn start() -> PodSshd {
        sshd::ensure_env();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sshd::set_mode(d, 0o755);
        sshd::keygen(&d.join("host_ed25519"));
        std::fs::create_dir_all(d.join("home").join(".ssh")).unwrap();
        std::fs::write(Self::authorized_keys(d), "").unwrap();
        let node_port = sshd::free_port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{node_port}\n\
                 HostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {ak}\nSetEnv HOME={d}/home\n\
                 StrictModes no\nUsePAM no\nPermitRootLogin yes\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 AllowTcpForwarding yes\nMaxStartups 100\nMaxSessions 100\n",
                d = d.display(),
                ak = Self::authorized_keys(d).display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", node_port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "sshd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PodSshd {
            dir,
            node_port,
            child,
        }
    }

    /// Authorises every public key found in the jump pod's command line (as its start
    /// script does).
    fn authorize_from_pod(&self, pod: &Value) {
        let file = Self::authorized_keys(self.dir.path());
        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
        for m in pod_keys(pod) {
            if !text.lines().any(|l| l == m.as_str()) {
                text.push_str(&m);
                text.push('\n');
            }
        }
        std::fs::write(&file, text).unwrap();
    }
}

impl Drop for PodSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The "containers" of running job pods: an in-process agent per pod.
type Agents = Arc<Mutex<HashMap<String, AgentHandle>>>;

/// The public keys in a pod's command line.
fn pod_keys(pod: &Value) -> Vec<String> {
    let args = pod["spec"]["containers"][0]["args"].to_string();
    let re = regex::Regex::new(r"(ssh-ed25519|ssh-rsa) [A-Za-z0-9+/=]+").unwrap();
    re.find_iter(&args)
        .map(|m| m.as_str().to_string())
        .collect()
}

fn is_job_pod(pod: &Value) -> bool {
    pod["metadata"]["labels"]
        .as_object()
        .is_some_and(|l| l.values().any(|v| v == "dstack-job"))
}

async fn wait_run(
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

fn task(name: &str, commands: &[&str]) -> RunSpec {
    serde_json::from_value(json!({
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

async fn all_logs(client: &Client, run: &Run) -> String {
    let sub = run.latest_job_submission.as_ref().unwrap();
    let req = PollLogsRequest::new(run.run_spec.run_name.clone().unwrap(), sub.id);
    let page = client.project("main").logs().poll(&req).await.unwrap();
    let mut out = Vec::new();
    for l in &page.logs {
        out.extend(l.decode_message().unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn job_pods(env: &fake_k8s::Env) -> Vec<String> {
    env.objects("pods")
        .iter()
        .filter(|p| is_job_pod(p))
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn task_runs_in_a_pod_through_the_jump_pod_and_stops() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let sshd = Arc::new(PodSshd::start().await);
        let env = fake_k8s::start().await;
        let tmp = tempfile::tempdir().unwrap();
        let agents: Agents = Arc::default();
        {
            let mut f = env.fake.lock().unwrap();
            f.nodes.retain(|n| n["metadata"]["name"] == "cpu-node-1");
            f.nodes[0]["status"]["nodeInfo"]["architecture"] = json!("amd64");
            f.pod_ip_prefix = Some("127.1.".into());
            f.cluster_ip_from_pod = true;
            let (s, a, home) = (sshd.clone(), agents.clone(), tmp.path().to_path_buf());
            let running: PodHook = Arc::new(move |name, pod| {
                if !is_job_pod(pod) {
                    s.authorize_from_pod(pod);
                    return;
                }
                let (a, name, home) = (a.clone(), name.to_string(), home.join(name));
                let pod_ip: std::net::IpAddr =
                    pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
                let keys = pod_keys(pod);
                tokio::spawn(async move {
                    let mut o = AgentOptions::new(&home);
                    o.shim_port = 0;
                    o.runner_port = 0;
                    o.ssh_port = 0;
                    o.attach_linger = Duration::ZERO;
                    o.runner_ssh = Some(RunnerSshOptions {
                        bind: pod_ip,
                        port: POD_SSH_PORT,
                        authorized_keys: keys,
                    });
                    let listeners = AgentListeners::bind(&o).await.unwrap();
                    let handle = start_agent(o, listeners).await.unwrap();
                    a.lock().unwrap().insert(name, handle);
                });
            });
            let a = agents.clone();
            let deleted: PodHook = Arc::new(move |name, _| {
                if let Some(h) = a.lock().unwrap().remove(name) {
                    tokio::spawn(h.shutdown());
                }
            });
            f.on_pod_running = Some(running);
            f.on_pod_deleted = Some(deleted);
        }

        let mut o = EngineOptions::new(tmp.path().join("server"));
        o.config_disabled = true;
        o.pipelines.lease = Duration::from_secs(5);
        o.pipelines.workers = 4;
        let (_engine, info): (Engine, _) = Engine::open(o).await.unwrap();
        let client = Client::with_engine(_engine.clone(), &info.admin_token);
        client
            .project("main")
            .backends()
            .create(&env.config_json(TOKEN, "127.0.0.1", i64::from(sshd.node_port)))
            .await
            .unwrap();

        let runs = client.project("main").runs();
        runs.init_virtual_repo().await.unwrap();
        runs.apply(&task("hello", &["echo hello"])).await.unwrap();
        let run = wait_run(&client, "hello", Duration::from_secs(90), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Done, "{run:#?}");
        let sub = run.latest_job_submission.clone().unwrap();
        assert_eq!(sub.exit_status, Some(0));
        let jpd = sub.job_provisioning_data.clone().unwrap();
        assert!(!jpd.dockerized);
        assert!(
            jpd.hostname
                .as_deref()
                .is_some_and(|h| h.starts_with("127.1.")),
            "{jpd:?}"
        );
        assert_eq!(jpd.hostname, jpd.internal_ip);
        assert_eq!(jpd.ssh_proxy.as_ref().map(|p| p.port), Some(sshd.node_port));
        let logs = all_logs(&client, &run).await;
        assert!(logs.contains("hello"), "{logs}");
        assert!(job_pods(&env).is_empty(), "{:?}", job_pods(&env));
        let deletes = env
            .fake
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.starts_with("DELETE /api/v1/namespaces/dstack/pods/"))
            .count();
        assert!(deletes >= 1);
        // The run's key went to the jump pod through the installer (forwarding only).
        let ak = std::fs::read_to_string(PodSshd::authorized_keys(sshd.dir.path())).unwrap();
        assert!(ak.contains("command=\"/bin/false\""), "{ak}");

        runs.apply(&task("sleepy", &["sleep 600"])).await.unwrap();
        wait_run(&client, "sleepy", Duration::from_secs(90), |r| {
            r.status == RunStatus::Running
        })
        .await;
        assert_eq!(job_pods(&env).len(), 1);
        runs.stop(&["sleepy"], false).await.unwrap();
        let run = wait_run(&client, "sleepy", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Terminated, "{run:#?}");
        assert!(job_pods(&env).is_empty(), "{:?}", job_pods(&env));

        // With a Kubernetes fleet (dstack 0.22's way): the job's pod is the fleet's instance
        // while it runs, `nodes.max` bounds the pods, and the instance ends with its job.
        let fleets = client.project("main").fleets();
        let conf = serde_json::from_value(json!({
            "type": "fleet", "name": "k8s", "nodes": "0..1", "backends": ["kubernetes"],
        }))
        .unwrap();
        fleets.apply_configuration(conf, false).await.unwrap();
        assert!(fleets.get("k8s").await.unwrap().instances.is_empty());
        runs.apply(&task("in-fleet", &["sleep 600"])).await.unwrap();
        wait_run(&client, "in-fleet", Duration::from_secs(90), |r| {
            r.status == RunStatus::Running
        })
        .await;
        let fleet = fleets.get("k8s").await.unwrap();
        assert_eq!(fleet.instances.len(), 1, "{fleet:#?}");
        let inst = &fleet.instances[0];
        assert_eq!(inst.name, "k8s-0");
        assert_eq!(inst.status.as_str(), "busy");
        assert_eq!(inst.backend.map(|b| b.as_str()), Some("kubernetes"));
        assert_eq!(job_pods(&env).len(), 1);
        // The fleet's only slot is taken: no second pod (dstack: no matching fleet).
        runs.apply(&task("no-room", &["echo never"])).await.unwrap();
        let run = wait_run(&client, "no-room", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        let sub = run.latest_job_submission.clone().unwrap();
        assert_eq!(
            sub.termination_reason.as_deref(),
            Some("failed_to_start_due_to_no_capacity"),
            "{run:#?}"
        );
        assert_eq!(job_pods(&env).len(), 1);
        runs.stop(&["in-fleet"], false).await.unwrap();
        wait_run(&client, "in-fleet", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        assert!(job_pods(&env).is_empty(), "{:?}", job_pods(&env));
        assert!(fleets.get("k8s").await.unwrap().instances.is_empty());
    })
    .await
    .expect("test timed out");
}
