#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The GCP backend against a fake Compute Engine REST server written here (axum on loopback).
//!
//! The fake follows the documented Compute Engine v1 REST API as `google-cloud-compute-v1`
//! calls it: `instances` insert / get / delete / list under
//! `/compute/v1/projects/{project}/zones/{zone}/instances`, zone operations
//! (`PENDING` → `RUNNING` → `DONE` on successive reads, with `error.errors[].code` such as
//! `ZONE_RESOURCE_POOL_EXHAUSTED` for zones told to be out of capacity), `firewalls.insert`
//! with global operations and 409 for an existing rule, `subnetworks.listUsable`,
//! `regions.list` with quotas, and Google error bodies
//! (`{"error":{"code","message","errors":[{"reason"}],"status"}}`).
//!
//! Auth: the service-account flow of `google-cloud-auth` signs a self-signed JWT with the
//! key (no token endpoint round trip); the fake decodes the bearer JWT and accepts only the
//! known `client_email` as issuer (401 otherwise), or answers 403 for a "forbidden" identity.
//! Instances move `PROVISIONING` → `STAGING` → `RUNNING` on successive reads, or vanish.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use dstack_sdk::backends::common::endpoint::Endpoints;
use dstack_sdk::backends::common::provision::{MAX_OFFERS_TRIED, create_first_available};
use dstack_sdk::backends::common::retry::Backoff;
use dstack_sdk::backends::gcp::GcpCompute;
use dstack_sdk::backends::gcp::operations::OperationPolling;
use dstack_sdk::backends::{
    self, BackendError, BackendSettings, Compute, ComputeWithCreateInstance, InstanceConfiguration,
};
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use dstack_sdk::models::jobs::JobProvisioningData;
use dstack_sdk::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};
use dstack_sdk::offers::{Catalog, SharedCatalog};
use serde_json::{Value, json};
use uuid::Uuid;

const PROJECT: &str = "test-project";
const HOST_PROJECT: &str = "host-project";
const GOOD_EMAIL: &str = "dstack@test-project.iam.gserviceaccount.com";
const FORBIDDEN_EMAIL: &str = "viewer@test-project.iam.gserviceaccount.com";
const PROJECT_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIProjectKey project@dstack";
const USER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserKey alice@laptop";
const SERVER_ID: &str = "srv-gcp-test";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// The fake Compute Engine server

/// One request the fake received.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    body: Value,
    /// The JWT issuer of the bearer token.
    issuer: Option<String>,
}

/// An operation error: (code, message).
type OpError = (String, String);

#[derive(Default)]
struct Fake {
    /// (project, zone, name) → (instance, reads so far).
    instances: BTreeMap<(String, String, String), (Value, u32)>,
    /// Operation name → (operation, reads so far, error to finish with).
    operations: BTreeMap<String, (Value, u32, Option<OpError>)>,
    /// Firewall name → rule.
    firewalls: BTreeMap<String, Value>,
    /// Zones where inserts finish with `ZONE_RESOURCE_POOL_EXHAUSTED`.
    exhausted_zones: BTreeSet<String>,
    /// Instances are deleted right after creation (the instance vanishes while provisioning).
    vanish: bool,
    /// Usable subnetworks (`network` URL, `subnetwork` URL) of the listUsable answer.
    usable: Vec<(String, String)>,
    /// Region quotas: (region, metric, limit, usage).
    quotas: Vec<(String, String, f64, f64)>,
    /// Injected answers: (method, path fragment, status) consumed in order when they match.
    inject: VecDeque<(String, String, u16)>,
    log: Vec<Req>,
    counter: u32,
}

type Shared = Arc<Mutex<Fake>>;

fn google_error(code: u16, status: &str, reason: &str, message: &str) -> Response {
    let body = json!({"error": {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": status,
    }});
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(v: &Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn jwt_issuer(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let token = auth.strip_prefix("Bearer ")?;
    let mut parts = token.split('.');
    let header = parts.next()?;
    let payload = parts.next()?;
    let _sig = parts.next()?;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&engine.decode(header).ok()?).ok()?;
    if header["alg"] != "RS256" {
        return None;
    }
    let claims: Value = serde_json::from_slice(&engine.decode(payload).ok()?).ok()?;
    if claims["sub"] != claims["iss"] {
        return None;
    }
    claims["iss"].as_str().map(str::to_string)
}

fn new_operation(
    f: &mut Fake,
    zone: Option<&str>,
    kind: &str,
    target: &str,
    error: Option<(String, String)>,
) -> Value {
    f.counter += 1;
    let name = format!("operation-{}-{kind}", f.counter);
    let mut op = json!({
        "kind": "compute#operation",
        "id": format!("{}", 1000 + f.counter),
        "name": name,
        "operationType": kind,
        "status": "PENDING",
        "progress": 0,
        "targetLink": target,
    });
    if let Some(z) = zone {
        op["zone"] = json!(format!(
            "https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{z}"
        ));
    }
    f.operations.insert(name, (op.clone(), 0, error));
    op
}

async fn handle(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let issuer = jwt_issuer(&headers);
    let mut f = fake.lock().unwrap();
    f.log.push(Req {
        method: method.to_string(),
        path: path.clone(),
        body: body_json.clone(),
        issuer: issuer.clone(),
    });
    match issuer.as_deref() {
        Some(GOOD_EMAIL) => {}
        Some(FORBIDDEN_EMAIL) => {
            return google_error(
                403,
                "PERMISSION_DENIED",
                "forbidden",
                "Required 'compute.regions.list' permission for 'projects/test-project'",
            );
        }
        _ => {
            return google_error(
                401,
                "UNAUTHENTICATED",
                "authError",
                "Request had invalid authentication credentials.",
            );
        }
    }
    if let Some(i) = f
        .inject
        .iter()
        .position(|(m, p, _)| m == method.as_str() && path.contains(p.as_str()))
    {
        let (_, _, code) = f.inject.remove(i).unwrap();
        return google_error(
            code,
            "RESOURCE_EXHAUSTED",
            "rateLimitExceeded",
            "Rate Limit Exceeded",
        );
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let m = method.as_str();
    match (m, segs.as_slice()) {
        // regions.list
        ("GET", ["compute", "v1", "projects", project, "regions"]) => {
            if *project != PROJECT {
                return google_error(404, "NOT_FOUND", "notFound", "The resource was not found");
            }
            let mut regions: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for r in ["us-central1", "europe-west4"] {
                regions.insert(r.to_string(), Vec::new());
            }
            for (r, metric, limit, usage) in &f.quotas {
                regions
                    .entry(r.clone())
                    .or_default()
                    .push(json!({"metric": metric, "limit": limit, "usage": usage}));
            }
            let items: Vec<Value> = regions
                .into_iter()
                .map(|(name, quotas)| json!({"kind": "compute#region", "name": name, "status": "UP", "quotas": quotas}))
                .collect();
            ok(&json!({"kind": "compute#regionList", "items": items}))
        }
        // subnetworks.listUsable
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "aggregated",
                "subnetworks",
                "listUsable",
            ],
        ) => {
            if *project != PROJECT && *project != HOST_PROJECT {
                return google_error(404, "NOT_FOUND", "notFound", "The resource was not found");
            }
            let items: Vec<Value> = f
                .usable
                .iter()
                .filter(|(_, s)| s.contains(&format!("/projects/{project}/")))
                .map(|(n, s)| json!({"network": n, "subnetwork": s, "ipCidrRange": "10.10.0.0/20"}))
                .collect();
            ok(&json!({"kind": "compute#usableSubnetworksAggregatedList", "items": items}))
        }
        // firewalls.insert
        ("POST", ["compute", "v1", "projects", _project, "global", "firewalls"]) => {
            let name = body_json["name"].as_str().unwrap_or_default().to_string();
            if f.firewalls.contains_key(&name) {
                return google_error(
                    409,
                    "ALREADY_EXISTS",
                    "alreadyExists",
                    &format!(
                        "The resource 'projects/{PROJECT}/global/firewalls/{name}' already exists"
                    ),
                );
            }
            f.firewalls.insert(name.clone(), body_json.clone());
            let op = new_operation(&mut f, None, "insert", &name, None);
            ok(&op)
        }
        // global operations
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                _project,
                "global",
                "operations",
                name,
            ],
        ) => advance_operation(&mut f, name),
        // zone operations
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                _project,
                "zones",
                _zone,
                "operations",
                name,
            ],
        ) => advance_operation(&mut f, name),
        // instances.insert
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
            ],
        ) => {
            let name = body_json["name"].as_str().unwrap_or_default().to_string();
            let key = (project.to_string(), zone.to_string(), name.clone());
            if f.instances.contains_key(&key) {
                return google_error(409, "ALREADY_EXISTS", "alreadyExists", "instance exists");
            }
            let error = if f.exhausted_zones.contains(*zone) {
                Some((
                    "ZONE_RESOURCE_POOL_EXHAUSTED".to_string(),
                    format!(
                        "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request."
                    ),
                ))
            } else {
                None
            };
            if error.is_none() && !f.vanish {
                let n = f.counter + 1;
                let mut instance = body_json.clone();
                instance["kind"] = json!("compute#instance");
                instance["status"] = json!("PROVISIONING");
                instance["zone"] = json!(format!(
                    "https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}"
                ));
                if let Some(nics) = instance["networkInterfaces"].as_array_mut() {
                    let nic = &mut nics[0];
                    nic["networkIP"] = json!(format!("10.128.0.{n}"));
                    if let Some(acs) = nic["accessConfigs"].as_array_mut()
                        && let Some(ac) = acs.first_mut()
                    {
                        ac["natIP"] = json!(format!("34.1.2.{n}"));
                    }
                }
                f.instances.insert(key, (instance, 0));
            }
            let op = new_operation(&mut f, Some(zone), "insert", &name, error);
            ok(&op)
        }
        // instances.list
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
            ],
        ) => {
            let items: Vec<Value> = f
                .instances
                .iter()
                .filter(|((p, z, _), _)| p == project && z == zone)
                .map(|(_, (i, _))| i.clone())
                .collect();
            ok(&json!({"kind": "compute#instanceList", "items": items}))
        }
        // instances.get
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
                name,
            ],
        ) => {
            let key = (project.to_string(), zone.to_string(), name.to_string());
            let Some((instance, reads)) = f.instances.get_mut(&key) else {
                return google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!(
                        "The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"
                    ),
                );
            };
            *reads += 1;
            let status = match *reads {
                1 => "PROVISIONING",
                2 => "STAGING",
                _ => "RUNNING",
            };
            instance["status"] = json!(status);
            ok(instance)
        }
        // instances.delete
        (
            "DELETE",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
                name,
            ],
        ) => {
            let key = (project.to_string(), zone.to_string(), name.to_string());
            if f.instances.remove(&key).is_none() {
                return google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!(
                        "The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"
                    ),
                );
            }
            let op = new_operation(&mut f, Some(zone), "delete", name, None);
            ok(&op)
        }
        _ => google_error(
            404,
            "NOT_FOUND",
            "notFound",
            &format!("no route for {m} {path}"),
        ),
    }
}

fn advance_operation(f: &mut Fake, name: &str) -> Response {
    let Some((op, reads, error)) = f.operations.get_mut(name) else {
        return google_error(404, "NOT_FOUND", "notFound", "operation not found");
    };
    *reads += 1;
    let status = match *reads {
        1 => "RUNNING",
        _ => "DONE",
    };
    op["status"] = json!(status);
    if status == "DONE" {
        op["progress"] = json!(100);
        if let Some((code, message)) = error.clone() {
            op["error"] = json!({"errors": [{"code": code, "message": message}]});
            op["httpErrorStatusCode"] = json!(503);
            op["httpErrorMessage"] = json!("SERVICE UNAVAILABLE");
        }
    }
    ok(op)
}

struct FakeServer {
    state: Shared,
    url: String,
}

async fn start_fake() -> FakeServer {
    let state: Shared = Arc::new(Mutex::new(Fake::default()));
    {
        let mut f = state.lock().unwrap();
        let base = "https://www.googleapis.com/compute/v1";
        f.usable = vec![
            (
                format!("{base}/projects/{HOST_PROJECT}/global/networks/my-custom-vpc"),
                format!(
                    "{base}/projects/{HOST_PROJECT}/regions/us-central1/subnetworks/shared-sub-a"
                ),
            ),
            (
                format!("{base}/projects/{HOST_PROJECT}/global/networks/other-vpc"),
                format!("{base}/projects/{HOST_PROJECT}/regions/us-central1/subnetworks/other-sub"),
            ),
            (
                format!("{base}/projects/{PROJECT}/global/networks/my-vpc"),
                format!("{base}/projects/{PROJECT}/regions/us-central1/subnetworks/own-sub"),
            ),
        ];
    }
    let app = Router::new().fallback(handle).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeServer {
        state,
        url: format!("http://{addr}"),
    }
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
    let AnyBackendConfigWithCreds::Gcp(c) = config(email, extra) else {
        panic!("not a gcp config");
    };
    GcpCompute::new(c, fake.settings())
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
    // europe-west4 is not configured, n1-standard-8 (no GPU) and the TPU are not supported.
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
