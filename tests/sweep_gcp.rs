#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The GCP backend's sweep listing (`instances.aggregatedList` by the `dstack_server_id`
//! label, and TPU v2 `nodes.list` in the catalog's TPU zones) against the fake Compute Engine
//! and Cloud TPU server of `tests/support/fake_gcp.rs`.

use std::path::PathBuf;
use std::time::Duration;

use dstack_sdk::backends::common::endpoint::Endpoints;
use dstack_sdk::backends::common::retry::Backoff;
use dstack_sdk::backends::compute::TaggedKind;
use dstack_sdk::backends::gcp::GcpCompute;
use dstack_sdk::backends::gcp::instances::GcpInstanceData;
use dstack_sdk::backends::gcp::operations::OperationPolling;
use dstack_sdk::backends::{BackendSettings, Compute, InstanceConfiguration};
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use dstack_sdk::offers::{Catalog, ProviderCatalog, SharedCatalog};
use serde_json::{Value, json};
use uuid::Uuid;

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
    compute_with(fake, json!({}), None).await
}

/// The compute with `extra` config keys and, when given, a catalog.
async fn compute_with(fake: &FakeServer, extra: Value, catalog: Option<Catalog>) -> GcpCompute {
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
    let mut config = json!({
        "type": "gcp",
        "project_id": PROJECT,
        "regions": ["us-central1"],
        "creds": {"type": "service_account", "filename": "", "data": key},
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let config: AnyBackendConfigWithCreds = serde_json::from_value(config).unwrap();
    let AnyBackendConfigWithCreds::Gcp(c) = config else {
        panic!("not a gcp config");
    };
    let mut settings = BackendSettings::new(SERVER_ID)
        .with_endpoints(Endpoints::none().with("gcp", fake.url.clone()))
        .with_retry(Backoff::fast(Duration::from_millis(10), 4));
    if let Some(catalog) = catalog {
        settings = settings.with_catalog(SharedCatalog::new(catalog));
    }
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

/// TPU rows in two zones of the configured region and one zone elsewhere.
const TPU_CATALOG: &str = "\
instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data
e2-standard-2,us-central1-c,0.067,2,8.0,0,,,False,,,,x86,{}
v5litepod-8,us-central1-a,9.6,224,384.0,1,v5litepod-8,128.0,False,,google,,x86,{}
v5litepod-8,us-central1-b,9.6,224,384.0,1,v5litepod-8,128.0,False,,google,,x86,{}
v6e-8,europe-west4-a,21.6,180,1440.0,1,v6e-8,256.0,False,,google,,x86,{}
";

fn tpu_catalog() -> Catalog {
    let provider =
        ProviderCatalog::from_csv("gcp", "test", TPU_CATALOG.as_bytes(), "test").unwrap();
    Catalog::from_providers([provider])
}

/// Puts a TPU node straight into the fake (as if created earlier).
fn put_tpu_node(fake: &FakeServer, zone: &str, id: &str, state: &str, labels: Value) {
    let node = json!({
        "name": format!("projects/{PROJECT}/locations/{zone}/nodes/{id}"),
        "acceleratorType": "v5litepod-8",
        "state": state,
        "createTime": "2024-05-01T17:00:00.000000Z",
        "labels": labels,
        "networkConfig": {"enableExternalIps": true},
    });
    fake.state.lock().unwrap().tpu_nodes.insert(
        (PROJECT.to_string(), zone.to_string(), id.to_string()),
        (node, 0),
    );
}

fn tpu_lists(fake: &FakeServer) -> Vec<String> {
    fake.state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/v2/") && r.path.ends_with("/nodes"))
        .map(|r| r.path.clone())
        .collect()
}

#[tokio::test]
async fn lists_tpu_nodes_labelled_with_the_server_id_in_the_catalog_zones() {
    let fake = start_fake().await;
    fake.state.lock().unwrap().tpu_page_size = Some(1);
    let ours = json!({"dstack_server_id": SERVER_ID, "dstack_instance_id": "22222222-2222-2222-2222-222222222222"});
    put_tpu_node(&fake, "us-central1-a", "tpu-ours-0", "READY", ours.clone());
    put_tpu_node(
        &fake,
        "us-central1-a",
        "tpu-ours-1",
        "PREEMPTED",
        ours.clone(),
    );
    put_tpu_node(
        &fake,
        "us-central1-b",
        "tpu-deleting",
        "DELETING",
        ours.clone(),
    );
    put_tpu_node(
        &fake,
        "us-central1-b",
        "tpu-theirs",
        "READY",
        json!({"dstack_server_id": "another-server"}),
    );
    // Not in the configured regions: never looked at.
    put_tpu_node(&fake, "europe-west4-a", "tpu-elsewhere", "READY", ours);
    put_instance(
        &fake,
        "us-central1-a",
        "vm-ours",
        json!({"dstack_server_id": SERVER_ID}),
    );
    // `tpu` is off now: nodes created while it was on are still listed.
    let c = compute_with(&fake, json!({}), Some(tpu_catalog())).await;
    let sweep = c.as_sweep().unwrap();
    let mut listed = sweep.list_tagged_instances(SERVER_ID).await.unwrap();
    listed.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let ids: Vec<(&str, TaggedKind)> = listed
        .iter()
        .map(|t| (t.instance_id.as_str(), t.kind))
        .collect();
    assert_eq!(
        ids,
        [
            ("tpu-ours-0", TaggedKind::TpuNode),
            ("tpu-ours-1", TaggedKind::TpuNode),
            ("vm-ours", TaggedKind::Vm),
        ]
    );
    let t = &listed[0];
    assert_eq!(t.region, "us-central1");
    assert_eq!(t.zone.as_deref(), Some("us-central1-a"));
    assert_eq!(t.state, "READY");
    assert_eq!(
        t.dstack_instance_id.as_deref(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    assert_eq!(
        t.created_at.unwrap().to_rfc3339(),
        "2024-05-01T17:00:00+00:00"
    );
    // Both pages of us-central1-a (one node each, plus the last), then us-central1-b.
    let lists = tpu_lists(&fake);
    let a = format!("/v2/projects/{PROJECT}/locations/us-central1-a/nodes");
    let b = format!("/v2/projects/{PROJECT}/locations/us-central1-b/nodes");
    assert_eq!(lists, [a.clone(), a, b.clone(), b]);

    // The listed data deletes the node through the TPU API.
    sweep.delete_tagged(t).await.unwrap();
    assert!(!fake.state.lock().unwrap().tpu_nodes.contains_key(&(
        PROJECT.to_string(),
        "us-central1-a".to_string(),
        "tpu-ours-0".to_string()
    )));
    let left: Vec<String> = sweep
        .list_tagged_instances(SERVER_ID)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.instance_id)
        .collect();
    assert_eq!(left, ["vm-ours", "tpu-ours-1"]);
}

#[tokio::test]
async fn a_disabled_tpu_api_does_not_fail_the_listing() {
    let fake = start_fake().await;
    put_instance(
        &fake,
        "us-central1-a",
        "vm-ours",
        json!({"dstack_server_id": SERVER_ID}),
    );
    fake.state.lock().unwrap().tpu_list_errors.insert(
        "us-central1-a".into(),
        (
            403,
            "PERMISSION_DENIED".into(),
            "Cloud TPU API has not been used in project test-project before or it is disabled."
                .into(),
        ),
    );
    let c = compute_with(&fake, json!({}), Some(tpu_catalog())).await;
    let listed = c
        .as_sweep()
        .unwrap()
        .list_tagged_instances(SERVER_ID)
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|t| t.instance_id.as_str()).collect();
    assert_eq!(ids, ["vm-ours"]);
    // The first 403 ends the TPU listing: us-central1-b is not asked.
    assert_eq!(
        tpu_lists(&fake),
        [format!(
            "/v2/projects/{PROJECT}/locations/us-central1-a/nodes"
        )]
    );

    // A zone failing otherwise is skipped; the others are still listed.
    {
        let mut f = fake.state.lock().unwrap();
        f.tpu_list_errors.clear();
        f.tpu_list_errors.insert(
            "us-central1-a".into(),
            (400, "INVALID_ARGUMENT".into(), "bad zone".into()),
        );
    }
    put_tpu_node(
        &fake,
        "us-central1-b",
        "tpu-ours",
        "READY",
        json!({"dstack_server_id": SERVER_ID}),
    );
    let mut ids: Vec<String> = c
        .as_sweep()
        .unwrap()
        .list_tagged_instances(SERVER_ID)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.instance_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["tpu-ours", "vm-ours"]);
}

#[tokio::test]
async fn tpu_nodes_are_created_with_the_sweep_labels() {
    let fake = start_fake().await;
    let c = compute_with(&fake, json!({"tpu": true}), Some(tpu_catalog())).await;
    let offers = c.get_offers(None).await.unwrap();
    let offer = offers
        .iter()
        .find(|o| o.instance.name == "v5litepod-8")
        .expect("a TPU offer");
    let instance_id = Uuid::new_v4();
    let cfg = InstanceConfiguration::new(
        "main",
        instance_id,
        "tpu-0",
        vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0 test".to_string()],
    );
    let jpd = c
        .as_create_instance()
        .unwrap()
        .create_instance(offer, &cfg, None)
        .await
        .unwrap();
    let listed = c
        .as_sweep()
        .unwrap()
        .list_tagged_instances(SERVER_ID)
        .await
        .unwrap();
    let t = listed
        .iter()
        .find(|t| t.instance_id == jpd.instance_id)
        .expect("the new TPU node is listed");
    assert_eq!(t.kind, TaggedKind::TpuNode);
    assert_eq!(
        t.dstack_instance_id.as_deref(),
        Some(instance_id.to_string().as_str())
    );
    let data = GcpInstanceData::parse(t.backend_data.as_deref(), "");
    assert!(data.is_tpu);
    assert_eq!(Some(data.zone), jpd.availability_zone);
}
