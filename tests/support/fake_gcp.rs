//! A fake Compute Engine v1 REST server (axum on loopback), shared by `tests/backends_gcp.rs`
//! and the standalone `fake_gcp` example that the CLI end-to-end test
//! (`tests/oracle/test_cli_cloud_gcp.py`) starts.
//!
//! It follows the documented API as `google-cloud-compute-v1` calls it: `instances` insert /
//! get / delete / list under `/compute/v1/projects/{project}/zones/{zone}/instances`, zone
//! operations (`PENDING` → `RUNNING` → `DONE` on successive reads, with `error.errors[].code`
//! such as `ZONE_RESOURCE_POOL_EXHAUSTED` for zones told to be out of capacity),
//! `firewalls.insert` with global operations and 409 for an existing rule,
//! `subnetworks.listUsable`, `regions.list` with quotas, and Google error bodies
//! (`{"error":{"code","message","errors":[{"reason"}],"status"}}`).
//!
//! Beyond the instance calls: `resourcePolicies` insert / get / delete with region operations
//! (a policy still named by an instance's `resourcePolicies` answers 400 "is already being
//! used by"), `reservations.aggregatedList` (the `name = "…"` of the filter picks the
//! reservations of [`Fake::reservations`]), and the Cloud TPU v2 API under
//! `/v2/projects/{project}/locations/{zone}`: `nodes` create (`?nodeId=`) / get / delete with
//! long-running operations, and `nodes.list` (`{"nodes": [...], "nextPageToken"}`, pages of
//! [`Fake::tpu_page_size`] nodes, the token being the index of the next node; the TPU API
//! has no filter, so every node of the zone is listed; new nodes get a `createTime`) (`done: false`, then `done: true` with `response` or
//! `error: {code, message}` — code 8 for zones in [`Fake::tpu_exhausted_zones`]; synchronous
//! errors from [`Fake::tpu_create_errors`]); nodes go `CREATING` → `READY` (with
//! `networkEndpoints`) on successive reads.
//!
//! Auth: the service-account flow of `google-cloud-auth` signs a self-signed JWT with the
//! key (no token endpoint round trip); the fake decodes the bearer JWT and accepts only the
//! known `client_email` as issuer (401 otherwise), or answers 403 for a "forbidden" identity.
//! Instances move `PROVISIONING` → `STAGING` → `RUNNING` on successive reads, or vanish.
//!
//! Outside the API, `GET /_fake/authorized_keys` lists the keys of every instance's `ssh-keys`
//! metadata (`user:key` lines), i.e. what the guest agent on a real VM would authorise; the
//! end-to-end test's "VM" (a local sshd) reads it as its `AuthorizedKeysCommand`.
//! `GET /_fake/instances` lists the instances that exist (project, zone, name, labels,
//! resourcePolicies); `GET /_fake/resource_policies` the resource policies (project, region,
//! name).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// The project the fake serves.
pub const PROJECT: &str = "test-project";
/// The shared-VPC host project.
pub const HOST_PROJECT: &str = "host-project";
/// The service account the fake accepts.
pub const GOOD_EMAIL: &str = "dstack@test-project.iam.gserviceaccount.com";
/// A service account the fake answers 403 for.
pub const FORBIDDEN_EMAIL: &str = "viewer@test-project.iam.gserviceaccount.com";

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The JWT issuer of the bearer token.
    pub issuer: Option<String>,
}

/// An operation error: (code, message).
pub type OpError = (String, String);

#[derive(Default)]
pub struct Fake {
    /// (project, zone, name) → (instance, reads so far).
    pub instances: BTreeMap<(String, String, String), (Value, u32)>,
    /// Operation name → (operation, reads so far, error to finish with).
    pub operations: BTreeMap<String, (Value, u32, Option<OpError>)>,
    /// Firewall name → rule.
    pub firewalls: BTreeMap<String, Value>,
    /// Zones where inserts finish with `ZONE_RESOURCE_POOL_EXHAUSTED`.
    pub exhausted_zones: BTreeSet<String>,
    /// Instances are deleted right after creation (the instance vanishes while provisioning).
    pub vanish: bool,
    /// Usable subnetworks (`network` URL, `subnetwork` URL) of the listUsable answer.
    pub usable: Vec<(String, String)>,
    /// Region quotas: (region, metric, limit, usage).
    pub quotas: Vec<(String, String, f64, f64)>,
    /// (project, zone, node id) → (TPU node, reads so far).
    pub tpu_nodes: BTreeMap<(String, String, String), (Value, u32)>,
    /// TPU operation name → (operation, reads so far, `google.rpc.Status` to finish with).
    pub tpu_operations: BTreeMap<String, (Value, u32, Option<Value>)>,
    /// Zones where TPU node creation finishes with `RESOURCE_EXHAUSTED` (code 8).
    pub tpu_exhausted_zones: BTreeSet<String>,
    /// Zone → synchronous `nodes.create` error: (HTTP status, status name, message).
    pub tpu_create_errors: BTreeMap<String, (u16, String, String)>,
    /// Nodes per `nodes.list` page (all when `None`).
    pub tpu_page_size: Option<usize>,
    /// Zone → `nodes.list` error: (HTTP status, status name, message).
    pub tpu_list_errors: BTreeMap<String, (u16, String, String)>,
    /// (project, region, name) → resource policy.
    pub resource_policies: BTreeMap<(String, String, String), Value>,
    /// Reservations: (project, zone, reservation).
    pub reservations: Vec<(String, String, Value)>,
    /// Injected answers: (method, path fragment, status) consumed in order when they match.
    pub inject: VecDeque<(String, String, u16)>,
    pub log: Vec<Req>,
    pub counter: u32,
}

pub type Shared = Arc<Mutex<Fake>>;

pub fn google_error(code: u16, status: &str, reason: &str, message: &str) -> Response {
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

pub fn ok(v: &Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub fn jwt_issuer(headers: &HeaderMap) -> Option<String> {
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

pub fn new_operation(
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

pub async fn handle(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    if method == Method::GET && path == "/_fake/authorized_keys" {
        return authorized_keys(&fake.lock().unwrap());
    }
    if method == Method::GET && path == "/_fake/resource_policies" {
        let f = fake.lock().unwrap();
        let list: Vec<Value> = f
            .resource_policies
            .keys()
            .map(|(p, r, n)| json!({"project": p, "region": r, "name": n}))
            .collect();
        return ok(&json!(list));
    }
    if method == Method::GET && path == "/_fake/instances" {
        let f = fake.lock().unwrap();
        let list: Vec<Value> = f
            .instances
            .iter()
            .map(|((p, z, n), (i, _))| {
                json!({"project": p, "zone": z, "name": n, "labels": i["labels"],
                       "resourcePolicies": i["resourcePolicies"]})
            })
            .collect();
        return ok(&json!(list));
    }
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
                instance["creationTimestamp"] =
                    json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false));
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
        // region operations
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                _project,
                "regions",
                _region,
                "operations",
                name,
            ],
        ) => advance_operation(&mut f, name),
        // resourcePolicies.insert
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "regions",
                region,
                "resourcePolicies",
            ],
        ) => {
            let name = body_json["name"].as_str().unwrap_or_default().to_string();
            let key = (project.to_string(), region.to_string(), name.clone());
            if f.resource_policies.contains_key(&key) {
                return google_error(
                    409,
                    "ALREADY_EXISTS",
                    "alreadyExists",
                    &format!(
                        "The resource 'projects/{project}/regions/{region}/resourcePolicies/{name}' already exists"
                    ),
                );
            }
            let mut policy = body_json.clone();
            policy["kind"] = json!("compute#resourcePolicy");
            policy["status"] = json!("READY");
            f.resource_policies.insert(key, policy);
            let mut op = new_operation(&mut f, None, "insert", &name, None);
            op["region"] = json!(format!(
                "https://www.googleapis.com/compute/v1/projects/{project}/regions/{region}"
            ));
            ok(&op)
        }
        // resourcePolicies.get / delete
        (
            "GET" | "DELETE",
            [
                "compute",
                "v1",
                "projects",
                project,
                "regions",
                region,
                "resourcePolicies",
                name,
            ],
        ) => {
            let key = (project.to_string(), region.to_string(), name.to_string());
            let resource = format!("projects/{project}/regions/{region}/resourcePolicies/{name}");
            let Some(policy) = f.resource_policies.get(&key).cloned() else {
                return google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!("The resource '{resource}' was not found"),
                );
            };
            if m == "GET" {
                return ok(&policy);
            }
            let user = f.instances.iter().find_map(|((p, z, n), (i, _))| {
                i["resourcePolicies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r.as_str().is_some_and(|r| r.ends_with(&resource)))
                    .then(|| format!("projects/{p}/zones/{z}/instances/{n}"))
            });
            if let Some(user) = user {
                return google_error(
                    400,
                    "INVALID_ARGUMENT",
                    "resourceInUseByAnotherResource",
                    &format!(
                        "The resource_policy resource '{resource}' is already being used by '{user}'"
                    ),
                );
            }
            f.resource_policies.remove(&key);
            let op = new_operation(&mut f, None, "delete", name, None);
            ok(&op)
        }
        // instances.aggregatedList
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "aggregated",
                "instances",
            ],
        ) => {
            let filter = query_param(&query, "filter").unwrap_or_default();
            let wanted: Vec<(String, String)> = filter
                .split("labels.")
                .skip(1)
                .filter_map(|term| {
                    let (key, rest) = term.split_once('=')?;
                    let value = rest.trim().strip_prefix('"')?.split('"').next()?;
                    Some((key.trim().to_string(), value.to_string()))
                })
                .collect();
            let mut items = serde_json::Map::new();
            for ((p, z, _), (instance, _)) in &f.instances {
                let matches = wanted
                    .iter()
                    .all(|(k, v)| instance["labels"][k.as_str()] == v.as_str());
                if p == project && matches {
                    let scope = items
                        .entry(format!("zones/{z}"))
                        .or_insert_with(|| json!({"instances": []}));
                    scope["instances"]
                        .as_array_mut()
                        .unwrap()
                        .push(instance.clone());
                }
            }
            items.insert(
                "zones/us-central1-f".into(),
                json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "no results"}}),
            );
            ok(&json!({"kind": "compute#instanceAggregatedList", "items": items}))
        }
        // reservations.aggregatedList
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "aggregated",
                "reservations",
            ],
        ) => {
            let filter = query_param(&query, "filter").unwrap_or_default();
            let wanted = filter
                .split("name = \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string();
            let mut items = serde_json::Map::new();
            for (p, z, r) in &f.reservations {
                if p == project && r["name"] == wanted.as_str() && r["status"] == "READY" {
                    items.insert(format!("zones/{z}"), json!({"reservations": [r]}));
                }
            }
            items.insert(
                "zones/us-central1-f".into(),
                json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "no results"}}),
            );
            ok(&json!({"kind": "compute#reservationAggregatedList", "items": items}))
        }
        // TPU nodes.create
        ("POST", ["v2", "projects", project, "locations", zone, "nodes"]) => {
            if let Some((code, status, message)) = f.tpu_create_errors.get(*zone).cloned() {
                return google_error(code, &status, "tpuError", &message);
            }
            let Some(node_id) = query_param(&query, "nodeId") else {
                return google_error(400, "INVALID_ARGUMENT", "badRequest", "nodeId is required");
            };
            let key = (project.to_string(), zone.to_string(), node_id.clone());
            let node_name = format!("projects/{project}/locations/{zone}/nodes/{node_id}");
            if f.tpu_nodes.contains_key(&key) {
                return google_error(
                    409,
                    "ALREADY_EXISTS",
                    "alreadyExists",
                    &format!("Resource '{node_name}' already exists"),
                );
            }
            let error = f.tpu_exhausted_zones.contains(*zone).then(|| {
                json!({"code": 8, "message": format!(
                    "There is no more capacity in the zone \"{zone}\"; you can try in another zone where Cloud TPU Nodes are offered"
                )})
            });
            if error.is_none() {
                let mut node = body_json.clone();
                node["name"] = json!(node_name);
                node["state"] = json!("CREATING");
                node["createTime"] = json!("2024-05-01T17:00:00.000000Z");
                f.tpu_nodes.insert(key, (node, 0));
            }
            f.counter += 1;
            let op_name = format!(
                "projects/{project}/locations/{zone}/operations/operation-{}-tpu",
                f.counter
            );
            let op = json!({
                "name": op_name,
                "metadata": {
                    "@type": "type.googleapis.com/google.cloud.tpu.v2.OperationMetadata",
                    "target": node_name,
                    "verb": "create",
                },
                "done": false,
            });
            f.tpu_operations.insert(op_name, (op.clone(), 0, error));
            ok(&op)
        }
        // TPU nodes.list
        ("GET", ["v2", "projects", project, "locations", zone, "nodes"]) => {
            if let Some((code, status, message)) = f.tpu_list_errors.get(*zone).cloned() {
                return google_error(code, &status, "tpuError", &message);
            }
            let nodes: Vec<Value> = f
                .tpu_nodes
                .iter()
                .filter(|((p, z, _), _)| p == project && z == zone)
                .map(|(_, (n, _))| n.clone())
                .collect();
            let start: usize = query_param(&query, "pageToken")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            let size = f.tpu_page_size.unwrap_or(usize::MAX).max(1);
            let end = start.saturating_add(size).min(nodes.len());
            let page = nodes.get(start..end).unwrap_or_default().to_vec();
            let mut body = json!({"nodes": page});
            if end < nodes.len() {
                body["nextPageToken"] = json!(end.to_string());
            }
            ok(&body)
        }
        // TPU operations.get
        (
            "GET",
            [
                "v2",
                "projects",
                project,
                "locations",
                zone,
                "operations",
                name,
            ],
        ) => {
            let op_name = format!("projects/{project}/locations/{zone}/operations/{name}");
            let Some((op, reads, error)) = f.tpu_operations.get_mut(&op_name) else {
                return google_error(404, "NOT_FOUND", "notFound", "operation not found");
            };
            *reads += 1;
            if *reads >= 2 {
                op["done"] = json!(true);
                match error {
                    Some(e) => op["error"] = e.clone(),
                    None => {
                        op["response"] = json!({
                            "@type": "type.googleapis.com/google.cloud.tpu.v2.Node",
                            "name": op["metadata"]["target"],
                        })
                    }
                }
            }
            ok(op)
        }
        // TPU nodes.get / delete
        (
            "GET" | "DELETE",
            [
                "v2",
                "projects",
                project,
                "locations",
                zone,
                "nodes",
                node_id,
            ],
        ) => {
            let key = (project.to_string(), zone.to_string(), node_id.to_string());
            let node_name = format!("projects/{project}/locations/{zone}/nodes/{node_id}");
            if m == "DELETE" {
                if f.tpu_nodes.remove(&key).is_none() {
                    return google_error(
                        404,
                        "NOT_FOUND",
                        "notFound",
                        &format!("Resource '{node_name}' was not found"),
                    );
                }
                f.counter += 1;
                let op = json!({
                    "name": format!("projects/{project}/locations/{zone}/operations/operation-{}-tpu", f.counter),
                    "metadata": {"target": node_name, "verb": "delete"},
                    "done": false,
                });
                return ok(&op);
            }
            let n = f.counter + 1;
            let Some((node, reads)) = f.tpu_nodes.get_mut(&key) else {
                return google_error(
                    404,
                    "NOT_FOUND",
                    "notFound",
                    &format!("Resource '{node_name}' was not found"),
                );
            };
            *reads += 1;
            if *reads >= 2 && node["state"] == "CREATING" {
                node["state"] = json!("READY");
                let mut endpoint = json!({"ipAddress": format!("10.130.0.{n}"), "port": 8470});
                if node["networkConfig"]["enableExternalIps"] == true {
                    endpoint["accessConfig"] = json!({"externalIp": format!("35.1.2.{n}")});
                }
                node["networkEndpoints"] = json!([endpoint]);
            }
            ok(node)
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

pub fn advance_operation(f: &mut Fake, name: &str) -> Response {
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

pub struct FakeServer {
    pub state: Shared,
    pub url: String,
}

/// The value of `name` in a query string (percent-decoded, `+` as space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `ssh-keys` metadata of every instance and TPU node, one key per line.
fn authorized_keys(f: &Fake) -> Response {
    let mut out = String::new();
    let mut values: Vec<String> = Vec::new();
    for (instance, _) in f.instances.values() {
        let items = instance["metadata"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for item in items.iter().filter(|i| i["key"] == "ssh-keys") {
            values.push(item["value"].as_str().unwrap_or_default().to_string());
        }
    }
    for (node, _) in f.tpu_nodes.values() {
        if let Some(v) = node["metadata"]["ssh-keys"].as_str() {
            values.push(v.to_string());
        }
    }
    for value in &values {
        for line in value.lines() {
            if let Some((_, key)) = line.split_once(':') {
                out.push_str(key.trim());
                out.push('\n');
            }
        }
    }
    (StatusCode::OK, [("content-type", "text/plain")], out).into_response()
}

/// Starts the fake on an ephemeral loopback port.
pub async fn start_fake() -> FakeServer {
    start_fake_on("127.0.0.1:0").await
}

/// Starts the fake on `addr` (`host:port`).
pub async fn start_fake_on(addr: &str) -> FakeServer {
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
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    FakeServer {
        state,
        url: format!("http://{addr}"),
    }
}
