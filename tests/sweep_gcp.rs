#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The GCP backend's sweep listing (`instances.aggregatedList` by the `dstack_server_id`
//! label) against the fake Compute Engine server of `tests/support/fake_gcp.rs`.

use std::path::PathBuf;
use std::time::Duration;

use dstack_sdk::backends::common::endpoint::Endpoints;
use dstack_sdk::backends::common::retry::Backoff;
use dstack_sdk::backends::gcp::GcpCompute;
use dstack_sdk::backends::gcp::instances::GcpInstanceData;
use dstack_sdk::backends::gcp::operations::OperationPolling;
use dstack_sdk::backends::{BackendSettings, Compute};
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use serde_json::json;

#[path = "support/fake_gcp.rs"]
mod fake_gcp;
use fake_gcp::*;

const SERVER_ID: &str = "srv-gcp-sweep";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

async fn compute(fake: &FakeServer) -> GcpCompute {
    let pem =
        std::fs::read_to_string(repo_root().join("tests/fixtures/gcp/test-sa-key.pem")).unwrap();
    let key = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": GOOD_EMAIL,
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "universe_domain": "googleapis.com",
    })
    .to_string();
    let config: AnyBackendConfigWithCreds = serde_json::from_value(json!({
        "type": "gcp",
        "project_id": PROJECT,
        "regions": ["us-central1"],
        "creds": {"type": "service_account", "filename": "", "data": key},
    }))
    .unwrap();
    let AnyBackendConfigWithCreds::Gcp(c) = config else {
        panic!("not a gcp config");
    };
    let settings = BackendSettings::new(SERVER_ID)
        .with_endpoints(Endpoints::none().with("gcp", fake.url.clone()))
        .with_retry(Backoff::fast(Duration::from_millis(10), 4));
    GcpCompute::new(c, settings)
        .await
        .unwrap()
        .with_operation_polling(OperationPolling {
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
        })
}

/// Puts an instance straight into the fake (as if created earlier).
fn put_instance(fake: &FakeServer, zone: &str, name: &str, labels: serde_json::Value) {
    let instance = json!({
        "kind": "compute#instance",
        "name": name,
        "status": "RUNNING",
        "zone": format!("https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{zone}"),
        "creationTimestamp": "2024-05-01T10:00:00.000-07:00",
        "labels": labels,
        "networkInterfaces": [{"networkIP": "10.0.0.2", "accessConfigs": [{"natIP": "34.1.2.3"}]}],
    });
    fake.state.lock().unwrap().instances.insert(
        (PROJECT.to_string(), zone.to_string(), name.to_string()),
        (instance, 0),
    );
}

#[tokio::test]
async fn lists_instances_labelled_with_the_server_id_in_every_zone() {
    let fake = start_fake().await;
    put_instance(
        &fake,
        "us-central1-a",
        "ours-0",
        json!({"dstack_server_id": SERVER_ID, "dstack_instance_id": "11111111-1111-1111-1111-111111111111"}),
    );
    put_instance(
        &fake,
        "europe-west4-b",
        "ours-1",
        json!({"dstack_server_id": SERVER_ID}),
    );
    put_instance(
        &fake,
        "us-central1-a",
        "theirs",
        json!({"dstack_server_id": "another-server", "dstack_instance_id": "x"}),
    );
    let c = compute(&fake).await;
    let sweep = c.as_sweep().expect("gcp supports the sweep");
    let mut listed = sweep.list_tagged_instances(SERVER_ID).await.unwrap();
    listed.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let names: Vec<&str> = listed.iter().map(|t| t.instance_id.as_str()).collect();
    assert_eq!(names, ["ours-0", "ours-1"]);
    let t = &listed[0];
    assert_eq!(t.region, "us-central1");
    assert_eq!(t.zone.as_deref(), Some("us-central1-a"));
    assert_eq!(t.state, "RUNNING");
    assert_eq!(
        t.dstack_instance_id.as_deref(),
        Some("11111111-1111-1111-1111-111111111111")
    );
    assert!(t.created_at.is_some());
    assert_eq!(listed[1].region, "europe-west4");
    assert_eq!(listed[1].dstack_instance_id, None);
    let lists = fake
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/aggregated/instances"))
        .count();
    assert_eq!(lists, 1);

    // The listed backend data deletes the instance in its zone.
    let data = GcpInstanceData::parse(t.backend_data.as_deref(), "");
    assert_eq!(data.zone, "us-central1-a");
    c.terminate_instance(&t.instance_id, &t.region, t.backend_data.as_deref())
        .await
        .unwrap();
    let left: Vec<String> = sweep
        .list_tagged_instances(SERVER_ID)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.instance_id)
        .collect();
    assert_eq!(left, ["ours-1"]);
}
