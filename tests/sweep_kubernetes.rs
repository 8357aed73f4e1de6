//! The sweep of leaked Kubernetes job containers: the backend's listing (job pods, services
//! and registry secrets labelled with the server id, grouped by pod) and the engine's sweep
//! against job rows, on the fake API server of `tests/support/fake_k8s.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/fake_k8s.rs"]
mod fake_k8s;

use std::time::Duration;

use dstack_sdk::backends::Compute;
use dstack_sdk::backends::compute::TaggedKind;
use dstack_sdk::client::Client;
use dstack_sdk::engine::{Engine, EngineOptions};
use serde_json::{Value, json};
use uuid::Uuid;

use fake_k8s::{Env, NS, SERVER_ID, TOKEN};

/// The labels `build_labels` gives a job object of pod `pod` for job `job`.
fn job_labels(server: &str, pod: &str, job: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "dstack-job",
        "app.kubernetes.io/instance": pod,
        "app.kubernetes.io/managed-by": "dstack",
        "dstack_server_id": server,
        "dstack_instance_id": job,
        "owner": "dstack",
    })
}

/// Puts an object straight into the fake (as if created earlier, at `created`).
fn put(env: &Env, kind: &str, name: &str, labels: &Value, created: &str) {
    let mut v = json!({
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": Uuid::new_v4().to_string(),
            "resourceVersion": "1",
            "creationTimestamp": created,
            "labels": labels,
        },
    });
    match kind {
        "pods" => {
            v["kind"] = json!("Pod");
            v["spec"] = json!({"containers": [{"name": "job", "image": "ubuntu"}]});
            v["status"] = json!({"phase": "Running"});
        }
        "services" => {
            v["kind"] = json!("Service");
            v["spec"] =
                json!({"type": "ClusterIP", "clusterIP": "10.96.0.99", "ports": [{"port": 10022}]});
        }
        _ => {
            v["kind"] = json!("Secret");
            v["type"] = json!("kubernetes.io/dockerconfigjson");
        }
    }
    env.fake
        .lock()
        .unwrap()
        .objects
        .insert((kind.to_string(), NS.to_string(), name.to_string()), v);
}

/// A job container: the pod, its service and (with `secret`) its registry secret.
fn put_container(env: &Env, server: &str, pod: &str, job: &str, secret: bool, created: &str) {
    let labels = job_labels(server, pod, job);
    put(env, "pods", pod, &labels, created);
    put(env, "services", &format!("{pod}-service"), &labels, created);
    if secret {
        put(
            env,
            "secrets",
            &format!("{pod}-registry-auth"),
            &labels,
            created,
        );
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn lists_job_containers_labelled_with_the_server_id() {
    let env = fake_k8s::start().await;
    put_container(
        &env,
        SERVER_ID,
        "job-a",
        "job-id-a",
        true,
        "2024-05-01T10:00:00Z",
    );
    // Only the service is left of job-b (the pod is gone).
    put(
        &env,
        "services",
        "job-b-service",
        &job_labels(SERVER_ID, "job-b", "job-id-b"),
        "2024-05-01T11:00:00Z",
    );
    put_container(
        &env,
        "another-server",
        "job-c",
        "job-id-c",
        false,
        "2024-05-01T10:00:00Z",
    );
    // The project's jump pod belongs to no job.
    put(
        &env,
        "pods",
        "dstack-main-ssh-jump-pod",
        &json!({"app.kubernetes.io/name": "dstack-ssh-proxy", "dstack_server_id": SERVER_ID}),
        "2024-05-01T10:00:00Z",
    );

    let c = env.compute().await;
    let sweep = c.as_sweep().expect("kubernetes supports the sweep");
    let mut listed = sweep.list_tagged_instances(SERVER_ID).await.unwrap();
    listed.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let ids: Vec<(&str, TaggedKind, &str)> = listed
        .iter()
        .map(|t| (t.instance_id.as_str(), t.kind, t.state.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("job-a", TaggedKind::JobContainer, "Running"),
            ("job-b", TaggedKind::JobContainer, "orphaned"),
        ]
    );
    assert_eq!(listed[0].dstack_instance_id.as_deref(), Some("job-id-a"));
    assert_eq!(listed[0].region, c.clusters()[0].region);
    assert_eq!(
        listed[0].created_at.unwrap().to_rfc3339(),
        "2024-05-01T10:00:00+00:00"
    );
    assert_eq!(listed[1].dstack_instance_id.as_deref(), Some("job-id-b"));

    // Deleting a listed container deletes its pod, service and secret.
    for t in &listed {
        sweep.delete_tagged(t).await.unwrap();
    }
    assert_eq!(env.names("pods"), ["dstack-main-ssh-jump-pod", "job-c"]);
    assert_eq!(env.names("services"), ["job-c-service"]);
    assert!(env.names("secrets").is_empty());
    assert!(
        sweep
            .list_tagged_instances(SERVER_ID)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_engine_sweeps_containers_of_unknown_finished_and_superseded_jobs() {
    let env = fake_k8s::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let server_dir = tmp.path().join("server");
    std::fs::create_dir_all(server_dir.join("data")).unwrap();
    std::fs::write(server_dir.join("data").join("server_id"), SERVER_ID).unwrap();
    let mut o = EngineOptions::new(&server_dir);
    o.config_disabled = true;
    // No pipelines (and no periodic sweep): the test drives one pass at a time.
    o.pipelines.enabled = false;
    let (engine, info) = Engine::open(o).await.unwrap();
    let client = Client::with_engine(engine.clone(), &info.admin_token);
    client
        .project("main")
        .backends()
        .create(&env.config_json(TOKEN, fake_k8s::JUMP_HOST, fake_k8s::JUMP_PORT))
        .await
        .unwrap();

    // A run with three jobs: one done, one running on `pod-running`, one running on
    // `pod-current` (after an earlier attempt's `pod-stale`).
    let db = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        server_dir.join("data").join("sqlite.db").display()
    ))
    .await
    .unwrap();
    let (project_id,): (String,) = sqlx::query_as("SELECT id FROM projects WHERE name = 'main'")
        .fetch_one(&db)
        .await
        .unwrap();
    let run_id = Uuid::new_v4().to_string();
    let now = "2024-01-01T00:00:00.000000+00:00";
    sqlx::query(
        "INSERT INTO runs (id, project_id, user_id, run_name, submitted_at, last_processed_at, \
         status, run_spec) VALUES ($1, $2, 'admin', 'sweep-run', $3, $3, 'running', '{}')",
    )
    .bind(&run_id)
    .bind(&project_id)
    .bind(now)
    .execute(&db)
    .await
    .unwrap();
    let jpd = |pod: &str| json!({"backend": "kubernetes", "instance_id": pod}).to_string();
    let jobs = [
        ("done", None),
        ("running", Some(jpd("pod-running"))),
        ("running", Some(jpd("pod-current"))),
    ];
    let mut job_ids = Vec::new();
    for (num, (status, data)) in jobs.into_iter().enumerate() {
        let id = Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO jobs (id, project_id, run_id, run_name, job_num, job_name, replica_num, \
             submission_num, submitted_at, last_processed_at, status, job_spec_data, \
             job_provisioning_data) \
             VALUES ($1, $2, $3, 'sweep-run', $4, $5, 0, 0, $6, $6, $7, '{}', $8)",
        )
        .bind(&id)
        .bind(&project_id)
        .bind(&run_id)
        .bind(num as i64)
        .bind(format!("sweep-run-{num}"))
        .bind(now)
        .bind(status)
        .bind(data)
        .execute(&db)
        .await
        .unwrap();
        job_ids.push(id);
    }

    let created = (chrono::Utc::now() - chrono::Duration::seconds(120))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let unknown_job = Uuid::new_v4().to_string();
    put_container(&env, SERVER_ID, "pod-unknown", &unknown_job, true, &created);
    put_container(&env, SERVER_ID, "pod-done", &job_ids[0], false, &created);
    put_container(&env, SERVER_ID, "pod-running", &job_ids[1], false, &created);
    put_container(&env, SERVER_ID, "pod-stale", &job_ids[2], false, &created);
    put_container(&env, SERVER_ID, "pod-current", &job_ids[2], false, &created);
    put(
        &env,
        "services",
        "pod-gone-service",
        &job_labels(SERVER_ID, "pod-gone", &job_ids[0]),
        &created,
    );
    put_container(
        &env,
        "another-server",
        "pod-theirs",
        &unknown_job,
        false,
        &created,
    );
    let leaked = sorted(vec![
        "pod-done".into(),
        "pod-gone".into(),
        "pod-stale".into(),
        "pod-unknown".into(),
    ]);

    // Within the grace period nothing is touched.
    let report = engine
        .sweep_cloud_instances(Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.listed, 6, "{report:?}");
    assert!(report.terminated.is_empty(), "{report:?}");
    assert_eq!(sorted(report.too_young.clone()), leaked);
    assert_eq!(env.names("pods").len(), 6);

    // Past it, the leaked containers go, with their services and secrets.
    let report = engine.sweep_cloud_instances(Duration::ZERO).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(sorted(report.terminated.clone()), leaked);
    assert_eq!(
        sorted(env.names("pods")),
        ["pod-current", "pod-running", "pod-theirs"]
    );
    assert_eq!(
        sorted(env.names("services")),
        [
            "pod-current-service",
            "pod-running-service",
            "pod-theirs-service"
        ]
    );
    assert!(env.names("secrets").is_empty());

    // A later pass finds nothing more to do.
    let report = engine.sweep_cloud_instances(Duration::ZERO).await.unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.listed, 2, "{report:?}");
    assert!(report.terminated.is_empty(), "{report:?}");
}
