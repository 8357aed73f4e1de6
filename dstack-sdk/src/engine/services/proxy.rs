//! The in-server service proxy (`/proxy/services/<project>/<run>/…`): dstack's way to reach a
//! service without a gateway. A request is authorised (project members, unless the service
//! sets `auth: false`), sent to a running replica's port through the engine's pooled SSH
//! tunnel to its instance, and the upstream response is handed back unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::engine::Engine;
use crate::engine::services::instances::{InstanceRow, select_instances};
use crate::engine::services::runs::{JobRow, enum_from_db, select_jobs};
use crate::models::configurations::RunConfiguration;
#[cfg(feature = "backends")]
use crate::models::jobs::JobProvisioningData;
use crate::models::jobs::JobStatus;
use crate::models::runs::RunSpec;
use crate::{Error, ErrorKind};

/// Round-robin counter over running replicas.
static NEXT_REPLICA: AtomicUsize = AtomicUsize::new(0);

/// Request headers that are about one hop only and are not forwarded.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// One request to a service, as the HTTP front received it.
#[derive(Debug)]
pub struct ProxyRequest {
    /// The HTTP method.
    pub method: reqwest::Method,
    /// The path below the service prefix, starting with `/` (query string included).
    pub path_and_query: String,
    /// The request headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Engine {
    /// Forwards `request` to a running replica of service `run` in `project`.
    ///
    /// Errors: `Unauthenticated`/`Forbidden` for callers who may not use the service,
    /// `NotFound` when no such service run exists, `Conflict` when no replica runs yet,
    /// `Transport` when the replica cannot be reached.
    pub async fn proxy_service(
        &self,
        token: Option<&str>,
        project: &str,
        run: &str,
        request: ProxyRequest,
    ) -> crate::Result<reqwest::Response> {
        let snap = self.project_snapshot(project).await?.ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("Project {project} not found"))
        })?;
        let not_found = || {
            Error::new(
                ErrorKind::NotFound,
                format!("Service {project}/{run} not found"),
            )
        };
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT id, run_spec FROM runs WHERE project_id = $1 AND run_name = $2 \
             AND deleted = FALSE ORDER BY submitted_at DESC LIMIT 1",
        )
        .bind(&snap.row.id)
        .bind(run)
        .fetch_optional(self.store().reader())
        .await?;
        let (run_id, spec) = row.ok_or_else(not_found)?;
        let spec: RunSpec = serde_json::from_str(&spec)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let RunConfiguration::Service(service) = &spec.configuration else {
            return Err(not_found());
        };
        if service.auth {
            let token =
                token.ok_or_else(|| Error::new(ErrorKind::Unauthenticated, "Not authenticated"))?;
            let user = self
                .user_by_token(token)
                .await?
                .ok_or_else(|| Error::new(ErrorKind::Unauthenticated, "Invalid token"))?;
            let global_admin = user.global_role == crate::models::users::GlobalRole::Admin;
            if !global_admin && !snap.roles.contains_key(&user.id) && !snap.row.is_public {
                return Err(Error::new(ErrorKind::Forbidden, "Access denied"));
            }
        }
        let jobs: Vec<JobRow> = sqlx::query_as(select_jobs!(
            "run_id = $1 AND status = 'running' ORDER BY replica_num, job_num"
        ))
        .bind(&run_id)
        .fetch_all(self.store().reader())
        .await?;
        let running: Vec<&JobRow> = jobs
            .iter()
            .filter(|j| enum_from_db::<JobStatus>(&j.status) == Some(JobStatus::Running))
            .collect();
        if running.is_empty() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "Service {project}/{run} has no running replica yet; retry when `dstack ps` shows it running"
                ),
            ));
        }
        let job = running[NEXT_REPLICA.fetch_add(1, Ordering::Relaxed) % running.len()];
        let port = job
            .job_runtime_data
            .as_deref()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| {
                v.get("ports")?
                    .get(service.port.container_port.to_string())?
                    .as_u64()
            })
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(service.port.container_port);
        let addr = match self.container_job_tunnel(job, &snap.row.id, port).await? {
            Some(addr) => addr,
            None => {
                let inst_id = job.instance_id.as_deref().ok_or_else(|| {
                    Error::new(ErrorKind::Internal, "running job has no instance")
                })?;
                let inst: InstanceRow = sqlx::query_as(select_instances!("id = $1"))
                    .bind(inst_id)
                    .fetch_optional(self.store().reader())
                    .await?
                    .ok_or_else(not_found)?;
                self.instance_tunnel(&inst, port).await?
            }
        };
        let mut headers = request.headers;
        for h in HOP_HEADERS {
            headers.remove(*h);
        }
        let url = format!("http://{addr}{}", request.path_and_query);
        let client = proxy_client()?;
        client
            .request(request.method, url)
            .headers(headers)
            .body(request.body)
            .send()
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transport,
                    format!("Service {project}/{run} did not answer: {e}"),
                )
            })
    }
}

impl Engine {
    /// For a job in a container backend's container (`dockerized: false`, e.g. a Kubernetes
    /// job pod), a tunnel to `port` in the container through its SSH proxy: the fleet
    /// instance standing for such a job (if any) has no SSH endpoint of its own. `None` for
    /// jobs on instances.
    #[cfg(feature = "backends")]
    async fn container_job_tunnel(
        &self,
        job: &JobRow,
        project_id: &str,
        port: u16,
    ) -> crate::Result<Option<std::net::SocketAddr>> {
        let Some(jpd) = job
            .job_provisioning_data
            .as_deref()
            .and_then(|s| serde_json::from_str::<JobProvisioningData>(s).ok())
            .filter(|j| !j.dockerized)
        else {
            return Ok(None);
        };
        let addr = self
            .container_tunnel(&job.id, project_id, &jpd, port)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transport,
                    format!("cannot reach the job's container: {}", e.message()),
                )
            })?;
        Ok(Some(addr))
    }

    /// Without container backends every job runs on an instance.
    #[cfg(not(feature = "backends"))]
    async fn container_job_tunnel(
        &self,
        _job: &JobRow,
        _project_id: &str,
        _port: u16,
    ) -> crate::Result<Option<std::net::SocketAddr>> {
        Ok(None)
    }
}

fn proxy_client() -> crate::Result<reqwest::Client> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    crate::http::install_crypto_provider();
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
    Ok(CLIENT.get_or_init(|| c).clone())
}
