//! Instances: the stored row, its wire model, and `/api/instances/list`,
//! `/api/project/{p}/instances/get` (dstack-api.md §2.6, §3.6).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::auth::Ctx;
use crate::engine::{Engine, time};
use crate::models::common::{BackendType, Env};
use crate::models::fleets::SshKey;
use crate::models::instances::{
    GetInstanceRequest, HealthStatus, Instance, InstanceStatus, ListInstancesRequest,
    SshConnectionParams,
};
use crate::models::jobs::JobProvisioningData;
use crate::models::offers::InstanceOfferWithAvailability;
use crate::models::users::GlobalRole;
use crate::{Error, ErrorKind};

use super::{parse_body, to_json};

/// How the server reaches an SSH-fleet host (dstack's `RemoteConnectionInfo`); stored
/// encrypted because it holds private keys.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct RemoteConnectionInfo {
    /// Host address.
    pub(crate) host: String,
    /// SSH port.
    pub(crate) port: u16,
    /// SSH user.
    pub(crate) ssh_user: String,
    /// Keys to try.
    pub(crate) ssh_keys: Vec<SshKey>,
    /// The jump host, if any.
    #[serde(default)]
    pub(crate) ssh_proxy: Option<SshConnectionParams>,
    /// The jump host's keys.
    #[serde(default)]
    pub(crate) ssh_proxy_keys: Option<Vec<SshKey>>,
    /// The fleet's `env` for the agent.
    #[serde(default)]
    pub(crate) env: Env,
}

impl std::fmt::Debug for RemoteConnectionInfo {
    /// Never prints key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConnectionInfo")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("ssh_user", &self.ssh_user)
            .field("ssh_keys", &self.ssh_keys.len())
            .field("ssh_proxy", &self.ssh_proxy)
            .finish_non_exhaustive()
    }
}

/// The stored status name of an instance status.
pub(crate) fn status_to_db(s: InstanceStatus) -> &'static str {
    match s {
        InstanceStatus::Pending => "PENDING",
        InstanceStatus::Provisioning => "PROVISIONING",
        InstanceStatus::Idle => "IDLE",
        InstanceStatus::Busy => "BUSY",
        InstanceStatus::Terminating => "TERMINATING",
        InstanceStatus::Terminated => "TERMINATED",
    }
}

/// Parses a stored status name.
pub(crate) fn status_from_db(s: &str) -> InstanceStatus {
    InstanceStatus::ALL
        .into_iter()
        .find(|v| status_to_db(*v) == s)
        .unwrap_or(InstanceStatus::Terminated)
}

/// One `instances` row (the columns this build uses).
#[derive(Debug, Clone)]
pub(crate) struct InstanceRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) instance_num: i64,
    pub(crate) project_id: String,
    pub(crate) fleet_id: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) status: InstanceStatus,
    pub(crate) unreachable: bool,
    pub(crate) termination_reason: Option<String>,
    pub(crate) termination_reason_message: Option<String>,
    pub(crate) offer: Option<String>,
    pub(crate) job_provisioning_data: Option<String>,
    pub(crate) remote_connection_info: Option<String>,
    pub(crate) total_blocks: Option<i64>,
    pub(crate) busy_blocks: i64,
    pub(crate) deleted: bool,
    /// Set on a placeholder: a PENDING instance reserved for this job's new capacity.
    pub(crate) provisioning_job_id: Option<String>,
}

/// `SELECT <instance columns> FROM instances WHERE <cond>` as a static string.
macro_rules! select_instances {
    ($cond:literal) => {
        concat!(
            "SELECT id, name, instance_num, project_id, fleet_id, created_at, finished_at, status, \
             unreachable, termination_reason, termination_reason_message, offer, \
             job_provisioning_data, remote_connection_info, total_blocks, busy_blocks, deleted, \
             provisioning_job_id FROM instances WHERE ",
            $cond
        )
    };
}
pub(crate) use select_instances;

impl<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> for InstanceRow {
    fn from_row(r: &'r sqlx::sqlite::SqliteRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        let created: String = r.try_get("created_at")?;
        let finished: Option<String> = r.try_get("finished_at")?;
        let status: String = r.try_get("status")?;
        Ok(InstanceRow {
            id: r.try_get("id")?,
            name: r.try_get("name")?,
            instance_num: r.try_get("instance_num")?,
            project_id: r.try_get("project_id")?,
            fleet_id: r.try_get("fleet_id")?,
            created_at: time::from_db(&created).unwrap_or_default(),
            finished_at: finished.as_deref().and_then(time::from_db),
            status: status_from_db(&status),
            unreachable: r.try_get("unreachable")?,
            termination_reason: r.try_get("termination_reason")?,
            termination_reason_message: r.try_get("termination_reason_message")?,
            offer: r.try_get("offer")?,
            job_provisioning_data: r.try_get("job_provisioning_data")?,
            remote_connection_info: r.try_get("remote_connection_info")?,
            total_blocks: r.try_get("total_blocks")?,
            busy_blocks: r.try_get("busy_blocks")?,
            deleted: r.try_get("deleted")?,
            provisioning_job_id: r.try_get("provisioning_job_id")?,
        })
    }
}

impl InstanceRow {
    /// dstack's `is_placeholder_instance`: PENDING and reserved by a job awaiting new
    /// capacity; the job's worker provisions it, the instance pipeline leaves it alone.
    pub(crate) fn is_placeholder(&self) -> bool {
        self.status == InstanceStatus::Pending && self.provisioning_job_id.is_some()
    }

    /// The provisioning data, if stored and readable.
    pub(crate) fn jpd(&self) -> Option<JobProvisioningData> {
        self.job_provisioning_data
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
    }

    /// The offer, if stored and readable.
    pub(crate) fn offer(&self) -> Option<InstanceOfferWithAvailability> {
        self.offer
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
    }

    /// The wire model.
    pub(crate) fn to_model(&self, project_name: &str, fleet_name: Option<&str>) -> Instance {
        let mut i = Instance {
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            project_name: project_name.to_string(),
            backend: None,
            instance_type: None,
            name: self.name.clone(),
            fleet_id: self
                .fleet_id
                .as_deref()
                .and_then(|s| Uuid::parse_str(s).ok()),
            fleet_name: fleet_name.map(str::to_string),
            instance_num: self.instance_num,
            job_name: None,
            hostname: None,
            status: self.status,
            unreachable: self.unreachable,
            health_status: HealthStatus::Healthy,
            termination_reason: self.termination_reason.clone(),
            termination_reason_message: self.termination_reason_message.clone(),
            created: self.created_at,
            finished_at: self.finished_at,
            region: None,
            availability_zone: None,
            price: None,
            total_blocks: self.total_blocks,
            busy_blocks: self.busy_blocks,
            gpu_driver: None,
        };
        if let Some(offer) = self.offer() {
            i.backend = Some(offer.backend);
            i.region = Some(offer.region);
            i.price = Some(offer.price);
        }
        if let Some(jpd) = self.jpd() {
            i.instance_type = Some(jpd.instance_type);
            i.hostname = jpd.hostname;
            i.availability_zone = jpd.availability_zone;
            i.gpu_driver = jpd.gpu_driver;
        }
        i
    }
}

impl Engine {
    /// Decrypts and parses an SSH instance's connection info (`None` for cloud instances).
    pub(crate) fn remote_connection_info(
        &self,
        row: &InstanceRow,
    ) -> crate::Result<Option<RemoteConnectionInfo>> {
        let Some(stored) = row.remote_connection_info.as_deref() else {
            return Ok(None);
        };
        let plain = self.crypto().decrypt(stored)?;
        let rci = serde_json::from_str(&plain).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("stored remote_connection_info is unreadable: {e}"),
            )
        })?;
        Ok(Some(rci))
    }

    /// One instance row by id.
    pub(crate) async fn instance_row(&self, id: &str) -> crate::Result<Option<InstanceRow>> {
        let row: Option<InstanceRow> = sqlx::query_as(select_instances!("id = $1"))
            .bind(id)
            .fetch_optional(self.store().reader())
            .await?;
        Ok(row)
    }

    /// The instances of a fleet (deleted ones too), by `instance_num`.
    pub(crate) async fn fleet_instance_rows(
        &self,
        fleet_id: &str,
    ) -> crate::Result<Vec<InstanceRow>> {
        let rows: Vec<InstanceRow> = sqlx::query_as(select_instances!(
            "fleet_id = $1 ORDER BY instance_num, created_at"
        ))
        .bind(fleet_id)
        .fetch_all(self.store().reader())
        .await?;
        Ok(rows)
    }

    /// The names of a project and a fleet, for wire models.
    async fn instance_names(&self, row: &InstanceRow) -> crate::Result<(String, Option<String>)> {
        let (project,): (String,) = sqlx::query_as("SELECT name FROM projects WHERE id = $1")
            .bind(&row.project_id)
            .fetch_one(self.store().reader())
            .await?;
        let fleet = match &row.fleet_id {
            Some(fid) => sqlx::query_as::<_, (String,)>("SELECT name FROM fleets WHERE id = $1")
                .bind(fid)
                .fetch_optional(self.store().reader())
                .await?
                .map(|r| r.0),
            None => None,
        };
        Ok((project, fleet))
    }

    /// Ids of the projects the caller can see (global admins: all non-deleted).
    pub(crate) async fn visible_project_ids(
        &self,
        ctx: &Ctx,
    ) -> crate::Result<Vec<(String, String)>> {
        let me = ctx.user()?;
        let rows: Vec<(String, String)> = if me.global_role == GlobalRole::Admin {
            sqlx::query_as("SELECT id, name FROM projects WHERE deleted = FALSE")
                .fetch_all(self.store().reader())
                .await?
        } else {
            sqlx::query_as(
                "SELECT p.id, p.name FROM projects p JOIN members m ON m.project_id = p.id \
                 WHERE p.deleted = FALSE AND m.user_id = $1",
            )
            .bind(&me.id)
            .fetch_all(self.store().reader())
            .await?
        };
        Ok(rows)
    }

    pub(crate) async fn instances_list(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: ListInstancesRequest = parse_body(body)?;
        let mut projects = self.visible_project_ids(ctx).await?;
        if let Some(names) = &req.project_names {
            projects.retain(|(_, n)| names.contains(n));
        }
        let fleet_ids: Option<Vec<String>> = req
            .fleet_ids
            .as_ref()
            .map(|v| v.iter().map(|u| u.to_string()).collect());
        let mut items = Vec::new();
        for (pid, pname) in &projects {
            let rows: Vec<InstanceRow> = sqlx::query_as(select_instances!("project_id = $1"))
                .bind(pid)
                .fetch_all(self.store().reader())
                .await?;
            let fleet_names: Vec<(String, String)> =
                sqlx::query_as("SELECT id, name FROM fleets WHERE project_id = $1")
                    .bind(pid)
                    .fetch_all(self.store().reader())
                    .await?;
            for r in rows {
                if let Some(ids) = &fleet_ids
                    && !r.fleet_id.as_ref().is_some_and(|f| ids.contains(f))
                {
                    continue;
                }
                if req.only_active && (r.deleted || !r.status.is_available()) {
                    continue;
                }
                let fname = r.fleet_id.as_ref().and_then(|f| {
                    fleet_names
                        .iter()
                        .find(|(id, _)| id == f)
                        .map(|(_, n)| n.as_str())
                });
                items.push(r.to_model(pname, fname));
            }
        }
        let page = super::paginate(
            items,
            |i| (i.created, i.id.to_string()),
            req.prev_created_at,
            req.prev_id.map(|i| i.to_string()),
            req.ascending,
            req.limit as usize,
        );
        to_json(&page)
    }

    pub(crate) async fn instances_get(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: GetInstanceRequest = parse_body(body)?;
        let project = ctx.project()?;
        let row = self
            .instance_row(&req.id.to_string())
            .await?
            .filter(|r| r.project_id == project.id)
            .ok_or_else(Error::not_found)?;
        let (pname, fname) = self.instance_names(&row).await?;
        to_json(&row.to_model(&pname, fname.as_deref()))
    }
}

/// The offer and provisioning data an SSH instance starts with (dstack's placeholder
/// resources, replaced once the host is deployed).
pub(crate) fn ssh_placeholder(
    name: &str,
    host: &str,
    port: u16,
    user: &str,
    internal_ip: Option<String>,
    network: Option<String>,
) -> crate::Result<(String, String)> {
    use crate::models::offers::{InstanceAvailability, InstanceType, Resources};
    let instance_type = InstanceType {
        name: "ssh".into(),
        resources: Resources {
            cpus: 2,
            memory_mib: 8,
            gpus: vec![],
            spot: false,
            disk: Default::default(),
            cpu_arch: None,
            description: String::new(),
        },
    };
    let jpd = serde_json::json!({
        "backend": BackendType::Remote,
        "instance_type": instance_type,
        "instance_id": name,
        "hostname": host,
        "internal_ip": internal_ip,
        "instance_network": network,
        "region": "remote",
        "price": 0.0,
        "username": user,
        "ssh_port": port,
        "dockerized": true,
        "backend_data": "",
        "ssh_proxy": null,
    });
    let offer = serde_json::json!({
        "backend": BackendType::Remote,
        "instance": instance_type,
        "region": "remote",
        "price": 0.0,
        "availability": InstanceAvailability::Available,
    });
    let jpd: JobProvisioningData = serde_json::from_value(jpd)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("placeholder JPD: {e}")))?;
    let offer: InstanceOfferWithAvailability = serde_json::from_value(offer)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("placeholder offer: {e}")))?;
    Ok((
        serde_json::to_string(&offer)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?,
        serde_json::to_string(&jpd).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?,
    ))
}
