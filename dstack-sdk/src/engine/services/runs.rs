//! Runs (dstack-api.md §2.8): `get_plan`, `apply` (submit), `get`, `list`, `stop`, `delete`.
//!
//! A run row keeps its spec as JSON; each job submission is one `jobs` row with its
//! [`JobSpec`]. Responses are assembled into dstack's [`Run`] shape with the derived fields
//! (status messages, errors, cost) filled in.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::Error;
use crate::engine::auth::Ctx;
use crate::engine::fleet_choice::PlanOffers;
use crate::engine::{Engine, time};
use crate::models::configurations::RunConfiguration;
use crate::models::jobs::{Job, JobProvisioningData, JobSpec, JobStatus, JobSubmission};
use crate::models::resources::Requirements;
use crate::models::runs::{
    ApplyRunPlanRequest, DeleteRunsRequest, GetRunPlanRequest, GetRunRequest, JobPlan,
    ListRunsRequest, Run, RunPlan, RunSpec, RunStatus, RunTerminationReason, StopRunsRequest,
};
use crate::spec::resources::job_requirements;

use super::{parse_body, to_json};

/// The default image (`dstackai/base:<version>-base-ubuntu<ubuntu>`).
const DEFAULT_IMAGE: &str = "dstackai/base:0.16-base-ubuntu24.04";
/// Where the repo is checked out when the spec does not say.
const LEGACY_REPO_DIR: &str = "/workflow";

/// A status as stored: its wire name.
pub(crate) fn enum_to_db<T: serde::Serialize>(v: T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// A stored status back to its enum.
pub(crate) fn enum_from_db<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(Value::String(s.to_string())).ok()
}

/// One `runs` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct RunRow {
    pub(crate) id: String,
    pub(crate) project_id: String,
    pub(crate) user_id: String,
    pub(crate) run_name: String,
    pub(crate) submitted_at: String,
    pub(crate) last_processed_at: String,
    pub(crate) status: String,
    pub(crate) termination_reason: Option<String>,
    pub(crate) run_spec: String,
    pub(crate) deployment_num: i64,
    pub(crate) deleted: bool,
    /// Bumped by triggers on every change to the run's jobs (migration 0007).
    pub(crate) jobs_rev: i64,
}

/// `SELECT <run columns> FROM runs WHERE <cond>`.
macro_rules! select_runs {
    ($cond:literal) => {
        concat!(
            "SELECT id, project_id, user_id, run_name, submitted_at, last_processed_at, status, \
             termination_reason, run_spec, deployment_num, deleted, jobs_rev FROM runs WHERE ",
            $cond
        )
    };
}

/// One `jobs` row (one submission).
// Some columns are read only by the job pipeline (features `agent` + `http`).
#[cfg_attr(not(all(feature = "agent", feature = "http")), allow(dead_code))]
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) run_id: String,
    pub(crate) job_num: i64,
    pub(crate) replica_num: i64,
    pub(crate) submission_num: i64,
    pub(crate) deployment_num: i64,
    pub(crate) submitted_at: String,
    pub(crate) last_processed_at: String,
    pub(crate) finished_at: Option<String>,
    pub(crate) status: String,
    pub(crate) termination_reason: Option<String>,
    pub(crate) termination_reason_message: Option<String>,
    pub(crate) exit_status: Option<i64>,
    pub(crate) job_spec_data: String,
    pub(crate) job_provisioning_data: Option<String>,
    pub(crate) job_runtime_data: Option<String>,
    pub(crate) instance_id: Option<String>,
}

/// `SELECT <job columns> FROM jobs WHERE <cond>`.
macro_rules! select_jobs {
    ($cond:literal) => {
        concat!(
            "SELECT id, run_id, job_num, replica_num, submission_num, deployment_num, \
             submitted_at, last_processed_at, finished_at, status, termination_reason, \
             termination_reason_message, exit_status, job_spec_data, job_provisioning_data, \
             job_runtime_data, instance_id FROM jobs WHERE ",
            $cond
        )
    };
}
pub(crate) use select_jobs;

impl JobRow {
    /// The job status.
    pub(crate) fn status(&self) -> JobStatus {
        enum_from_db(&self.status).unwrap_or(JobStatus::Failed)
    }

    /// The job spec.
    pub(crate) fn spec(&self) -> crate::Result<JobSpec> {
        serde_json::from_str(&self.job_spec_data)
            .map_err(|e| Error::new(crate::ErrorKind::Internal, format!("bad job spec: {e}")))
    }

    fn submission(&self) -> JobSubmission {
        let ts = |s: &str| time::from_db(s).unwrap_or_default();
        let jpd: Option<JobProvisioningData> = self
            .job_provisioning_data
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        JobSubmission {
            id: Uuid::parse_str(&self.id).unwrap_or_default(),
            submission_num: self.submission_num,
            deployment_num: self.deployment_num,
            submitted_at: ts(&self.submitted_at),
            last_processed_at: ts(&self.last_processed_at),
            finished_at: self.finished_at.as_deref().and_then(time::from_db),
            inactivity_secs: None,
            status: self.status(),
            status_message: String::new(),
            termination_reason: self.termination_reason.clone(),
            termination_reason_message: self.termination_reason_message.clone(),
            exit_status: self.exit_status,
            job_provisioning_data: jpd.map(JobProvisioningData::for_api),
            job_runtime_data: self
                .job_runtime_data
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            error: None,
            probes: Vec::new(),
            image_pull_progress: None,
        }
    }
}

fn client_error(msg: impl Into<String>) -> Error {
    Error::bad_request(msg)
}

/// The shell command list of a configuration (dstack's `JobConfigurator._commands`, without
/// the base-image preamble, which the process executor does not need).
fn job_commands(conf: &RunConfiguration, run_name: &str) -> crate::Result<Vec<String>> {
    let common = conf.common();
    let shell_commands: Vec<String> = match conf {
        RunConfiguration::Task(t) => t.commands.clone(),
        RunConfiguration::Service(s) => s.commands.clone(),
        RunConfiguration::DevEnvironment(d) => dev_environment_commands(d, conf, run_name),
    };
    let mut out = Vec::new();
    if let Some(ep) = &common.entrypoint {
        out.extend(ep.split_whitespace().map(str::to_string));
        out.extend(shell_commands);
    } else if !shell_commands.is_empty() {
        let shell = match &common.shell {
            Some(s) if s.starts_with('/') => s.clone(),
            Some(s) => format!("/bin/{s}"),
            None if common.image.is_none() => "/bin/bash".into(),
            None => "/bin/sh".into(),
        };
        let joined: Vec<String> = shell_commands
            .iter()
            .map(|c| {
                let c = c.trim();
                if c.ends_with('&') {
                    format!("{{ {c} }}")
                } else {
                    c.to_string()
                }
            })
            .collect();
        out.extend([shell, "-i".into(), "-c".into(), joined.join(" && ")]);
    }
    if out.is_empty() {
        return Err(client_error(
            "Could not determine what command to run. \
             Please specify either `commands` or `entrypoint` in your run configuration",
        ));
    }
    Ok(out)
}

/// dstack's `DevEnvironmentJobConfigurator._shell_commands`: IDE server install (VS Code
/// with a pinned `version` only), ipykernel, setup, init, connection hints, then idle.
fn dev_environment_commands(
    d: &crate::models::configurations::DevEnvironmentConfiguration,
    conf: &RunConfiguration,
    run_name: &str,
) -> Vec<String> {
    use crate::models::configurations::Ide;
    let mut out = Vec::new();
    if let (Some(Ide::Vscode), Some(version)) = (d.ide, d.version.as_deref()) {
        let target = format!("~/.vscode-server/bin/\"{version}\"");
        out.extend([
            r#"if [ $(uname -m) = "aarch64" ]; then arch="arm64"; else arch="x64"; fi"#.to_string(),
            "mkdir -p /tmp".to_string(),
            format!(
                "wget -q --show-progress \"https://update.code.visualstudio.com/commit:{version}/server-linux-$arch/stable\" -O \"/tmp/vscode-server-linux-$arch.tar.gz\""
            ),
            format!("mkdir -vp {target}"),
            format!(
                "tar --no-same-owner -xz --strip-components=1 -C {target} -f \"/tmp/vscode-server-linux-$arch.tar.gz\""
            ),
            "rm \"/tmp/vscode-server-linux-$arch.tar.gz\"".to_string(),
            format!(
                "PATH=\"$PATH\":{target}/bin code-server --install-extension \"ms-python.python\" --install-extension \"ms-toolsai.jupyter\""
            ),
        ]);
    }
    out.push(
        "(echo 'uv pip install ipykernel...' && uv pip install -q --no-cache-dir ipykernel 2> /dev/null) || \
         (echo 'pip install ipykernel...' && pip install -q --no-cache-dir ipykernel 2> /dev/null) || \
         echo 'no uv or pip found, ipykernel was not installed'"
            .to_string(),
    );
    out.extend(conf.common().setup.iter().cloned());
    out.push("echo".into());
    out.extend(d.init.iter().cloned());
    if let Some(ide) = d.ide {
        let (name, url) = match ide {
            Ide::Vscode => (
                "VS Code",
                format!("vscode://vscode-remote/ssh-remote+{run_name}$DSTACK_WORKING_DIR"),
            ),
            Ide::Cursor => (
                "Cursor",
                format!("cursor://vscode-remote/ssh-remote+{run_name}$DSTACK_WORKING_DIR"),
            ),
            Ide::Windsurf => (
                "Windsurf",
                format!("windsurf://vscode-remote/ssh-remote+{run_name}$DSTACK_WORKING_DIR"),
            ),
            Ide::Zed => ("Zed", format!("zed://ssh/{run_name}$DSTACK_WORKING_DIR")),
        };
        out.extend([
            format!("echo 'To open in {name}, use link below:'"),
            "echo".into(),
            format!("echo \"  {url}\""),
            "echo".into(),
        ]);
    }
    out.extend([
        format!("echo 'To connect via SSH, use: `ssh {run_name}`'"),
        "echo".into(),
        "echo -n 'To exit, press Ctrl+C.'".into(),
        "tail -f /dev/null".into(),
    ]);
    out
}

/// dstack's `_app_specs`: one app per configured port outside the reserved 10000–10999
/// range (services publish their port through the proxy instead).
fn app_specs(conf: &RunConfiguration) -> Vec<Value> {
    let ports = match conf {
        RunConfiguration::Task(t) => &t.ports,
        RunConfiguration::DevEnvironment(d) => &d.ports,
        RunConfiguration::Service(_) => return Vec::new(),
    };
    ports
        .iter()
        .filter(|p| !(10000..=10999).contains(&p.container_port))
        .enumerate()
        .map(|(i, p)| {
            serde_json::json!({
                "port": p.container_port,
                "map_to_port": p.local_port,
                "app_name": format!("app_{i}"),
                "url_path": null,
                "url_query_params": null,
            })
        })
        .collect()
}

/// The job specs of replica 0 (one per node for multi-node tasks).
pub(crate) fn job_specs(run_spec: &RunSpec) -> crate::Result<Vec<JobSpec>> {
    let conf = &run_spec.configuration;
    let common = conf.common();
    let profile = run_spec.merged_profile();
    let nodes = match conf {
        RunConfiguration::Task(t) => t.nodes.unwrap_or(1).max(1),
        _ => 1,
    };
    let run_name = run_spec.run_name.clone().unwrap_or_default();
    let commands = job_commands(conf, &run_name)?;
    let image = common
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let env: indexmap::IndexMap<String, String> = common
        .env
        .0
        .iter()
        .filter_map(|(k, v)| match v {
            crate::models::common::EnvValue::Value(v) => Some((k.clone(), v.clone())),
            crate::models::common::EnvValue::Sentinel(_) => None,
        })
        .collect();
    let requirements = job_requirements(
        &common.resources,
        common.image.as_deref(),
        &[],
        &profile.params,
        profile.params.reservation.as_deref(),
        nodes,
    );
    let repo_dir = common
        .repos
        .first()
        .map(|r| r.path.clone())
        .or_else(|| run_spec.repo_dir.clone())
        .unwrap_or_else(|| LEGACY_REPO_DIR.to_string());
    let working_dir = common.working_dir.clone().map(|w| {
        if w.starts_with('/') {
            w
        } else {
            format!("{LEGACY_REPO_DIR}/{w}")
        }
    });
    let mut spec = serde_json::json!({
        "job_num": 0,
        "job_name": "",
        "commands": commands,
        "env": env,
        "home_dir": common.home_dir,
        "image_name": image,
        "privileged": common.privileged,
        "single_branch": common.single_branch,
        "requirements": requirements,
        "working_dir": working_dir,
        "repo_data": run_spec.repo_data,
        "repo_code_hash": run_spec.repo_code_hash,
        "repo_dir": repo_dir,
        "file_archives": run_spec.file_archives,
        "jobs_per_replica": nodes,
        "app_specs": app_specs(conf),
    });
    if let Some(d) = profile.params.max_duration.as_ref() {
        spec["max_duration"] = serde_json::to_value(d).unwrap_or(Value::Null);
        if !spec["max_duration"].is_i64() {
            spec["max_duration"] = Value::Null;
        }
    }
    // dstack's `_stop_duration`: default 5 minutes, `off` means none.
    spec["stop_duration"] = match profile.params.stop_duration.as_ref() {
        None => Value::from(crate::models::profiles::DEFAULT_STOP_DURATION),
        Some(crate::models::common::OffableDuration::Off) => Value::Null,
        Some(crate::models::common::OffableDuration::Seconds(n)) => Value::from(*n),
    };
    // dstack's `get_retry`: `true` = every event for an hour; a policy fills its gaps.
    spec["retry"] = match profile.params.retry.as_ref() {
        None | Some(crate::models::profiles::Retry::Bool(false)) => Value::Null,
        Some(crate::models::profiles::Retry::Bool(true)) => serde_json::json!({
            "on_events": ["no-capacity", "interruption", "error"],
            "duration": crate::models::profiles::DEFAULT_RETRY_DURATION,
        }),
        Some(crate::models::profiles::Retry::Policy(p)) => serde_json::json!({
            "on_events": p.on_events.clone().unwrap_or_else(|| vec![
                crate::models::profiles::RetryEvent::NoCapacity,
                crate::models::profiles::RetryEvent::Interruption,
                crate::models::profiles::RetryEvent::Error,
            ]),
            "duration": p.duration.unwrap_or(crate::models::profiles::DEFAULT_RETRY_DURATION),
        }),
    };
    let base: JobSpec = serde_json::from_value(spec)
        .map_err(|e| Error::new(crate::ErrorKind::Internal, format!("job spec: {e}")))?;
    Ok((0..nodes)
        .map(|job_num| {
            let mut s = base.clone();
            s.job_num = job_num;
            s.job_name = format!("{run_name}-{job_num}-0");
            s
        })
        .collect())
}

/// The service endpoint of a service run: the in-server proxy path (no gateway).
fn service_spec(
    conf: &RunConfiguration,
    project: &str,
    run_name: &str,
) -> Option<crate::models::runs::ServiceSpec> {
    matches!(conf, RunConfiguration::Service(_)).then(|| crate::models::runs::ServiceSpec {
        url: format!("/proxy/services/{project}/{run_name}/"),
        model: None,
        options: serde_json::Map::new(),
    })
}

/// dstack's default: a run without `ssh_key_pub` gets its user's public key (the CLI attaches
/// with the matching private key from `users/get_my_user`).
fn fill_ssh_key_pub(spec: &mut RunSpec, user: &super::users::UserRow) -> crate::Result<()> {
    if spec.ssh_key_pub.is_none() {
        match user.ssh_public_key.as_deref().filter(|k| !k.is_empty()) {
            Some(k) => spec.ssh_key_pub = Some(k.to_string()),
            None => {
                return Err(client_error(
                    "ssh_key_pub must be set if the user has no ssh_public_key",
                ));
            }
        }
    }
    Ok(())
}

const ADJECTIVES: &[&str] = &[
    "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lucky",
    "mighty", "nice", "proud", "quick", "shiny", "silly", "smart", "swift", "tender", "witty",
];
const NOUNS: &[&str] = &[
    "ant", "bat", "cat", "dog", "eel", "fox", "goat", "hawk", "ibis", "jay", "koala", "lion",
    "mole", "newt", "owl", "panda", "quail", "rat", "seal", "tiger",
];

impl Engine {
    async fn run_row_by_name(&self, project_id: &str, name: &str) -> crate::Result<Option<RunRow>> {
        Ok(sqlx::query_as(select_runs!(
            "project_id = $1 AND run_name = $2 AND deleted = FALSE ORDER BY submitted_at DESC"
        ))
        .bind(project_id)
        .bind(name)
        .fetch_optional(self.store().reader())
        .await?)
    }

    /// Assembles the API model of a run.
    pub(crate) async fn run_model(
        &self,
        row: &RunRow,
        project_name: &str,
        submissions_limit: Option<usize>,
    ) -> crate::Result<Run> {
        let jobs: Vec<JobRow> = sqlx::query_as(select_jobs!(
            "run_id = $1 ORDER BY replica_num, job_num, submission_num"
        ))
        .bind(&row.id)
        .fetch_all(self.store().reader())
        .await?;
        let user = self
            .user_by_id(&row.user_id)
            .await?
            .map(|u| u.name)
            .unwrap_or_default();
        run_model_from(row, project_name, submissions_limit, jobs, user)
    }

    /// The API models of a page of runs: their jobs in one query, their users once each.
    async fn run_models(
        &self,
        rows: &[(RunRow, String)],
        submissions_limit: Option<usize>,
    ) -> crate::Result<Vec<Run>> {
        let ids: Vec<&str> = rows.iter().map(|(r, _)| r.id.as_str()).collect();
        let ids = serde_json::to_string(&ids)
            .map_err(|e| Error::new(crate::ErrorKind::Internal, e.to_string()))?;
        let jobs: Vec<JobRow> = sqlx::query_as(select_jobs!(
            "run_id IN (SELECT value FROM json_each($1)) \
             ORDER BY run_id, replica_num, job_num, submission_num"
        ))
        .bind(ids)
        .fetch_all(self.store().reader())
        .await?;
        let mut by_run: std::collections::HashMap<String, Vec<JobRow>> =
            std::collections::HashMap::new();
        for j in jobs {
            by_run.entry(j.run_id.clone()).or_default().push(j);
        }
        let mut users: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for (row, pname) in rows {
            if !users.contains_key(&row.user_id) {
                let name = self
                    .user_by_id(&row.user_id)
                    .await?
                    .map(|u| u.name)
                    .unwrap_or_default();
                users.insert(row.user_id.clone(), name);
            }
            let user = users.get(&row.user_id).cloned().unwrap_or_default();
            let jobs = by_run.remove(&row.id).unwrap_or_default();
            out.push(run_model_from(row, pname, submissions_limit, jobs, user)?);
        }
        Ok(out)
    }
}

/// Builds a run's API model from its row, its job rows (ordered by replica, job,
/// submission) and its user's name.
fn run_model_from(
    row: &RunRow,
    project_name: &str,
    submissions_limit: Option<usize>,
    jobs: Vec<JobRow>,
    user: String,
) -> crate::Result<Run> {
    {
        let run_spec: RunSpec = serde_json::from_str(&row.run_spec)
            .map_err(|e| Error::new(crate::ErrorKind::Internal, format!("bad run spec: {e}")))?;
        let mut grouped: BTreeMap<(i64, i64), Vec<JobRow>> = BTreeMap::new();
        for j in jobs {
            grouped
                .entry((j.replica_num, j.job_num))
                .or_default()
                .push(j);
        }
        let mut out_jobs = Vec::new();
        for (_, subs) in grouped {
            let Some(last) = subs.last() else { continue };
            let mut job_spec = last.spec()?;
            job_spec.strip_sensitive();
            let mut job_submissions: Vec<JobSubmission> =
                subs.iter().map(JobRow::submission).collect();
            if let Some(limit) = submissions_limit {
                let skip = job_submissions.len().saturating_sub(limit);
                job_submissions.drain(..skip);
            }
            out_jobs.push(Job {
                job_spec,
                job_submissions,
                job_connection_info: None,
            });
        }
        let ts = |s: &str| time::from_db(s).unwrap_or_default();
        let run_spec_for_service = run_spec.configuration.clone();
        let mut run = Run {
            id: Uuid::parse_str(&row.id).unwrap_or_default(),
            project_name: project_name.to_string(),
            user,
            fleet: None,
            submitted_at: ts(&row.submitted_at),
            last_processed_at: ts(&row.last_processed_at),
            status: enum_from_db(&row.status).unwrap_or(RunStatus::Failed),
            status_message: String::new(),
            termination_reason: row.termination_reason.clone(),
            run_spec,
            jobs: out_jobs,
            latest_job_submission: None,
            cost: 0.0,
            service: service_spec(&run_spec_for_service, project_name, &row.run_name),
            deployment_num: row.deployment_num,
            error: None,
            deleted: Some(row.deleted),
            next_triggered_at: None,
        };
        run.fill_derived_fields(time::now());
        Ok(run)
    }
}

impl Engine {
    pub(crate) async fn runs_get_plan(
        &self,
        ctx: &Ctx,
        body: Option<Value>,
    ) -> crate::Result<Value> {
        let req: GetRunPlanRequest = parse_body(body)?;
        let project = ctx.project()?;
        let user = ctx.user()?;
        let mut effective = req.run_spec.clone();
        fill_ssh_key_pub(&mut effective, user)?;
        let current = match &effective.run_name {
            Some(name) => self.run_row_by_name(&project.id, name).await?,
            None => None,
        };
        if effective.run_name.is_none() {
            effective.run_name = Some("dry-run".into());
        }
        let specs = job_specs(&effective)?;
        let max_offers = req.max_offers.unwrap_or(50) as usize;
        let mut job_plans = Vec::new();
        // Jobs of one replica or node group share their plan (dstack plans each group from
        // its first job): the offers are computed once per distinct requirement.
        let mut last: Option<(Requirements, i64, PlanOffers)> = None;
        for mut spec in specs {
            let planned = match &last {
                Some((r, n, p)) if *r == spec.requirements && *n == spec.jobs_per_replica => {
                    p.clone()
                }
                _ => {
                    let p = self
                        .job_plan_offers(
                            &project.id,
                            &effective,
                            &spec,
                            req.for_offers_only,
                            max_offers,
                            req.reverse_offers,
                        )
                        .await?;
                    last = Some((spec.requirements.clone(), spec.jobs_per_replica, p.clone()));
                    p
                }
            };
            let PlanOffers {
                offers,
                total,
                max_price,
            } = planned;
            spec.strip_sensitive();
            job_plans.push(JobPlan {
                job_spec: spec,
                offers,
                total_offers: total as i64,
                max_price,
            });
        }
        if req.run_spec.run_name.is_none() {
            effective.run_name = None;
        }
        let current_resource = match &current {
            Some(r) => Some(self.run_model(r, &project.name, None).await?),
            None => None,
        };
        let plan = RunPlan {
            project_name: project.name.clone(),
            user: user.name.clone(),
            run_spec: req.run_spec,
            effective_run_spec: Some(effective),
            job_plans,
            current_resource,
            action: crate::models::common::ApplyAction::Create,
        };
        to_json(&plan)
    }

    async fn generate_run_name(&self, project_id: &str) -> crate::Result<String> {
        let r = Uuid::new_v4().as_u128();
        let base = format!(
            "{}-{}",
            ADJECTIVES[(r % ADJECTIVES.len() as u128) as usize],
            NOUNS[((r >> 32) % NOUNS.len() as u128) as usize]
        );
        let mut idx = 1;
        loop {
            let name = format!("{base}-{idx}");
            if self.run_row_by_name(project_id, &name).await?.is_none() {
                return Ok(name);
            }
            idx += 1;
        }
    }

    pub(crate) async fn runs_apply(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: ApplyRunPlanRequest = parse_body(body)?;
        let project = ctx.project()?;
        let user = ctx.user()?;
        let mut run_spec = req.plan.run_spec;
        fill_ssh_key_pub(&mut run_spec, user)?;
        if let Some(name) = &run_spec.run_name {
            if !super::valid_name(name, 41) || name.contains('_') {
                return Err(Error::validation(
                    &["body", "plan", "run_spec", "run_name"],
                    "Resource name should match regex '^[a-z][a-z0-9-]{1,40}$'",
                ));
            }
            if let Some(existing) = self.run_row_by_name(&project.id, name).await? {
                let status: RunStatus = enum_from_db(&existing.status).unwrap_or(RunStatus::Done);
                if !status.is_finished() {
                    return Err(client_error(
                        "Cannot override active run. Stop the run first.",
                    ));
                }
            }
        } else {
            run_spec.run_name = Some(self.generate_run_name(&project.id).await?);
        }
        let run_name = run_spec.run_name.clone().unwrap_or_default();
        let repo_name = run_spec.repo_id.clone().unwrap_or_else(|| "none".into());
        let repo_id = self.repo_row_id(&project.id, &repo_name).await?;
        if repo_id.is_none() && repo_name != "none" {
            return Err(client_error(format!("Repo {repo_name} does not exist")));
        }
        let specs = job_specs(&run_spec)?;
        let now = time::to_db(time::now());
        let run_id = Uuid::new_v4().to_string();
        let spec_json = serde_json::to_string(&run_spec)
            .map_err(|e| Error::new(crate::ErrorKind::Internal, e.to_string()))?;
        let mut tx = self.store().begin().await?;
        // A finished run of the same name is replaced (dstack deletes it first).
        sqlx::query("UPDATE runs SET deleted = TRUE WHERE project_id = $1 AND run_name = $2")
            .bind(&project.id)
            .bind(&run_name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO runs (id, project_id, repo_id, user_id, run_name, submitted_at, \
             last_processed_at, status, run_spec, priority) VALUES ($1,$2,$3,$4,$5,$6,$6,$7,$8,$9)",
        )
        .bind(&run_id)
        .bind(&project.id)
        .bind(&repo_id)
        .bind(&user.id)
        .bind(&run_name)
        .bind(&now)
        .bind(enum_to_db(RunStatus::Submitted))
        .bind(spec_json)
        .bind(run_spec.configuration.common().priority.unwrap_or(0))
        .execute(&mut *tx)
        .await?;
        for spec in &specs {
            let data = serde_json::to_string(spec)
                .map_err(|e| Error::new(crate::ErrorKind::Internal, e.to_string()))?;
            sqlx::query(
                "INSERT INTO jobs (id, project_id, run_id, run_name, job_num, job_name, replica_num, \
                 submission_num, submitted_at, last_processed_at, status, job_spec_data) \
                 VALUES ($1,$2,$3,$4,$5,$6,$7,0,$8,$8,$9,$10)",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(&project.id)
            .bind(&run_id)
            .bind(&run_name)
            .bind(spec.job_num)
            .bind(&spec.job_name)
            .bind(spec.replica_num)
            .bind(&now)
            .bind(enum_to_db(JobStatus::Submitted))
            .bind(data)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        tracing::info!(project = %project.name, run = %run_name, jobs = specs.len(), "run submitted");
        self.hint(crate::engine::pipelines::PipelineKind::Jobs);
        self.hint(crate::engine::pipelines::PipelineKind::Runs);
        let row = self
            .run_row_by_name(&project.id, &run_name)
            .await?
            .ok_or_else(Error::not_found)?;
        to_json(&self.run_model(&row, &project.name, None).await?)
    }

    pub(crate) async fn runs_get(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: GetRunRequest = parse_body(body)?;
        let project = ctx.project()?;
        let row: Option<RunRow> = match (&req.id, &req.run_name) {
            (Some(id), _) => {
                sqlx::query_as(select_runs!("project_id = $1 AND id = $2"))
                    .bind(&project.id)
                    .bind(id.to_string())
                    .fetch_optional(self.store().reader())
                    .await?
            }
            (None, Some(name)) => self.run_row_by_name(&project.id, name).await?,
            (None, None) => return Err(client_error("run_name or id must be specified")),
        };
        let row = row.ok_or_else(Error::not_found)?;
        to_json(&self.run_model(&row, &project.name, None).await?)
    }

    pub(crate) async fn runs_list(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Vec<u8>> {
        let req: ListRunsRequest = parse_body(body)?;
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
        let names: std::collections::HashMap<String, String> = projects.into_iter().collect();
        let user_id = match &req.username {
            Some(u) => match self.user_by_name(u).await? {
                Some(user) => Some(user.id),
                None => return Ok(b"[]".to_vec()),
            },
            None => None,
        };
        let pids: Vec<&String> = names.keys().collect();
        let pids = serde_json::to_string(&pids)
            .map_err(|e| Error::new(crate::ErrorKind::Internal, e.to_string()))?;
        // Keyset pagination in SQL, with dstack's order: newest first with ids ascending
        // among equal times (oldest first with ids descending when `ascending`). The unary `+`
        // keeps SQLite off the project index, so it walks `runs_list_order` and stops at the
        // limit instead of sorting every run of the project with its spec.
        let sql = if req.ascending {
            select_runs!(
                "deleted = FALSE AND +project_id IN (SELECT value FROM json_each($1)) \
                 AND ($2 = FALSE OR status NOT IN ('done', 'failed', 'terminated')) \
                 AND ($3 IS NULL OR user_id = $3) \
                 AND ($4 IS NULL OR submitted_at > $4 \
                      OR (submitted_at = $4 AND $5 IS NOT NULL AND id < $5)) \
                 ORDER BY submitted_at ASC, id DESC LIMIT $6"
            )
        } else {
            select_runs!(
                "deleted = FALSE AND +project_id IN (SELECT value FROM json_each($1)) \
                 AND ($2 = FALSE OR status NOT IN ('done', 'failed', 'terminated')) \
                 AND ($3 IS NULL OR user_id = $3) \
                 AND ($4 IS NULL OR submitted_at < $4 \
                      OR (submitted_at = $4 AND $5 IS NOT NULL AND id > $5)) \
                 ORDER BY submitted_at DESC, id ASC LIMIT $6"
            )
        };
        let rows: Vec<RunRow> = sqlx::query_as(sql)
            .bind(pids)
            .bind(req.only_active)
            .bind(user_id)
            .bind(req.prev_submitted_at.map(time::to_db))
            .bind(req.prev_run_id.map(|i| i.to_string()))
            .bind(i64::from(req.limit))
            .fetch_all(self.store().reader())
            .await?;
        let limit = req.job_submissions_limit.map(|l| l as usize).or(Some(10));
        self.runs_page_json(rows, &names, limit, req.include_jobs)
            .await
    }

    /// The JSON array of a page of runs: runs whose rows are unchanged since they were last
    /// built come from [`RunJsonCache`], the rest are built (and cached unless their cost
    /// moves with the clock).
    ///
    /// [`RunJsonCache`]: crate::engine::run_json_cache::RunJsonCache
    async fn runs_page_json(
        &self,
        rows: Vec<RunRow>,
        project_names: &std::collections::HashMap<String, String>,
        submissions_limit: Option<usize>,
        include_jobs: bool,
    ) -> crate::Result<Vec<u8>> {
        use crate::engine::run_json_cache::RunJsonKey;
        use std::hash::{Hash, Hasher};
        let internal = |e: serde_json::Error| Error::new(crate::ErrorKind::Internal, e.to_string());
        let mut slots: Vec<Option<Arc<[u8]>>> = Vec::with_capacity(rows.len());
        let mut misses: Vec<(usize, RunRow, String, (RunJsonKey, String))> = Vec::new();
        for (i, row) in rows.into_iter().enumerate() {
            // Everything the model is built from: the run row (its spec by hash) and, through
            // `jobs_rev`, every change to its jobs.
            let mut spec_hash = std::collections::hash_map::DefaultHasher::new();
            row.run_spec.hash(&mut spec_hash);
            let key = RunJsonKey {
                run_id: row.id.clone(),
                submissions_limit,
                include_jobs,
            };
            let fingerprint = format!(
                "{}|{}|{}|{}|{}|{}|{:x}",
                row.last_processed_at,
                row.status,
                row.deleted,
                row.deployment_num,
                row.termination_reason.as_deref().unwrap_or_default(),
                row.jobs_rev,
                spec_hash.finish()
            );
            let hit = self.inner.run_json.get(&key, &fingerprint);
            if hit.is_none() {
                let pname = project_names
                    .get(&row.project_id)
                    .cloned()
                    .unwrap_or_default();
                misses.push((i, row, pname, (key, fingerprint)));
            }
            slots.push(hit);
        }
        if !misses.is_empty() {
            let page: Vec<(RunRow, String)> = misses
                .iter()
                .map(|(_, r, p, _)| (r.clone(), p.clone()))
                .collect();
            let built = self.run_models(&page, submissions_limit).await?;
            for ((i, _, _, (key, fingerprint)), mut run) in misses.into_iter().zip(built) {
                // A running job's cost grows with the clock: such a run is rebuilt each time.
                let clock_dependent = run
                    .jobs
                    .iter()
                    .flat_map(|j| &j.job_submissions)
                    .any(|s| s.finished_at.is_none() && s.job_provisioning_data.is_some());
                if !include_jobs {
                    run.jobs.clear();
                }
                let json: Arc<[u8]> = Arc::from(serde_json::to_vec(&run).map_err(internal)?);
                if !clock_dependent && self.inner.run_json.enabled() {
                    self.inner.run_json.put(key, fingerprint, json.clone());
                }
                slots[i] = Some(json);
            }
        }
        let total: usize = slots.iter().flatten().map(|j| j.len() + 1).sum();
        let mut out = Vec::with_capacity(total + 2);
        out.push(b'[');
        for (n, json) in slots.iter().flatten().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(json);
        }
        out.push(b']');
        Ok(out)
    }

    pub(crate) async fn runs_stop(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: StopRunsRequest = parse_body(body)?;
        let project = ctx.project()?;
        let reason = if req.abort {
            RunTerminationReason::AbortedByUser
        } else {
            RunTerminationReason::StoppedByUser
        };
        let now = time::to_db(time::now());
        let mut tx = self.store().begin().await?;
        for name in &req.runs_names {
            sqlx::query(
                "UPDATE runs SET status = $1, termination_reason = $2, \
                 skip_min_processing_interval = TRUE, last_processed_at = $3 \
                 WHERE project_id = $4 AND run_name = $5 AND deleted = FALSE \
                 AND status NOT IN ('terminated', 'failed', 'done', 'terminating')",
            )
            .bind(enum_to_db(RunStatus::Terminating))
            .bind(reason.as_str())
            .bind(&now)
            .bind(&project.id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.hint(crate::engine::pipelines::PipelineKind::Runs);
        Ok(Value::Null)
    }

    pub(crate) async fn runs_delete(&self, ctx: &Ctx, body: Option<Value>) -> crate::Result<Value> {
        let req: DeleteRunsRequest = parse_body(body)?;
        let project = ctx.project()?;
        let mut active = Vec::new();
        let mut ids = Vec::new();
        for name in &req.runs_names {
            if let Some(r) = self.run_row_by_name(&project.id, name).await? {
                let st: RunStatus = enum_from_db(&r.status).unwrap_or(RunStatus::Done);
                if st.is_finished() {
                    ids.push(r.id);
                } else {
                    active.push(format!("'{}'", r.run_name));
                }
            }
        }
        if !active.is_empty() {
            return Err(client_error(format!(
                "Cannot delete active runs: [{}]",
                active.join(", ")
            )));
        }
        let mut tx = self.store().begin().await?;
        for id in ids {
            sqlx::query("UPDATE runs SET deleted = TRUE WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Value::Null)
    }
}
