#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Kubernetes backend against a fake API server written here (axum on loopback).
//!
//! The fake lives in `support/fake_k8s.rs` (shared with `runs_kubernetes.rs`).

#[path = "support/fake_k8s.rs"]
mod fake_k8s;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dstack_sdk::backends::kubernetes::{JumpKeyInstaller, KubernetesCompute};
use dstack_sdk::backends::{
    BackendError, BackendResult, Compute, InstanceConfiguration, JobLaunch,
};
use dstack_sdk::models::backends::AnyBackendConfigWithCreds;
use dstack_sdk::models::common::{Memory, Range};
use dstack_sdk::models::instances::SshConnectionParams;
use dstack_sdk::models::offers::InstanceRuntime;
use dstack_sdk::models::resources::{GPUSpec, Requirements, ResourcesSpec};
use serde_json::{Value, json};
use uuid::Uuid;

use fake_k8s::{JUMP_HOST, JUMP_PORT, SERVER_ID, TOKEN, start};

const PROJECT_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIProjectKey project@dstack";
const USER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserKey alice@laptop";

#[derive(Debug, Default)]
struct RecordingInstaller {
    calls: Mutex<Vec<(String, SshConnectionParams, Vec<String>)>>,
}

#[async_trait::async_trait]
impl JumpKeyInstaller for RecordingInstaller {
    async fn install(
        &self,
        project: &str,
        jump: &SshConnectionParams,
        public_keys: &[String],
    ) -> BackendResult<bool> {
        self.calls
            .lock()
            .unwrap()
            .push((project.to_string(), jump.clone(), public_keys.to_vec()));
        Ok(true)
    }
}

fn gpu_requirements() -> Requirements {
    Requirements::new(ResourcesSpec {
        cpu: dstack_sdk::models::resources::CPUSpec {
            arch: None,
            count: Range::new(Some(4), Some(16)),
        },
        memory: Range::new(Some(Memory(16.0)), Some(Memory(64.0))),
        shm_size: Some(Memory(2.0)),
        gpu: Some(GPUSpec {
            name: Some(vec!["A100".into()]),
            count: Range::exactly(2),
            ..GPUSpec::default()
        }),
        disk: Some(dstack_sdk::models::resources::DiskSpec {
            size: Range::at_least(Memory(50.0)),
        }),
    })
}

fn instance(name: &str) -> InstanceConfiguration {
    InstanceConfiguration::new(
        "main",
        Uuid::from_u128(0x1111),
        name,
        vec![PROJECT_KEY.into(), USER_KEY.into()],
    )
    .with_fleet(Uuid::from_u128(0x2222))
    .with_user("alice")
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn offers_from_nodes() {
    let env = start().await;
    let compute = env.compute().await;
    assert!(compute.capabilities().run_job);
    let offers = compute.get_offers(None).await.unwrap();
    // The control-plane node has an untolerated taint; the GPU taint is tolerated.
    let names: Vec<&str> = offers.iter().map(|o| o.instance.name.as_str()).collect();
    assert_eq!(names, ["cpu-node-1", "gpu-node-1"]);
    let cpu = &offers[0];
    assert_eq!(cpu.region, "ctx-a");
    assert_eq!(cpu.price, 0.0);
    assert_eq!(cpu.instance_runtime, InstanceRuntime::Runner);
    let r = &cpu.instance.resources;
    assert_eq!(
        (r.cpus, r.memory_mib, r.disk.size_mib),
        (8, 32 * 1024, 100 * 1024)
    );
    assert!(r.gpus.is_empty());
    assert_eq!(r.cpu_arch.map(|a| a.as_str()), Some("arm"));
    let gpu = &offers[1].instance.resources;
    assert_eq!((gpu.cpus, gpu.memory_mib), (63, 503 * 1024));
    assert_eq!(gpu.gpus.len(), 4);
    assert_eq!(
        (gpu.gpus[0].name.as_str(), gpu.gpus[0].memory_mib),
        ("A100", 80 * 1024)
    );

    // With requirements: only the GPU node fits, cut down to the requests.
    let offers = compute.get_offers(Some(&gpu_requirements())).await.unwrap();
    assert_eq!(offers.len(), 1);
    let r = &offers[0].instance.resources;
    assert_eq!(offers[0].instance.name, "gpu-node-1");
    assert_eq!(
        (r.cpus, r.memory_mib, r.gpus.len(), r.disk.size_mib),
        (4, 16 * 1024, 2, 50 * 1024)
    );
    // A model no node has: no offers.
    let mut req = gpu_requirements();
    req.resources.gpu.as_mut().unwrap().name = Some(vec!["H100".into()]);
    assert!(compute.get_offers(Some(&req)).await.unwrap().is_empty());
}

#[tokio::test]
async fn credentials_are_checked() {
    let env = start().await;
    let settings = env.settings();
    let good = dstack_sdk::backends::for_config(&env.config(TOKEN), &settings)
        .await
        .unwrap();
    assert_eq!(good.backend_type().as_str(), "kubernetes");
    good.validate_credentials().await.unwrap();

    let bad = dstack_sdk::backends::for_config(&env.config("wrong-token"), &settings)
        .await
        .unwrap();
    let err = bad.validate_credentials().await.unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidCredentials { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("ctx-a") && msg.contains("Unauthorized"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-token"), "the token leaked: {msg}");
    let sdk: dstack_sdk::Error = err.into();
    assert_eq!(sdk.kind().dstack_code(), "invalid_credentials");
    // get_offers with bad credentials fails the same way (not retried).
    let before = env.count("GET /api/v1/nodes");
    let err = bad.get_offers(None).await.unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidCredentials { .. }),
        "{err:?}"
    );
    assert_eq!(env.count("GET /api/v1/nodes"), before + 1);

    // A kubeconfig that names an unknown context is a config error at creation.
    let mut cfg = env.config(TOKEN);
    if let AnyBackendConfigWithCreds::Kubernetes(c) = &mut cfg {
        c.contexts = Some(vec![
            dstack_sdk::models::backends::kubernetes::KubernetesContext::Name("nope".into()),
        ]);
    }
    let err = dstack_sdk::backends::for_config(&cfg, &settings)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err:?}");
    // dstack's context rules: no top-level proxy_jump/namespace with contexts, no duplicates.
    let mut cfg = env.config(TOKEN);
    if let AnyBackendConfigWithCreds::Kubernetes(c) = &mut cfg {
        c.namespace = Some("other".into());
    }
    let err = dstack_sdk::backends::for_config(&cfg, &settings)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("namespace must not be set"),
        "{err}"
    );
    let mut cfg = env.config(TOKEN);
    if let AnyBackendConfigWithCreds::Kubernetes(c) = &mut cfg {
        let ctx = c.contexts.as_ref().unwrap()[0].clone();
        c.contexts.as_mut().unwrap().push(ctx);
    }
    let err = dstack_sdk::backends::for_config(&cfg, &settings)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("duplicate contexts: ctx-a"),
        "{err}"
    );
    // Legacy form (no contexts): the current context, region "", the backend's namespace.
    let legacy: AnyBackendConfigWithCreds = serde_json::from_value(json!({
        "type": "kubernetes",
        "kubeconfig": {"data": env.kubeconfig(TOKEN)},
        "proxy_jump": {"hostname": JUMP_HOST, "port": JUMP_PORT},
    }))
    .unwrap();
    let AnyBackendConfigWithCreds::Kubernetes(legacy) = legacy else {
        panic!("not kubernetes");
    };
    let legacy = KubernetesCompute::new(legacy, settings.clone())
        .await
        .unwrap();
    let c = &legacy.clusters()[0];
    assert_eq!(
        (c.context.as_str(), c.region.as_str(), c.namespace.as_str()),
        ("ctx-a", "", "default")
    );
    let offers = legacy.get_offers(None).await.unwrap();
    assert!(offers.iter().all(|o| o.region.is_empty()) && offers.len() == 2);
    // Garbage kubeconfig: a config error that does not echo the data.
    let cfg: AnyBackendConfigWithCreds = serde_json::from_value(json!({
        "type": "kubernetes",
        "kubeconfig": {"data": "secret-token-xyz: [unclosed"},
    }))
    .unwrap();
    let err = dstack_sdk::backends::for_config(&cfg, &settings)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret-token-xyz"), "{err}");
}

#[tokio::test]
async fn run_job_provisions_through_the_jump_pod() {
    let env = start().await;
    let installer = Arc::new(RecordingInstaller::default());
    let compute = env
        .compute()
        .await
        .with_jump_key_installer(installer.clone());
    let offer = compute
        .get_offers(Some(&gpu_requirements()))
        .await
        .unwrap()
        .remove(0);
    let job = JobLaunch::new("my-run", "my-run-0-0", "ghcr.io/acme/train:1")
        .with_env("HF_HOME", "/data/hf")
        .with_registry_auth("bot", "registry-pass")
        .with_requirements(gpu_requirements());
    let cfg = instance("my-run-0-0");
    let mut jpd = compute
        .as_run_job()
        .unwrap()
        .run_job(&offer, &cfg, &job)
        .await
        .unwrap();
    assert!(!jpd.dockerized);
    assert_eq!(jpd.username, "root");
    assert_eq!(jpd.ssh_port, Some(10022));
    assert_eq!(jpd.region, "ctx-a");
    assert!(jpd.hostname.is_none() && jpd.ssh_proxy.is_none());
    let data: Value = serde_json::from_str(jpd.backend_data.as_deref().unwrap()).unwrap();
    assert_eq!(data["jump_pod_name"], "dstack-main-ssh-jump-pod");
    assert_eq!(
        data["jump_pod_service_name"],
        "dstack-main-ssh-jump-pod-service"
    );
    assert_eq!(data["user_ssh_public_key"], USER_KEY);

    // The namespace, jump pod and NodePort service were created.
    assert_eq!(env.count("POST /api/v1/namespaces"), 1);
    let pod_name = jpd.instance_id.clone();
    let mut pods = env.names("pods");
    pods.sort();
    let mut expected = vec!["dstack-main-ssh-jump-pod".to_string(), pod_name.clone()];
    expected.sort();
    assert_eq!(pods, expected);
    let svcs = env.objects("services");
    let jump_svc = svcs
        .iter()
        .find(|s| s["metadata"]["name"] == "dstack-main-ssh-jump-pod-service")
        .unwrap();
    assert_eq!(jump_svc["spec"]["type"], "NodePort");
    assert_eq!(jump_svc["spec"]["ports"][0]["nodePort"], JUMP_PORT);
    assert_eq!(jump_svc["spec"]["ports"][0]["port"], 22);
    assert_eq!(
        jump_svc["spec"]["selector"]["app.kubernetes.io/instance"],
        "dstack-main-ssh-jump-pod"
    );
    let job_svc = svcs
        .iter()
        .find(|s| s["metadata"]["name"] == format!("{pod_name}-service").as_str())
        .unwrap();
    assert_eq!(job_svc["spec"]["type"], "ClusterIP");
    assert_eq!(job_svc["spec"]["ports"][0]["port"], 10022);
    assert_eq!(
        job_svc["spec"]["selector"]["app.kubernetes.io/instance"],
        pod_name.as_str()
    );
    let jump_pod = env
        .objects("pods")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "dstack-main-ssh-jump-pod")
        .unwrap();
    let args = jump_pod["spec"]["containers"][0]["args"][1]
        .as_str()
        .unwrap();
    assert!(
        args.contains(PROJECT_KEY) && args.contains("/usr/sbin/sshd -D"),
        "{args}"
    );
    assert!(
        jump_pod["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .starts_with("testcontainers/sshd:1.3.0")
    );
    // The CPU node has no hard taint, so the jump pod needs no toleration.
    assert_eq!(jump_pod["spec"]["tolerations"], json!([]));

    // The registry secret.
    let secrets = env.objects("secrets");
    assert_eq!(secrets.len(), 1);
    assert_eq!(
        secrets[0]["metadata"]["name"],
        format!("{pod_name}-registry-auth").as_str()
    );
    assert_eq!(secrets[0]["type"], "kubernetes.io/dockerconfigjson");
    let dcj: Value = serde_json::from_str(
        secrets[0]["stringData"][".dockerconfigjson"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(dcj["auths"]["ghcr.io"]["username"], "bot");

    // The job pod: runner command, resources, GPU scheduling, labels.
    let pod = env
        .objects("pods")
        .into_iter()
        .find(|p| p["metadata"]["name"] == pod_name.as_str())
        .unwrap();
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"], "ghcr.io/acme/train:1");
    assert_eq!(c["command"], json!(["/bin/sh"]));
    let script = c["args"][1].as_str().unwrap();
    assert!(
        script.contains("dstack-runner --log-level 6 start"),
        "{script}"
    );
    assert!(script.contains("--ssh-port 10022"), "{script}");
    assert!(
        script.contains(&format!("--ssh-authorized-key '{USER_KEY}'")),
        "{script}"
    );
    assert!(
        script.contains(&format!("--ssh-authorized-key '{PROJECT_KEY}'")),
        "{script}"
    );
    assert_eq!(c["ports"], json!([{"containerPort": 10022}]));
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "4", "memory": "16384Mi", "ephemeral-storage": "51200Mi", "nvidia.com/gpu": "2"})
    );
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "16", "memory": "65536Mi", "nvidia.com/gpu": "2"})
    );
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        json!(["SYS_RESOURCE"])
    );
    assert_eq!(c["env"], json!([{"name": "HF_HOME", "value": "/data/hf"}]));
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "dev-shm", "mountPath": "/dev/shm"}])
    );
    assert_eq!(
        pod["spec"]["volumes"],
        json!([{"name": "dev-shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2.0Gi"}}])
    );
    assert_eq!(
        pod["spec"]["tolerations"],
        json!([
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"},
        ])
    );
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"],
        json!({"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}
        ]}]})
    );
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": format!("{pod_name}-registry-auth")}])
    );
    let labels = &pod["metadata"]["labels"];
    assert_eq!(labels["dstack_server_id"], SERVER_ID);
    assert_eq!(labels["dstack_project"], "main");
    assert_eq!(
        labels["dstack_instance_id"],
        Uuid::from_u128(0x1111).to_string().as_str()
    );
    assert_eq!(
        labels["dstack_fleet_id"],
        Uuid::from_u128(0x2222).to_string().as_str()
    );
    assert_eq!(labels["dstack_user"], "alice");
    assert_eq!(labels["app.kubernetes.io/name"], "dstack-job");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "dstack");
    assert_eq!(labels["k8s.dstack.ai/name"], "my-run-0-0");
    // The same sweep labels on the service and the secret.
    assert_eq!(
        job_svc["metadata"]["labels"]["dstack_instance_id"],
        labels["dstack_instance_id"]
    );
    assert_eq!(
        secrets[0]["metadata"]["labels"]["dstack_server_id"],
        SERVER_ID
    );
    assert_eq!(
        jump_pod["metadata"]["labels"]["dstack_server_id"],
        SERVER_ID
    );
    assert_eq!(
        compute.list_labelled_pods("ctx-a").await.unwrap(),
        std::slice::from_ref(&pod_name)
    );

    // Poll like the engine until the hostname is known.
    for _ in 0..100 {
        compute.update_provisioning_data(&mut jpd).await.unwrap();
        if jpd.hostname.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        jpd.hostname.as_deref(),
        Some(job_svc["spec"]["clusterIP"].as_str().unwrap())
    );
    assert!(jpd.internal_ip.as_deref().unwrap().starts_with("10.244.1."));
    assert_eq!(
        jpd.ssh_proxy,
        Some(SshConnectionParams {
            hostname: JUMP_HOST.into(),
            username: "root".into(),
            port: JUMP_PORT as u16,
        })
    );
    assert!(jpd.backend_data.is_none());
    let r = &jpd.instance_type.resources;
    assert_eq!(jpd.instance_type.name, "gpu-node-1");
    assert_eq!(
        (r.cpus, r.memory_mib, r.gpus.len(), r.disk.size_mib),
        (4, 16384, 2, 51200)
    );
    let calls = installer.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, "main");
    assert_eq!(calls[0].1.hostname, JUMP_HOST);
    assert_eq!(calls[0].2, [USER_KEY.to_string()]);

    // A second job reuses the jump pod and its service.
    let cpu_offer = compute.get_offers(None).await.unwrap().remove(0);
    assert_eq!(cpu_offer.instance.name, "cpu-node-1");
    let job2 = JobLaunch::new("other", "other-0-0", "ubuntu:24.04");
    let jpd2 = compute
        .as_run_job()
        .unwrap()
        .run_job(&cpu_offer, &instance("other-0-0"), &job2)
        .await
        .unwrap();
    assert_eq!(env.count("POST /api/v1/namespaces/dstack/pods"), 3);
    assert_eq!(env.count("POST /api/v1/namespaces/dstack/services"), 3);
    assert_eq!(env.count("POST /api/v1/namespaces"), 1);
    let pod2 = env
        .objects("pods")
        .into_iter()
        .find(|p| p["metadata"]["name"] == jpd2.instance_id.as_str())
        .unwrap();
    let c2 = &pod2["spec"]["containers"][0];
    // No requirements: sized from the offer; no GPU, so GPUs are hidden from the image.
    assert_eq!(
        c2["resources"]["requests"],
        json!({"cpu": "8", "memory": "32768Mi"})
    );
    assert_eq!(
        c2["env"],
        json!([{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}])
    );
    assert!(
        pod2["spec"]
            .get("imagePullSecrets")
            .is_none_or(Value::is_null)
    );
    assert!(
        c2["args"][1]
            .as_str()
            .unwrap()
            .contains("dstack-runner-linux-arm64")
    );

    // Terminate: service, pod and secret go; a second terminate is still a success.
    compute
        .terminate_instance(&pod_name, "ctx-a", None)
        .await
        .unwrap();
    assert!(!env.names("pods").contains(&pod_name));
    assert!(
        !env.names("services")
            .contains(&format!("{pod_name}-service"))
    );
    assert!(env.objects("secrets").is_empty());
    compute
        .terminate_instance(&pod_name, "ctx-a", None)
        .await
        .unwrap();
    // After termination the pod is gone: polling says so clearly.
    let mut stale = jpd.clone();
    let err = compute
        .update_provisioning_data(&mut stale)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Provisioning { .. }), "{err:?}");
    assert!(err.to_string().contains("vanished"), "{err}");
    // Unknown regions are a clear error.
    let err = compute
        .terminate_instance(&pod_name, "nowhere", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[tokio::test]
async fn pod_that_vanishes_while_provisioning_fails_clearly_and_leaks_nothing() {
    let env = start().await;
    env.fake.lock().unwrap().vanish_prefix = Some("doomed".into());
    let compute = env.compute().await;
    let offer = compute.get_offers(None).await.unwrap().remove(0);
    let job = JobLaunch::new("doomed", "doomed-0-0", "ubuntu").with_registry_auth("u", "p");
    let err = compute
        .as_run_job()
        .unwrap()
        .run_job(&offer, &instance("doomed-0-0"), &job)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Provisioning { .. }), "{err:?}");
    assert!(err.to_string().contains("vanished"), "{err}");
    // Nothing of the job is left (the project's jump pod and its service stay).
    assert!(
        env.names("pods").iter().all(|n| !n.starts_with("doomed")),
        "{:?}",
        env.names("pods")
    );
    assert!(
        env.names("services")
            .iter()
            .all(|n| !n.starts_with("doomed"))
    );
    assert!(env.objects("secrets").is_empty());

    // A pod that fails at once: a clear error, nothing left.
    env.fake.lock().unwrap().fail_prefix = Some("broken".into());
    let job = JobLaunch::new("broken", "broken-0-0", "ubuntu");
    let err = compute
        .as_run_job()
        .unwrap()
        .run_job(&offer, &instance("broken-0-0"), &job)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Provisioning { .. }), "{err:?}");
    assert!(
        err.to_string().contains("already finished: Failed"),
        "{err}"
    );
    assert!(env.names("pods").iter().all(|n| !n.starts_with("broken")));
    assert!(
        env.names("services")
            .iter()
            .all(|n| !n.starts_with("broken"))
    );

    // A pod that ran and then disappeared (evicted, node gone) is found by polling.
    let job = JobLaunch::new("evicted", "evicted-0-0", "ubuntu");
    let mut jpd = compute
        .as_run_job()
        .unwrap()
        .run_job(&offer, &instance("evicted-0-0"), &job)
        .await
        .unwrap();
    {
        let mut f = env.fake.lock().unwrap();
        f.objects
            .retain(|(k, _, n), _| !(k == "pods" && n == &jpd.instance_id));
    }
    let err = compute
        .update_provisioning_data(&mut jpd)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Provisioning { .. }), "{err:?}");
    assert!(err.to_string().contains(&jpd.instance_id), "{err}");
    compute
        .terminate_instance(&jpd.instance_id, &jpd.region, None)
        .await
        .unwrap();
    assert!(
        env.names("services")
            .iter()
            .all(|n| !n.starts_with("evicted"))
    );
}

#[tokio::test]
async fn unschedulable_pod_is_no_capacity_and_cleaned_up() {
    let env = start().await;
    env.fake.lock().unwrap().unschedulable_prefix = Some("stuck".into());
    let compute = env
        .compute()
        .await
        .with_scheduling_timeout(Duration::from_millis(400), Duration::from_millis(50));
    let offer = compute
        .get_offers(Some(&gpu_requirements()))
        .await
        .unwrap()
        .remove(0);
    let job = JobLaunch::new("stuck", "stuck-0-0", "ubuntu").with_requirements(gpu_requirements());
    let err = compute
        .as_run_job()
        .unwrap()
        .run_job(&offer, &instance("stuck-0-0"), &job)
        .await
        .unwrap_err();
    assert!(err.is_no_capacity(), "{err:?}");
    assert!(err.to_string().contains("Unschedulable"), "{err}");
    assert!(env.names("pods").iter().all(|n| !n.starts_with("stuck")));
    assert!(
        env.names("services")
            .iter()
            .all(|n| !n.starts_with("stuck"))
    );
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let env = start().await;
    let compute = env.compute().await;
    {
        let mut f = env.fake.lock().unwrap();
        for _ in 0..2 {
            f.inject
                .push_back(("GET".into(), "/api/v1/nodes".into(), 429));
        }
        f.inject
            .push_back(("POST".into(), "/api/v1/namespaces/dstack/pods".into(), 429));
        f.inject.push_back((
            "DELETE".into(),
            "/api/v1/namespaces/dstack/pods/".into(),
            503,
        ));
    }
    let before = compute.api_calls();
    let offers = compute.get_offers(None).await.unwrap();
    assert_eq!(offers.len(), 2);
    assert_eq!(env.count("GET /api/v1/nodes"), 3);
    assert_eq!(compute.api_calls() - before, 3);

    let job = JobLaunch::new("busy", "busy-0-0", "ubuntu");
    let jpd = compute
        .as_run_job()
        .unwrap()
        .run_job(&offers[0], &instance("busy-0-0"), &job)
        .await
        .unwrap();
    compute
        .terminate_instance(&jpd.instance_id, &jpd.region, None)
        .await
        .unwrap();
    assert!(!env.names("pods").contains(&jpd.instance_id));

    // Throttling that never stops gives up after the policy's attempts with a clear error.
    {
        let mut f = env.fake.lock().unwrap();
        for _ in 0..10 {
            f.inject
                .push_back(("GET".into(), "/api/v1/nodes".into(), 429));
        }
    }
    let before = env.count("GET /api/v1/nodes");
    let err = compute.get_offers(None).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("429"), "{err}");
    assert_eq!(env.count("GET /api/v1/nodes") - before, 4);
}

#[test]
fn jump_key_command_appends_each_key_once() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let auth = home.path().join(".ssh/authorized_keys");
    std::fs::write(&auth, format!("{PROJECT_KEY}\n")).unwrap();
    let cmd = dstack_sdk::backends::kubernetes::jump::install_keys_command(&[
        USER_KEY.to_string(),
        "ssh-ed25519 AAAA'quoted' bob@x".to_string(),
    ]);
    for _ in 0..2 {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("HOME", home.path())
            .status()
            .unwrap();
        assert!(st.success());
    }
    let text = std::fs::read_to_string(&auth).unwrap();
    assert_eq!(
        text,
        format!(
            "{PROJECT_KEY}\ncommand=\"/bin/false\" {USER_KEY}\n\
             command=\"/bin/false\" ssh-ed25519 AAAA'quoted' bob@x\n"
        )
    );
}
