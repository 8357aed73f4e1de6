#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Azure backend against a fake Azure (ARM + AAD) written here (axum on loopback).
//!
//! The fake follows the documented REST APIs the backend calls:
//! - AAD: `POST /{tenant}/oauth2/v2.0/token` (client credentials with a secret, `invalid_client`
//!   with an `AADSTS7000215` description for a bad one; or with a `client_assertion` of type
//!   `jwt-bearer`, the workload-identity grant, `AADSTS700211`-style `invalid_client` for a
//!   wrong assertion) and the managed-identity endpoint `GET /metadata/identity/oauth2/token`
//!   (`Metadata: true` required);
//! - ARM under `/subscriptions/{sub}`: the subscription, resource SKUs (`$filter=location eq
//!   '…'`), community gallery images, resource groups, NSGs, virtual networks with subnets and
//!   peerings, public IPs, NICs, VMs (with `$expand=instanceView`) and disks. Every ARM call
//!   needs `api-version` and the bearer token; errors are `{"error": {"code", "message"}}`.
//! - Long-running operations: VM, NSG, network and public IP `PUT`s and VM deletes answer 201/202
//!   with `Azure-AsyncOperation` (status `InProgress` until the operation's time, then
//!   `Succeeded` or `Failed` with an error); public IP deletes answer 202 with `Location`
//!   (202 while running, 204 when done).
//! - Semantics that matter for ordering: a NIC attached to a VM cannot be deleted
//!   (`NicInUse`), nor a public IP attached to a NIC, nor a disk attached to a VM; deleting a
//!   VM deletes its NIC and OS disk when their `deleteOption` is `Delete`.
//! - Injected answers: 429 with `Retry-After`, synchronous VM errors per size
//!   (`SkuNotAvailable`, `OperationNotAllowed`), asynchronous VM failures (the operation ends
//!   `Failed` with e.g. `AllocationFailed`), and VMs whose operation succeeds but whose
//!   `provisioningState` ends `Failed`.
//! - The Azure CLI is a shell script named `az` put first on the `PATH` the backend is given.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use dstack_sdk::backends::azure::AzureCompute;
use dstack_sdk::backends::azure::auth::TokenSource;
use dstack_sdk::backends::common::endpoint::Endpoints;
use dstack_sdk::backends::common::provision::{MAX_OFFERS_TRIED, create_first_available};
use dstack_sdk::backends::common::retry::Backoff;
use dstack_sdk::backends::{
    BackendError, BackendSettings, Compute, ComputeWithCreateInstance, InstanceConfiguration,
};
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use dstack_sdk::models::jobs::JobProvisioningData;
use dstack_sdk::models::offers::{InstanceAvailability, InstanceOfferWithAvailability};
use dstack_sdk::offers::{Catalog, SharedCatalog};
use serde_json::{Value, json};
use uuid::Uuid;

const SUB: &str = "06c82ce3-28ff-4285-a146-c5e981a9d808";
const TENANT: &str = "f84a7584-88e4-4fd2-8e97-623f0a715ee1";
const CLIENT_ID: &str = "acf3f73a-597b-46b6-98d9-748d75018ed0";
const SECRET: &str = "good-secret";
const ACCESS_TOKEN: &str = "fake-arm-token";
const MI_TOKEN: &str = "fake-mi-token";
const WI_TOKEN: &str = "fake-wi-token";
const CLI_TOKEN: &str = "fake-cli-token";
const FEDERATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.fake-federated-sa-token.sig";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const SERVER_ID: &str = "srv-azure-test";
const PROJECT_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIProjectKey project@dstack";
const LOCATION: &str = "westeurope";

// ---------------------------------------------------------------------------------------------
// The fake

#[derive(Debug, Clone)]
struct Op {
    ready_at: Instant,
    /// `None`: succeeds; `Some((code, message))`: fails.
    failure: Option<(String, String)>,
    /// The VM the operation creates (its state follows the operation).
    vm: Option<String>,
    /// The operation succeeds but the VM ends `Failed` with this (code, message).
    state_failure: Option<(String, String)>,
}

#[derive(Debug, Clone)]
struct Logged {
    method: String,
    path: String,
    query: String,
    body: Value,
}

#[derive(Default)]
struct Fake {
    base: String,
    /// Resource id → resource.
    resources: BTreeMap<String, Value>,
    ops: HashMap<String, Op>,
    log: Vec<Logged>,
    /// (method, path suffix, status, Retry-After) consumed in order when they match.
    inject: VecDeque<(String, String, u16, Option<u64>)>,
    /// VM size → (status, code) answered synchronously to the VM `PUT`.
    fail_sync: HashMap<String, (u16, String)>,
    /// Every VM `PUT` fails with (status, code).
    fail_all: Option<(u16, String)>,
    /// VM size (spot marked with a `spot:` prefix) → code of an asynchronous failure.
    fail_async: HashMap<String, String>,
    /// VM size → code: the operation succeeds, the VM's `provisioningState` ends `Failed`.
    fail_state: HashMap<String, String>,
    /// How long VM creation takes.
    vm_delay: Duration,
    /// Location → SKUs (`name`, `restrictions`).
    skus: HashMap<String, Vec<Value>>,
    /// Answer 403 `AuthorizationFailed` to every ARM call.
    forbid: bool,
    counter: u32,
}

type Shared = Arc<Mutex<Fake>>;

fn arm_error(status: u16, code: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
        .into_response()
}

fn json_resp(status: u16, v: &Value, headers: Vec<(&'static str, String)>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response();
    for (k, val) in headers {
        r.headers_mut().insert(k, val.parse().unwrap());
    }
    r
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 3;
                } else {
                    out.push(if b[i] == b'+' { b' ' } else { b[i] });
                    i += 1;
                }
            }
            String::from_utf8(out).unwrap()
        })
    })
}

impl Fake {
    fn next(&mut self) -> u32 {
        self.counter += 1;
        self.counter
    }

    fn new_op(
        &mut self,
        delay: Duration,
        failure: Option<(String, String)>,
        vm: Option<String>,
    ) -> String {
        let id = Uuid::new_v4().to_string();
        self.ops.insert(
            id.clone(),
            Op {
                ready_at: Instant::now() + delay,
                failure,
                vm,
                state_failure: None,
            },
        );
        format!(
            "{}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/{LOCATION}/operations/{id}?api-version=2024-07-01",
            self.base
        )
    }

    /// Applies finished operations to the VMs they create.
    fn settle(&mut self) {
        let now = Instant::now();
        let done: Vec<Op> = self
            .ops
            .values()
            .filter(|o| o.ready_at <= now && o.vm.is_some())
            .cloned()
            .collect();
        for op in done {
            let id = op.vm.clone().unwrap();
            if let Some(vm) = self.resources.get_mut(&id)
                && vm["properties"]["provisioningState"] == "Creating"
            {
                match op.failure.as_ref().or(op.state_failure.as_ref()) {
                    None => vm["properties"]["provisioningState"] = json!("Succeeded"),
                    Some((code, message)) => {
                        vm["properties"]["provisioningState"] = json!("Failed");
                        vm["properties"]["instanceView"] = json!({"statuses": [{
                            "code": format!("ProvisioningState/failed/{code}"),
                            "level": "Error", "displayStatus": "Provisioning failed",
                            "message": message,
                        }]});
                    }
                }
            }
        }
    }

    fn referenced(&self, kind: &str, id: &str) -> bool {
        self.resources
            .iter()
            .any(|(k, v)| k.contains(kind) && v.to_string().contains(&format!("\"{id}\"")))
    }
}

async fn handle(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let body_v: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).to_string()))
    };
    let mut f = fake.lock().unwrap();
    f.log.push(Logged {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body_v.clone(),
    });
    if let Some(i) = f
        .inject
        .iter()
        .position(|(m, p, _, _)| m == method.as_str() && path.ends_with(p.as_str()))
    {
        let (_, _, status, after) = f.inject.remove(i).unwrap();
        let mut r = arm_error(status, "TooManyRequests", "throttled");
        if let Some(a) = after {
            r.headers_mut()
                .insert("retry-after", a.to_string().parse().unwrap());
        }
        return r;
    }

    // AAD token endpoint.
    if method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        let form = String::from_utf8_lossy(&body).to_string();
        let tenant = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        if tenant != TENANT {
            return json_resp(
                400,
                &json!({"error": "invalid_request",
                "error_description": format!("AADSTS90002: Tenant '{tenant}' not found.\r\nTrace ID: x")}),
                vec![],
            );
        }
        if query_param(&form, "client_assertion").is_some() {
            let ok = query_param(&form, "grant_type").as_deref() == Some("client_credentials")
                && query_param(&form, "client_assertion_type").as_deref() == Some(JWT_BEARER)
                && query_param(&form, "client_assertion").as_deref() == Some(FEDERATED_TOKEN)
                && query_param(&form, "client_id").as_deref() == Some(CLIENT_ID)
                && query_param(&form, "client_secret").is_none()
                && query_param(&form, "scope").as_deref()
                    == Some("https://management.azure.com/.default");
            if !ok {
                return json_resp(
                    401,
                    &json!({"error": "invalid_client",
                    "error_description": "AADSTS700211: No matching federated identity record found for presented assertion issuer.\r\nTrace ID: 1",
                    "error_codes": [700211]}),
                    vec![],
                );
            }
            return json_resp(
                200,
                &json!({"token_type": "Bearer", "expires_in": 3599, "access_token": WI_TOKEN}),
                vec![],
            );
        }
        let ok = query_param(&form, "grant_type").as_deref() == Some("client_credentials")
            && query_param(&form, "client_id").as_deref() == Some(CLIENT_ID)
            && query_param(&form, "client_secret").as_deref() == Some(SECRET)
            && query_param(&form, "scope").as_deref()
                == Some("https://management.azure.com/.default");
        if !ok {
            return json_resp(
                401,
                &json!({"error": "invalid_client",
                "error_description": format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'.\r\nTrace ID: 1\r\nCorrelation ID: 2"),
                "error_codes": [7000215]}),
                vec![],
            );
        }
        return json_resp(
            200,
            &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
            "access_token": ACCESS_TOKEN}),
            vec![],
        );
    }
    // Managed identity (IMDS).
    if method == Method::GET && path == "/metadata/identity/oauth2/token" {
        if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
            return json_resp(
                400,
                &json!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
                vec![],
            );
        }
        return json_resp(
            200,
            &json!({"access_token": MI_TOKEN, "expires_in": "86399",
            "resource": query_param(&query, "resource"), "token_type": "Bearer"}),
            vec![],
        );
    }

    // ARM.
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if ![ACCESS_TOKEN, MI_TOKEN, WI_TOKEN, CLI_TOKEN]
        .iter()
        .any(|t| auth == format!("Bearer {t}"))
    {
        return arm_error(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        );
    }
    if query_param(&query, "api-version").is_none() {
        return arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    if f.forbid {
        return arm_error(
            403,
            "AuthorizationFailed",
            "The client does not have authorization to perform action.",
        );
    }
    let prefix = format!("/subscriptions/{SUB}");
    let Some(rest) = path.strip_prefix(&prefix) else {
        return arm_error(
            404,
            "SubscriptionNotFound",
            "The subscription could not be found.",
        );
    };
    f.settle();

    if rest.is_empty() {
        return json_resp(
            200,
            &json!({"id": prefix, "subscriptionId": SUB, "tenantId": TENANT,
            "displayName": "test", "state": "Enabled"}),
            vec![],
        );
    }
    if rest == "/providers/Microsoft.Compute/skus" {
        let filter = query_param(&query, "$filter").unwrap_or_default();
        let loc = filter
            .strip_prefix("location eq '")
            .and_then(|s| s.strip_suffix('\''))
            .unwrap_or_default()
            .to_string();
        let items = f.skus.get(&loc).cloned().unwrap_or_default();
        // Two pages, to exercise nextLink.
        if query_param(&query, "page").is_none() && items.len() > 1 {
            let next = format!("{}{path}?{query}&page=2", f.base);
            return json_resp(200, &json!({"value": items[..1], "nextLink": next}), vec![]);
        }
        let start = if query_param(&query, "page").is_some() {
            1
        } else {
            0
        };
        return json_resp(
            200,
            &json!({"value": items[start.min(items.len())..]}),
            vec![],
        );
    }
    // virtualMachines.listAll / virtualMachines.list (a resource group's).
    const VMS: &str = "/providers/Microsoft.Compute/virtualMachines";
    if method == Method::GET
        && rest.ends_with(VMS)
        && (rest == VMS || rest.trim_end_matches(VMS).matches('/').count() == 2)
    {
        let scope = format!("{prefix}{}/", rest.trim_end_matches(VMS));
        let vms: Vec<Value> = f
            .resources
            .iter()
            .filter(|(id, _)| id.contains(&format!("{VMS}/")))
            .filter(|(id, _)| rest == VMS || id.starts_with(&scope))
            .map(|(_, v)| v.clone())
            .collect();
        return json_resp(200, &json!({"value": vms}), vec![]);
    }
    if let Some(op) = rest.split("/operations/").nth(1) {
        let Some(o) = f.ops.get(op).cloned() else {
            return arm_error(404, "NotFound", "operation not found");
        };
        if o.ready_at > Instant::now() {
            return json_resp(200, &json!({"status": "InProgress"}), vec![]);
        }
        return match o.failure {
            None => json_resp(200, &json!({"status": "Succeeded"}), vec![]),
            Some((code, message)) => json_resp(
                200,
                &json!({"status": "Failed",
                "error": {"code": code, "message": message}}),
                vec![],
            ),
        };
    }
    if let Some(op) = rest.split("/operationResults/").nth(1) {
        return match f.ops.get(op) {
            Some(o) if o.ready_at > Instant::now() => json_resp(202, &Value::Null, vec![]),
            Some(_) => (StatusCode::NO_CONTENT, "").into_response(),
            None => arm_error(404, "NotFound", "operation not found"),
        };
    }
    if rest.contains("/communityGalleries/") {
        let name = rest.rsplit('/').next().unwrap_or_default().to_string();
        let gallery = rest
            .split("/communityGalleries/")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        if !name.starts_with("dstack-") {
            return arm_error(404, "GalleryImageNotFound", "not found");
        }
        return json_resp(
            200,
            &json!({"name": name, "location": LOCATION, "type": "Microsoft.Compute/locations/communityGalleries/images",
            "identifier": {"uniqueId": format!("/CommunityGalleries/{gallery}/Images/{name}")},
            "properties": {"osType": "Linux", "hyperVGeneration": "V2"}}),
            vec![],
        );
    }

    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    // resourceGroups/{rg}
    if segs.len() == 2 && segs[0] == "resourceGroups" {
        return match method {
            Method::GET => match f.resources.get(&path) {
                Some(v) => json_resp(200, v, vec![]),
                None => arm_error(
                    404,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{}' could not be found.", segs[1]),
                ),
            },
            Method::PUT => {
                let mut v = body_v.clone();
                v["id"] = json!(path);
                v["name"] = json!(segs[1]);
                v["properties"] = json!({"provisioningState": "Succeeded"});
                f.resources.insert(path.clone(), v.clone());
                json_resp(201, &v, vec![])
            }
            _ => arm_error(405, "MethodNotAllowed", "no"),
        };
    }
    // resourceGroups/{rg}/providers/{ns}/{type}/{name}[/{child}[/{childname}]]
    if segs.len() < 6 || segs[0] != "resourceGroups" || segs[2] != "providers" {
        return arm_error(404, "NotFound", "unknown path");
    }
    let rg_id = format!("{prefix}/resourceGroups/{}", segs[1]);
    let kind = segs[4];
    let id = format!("{prefix}/{}", segs[..6].join("/"));
    if segs.len() > 6 {
        // Children of a virtual network: subnets and peerings.
        let Some(vnet) = f.resources.get(&id).cloned() else {
            return arm_error(
                404,
                "ResourceNotFound",
                &format!("The Resource '{}' was not found.", segs[5]),
            );
        };
        return match (segs[6], segs.get(7)) {
            ("subnets", None) => json_resp(
                200,
                &json!({"value": vnet["properties"]["subnets"]}),
                vec![],
            ),
            ("subnets", Some(name)) => match vnet["properties"]["subnets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == *name)
            {
                Some(s) => json_resp(200, s, vec![]),
                None => arm_error(404, "NotFound", "subnet not found"),
            },
            ("virtualNetworkPeerings", None) => json_resp(
                200,
                &json!({"value": vnet["properties"].get("virtualNetworkPeerings").cloned().unwrap_or(json!([]))}),
                vec![],
            ),
            _ => arm_error(404, "NotFound", "unknown child"),
        };
    }
    let name = segs[5].to_string();
    match method {
        Method::GET => {
            let Some(mut v) = f.resources.get(&id).cloned() else {
                return arm_error(
                    404,
                    "ResourceNotFound",
                    &format!(
                        "The Resource '{}/{}/{name}' under resource group '{}' was not found.",
                        segs[3], kind, segs[1]
                    ),
                );
            };
            if kind == "virtualMachines" && !query.contains("instanceView") {
                v["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("instanceView");
            }
            json_resp(200, &v, vec![])
        }
        Method::PUT => {
            if !f.resources.contains_key(&rg_id) {
                return arm_error(
                    404,
                    "ResourceGroupNotFound",
                    &format!("Resource group '{}' could not be found.", segs[1]),
                );
            }
            let n = f.next();
            let mut v = body_v.clone();
            v["id"] = json!(id);
            v["name"] = json!(name);
            match kind {
                "networkSecurityGroups" | "virtualNetworks" => {
                    v["properties"]["provisioningState"] = json!("Succeeded");
                    if kind == "virtualNetworks" {
                        for s in v["properties"]["subnets"].as_array_mut().unwrap() {
                            s["id"] =
                                json!(format!("{id}/subnets/{}", s["name"].as_str().unwrap()));
                        }
                    }
                    f.resources.insert(id.clone(), v.clone());
                    let op = f.new_op(Duration::ZERO, None, None);
                    let mut shown = v.clone();
                    shown["properties"]["provisioningState"] = json!("Updating");
                    json_resp(201, &shown, vec![("azure-asyncoperation", op)])
                }
                "publicIPAddresses" => {
                    v["properties"]["provisioningState"] = json!("Succeeded");
                    v["properties"]["ipAddress"] = json!(format!("20.50.0.{n}"));
                    f.resources.insert(id.clone(), v.clone());
                    let op = f.new_op(Duration::from_millis(20), None, None);
                    let mut shown = v.clone();
                    shown["properties"]["provisioningState"] = json!("Updating");
                    shown["properties"]
                        .as_object_mut()
                        .unwrap()
                        .remove("ipAddress");
                    json_resp(
                        201,
                        &shown,
                        vec![("azure-asyncoperation", op), ("retry-after", "0".into())],
                    )
                }
                "networkInterfaces" => {
                    let ipc = v["properties"]["ipConfigurations"][0]["properties"].clone();
                    let subnet = ipc["subnet"]["id"].as_str().unwrap_or_default().to_string();
                    let (vnet_id, subnet_name) = subnet.split_once("/subnets/").unwrap_or_default();
                    let subnet_ok = f.resources.get(vnet_id).is_some_and(|vn| {
                        vn["properties"]["subnets"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|s| s["name"] == subnet_name)
                    });
                    let nsg = v["properties"]["networkSecurityGroup"]["id"]
                        .as_str()
                        .unwrap_or_default();
                    let ip_ok = ipc.get("publicIPAddress").is_none_or(|p| {
                        f.resources
                            .contains_key(p["id"].as_str().unwrap_or_default())
                    });
                    if !subnet_ok || !f.resources.contains_key(nsg) || !ip_ok {
                        return arm_error(
                            400,
                            "InvalidResourceReference",
                            "Resource referenced by resource was not found.",
                        );
                    }
                    let prefix = if subnet.contains("/net-rg/") {
                        "10.1.0"
                    } else {
                        "10.0.0"
                    };
                    v["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] =
                        json!(format!("{prefix}.{}", n + 3));
                    v["properties"]["provisioningState"] = json!("Succeeded");
                    f.resources.insert(id.clone(), v.clone());
                    json_resp(201, &v, vec![])
                }
                "virtualMachines" => {
                    let size = v["properties"]["hardwareProfile"]["vmSize"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let spot = v["properties"]["priority"] == "Spot";
                    if let Some((status, code)) = f
                        .fail_all
                        .clone()
                        .or_else(|| f.fail_sync.get(&size).cloned())
                    {
                        let msg = if code == "OperationNotAllowed" {
                            format!(
                                "Operation could not be completed as it results in exceeding approved standardDSv3Family Cores quota. Location: {LOCATION}, Current Limit: 0, Current Usage: 0."
                            )
                        } else {
                            format!(
                                "The requested VM size '{size}' is currently not available in location '{LOCATION}'."
                            )
                        };
                        return arm_error(status, &code, &msg);
                    }
                    let nic = v["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if !f.resources.contains_key(&nic) {
                        return arm_error(
                            400,
                            "InvalidResourceReference",
                            "Resource referenced by resource was not found.",
                        );
                    }
                    let key = if spot {
                        format!("spot:{size}")
                    } else {
                        size.clone()
                    };
                    let failure = f.fail_async.get(&key).map(|c| (c.clone(), format!(
                        "Allocation failed. We do not have sufficient capacity for the requested VM size {size} in this region.")));
                    v["properties"]["provisioningState"] = json!("Creating");
                    v["properties"]["vmId"] = json!(Uuid::new_v4().to_string());
                    let disk = v["properties"]["storageProfile"]["osDisk"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let disk_id = format!("{rg_id}/providers/Microsoft.Compute/disks/{disk}");
                    v["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"] =
                        json!(disk_id);
                    f.resources.insert(disk_id.clone(), json!({"id": disk_id, "name": disk, "location": LOCATION,
                        "managedBy": id, "properties": {"diskState": "Attached", "provisioningState": "Succeeded"}}));
                    f.resources.insert(id.clone(), v.clone());
                    let delay = if failure.is_some() && f.vm_delay.is_zero() {
                        Duration::ZERO
                    } else {
                        f.vm_delay
                    };
                    let state_failure = f
                        .fail_state
                        .get(&size)
                        .map(|c| (c.clone(), format!("Allocation failed for VM size {size}.")));
                    let op = f.new_op(delay, failure, Some(id.clone()));
                    if let Some(sf) = state_failure {
                        let op_id = op.split("/operations/").nth(1).unwrap();
                        let op_id = op_id.split('?').next().unwrap().to_string();
                        f.ops.get_mut(&op_id).unwrap().state_failure = Some(sf);
                    }
                    json_resp(201, &v, vec![("azure-asyncoperation", op)])
                }
                _ => arm_error(400, "InvalidResourceType", "unsupported"),
            }
        }
        Method::DELETE => {
            let Some(v) = f.resources.get(&id).cloned() else {
                return (StatusCode::NO_CONTENT, "").into_response();
            };
            match kind {
                "virtualMachines" => {
                    f.resources.remove(&id);
                    let os = &v["properties"]["storageProfile"]["osDisk"];
                    if os["deleteOption"] == "Delete" {
                        let d = os["managedDisk"]["id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        f.resources.remove(&d);
                    }
                    for nic in v["properties"]["networkProfile"]["networkInterfaces"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                    {
                        if nic["properties"]["deleteOption"] == "Delete" {
                            f.resources.remove(nic["id"].as_str().unwrap_or_default());
                        }
                    }
                    let op = f.new_op(Duration::ZERO, None, None);
                    json_resp(202, &Value::Null, vec![("azure-asyncoperation", op)])
                }
                "networkInterfaces" => {
                    if f.referenced("virtualMachines", &id) {
                        return arm_error(
                            400,
                            "NicInUse",
                            &format!(
                                "Network Interface {id} is used by existing resource. In order to delete the network interface, it must be dissociated from the resource."
                            ),
                        );
                    }
                    f.resources.remove(&id);
                    (StatusCode::OK, "").into_response()
                }
                "publicIPAddresses" => {
                    if f.referenced("networkInterfaces", &id) {
                        return arm_error(
                            400,
                            "PublicIPAddressCannotBeDeleted",
                            &format!(
                                "Public IP address {id} can not be deleted since it is still allocated to resource."
                            ),
                        );
                    }
                    f.resources.remove(&id);
                    let op = f.new_op(Duration::ZERO, None, None);
                    let op_id = op
                        .split("/operations/")
                        .nth(1)
                        .unwrap()
                        .split('?')
                        .next()
                        .unwrap()
                        .to_string();
                    let loc = format!(
                        "{}/subscriptions/{SUB}/providers/Microsoft.Network/locations/{LOCATION}/operationResults/{op_id}?api-version=2024-05-01",
                        f.base
                    );
                    json_resp(
                        202,
                        &Value::Null,
                        vec![("location", loc), ("retry-after", "0".into())],
                    )
                }
                "disks" => {
                    if f.referenced("virtualMachines", &id) {
                        return arm_error(409, "OperationNotAllowed", "Disk is attached to VM.");
                    }
                    f.resources.remove(&id);
                    (StatusCode::OK, "").into_response()
                }
                _ => {
                    f.resources.remove(&id);
                    (StatusCode::OK, "").into_response()
                }
            }
        }
        _ => arm_error(405, "MethodNotAllowed", "no"),
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sku(name: &str, restrictions: Value) -> Value {
    json!({"resourceType": "virtualMachines", "name": name, "tier": "Standard",
        "locations": [LOCATION], "restrictions": restrictions})
}

struct Env {
    fake: Shared,
    url: String,
}

async fn start() -> Env {
    let fake: Shared = Arc::new(Mutex::new(Fake::default()));
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let url = format!("http://{addr}");
    {
        let mut f = fake.lock().unwrap();
        f.base = url.clone();
        f.vm_delay = Duration::from_millis(60);
        f.skus.insert(
            LOCATION.into(),
            vec![
                sku("Standard_B1s", json!([])),
                sku("Standard_D2s_v3", json!([])),
                sku("Standard_D4s_v3", json!([])),
                sku("Standard_E2s_v4", json!([])),
                sku("Standard_NC4as_T4_v3", json!([])),
                json!({"resourceType": "disks", "name": "Premium_LRS", "restrictions": []}),
            ],
        );
        // An existing network in another resource group (for vpc_ids): one subnet without
        // outbound connectivity, one behind a NAT gateway.
        let net_rg = format!("/subscriptions/{SUB}/resourceGroups/net-rg");
        let vnet = format!("{net_rg}/providers/Microsoft.Network/virtualNetworks/my-net");
        f.resources.insert(
            net_rg.clone(),
            json!({"id": net_rg, "name": "net-rg", "location": LOCATION}),
        );
        f.resources.insert(vnet.clone(), json!({"id": vnet, "name": "my-net", "location": LOCATION,
            "properties": {"addressSpace": {"addressPrefixes": ["10.1.0.0/16"]}, "subnets": [
                {"id": format!("{vnet}/subnets/plain"), "name": "plain", "properties": {"addressPrefix": "10.1.0.0/24"}},
                {"id": format!("{vnet}/subnets/natted"), "name": "natted", "properties": {"addressPrefix": "10.1.1.0/24",
                    "natGateway": {"id": format!("{net_rg}/providers/Microsoft.Network/natGateways/nat")}}},
            ]}}));
    }
    Env { fake, url }
}

impl Env {
    fn settings(&self) -> BackendSettings {
        self.settings_with_imds(None)
    }

    /// Settings with every Azure endpoint at the fake, the metadata service at `imds` if given.
    fn settings_with_imds(&self, imds: Option<&str>) -> BackendSettings {
        let catalog = Catalog::from_dir(repo_root().join("tests/fixtures/catalog/azure")).unwrap();
        let mut endpoints = Endpoints::none().with("azure", self.url.clone());
        if let Some(imds) = imds {
            endpoints = endpoints.with("azure.imds", imds);
        }
        BackendSettings::new(SERVER_ID)
            .with_catalog(SharedCatalog::new(catalog))
            .with_endpoints(endpoints)
            .with_retry(Backoff::fast(Duration::from_millis(5), 4))
    }

    /// A backend with `creds: {type: default}` that sees only `env` as its environment.
    async fn compute_default_creds(
        &self,
        env: &[(&str, String)],
        imds: Option<&str>,
    ) -> AzureCompute {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let AnyBackendConfigWithCreds::Azure(c) = serde_json::from_value(json!({
            "type": "azure", "subscription_id": SUB, "tenant_id": TENANT,
            "creds": {"type": "default"}, "regions": [LOCATION],
        }))
        .unwrap() else {
            panic!("not azure");
        };
        AzureCompute::new_with_env(c, self.settings_with_imds(imds), move |k| {
            env.get(k).cloned()
        })
        .await
        .unwrap()
    }

    async fn compute(&self, extra: Value) -> AzureCompute {
        self.compute_with_secret(SECRET, extra).await
    }

    async fn compute_with_secret(&self, secret: &str, extra: Value) -> AzureCompute {
        let mut cfg = json!({
            "type": "azure",
            "subscription_id": SUB,
            "tenant_id": TENANT,
            "creds": {"type": "client", "client_id": CLIENT_ID, "client_secret": secret},
            "regions": [LOCATION],
        });
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        let AnyBackendConfigWithCreds::Azure(c) = serde_json::from_value(cfg).unwrap() else {
            panic!("not azure");
        };
        AzureCompute::new(c, self.settings())
            .await
            .unwrap()
            .with_timing(
                Duration::from_millis(10),
                Duration::from_secs(5),
                Duration::from_secs(2),
            )
    }

    fn requests(&self, method: &str, path_contains: &str) -> Vec<Logged> {
        let f = self.fake.lock().unwrap();
        f.log
            .iter()
            .filter(|l| l.method == method && l.path.contains(path_contains))
            .cloned()
            .collect()
    }

    fn count(&self, method: &str, path_contains: &str) -> usize {
        self.requests(method, path_contains).len()
    }

    /// Names of the resources of `kind` (e.g. `virtualMachines`) in the fake.
    fn names(&self, kind: &str) -> Vec<String> {
        let f = self.fake.lock().unwrap();
        f.resources
            .iter()
            .filter(|(k, _)| k.contains(&format!("/{kind}/")) && !k.contains("/subnets/"))
            .map(|(_, v)| v["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn resource(&self, kind: &str, name: &str) -> Option<Value> {
        let f = self.fake.lock().unwrap();
        f.resources
            .iter()
            .find(|(k, _)| k.ends_with(&format!("/{kind}/{name}")))
            .map(|(_, v)| v.clone())
    }
}

fn instance(name: &str) -> InstanceConfiguration {
    InstanceConfiguration::new(
        "main",
        Uuid::from_u128(0x1111),
        name,
        vec![PROJECT_KEY.into()],
    )
    .with_fleet(Uuid::from_u128(0x2222))
    .with_user("alice")
}

async fn offer(compute: &AzureCompute, name: &str, spot: bool) -> InstanceOfferWithAvailability {
    compute
        .get_offers(None)
        .await
        .unwrap()
        .into_iter()
        .find(|o| {
            o.instance.name == name && o.instance.resources.spot == spot && o.region == LOCATION
        })
        .unwrap_or_else(|| panic!("no offer {name} spot={spot}"))
}

async fn wait_running(compute: &AzureCompute, jpd: &mut JobProvisioningData) {
    for _ in 0..200 {
        compute.update_provisioning_data(jpd).await.unwrap();
        if jpd.hostname.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("VM never got an address");
}

fn vm_put(env: &Env) -> Logged {
    env.requests("PUT", "/virtualMachines/")
        .pop()
        .expect("a VM PUT")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn create_poll_and_terminate() {
    let env = start().await;
    let compute = env.compute(json!({})).await;
    compute.validate_credentials().await.unwrap();
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    let mut jpd = compute
        .create_instance(&offer, &instance("fleet-0"), None)
        .await
        .unwrap();

    let vm = jpd.instance_id.clone();
    assert!(vm.starts_with("fleet-0-"), "{vm}");
    // create_instance waited for the VM, so its public IP is the hostname already.
    let ip = env
        .resource("publicIPAddresses", &format!("{vm}-ip"))
        .unwrap();
    assert_eq!(
        (jpd.hostname.as_deref(), jpd.username.as_str()),
        (ip["properties"]["ipAddress"].as_str(), "ubuntu")
    );
    assert!(
        env.requests("GET", "/operations/")
            .iter()
            .any(|l| l.path.contains("Microsoft.Compute")),
        "the VM operation was polled"
    );
    assert_eq!(jpd.region, LOCATION);
    assert!(jpd.internal_ip.as_deref().unwrap().starts_with("10.0.0."));
    let data: Value = serde_json::from_str(jpd.backend_data.as_deref().unwrap()).unwrap();
    assert_eq!(data["resource_group"], "dstack-main");

    // The setup dstack's configurator does: resource group, NSG (SSH open), default network.
    // RG, NSG, network, public IP, NIC, VM.
    assert_eq!(env.count("PUT", "/resourceGroups/dstack-main"), 6);
    let nsg = env
        .requests("PUT", "/networkSecurityGroups/")
        .pop()
        .unwrap();
    assert!(
        nsg.path
            .ends_with("/dstack-main-westeurope-default-security-group")
    );
    let rules = nsg.body["properties"]["securityRules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["properties"]["destinationPortRange"] == "22"
                && r["properties"]["access"] == "Allow")
    );
    let vnet = env.requests("PUT", "/virtualNetworks/").pop().unwrap();
    assert!(
        vnet.path
            .ends_with("/dstack-main-westeurope-default-network")
    );
    assert!(
        env.requests("PUT", "")
            .iter()
            .all(|l| l.query.contains("api-version="))
    );

    // The VM request.
    let put = vm_put(&env);
    let p = &put.body["properties"];
    assert_eq!(p["hardwareProfile"]["vmSize"], "Standard_D2s_v3");
    assert_eq!(p["priority"], "Regular");
    assert!(p.get("evictionPolicy").is_none() && p.get("billingProfile").is_none());
    assert_eq!(
        p["storageProfile"]["imageReference"]["communityGalleryImageId"],
        "/CommunityGalleries/dstack-ebac134d-04b9-4c2b-8b6c-ad3e73904aa7/Images/dstack-0.14"
    );
    assert_eq!(p["storageProfile"]["osDisk"]["diskSizeGB"], 100);
    assert_eq!(p["storageProfile"]["osDisk"]["deleteOption"], "Delete");
    assert_eq!(p["osProfile"]["adminUsername"], "ubuntu");
    assert_eq!(
        p["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"],
        PROJECT_KEY
    );
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(p["userData"].as_str().unwrap())
        .unwrap();
    let user_data = String::from_utf8(user_data).unwrap();
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains(PROJECT_KEY) && user_data.contains("DSTACK_BACKEND"));
    assert!(
        p["networkProfile"]["networkInterfaces"][0]["id"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/networkInterfaces/{vm}-nic"))
    );
    let nic = env
        .resource("networkInterfaces", &format!("{vm}-nic"))
        .unwrap();
    assert!(
        nic["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/publicIPAddresses/{vm}-ip"))
    );
    assert!(
        nic["properties"]["networkSecurityGroup"]["id"]
            .as_str()
            .unwrap()
            .ends_with("-default-security-group")
    );

    // Creating → Succeeded: the public IP becomes the hostname.
    wait_running(&compute, &mut jpd).await;
    let ip = env
        .resource("publicIPAddresses", &format!("{vm}-ip"))
        .unwrap();
    assert_eq!(
        jpd.hostname.as_deref(),
        ip["properties"]["ipAddress"].as_str()
    );
    assert_eq!(jpd.ssh_port, Some(22));
    assert!(
        env.requests("GET", &format!("/virtualMachines/{vm}"))
            .iter()
            .any(|l| l.query.contains("instanceView"))
    );

    // Terminate: VM, NIC, public IP and disk all gone; twice is fine.
    compute
        .terminate_instance(&vm, LOCATION, jpd.backend_data.as_deref())
        .await
        .unwrap();
    assert!(env.names("virtualMachines").is_empty());
    assert!(env.names("networkInterfaces").is_empty());
    assert!(env.names("publicIPAddresses").is_empty());
    assert!(env.names("disks").is_empty());
    assert_eq!(env.count("DELETE", &format!("/virtualMachines/{vm}")), 1);
    assert_eq!(
        env.count("DELETE", &format!("/publicIPAddresses/{vm}-ip")),
        1
    );
    compute
        .terminate_instance(&vm, LOCATION, jpd.backend_data.as_deref())
        .await
        .unwrap();

    // A second VM reuses the network setup; one token served everything.
    let before_nsg = env.count("PUT", "/networkSecurityGroups/");
    let jpd2 = compute
        .create_instance(&offer, &instance("fleet-1"), None)
        .await
        .unwrap();
    assert_ne!(jpd2.instance_id, vm);
    assert_eq!(env.count("PUT", "/networkSecurityGroups/"), before_nsg);
    assert_eq!(env.count("POST", "/oauth2/v2.0/token"), 1);
}

#[tokio::test]
async fn spot_request_body() {
    let env = start().await;
    let compute = env.compute(json!({})).await;
    let offer = offer(&compute, "Standard_D2s_v3", true).await;
    let mut jpd = compute
        .create_instance(&offer, &instance("spot-0"), None)
        .await
        .unwrap();
    let p = vm_put(&env).body["properties"].clone();
    assert_eq!(p["priority"], "Spot");
    assert_eq!(p["evictionPolicy"], "Delete");
    assert_eq!(p["billingProfile"]["maxPrice"], -1);
    wait_running(&compute, &mut jpd).await;
    assert_eq!(jpd.price, offer.price);
}

#[tokio::test]
async fn gpu_offer_uses_cuda_image_and_disk_size() {
    let env = start().await;
    let compute = env.compute(json!({})).await;
    let offer = offer(&compute, "Standard_NC4as_T4_v3", false).await;
    let mut cfg = instance("gpu-0");
    cfg.disk_size_gb = Some(250);
    compute.create_instance(&offer, &cfg, None).await.unwrap();
    let p = vm_put(&env).body["properties"].clone();
    assert!(
        p["storageProfile"]["imageReference"]["communityGalleryImageId"]
            .as_str()
            .unwrap()
            .ends_with("/Images/dstack-cuda-0.14")
    );
    assert_eq!(p["storageProfile"]["osDisk"]["diskSizeGB"], 250);
}

#[tokio::test]
async fn private_ips_with_vpc_ids() {
    let env = start().await;
    let compute = env
        .compute(json!({"resource_group": "dstack-rg", "vpc_ids": {LOCATION: "net-rg/my-net"}, "public_ips": false}))
        .await;
    {
        let mut f = env.fake.lock().unwrap();
        let rg = format!("/subscriptions/{SUB}/resourceGroups/dstack-rg");
        f.resources.insert(
            rg.clone(),
            json!({"id": rg, "name": "dstack-rg", "location": LOCATION}),
        );
    }
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    let mut jpd = compute
        .create_instance(&offer, &instance("priv-0"), None)
        .await
        .unwrap();
    assert!(!jpd.public_ip_enabled);
    // No public IP, no network created; the subnet with outbound connectivity is used.
    assert_eq!(env.count("PUT", "/publicIPAddresses/"), 0);
    assert_eq!(env.count("PUT", "/virtualNetworks/"), 0);
    assert_eq!(
        env.count("PUT", "/resourceGroups/dstack-rg"),
        3,
        "NSG, NIC and VM only"
    );
    let nic = env.requests("PUT", "/networkInterfaces/").pop().unwrap();
    let ipc = &nic.body["properties"]["ipConfigurations"][0]["properties"];
    assert!(ipc.get("publicIPAddress").is_none());
    assert!(ipc["subnet"]["id"].as_str().unwrap().ends_with(
        "/resourceGroups/net-rg/providers/Microsoft.Network/virtualNetworks/my-net/subnets/natted"
    ));
    assert!(nic.path.contains("/resourceGroups/dstack-rg/"));
    wait_running(&compute, &mut jpd).await;
    assert!(jpd.hostname.as_deref().unwrap().starts_with("10.1.0."));
    assert_eq!(jpd.hostname, jpd.internal_ip);
    compute
        .terminate_instance(&jpd.instance_id, LOCATION, jpd.backend_data.as_deref())
        .await
        .unwrap();
    assert!(env.names("networkInterfaces").is_empty() && env.names("virtualMachines").is_empty());
    // The configured network is left alone.
    assert!(env.resource("virtualNetworks", "my-net").is_some());
}

#[tokio::test]
async fn vpc_ids_public_uses_first_subnet() {
    let env = start().await;
    let compute = env
        .compute(json!({"vpc_ids": {LOCATION: "net-rg/my-net"}}))
        .await;
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    compute
        .create_instance(&offer, &instance("pub-0"), None)
        .await
        .unwrap();
    assert_eq!(env.count("PUT", "/virtualNetworks/"), 0);
    let nic = env.requests("PUT", "/networkInterfaces/").pop().unwrap();
    assert!(
        nic.body["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"]
            .as_str()
            .unwrap()
            .ends_with("/my-net/subnets/plain")
    );
    assert_eq!(env.count("PUT", "/publicIPAddresses/"), 1);

    // A location without a network in vpc_ids is a config error.
    let mut other = offer.clone();
    other.region = "eastus".into();
    let e = compute
        .create_instance(&other, &instance("pub-1"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::Config { message } if message.contains("eastus")),
        "{e:?}"
    );
}

#[tokio::test]
async fn private_ips_without_outbound_subnet_is_config_error() {
    let env = start().await;
    let compute = env.compute(json!({"public_ips": false})).await;
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    let e = compute
        .create_instance(&offer, &instance("x"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::Config { message } if message.contains("outbound")),
        "{e:?}"
    );
    assert_eq!(env.count("PUT", "/virtualMachines/"), 0);
}

#[tokio::test]
async fn tags_carry_ids_on_every_resource() {
    let env = start().await;
    let compute = env
        .compute(json!({"tags": {"team": "ml", "owner": "mallory"}}))
        .await;
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    let cfg = instance("tagged-0")
        .with_tag("run", "r1")
        .with_tag("bad/key", "dropped");
    let jpd = compute.create_instance(&offer, &cfg, None).await.unwrap();
    let vm = jpd.instance_id.clone();
    for (kind, name) in [
        ("virtualMachines", vm.clone()),
        ("networkInterfaces", format!("{vm}-nic")),
        ("publicIPAddresses", format!("{vm}-ip")),
    ] {
        let put = env
            .requests("PUT", &format!("/{kind}/{name}"))
            .pop()
            .unwrap();
        let t = &put.body["tags"];
        assert_eq!(
            t["dstack_instance_id"],
            Uuid::from_u128(0x1111).to_string(),
            "{kind}"
        );
        assert_eq!(t["dstack_fleet_id"], Uuid::from_u128(0x2222).to_string());
        assert_eq!(t["dstack_server_id"], SERVER_ID);
        assert_eq!(t["dstack_project"], "main");
        assert_eq!(t["dstack_user"], "alice");
        assert_eq!(t["owner"], "dstack");
        assert_eq!(t["team"], "ml");
        assert_eq!(t["run"], "r1");
        assert!(t.get("bad/key").is_none());
    }
    let nsg = env
        .requests("PUT", "/networkSecurityGroups/")
        .pop()
        .unwrap();
    assert_eq!(nsg.body["tags"]["dstack_server_id"], SERVER_ID);

    // Invalid backend tags are rejected up front.
    let AnyBackendConfigWithCreds::Azure(c) = serde_json::from_value(json!({
        "type": "azure", "subscription_id": SUB, "tenant_id": TENANT,
        "creds": {"type": "client", "client_id": CLIENT_ID, "client_secret": SECRET},
        "tags": {"a<b": "x"},
    }))
    .unwrap() else {
        panic!()
    };
    let e = AzureCompute::new(c, env.settings()).await.unwrap_err();
    assert!(matches!(e, BackendError::Config { .. }));
}

#[tokio::test]
async fn sku_restrictions_make_offers_unavailable() {
    let env = start().await;
    {
        let mut f = env.fake.lock().unwrap();
        f.skus.insert(
            LOCATION.into(),
            vec![
                sku("Standard_D2s_v3", json!([])),
                sku("Standard_D4s_v3", json!([{"type": "Location", "values": [LOCATION],
                    "restrictionInfo": {"locations": [LOCATION]}, "reasonCode": "NotAvailableForSubscription"}])),
                sku("Standard_E2s_v4", json!([{"type": "Zone", "values": [LOCATION],
                    "restrictionInfo": {"locations": [LOCATION], "zones": ["1"]}, "reasonCode": "NotAvailableForSubscription"}])),
            ],
        );
    }
    let compute = env.compute(json!({})).await;
    let offers = compute.get_offers(None).await.unwrap();
    let by: BTreeMap<(String, bool), InstanceAvailability> = offers
        .iter()
        .map(|o| {
            (
                (o.instance.name.clone(), o.instance.resources.spot),
                o.availability,
            )
        })
        .collect();
    assert!(
        offers.iter().all(|o| o.region == LOCATION),
        "regions filter"
    );
    assert!(
        !by.contains_key(&("Standard_B1s".to_string(), false)),
        "unsupported series filtered"
    );
    assert_eq!(
        by[&("Standard_D2s_v3".to_string(), false)],
        InstanceAvailability::Unknown
    );
    assert_eq!(
        by[&("Standard_D2s_v3".to_string(), true)],
        InstanceAvailability::Unknown
    );
    assert_eq!(
        by[&("Standard_D4s_v3".to_string(), false)],
        InstanceAvailability::NoQuota
    );
    assert_eq!(
        by[&("Standard_E2s_v4".to_string(), false)],
        InstanceAvailability::Unknown
    );
    assert_eq!(
        by[&("Standard_NC4as_T4_v3".to_string(), false)],
        InstanceAvailability::NoQuota,
        "not listed"
    );
    let skus = env.requests("GET", "/providers/Microsoft.Compute/skus");
    assert_eq!(skus.len(), 2, "two pages");
    assert!(
        skus[0]
            .query
            .contains("$filter=location%20eq%20%27westeurope%27"),
        "{}",
        skus[0].query
    );
    // Cached.
    compute.get_offers(None).await.unwrap();
    assert_eq!(env.count("GET", "/providers/Microsoft.Compute/skus"), 2);

    // Without `regions`, every catalog location is offered.
    let all = env
        .compute(json!({"regions": null}))
        .await
        .get_offers(None)
        .await
        .unwrap();
    assert!(all.iter().any(|o| o.region == "eastus"));
}

#[tokio::test]
async fn capacity_errors_fall_through_to_next_offer() {
    let env = start().await;
    {
        let mut f = env.fake.lock().unwrap();
        f.fail_sync
            .insert("Standard_D2s_v3".into(), (409, "SkuNotAvailable".into()));
        f.fail_sync.insert(
            "Standard_E2s_v4".into(),
            (409, "OperationNotAllowed".into()),
        );
        f.fail_async
            .insert("Standard_D4s_v3".into(), "AllocationFailed".into());
        f.vm_delay = Duration::ZERO;
    }
    let compute = env.compute(json!({})).await;
    let offers: Vec<_> = compute
        .get_offers(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| !o.instance.resources.spot)
        .collect();
    let names: Vec<&str> = offers.iter().map(|o| o.instance.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Standard_D2s_v3",
            "Standard_E2s_v4",
            "Standard_D4s_v3",
            "Standard_NC4as_T4_v3"
        ]
    );
    let (chosen, jpd) = create_first_available(&compute, &offers, &instance("ft-0"), None)
        .await
        .unwrap();
    assert_eq!(chosen.instance.name, "Standard_NC4as_T4_v3");
    let sizes: Vec<String> = env
        .requests("PUT", "/virtualMachines/")
        .iter()
        .map(|l| {
            l.body["properties"]["hardwareProfile"]["vmSize"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(sizes, names);
    // Nothing of the failed attempts is left: one VM with its NIC and IP.
    assert_eq!(env.names("virtualMachines"), [jpd.instance_id.as_str()]);
    assert_eq!(
        env.names("networkInterfaces"),
        [format!("{}-nic", jpd.instance_id)]
    );
    assert_eq!(
        env.names("publicIPAddresses"),
        [format!("{}-ip", jpd.instance_id)]
    );
    assert_eq!(env.names("disks"), [format!("{}-disk", jpd.instance_id)]);
}

#[tokio::test]
async fn fall_through_is_capped_at_25_offers() {
    let env = start().await;
    env.fake.lock().unwrap().fail_all = Some((409, "OperationNotAllowed".into()));
    let compute = env.compute(json!({})).await;
    let base = offer(&compute, "Standard_D2s_v3", false).await;
    let offers: Vec<_> = (0..30)
        .map(|i| {
            let mut o = base.clone();
            o.price += i as f64 * 0.001;
            o
        })
        .collect();
    let e = create_first_available(&compute, &offers, &instance("cap"), None)
        .await
        .unwrap_err();
    assert!(e.is_no_capacity(), "{e:?}");
    assert!(e.to_string().contains("quota"), "{e}");
    assert_eq!(env.count("PUT", "/virtualMachines/"), MAX_OFFERS_TRIED);
    assert!(env.names("networkInterfaces").is_empty());
    assert!(env.names("publicIPAddresses").is_empty());
}

#[tokio::test]
async fn bad_client_secret_is_invalid_credentials() {
    let env = start().await;
    let compute = env.compute_with_secret("wrong-secret", json!({})).await;
    let e = compute.validate_credentials().await.unwrap_err();
    match &e {
        BackendError::InvalidCredentials { message } => {
            assert!(message.contains("AADSTS7000215"), "{message}");
            assert!(
                !message.contains("wrong-secret") && !message.contains("Trace ID"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{compute:?}").contains("wrong-secret"));
    // The provisioning loop stops at once.
    let offers = vec![offer(&env.compute(json!({})).await, "Standard_D2s_v3", false).await; 3];
    let e = create_first_available(&compute, &offers, &instance("x"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, BackendError::InvalidCredentials { .. }),
        "{e:?}"
    );
    assert_eq!(env.count("PUT", "/virtualMachines/"), 0);

    // A token without rights on the subscription (403) is rejected too.
    let compute = env.compute(json!({})).await;
    env.fake.lock().unwrap().forbid = true;
    let e = compute.validate_credentials().await.unwrap_err();
    assert!(
        matches!(&e, BackendError::InvalidCredentials { message } if message.contains("AuthorizationFailed")),
        "{e:?}"
    );
}

#[tokio::test]
async fn default_creds_use_managed_identity() {
    let env = start().await;
    let compute = env
        .compute_default_creds(&[("AZURE_CLIENT_ID", String::new())], None)
        .await;
    let kinds: Vec<_> = compute.token_sources().iter().map(|s| s.kind()).collect();
    assert_eq!(kinds, ["managed_identity", "azure_cli"]);
    compute.validate_credentials().await.unwrap();
    assert!(matches!(
        compute.active_token_source().await,
        Some(TokenSource::ManagedIdentity { client_id: None })
    ));
    let mi = env.requests("GET", "/metadata/identity/oauth2/token");
    assert_eq!(mi.len(), 1);
    assert!(
        mi[0]
            .query
            .contains("resource=https%3A%2F%2Fmanagement.azure.com%2F"),
        "{}",
        mi[0].query
    );
}

#[tokio::test]
async fn default_creds_workload_identity_uses_client_assertion() {
    let env = start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, format!("{FEDERATED_TOKEN}\n")).unwrap();
    let wi_env = [
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_TENANT_ID", TENANT.to_string()),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
    ];
    let compute = env.compute_default_creds(&wi_env, None).await;
    let kinds: Vec<_> = compute.token_sources().iter().map(|s| s.kind()).collect();
    assert_eq!(
        kinds,
        ["workload_identity", "managed_identity", "azure_cli"]
    );
    compute.validate_credentials().await.unwrap();
    assert!(matches!(
        compute.active_token_source().await,
        Some(TokenSource::WorkloadIdentity { .. })
    ));
    let posts = env.requests("POST", "/oauth2/v2.0/token");
    assert_eq!(posts.len(), 1);
    assert!(posts[0].path.starts_with(&format!("/{TENANT}/")));
    let form = posts[0].body.as_str().unwrap().to_string();
    assert_eq!(
        query_param(&form, "client_assertion").as_deref(),
        Some(FEDERATED_TOKEN)
    );
    assert_eq!(
        query_param(&form, "client_assertion_type").as_deref(),
        Some(JWT_BEARER)
    );
    assert_eq!(query_param(&form, "client_id").as_deref(), Some(CLIENT_ID));
    assert_eq!(
        query_param(&form, "grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        query_param(&form, "scope").as_deref(),
        Some("https://management.azure.com/.default")
    );
    assert_eq!(env.count("GET", "/metadata/identity/oauth2/token"), 0);
    assert!(!format!("{compute:?}").contains(FEDERATED_TOKEN));

    // A rejected assertion ends the chain: no managed identity, no CLI.
    std::fs::write(&token_file, "eyJ.rotated-but-unknown.sig").unwrap();
    let compute = env.compute_default_creds(&wi_env, None).await;
    let e = compute.validate_credentials().await.unwrap_err();
    match &e {
        BackendError::InvalidCredentials { message } => {
            assert!(message.contains("AADSTS700211"), "{message}");
            assert!(!message.contains("rotated") && !message.contains("Trace ID"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.count("GET", "/metadata/identity/oauth2/token"), 0);
}

/// Writes an executable fake `az` into `dir` that records its arguments in `dir/args` and
/// runs `body`.
fn fake_az(dir: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("az");
    let script = format!("#!/bin/sh\nprintf '%s ' \"$@\" > \"$(dirname \"$0\")/args\"\n{body}\n");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn default_creds_fall_back_to_azure_cli() {
    let env = start().await;
    // No managed identity: the metadata endpoint refuses connections.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let expires = chrono::Utc::now().timestamp() + 3600;
    fake_az(
        dir.path(),
        &format!(
            "cat <<'EOF'\n{}\nEOF",
            json!({"accessToken": CLI_TOKEN, "expiresOn": "2099-01-01 00:00:00.000000",
                "expires_on": expires, "subscription": SUB, "tenant": TENANT,
                "tokenType": "Bearer"})
        ),
    );
    let compute = env
        .compute_default_creds(&[("PATH", path.clone())], Some(&closed))
        .await;
    compute.validate_credentials().await.unwrap();
    assert!(matches!(
        compute.active_token_source().await,
        Some(TokenSource::AzureCli { .. })
    ));
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    assert_eq!(
        args.trim(),
        "account get-access-token --resource https://management.azure.com/ -o json"
    );
    // The token is cached: more ARM calls, no second run.
    std::fs::remove_file(dir.path().join("args")).unwrap();
    compute.validate_credentials().await.unwrap();
    assert!(!dir.path().join("args").exists());

    // Not logged in: every source unavailable, and the error says what was tried.
    fake_az(
        dir.path(),
        "echo \"ERROR: Please run 'az login' to setup account.\" >&2\nexit 1",
    );
    let compute = env
        .compute_default_creds(&[("PATH", path.clone())], Some(&closed))
        .await;
    let e = compute.validate_credentials().await.unwrap_err();
    match &e {
        BackendError::InvalidCredentials { message } => {
            assert!(message.contains("managed_identity"), "{message}");
            assert!(message.contains("az login"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    // No CLI at all.
    let empty = tempfile::tempdir().unwrap();
    let compute = env
        .compute_default_creds(
            &[("PATH", empty.path().display().to_string())],
            Some(&closed),
        )
        .await;
    let e = compute.validate_credentials().await.unwrap_err();
    assert!(
        matches!(&e, BackendError::InvalidCredentials { message } if message.contains("not on PATH")),
        "{e:?}"
    );
}

#[tokio::test]
async fn throttling_is_retried_with_retry_after() {
    let env = start().await;
    {
        let mut f = env.fake.lock().unwrap();
        f.inject
            .push_back(("GET".into(), format!("/subscriptions/{SUB}"), 429, Some(0)));
        f.inject
            .push_back(("PUT".into(), "-nic".into(), 429, Some(0)));
        f.inject.push_back(("PUT".into(), "-nic".into(), 503, None));
    }
    let compute = env.compute(json!({})).await;
    compute.validate_credentials().await.unwrap();
    assert_eq!(env.count("GET", &format!("/subscriptions/{SUB}")), 2);
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    let mut jpd = compute
        .create_instance(&offer, &instance("thr-0"), None)
        .await
        .unwrap();
    assert_eq!(env.count("PUT", "/networkInterfaces/"), 3);
    wait_running(&compute, &mut jpd).await;
}

#[tokio::test]
async fn vm_deleted_while_provisioning() {
    let env = start().await;
    let compute = env.compute(json!({})).await;
    let offer = offer(&compute, "Standard_D2s_v3", true).await;
    let mut jpd = compute
        .create_instance(&offer, &instance("evicted-0"), None)
        .await
        .unwrap();
    compute.update_provisioning_data(&mut jpd).await.unwrap();
    // Evicted / deleted behind our back (the VM only).
    {
        let mut f = env.fake.lock().unwrap();
        let id = f
            .resources
            .keys()
            .find(|k| k.ends_with(&format!("/virtualMachines/{}", jpd.instance_id)))
            .cloned()
            .unwrap();
        f.resources.remove(&id);
    }
    let e = compute
        .update_provisioning_data(&mut jpd)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::Provisioning { message } if message.contains("no longer exists")),
        "{e:?}"
    );
    assert!(env.names("networkInterfaces").is_empty(), "NIC leaked");
    assert!(env.names("publicIPAddresses").is_empty(), "IP leaked");
    assert!(env.names("disks").is_empty(), "disk leaked");
    compute
        .terminate_instance(&jpd.instance_id, LOCATION, jpd.backend_data.as_deref())
        .await
        .unwrap();
}

#[tokio::test]
async fn vm_failing_after_creation_is_cleaned_up_by_polling() {
    let env = start().await;
    let compute = env.compute(json!({})).await;
    let offer = offer(&compute, "Standard_D2s_v3", true).await;
    let mut jpd = compute
        .create_instance(&offer, &instance("late-0"), None)
        .await
        .unwrap();
    // The VM goes Failed after it was created (e.g. a spot reallocation that failed).
    {
        let mut f = env.fake.lock().unwrap();
        let vm = f
            .resources
            .iter_mut()
            .find(|(k, _)| k.ends_with(&format!("/virtualMachines/{}", jpd.instance_id)))
            .map(|(_, v)| v)
            .unwrap();
        vm["properties"]["provisioningState"] = json!("Failed");
        vm["properties"]["instanceView"] = json!({"statuses": [{
            "code": "ProvisioningState/failed/AllocationFailed", "level": "Error",
            "message": "Allocation failed."}]});
    }
    let e = compute
        .update_provisioning_data(&mut jpd)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::Provisioning { message } if message.contains("AllocationFailed")),
        "{e:?}"
    );
    assert_nothing_left(&env);
}

/// No VM, NIC, public IP or disk is left in the fake.
fn assert_nothing_left(env: &Env) {
    for kind in [
        "virtualMachines",
        "networkInterfaces",
        "publicIPAddresses",
        "disks",
    ] {
        assert!(
            env.names(kind).is_empty(),
            "{kind} leaked: {:?}",
            env.names(kind)
        );
    }
}

#[tokio::test]
async fn late_allocation_failures_clean_up_and_try_the_next_offer() {
    for code in [
        "AllocationFailed",
        "OverconstrainedAllocationRequest",
        "ZonalAllocationFailed",
        "SkuNotAvailable",
    ] {
        let env = start().await;
        {
            let mut f = env.fake.lock().unwrap();
            // The PUT is accepted; the operation fails 80 ms later.
            f.vm_delay = Duration::from_millis(80);
            f.fail_async.insert("Standard_D2s_v3".into(), code.into());
        }
        let compute = env.compute(json!({})).await;
        let failing = offer(&compute, "Standard_D2s_v3", false).await;
        let good = offer(&compute, "Standard_D4s_v3", false).await;

        // Alone: NoCapacity, and nothing is left.
        let e = compute
            .create_instance(&failing, &instance("late-0"), None)
            .await
            .unwrap_err();
        assert!(e.is_no_capacity(), "{code}: {e:?}");
        assert!(e.to_string().contains(code), "{code}: {e}");
        assert_nothing_left(&env);
        let vm = vm_put(&env).path.rsplit('/').next().unwrap().to_string();
        assert_eq!(env.count("DELETE", &format!("/virtualMachines/{vm}")), 1);

        // In the provisioning loop: the next offer is tried and only its VM remains.
        let offers = vec![failing.clone(), good.clone()];
        let (chosen, jpd) = create_first_available(&compute, &offers, &instance("late-1"), None)
            .await
            .unwrap();
        assert_eq!(chosen.instance.name, "Standard_D4s_v3", "{code}");
        assert!(jpd.hostname.is_some());
        let id = jpd.instance_id.clone();
        assert_eq!(env.names("virtualMachines"), [id.as_str()], "{code}");
        assert_eq!(env.names("networkInterfaces"), [format!("{id}-nic")]);
        assert_eq!(env.names("publicIPAddresses"), [format!("{id}-ip")]);
        assert_eq!(env.names("disks"), [format!("{id}-disk")]);
    }
}

#[tokio::test]
async fn failed_provisioning_state_is_no_capacity() {
    let env = start().await;
    env.fake
        .lock()
        .unwrap()
        .fail_state
        .insert("Standard_D2s_v3".into(), "AllocationFailed".into());
    let compute = env.compute(json!({})).await;
    let failing = offer(&compute, "Standard_D2s_v3", false).await;
    let e = compute
        .create_instance(&failing, &instance("state-0"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::NoCapacity { message }
            if message.contains("provisioning failed") && message.contains("AllocationFailed")),
        "{e:?}"
    );
    assert_nothing_left(&env);
    let good = offer(&compute, "Standard_E2s_v4", false).await;
    let offers = [failing, good];
    let (chosen, _) = create_first_available(&compute, &offers, &instance("state-1"), None)
        .await
        .unwrap();
    assert_eq!(chosen.instance.name, "Standard_E2s_v4");
    assert_eq!(env.names("virtualMachines").len(), 1);
}

#[tokio::test]
async fn vm_create_timeout_deletes_everything() {
    let env = start().await;
    env.fake.lock().unwrap().vm_delay = Duration::from_secs(60);
    let compute = env
        .compute(json!({}))
        .await
        .with_vm_create_timeout(Duration::from_millis(200));
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    let started = Instant::now();
    let e = compute
        .create_instance(&offer, &instance("slow-0"), None)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(&e, BackendError::Cloud { code, message, .. }
            if code == "Timeout" && message.contains("Timed out waiting")),
        "{e:?}"
    );
    assert_nothing_left(&env);
}

#[tokio::test]
async fn terminate_missing_vm_succeeds() {
    let env = start().await;
    let compute = env.compute(json!({"resource_group": "dstack-rg"})).await;
    compute
        .terminate_instance("never-existed-1234", LOCATION, None)
        .await
        .unwrap();
    let data = json!({"resource_group": "dstack-rg", "location": LOCATION, "nic": "gone-nic",
        "public_ip": "gone-ip", "disk": "gone-disk"})
    .to_string();
    compute
        .terminate_instance("gone", LOCATION, Some(&data))
        .await
        .unwrap();
    assert_eq!(env.count("DELETE", "/networkInterfaces/gone-nic"), 1);
    assert_eq!(env.count("DELETE", "/publicIPAddresses/gone-ip"), 1);
    assert_eq!(env.count("DELETE", "/disks/gone-disk"), 1);
}

#[tokio::test]
async fn sweep_lists_vms_tagged_with_the_server_id() {
    let env = start().await;
    let compute = env.compute(json!({})).await;
    let offer = offer(&compute, "Standard_D2s_v3", false).await;
    let jpd = compute
        .create_instance(&offer, &instance("swept-0"), None)
        .await
        .unwrap();
    let sweep = compute.as_sweep().unwrap();
    let listed = sweep.list_tagged_instances(SERVER_ID).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let t = &listed[0];
    assert_eq!(t.instance_id, jpd.instance_id);
    assert_eq!(t.region, LOCATION);
    assert_eq!(
        t.dstack_instance_id.as_deref(),
        Some(Uuid::from_u128(0x1111).to_string().as_str())
    );
    assert!(
        sweep
            .list_tagged_instances("another-server")
            .await
            .unwrap()
            .is_empty()
    );
    // The listed backend data deletes the VM and what was created with it.
    compute
        .terminate_instance(&t.instance_id, &t.region, t.backend_data.as_deref())
        .await
        .unwrap();
    assert!(env.names("virtualMachines").is_empty());
    assert!(env.names("networkInterfaces").is_empty());
    assert!(env.names("publicIPAddresses").is_empty());
    assert!(env.names("disks").is_empty());
    assert!(
        sweep
            .list_tagged_instances(SERVER_ID)
            .await
            .unwrap()
            .is_empty()
    );
}
