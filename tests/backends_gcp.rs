#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The GCP backend against the fake Compute Engine REST server of `tests/support/fake_gcp.rs`
//! (axum on loopback; see there for what it follows).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dstack_sdk::backends::common::endpoint::Endpoints;
use dstack_sdk::backends::common::provision::{MAX_OFFERS_TRIED, create_first_available};
use dstack_sdk::backends::common::retry::Backoff;
use dstack_sdk::backends::gcp::GcpCompute;
use dstack_sdk::backends::gcp::operations::OperationPolling;
use dstack_sdk::backends::{
    self, BackendError, BackendSettings, Compute, ComputeWithCreateInstance, InstanceConfiguration,
    PlacementGroupConfig,
};
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use dstack_sdk::models::jobs::JobProvisioningData;
use dstack_sdk::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};
use dstack_sdk::models::resources::{Requirements, ResourcesSpec};
use dstack_sdk::offers::{Catalog, ProviderCatalog, SharedCatalog};
use serde_json::{Value, json};

#[path = "support/fake_gcp.rs"]
mod fake_gcp;
use fake_gcp::*;
use uuid::Uuid;

const PROJECT_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIProjectKey project@dstack";
const USER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserKey alice@laptop";
const SERVER_ID: &str = "srv-gcp-test";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl FakeServer {
    fn log(&self) -> Vec<Req> {
        self.state.lock().unwrap().log.clone()
    }

    fn requests(&self, method: &str, fragment: &str) -> Vec<Req> {
        self.log()
            .into_iter()
            .filter(|r| r.method == method && r.path.contains(fragment))
            .collect()
    }

    fn inserts(&self) -> Vec<Req> {
        self.log()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/instances"))
            .collect()
    }

    fn settings(&self) -> BackendSettings {
        let catalog = Catalog::from_dir(repo_root().join("tests/fixtures/catalog/gcp")).unwrap();
        self.settings_with(catalog)
    }

    fn settings_with(&self, catalog: Catalog) -> BackendSettings {
        BackendSettings::new(SERVER_ID)
            .with_catalog(SharedCatalog::new(catalog))
            .with_endpoints(Endpoints::none().with("gcp", self.url.clone()))
            .with_retry(Backoff::fast(Duration::from_millis(10), 4))
    }
}

fn key_json(email: &str) -> String {
    let pem =
        std::fs::read_to_string(repo_root().join("tests/fixtures/gcp/test-sa-key.pem")).unwrap();
    json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": email,
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "universe_domain": "googleapis.com",
    })
    .to_string()
}

fn config(email: &str, extra: Value) -> AnyBackendConfigWithCreds {
    let mut c = json!({
        "type": "gcp",
        "project_id": PROJECT,
        "regions": ["us-central1"],
        "creds": {"type": "service_account", "filename": "", "data": key_json(email)},
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    serde_json::from_value(c).unwrap()
}

async fn compute(fake: &FakeServer, extra: Value) -> GcpCompute {
    compute_as(fake, GOOD_EMAIL, extra).await
}

async fn compute_as(fake: &FakeServer, email: &str, extra: Value) -> GcpCompute {
    compute_with(fake, email, extra, fake.settings()).await
}

async fn compute_with(
    fake: &FakeServer,
    email: &str,
    extra: Value,
    settings: BackendSettings,
) -> GcpCompute {
    let _ = fake;
    let AnyBackendConfigWithCreds::Gcp(c) = config(email, extra) else {
        panic!("not a gcp config");
    };
    GcpCompute::new(c, settings)
        .await
        .unwrap()
        .with_operation_polling(OperationPolling {
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
        })
}

fn instance_config(name: &str) -> InstanceConfiguration {
    InstanceConfiguration::new(
        "Main",
        Uuid::new_v4(),
        name,
        vec![PROJECT_KEY.to_string(), USER_KEY.to_string()],
    )
    .with_fleet(Uuid::new_v4())
    .with_user("Alice")
}

async fn offer(c: &GcpCompute, name: &str, spot: bool) -> InstanceOfferWithAvailability {
    c.get_offers(None)
        .await
        .unwrap()
        .into_iter()
        .find(|o| o.instance.name == name && o.instance.resources.spot == spot)
        .unwrap_or_else(|| panic!("no offer {name} spot={spot}"))
}

async fn poll_until_running(c: &GcpCompute, jpd: &mut JobProvisioningData) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut polls = 0;
    while jpd.hostname.is_none() {
        assert!(Instant::now() < deadline, "instance never became reachable");
        c.update_provisioning_data(jpd).await.unwrap();
        polls += 1;
    }
    polls
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn offers_merge_zones_filter_regions_and_read_gpu_quotas() {
    let fake = start_fake().await;
    fake.state.lock().unwrap().quotas = vec![
        ("us-central1".into(), "NVIDIA_T4_GPUS".into(), 0.0, 0.0),
        (
            "us-central1".into(),
            "PREEMPTIBLE_NVIDIA_T4_GPUS".into(),
            4.0,
            1.0,
        ),
    ];
    let c = compute(&fake, json!({})).await;
    let offers = c.get_offers(None).await.unwrap();
    let names: Vec<(&str, bool)> = offers
        .iter()
        .map(|o| (o.instance.name.as_str(), o.instance.resources.spot))
        .collect();
    // europe-west4 is not configured, n1-standard-8 (no GPU) is not supported and TPUs are
    // not enabled (`tpu: true`).
    assert_eq!(
        names,
        [
            ("e2-standard-2", false),
            ("e2-standard-2", true),
            ("n1-standard-4", false),
            ("n1-standard-4", true),
            ("g2-standard-4", false),
        ]
    );
    assert!(offers.iter().all(|o| o.region == "us-central1"));
    let e2 = &offers[0];
    assert_eq!(
        e2.availability_zones.as_deref().unwrap(),
        ["us-central1-a", "us-central1-b"]
    );
    assert_eq!(e2.availability, InstanceAvailability::Unknown);
    let t4 = &offers[2];
    assert_eq!(t4.availability_zones.as_ref().unwrap().len(), 3);
    assert_eq!(t4.availability, InstanceAvailability::NoQuota);
    assert_eq!(offers[3].availability, InstanceAvailability::Unknown);
    // A quota metric the region does not report counts as zero (as dstack).
    assert_eq!(offers[4].availability, InstanceAvailability::NoQuota);
    assert_eq!(fake.requests("GET", "/regions").len(), 1);
}

#[tokio::test]
async fn create_poll_terminate_with_labels_firewall_and_metadata() {
    let fake = start_fake().await;
    let c = compute(&fake, json!({"tags": {"team": "ml"}})).await;
    c.validate_credentials().await.unwrap();
    let o = offer(&c, "e2-standard-2", false).await;
    let cfg = instance_config("my-fleet-0");
    let mut jpd = c
        .as_create_instance()
        .unwrap()
        .create_instance(&o, &cfg, None)
        .await
        .unwrap();
    assert_eq!(jpd.hostname, None);
    assert_eq!(jpd.region, "us-central1");
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-central1-a"));
    assert_eq!(jpd.username, "ubuntu");
    assert!(
        jpd.instance_id.starts_with("dstack-main-my-fleet-0-"),
        "{}",
        jpd.instance_id
    );
    let data: Value = serde_json::from_str(jpd.backend_data.as_deref().unwrap()).unwrap();
    assert_eq!(data["zone"], "us-central1-a");

    // The request body.
    let inserts = fake.inserts();
    assert_eq!(inserts.len(), 1);
    let req = &inserts[0];
    assert_eq!(
        req.path,
        format!("/compute/v1/projects/{PROJECT}/zones/us-central1-a/instances")
    );
    let b = &req.body;
    assert_eq!(b["name"], jpd.instance_id.as_str());
    assert_eq!(
        b["machineType"],
        "zones/us-central1-a/machineTypes/e2-standard-2"
    );
    let disk = &b["disks"][0];
    assert_eq!(disk["boot"], true);
    assert_eq!(disk["autoDelete"], true);
    assert_eq!(
        disk["initializeParams"]["sourceImage"],
        "projects/dstack/global/images/dstack-0-14"
    );
    assert_eq!(disk["initializeParams"]["diskSizeGb"], "100");
    assert_eq!(
        disk["initializeParams"]["diskType"],
        "zones/us-central1-a/diskTypes/pd-balanced"
    );
    assert_eq!(b["tags"]["items"], json!(["dstack-runner-instance"]));
    let nic = &b["networkInterfaces"][0];
    assert_eq!(
        nic["network"],
        format!("projects/{PROJECT}/global/networks/default")
    );
    assert!(nic.get("subnetwork").is_none());
    assert_eq!(nic["accessConfigs"][0]["type"], "ONE_TO_ONE_NAT");
    assert!(b["scheduling"].get("provisioningModel").is_none());
    let items = b["metadata"]["items"].as_array().unwrap();
    let meta = |k: &str| {
        items
            .iter()
            .find(|i| i["key"] == k)
            .and_then(|i| i["value"].as_str())
            .unwrap()
            .to_string()
    };
    assert_eq!(
        meta("ssh-keys"),
        format!("ubuntu:{PROJECT_KEY}\nubuntu:{USER_KEY}")
    );
    let user_data = meta("user-data");
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains(USER_KEY));
    // Labels: the ids of common/tags.rs, GCP-valid.
    let labels = b["labels"].as_object().unwrap();
    assert_eq!(labels["owner"], "dstack");
    assert_eq!(labels["dstack_server_id"], SERVER_ID);
    assert_eq!(labels["dstack_project"], "main");
    assert_eq!(labels["dstack_user"], "alice");
    assert_eq!(labels["dstack_name"], "my-fleet-0");
    assert_eq!(labels["dstack_instance_id"], cfg.instance_id.to_string());
    assert_eq!(labels["dstack_fleet_id"], cfg.fleet_id.unwrap().to_string());
    assert_eq!(labels["team"], "ml");
    for (k, v) in labels {
        let v = v.as_str().unwrap();
        assert!(k.len() <= 63 && v.len() <= 63);
        assert!(
            k.chars()
                .chain(v.chars())
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'),
            "{k}={v}"
        );
    }
    // The insert operation was awaited.
    assert!(
        !fake
            .requests("GET", "/zones/us-central1-a/operations/")
            .is_empty()
    );

    // The firewall rule: created once, targeting the runner tag.
    let fw = fake.requests("POST", "/global/firewalls");
    assert_eq!(fw.len(), 1);
    let rule = &fw[0].body;
    assert_eq!(rule["targetTags"], json!(["dstack-runner-instance"]));
    assert_eq!(rule["direction"], "INGRESS");
    assert_eq!(rule["allowed"][0]["IPProtocol"], "tcp");
    assert_eq!(rule["allowed"][0]["ports"], json!(["22"]));
    assert_eq!(rule["sourceRanges"], json!(["0.0.0.0/0"]));
    assert_eq!(
        rule["network"],
        format!("projects/{PROJECT}/global/networks/default")
    );
    // A second instance does not insert the rule again; a new backend object gets a 409 and
    // carries on.
    let mut jpd2 = c
        .create_instance(&o, &instance_config("my-fleet-1"), None)
        .await
        .unwrap();
    assert_eq!(fake.requests("POST", "/global/firewalls").len(), 1);
    let c2 = compute(&fake, json!({})).await;
    let jpd3 = c2
        .create_instance(&o, &instance_config("my-fleet-2"), None)
        .await
        .unwrap();
    assert_eq!(fake.requests("POST", "/global/firewalls").len(), 2);
    assert_eq!(fake.state.lock().unwrap().firewalls.len(), 1);
    assert_ne!(jpd2.instance_id, jpd.instance_id);

    // Polling: PROVISIONING, STAGING, then RUNNING with the external IP.
    let polls = poll_until_running(&c, &mut jpd).await;
    assert_eq!(polls, 3);
    assert!(jpd.hostname.as_deref().unwrap().starts_with("34.1.2."));
    assert!(jpd.internal_ip.as_deref().unwrap().starts_with("10.128.0."));
    poll_until_running(&c, &mut jpd2).await;

    // Terminate: DELETE in the zone; again (already gone) is a success too.
    for j in [&jpd, &jpd2, &jpd3] {
        c.terminate_instance(&j.instance_id, &j.region, j.backend_data.as_deref())
            .await
            .unwrap();
    }
    assert_eq!(
        fake.requests(
            "DELETE",
            &format!("/zones/us-central1-a/instances/{}", jpd.instance_id)
        )
        .len(),
        1
    );
    assert!(fake.state.lock().unwrap().instances.is_empty());
    c.terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
        .await
        .unwrap();
    // Every request carried the service account's signed JWT.
    assert!(
        fake.log()
            .iter()
            .all(|r| r.issuer.as_deref() == Some(GOOD_EMAIL))
    );
}

#[tokio::test]
async fn spot_offers_request_the_spot_provisioning_model_and_gpus_get_accelerators() {
    let fake = start_fake().await;
    let c = compute(
        &fake,
        json!({"vm_service_account": "vm@test-project.iam.gserviceaccount.com"}),
    )
    .await;
    let o = offer(&c, "n1-standard-4", true).await;
    let jpd = c
        .create_instance(&o, &instance_config("spot-0"), None)
        .await
        .unwrap();
    assert!(jpd.instance_type.resources.spot);
    let b = &fake.inserts()[0].body;
    assert_eq!(b["scheduling"]["provisioningModel"], "SPOT");
    assert_eq!(b["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert_eq!(b["scheduling"]["instanceTerminationAction"], "STOP");
    assert_eq!(
        b["guestAccelerators"],
        json!([{"acceleratorType": format!("projects/{PROJECT}/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4"), "acceleratorCount": 1}])
    );
    assert_eq!(
        b["disks"][0]["initializeParams"]["sourceImage"],
        "projects/dstack/global/images/dstack-cuda-0-14"
    );
    assert_eq!(
        b["serviceAccounts"][0]["email"],
        "vm@test-project.iam.gserviceaccount.com"
    );
    // On-demand: no provisioning model.
    let od = offer(&c, "g2-standard-4", false).await;
    c.create_instance(&od, &instance_config("od-0"), None)
        .await
        .unwrap();
    let b = &fake.inserts()[1].body;
    assert!(b["scheduling"].get("provisioningModel").is_none());
    assert_eq!(b["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert!(
        b.get("guestAccelerators").is_none(),
        "L4 is bundled with g2"
    );
}

#[tokio::test]
async fn private_ips_use_no_access_configs_and_the_internal_address() {
    let fake = start_fake().await;
    let c = compute(&fake, json!({"public_ips": false})).await;
    let o = offer(&c, "e2-standard-2", false).await;
    let mut jpd = c
        .create_instance(&o, &instance_config("private-0"), None)
        .await
        .unwrap();
    assert!(!jpd.public_ip_enabled);
    let nic = &fake.inserts()[0].body["networkInterfaces"][0];
    assert!(
        nic.get("accessConfigs")
            .is_none_or(|a| a.as_array().unwrap().is_empty()),
        "{nic}"
    );
    poll_until_running(&c, &mut jpd).await;
    let host = jpd.hostname.clone().unwrap();
    assert!(host.starts_with("10.128.0."), "{host}");
    assert_eq!(jpd.internal_ip.as_deref(), Some(host.as_str()));
}

#[tokio::test]
async fn shared_vpc_uses_the_host_project_and_creates_no_firewall() {
    let fake = start_fake().await;
    let c = compute(
        &fake,
        json!({"vpc_name": "my-custom-vpc", "vpc_project_id": HOST_PROJECT}),
    )
    .await;
    let o = offer(&c, "e2-standard-2", false).await;
    c.create_instance(&o, &instance_config("shared-0"), None)
        .await
        .unwrap();
    c.create_instance(&o, &instance_config("shared-1"), None)
        .await
        .unwrap();
    let lists = fake.requests("GET", "/subnetworks/listUsable");
    assert_eq!(lists.len(), 1, "listUsable is cached");
    assert_eq!(
        lists[0].path,
        format!("/compute/v1/projects/{HOST_PROJECT}/aggregated/subnetworks/listUsable")
    );
    let insert = &fake.inserts()[0];
    // The instance is created in the service project, attached to the host's VPC.
    assert!(
        insert
            .path
            .starts_with(&format!("/compute/v1/projects/{PROJECT}/zones/"))
    );
    let nic = &insert.body["networkInterfaces"][0];
    assert_eq!(
        nic["network"],
        format!("projects/{HOST_PROJECT}/global/networks/my-custom-vpc")
    );
    assert_eq!(
        nic["subnetwork"],
        format!("projects/{HOST_PROJECT}/regions/us-central1/subnetworks/shared-sub-a")
    );
    assert!(fake.requests("POST", "/global/firewalls").is_empty());

    // A VPC with no subnet in the region is a config error.
    let fake2 = start_fake().await;
    let c2 = compute(
        &fake2,
        json!({"vpc_name": "missing-vpc", "vpc_project_id": HOST_PROJECT}),
    )
    .await;
    let err = c2
        .create_instance(&o, &instance_config("x"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err}");
    assert!(fake2.inserts().is_empty());

    // A custom VPC in our own project: subnet from listUsable, firewall on that network;
    // `subnetworks` pins the subnet without listing.
    let fake3 = start_fake().await;
    let c3 = compute(
        &fake3,
        json!({"vpc_name": "my-vpc", "subnetworks": {"us-central1": "pinned"}}),
    )
    .await;
    c3.create_instance(&o, &instance_config("own-0"), None)
        .await
        .unwrap();
    assert!(fake3.requests("GET", "listUsable").is_empty());
    let nic = &fake3.inserts()[0].body["networkInterfaces"][0];
    assert_eq!(
        nic["subnetwork"],
        format!("projects/{PROJECT}/regions/us-central1/subnetworks/pinned")
    );
    assert_eq!(
        fake3.requests("POST", "/global/firewalls")[0].body["network"],
        format!("projects/{PROJECT}/global/networks/my-vpc")
    );
}

#[tokio::test]
async fn exhausted_zone_moves_to_the_next_zone_then_offer_capped_at_25() {
    let fake = start_fake().await;
    {
        let mut f = fake.state.lock().unwrap();
        f.exhausted_zones.insert("us-central1-a".into());
        f.quotas = vec![("us-central1".into(), "NVIDIA_T4_GPUS".into(), 8.0, 0.0)];
    }
    let c = compute(&fake, json!({})).await;
    let o = offer(&c, "n1-standard-4", false).await;
    let jpd = c
        .create_instance(&o, &instance_config("t4-0"), None)
        .await
        .unwrap();
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-central1-b"));
    let zones: Vec<String> = fake
        .inserts()
        .iter()
        .map(|r| r.path.split('/').nth(6).unwrap().to_string())
        .collect();
    assert_eq!(zones, ["us-central1-a", "us-central1-b"]);

    // Every zone exhausted: NoCapacity, and the fall-through stops after 25 offers.
    {
        let mut f = fake.state.lock().unwrap();
        f.exhausted_zones
            .extend(["us-central1-b".to_string(), "us-central1-c".to_string()]);
        f.log.clear();
    }
    let err = c
        .create_instance(&o, &instance_config("t4-1"), None)
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err}");
    assert!(
        err.to_string().contains("ZONE_RESOURCE_POOL_EXHAUSTED"),
        "{err}"
    );
    assert_eq!(fake.inserts().len(), 3);

    fake.state.lock().unwrap().log.clear();
    let mut single = o.clone();
    single.availability_zones = Some(vec!["us-central1-a".into()]);
    let many: Vec<InstanceOfferWithAvailability> = (0..30).map(|_| single.clone()).collect();
    let err = create_first_available(&c, &many, &instance_config("t4-2"), None)
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err}");
    assert_eq!(fake.inserts().len(), MAX_OFFERS_TRIED);

    // The next offer with capacity wins.
    fake.state.lock().unwrap().log.clear();
    let mut ok_offer = single.clone();
    ok_offer.availability_zones = Some(vec!["us-central1-f".into()]);
    let list = vec![single.clone(), single.clone(), ok_offer];
    let (chosen, jpd) = create_first_available(&c, &list, &instance_config("t4-3"), None)
        .await
        .unwrap();
    assert_eq!(
        chosen.availability_zones.as_deref().unwrap(),
        ["us-central1-f"]
    );
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-central1-f"));
    assert_eq!(fake.inserts().len(), 3);
}

#[tokio::test]
async fn bad_credentials_are_invalid_credentials() {
    let fake = start_fake().await;
    // A key the cloud does not know: 401.
    let c = compute_as(&fake, "stranger@other.iam.gserviceaccount.com", json!({})).await;
    let err = c.validate_credentials().await.unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidCredentials { .. }),
        "{err}"
    );
    assert_eq!(
        fake.requests("GET", "/regions").len(),
        1,
        "401 is not retried"
    );
    // A key without permission: 403.
    let c = compute_as(&fake, FORBIDDEN_EMAIL, json!({})).await;
    let err = c.validate_credentials().await.unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidCredentials { .. }),
        "{err}"
    );
    // A malformed key never reaches the cloud.
    let AnyBackendConfigWithCreds::Gcp(mut cfg) = config(GOOD_EMAIL, json!({})) else {
        panic!()
    };
    cfg.creds =
        serde_json::from_value(json!({"type": "service_account", "data": "{not json"})).unwrap();
    let err = GcpCompute::new(cfg, fake.settings()).await.unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidCredentials { .. }),
        "{err}"
    );
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
    // An unknown configured region is a config error.
    let c = compute(&fake, json!({"regions": ["mars-north1"]})).await;
    let err = c.validate_credentials().await.unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err}");
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let fake = start_fake().await;
    let c = compute(&fake, json!({})).await;
    let o = offer(&c, "e2-standard-2", false).await;
    fake.state.lock().unwrap().inject.extend([
        ("POST".to_string(), "/instances".to_string(), 429),
        ("POST".to_string(), "/instances".to_string(), 429),
        // 503 on a GET: the Google client would retry it on its own; its retries are off,
        // so the request count below is exactly ours.
        ("GET".to_string(), "/regions".to_string(), 503),
    ]);
    let jpd = c
        .create_instance(&o, &instance_config("retry-0"), None)
        .await
        .unwrap();
    assert_eq!(fake.inserts().len(), 3);
    assert_eq!(fake.state.lock().unwrap().instances.len(), 1);
    let before = fake.requests("GET", "/regions").len();
    c.validate_credentials().await.unwrap();
    assert_eq!(fake.requests("GET", "/regions").len(), before + 2);
    // Attempts are spent: a retryable cloud error comes back.
    fake.state
        .lock()
        .unwrap()
        .inject
        .extend((0..4).map(|_| ("DELETE".to_string(), "/instances/".to_string(), 503)));
    let err = c
        .terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(fake.requests("DELETE", "/instances/").len(), 4);
}

#[tokio::test]
async fn instance_vanishing_while_provisioning_is_a_clear_error() {
    let fake = start_fake().await;
    fake.state.lock().unwrap().vanish = true;
    let c = compute(&fake, json!({})).await;
    let o = offer(&c, "e2-standard-2", false).await;
    let mut jpd = c
        .create_instance(&o, &instance_config("gone-0"), None)
        .await
        .unwrap();
    let err = c.update_provisioning_data(&mut jpd).await.unwrap_err();
    match &err {
        BackendError::Provisioning { message } => {
            assert!(message.contains("not found"), "{message}");
            assert!(message.contains(&jpd.instance_id), "{message}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(jpd.hostname, None);
    // Terminating it is a success (404).
    c.terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
        .await
        .unwrap();
    // dstack's old rows: no backend_data, the zone in `region`.
    c.terminate_instance("dstack-old-1", "us-central1-a", None)
        .await
        .unwrap();
    assert_eq!(
        fake.requests("DELETE", "/zones/us-central1-a/instances/dstack-old-1")
            .len(),
        1
    );
}

#[tokio::test]
async fn for_config_builds_the_backend_with_the_endpoint_override() {
    let fake = start_fake().await;
    let compute = backends::for_config(&config(GOOD_EMAIL, json!({})), &fake.settings())
        .await
        .unwrap();
    assert_eq!(compute.backend_type().to_string(), "gcp");
    assert!(compute.capabilities().create_instance);
    compute.validate_credentials().await.unwrap();
    assert_eq!(
        fake.requests("GET", "/regions")[0].path,
        format!("/compute/v1/projects/{PROJECT}/regions")
    );
}

// ---------------------------------------------------------------------------------------------
// Cloud TPU

/// gpuhunt's GCP TPU rows: the accelerator is named after the instance type, vendor `google`.
const TPU_CATALOG: &str = "\
instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data
e2-standard-2,us-central1-a,0.067,2,8.0,0,,,False,,,,x86,{}
v5litepod-8,us-central1-a,3.8,224,384.0,1,v5litepod-8,128.0,True,,google,,x86,{}
v5litepod-8,us-central1-a,9.6,224,384.0,1,v5litepod-8,128.0,False,,google,,x86,{}
v5litepod-8,us-central1-b,9.6,224,384.0,1,v5litepod-8,128.0,False,,google,,x86,{}
v4-8,us-central1-b,12.9,240,407.0,1,v4-8,128.0,False,,google,,x86,{}
v5litepod-16,us-central1-a,19.2,224,384.0,1,v5litepod-16,256.0,False,,google,,x86,{}
v6e-8,europe-west4-a,21.6,180,1440.0,1,v6e-8,256.0,False,,google,,x86,{}
";

async fn tpu_compute(fake: &FakeServer, extra: Value) -> GcpCompute {
    let provider =
        ProviderCatalog::from_csv("gcp", "test", TPU_CATALOG.as_bytes(), "test").unwrap();
    let settings = fake.settings_with(Catalog::from_providers([provider]));
    let mut extra = extra;
    extra["tpu"] = json!(true);
    compute_with(fake, GOOD_EMAIL, extra, settings).await
}

impl FakeServer {
    fn tpu_creates(&self) -> Vec<Req> {
        self.log()
            .into_iter()
            .filter(|r| {
                r.method == "POST" && r.path.starts_with("/v2/") && r.path.ends_with("/nodes")
            })
            .collect()
    }
}

fn tpu_zones(fake: &FakeServer) -> Vec<String> {
    fake.tpu_creates()
        .iter()
        .map(|r| r.path.split('/').nth(5).unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn tpu_offers_need_tpu_true_and_are_single_host_only() {
    let fake = start_fake().await;
    let provider =
        ProviderCatalog::from_csv("gcp", "test", TPU_CATALOG.as_bytes(), "test").unwrap();
    let settings = fake.settings_with(Catalog::from_providers([provider]));
    let off = compute_with(&fake, GOOD_EMAIL, json!({}), settings).await;
    let names: Vec<String> = off
        .get_offers(None)
        .await
        .unwrap()
        .iter()
        .map(|o| o.instance.name.clone())
        .collect();
    assert_eq!(names, ["e2-standard-2"], "TPUs are opt-in (tpu: true)");

    let c = tpu_compute(&fake, json!({"regions": ["us-central1", "europe-west4"]})).await;
    let offers = c.get_offers(None).await.unwrap();
    let got: Vec<(&str, bool, &str)> = offers
        .iter()
        .map(|o| {
            (
                o.instance.name.as_str(),
                o.instance.resources.spot,
                o.region.as_str(),
            )
        })
        .collect();
    // v4 and multi-host slices (more than 8 cores) are not offered.
    assert_eq!(
        got,
        [
            ("e2-standard-2", false, "us-central1"),
            ("v5litepod-8", true, "us-central1"),
            ("v5litepod-8", false, "us-central1"),
            ("v6e-8", false, "europe-west4"),
        ]
    );
    let tpu = &offers[2];
    assert_eq!(
        tpu.availability_zones.as_deref().unwrap(),
        ["us-central1-a", "us-central1-b"]
    );
    assert_eq!(tpu.availability, InstanceAvailability::Unknown);
}

#[tokio::test]
async fn tpu_node_create_poll_address_terminate() {
    let fake = start_fake().await;
    let c = tpu_compute(
        &fake,
        json!({"tags": {"team": "ml"}, "vm_service_account": "vm@test-project.iam.gserviceaccount.com"}),
    )
    .await;
    let o = offer(&c, "v5litepod-8", false).await;
    let cfg = instance_config("tpu-0");
    let mut jpd = c.create_instance(&o, &cfg, None).await.unwrap();
    assert!(
        jpd.instance_id.starts_with("dstack-main-tpu-0-"),
        "{}",
        jpd.instance_id
    );
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-central1-a"));
    assert_eq!(jpd.region, "us-central1");
    assert_eq!(jpd.username, "ubuntu");
    assert_eq!(jpd.hostname, None);
    let data: Value = serde_json::from_str(jpd.backend_data.as_deref().unwrap()).unwrap();
    assert_eq!(data["is_tpu"], true);
    assert_eq!(data["zone"], "us-central1-a");

    // No Compute Engine instance; one TPU node created with nodeId = the instance id.
    assert!(fake.inserts().is_empty());
    let creates = fake.tpu_creates();
    assert_eq!(creates.len(), 1);
    assert_eq!(
        creates[0].path,
        format!("/v2/projects/{PROJECT}/locations/us-central1-a/nodes")
    );
    assert_eq!(
        creates[0].issuer.as_deref(),
        Some(GOOD_EMAIL),
        "same credentials"
    );
    assert!(fake.state.lock().unwrap().tpu_nodes.contains_key(&(
        PROJECT.to_string(),
        "us-central1-a".to_string(),
        jpd.instance_id.clone()
    )));
    let b = &creates[0].body;
    assert_eq!(b["acceleratorType"], "v5litepod-8");
    assert_eq!(b["runtimeVersion"], "v2-alpha-tpuv5-lite");
    assert_eq!(
        b["networkConfig"],
        json!({"network": format!("projects/{PROJECT}/global/networks/default"), "enableExternalIps": true})
    );
    assert!(b.get("schedulingConfig").is_none());
    assert_eq!(
        b["metadata"]["ssh-keys"],
        format!("ubuntu:{PROJECT_KEY}\nubuntu:{USER_KEY}")
    );
    let script = b["metadata"]["startup-script"].as_str().unwrap();
    assert!(script.starts_with("#! /bin/bash\n"), "{script}");
    assert!(script.contains("PJRT_DEVICE=\"TPU\""), "{script}");
    assert!(script.contains("DSTACK_BACKEND=\"gcp\""), "{script}");
    assert!(
        script.contains("systemctl daemon-reload && systemctl enable --now dstack-agent.service")
    );
    assert_eq!(b["labels"]["owner"], "dstack");
    assert_eq!(b["labels"]["dstack_name"], "tpu-0");
    assert_eq!(b["labels"]["team"], "ml");
    assert_eq!(b["tags"], json!(["dstack-runner-instance"]));
    assert_eq!(
        b["serviceAccount"],
        json!({"email": "vm@test-project.iam.gserviceaccount.com", "scope": ["https://www.googleapis.com/auth/cloud-platform"]})
    );
    // The operation was awaited; the SSH firewall rule exists.
    assert!(
        !fake
            .requests(
                "GET",
                "/v2/projects/test-project/locations/us-central1-a/operations/"
            )
            .is_empty()
    );
    assert_eq!(fake.requests("POST", "/global/firewalls").len(), 1);

    // CREATING, then READY with the external address of the first network endpoint.
    let polls = poll_until_running(&c, &mut jpd).await;
    assert_eq!(polls, 2);
    assert!(
        jpd.hostname.as_deref().unwrap().starts_with("35.1.2."),
        "{:?}",
        jpd.hostname
    );
    assert!(jpd.internal_ip.as_deref().unwrap().starts_with("10.130.0."));

    // Terminate: DELETE the node; again (404) is a success.
    let node_path = format!(
        "/v2/projects/{PROJECT}/locations/us-central1-a/nodes/{}",
        jpd.instance_id
    );
    for _ in 0..2 {
        c.terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
            .await
            .unwrap();
    }
    assert_eq!(fake.requests("DELETE", &node_path).len(), 2);
    assert!(fake.state.lock().unwrap().tpu_nodes.is_empty());
    // Polling a deleted node is a provisioning error.
    let err = c.update_provisioning_data(&mut jpd).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Provisioning { message } if message.contains("not found")),
        "{err}"
    );
}

#[tokio::test]
async fn tpu_spot_node_is_preemptible_and_private_ips_use_the_internal_address() {
    let fake = start_fake().await;
    let c = tpu_compute(&fake, json!({"public_ips": false})).await;
    let o = offer(&c, "v5litepod-8", true).await;
    let mut jpd = c
        .create_instance(&o, &instance_config("tpu-spot"), None)
        .await
        .unwrap();
    assert!(!jpd.public_ip_enabled);
    let b = &fake.tpu_creates()[0].body;
    assert_eq!(b["schedulingConfig"], json!({"preemptible": true}));
    assert_eq!(b["networkConfig"]["enableExternalIps"], false);
    poll_until_running(&c, &mut jpd).await;
    let host = jpd.hostname.clone().unwrap();
    assert!(host.starts_with("10.130.0."), "{host}");
    assert_eq!(jpd.internal_ip.as_deref(), Some(host.as_str()));
}

#[tokio::test]
async fn tpu_capacity_error_falls_through_to_the_next_zone() {
    let fake = start_fake().await;
    fake.state
        .lock()
        .unwrap()
        .tpu_exhausted_zones
        .insert("us-central1-a".into());
    let c = tpu_compute(&fake, json!({})).await;
    let o = offer(&c, "v5litepod-8", false).await;
    let jpd = c
        .create_instance(&o, &instance_config("tpu-1"), None)
        .await
        .unwrap();
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-central1-b"));
    assert_eq!(tpu_zones(&fake), ["us-central1-a", "us-central1-b"]);
    let data: Value = serde_json::from_str(jpd.backend_data.as_deref().unwrap()).unwrap();
    assert_eq!(data["zone"], "us-central1-b");

    // Every zone out of capacity: NoCapacity naming the zones, so the next offer is tried.
    {
        let mut f = fake.state.lock().unwrap();
        f.tpu_exhausted_zones.insert("us-central1-b".into());
        f.log.clear();
    }
    let err = c
        .create_instance(&o, &instance_config("tpu-2"), None)
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("us-central1-a") && text.contains("us-central1-b"),
        "{text}"
    );
    assert!(text.contains("no more capacity"), "{text}");
    assert_eq!(tpu_zones(&fake).len(), 2);

    // A zone without the accelerator type (404) is skipped too.
    {
        let mut f = fake.state.lock().unwrap();
        f.tpu_exhausted_zones.clear();
        f.tpu_create_errors.insert(
            "us-central1-a".into(),
            (
                404,
                "NOT_FOUND".into(),
                "Accelerator type v5litepod-8 not found in us-central1-a".into(),
            ),
        );
        f.log.clear();
    }
    let jpd = c
        .create_instance(&o, &instance_config("tpu-3"), None)
        .await
        .unwrap();
    assert_eq!(jpd.availability_zone.as_deref(), Some("us-central1-b"));
}

#[tokio::test]
async fn tpu_quota_invalid_zone_and_disabled_api_errors_surface_clearly() {
    let fake = start_fake().await;
    let quota = "Quota limit 'TPUV5sLitepodPerProjectPerZoneForTPUAPI' has been exceeded. Limit: 0 in zone us-central1-a.";
    {
        let mut f = fake.state.lock().unwrap();
        for z in ["us-central1-a", "us-central1-b"] {
            f.tpu_create_errors
                .insert(z.into(), (429, "RESOURCE_EXHAUSTED".into(), quota.into()));
        }
    }
    let c = tpu_compute(&fake, json!({})).await;
    let o = offer(&c, "v5litepod-8", false).await;
    let err = c
        .create_instance(&o, &instance_config("tpu-q"), None)
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err}");
    assert!(err.to_string().contains("Quota limit"), "{err}");
    // A quota 429 is not a rate limit: no retries, one request per zone.
    assert_eq!(tpu_zones(&fake), ["us-central1-a", "us-central1-b"]);

    // An invalid zone is a request error: returned at once, no other zone tried.
    {
        let mut f = fake.state.lock().unwrap();
        f.tpu_create_errors.clear();
        f.tpu_create_errors.insert(
            "us-central1-x".into(),
            (
                400,
                "INVALID_ARGUMENT".into(),
                "Invalid value for field 'parent': 'projects/test-project/locations/us-central1-x'. Location us-central1-x is not found or access is unauthorized.".into(),
            ),
        );
        f.log.clear();
    }
    let mut bad = o.clone();
    bad.availability_zones = Some(vec!["us-central1-x".into(), "us-central1-b".into()]);
    let err = c
        .create_instance(&bad, &instance_config("tpu-x"), None)
        .await
        .unwrap_err();
    match &err {
        BackendError::Cloud {
            code,
            message,
            retryable,
            ..
        } => {
            assert!(code.starts_with("400"), "{err}");
            assert!(message.contains("us-central1-x"), "{err}");
            assert!(!retryable);
        }
        other => panic!("{other}"),
    }
    assert_eq!(tpu_zones(&fake), ["us-central1-x"]);

    // The Cloud TPU API disabled in the project: a config error that says so.
    {
        let mut f = fake.state.lock().unwrap();
        f.tpu_create_errors.insert(
            "us-central1-a".into(),
            (
                403,
                "PERMISSION_DENIED".into(),
                "Cloud TPU API has not been used in project test-project before or it is disabled."
                    .into(),
            ),
        );
    }
    let err = c
        .create_instance(&o, &instance_config("tpu-d"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Config { message } if message.contains("Cloud TPU API is not enabled")),
        "{err}"
    );
}

#[tokio::test]
async fn tpu_delete_of_a_missing_node_is_a_success() {
    let fake = start_fake().await;
    let c = tpu_compute(&fake, json!({})).await;
    // dstack's own backend_data for TPU rows.
    c.terminate_instance(
        "dstack-main-gone-12345678",
        "us-central1",
        Some(r#"{"is_tpu": true, "zone": "us-central1-b"}"#),
    )
    .await
    .unwrap();
    assert_eq!(
        fake.requests(
            "DELETE",
            &format!(
                "/v2/projects/{PROJECT}/locations/us-central1-b/nodes/dstack-main-gone-12345678"
            )
        )
        .len(),
        1
    );
    assert!(fake.requests("DELETE", "/compute/v1/").is_empty());
    // A 5xx on delete is retried, then surfaces as retryable.
    fake.state
        .lock()
        .unwrap()
        .inject
        .extend((0..4).map(|_| ("DELETE".to_string(), "/nodes/".to_string(), 503)));
    let err = c
        .terminate_instance(
            "n",
            "us-central1",
            Some(r#"{"is_tpu": true, "zone": "us-central1-b"}"#),
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Placement groups

#[tokio::test]
async fn placement_group_is_a_collocated_resource_policy() {
    let fake = start_fake().await;
    let c = compute(&fake, json!({})).await;
    assert!(c.capabilities().placement_groups);
    let pgs = c.as_placement_groups().unwrap();
    let pg_config = PlacementGroupConfig {
        name: "my-cluster-pg".into(),
        project_name: "main".into(),
        region: "us-central1".into(),
        fleet_id: Some(Uuid::new_v4()),
    };
    let pg = pgs.create_placement_group(&pg_config).await.unwrap();
    assert_eq!(pg.name, "my-cluster-pg");
    assert_eq!(pg.region, "us-central1");
    assert_eq!(pg.backend.to_string(), "gcp");
    let posts = fake.requests("POST", "/resourcePolicies");
    assert_eq!(posts.len(), 1);
    assert_eq!(
        posts[0].path,
        format!("/compute/v1/projects/{PROJECT}/regions/us-central1/resourcePolicies")
    );
    assert_eq!(
        posts[0].body,
        json!({
            "name": "my-cluster-pg",
            "region": "us-central1",
            "groupPlacementPolicy": {"availabilityDomainCount": 1, "collocation": "COLLOCATED"},
        })
    );
    assert!(
        !fake
            .requests("GET", "/regions/us-central1/operations/")
            .is_empty()
    );
    // Creating it again (409) reuses it.
    let again = pgs.create_placement_group(&pg_config).await.unwrap();
    assert_eq!(again, pg);

    // Suitability: the same region.
    let o = offer(&c, "n1-standard-4", false).await;
    assert!(pgs.is_suitable_placement_group(&pg, &o));
    let mut elsewhere = o.clone();
    elsewhere.region = "europe-west4".into();
    assert!(!pgs.is_suitable_placement_group(&pg, &elsewhere));

    // Instances in the group carry the policy.
    let jpd = c
        .create_instance(&o, &instance_config("cluster-0"), Some(&pg))
        .await
        .unwrap();
    assert_eq!(
        fake.inserts()[0].body["resourcePolicies"],
        json!([format!(
            "projects/{PROJECT}/regions/us-central1/resourcePolicies/my-cluster-pg"
        )])
    );
    // Without a group: no policy.
    c.create_instance(&o, &instance_config("solo-0"), None)
        .await
        .unwrap();
    assert!(
        fake.inserts()[1]
            .body
            .get("resourcePolicies")
            .is_none_or(|p| p.as_array().unwrap().is_empty())
    );

    // Deleting while an instance uses it: not yet (retry later).
    let err = pgs.delete_placement_group(&pg).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::NotYetTerminated { message } if message.contains("in use")),
        "{err}"
    );
    c.terminate_instance(&jpd.instance_id, &jpd.region, jpd.backend_data.as_deref())
        .await
        .unwrap();
    pgs.delete_placement_group(&pg).await.unwrap();
    assert!(fake.state.lock().unwrap().resource_policies.is_empty());
    // Already gone (404): a success.
    pgs.delete_placement_group(&pg).await.unwrap();
    assert_eq!(
        fake.requests(
            "DELETE",
            &format!(
                "/compute/v1/projects/{PROJECT}/regions/us-central1/resourcePolicies/my-cluster-pg"
            )
        )
        .len(),
        3
    );
}

// ---------------------------------------------------------------------------------------------
// Reservations

fn t4_reservation(zone: &str, in_use: u32) -> Value {
    json!({
        "kind": "compute#reservation",
        "name": "my-res",
        "zone": format!("https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{zone}"),
        "selfLink": format!("https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{zone}/reservations/my-res"),
        "status": "READY",
        "specificReservationRequired": true,
        "specificReservation": {
            "instanceProperties": {
                "machineType": "n1-standard-4",
                "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}],
                "localSsds": [{"diskSizeGb": "375", "interface": "NVME"}],
            },
            "count": "2",
            "inUseCount": in_use.to_string(),
            "assuredCount": "2",
        },
        "resourcePolicies": {
            "placement": format!("https://www.googleapis.com/compute/v1/projects/{PROJECT}/regions/us-central1/resourcePolicies/res-placement"),
        },
    })
}

#[tokio::test]
async fn reservation_narrows_offers_and_sets_the_affinity() {
    let fake = start_fake().await;
    {
        let mut f = fake.state.lock().unwrap();
        f.quotas = vec![("us-central1".into(), "NVIDIA_T4_GPUS".into(), 8.0, 0.0)];
        f.reservations = vec![
            (
                PROJECT.into(),
                "us-central1-b".into(),
                t4_reservation("us-central1-b", 0),
            ),
            (
                PROJECT.into(),
                "us-central1-c".into(),
                t4_reservation("us-central1-c", 2),
            ),
        ];
    }
    let c = compute(&fake, json!({})).await;
    assert!(c.capabilities().reservation);
    let mut req = Requirements::new(ResourcesSpec::unconstrained());
    req.reservation = Some("my-res".into());
    let offers = c.get_offers(Some(&req)).await.unwrap();
    // Only the reserved machine type, on-demand, in the zone with free capacity.
    let got: Vec<(&str, bool)> = offers
        .iter()
        .map(|o| (o.instance.name.as_str(), o.instance.resources.spot))
        .collect();
    assert_eq!(got, [("n1-standard-4", false)]);
    assert_eq!(
        offers[0].availability_zones.as_deref().unwrap(),
        ["us-central1-b"]
    );
    assert_eq!(offers[0].availability, InstanceAvailability::Unknown);
    let lists = fake.requests("GET", "/aggregated/reservations");
    assert_eq!(lists.len(), 1);
    assert_eq!(
        lists[0].path,
        format!("/compute/v1/projects/{PROJECT}/aggregated/reservations")
    );

    // The instance consumes the reservation.
    let cfg = instance_config("res-0").with_reservation("my-res");
    let mut o = offers[0].clone();
    o.availability_zones = Some(vec!["us-central1-a".into(), "us-central1-b".into()]);
    let jpd = c.create_instance(&o, &cfg, None).await.unwrap();
    assert_eq!(
        jpd.availability_zone.as_deref(),
        Some("us-central1-b"),
        "zone a has no reservation"
    );
    assert_eq!(jpd.reservation.as_deref(), Some("my-res"));
    assert_eq!(
        fake.requests("GET", "/aggregated/reservations").len(),
        1,
        "cached"
    );
    let inserts = fake.inserts();
    assert_eq!(inserts.len(), 1);
    let b = &inserts[0].body;
    assert_eq!(
        b["reservationAffinity"],
        json!({
            "consumeReservationType": "SPECIFIC_RESERVATION",
            "key": "compute.googleapis.com/reservation-name",
            "values": [format!("projects/{PROJECT}/reservations/my-res")],
        })
    );
    assert_eq!(
        b["resourcePolicies"],
        json!([format!(
            "https://www.googleapis.com/compute/v1/projects/{PROJECT}/regions/us-central1/resourcePolicies/res-placement"
        )])
    );
    let scratch = &b["disks"][1];
    assert_eq!(scratch["type"], "SCRATCH");
    assert_eq!(scratch["interface"], "NVME");
    assert_eq!(
        scratch["initializeParams"]["diskType"],
        "zones/us-central1-b/diskTypes/local-ssd"
    );
    assert_eq!(scratch["initializeParams"]["diskSizeGb"], "375");

    // All reserved zones full: the matching zones stay, not available.
    {
        let mut f = fake.state.lock().unwrap();
        f.reservations = vec![(
            PROJECT.into(),
            "us-central1-c".into(),
            t4_reservation("us-central1-c", 2),
        )];
    }
    let c2 = compute(&fake, json!({})).await;
    let offers = c2.get_offers(Some(&req)).await.unwrap();
    assert_eq!(offers.len(), 1);
    assert_eq!(
        offers[0].availability_zones.as_deref().unwrap(),
        ["us-central1-c"]
    );
    assert_eq!(offers[0].availability, InstanceAvailability::NotAvailable);
    // An unknown reservation: no offers.
    req.reservation = Some("other-res".into());
    assert!(c2.get_offers(Some(&req)).await.unwrap().is_empty());
}
