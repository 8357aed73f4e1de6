//! Job pods (dstack's `run_job` / `update_provisioning_data` for Kubernetes).
//!
//! `run_job` makes sure the project's jump pod exists, optionally creates the registry
//! secret, creates the job pod (dstack's runner as the main process, resources from the
//! requirements, GPU node affinity and tolerations, our labels), waits up to the scheduling
//! timeout until the kubelet reports container statuses, and creates the pod's `ClusterIP`
//! service on port 10022. Whatever it created is deleted again when a later step fails.
//!
//! `update_provisioning_data` fills the pod IP (`internal_ip`), the service's cluster IP
//! (`hostname`), the node's real resources (`instance_type`), and `ssh_proxy` (the jump
//! host) once the jump pod runs; a pod that vanished or finished is a provisioning error.
//!
//! The container runs dstack's `get_docker_commands`: install `sshd`/`curl` when missing,
//! download `dstack-runner` and start it with `--http-port 10999 --ssh-port 10022` and the
//! run's keys. The runner binary comes from `DSTACK_RUNNER_DOWNLOAD_URL` (a template with
//! `{version}` and `{arch}`; default dstack's bucket) and `DSTACK_RUNNER_VERSION`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities as K8sCapabilities, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, LocalObjectReference, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodSpec, ResourceRequirements, Secret, SecurityContext, Service,
    ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde::{Deserialize, Serialize};

use super::KubernetesCompute;
use super::api;
use super::config::Cluster;
use super::jump::{dns_label, service_name};
use super::offers::{gpu_matches, node_labels, offer_from_node};
use super::resources::{
    AMD_GPU_DEVICE_ID_LABEL_PREFIX, AMD_GPU_RESOURCE, LABEL_APP_INSTANCE, LabelIds,
    NVIDIA_GPU_PRODUCT_LABEL, NVIDIA_GPU_RESOURCE, ResourceAmounts, amd_device_ids,
    amd_gpu_from_labels, build_labels, format_memory_gb, nvidia_gpu_from_labels, quantity_of,
};
use crate::backends::common::cloud_init::shell_quote;
use crate::backends::compute::{InstanceConfiguration, JobLaunch};
use crate::backends::error::{BackendError, BackendResult};
use crate::models::backends::BackendType;
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::{Disk, InstanceOfferWithAvailability};
use crate::models::resources::{AcceleratorVendor, CpuArch, GPUSpec, ResourcesSpec};

/// The runner's SSH port inside the job container (dstack's `DSTACK_RUNNER_SSH_PORT`).
pub const RUNNER_SSH_PORT: i32 = 10022;
/// The runner's HTTP port.
pub const RUNNER_HTTP_PORT: i32 = 10999;
/// Where the runner binary goes in the container.
pub const RUNNER_BINARY_PATH: &str = "/usr/local/bin/dstack-runner";
/// The default runner download URL template.
pub const DEFAULT_RUNNER_DOWNLOAD_URL: &str = "https://dstack-runner-downloads.s3.eu-west-1.amazonaws.com/{version}/binaries/dstack-runner-linux-{arch}";
/// The runner version used when `DSTACK_RUNNER_VERSION` is unset (the dstack release this
/// server speaks).
pub const DEFAULT_RUNNER_VERSION: &str = "0.22.5";

/// What `run_job` stores in `backend_data` until the jump host is configured (dstack's
/// `KubernetesBackendData`, plus the project for the key installer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesBackendData {
    /// The jump pod.
    pub jump_pod_name: String,
    /// The jump pod's NodePort service.
    pub jump_pod_service_name: String,
    /// The run's key, appended to the jump pod's `authorized_keys`.
    pub user_ssh_public_key: String,
    /// The project (ours; dstack ignores it).
    #[serde(default)]
    pub project: Option<String>,
}

/// The runner download URL for `arch` (`amd64` / `arm64`).
pub fn runner_download_url(arch: &str) -> String {
    let template = std::env::var("DSTACK_RUNNER_DOWNLOAD_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_RUNNER_DOWNLOAD_URL.to_string());
    let version = std::env::var("DSTACK_RUNNER_VERSION")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_RUNNER_VERSION.to_string());
    template
        .replace("{version}", &version)
        .replace("{arch}", arch)
}

/// dstack's `get_docker_commands`: the job container's command list (joined with `&&`).
pub fn runner_commands(authorized_keys: &[String], download_url: &str) -> Vec<String> {
    let mut c: Vec<String> = [
        "( :",
        "unset LD_LIBRARY_PATH && unset LD_PRELOAD",
        "exists() { command -v \"$1\" > /dev/null 2>&1; }",
        "install_pkg() { NAME=Distribution; test -f /etc/os-release && . /etc/os-release; echo $NAME not supported; exit 11; }",
        "if exists apt-get; then install_pkg() { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \"$1\"; }; fi",
        "if exists yum; then install_pkg() { yum install -y \"$1\"; }; fi",
        "if exists apk; then install_pkg() { apk add -U \"$1\"; }; fi",
        "if ! exists sshd; then install_pkg openssh-server; fi",
        "if ! exists curl; then install_pkg curl; fi",
        ": )",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut runner = vec![
        RUNNER_BINARY_PATH.to_string(),
        "--log-level".into(),
        "6".into(),
        "start".into(),
        "--temp-dir".into(),
        "/tmp/runner".into(),
        "--http-port".into(),
        RUNNER_HTTP_PORT.to_string(),
        "--ssh-port".into(),
        RUNNER_SSH_PORT.to_string(),
    ];
    for k in authorized_keys {
        runner.push("--ssh-authorized-key".into());
        runner.push(k.trim().to_string());
    }
    c.push(format!(
        "curl --connect-timeout 60 --max-time 240 --retry 1 --output {RUNNER_BINARY_PATH} {}",
        shell_quote(download_url)
    ));
    c.push(format!("chmod +x {RUNNER_BINARY_PATH}"));
    c.push(
        runner
            .iter()
            .map(|s| shell_quote(s))
            .collect::<Vec<_>>()
            .join(" "),
    );
    c
}

/// The registry of an image for a `dockerconfigjson` (Docker Hub's v1 URL by default).
pub fn image_registry(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            if first == "docker.io" || first == "index.docker.io" || first == "registry-1.docker.io"
            {
                "https://index.docker.io/v1/".into()
            } else {
                first.to_string()
            }
        }
        _ => "https://index.docker.io/v1/".into(),
    }
}

/// The `.dockerconfigjson` for registry credentials.
pub fn dockerconfigjson(image: &str, username: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    serde_json::json!({
        "auths": { image_registry(image): {"username": username, "password": password, "auth": auth} }
    })
    .to_string()
}

/// The job pod's unique name: the instance name as a DNS label plus a random suffix, short
/// enough that `<pod>-service` is a valid service name.
pub fn job_pod_name(instance_name: &str) -> String {
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let mut base = dns_label(instance_name, 45);
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base = format!("j{base}");
    }
    format!("{base}-{suffix}")
}

/// The registry secret of a pod (`<pod>-registry-auth`).
pub fn registry_secret_name(pod: &str) -> String {
    format!("{pod}-registry-auth")
}

/// The resources spec to size the pod from: the job's, else the offer's.
fn job_resources(
    offer: &InstanceOfferWithAvailability,
    job: &JobLaunch,
) -> (
    ResourceAmounts,
    ResourceAmounts,
    Option<GPUSpec>,
    Option<f64>,
) {
    match &job.requirements {
        Some(r) => {
            let spec: &ResourcesSpec = &r.resources;
            (
                ResourceAmounts::requests(spec),
                ResourceAmounts::limits(spec),
                spec.gpu.clone(),
                spec.shm_size.map(|m| m.0),
            )
        }
        None => {
            let res = &offer.instance.resources;
            let req = ResourceAmounts::of_offer(res);
            let lim = ResourceAmounts {
                cpu: None,
                memory_mib: None,
                disk_mib: None,
                gpu: req.gpu,
            };
            let gpu = res.gpus.first().map(|g| GPUSpec {
                vendor: Some(g.vendor),
                name: Some(vec![g.name.clone()]),
                ..GPUSpec::default()
            });
            (req, lim, gpu, None)
        }
    }
}

/// The GPU resource, node affinity and taint for a GPU request (dstack's
/// `_get_pod_spec_parameters_for_gpu`).
fn gpu_scheduling(
    spec: &GPUSpec,
    nodes: &[Node],
) -> BackendResult<(&'static str, NodeAffinity, &'static str)> {
    match spec.vendor {
        None | Some(AcceleratorVendor::Nvidia) => {
            let mut values: Vec<String> = Vec::new();
            for n in nodes {
                let labels = node_labels(n);
                if let Some(g) = nvidia_gpu_from_labels(&labels)
                    && gpu_matches(&g, spec)
                    && let Some(v) = labels.get(NVIDIA_GPU_PRODUCT_LABEL)
                    && !values.contains(v)
                {
                    values.push(v.clone());
                }
            }
            if values.is_empty() {
                return Err(BackendError::NoCapacity {
                    message: format!(
                        "no node has a matching NVIDIA GPU (label {NVIDIA_GPU_PRODUCT_LABEL})"
                    ),
                });
            }
            let term = NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: NVIDIA_GPU_PRODUCT_LABEL.into(),
                    operator: "In".into(),
                    values: Some(values),
                }]),
                ..NodeSelectorTerm::default()
            };
            Ok((
                NVIDIA_GPU_RESOURCE,
                affinity(vec![term]),
                NVIDIA_GPU_RESOURCE,
            ))
        }
        Some(AcceleratorVendor::Amd) => {
            let mut ids: Vec<u32> = Vec::new();
            for n in nodes {
                if let Some(g) = amd_gpu_from_labels(&node_labels(n))
                    && gpu_matches(&g, spec)
                {
                    for id in amd_device_ids(&g.name) {
                        if !ids.contains(id) {
                            ids.push(*id);
                        }
                    }
                }
            }
            if ids.is_empty() {
                return Err(BackendError::NoCapacity {
                    message: "no node has a matching AMD GPU".into(),
                });
            }
            let terms = ids
                .iter()
                .map(|id| NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: format!("{AMD_GPU_DEVICE_ID_LABEL_PREFIX}{id:x}"),
                        operator: "Exists".into(),
                        values: None,
                    }]),
                    ..NodeSelectorTerm::default()
                })
                .collect();
            Ok((AMD_GPU_RESOURCE, affinity(terms), AMD_GPU_RESOURCE))
        }
        Some(other) => Err(BackendError::Unsupported(format!(
            "the kubernetes backend does not support {other:?} accelerators"
        ))),
    }
}

fn affinity(terms: Vec<NodeSelectorTerm>) -> NodeAffinity {
    NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: terms,
        }),
        ..NodeAffinity::default()
    }
}

/// What the kubelet says about a pod while we wait for it.
enum PodWait {
    /// Container statuses appeared (or the phase moved on).
    Started(String),
    /// Still pending at the deadline.
    NotScheduled(String),
    /// The pod is gone.
    Vanished,
}

impl KubernetesCompute {
    fn cluster(&self, region: &str) -> BackendResult<&Cluster> {
        self.clusters
            .iter()
            .find(|c| c.region == region)
            .or_else(|| {
                // dstack's legacy DUMMY_REGION.
                (region == "-")
                    .then(|| {
                        self.clusters
                            .iter()
                            .find(|c| c.region == super::config::LEGACY_REGION)
                    })
                    .flatten()
            })
            .ok_or_else(|| BackendError::Config {
                message: format!("Unknown kubernetes region (context): {region:?}"),
            })
    }

    pub(super) fn cluster_for(&self, region: &str) -> BackendResult<&Cluster> {
        self.cluster(region)
    }

    /// The job pod and everything around it; see the module docs.
    pub(super) async fn run_job_impl(
        &self,
        offer: &InstanceOfferWithAvailability,
        config: &InstanceConfiguration,
        job: &JobLaunch,
    ) -> BackendResult<JobProvisioningData> {
        let cluster = self.cluster(&offer.region)?;
        let policy = &self.settings.retry;
        let Some(project_key) = config.ssh_public_keys.first() else {
            return Err(BackendError::Config {
                message: "run_job needs the project's SSH public key".into(),
            });
        };
        let user_key = config
            .ssh_public_keys
            .get(1)
            .unwrap_or(project_key)
            .trim()
            .to_string();
        let (jump_pod, jump_svc) = self
            .ensure_jump_pod(cluster, &config.project_name, project_key)
            .await?;

        let pod_name = job_pod_name(&config.instance_name);
        let labels = build_labels(
            &LabelIds {
                component: "job",
                unique_name: &pod_name,
                server_id: &self.settings.server_id,
                project: &config.project_name,
                name: Some(&job.job_name),
                user: Some(&config.user),
                fleet_id: config.fleet_id,
                instance_id: Some(config.instance_id),
            },
            Some(&config.tags),
        );
        let ns = &cluster.namespace;
        let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), ns);
        let pp = PostParams::default();

        let mut secret_name = None;
        if let Some((username, password)) = &job.registry_auth {
            let name = registry_secret_name(&pod_name);
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/dockerconfigjson".into()),
                string_data: Some(
                    [(
                        ".dockerconfigjson".to_string(),
                        dockerconfigjson(&job.image_name, username, password),
                    )]
                    .into(),
                ),
                ..Secret::default()
            };
            api::call(policy, &self.calls, "create secret", || {
                secrets.create(&pp, &secret)
            })
            .await?;
            secret_name = Some(name);
        }

        let result = self
            .create_and_wait(
                cluster,
                offer,
                config,
                job,
                &pod_name,
                &labels,
                secret_name.as_deref(),
            )
            .await;
        if let Err(e) = result {
            self.cleanup(cluster, &pod_name).await;
            return Err(e);
        }

        let svc = Service {
            metadata: ObjectMeta {
                name: Some(service_name(&pod_name)),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some([(LABEL_APP_INSTANCE.to_string(), pod_name.clone())].into()),
                ports: Some(vec![ServicePort {
                    port: RUNNER_SSH_PORT,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        if let Err(e) = api::call(policy, &self.calls, "create service", || {
            svcs.create(&pp, &svc)
        })
        .await
        {
            self.cleanup(cluster, &pod_name).await;
            return Err(e);
        }

        let backend_data = KubernetesBackendData {
            jump_pod_name: jump_pod,
            jump_pod_service_name: jump_svc,
            user_ssh_public_key: user_key,
            project: Some(config.project_name.clone()),
        };
        tracing::info!(pod = %pod_name, namespace = %ns, region = %cluster.region, "job pod started");
        Ok(JobProvisioningData {
            backend: BackendType::Kubernetes,
            base_backend: None,
            instance_type: offer.instance.clone(),
            instance_id: pod_name,
            hostname: None,
            internal_ip: None,
            public_ip_enabled: true,
            instance_network: None,
            region: offer.region.clone(),
            availability_zone: None,
            reservation: None,
            price: offer.price,
            username: "root".into(),
            ssh_port: Some(i64::from(RUNNER_SSH_PORT)),
            dockerized: false,
            ssh_proxy: None,
            backend_data: serde_json::to_string(&backend_data).ok(),
            gpu_driver: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_and_wait(
        &self,
        cluster: &Cluster,
        offer: &InstanceOfferWithAvailability,
        config: &InstanceConfiguration,
        job: &JobLaunch,
        pod_name: &str,
        labels: &BTreeMap<String, String>,
        secret_name: Option<&str>,
    ) -> BackendResult<()> {
        let policy = &self.settings.retry;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let (requests, limits, gpu_spec, shm_gb) = job_resources(offer, job);
        let mut env: Vec<EnvVar> = job
            .env
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                ..EnvVar::default()
            })
            .collect();
        let mut tolerations = Vec::new();
        let mut node_affinity = None;
        let mut gpu_resource = None;
        if requests.gpu > 0 {
            let spec = gpu_spec.unwrap_or_default();
            let nodes: Api<Node> = Api::all(cluster.client.clone());
            let lp = ListParams::default();
            let list = api::call(policy, &self.calls, "list nodes", || nodes.list(&lp)).await?;
            let (resource, aff, taint) = gpu_scheduling(&spec, &list.items)?;
            gpu_resource = Some(resource);
            node_affinity = Some(aff);
            for effect in ["NoSchedule", "NoExecute"] {
                tolerations.push(Toleration {
                    key: Some(taint.into()),
                    operator: Some("Exists".into()),
                    effect: Some(effect.into()),
                    ..Toleration::default()
                });
            }
        } else {
            // Keeps images with NVIDIA_VISIBLE_DEVICES=all baked in off the node's GPUs.
            env.push(EnvVar {
                name: "NVIDIA_VISIBLE_DEVICES".into(),
                value: Some("void".into()),
                ..EnvVar::default()
            });
        }
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        if let Some(gb) = shm_gb {
            volumes.push(Volume {
                name: "dev-shm".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity(format_memory_gb(gb))),
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "dev-shm".into(),
                mount_path: "/dev/shm".into(),
                ..VolumeMount::default()
            });
        }
        let arch = match offer.instance.resources.cpu_arch {
            Some(CpuArch::Arm) => "arm64",
            _ => "amd64",
        };
        let commands = runner_commands(&config.ssh_public_keys, &runner_download_url(arch));
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(pod_name.to_string()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: format!("{pod_name}-container"),
                    image: Some(job.image_name.clone()),
                    command: Some(vec!["/bin/sh".into()]),
                    args: Some(vec!["-c".into(), commands.join(" && ")]),
                    ports: Some(vec![ContainerPort {
                        container_port: RUNNER_SSH_PORT,
                        ..ContainerPort::default()
                    }]),
                    security_context: Some(SecurityContext {
                        run_as_user: Some(0),
                        run_as_group: Some(0),
                        privileged: Some(job.privileged),
                        capabilities: Some(K8sCapabilities {
                            add: Some(vec!["SYS_RESOURCE".into()]),
                            drop: None,
                        }),
                        ..SecurityContext::default()
                    }),
                    resources: Some(ResourceRequirements {
                        requests: Some(requests.to_map(gpu_resource)),
                        limits: Some(limits.to_map(gpu_resource)),
                        ..ResourceRequirements::default()
                    }),
                    volume_mounts: Some(mounts),
                    env: Some(env),
                    ..Container::default()
                }],
                image_pull_secrets: secret_name.map(|n| {
                    vec![LocalObjectReference {
                        name: n.to_string(),
                    }]
                }),
                affinity: Some(Affinity {
                    node_affinity,
                    ..Affinity::default()
                }),
                tolerations: Some(tolerations),
                volumes: Some(volumes),
                restart_policy: Some("Never".into()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let pp = PostParams::default();
        api::call(policy, &self.calls, "create pod", || pods.create(&pp, &pod)).await?;
        match self.wait_started(&pods, pod_name).await? {
            PodWait::Started(phase) if phase == "Succeeded" || phase == "Failed" => {
                Err(BackendError::Provisioning {
                    message: format!("Pod {pod_name} already finished: {phase}"),
                })
            }
            PodWait::Started(_) => Ok(()),
            PodWait::NotScheduled(why) => Err(BackendError::NoCapacity {
                message: format!("Pod {pod_name} was not scheduled: {why}"),
            }),
            PodWait::Vanished => Err(BackendError::Provisioning {
                message: format!(
                    "Pod {pod_name} vanished while it was being scheduled (deleted or evicted)"
                ),
            }),
        }
    }

    /// Polls the pod until the kubelet reports container statuses (dstack watches for the
    /// same), the phase leaves `Pending`, the pod disappears, or the timeout passes.
    async fn wait_started(&self, pods: &Api<Pod>, name: &str) -> BackendResult<PodWait> {
        let deadline = Instant::now() + self.scheduling_timeout;
        let policy = &self.settings.retry;
        loop {
            let Some(pod) = api::get_opt(policy, &self.calls, pods, name).await? else {
                return Ok(PodWait::Vanished);
            };
            let status = pod.status.unwrap_or_default();
            let phase = status.phase.clone().unwrap_or_default();
            if status.container_statuses.is_some() || (!phase.is_empty() && phase != "Pending") {
                return Ok(PodWait::Started(phase));
            }
            if Instant::now() >= deadline {
                let why = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                    .map(|c| {
                        format!(
                            "{}: {}",
                            c.reason.unwrap_or_else(|| "unknown reason".into()),
                            c.message.unwrap_or_else(|| "no message".into())
                        )
                    })
                    .unwrap_or_else(|| "unknown reason: no message".into());
                return Ok(PodWait::NotScheduled(why));
            }
            tokio::time::sleep(self.poll_interval.min(Duration::from_secs(2))).await;
        }
    }

    /// See [`crate::backends::Compute::update_provisioning_data`].
    pub(super) async fn update_impl(&self, jpd: &mut JobProvisioningData) -> BackendResult<()> {
        let cluster = self.cluster(&jpd.region)?;
        let policy = &self.settings.retry;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let Some(pod) = api::get_opt(policy, &self.calls, &pods, &jpd.instance_id).await? else {
            return Err(BackendError::Provisioning {
                message: format!(
                    "Pod {} vanished while provisioning (deleted, evicted or its node is gone)",
                    jpd.instance_id
                ),
            });
        };
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_default();
        if phase == "Failed" || phase == "Succeeded" {
            let why = status
                .reason
                .clone()
                .or(status.message.clone())
                .unwrap_or_else(|| "no reason given".into());
            return Err(BackendError::Provisioning {
                message: format!(
                    "Pod {} finished while provisioning ({phase}: {why})",
                    jpd.instance_id
                ),
            });
        }
        if let Some(raw) = jpd.backend_data.clone() {
            let data: KubernetesBackendData =
                serde_json::from_str(&raw).map_err(|e| BackendError::Provisioning {
                    message: format!("invalid kubernetes backend_data: {e}"),
                })?;
            let keys = vec![data.user_ssh_public_key.clone()];
            let Some(jump) = self
                .jump_host(
                    cluster,
                    data.project.as_deref(),
                    &data.jump_pod_name,
                    &data.jump_pod_service_name,
                    &keys,
                )
                .await?
            else {
                return Ok(());
            };
            jpd.ssh_proxy = Some(jump);
            jpd.backend_data = None;
        }
        let Some(pod_ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) else {
            return Ok(());
        };
        let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let svc_name = service_name(&jpd.instance_id);
        let Some(svc) = api::get_opt(policy, &self.calls, &svcs, &svc_name).await? else {
            return Err(BackendError::Provisioning {
                message: format!("Service {svc_name} of pod {} vanished", jpd.instance_id),
            });
        };
        let Some(cluster_ip) = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None")
        else {
            return Ok(());
        };
        jpd.internal_ip = Some(pod_ip);
        jpd.hostname = Some(cluster_ip);
        if let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            let nodes: Api<Node> = Api::all(cluster.client.clone());
            if let Some(node) = api::get_opt(policy, &self.calls, &nodes, &node_name).await?
                && let Some(offer) = offer_from_node(&node, &cluster.region)
            {
                let requests = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.resources.as_ref())
                    .and_then(|r| r.requests.as_ref());
                let mut it = offer.instance;
                let r = &mut it.resources;
                r.cpus = quantity_of(requests, "cpu").round() as i64;
                r.memory_mib = (quantity_of(requests, "memory") / 1048576.0).round() as i64;
                let gpus = quantity_of(requests, NVIDIA_GPU_RESOURCE)
                    .max(quantity_of(requests, AMD_GPU_RESOURCE))
                    .round() as usize;
                r.gpus.truncate(gpus);
                r.disk = Disk {
                    size_mib: (quantity_of(requests, "ephemeral-storage") / 1048576.0).round()
                        as i64,
                };
                jpd.instance_type = it;
                jpd.price = offer.price;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_names() {
        let c = runner_commands(&["ssh-ed25519 AAA u".into()], "https://x/r-amd64");
        let last = c.last().unwrap();
        assert_eq!(
            last,
            "/usr/local/bin/dstack-runner --log-level 6 start --temp-dir /tmp/runner \
             --http-port 10999 --ssh-port 10022 --ssh-authorized-key 'ssh-ed25519 AAA u'"
        );
        assert!(c[c.len() - 3].starts_with("curl --connect-timeout 60"));
        let p = job_pod_name("My_Run-0-0");
        assert!(p.starts_with("my-run-0-0-") && p.len() == "my-run-0-0-".len() + 8);
        assert!(service_name(&job_pod_name(&"x".repeat(100))).len() <= 63);
        assert_eq!(image_registry("ubuntu"), "https://index.docker.io/v1/");
        assert_eq!(image_registry("ghcr.io/a/b:1"), "ghcr.io");
        let j: serde_json::Value =
            serde_json::from_str(&dockerconfigjson("ghcr.io/a/b", "u", "p")).unwrap();
        assert_eq!(j["auths"]["ghcr.io"]["auth"], "dTpw");
    }
}
