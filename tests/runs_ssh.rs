//! Runs on an SSH fleet end to end on loopback: an SSH fleet on a real `sshd` gets our own
//! agent, then tasks are applied through the runs routes and the job/run pipelines drive
//! them through the SSH tunnel to the agent (shim task + runner submit/run/pull).
//!
//! Same environment needs as `fleets_ssh.rs` (root, `/usr/sbin/sshd`, `sudo`, the user
//! `dstack-test`; `scripts/sshd-test-env.sh` creates what is missing). Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dstack_sdk::client::Client;
use dstack_sdk::models::instances::InstanceStatus;
use dstack_sdk::models::logs::PollLogsRequest;
use dstack_sdk::models::runs::{Run, RunStatus};

#[path = "support/ssh_fleet.rs"]
mod ssh_fleet;
#[path = "support/sshd.rs"]
mod sshd;

use ssh_fleet::{Fixture, task, wait_instance, wait_run};
use sshd::SUDO_USER;

async fn all_logs(client: &Client, run: &Run) -> String {
    let sub = run.latest_job_submission.as_ref().unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_runs_on_ssh_fleet_and_stops() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    tokio::time::timeout(Duration::from_secs(300), async {
        let fx = Fixture::new().await;
        let (engine, client) = fx.engine().await;
        let conf = serde_json::from_value(serde_json::json!({
            "type": "fleet",
            "name": "ssh",
            "ssh_config": {
                "user": SUDO_USER,
                "port": fx.port,
                "ssh_key": {"public": fx.public_line, "private": fx.private_pem},
                "hosts": ["127.0.0.1"],
            },
        }))
        .unwrap();
        client
            .project("main")
            .fleets()
            .apply_configuration(conf, false)
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

        let runs = client.project("main").runs();
        runs.init_virtual_repo().await.unwrap();
        let spec = task("hello", &["echo hello", "python3 -c 'print(2+2)'"]);
        let plan = runs.get_plan(&spec).await.unwrap();
        assert_eq!(plan.job_plans.len(), 1);
        assert_eq!(plan.job_plans[0].total_offers, 1, "{plan:#?}");

        let run = runs.apply(&spec).await.unwrap();
        assert_eq!(run.status, RunStatus::Submitted);
        assert_eq!(run.jobs.len(), 1);
        let err = runs.apply(&spec).await.unwrap_err();
        assert!(
            err.message().contains("Cannot override active run"),
            "{err}"
        );

        let run = wait_run(&client, "hello", Duration::from_secs(90), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Done, "{run:#?}");
        let sub = run.latest_job_submission.clone().unwrap();
        assert_eq!(sub.exit_status, Some(0));
        let logs = all_logs(&client, &run).await;
        let h = logs.find("hello\n").expect(&logs);
        let f = logs.find("\n4\n").expect(&logs);
        assert!(h < f, "{logs}");
        wait_instance(&client, 0, Duration::from_secs(10), |i| {
            i.status == InstanceStatus::Idle
        })
        .await;

        // A long task is stopped: the run terminates and the instance is idle again.
        runs.apply(&task("sleepy", &["sleep 600"])).await.unwrap();
        wait_run(&client, "sleepy", Duration::from_secs(60), |r| {
            r.status == RunStatus::Running
        })
        .await;
        runs.stop(&["sleepy"], false).await.unwrap();
        let run = wait_run(&client, "sleepy", Duration::from_secs(60), |r| {
            r.status.is_finished()
        })
        .await;
        assert_eq!(run.status, RunStatus::Terminated, "{run:#?}");
        assert_eq!(run.termination_reason.as_deref(), Some("stopped_by_user"));
        wait_instance(&client, 0, Duration::from_secs(10), |i| {
            i.status == InstanceStatus::Idle
        })
        .await;

        let listed = runs.list(false).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(runs.list(true).await.unwrap().is_empty());
        runs.delete(&["hello"]).await.unwrap();
        assert_eq!(runs.list(false).await.unwrap().len(), 1);

        // The log follower streams a run's lines in order and ends when the run is done.
        runs.apply(&task(
            "counter",
            &["for i in $(seq 1 20); do echo n-$i; sleep 0.05; done"],
        ))
        .await
        .unwrap();
        let mut follow = client
            .project("main")
            .logs()
            .follow("counter")
            .with_interval(Duration::from_millis(100));
        let mut text = String::new();
        while let Some(e) = follow.next().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&e.decode_message().unwrap()));
        }
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("n-"))
            .collect();
        let want: Vec<String> = (1..=20).map(|i| format!("n-{i}")).collect();
        assert_eq!(lines, want, "{text}");
        let done = runs
            .wait_finished(
                "counter",
                Duration::from_millis(200),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(done.status, RunStatus::Done);

        // Offers: the fleet's idle instance, as `dstack offer` sees it.
        let (offers, total) = client
            .project("main")
            .offers()
            .list(serde_json::json!({"disk": "1GB.."}), 5)
            .await
            .unwrap();
        assert_eq!(total, 1);
        assert_eq!(
            offers[0].availability,
            dstack_sdk::models::offers::InstanceAvailability::Idle
        );
        engine.stop_background();
    })
    .await
    .expect("test timed out");
}
