//! The per-project SSH jump pod and its NodePort service (dstack's
//! `_create_jump_pod_service_if_not_exists` / `_check_and_configure_jump_pod_service`).
//!
//! Job pods have no address reachable from outside the cluster, so every project gets one
//! pod running `sshd` (image `testcontainers/sshd`, port 22) behind a `NodePort` service on
//! `proxy_jump.port`. The server and the CLI reach a job pod with `ProxyJump
//! root@<proxy_jump.hostname or a node's ExternalIP>:<nodePort>`. The project key is in the
//! jump pod's `authorized_keys` from the start; each run's user key is appended later, with
//! `command="/bin/false"` (forwarding only, no shell), by a [`JumpKeyInstaller`].

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, Pod, PodSpec, Service, ServicePort, ServiceSpec,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{ListParams, PostParams};

use super::KubernetesCompute;
use super::api::{self, is_conflict};
use super::config::Cluster;
use super::offers::{is_hard_taint, is_taint_tolerated};
use super::resources::{LABEL_APP_INSTANCE, LabelIds, build_labels};
use crate::backends::common::cloud_init::shell_quote;
use crate::backends::error::{BackendError, BackendResult};
use crate::models::instances::SshConnectionParams;

/// The jump pod image (dstack's, pinned by digest).
pub const JUMP_POD_IMAGE: &str = "testcontainers/sshd:1.3.0@sha256:c50c0f59554dcdb2d9e5e705112144428ae9d04ac0af6322b365a18e24213a6a";
/// The jump pod's sshd port.
pub const JUMP_POD_SSH_PORT: i32 = 22;
/// The jump pod's SSH user.
pub const JUMP_POD_USER: &str = "root";

/// Appends run keys to the jump pod's `authorized_keys` (over SSH as `root` with the
/// project key; see [`install_keys_command`]). The engine, which holds the project's
/// private key, provides it with [`KubernetesCompute::with_jump_key_installer`].
#[async_trait::async_trait]
pub trait JumpKeyInstaller: Send + Sync + fmt::Debug {
    /// Runs [`install_keys_command`] on `jump` for `project`. `Ok(false)` when the jump pod
    /// does not answer yet (the caller polls again later).
    async fn install(
        &self,
        project: &str,
        jump: &SshConnectionParams,
        public_keys: &[String],
    ) -> BackendResult<bool>;
}

/// The shell command that appends each key (once) as `command="/bin/false" <key>`.
pub fn install_keys_command(public_keys: &[String]) -> String {
    public_keys
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .map(|k| {
            let line = format!("command=\"/bin/false\" {k}");
            format!(
                "grep -qxF {l} ~/.ssh/authorized_keys || echo {l} >> ~/.ssh/authorized_keys",
                l = shell_quote(&line)
            )
        })
        .collect::<Vec<_>>()
        .join(" && ")
}

/// A DNS-1123 label made from `s`: lowercase alphanumerics and `-`, at most `max` chars.
pub fn dns_label(s: &str, max: usize) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(max);
    let out = out.trim_matches('-').to_string();
    if out.is_empty() { "x".into() } else { out }
}

/// The jump pod's name for a project.
pub fn jump_pod_name(project: &str) -> String {
    format!("dstack-{}-ssh-jump-pod", dns_label(project, 40))
}

/// The service name of a pod (`<pod>-service`).
pub fn service_name(pod: &str) -> String {
    format!("{pod}-service")
}

/// The jump pod's container command (authorized keys, fresh host keys, sshd on port 22 with
/// local forwarding only).
pub fn jump_pod_commands(project_public_key: &str) -> Vec<String> {
    vec![
        "mkdir -p ~/.ssh".into(),
        "chmod 700 ~/.ssh".into(),
        format!(
            "echo {} > ~/.ssh/authorized_keys",
            shell_quote(project_public_key.trim())
        ),
        "chmod 600 ~/.ssh/authorized_keys".into(),
        "rm -rf /etc/ssh/ssh_host_*".into(),
        "ssh-keygen -A > /dev/null".into(),
        format!(
            "/usr/sbin/sshd -D -e -p {JUMP_POD_SSH_PORT} -o LogLevel=ERROR \
             -o PasswordAuthentication=no -o AllowTcpForwarding=local"
        ),
    ]
}

/// The jump pod's tolerations: none when some node has no hard taint; else the GPU taints
/// the cluster's nodes carry.
pub fn jump_pod_tolerations(nodes: &[Node]) -> Vec<Toleration> {
    let mut tolerated: Vec<(String, String)> = Vec::new();
    for node in nodes {
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let hard: Vec<_> = taints.iter().filter(|t| is_hard_taint(t)).collect();
        if hard.is_empty() {
            return Vec::new();
        }
        for t in hard {
            let pair = (t.key.clone(), t.effect.clone());
            if is_taint_tolerated(t) && !tolerated.contains(&pair) {
                tolerated.push(pair);
            }
        }
    }
    if tolerated.is_empty() {
        tracing::warn!("no node without hard taints; the jump pod may never be scheduled");
    }
    tolerated
        .into_iter()
        .map(|(key, effect)| Toleration {
            key: Some(key),
            operator: Some("Exists".into()),
            effect: Some(effect),
            ..Toleration::default()
        })
        .collect()
}

impl KubernetesCompute {
    /// Creates the namespace when missing (409 from a concurrent create is fine).
    pub(super) async fn ensure_namespace(&self, cluster: &Cluster) -> BackendResult<bool> {
        let nss: Api<Namespace> = Api::all(cluster.client.clone());
        if api::get_opt(&self.settings.retry, &self.calls, &nss, &cluster.namespace)
            .await?
            .is_some()
        {
            return Ok(true);
        }
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(cluster.namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let pp = PostParams::default();
        match api::call(
            &self.settings.retry,
            &self.calls,
            "create namespace",
            || nss.create(&pp, &ns),
        )
        .await
        {
            Ok(_) => Ok(false),
            Err(e) if is_conflict(&e) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Creates the project's jump pod and NodePort service unless both exist (a service left
    /// without its pod, e.g. after its node was removed, gets both recreated).
    #[tracing::instrument(level = "debug", skip_all, fields(region = %cluster.region, project))]
    pub(super) async fn ensure_jump_pod(
        &self,
        cluster: &Cluster,
        project: &str,
        project_public_key: &str,
    ) -> BackendResult<(String, String)> {
        let pod_name = jump_pod_name(project);
        let svc_name = service_name(&pod_name);
        let ns = &cluster.namespace;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
        let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
        let policy = &self.settings.retry;
        if self.ensure_namespace(cluster).await? {
            let svc = api::get_opt(policy, &self.calls, &svcs, &svc_name).await?;
            let pod = api::get_opt(policy, &self.calls, &pods, &pod_name).await?;
            if svc.is_some() && pod.is_some() {
                return Ok((pod_name, svc_name));
            }
        }
        tracing::info!(pod = %pod_name, namespace = %ns, "creating the SSH jump pod");
        api::delete_opt(policy, &self.calls, &pods, &pod_name).await?;
        let nodes: Api<Node> = Api::all(cluster.client.clone());
        let lp = ListParams::default();
        let node_list = api::call(policy, &self.calls, "list nodes", || nodes.list(&lp)).await?;
        let tolerations = jump_pod_tolerations(&node_list.items);
        let labels = build_labels(
            &LabelIds {
                component: "ssh-proxy",
                unique_name: &pod_name,
                server_id: &self.settings.server_id,
                project,
                name: None,
                user: None,
                fleet_id: None,
                instance_id: None,
            },
            None,
        );
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(pod_name.clone()),
                labels: Some(labels.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: format!("{pod_name}-container"),
                    image: Some(JUMP_POD_IMAGE.into()),
                    command: Some(vec!["/bin/sh".into()]),
                    args: Some(vec![
                        "-c".into(),
                        jump_pod_commands(project_public_key).join(" && "),
                    ]),
                    ports: Some(vec![ContainerPort {
                        container_port: JUMP_POD_SSH_PORT,
                        ..ContainerPort::default()
                    }]),
                    ..Container::default()
                }],
                tolerations: Some(tolerations),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        let pp = PostParams::default();
        match api::call(policy, &self.calls, "create jump pod", || {
            pods.create(&pp, &pod)
        })
        .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(e),
        }
        api::delete_opt(policy, &self.calls, &svcs, &svc_name).await?;
        let selector: BTreeMap<String, String> =
            [(LABEL_APP_INSTANCE.to_string(), pod_name.clone())].into();
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(svc_name.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                selector: Some(selector),
                ports: Some(vec![ServicePort {
                    port: JUMP_POD_SSH_PORT,
                    target_port: Some(IntOrString::Int(JUMP_POD_SSH_PORT)),
                    node_port: cluster.proxy_jump.port.and_then(|p| i32::try_from(p).ok()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        match api::call(policy, &self.calls, "create jump service", || {
            svcs.create(&pp, &svc)
        })
        .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) => return Err(e),
        }
        Ok((pod_name, svc_name))
    }

    /// The jump host once the jump pod runs: `None` while it is starting (or while the run's
    /// keys cannot be installed yet); an error when it finished or vanished.
    pub(super) async fn jump_host(
        &self,
        cluster: &Cluster,
        project: Option<&str>,
        pod_name: &str,
        svc_name: &str,
        user_keys: &[String],
    ) -> BackendResult<Option<SshConnectionParams>> {
        let policy = &self.settings.retry;
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let Some(pod) = api::get_opt(policy, &self.calls, &pods, pod_name).await? else {
            return Err(BackendError::Provisioning {
                message: format!("Jump pod {pod_name} vanished; the next run recreates it"),
            });
        };
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        match phase.as_str() {
            "Succeeded" | "Failed" => {
                return Err(BackendError::Provisioning {
                    message: format!("Jump pod {pod_name} is unexpectedly finished ({phase})"),
                });
            }
            "Running" => {}
            _ => {
                tracing::debug!(pod = %pod_name, %phase, "jump pod is not running yet");
                return Ok(None);
            }
        }
        let hostname = match cluster
            .proxy_jump
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
        {
            Some(h) => h,
            None => {
                let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                let nodes: Api<Node> = Api::all(cluster.client.clone());
                let lp = ListParams::default();
                let list = api::call(policy, &self.calls, "list nodes", || nodes.list(&lp)).await?;
                let mut on_node = None;
                let mut any = Vec::new();
                for n in &list.items {
                    let ips: Vec<String> = n
                        .status
                        .as_ref()
                        .and_then(|s| s.addresses.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|a| a.type_ == "ExternalIP")
                        .map(|a| a.address)
                        .collect();
                    if ips.is_empty() {
                        continue;
                    }
                    if n.metadata.name.is_some() && n.metadata.name == node_name {
                        on_node = ips.first().cloned();
                        break;
                    }
                    any.extend(ips);
                }
                match on_node.or_else(|| any.first().cloned()) {
                    Some(ip) => ip,
                    None => {
                        return Err(BackendError::Config {
                            message: "no node has an ExternalIP for the SSH jump pod; set \
                                      proxy_jump.hostname in the kubernetes backend config"
                                .into(),
                        });
                    }
                }
            }
        };
        let svcs: Api<Service> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        let Some(svc) = api::get_opt(policy, &self.calls, &svcs, svc_name).await? else {
            return Err(BackendError::Provisioning {
                message: format!("Jump pod service {svc_name} vanished; the next run recreates it"),
            });
        };
        let Some(node_port) = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .and_then(|p| p.node_port)
        else {
            return Err(BackendError::Provisioning {
                message: format!("Jump pod service {svc_name} has no nodePort"),
            });
        };
        let jump = SshConnectionParams {
            hostname,
            username: JUMP_POD_USER.into(),
            port: u16::try_from(node_port).map_err(|_| BackendError::Provisioning {
                message: format!("Jump pod service {svc_name} has an invalid nodePort {node_port}"),
            })?,
        };
        if !user_keys.is_empty() {
            match &self.jump_keys {
                Some(installer) => {
                    if !installer
                        .install(project.unwrap_or_default(), &jump, user_keys)
                        .await?
                    {
                        tracing::debug!(pod = %pod_name, "jump pod does not accept SSH yet");
                        return Ok(None);
                    }
                }
                None => tracing::warn!(
                    pod = %pod_name,
                    "no jump key installer configured: the run's key is not added to the jump pod"
                ),
            }
        }
        Ok(Some(jump))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn names_and_commands() {
        assert_eq!(jump_pod_name("Main_Proj"), "dstack-main-proj-ssh-jump-pod");
        assert_eq!(service_name("p"), "p-service");
        let c = install_keys_command(&["ssh-ed25519 AAA u@h".into()]);
        assert_eq!(
            c,
            "grep -qxF 'command=\"/bin/false\" ssh-ed25519 AAA u@h' ~/.ssh/authorized_keys || \
             echo 'command=\"/bin/false\" ssh-ed25519 AAA u@h' >> ~/.ssh/authorized_keys"
        );
        let cmds = jump_pod_commands("ssh-ed25519 AAA project");
        assert_eq!(
            cmds[2],
            "echo 'ssh-ed25519 AAA project' > ~/.ssh/authorized_keys"
        );
        assert!(cmds[6].contains("AllowTcpForwarding=local"));
    }
}
