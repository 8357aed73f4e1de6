//! A fake Kubernetes API server (axum on loopback) shared by `backends_kubernetes.rs` and
//! `runs_kubernetes.rs` (`#[path = "support/fake_k8s.rs"] mod fake_k8s;`).
//!
//! The fake follows the core/v1 REST API as kube-rs uses it: `GET /api/v1/nodes`,
//! `GET /api/v1/nodes/{name}`, `GET|POST /api/v1/namespaces[/{ns}]`, and list / create /
//! get / delete of pods, services and secrets under `/api/v1/namespaces/{ns}/…`, with
//! `Status` error bodies (`code`, `reason`, `message`), 404 for missing objects and 409 for
//! existing ones, bearer-token auth (401 otherwise), and injected answers (429 throttling).
//! A "kubelet" task moves every created pod from `Pending` to `Running` after a delay (node
//! name, pod IP, container statuses) — or, when a test says so, deletes it (the pod vanishes)
//! or leaves it unschedulable with a `PodScheduled=False` condition. Services get a cluster
//! IP, NodePort services a node port. Tests can pin the pod IP and the services' cluster IP
//! (or give every pod its own address and every `ClusterIP` service its pod's address) and
//! hook pod start and deletion (to run something real for a pod). `GET /_fake/objects/{kind}`
//! (no auth) lists what the fake holds, for tests driving it from another process
//! (`fake_k8s_server.rs`).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
#[cfg(feature = "kubernetes")]
use dstack_sdk::backends::BackendSettings;
#[cfg(feature = "kubernetes")]
use dstack_sdk::backends::common::retry::Backoff;
#[cfg(feature = "kubernetes")]
use dstack_sdk::backends::kubernetes::KubernetesCompute;
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use dstack_sdk::models::backends::kubernetes::KubernetesBackendConfigWithCreds;
use serde_json::{Value, json};
use uuid::Uuid;

pub const TOKEN: &str = "good-token";
pub const SERVER_ID: &str = "srv-k8s-test";
pub const NS: &str = "dstack";
pub const JUMP_HOST: &str = "203.0.113.7";
pub const JUMP_PORT: i64 = 32000;

/// A hook on a pod (its name and object), called outside the fake's lock.
pub type PodHook = Arc<dyn Fn(&str, &Value) + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// The fake API server

#[derive(Default)]
pub struct Fake {
    pub nodes: Vec<Value>,
    pub namespaces: BTreeMap<String, Value>,
    /// (kind, namespace, name) → object.
    pub objects: BTreeMap<(String, String, String), Value>,
    /// Every request: "METHOD /path".
    pub log: Vec<String>,
    /// Injected answers: (method, path prefix, status) consumed in order when they match.
    pub inject: VecDeque<(String, String, u16)>,
    /// Pods whose names start with this are deleted by the kubelet instead of started.
    pub vanish_prefix: Option<String>,
    /// Pods whose names start with this fail at once (image pull error, crashed command).
    pub fail_prefix: Option<String>,
    /// Pods whose names start with this stay pending and unschedulable.
    pub unschedulable_prefix: Option<String>,
    pub counter: u32,
    /// The IP the kubelet reports for started pods (default `10.244.1.<n>`).
    pub pod_ip: Option<String>,
    /// When set (e.g. `127.1.`), every started pod gets its own IP
    /// `<prefix><n / 250>.<n % 250 + 1>` (over `pod_ip`).
    pub pod_ip_prefix: Option<String>,
    /// The cluster IP of new `ClusterIP` services (default `10.96.0.<n>`).
    pub cluster_ip: Option<String>,
    /// `ClusterIP` services that select a pod with an IP get that pod's IP as their cluster
    /// IP (over `cluster_ip`): kube-proxy without the NAT, for "pods" that listen on loopback
    /// addresses.
    pub cluster_ip_from_pod: bool,
    /// Called when the kubelet reports a pod running.
    pub on_pod_running: Option<PodHook>,
    /// Called when a pod is deleted.
    pub on_pod_deleted: Option<PodHook>,
}

pub type Shared = Arc<Mutex<Fake>>;

pub fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
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

pub fn created(v: &Value) -> Response {
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        v.to_string(),
    )
        .into_response()
}

pub fn list(kind: &str, items: Vec<Value>) -> Response {
    ok(
        &json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items}),
    )
}

/// Auth, logging and injected answers for every request.
pub fn pre(fake: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    let mut f = fake.lock().unwrap();
    let path = uri.path().to_string();
    f.log.push(format!("{method} {path}"));
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {TOKEN}") {
        return Some(status(401, "Unauthorized", "Unauthorized"));
    }
    if let Some(i) = f
        .inject
        .iter()
        .position(|(m, p, _)| m == method.as_str() && path.starts_with(p.as_str()))
    {
        let (_, _, code) = f.inject.remove(i).unwrap();
        return Some(status(
            code,
            "TooManyRequests",
            "the server has received too many requests",
        ));
    }
    None
}

pub async fn nodes_list(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = pre(&fake, &method, &uri, &headers) {
        return r;
    }
    let items = fake.lock().unwrap().nodes.clone();
    list("NodeList", items)
}

pub async fn node_get(
    State(fake): State<Shared>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = pre(&fake, &method, &uri, &headers) {
        return r;
    }
    let f = fake.lock().unwrap();
    match f
        .nodes
        .iter()
        .find(|n| n["metadata"]["name"] == name.as_str())
    {
        Some(n) => ok(n),
        None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
    }
}

pub async fn namespaces(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = pre(&fake, &method, &uri, &headers) {
        return r;
    }
    let mut f = fake.lock().unwrap();
    if method == Method::POST {
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        if f.namespaces.contains_key(&name) {
            return status(
                409,
                "AlreadyExists",
                &format!("namespaces \"{name}\" already exists"),
            );
        }
        v["status"] = json!({"phase": "Active"});
        f.namespaces.insert(name, v.clone());
        return created(&v);
    }
    list("NamespaceList", f.namespaces.values().cloned().collect())
}

pub async fn namespace_get(
    State(fake): State<Shared>,
    Path(ns): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = pre(&fake, &method, &uri, &headers) {
        return r;
    }
    let f = fake.lock().unwrap();
    match f.namespaces.get(&ns) {
        Some(v) => ok(v),
        None => status(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
    }
}

pub fn list_kind(kind: &str) -> &'static str {
    match kind {
        "pods" => "PodList",
        "services" => "ServiceList",
        _ => "SecretList",
    }
}

pub fn object_kind(kind: &str) -> &'static str {
    match kind {
        "pods" => "Pod",
        "services" => "Service",
        _ => "Secret",
    }
}

pub async fn collection(
    State(fake): State<Shared>,
    Path((ns, kind)): Path<(String, String)>,
    Query(q): Query<BTreeMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = pre(&fake, &method, &uri, &headers) {
        return r;
    }
    if !["pods", "services", "secrets"].contains(&kind.as_str()) {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    if method == Method::GET {
        let f = fake.lock().unwrap();
        let selector: Vec<(String, String)> = q
            .get("labelSelector")
            .map(|s| {
                s.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let items = f
            .objects
            .iter()
            .filter(|((k, n, _), _)| k == &kind && n == &ns)
            .filter(|(_, v)| {
                selector
                    .iter()
                    .all(|(k, val)| v["metadata"]["labels"][k] == val.as_str())
            })
            .map(|(_, v)| v.clone())
            .collect();
        return list(list_kind(&kind), items);
    }
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    let name = v["metadata"]["name"].as_str().unwrap().to_string();
    let spawn_kubelet;
    {
        let mut f = fake.lock().unwrap();
        if !f.namespaces.contains_key(&ns) {
            return status(404, "NotFound", &format!("namespaces \"{ns}\" not found"));
        }
        let key = (kind.clone(), ns.clone(), name.clone());
        if f.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                &format!("{kind} \"{name}\" already exists"),
            );
        }
        f.counter += 1;
        let n = f.counter;
        v["apiVersion"] = json!("v1");
        v["kind"] = json!(object_kind(&kind));
        v["metadata"]["namespace"] = json!(ns);
        v["metadata"]["uid"] = json!(Uuid::new_v4().to_string());
        v["metadata"]["resourceVersion"] = json!(n.to_string());
        v["metadata"]["creationTimestamp"] = json!("2026-11-23T12:00:00Z");
        match kind.as_str() {
            "pods" => {
                v["status"] = json!({"phase": "Pending"});
                spawn_kubelet = true;
            }
            "services" => {
                let pod_ip = f
                    .cluster_ip_from_pod
                    .then(|| selected_pod_ip(&f, &ns, &v))
                    .flatten();
                let ip = match (&f.cluster_ip, v["spec"]["type"].as_str(), pod_ip) {
                    (_, Some("ClusterIP"), Some(ip)) => ip,
                    (Some(ip), Some("ClusterIP"), None) => ip.clone(),
                    _ => format!("10.96.0.{n}"),
                };
                v["spec"]["clusterIP"] = json!(ip);
                if v["spec"]["type"] == "NodePort" {
                    let ports = v["spec"]["ports"].as_array_mut().unwrap();
                    for p in ports {
                        if p.get("nodePort").is_none_or(Value::is_null) {
                            p["nodePort"] = json!(30000 + n);
                        }
                    }
                }
                spawn_kubelet = false;
            }
            _ => spawn_kubelet = false,
        }
        f.objects.insert(key, v.clone());
    }
    if spawn_kubelet {
        tokio::spawn(kubelet(fake.clone(), ns, name));
    }
    created(&v)
}

pub async fn object(
    State(fake): State<Shared>,
    Path((ns, kind, name)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = pre(&fake, &method, &uri, &headers) {
        return r;
    }
    let (found, hook) = {
        let mut f = fake.lock().unwrap();
        let key = (kind.clone(), ns, name.clone());
        if method == Method::DELETE {
            let hook = if kind == "pods" {
                f.on_pod_deleted.clone()
            } else {
                None
            };
            (f.objects.remove(&key), hook)
        } else {
            (f.objects.get(&key).cloned(), None)
        }
    };
    if let (Some(v), Some(hook)) = (&found, hook) {
        hook(&name, v);
    }
    match found {
        Some(v) => ok(&v),
        None => status(404, "NotFound", &format!("{kind} \"{name}\" not found")),
    }
}

/// The IP of the first pod in `ns` that `svc`'s selector matches, when it has one.
fn selected_pod_ip(f: &Fake, ns: &str, svc: &Value) -> Option<String> {
    let selector = svc["spec"]["selector"].as_object()?;
    f.objects
        .iter()
        .filter(|((k, n, _), _)| k == "pods" && n == ns)
        .map(|(_, p)| p)
        .find(|p| {
            selector
                .iter()
                .all(|(k, v)| &p["metadata"]["labels"][k] == v)
        })
        .and_then(|p| p["status"]["podIP"].as_str().map(str::to_string))
}

/// `GET /_fake/objects/{kind}`: every object of a kind (pods, services, secrets), no auth.
pub async fn fake_objects(State(fake): State<Shared>, Path(kind): Path<String>) -> Response {
    let f = fake.lock().unwrap();
    let items: Vec<Value> = f
        .objects
        .iter()
        .filter(|((k, _, _), _)| k == &kind)
        .map(|(_, v)| v.clone())
        .collect();
    ok(&Value::Array(items))
}

/// What a scheduler + kubelet do with a new pod, after a short delay.
pub async fn kubelet(fake: Shared, ns: String, name: String) {
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = kubelet_step(&fake, ns, &name);
    if let Some(pod) = started {
        let hook = fake.lock().unwrap().on_pod_running.clone();
        if let Some(hook) = hook {
            hook(&name, &pod);
        }
    }
}

/// Moves a new pod on; the pod when it now runs.
fn kubelet_step(fake: &Shared, ns: String, name: &str) -> Option<Value> {
    let name = name.to_string();
    let mut f = fake.lock().unwrap();
    let key = ("pods".to_string(), ns, name.clone());
    if f.vanish_prefix
        .as_ref()
        .is_some_and(|p| name.starts_with(p))
    {
        f.objects.remove(&key);
        return None;
    }
    let unschedulable = f
        .unschedulable_prefix
        .as_ref()
        .is_some_and(|p| name.starts_with(p));
    f.counter += 1;
    let n = f.counter;
    let fails = f.fail_prefix.as_ref().is_some_and(|p| name.starts_with(p));
    let pod_ip = match &f.pod_ip_prefix {
        Some(prefix) => format!("{prefix}{}.{}", n / 250, n % 250 + 1),
        None => f.pod_ip.clone().unwrap_or_else(|| format!("10.244.1.{n}")),
    };
    let pod = f.objects.get_mut(&key)?;
    if fails {
        pod["spec"]["nodeName"] = json!("cpu-node-1");
        pod["status"] = json!({
            "phase": "Failed", "reason": "Error",
            "containerStatuses": [{
                "name": pod["spec"]["containers"][0]["name"], "ready": false, "restartCount": 0,
                "image": "", "imageID": "",
                "state": {"terminated": {"exitCode": 11, "reason": "Error"}},
            }],
        });
        return None;
    }
    if unschedulable {
        pod["status"]["conditions"] = json!([{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        }]);
        return None;
    }
    let wants_gpu = pod["spec"]["containers"][0]["resources"]["requests"]
        .get("nvidia.com/gpu")
        .is_some();
    let node = if wants_gpu {
        "gpu-node-1"
    } else {
        "cpu-node-1"
    };
    pod["spec"]["nodeName"] = json!(node);
    pod["status"] = json!({
        "phase": "Running",
        "podIP": pod_ip,
        "hostIP": "192.168.0.10",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{
            "name": pod["spec"]["containers"][0]["name"], "ready": true, "restartCount": 0,
            "image": pod["spec"]["containers"][0]["image"], "imageID": "",
            "state": {"running": {"startedAt": "2026-11-23T12:00:01Z"}},
        }],
    });
    Some(pod.clone())
}

pub fn nodes() -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "gpu-node-1", "labels": {
                "kubernetes.io/hostname": "gpu-node-1",
                "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "nvidia.com/gpu.count": "4",
            }},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {
                "allocatable": {"cpu": "63500m", "memory": "503Gi", "ephemeral-storage": "900Gi",
                                "nvidia.com/gpu": "4", "pods": "110"},
                "capacity": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "4"},
                "addresses": [{"type": "InternalIP", "address": "192.168.0.10"}],
                "nodeInfo": {"architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                             "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                             "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""},
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "cpu-node-1", "labels": {"kubernetes.io/hostname": "cpu-node-1"}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "100Gi", "pods": "110"},
                "addresses": [{"type": "InternalIP", "address": "192.168.0.11"},
                              {"type": "ExternalIP", "address": "198.51.100.11"}],
                "nodeInfo": {"architecture": "arm64", "bootID": "", "containerRuntimeVersion": "",
                             "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                             "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""},
            },
        }),
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "control-plane", "labels": {}},
            "spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}},
        }),
    ]
}

pub struct Env {
    pub fake: Shared,
    pub url: String,
}

pub async fn start() -> Env {
    start_on("127.0.0.1:0").await
}

/// The fake's routes over `fake`.
pub fn app(fake: Shared) -> Router {
    Router::new()
        .route("/api/v1/nodes", get(nodes_list))
        .route("/api/v1/nodes/{name}", get(node_get))
        .route("/api/v1/namespaces", get(namespaces).post(namespaces))
        .route("/api/v1/namespaces/{ns}", get(namespace_get))
        .route(
            "/api/v1/namespaces/{ns}/{kind}",
            get(collection).post(collection),
        )
        .route(
            "/api/v1/namespaces/{ns}/{kind}/{name}",
            get(object).delete(object),
        )
        .route("/_fake/objects/{kind}", get(fake_objects))
        .with_state(fake)
}

/// Starts the fake on `addr` (`127.0.0.1:0` for a free port).
pub async fn start_on(addr: &str) -> Env {
    let fake: Shared = Arc::new(Mutex::new(Fake {
        nodes: nodes(),
        ..Fake::default()
    }));
    let app = app(fake.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Env {
        fake,
        url: format!("http://{addr}"),
    }
}

impl Env {
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: dstack\n  user:\n    token: {token}\n\
             contexts:\n- name: ctx-a\n  context:\n    cluster: fake\n    user: dstack\n    namespace: {NS}\n\
             current-context: ctx-a\n",
            url = self.url
        )
    }

    pub fn config(&self, token: &str) -> AnyBackendConfigWithCreds {
        serde_json::from_value(self.config_json(token, JUMP_HOST, JUMP_PORT)).unwrap()
    }

    /// The backend config as JSON (what `POST …/backends/create` takes), with the jump
    /// pod's NodePort reached at `jump_host:jump_port`.
    pub fn config_json(&self, token: &str, jump_host: &str, jump_port: i64) -> Value {
        json!({
            "type": "kubernetes",
            "kubeconfig": {"filename": "", "data": self.kubeconfig(token)},
            "contexts": [{"name": "ctx-a", "proxy_jump": {"hostname": jump_host, "port": jump_port}}],
        })
    }

    #[cfg(feature = "kubernetes")]
    pub fn settings(&self) -> BackendSettings {
        BackendSettings::new(SERVER_ID).with_retry(Backoff::fast(Duration::from_millis(5), 4))
    }

    #[cfg(feature = "kubernetes")]
    pub async fn compute(&self) -> KubernetesCompute {
        let AnyBackendConfigWithCreds::Kubernetes(c) = self.config(TOKEN) else {
            panic!("not kubernetes");
        };
        let c: KubernetesBackendConfigWithCreds = c;
        KubernetesCompute::new(c, self.settings())
            .await
            .unwrap()
            .with_scheduling_timeout(Duration::from_secs(3), Duration::from_millis(50))
    }

    pub fn objects(&self, kind: &str) -> Vec<Value> {
        let f = self.fake.lock().unwrap();
        f.objects
            .iter()
            .filter(|((k, _, _), _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn names(&self, kind: &str) -> Vec<String> {
        self.objects(kind)
            .iter()
            .map(|v| v["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn count(&self, request: &str) -> usize {
        let f = self.fake.lock().unwrap();
        f.log.iter().filter(|l| l.as_str() == request).count()
    }
}
