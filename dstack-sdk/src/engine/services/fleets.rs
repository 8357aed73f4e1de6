//! Fleets: plan, apply (create or in-place update), get, list, delete (dstack-api.md §2.5,
//! §3.5, §4.5).
//!
//! SSH fleets get one PENDING instance per host, which the instance pipeline deploys. Cloud
//! fleets (`nodes`) are accepted and stored with `nodes.target` PENDING instances; with no
//! cloud provisioning in this build the instance pipeline ends them with `no_offers`.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::engine::auth::Ctx;
use crate::engine::pipelines::PipelineKind;
use crate::engine::{Engine, time};
use crate::models::common::ApplyAction;
use crate::models::fleets::{
    ApplyFleetPlanInput, Fleet, FleetPlan, FleetSpec, FleetStatus, SSHHost, SSHParams,
};
use crate::models::instances::InstanceStatus;
use crate::models::users::GlobalRole;
use crate::{Error, ErrorKind, HttpShape};

use super::instances::{InstanceRow, RemoteConnectionInfo, status_to_db};
use super::to_json;

/// Parses a fleet request body. Fleet specs are parsed leniently (as dstack's client-facing
/// configuration models are), so no unknown-key echo check is applied.
fn parse_lax<T: DeserializeOwned>(body: Option<Value>) -> crate::Result<T> {
    let body = body.unwrap_or_else(|| Value::Object(Default::default()));
    serde_json::from_value(body).map_err(|e| {
        Error::new(ErrorKind::Validation, format!("Invalid request body: {e}"))
            .with_shape(HttpShape::RequestValidation)
    })
}

/// `fleets/get_plan` body.
#[derive(Debug, Deserialize)]
struct GetFleetPlanRequest {
    spec: FleetSpec,
}

/// `fleets/apply` body.
#[derive(Debug, Deserialize)]
struct ApplyFleetPlanRequest {
    plan: ApplyFleetPlanInput,
    force: bool,
}

/// `fleets/get` body.
#[derive(Debug, Deserialize)]
struct GetFleetRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<Uuid>,
}

/// `fleets/list` (project) body.
#[derive(Debug, Deserialize, Default)]
struct ListProjectFleetsRequest {
    #[serde(default)]
    #[allow(dead_code)]
    include_imported: bool,
}

fn default_fleets_limit() -> usize {
    100
}

/// `/api/fleets/list` body.
#[derive(Debug, Deserialize)]
struct ListFleetsRequest {
    #[serde(default)]
    project_name: Option<String>,
    #[serde(default)]
    only_active: bool,
    #[serde(default)]
    #[allow(dead_code)]
    include_imported: bool,
    #[serde(with = "crate::models::datetime::option", default)]
    prev_created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    prev_id: Option<Uuid>,
    #[serde(default = "default_fleets_limit")]
    limit: usize,
    #[serde(default)]
    ascending: bool,
}

/// `fleets/delete` body.
#[derive(Debug, Deserialize)]
struct DeleteFleetsRequest {
    names: Vec<String>,
}

/// `fleets/delete_instances` body.
#[derive(Debug, Deserialize)]
struct DeleteFleetInstancesRequest {
    name: String,
    instance_nums: Vec<i64>,
}

/// The stored status name of a fleet status.
pub(crate) fn fleet_status_to_db(s: FleetStatus) -> &'static str {
    match s {
        FleetStatus::Submitted => "SUBMITTED",
        FleetStatus::Active => "ACTIVE",
        FleetStatus::Terminating => "TERMINATING",
        FleetStatus::Terminated => "TERMINATED",
        FleetStatus::Failed => "FAILED",
    }
}

fn fleet_status_from_db(s: &str) -> FleetStatus {
    FleetStatus::ALL
        .iter()
        .copied()
        .find(|v| fleet_status_to_db(*v) == s)
        .unwrap_or(FleetStatus::Failed)
}

/// One `fleets` row.
#[derive(Debug, Clone)]
pub(crate) struct FleetRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) status: FleetStatus,
    pub(crate) status_message: Option<String>,
    pub(crate) spec: String,
    pub(crate) deleted: bool,
    pub(crate) locked: bool,
}

type RawFleet = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    bool,
    Option<String>,
);

macro_rules! select_fleets {
    ($cond:literal) => {
        concat!(
            "SELECT id, project_id, name, created_at, status, status_message, spec, deleted, \
             lock_expires_at FROM fleets WHERE ",
            $cond
        )
    };
}

impl From<RawFleet> for FleetRow {
    fn from(r: RawFleet) -> Self {
        let now = time::to_db(time::now());
        FleetRow {
            id: r.0,
            name: r.2,
            created_at: time::from_db(&r.3).unwrap_or_default(),
            status: fleet_status_from_db(&r.4),
            status_message: r.5,
            spec: r.6,
            deleted: r.7,
            locked: r.8.is_some_and(|e| e > now),
        }
    }
}

impl FleetRow {
    fn spec(&self) -> crate::Result<FleetSpec> {
        serde_json::from_str(&self.spec).map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("stored spec of fleet {} is unreadable: {e}", self.name),
            )
        })
    }
}

/// Removes private keys from a spec before it leaves the server.
fn strip_sensitive(spec: &mut FleetSpec) {
    if let Some(ssh) = spec.configuration.ssh_config.as_mut() {
        ssh.ssh_key = None;
        if let Some(pj) = ssh.proxy_jump.as_mut() {
            pj.ssh_key = None;
        }
        for h in &mut ssh.hosts {
            if let SSHHost::Params(p) = h {
                p.ssh_key = None;
                if let Some(pj) = p.proxy_jump.as_mut() {
                    pj.ssh_key = None;
                }
            }
        }
    }
}

/// `^[a-z][a-z0-9-]{1,40}$`.
fn valid_fleet_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=41).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn client_error(msg: impl Into<String>) -> Error {
    Error::bad_request(msg)
}

fn check_private_key(key: &crate::models::fleets::SshKey) -> crate::Result<()> {
    let Some(private) = key.private.as_deref() else {
        return Err(client_error("Private key not provided"));
    };
    crate::ssh::SshTarget::new("check", 22, "check")
        .with_key(private)
        .key_fingerprints()
        .map(|_| ())
        .map_err(|_| {
            client_error(
                "Unsupported key type. The key type should be RSA, ECDSA, or Ed25519 and should \
                 not be encrypted with passphrase.",
            )
        })
}

/// dstack's `_validate_fleet_spec_and_set_defaults`.
fn validate_spec(spec: &FleetSpec) -> crate::Result<()> {
    let c = &spec.configuration;
    if let Some(name) = &c.name
        && !valid_fleet_name(name)
    {
        return Err(client_error(
            "Resource name should match regex '^[a-z][a-z0-9-]{1,40}$'",
        ));
    }
    match (&c.ssh_config, &c.nodes) {
        (None, None) => return Err(client_error("No ssh_config or nodes specified")),
        (Some(_), Some(_)) => {
            return Err(client_error("ssh_config and nodes are mutually exclusive"));
        }
        _ => {}
    }
    if let Some(ssh) = &c.ssh_config {
        let mut cloud_fields = Vec::new();
        for (name, set) in [
            ("reservation", c.reservation.is_some()),
            ("resources", c.resources.is_some()),
            ("backends", c.backends.is_some()),
            ("regions", c.regions.is_some()),
            ("availability_zones", c.availability_zones.is_some()),
            ("instance_types", c.instance_types.is_some()),
            ("spot_policy", c.spot_policy.is_some()),
            ("retry", c.retry.is_some()),
            ("max_price", c.max_price.is_some()),
            ("idle_duration", c.idle_duration.is_some()),
            ("tags", c.tags.is_some()),
            ("backend_options", c.backend_options.is_some()),
        ] {
            if set {
                cloud_fields.push(format!("'{name}'"));
            }
        }
        if !cloud_fields.is_empty() {
            return Err(client_error(format!(
                "SSH fleet configuration does not support the following fields: [{}]",
                cloud_fields.join(", ")
            )));
        }
        validate_ssh(ssh)?;
    } else if !c.env.is_empty() {
        return Err(client_error(
            "Backend fleet configuration does not support the following fields: ['env']",
        ));
    }
    Ok(())
}

fn validate_ssh(ssh: &SSHParams) -> crate::Result<()> {
    for host in &ssh.hosts {
        let (hostname, key, user) = match host {
            SSHHost::Hostname(h) => (h.as_str(), ssh.ssh_key.as_ref(), ssh.user.as_ref()),
            SSHHost::Params(p) => (
                p.hostname.as_str(),
                p.ssh_key.as_ref().or(ssh.ssh_key.as_ref()),
                p.user.as_ref().or(ssh.user.as_ref()),
            ),
        };
        if key.is_none() {
            return Err(client_error(format!(
                "No ssh key specified for host {hostname}"
            )));
        }
        if user.is_none() {
            return Err(client_error(format!(
                "No ssh user specified for host {hostname}"
            )));
        }
    }
    if let Some(k) = &ssh.ssh_key {
        check_private_key(k)?;
    }
    for host in &ssh.hosts {
        if let SSHHost::Params(p) = host
            && let Some(k) = &p.ssh_key
        {
            check_private_key(k)?;
        }
    }
    let with_ip = ssh
        .hosts
        .iter()
        .filter(|h| matches!(h, SSHHost::Params(p) if p.internal_ip.is_some()))
        .count();
    if with_ip != 0 && with_ip != ssh.hosts.len() {
        return Err(client_error("internal_ip must be specified for all hosts"));
    }
    if with_ip > 0 && ssh.network.is_some() {
        return Err(client_error(
            "internal_ip is mutually exclusive with network",
        ));
    }
    Ok(())
}

fn value_of<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Top-level keys whose values differ between two JSON objects.
fn changed_keys(a: &Value, b: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let am = a.as_object().unwrap_or(&empty);
    let bm = b.as_object().unwrap_or(&empty);
    let mut keys: Vec<String> = am
        .keys()
        .chain(bm.keys())
        .filter(|k| am.get(*k) != bm.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn check_only(changed: &[String], allowed: &[&str]) -> crate::Result<()> {
    if changed.iter().all(|k| allowed.contains(&k.as_str())) {
        Ok(())
    } else {
        let q = |v: Vec<String>| {
            v.iter()
                .map(|s| format!("'{s}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(client_error(format!(
            "Failed to update fields [{}]. Can only update [{}].",
            q(changed.to_vec()),
            q(allowed.iter().map(|s| s.to_string()).collect())
        )))
    }
}

/// A host's parameters with client-side-only fields (`identity_file`) cleared.
fn host_key_value(h: &SSHHost) -> Value {
    let mut v = value_of(h);
    if let Some(o) = v.as_object_mut() {
        o.remove("identity_file");
        if let Some(pj) = o.get_mut("proxy_jump").and_then(Value::as_object_mut) {
            pj.remove("identity_file");
        }
    }
    v
}

/// `(added, removed, changed)` host names between two host lists.
fn host_changes(current: &[SSHHost], new: &[SSHHost]) -> (Vec<SSHHost>, Vec<String>, Vec<String>) {
    let added = new
        .iter()
        .filter(|h| !current.iter().any(|c| c.hostname() == h.hostname()))
        .cloned()
        .collect();
    let removed = current
        .iter()
        .filter(|h| !new.iter().any(|n| n.hostname() == h.hostname()))
        .map(|h| h.hostname().to_string())
        .collect();
    let changed = current
        .iter()
        .filter_map(|c| {
            let n = new.iter().find(|n| n.hostname() == c.hostname())?;
            (host_key_value(c) != host_key_value(n)).then(|| c.hostname().to_string())
        })
        .collect();
    (added, removed, changed)
}

/// dstack's `_check_can_update_fleet_spec`.
fn check_can_update(current: &FleetSpec, new: &FleetSpec) -> crate::Result<()> {
    let mut cur = value_of(current);
    let mut nv = value_of(new);
    for v in [&mut cur, &mut nv] {
        if let Some(o) = v.as_object_mut() {
            o.remove("autocreated");
        }
    }
    check_only(
        &changed_keys(&cur, &nv),
        &["configuration", "configuration_path"],
    )?;
    let (cc, nc) = (&current.configuration, &new.configuration);
    match (&cc.ssh_config, &nc.ssh_config) {
        (None, Some(_)) => Err(client_error(
            "Fleet type changed from Cloud to SSH, cannot update",
        )),
        (Some(_), None) => Err(client_error(
            "Fleet type changed from SSH to Cloud, cannot update",
        )),
        (None, None) => check_only(
            &changed_keys(&value_of(cc), &value_of(nc)),
            &[
                "nodes",
                "reservation",
                "tags",
                "resources",
                "backends",
                "regions",
                "availability_zones",
                "instance_types",
                "spot_policy",
                "max_price",
            ],
        ),
        (Some(cs), Some(ns)) => {
            check_only(&changed_keys(&value_of(cc), &value_of(nc)), &["ssh_config"])?;
            let strip = |s: &SSHParams| {
                let mut v = value_of(s);
                if let Some(o) = v.as_object_mut() {
                    o.remove("identity_file");
                    if let Some(pj) = o.get_mut("proxy_jump").and_then(Value::as_object_mut) {
                        pj.remove("identity_file");
                    }
                }
                v
            };
            check_only(&changed_keys(&strip(cs), &strip(ns)), &["hosts"])?;
            let (_, _, changed) = host_changes(&cs.hosts, &ns.hosts);
            if changed.is_empty() {
                Ok(())
            } else {
                Err(client_error(format!(
                    "Hosts configuration changed, cannot update: {changed:?}"
                )))
            }
        }
    }
}

/// A new instance row to insert.
struct NewInstance {
    id: String,
    name: String,
    num: i64,
    status: InstanceStatus,
    offer: Option<String>,
    jpd: Option<String>,
    rci: Option<String>,
    total_blocks: Option<i64>,
}

fn blocks_of(b: crate::models::fleets::Blocks) -> Option<i64> {
    match b {
        crate::models::fleets::Blocks::Auto => None,
        crate::models::fleets::Blocks::Count(n) => Some(n),
    }
}

impl Engine {
    /// dstack's `_check_can_manage_ssh_fleets`.
    fn check_can_manage_ssh_fleets(&self, ctx: &Ctx) -> crate::Result<()> {
        let user = ctx.user()?;
        if user.global_role == GlobalRole::Admin {
            return Ok(());
        }
        match ctx.role {
            Some(role) if self.member_permissions(user, role).can_manage_ssh_fleets => Ok(()),
            _ => Err(Error::forbidden_action("Access denied")),
        }
    }

    async fn fleet_by_name(&self, project_id: &str, name: &str) -> crate::Result<Option<FleetRow>> {
        let row: Option<RawFleet> = sqlx::query_as(select_fleets!(
            "project_id = $1 AND name = $2 AND deleted = FALSE"
        ))
        .bind(project_id)
        .bind(name)
        .fetch_optional(self.store().reader())
        .await?;
        Ok(row.map(FleetRow::from))
    }

    async fn fleet_by_id(&self, project_id: &str, id: &str) -> crate::Result<Option<FleetRow>> {
        let row: Option<RawFleet> = sqlx::query_as(select_fleets!("project_id = $1 AND id = $2"))
            .bind(project_id)
            .bind(id)
            .fetch_optional(self.store().reader())
            .await?;
        Ok(row.map(FleetRow::from))
    }

    /// The wire [`Fleet`] with its non-deleted instances.
    async fn fleet_model(
        &self,
        row: &FleetRow,
        project_name: &str,
        sensitive: bool,
    ) -> crate::Result<Fleet> {
        let mut spec = row.spec()?;
        if !sensitive {
            strip_sensitive(&mut spec);
        }
        let instances = self
            .fleet_instance_rows(&row.id)
            .await?
            .into_iter()
            .filter(|i| !i.deleted)
            .map(|i| i.to_model(project_name, Some(&row.name)))
            .collect();
        Ok(Fleet {
            id: Uuid::parse_str(&row.id).unwrap_or_default(),
            name: row.name.clone(),
            project_name: project_name.to_string(),
            spec,
            created_at: row.created_at,
            status: row.status,
            status_message: row.status_message.clone(),
            instances,
        })
    }

    /// Hosts already used by active SSH instances of other fleets (`_check_ssh_hosts_not_yet_added`).
    async fn check_hosts_not_added(
        &self,
        spec: &FleetSpec,
        current_fleet_id: Option<&str>,
    ) -> crate::Result<()> {
        let Some(ssh) = &spec.configuration.ssh_config else {
            return Ok(());
        };
        let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT fleet_id, job_provisioning_data FROM instances \
             WHERE deleted = FALSE AND status <> 'TERMINATED' AND remote_connection_info IS NOT NULL",
        )
        .fetch_all(self.store().reader())
        .await?;
        let mut existing = Vec::new();
        for (fleet_id, jpd) in rows {
            if current_fleet_id.is_some() && fleet_id.as_deref() == current_fleet_id {
                continue;
            }
            let host = jpd
                .and_then(|j| serde_json::from_str::<Value>(&j).ok())
                .and_then(|v| {
                    v.get("hostname")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                });
            if let Some(h) = host {
                existing.push(h);
            }
        }
        let dup: Vec<&str> = ssh
            .hosts
            .iter()
            .map(SSHHost::hostname)
            .filter(|h| existing.iter().any(|e| e == h))
            .collect();
        if dup.is_empty() {
            Ok(())
        } else {
            Err(client_error(format!(
                "Instances [{}] are already assigned to a fleet.",
                dup.join(", ")
            )))
        }
    }

    pub(crate) async fn fleets_get_plan(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: GetFleetPlanRequest = parse_lax(body)?;
        let project = ctx.project()?;
        let user = ctx.user()?;
        let mut effective = req.spec.clone();
        validate_spec(&effective)?;
        let mut action = ApplyAction::Create;
        let mut current = None;
        let mut current_id = None;
        if let Some(name) = &effective.configuration.name
            && let Some(row) = self.fleet_by_name(&project.id, name).await?
        {
            let fleet = self.fleet_model(&row, &project.name, true).await?;
            if check_can_update(&fleet.spec, &effective).is_ok() {
                action = ApplyAction::Update;
            }
            current_id = Some(row.id.clone());
            current = Some(fleet);
        }
        self.check_hosts_not_added(&effective, current_id.as_deref())
            .await?;
        strip_sensitive(&mut effective);
        if let Some(c) = current.as_mut() {
            strip_sensitive(&mut c.spec);
        }
        // As in dstack, the submitted spec is echoed unchanged (the caller's own keys); the
        // effective spec and the current fleet have their private keys removed.
        let plan = FleetPlan {
            project_name: project.name.clone(),
            user: user.name.clone(),
            spec: req.spec,
            effective_spec: Some(effective),
            current_resource: current,
            offers: vec![],
            total_offers: 0,
            max_offer_price: None,
            action: Some(action),
        };
        to_json(&plan)
    }

    pub(crate) async fn fleets_apply(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: ApplyFleetPlanRequest = parse_lax(body)?;
        let project = ctx.project()?;
        let spec = req.plan.spec;
        validate_spec(&spec)?;
        if spec.configuration.ssh_config.is_some() {
            self.check_can_manage_ssh_fleets(ctx)?;
        }
        let existing = match &spec.configuration.name {
            Some(name) => self.fleet_by_name(&project.id, name).await?,
            None => None,
        };
        let Some(row) = existing else {
            return self.fleet_create(ctx, spec).await;
        };
        if row.locked {
            return Err(client_error(
                "Failed to update fleet: fleet is being processed currently. Try again later.",
            ));
        }
        let stored = self.fleet_model(&row, &project.name, true).await?;
        if !req.force {
            let mut stored_plain = stored.spec.clone();
            strip_sensitive(&mut stored_plain);
            let same = req.plan.current_resource.as_ref().is_some_and(|c| {
                let mut cs = c.spec.clone();
                strip_sensitive(&mut cs);
                c.id == stored.id && value_of(&cs) == value_of(&stored_plain)
            });
            if !same {
                return Err(client_error(
                    "Failed to apply plan. Resource has been changed. Try again or use force apply.",
                ));
            }
        }
        check_can_update(&stored.spec, &spec)?;
        self.fleet_update(ctx, &row, &stored.spec, spec).await
    }

    async fn fleet_create(&self, ctx: &Ctx, mut spec: FleetSpec) -> crate::Result<Value> {
        let project = ctx.project()?;
        // As in dstack, only `get_plan` and in-place updates check that hosts are not in another
        // fleet; a direct create does not.
        let name = match &spec.configuration.name {
            Some(n) => n.clone(),
            None => {
                let n = format!("fleet-{}", &Uuid::new_v4().simple().to_string()[..8]);
                spec.configuration.name = Some(n.clone());
                n
            }
        };
        let fleet_id = Uuid::new_v4().to_string();
        let mut instances = Vec::new();
        if let Some(ssh) = &spec.configuration.ssh_config {
            for (i, host) in ssh.hosts.iter().enumerate() {
                instances.push(self.new_ssh_instance(&spec, ssh, host, &name, i as i64)?);
            }
        } else if let Some(nodes) = &spec.configuration.nodes {
            for i in 0..nodes.target.max(0) {
                instances.push(NewInstance {
                    id: Uuid::new_v4().to_string(),
                    name: format!("{name}-{i}"),
                    num: i,
                    status: InstanceStatus::Pending,
                    offer: None,
                    jpd: None,
                    rci: None,
                    total_blocks: blocks_of(spec.configuration.blocks),
                });
            }
        }
        let now = time::to_db(time::now());
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let mut tx = self.store().begin().await?;
        let (taken,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM fleets WHERE project_id = $1 AND name = $2 AND deleted = FALSE",
        )
        .bind(&project.id)
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
        if taken > 0 {
            return Err(Error::already_exists());
        }
        sqlx::query(
            "INSERT INTO fleets (id, project_id, name, created_at, last_processed_at, status, \
             spec, deleted) VALUES ($1, $2, $3, $4, $4, 'ACTIVE', $5, FALSE)",
        )
        .bind(&fleet_id)
        .bind(&project.id)
        .bind(&name)
        .bind(&now)
        .bind(&spec_json)
        .execute(&mut *tx)
        .await?;
        for inst in &instances {
            insert_instance(&mut tx, inst, &spec, &project.id, &fleet_id, &now).await?;
        }
        tx.commit().await?;
        tracing::info!(fleet = %name, project = %project.name, instances = instances.len(), "fleet created");
        self.hint(PipelineKind::Instances);
        let row = self
            .fleet_by_id(&project.id, &fleet_id)
            .await?
            .ok_or_else(Error::not_found)?;
        to_json(&self.fleet_model(&row, &project.name, false).await?)
    }

    fn new_ssh_instance(
        &self,
        spec: &FleetSpec,
        ssh: &SSHParams,
        host: &SSHHost,
        fleet_name: &str,
        num: i64,
    ) -> crate::Result<NewInstance> {
        let mut blocks = spec.configuration.blocks;
        let (hostname, user, key, port, proxy, internal_ip) = match host {
            SSHHost::Hostname(h) => (
                h.clone(),
                ssh.user.clone(),
                ssh.ssh_key.clone(),
                ssh.port,
                ssh.proxy_jump.clone(),
                None,
            ),
            SSHHost::Params(p) => {
                if let Some(b) = p.blocks {
                    blocks = b;
                }
                (
                    p.hostname.clone(),
                    p.user.clone().or_else(|| ssh.user.clone()),
                    p.ssh_key.clone().or_else(|| ssh.ssh_key.clone()),
                    p.port.or(ssh.port),
                    p.proxy_jump.clone().or_else(|| ssh.proxy_jump.clone()),
                    p.internal_ip.clone(),
                )
            }
        };
        let (Some(user), Some(key)) = (user, key) else {
            return Err(client_error("ssh key or user not specified"));
        };
        let port = u16::try_from(port.unwrap_or(22))
            .map_err(|_| client_error(format!("Invalid SSH port for host {hostname}")))?;
        let name = format!("{fleet_name}-{num}");
        let (ssh_proxy, ssh_proxy_keys) = match proxy {
            Some(pj) => (
                Some(crate::models::instances::SshConnectionParams {
                    hostname: pj.hostname.clone(),
                    username: pj.user.clone(),
                    port: u16::try_from(pj.port.unwrap_or(22)).unwrap_or(22),
                }),
                pj.ssh_key.map(|k| vec![k]),
            ),
            None => (None, None),
        };
        let rci = RemoteConnectionInfo {
            host: hostname.clone(),
            port,
            ssh_user: user.clone(),
            ssh_keys: vec![key],
            ssh_proxy,
            ssh_proxy_keys,
            env: spec.configuration.env.clone(),
        };
        let rci_json = serde_json::to_string(&rci)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let (offer, jpd) = super::instances::ssh_placeholder(
            &name,
            &hostname,
            port,
            &user,
            internal_ip,
            ssh.network.clone(),
        )?;
        Ok(NewInstance {
            id: Uuid::new_v4().to_string(),
            name,
            num,
            status: InstanceStatus::Pending,
            offer: Some(offer),
            jpd: Some(jpd),
            rci: Some(self.crypto().encrypt(&rci_json)),
            total_blocks: blocks_of(blocks),
        })
    }

    async fn fleet_update(
        &self,
        ctx: &Ctx,
        row: &FleetRow,
        current: &FleetSpec,
        spec: FleetSpec,
    ) -> crate::Result<Value> {
        let project = ctx.project()?;
        let mut to_add = Vec::new();
        let mut to_remove: Vec<String> = Vec::new();
        if let (Some(cs), Some(ns)) = (
            &current.configuration.ssh_config,
            &spec.configuration.ssh_config,
        ) {
            let (added, removed, _) = host_changes(&cs.hosts, &ns.hosts);
            let rows = self.fleet_instance_rows(&row.id).await?;
            let mut taken: Vec<i64> = rows
                .iter()
                .filter(|i| !i.deleted)
                .map(|i| i.instance_num)
                .collect();
            for i in rows.iter().filter(|i| !i.deleted) {
                if let Some(rci) = self.remote_connection_info(i)?
                    && removed.contains(&rci.host)
                {
                    to_remove.push(i.id.clone());
                }
            }
            if !added.is_empty() {
                self.check_hosts_not_added(&spec, Some(&row.id)).await?;
            }
            for host in &added {
                let mut num = 0;
                while taken.contains(&num) {
                    num += 1;
                }
                taken.push(num);
                to_add.push(self.new_ssh_instance(&spec, ns, host, &row.name, num)?);
            }
        }
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let now = time::to_db(time::now());
        let mut tx = self.store().begin().await?;
        sqlx::query("UPDATE fleets SET spec = $1, consolidation_attempt = 0 WHERE id = $2")
            .bind(&spec_json)
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
        for inst in &to_add {
            insert_instance(&mut tx, inst, &spec, &project.id, &row.id, &now).await?;
        }
        for id in &to_remove {
            terminate_instance_by_user(&mut tx, id).await?;
        }
        tx.commit().await?;
        if !to_add.is_empty() || !to_remove.is_empty() {
            self.hint(PipelineKind::Instances);
        }
        let row = self
            .fleet_by_id(&project.id, &row.id)
            .await?
            .ok_or_else(Error::not_found)?;
        to_json(&self.fleet_model(&row, &project.name, false).await?)
    }

    pub(crate) async fn fleets_get(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: GetFleetRequest = parse_lax(body)?;
        let project = ctx.project()?;
        let row = match (&req.id, &req.name) {
            (Some(id), _) => self.fleet_by_id(&project.id, &id.to_string()).await?,
            (None, Some(name)) => self.fleet_by_name(&project.id, name).await?,
            (None, None) => return Err(client_error("name or id must be specified")),
        };
        let row = row.ok_or_else(Error::not_found)?;
        to_json(&self.fleet_model(&row, &project.name, false).await?)
    }

    pub(crate) async fn fleets_list_project(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let _req: ListProjectFleetsRequest = parse_lax(body)?;
        let project = ctx.project()?;
        let rows: Vec<RawFleet> = sqlx::query_as(select_fleets!(
            "project_id = $1 AND deleted = FALSE ORDER BY created_at"
        ))
        .bind(&project.id)
        .fetch_all(self.store().reader())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows.into_iter().map(FleetRow::from) {
            out.push(self.fleet_model(&r, &project.name, false).await?);
        }
        to_json(&out)
    }

    pub(crate) async fn fleets_list_all(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: ListFleetsRequest = parse_lax(body)?;
        if req.limit > 100 {
            return Err(Error::validation(
                &["body", "limit"],
                "Input should be less than or equal to 100",
            ));
        }
        let mut projects = self.visible_project_ids(ctx).await?;
        if let Some(name) = &req.project_name {
            projects.retain(|(_, n)| n == name);
        }
        let mut rows = Vec::new();
        for (pid, pname) in &projects {
            let raw: Vec<RawFleet> = sqlx::query_as(select_fleets!("project_id = $1"))
                .bind(pid)
                .fetch_all(self.store().reader())
                .await?;
            for r in raw.into_iter().map(FleetRow::from) {
                if req.only_active && r.deleted {
                    continue;
                }
                rows.push((r, pname.clone()));
            }
        }
        let page = super::paginate(
            rows,
            |(r, _)| (r.created_at, r.id.clone()),
            req.prev_created_at,
            req.prev_id.map(|i| i.to_string()),
            req.ascending,
            req.limit,
        );
        let mut out = Vec::with_capacity(page.len());
        for (r, pname) in &page {
            out.push(self.fleet_model(r, pname, false).await?);
        }
        to_json(&out)
    }

    pub(crate) async fn fleets_delete(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: DeleteFleetsRequest = parse_lax(body)?;
        self.delete_fleets(ctx, &req.names, None).await
    }

    pub(crate) async fn fleets_delete_instances(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: DeleteFleetInstancesRequest = parse_lax(body)?;
        self.delete_fleets(
            ctx,
            std::slice::from_ref(&req.name),
            Some(&req.instance_nums),
        )
        .await
    }

    async fn delete_fleets(
        &self,
        ctx: &Ctx,
        names: &[String],
        instance_nums: Option<&[i64]>,
    ) -> crate::Result<Value> {
        let project = ctx.project()?;
        let mut fleets = Vec::new();
        for name in names {
            if let Some(row) = self.fleet_by_name(&project.id, name).await? {
                fleets.push(row);
            }
        }
        // A fleet leased by the pipeline is being processed: retry a few times, as dstack does.
        for attempt in 0..3 {
            let mut locked = false;
            for f in &mut fleets {
                if let Some(r) = self.fleet_by_id(&project.id, &f.id).await? {
                    locked |= r.locked;
                    *f = r;
                }
            }
            if !locked {
                break;
            }
            if attempt == 2 {
                return Err(client_error(if instance_nums.is_none() {
                    "Failed to delete fleets: fleets are being processed currently. Try again later."
                } else {
                    "Failed to delete fleet instances: fleets are being processed currently. Try again later."
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        for f in &fleets {
            if f.spec()?.configuration.ssh_config.is_some() {
                self.check_can_manage_ssh_fleets(ctx)?;
            }
            self.check_fleet_not_in_use(f, instance_nums).await?;
        }
        let mut targets: Vec<InstanceRow> = Vec::new();
        for f in &fleets {
            for i in self.fleet_instance_rows(&f.id).await? {
                if i.deleted {
                    continue;
                }
                if let Some(nums) = instance_nums
                    && !nums.contains(&i.instance_num)
                {
                    continue;
                }
                targets.push(i);
            }
        }
        let mut tx = self.store().begin().await?;
        for i in &targets {
            if i.status == InstanceStatus::Terminated {
                sqlx::query("UPDATE instances SET deleted = TRUE, deleted_at = $1 WHERE id = $2")
                    .bind(time::to_db(time::now()))
                    .bind(&i.id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                terminate_instance_by_user(&mut tx, &i.id).await?;
            }
        }
        if instance_nums.is_none() {
            for f in &fleets {
                sqlx::query(
                    "UPDATE fleets SET status = 'TERMINATING', skip_min_processing_interval = TRUE \
                     WHERE id = $1",
                )
                .bind(&f.id)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        tracing::info!(fleets = ?names, instances = ?instance_nums, "deleting fleets");
        self.hint(PipelineKind::Instances);
        self.hint(PipelineKind::Fleets);
        Ok(Value::Null)
    }

    /// dstack's `is_fleet_in_use`: a fleet (or the selected instances) with unfinished jobs
    /// on its instances, or — with no job placed yet — an unfinished run bound to it, cannot
    /// be deleted.
    async fn check_fleet_not_in_use(
        &self,
        fleet: &FleetRow,
        instance_nums: Option<&[i64]>,
    ) -> crate::Result<()> {
        let busy: Vec<(i64,)> = sqlx::query_as(
            "SELECT DISTINCT i.instance_num FROM instances i JOIN jobs j ON j.instance_id = i.id \
             WHERE i.fleet_id = $1 AND i.deleted = FALSE AND j.status NOT IN \
             ('done', 'failed', 'terminated', 'aborted')",
        )
        .bind(&fleet.id)
        .fetch_all(self.store().reader())
        .await?;
        let selected_busy = match instance_nums {
            Some(nums) => busy.iter().any(|(n,)| nums.contains(n)),
            None => !busy.is_empty(),
        };
        let active_runs: Option<(String,)> = if instance_nums.is_none() && busy.is_empty() {
            sqlx::query_as(
                "SELECT id FROM runs WHERE fleet_id = $1 AND deleted = FALSE AND status NOT IN \
                 ('done', 'failed', 'terminated') LIMIT 1",
            )
            .bind(&fleet.id)
            .fetch_optional(self.store().reader())
            .await?
        } else {
            None
        };
        if selected_busy || active_runs.is_some() {
            return Err(client_error(match instance_nums {
                Some(nums) => format!(
                    "Failed to delete fleet {} instances {:?}. Fleet instances are in use.",
                    fleet.name, nums
                ),
                None => format!("Failed to delete fleet {}. Fleet is in use.", fleet.name),
            }));
        }
        Ok(())
    }
}

/// dstack's default idle time of fleet instances (`DEFAULT_FLEET_TERMINATION_IDLE_TIME`):
/// 3 days.
pub(crate) const DEFAULT_FLEET_TERMINATION_IDLE_TIME: i64 = 72 * 60 * 60;

/// dstack's `get_termination` for a fleet's cloud instances: (`termination_policy`,
/// `termination_idle_time` in seconds). `idle_duration` of the merged profile wins over the
/// 3-day default; a negative one (`off`) means `DONT_DESTROY` (idle time −1).
pub(crate) fn cloud_termination(spec: &FleetSpec) -> (&'static str, i64) {
    match spec.merged_profile().params.idle_duration {
        Some(d) if d < 0 => ("DONT_DESTROY", -1),
        Some(d) => ("DESTROY_AFTER_IDLE", d),
        None => ("DESTROY_AFTER_IDLE", DEFAULT_FLEET_TERMINATION_IDLE_TIME),
    }
}

/// Inserts a PENDING cloud instance `<fleet name>-<num>` into a fleet (used by the fleet
/// pipeline to keep `nodes.min`); the instance pipeline provisions it like any cloud instance.
pub(crate) async fn insert_pending_cloud_instance(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    spec: &FleetSpec,
    fleet_name: &str,
    project_id: &str,
    fleet_id: &str,
    num: i64,
    now: &str,
) -> crate::Result<String> {
    let inst = NewInstance {
        id: Uuid::new_v4().to_string(),
        name: format!("{fleet_name}-{num}"),
        num,
        status: InstanceStatus::Pending,
        offer: None,
        jpd: None,
        rci: None,
        total_blocks: blocks_of(spec.configuration.blocks),
    };
    insert_instance(tx, &inst, spec, project_id, fleet_id, now).await?;
    Ok(inst.id)
}

async fn insert_instance(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    inst: &NewInstance,
    spec: &FleetSpec,
    project_id: &str,
    fleet_id: &str,
    now: &str,
) -> crate::Result<()> {
    // SSH hosts are never terminated for idleness (dstack: DONT_DESTROY, idle time 0).
    let (policy, idle_time) = if inst.rci.is_some() {
        ("DONT_DESTROY", 0)
    } else {
        cloud_termination(spec)
    };
    sqlx::query(
        "INSERT INTO instances (id, name, instance_num, project_id, fleet_id, created_at, \
         last_processed_at, started_at, status, backend, region, price, offer, \
         job_provisioning_data, remote_connection_info, termination_policy, \
         termination_idle_time, total_blocks, busy_blocks, skip_min_processing_interval) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 0, \
         TRUE)",
    )
    .bind(&inst.id)
    .bind(&inst.name)
    .bind(inst.num)
    .bind(project_id)
    .bind(fleet_id)
    .bind(now)
    .bind(status_to_db(inst.status))
    .bind(inst.rci.as_ref().map(|_| "REMOTE"))
    .bind(inst.rci.as_ref().map(|_| "remote"))
    .bind(inst.rci.as_ref().map(|_| 0.0f64))
    .bind(&inst.offer)
    .bind(&inst.jpd)
    .bind(&inst.rci)
    .bind(policy)
    .bind(idle_time)
    .bind(inst.total_blocks)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn terminate_instance_by_user(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    id: &str,
) -> crate::Result<()> {
    sqlx::query(
        "UPDATE instances SET status = 'TERMINATING', termination_reason = 'terminated_by_user', \
         skip_min_processing_interval = TRUE WHERE id = $1 AND status <> 'TERMINATED'",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
