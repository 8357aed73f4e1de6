//! Blocks (shared instances) and multi-node tasks on SSH fleets, end to end on loopback
//! (same environment as `runs_ssh.rs`: a real `sshd`, our agent deployed over SSH).
//!
//! * `blocks: 2` splits the host's CPUs and memory in two: two tasks run on the instance at
//!   once (`busy_blocks` 2/2, BUSY), a third finds no capacity, and the blocks come back.
//! * `nodes: 2` on a `placement: cluster` fleet of two hosts: one job per instance, both get
//!   dstack's cluster variables (`DSTACK_NODE_RANK`, `DSTACK_NODES_NUM`,
//!   `DSTACK_MASTER_NODE_IP`, …) and the run is done when both are;
//! * `startup_order: workers-first` starts the master after its worker, and
//!   `stop_criteria: master-done` ends the run (and the sleeping worker, `done_by_runner`)
//!   when the master is done;
//! * with `retry`, a failed worker retries its whole replica: the still-running master is
//!   terminated ("Run is to be resubmitted"), the run waits out dstack's back-off as
//!   `pending`, and both nodes get a new submission.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dstack_sdk::client::Client;
use dstack_sdk::engine::Engine;
use dstack_sdk::models::instances::InstanceStatus;
use dstack_sdk::models::jobs::JobStatus;
use dstack_sdk::models::logs::PollLogsRequest;
use dstack_sdk::models::runs::{Run, RunStatus};

#[path = "support/ssh_fleet.rs"]
mod ssh_fleet;
#[path = "support/sshd.rs"]
mod sshd;

use ssh_fleet::{Fixture, multinode_task, task, wait_instance, wait_run};
use sshd::SUDO_USER;

async fn all_logs(client: &Client, run: &Run, job: usize) -> String {
    let sub = run.jobs[job].job_submissions.last().unwrap();
    let mut req = PollLogsRequest::new(run.run_spec.run_name.clone().unwrap(), sub.id);
    req.limit = 2;
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = client.project("main").logs().poll(&req).await.unwrap();
        for l in &page.logs {
            out.extend(l.decode_message().unwrap());
        }
        match page.next_token {
            Some(t) => req.next_token = Some(t),
            None => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn fleet_conf(
    fx: &Fixture,
    hosts: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut conf = serde_json::json!({
        "type": "fleet",
        "name": "ssh",
        "ssh_config": {
            "user": SUDO_USER,
            "port": fx.port,
            "ssh_key": {"public": fx.public_line, "private": fx.private_pem},
            "hosts": hosts,
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        conf[k] = v.clone();
    }
    conf
}

/// Engine logs in the test output.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
}

/// A fresh engine whose fleet `ssh` has two IDLE hosts in `placement: cluster`, and a
/// virtual repo for runs.
async fn cluster() -> (Fixture, Engine, Client) {
    let fx = Fixture::new().await;
    let (engine, client) = fx.engine().await;
    cluster_fleet(&fx, &client).await;
    client
        .project("main")
        .runs()
        .init_virtual_repo()
        .await
        .unwrap();
    (fx, engine, client)
}

/// Applies fleet `ssh` with two hosts (both this machine; one agent serves both instances)
/// and `placement: cluster`, and waits until both instances are IDLE.
async fn cluster_fleet(fx: &Fixture, client: &Client) {
    let conf = fleet_conf(
        fx,
        serde_json::json!(["127.0.0.1", "localhost"]),
        serde_json::json!({"placement": "cluster"}),
    );
    client
        .project("main")
        .fleets()
        .apply_configuration(serde_json::from_value(conf).unwrap(), false)
        .await
        .unwrap();
    for idx in 0..2 {
        let inst = wait_instance(client, idx, Duration::from_secs(150), |i| {
            i.status != InstanceStatus::Pending
        })
        .await;
        assert_eq!(
            inst.status,
            InstanceStatus::Idle,
            "{:?}",
            inst.termination_reason_message
        );
    }
}

/// Waits until both instances of fleet `ssh` are IDLE again.
async fn both_idle(client: &Client) {
    for idx in 0..2 {
        wait_instance(client, idx, Duration::from_secs(30), |i| {
            i.status == InstanceStatus::Idle
        })
        .await;
    }
}

/// The first `start=<epoch seconds>` a job's logs show.
fn start_time(logs: &str) -> f64 {
    logs.split("start=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no start time in {logs:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_share_one_instance() {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(300), async {
        let fx = Fixture::new().await;
        let (_engine, client) = fx.engine().await;
        let conf = fleet_conf(
            &fx,
            serde_json::json!(["127.0.0.1"]),
            serde_json::json!({"blocks": 2}),
        );
        client
            .project("main")
            .fleets()
            .apply_configuration(serde_json::from_value(conf).unwrap(), false)
            .await
            .unwrap();
        let inst = wait_instance(&client, 0, Duration::from_secs(150), |i| {
            i.status != InstanceStatus::Pending
        })
        .await;
        assert_eq!(
            inst.status,
            InstanceStatus::Idle,
            "{:?}",
            inst.termination_reason_message
        );
        assert_eq!(inst.total_blocks, Some(2));
        assert_eq!(inst.busy_blocks, 0);

        let runs = client.project("main").runs();
        runs.init_virtual_repo().await.unwrap();
        // The plan offers one block: half of the host's CPUs.
        let plan = runs.get_plan(&task("one", &["sleep 1"])).await.unwrap();
        let offer = &plan.job_plans[0].offers[0];
        assert_eq!((offer.blocks, offer.total_blocks), (1, 2), "{offer:#?}");

        for name in ["one", "two"] {
            runs.apply(&task(name, &["echo started-$DSTACK_RUN_NAME", "sleep 600"]))
                .await
                .unwrap();
        }
        for name in ["one", "two"] {
            wait_run(&client, name, Duration::from_secs(90), |r| {
                r.status == RunStatus::Running
            })
            .await;
        }
        let inst = wait_instance(&client, 0, Duration::from_secs(10), |i| i.busy_blocks == 2).await;
        assert_eq!(inst.status, InstanceStatus::Busy);
        // Both jobs run side by side and each one's logs are its own.
        for name in ["one", "two"] {
            let want = format!("started-{name}");
            let f = async {
                loop {
                    let run = runs.get(name).await.unwrap();
                    if all_logs(&client, &run, 0).await.contains(&want) {
                        return run;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            };
            let run = tokio::time::timeout(Duration::from_secs(30), f)
                .await
                .expect("logs");
            let logs = all_logs(&client, &run, 0).await;
            assert!(
                !logs.contains(if name == "one" {
                    "started-two"
                } else {
                    "started-one"
                }),
                "{logs}"
            );
        }
        // No block left: a third task finds no capacity.
        runs.apply(&task("three", &["true"])).await.unwrap();
        let run = wait_run(&client, "three", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
        assert_eq!(
            run.latest_job_submission
                .as_ref()
                .unwrap()
                .termination_reason
                .as_deref(),
            Some("failed_to_start_due_to_no_capacity")
        );

        // One stops: one block is free again, the instance stays BUSY and takes a new job.
        runs.stop(&["one"], false).await.unwrap();
        wait_run(&client, "one", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        let inst = wait_instance(&client, 0, Duration::from_secs(10), |i| i.busy_blocks == 1).await;
        assert_eq!(inst.status, InstanceStatus::Busy);
        runs.apply(&task("four", &["echo four"])).await.unwrap();
        let run = wait_run(&client, "four", Duration::from_secs(90), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Done, "{run:#?}");
        assert!(all_logs(&client, &run, 0).await.contains("four"));
        runs.stop(&["two"], false).await.unwrap();
        wait_run(&client, "two", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        let inst = wait_instance(&client, 0, Duration::from_secs(10), |i| {
            i.status == InstanceStatus::Idle
        })
        .await;
        assert_eq!(inst.busy_blocks, 0);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multinode_task_spans_cluster_instances() {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (_fx, _engine, client) = cluster().await;
        let runs = client.project("main").runs();
        let mut spec = task(
            "multi",
            &["echo node=$DSTACK_NODE_RANK/$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP gpus=$DSTACK_GPUS_NUM", "sleep 2"],
        );
        if let dstack_sdk::models::configurations::RunConfiguration::Task(t) = &mut spec.configuration {
            t.nodes = Some(2);
        }
        let run = runs.apply(&spec).await.unwrap();
        assert_eq!(run.jobs.len(), 2);
        let run = wait_run(&client, "multi", Duration::from_secs(120), |r| r.status.is_finished()).await;
        assert_eq!(run.status, RunStatus::Done, "{run:#?}");
        let instances: Vec<_> = run
            .jobs
            .iter()
            .map(|j| j.job_submissions.last().unwrap().job_provisioning_data.as_ref().unwrap().instance_id.clone())
            .collect();
        assert_ne!(instances[0], instances[1], "both nodes on one instance");
        for rank in 0..2 {
            let logs = all_logs(&client, &run, rank).await;
            assert!(logs.contains(&format!("node={rank}/2 master=")), "{logs}");
            assert!(logs.contains("gpus=0"), "{logs}");
        }
        // Both nodes see the same master IP.
        let master = |l: &str| l.split("master=").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        assert_eq!(master(&all_logs(&client, &run, 0).await), master(&all_logs(&client, &run, 1).await));
        // A multi-node task refuses a fleet without `placement: cluster`? Here: every
        // instance is free again.
        for idx in 0..2 {
            wait_instance(&client, idx, Duration::from_secs(10), |i| i.status == InstanceStatus::Idle).await;
        }
    })
    .await
    .expect("test timed out");
}

/// `startup_order: workers-first`: the master (rank 0) is not started before its worker
/// runs, so the time the master's command starts is after the worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multinode_workers_first_starts_master_last() {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (_fx, _engine, client) = cluster().await;
        let runs = client.project("main").runs();
        // The worker stays running a while: dstack's master waits for it to be `running`.
        let spec = multinode_task(
            "wfirst",
            2,
            &[
                "echo start=$(date +%s.%N) rank=$DSTACK_NODE_RANK",
                "if [ \"$DSTACK_NODE_RANK\" != 0 ]; then sleep 10; fi",
            ],
            serde_json::json!({"startup_order": "workers-first"}),
        );
        assert_eq!(
            spec.merged_profile().params.startup_order,
            Some(dstack_sdk::models::profiles::StartupOrder::WorkersFirst)
        );
        runs.apply(&spec).await.unwrap();
        let run = wait_run(&client, "wfirst", Duration::from_secs(150), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Done, "{run:#?}");
        let master = all_logs(&client, &run, 0).await;
        let worker = all_logs(&client, &run, 1).await;
        assert!(master.contains("rank=0"), "{master}");
        assert!(worker.contains("rank=1"), "{worker}");
        let (m, w) = (start_time(&master), start_time(&worker));
        eprintln!(
            "workers-first: the master started {:.3}s after its worker",
            m - w
        );
        // Started together the two differ by a fraction of a second; in order, the master
        // needs at least two more of its own ticks (1 s apart) after the worker runs.
        assert!(
            m - w > 0.8,
            "master started at {m}, not clearly after its worker at {w}"
        );
    })
    .await
    .expect("test timed out");
}

/// `stop_criteria: master-done`: once the master is done the run is done; the worker (still
/// sleeping) is terminated with dstack's `done_by_runner` and ends `done` too, and both
/// instances are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multinode_master_done_stops_workers() {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (_fx, _engine, client) = cluster().await;
        let runs = client.project("main").runs();
        let spec = multinode_task(
            "mdone",
            2,
            &["if [ \"$DSTACK_NODE_RANK\" = 0 ]; then echo master-done; else sleep 600; fi"],
            serde_json::json!({"stop_criteria": "master-done"}),
        );
        runs.apply(&spec).await.unwrap();
        let run = wait_run(&client, "mdone", Duration::from_secs(120), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Done, "{run:#?}");
        assert_eq!(
            run.termination_reason.as_deref(),
            Some("all_jobs_done"),
            "{run:#?}"
        );
        let master = run.jobs[0].job_submissions.last().unwrap();
        assert_eq!(master.status, JobStatus::Done, "{run:#?}");
        assert_eq!(master.termination_reason.as_deref(), Some("done_by_runner"));
        let worker = run.jobs[1].job_submissions.last().unwrap();
        assert_eq!(worker.status, JobStatus::Done, "{run:#?}");
        assert_eq!(worker.termination_reason.as_deref(), Some("done_by_runner"));
        assert!(all_logs(&client, &run, 0).await.contains("master-done"));
        both_idle(&client).await;
    })
    .await
    .expect("test timed out");
}

/// A failed node retries its whole replica (dstack 0.22.5 `runs/active.py`): the worker
/// fails on its first submission while the master runs (`startup_order: master-first`
/// makes sure it does); the master is terminated with `terminated_by_server`, the run is
/// `pending` for the 15 s back-off, then both nodes run again and the run is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multinode_replica_retries_as_a_whole() {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (_fx, _engine, client) = cluster().await;
        let marks = tempfile::tempdir().unwrap();
        let d = marks.path().display();
        let runs = client.project("main").runs();
        let script = format!(
            "if [ \"$DSTACK_NODE_RANK\" = 1 ]; then \
               if [ -e {d}/worker-failed ]; then echo worker-ok; \
               else touch {d}/worker-failed; echo worker-fails; exit 3; fi; \
             elif [ -e {d}/master-once ]; then sleep 3; echo master-ok; \
             else touch {d}/master-once; sleep 600; fi"
        );
        let spec = multinode_task(
            "retry-replica",
            2,
            &[script.as_str()],
            serde_json::json!({
                "startup_order": "master-first",
                "retry": {"on_events": ["error"], "duration": "10m"},
            }),
        );
        runs.apply(&spec).await.unwrap();
        let pending = wait_run(&client, "retry-replica", Duration::from_secs(120), |r| {
            r.status == RunStatus::Pending || r.status.is_finished()
        })
        .await;
        assert_eq!(pending.status, RunStatus::Pending, "{pending:#?}");
        let run = wait_run(&client, "retry-replica", Duration::from_secs(150), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Done, "{run:#?}");
        let (master, worker) = (&run.jobs[0].job_submissions, &run.jobs[1].job_submissions);
        assert_eq!((master.len(), worker.len()), (2, 2), "{run:#?}");
        assert_eq!(worker[0].status, JobStatus::Failed, "{run:#?}");
        assert_eq!(
            worker[0].termination_reason.as_deref(),
            Some("container_exited_with_error")
        );
        assert_eq!(master[0].status, JobStatus::Terminated, "{run:#?}");
        assert_eq!(
            master[0].termination_reason.as_deref(),
            Some("terminated_by_server")
        );
        assert_eq!(
            master[0].termination_reason_message.as_deref(),
            Some("Run is to be resubmitted")
        );
        for subs in [master, worker] {
            assert_eq!(subs[1].submission_num, 1);
            assert_eq!(subs[1].status, JobStatus::Done, "{run:#?}");
        }
        // The new submissions came after the back-off, not at once.
        let gap = master[1].submitted_at - worker[0].finished_at.unwrap();
        assert!(gap.num_seconds() >= 14, "resubmitted after {gap}");
        assert!(all_logs(&client, &run, 0).await.contains("master-ok"));
        assert!(all_logs(&client, &run, 1).await.contains("worker-ok"));
        both_idle(&client).await;
    })
    .await
    .expect("test timed out");
}

/// `instances:` pins a run to specific instances (dstack 0.22.5's targeted offers): by
/// hostname, by name, by fleet and number; plans list only those, and a run whose selected
/// instances do not exist fails with "Failed to use specified instances".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_pin_runs_to_selected_instances() {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (_fx, _engine, client) = cluster().await;
        let runs = client.project("main").runs();
        let pinned = |name: &str, selector: serde_json::Value| {
            multinode_task(
                name,
                1,
                &["echo pinned"],
                serde_json::json!({"instances": [selector]}),
            )
        };
        // Both hosts are identical: without a selector the plan offers both.
        let plan = runs.get_plan(&task("any", &["true"])).await.unwrap();
        assert_eq!(plan.job_plans[0].offers.len(), 2, "{plan:#?}");
        for (name, selector, host) in [
            (
                "by-host",
                serde_json::json!({"hostname": "LOCALHOST"}),
                "localhost",
            ),
            ("by-name", serde_json::json!("ssh-1"), "localhost"),
            (
                "by-num",
                serde_json::json!({"fleet": "ssh", "instance": 0}),
                "127.0.0.1",
            ),
        ] {
            let spec = pinned(name, selector);
            let plan = runs.get_plan(&spec).await.unwrap();
            assert_eq!(plan.job_plans[0].offers.len(), 1, "{name}: {plan:#?}");
            runs.apply(&spec).await.unwrap();
            let run = wait_run(&client, name, Duration::from_secs(120), |r| {
                r.status.is_finished()
            })
            .await;
            assert_eq!(run.status, RunStatus::Done, "{run:#?}");
            let jpd = run.jobs[0]
                .job_submissions
                .last()
                .unwrap()
                .job_provisioning_data
                .clone()
                .unwrap();
            assert_eq!(jpd.hostname.as_deref(), Some(host), "{name}");
        }
        let spec = pinned("nowhere", serde_json::json!("ssh-7"));
        let plan = runs.get_plan(&spec).await.unwrap();
        assert!(plan.job_plans[0].offers.is_empty(), "{plan:#?}");
        runs.apply(&spec).await.unwrap();
        let run = wait_run(&client, "nowhere", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Failed, "{run:#?}");
        let sub = run.jobs[0].job_submissions.last().unwrap();
        assert_eq!(
            sub.termination_reason_message.as_deref(),
            Some("Failed to use specified instances")
        );
    })
    .await
    .expect("test timed out");
}
