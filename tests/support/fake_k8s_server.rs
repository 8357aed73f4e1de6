//! The fake Kubernetes API server of `tests/support/fake_k8s.rs` as a process, with a kubelet
//! that really runs the pods, for tests that drive the real dstack CLI
//! (`tests/oracle/test_cli_cloud_k8s.py`):
//!
//! ```text
//! cargo run -p dstack-sdk --example fake_k8s -- 127.0.0.1:PORT AGENT_BINARY WORK_DIR
//! ```
//!
//! prints its URL and serves until killed (`POST /_fake/shutdown` stops every pod process
//! first). The "cluster" is one CPU node; every started pod gets its own loopback address
//! (`127.1.x.y`) and a `ClusterIP` service the address of the pod it selects, so a pod's ports
//! are reached at its service's cluster IP as in a cluster. Every 100 ms the kubelet compares
//! the running pods with the processes it runs:
//!
//! * the **jump pod** (`app.kubernetes.io/name: dstack-ssh-proxy`) is OpenSSH's `sshd` on the
//!   node's address (`127.0.0.1`) at its NodePort service's `nodePort`, as `root` with the keys
//!   the pod's command writes to `~/.ssh/authorized_keys` (`HOME` is the pod's directory, so
//!   the server's key installer edits that file) and local forwarding only, like dstack's
//!   `sshd -p 22 -o AllowTcpForwarding=local`;
//! * a **job pod** (`app.kubernetes.io/name: dstack-job`) runs our agent binary in runner mode
//!   as the container's main process would run `dstack-runner`: its SSH server on
//!   `<pod IP>:10022` accepting the `--ssh-authorized-key` keys of the pod's command, through
//!   which port 10999 is the runner API (the API's own listener is on a free port of the pod's
//!   address: the CLI on this same machine holds local port 10999), with the container's
//!   `env`;
//! * a deleted pod's processes (the agent and every job process under it) are killed.
//!
//! `WORK_DIR/pods/<pod>/` holds each pod's files and log (`pod.log`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "fake_k8s.rs"]
mod fake_k8s;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use serde_json::{Value, json};

/// The runner's SSH port in a job pod (dstack's).
const RUNNER_SSH_PORT: u16 = 10022;

/// Processes per pod, keyed by (namespace, name); `None` for pods with nothing to run.
type Procs = Arc<Mutex<BTreeMap<(String, String), Option<Child>>>>;

struct Kubelet {
    fake: fake_k8s::Shared,
    agent: PathBuf,
    dir: PathBuf,
    procs: Procs,
}

fn app_name(pod: &Value) -> &str {
    pod["metadata"]["labels"]["app.kubernetes.io/name"]
        .as_str()
        .unwrap_or_default()
}

/// The public keys in a pod's command line.
fn keys_in(pod: &Value) -> Vec<String> {
    let args = pod["spec"]["containers"][0]["args"].to_string();
    let re =
        regex::Regex::new(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+").unwrap();
    let mut keys: Vec<String> = Vec::new();
    for m in re.find_iter(&args) {
        if !keys.iter().any(|k| k == m.as_str()) {
            keys.push(m.as_str().to_string());
        }
    }
    keys
}

/// Every descendant of `pid` (children first found through `/proc/*/stat`).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
        {
            parent.push((p, ppid));
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out.remove(0);
    out
}

/// Kills a pod's process and everything it started (a container's processes die with it).
fn kill_tree(child: &mut Child) {
    for _ in 0..2 {
        let mut pids = descendants(child.id());
        pids.push(child.id());
        let args: Vec<String> = pids.iter().map(u32::to_string).collect();
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&args)
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.wait();
}

impl Kubelet {
    fn pod_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join("pods").join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn log_file(d: &Path) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("pod.log"))
            .unwrap()
    }

    /// The jump pod: sshd on 127.0.0.1:<nodePort> (`None` until its service exists).
    fn start_jump(&self, ns: &str, name: &str, pod: &Value, services: &[Value]) -> Option<Child> {
        let node_port = services.iter().find_map(|s| {
            let selects = s["metadata"]["namespace"] == ns
                && s["spec"]["type"] == "NodePort"
                && s["spec"]["selector"]["app.kubernetes.io/instance"] == name;
            selects
                .then(|| s["spec"]["ports"][0]["nodePort"].as_i64())
                .flatten()
        })?;
        let d = self.pod_dir(name);
        let home = d.join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let mut keys = keys_in(pod).join("\n");
        keys.push('\n');
        let ak = home.join(".ssh").join("authorized_keys");
        std::fs::write(&ak, keys).unwrap();
        let host_key = d.join("ssh_host_ed25519_key");
        if !host_key.exists() {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key)
                .status()
                .unwrap();
            assert!(st.success(), "ssh-keygen failed");
        }
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{node_port}\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {ak}\nSetEnv HOME={home}\nStrictModes no\nUsePAM no\n\
                 PermitRootLogin yes\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAllowTcpForwarding local\nMaxStartups 100\n\
                 MaxSessions 100\n",
                hk = host_key.display(),
                d = d.display(),
                ak = ak.display(),
                home = home.display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Self::log_file(&d))
            .stderr(Self::log_file(&d))
            .spawn()
            .unwrap();
        eprintln!("kubelet: jump pod {name}: sshd on 127.0.0.1:{node_port}");
        Some(child)
    }

    /// A job pod: the agent in runner mode on the pod's address.
    fn start_job(&self, name: &str, pod: &Value) -> Child {
        let d = self.pod_dir(name);
        let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
        let mut cmd = Command::new(&self.agent);
        cmd.arg("agent")
            .arg("--home")
            .arg(d.join("agent"))
            .args(["--bind", &ip])
            .args(["--shim-port", "0"])
            // Not 10999 on the pod's address: the CLI on this same machine holds local port
            // 10999 for its forward (`PortsLock`); port 10999 through the SSH server is the
            // runner API, which is all anyone uses.
            .args(["--runner-port", "0"])
            .args(["--ssh-port", "0"])
            .args(["--attach-linger", "0"])
            .args(["--runner-ssh-port", &RUNNER_SSH_PORT.to_string()]);
        for k in keys_in(pod) {
            cmd.args(["--ssh-authorized-key", &k]);
        }
        for e in pod["spec"]["containers"][0]["env"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let (Some(k), Some(v)) = (e["name"].as_str(), e["value"].as_str()) {
                cmd.env(k, v);
            }
        }
        let child = cmd
            .env("HOME", &d)
            .env_remove("DSTACK_SERVER_PORT")
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Self::log_file(&d))
            .stderr(Self::log_file(&d))
            .spawn()
            .unwrap();
        eprintln!("kubelet: job pod {name}: agent pid {} on {ip}", child.id());
        child
    }

    /// One pass: start what newly runs, kill what was deleted.
    fn sync(&self) {
        let (pods, services) = {
            let f = self.fake.lock().unwrap();
            let of = |kind: &str| -> Vec<Value> {
                f.objects
                    .iter()
                    .filter(|((k, _, _), _)| k == kind)
                    .map(|(_, v)| v.clone())
                    .collect()
            };
            (of("pods"), of("services"))
        };
        let mut procs = self.procs.lock().unwrap();
        let mut present = HashSet::new();
        for pod in &pods {
            let ns = pod["metadata"]["namespace"].as_str().unwrap().to_string();
            let name = pod["metadata"]["name"].as_str().unwrap().to_string();
            let key = (ns.clone(), name.clone());
            present.insert(key.clone());
            if procs.contains_key(&key) || pod["status"]["phase"] != "Running" {
                continue;
            }
            match app_name(pod) {
                "dstack-ssh-proxy" => {
                    if let Some(child) = self.start_jump(&ns, &name, pod, &services) {
                        procs.insert(key, Some(child));
                    }
                }
                "dstack-job" => {
                    let child = self.start_job(&name, pod);
                    procs.insert(key, Some(child));
                }
                _ => {
                    procs.insert(key, None);
                }
            }
        }
        let gone: Vec<_> = procs
            .keys()
            .filter(|k| !present.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(Some(mut child)) = procs.remove(&key) {
                eprintln!("kubelet: pod {} deleted: killing its processes", key.1);
                kill_tree(&mut child);
            }
        }
    }

    fn stop_all(&self) {
        let mut procs = self.procs.lock().unwrap();
        for (_, child) in procs.iter_mut() {
            if let Some(child) = child {
                kill_tree(child);
            }
        }
        procs.clear();
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let agent = PathBuf::from(
        args.next()
            .expect("usage: fake_k8s ADDR AGENT_BINARY WORK_DIR"),
    );
    let dir = PathBuf::from(
        args.next()
            .expect("usage: fake_k8s ADDR AGENT_BINARY WORK_DIR"),
    );
    std::fs::create_dir_all(&dir).unwrap();

    let fake: fake_k8s::Shared = Arc::new(Mutex::new(fake_k8s::Fake {
        nodes: fake_k8s::nodes(),
        ..fake_k8s::Fake::default()
    }));
    {
        let mut f = fake.lock().unwrap();
        // One CPU node (this machine).
        f.nodes.retain(|n| n["metadata"]["name"] == "cpu-node-1");
        f.nodes[0]["status"]["nodeInfo"]["architecture"] = json!("amd64");
        f.pod_ip_prefix = Some("127.1.".into());
        f.cluster_ip_from_pod = true;
    }
    let kubelet = Arc::new(Kubelet {
        fake: fake.clone(),
        agent,
        dir,
        procs: Arc::default(),
    });
    let k = kubelet.clone();
    let app = fake_k8s::app(fake.clone()).route(
        "/_fake/shutdown",
        post(move || {
            let k = k.clone();
            async move {
                tokio::task::spawn_blocking(move || k.stop_all())
                    .await
                    .unwrap();
                tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    std::process::exit(0);
                });
                "stopped\n"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let k = kubelet.clone();
    tokio::spawn(async move {
        loop {
            let k2 = k.clone();
            tokio::task::spawn_blocking(move || k2.sync())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    println!("{url}");
    let _ = tokio::signal::ctrl_c().await;
    kubelet.stop_all();
}
