//! Long-running operations (`PENDING` → `RUNNING` → `DONE`): polled with `get_operation` at
//! [`OperationPolling::interval`] for at most [`OperationPolling::timeout`]. A `DONE`
//! operation with `error.errors[]` is mapped by [`operation_error`].

use std::time::{Duration, Instant};

use google_cloud_compute_v1::model::Operation;

use super::GcpCompute;
use super::errors::{map_gax_error, operation_error};
use crate::backends::error::BackendResult;

/// How operations are awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationPolling {
    /// The delay between `get_operation` calls.
    pub interval: Duration,
    /// How long an `instances.insert` is awaited before the instance is taken as created and
    /// left to `update_provisioning_data` (dstack waits 30 s: capacity errors come sooner).
    pub timeout: Duration,
}

impl Default for OperationPolling {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The outcome of waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// `DONE` without error.
    Done,
    /// Still not done when the time ran out.
    TimedOut,
}

fn status_name(op: &Operation) -> &str {
    op.status.as_ref().and_then(|s| s.name()).unwrap_or("")
}

/// `Err` for a `DONE` operation with errors.
fn check_done(op: &Operation) -> BackendResult<()> {
    let Some(err) = op.error.as_ref().filter(|e| !e.errors.is_empty()) else {
        return Ok(());
    };
    let codes: Vec<(String, String)> = err
        .errors
        .iter()
        .map(|e| {
            (
                e.code.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            )
        })
        .collect();
    Err(operation_error(&codes, op.http_error_status_code))
}

/// Waits for a zone operation (`instances.insert`, `instances.delete`).
pub async fn wait_zone_operation(
    compute: &GcpCompute,
    zone: &str,
    op: &Operation,
) -> BackendResult<Waited> {
    let started = Instant::now();
    let mut op = op.clone();
    loop {
        if status_name(&op) == "DONE" {
            check_done(&op)?;
            return Ok(Waited::Done);
        }
        if started.elapsed() >= compute.polling.timeout {
            return Ok(Waited::TimedOut);
        }
        tokio::time::sleep(compute.polling.interval).await;
        let name = op.name.clone().unwrap_or_default();
        let project = compute.config.project_id.clone();
        op = compute
            .call("zoneOperations.get", || {
                let req = compute
                    .clients
                    .instances
                    .get_operation()
                    .set_project(project.clone())
                    .set_zone(zone.to_string())
                    .set_operation(name.clone());
                async move { req.send().await.map_err(map_gax_error) }
            })
            .await?;
    }
}

/// Waits for a global operation (`firewalls.insert`).
pub async fn wait_global_operation(compute: &GcpCompute, op: &Operation) -> BackendResult<Waited> {
    let started = Instant::now();
    let mut op = op.clone();
    loop {
        if status_name(&op) == "DONE" {
            check_done(&op)?;
            return Ok(Waited::Done);
        }
        if started.elapsed() >= compute.polling.timeout {
            return Ok(Waited::TimedOut);
        }
        tokio::time::sleep(compute.polling.interval).await;
        let name = op.name.clone().unwrap_or_default();
        let project = compute.config.project_id.clone();
        op = compute
            .call("globalOperations.get", || {
                let req = compute
                    .clients
                    .firewalls
                    .get_operation()
                    .set_project(project.clone())
                    .set_operation(name.clone());
                async move { req.send().await.map_err(map_gax_error) }
            })
            .await?;
    }
}

/// `Err` for a `DONE` operation (REST JSON) with errors.
fn check_done_json(op: &serde_json::Value) -> BackendResult<()> {
    let Some(errors) = op["error"]["errors"].as_array().filter(|e| !e.is_empty()) else {
        return Ok(());
    };
    let codes: Vec<(String, String)> = errors
        .iter()
        .map(|e| {
            (
                e["code"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let http = op["httpErrorStatusCode"]
        .as_i64()
        .and_then(|c| i32::try_from(c).ok());
    Err(operation_error(&codes, http))
}

/// Waits for a region operation read over REST (`resourcePolicies.insert` / `delete`).
pub async fn wait_region_operation_rest(
    compute: &GcpCompute,
    region: &str,
    op: &serde_json::Value,
) -> BackendResult<Waited> {
    let started = Instant::now();
    let mut op = op.clone();
    loop {
        if op["status"] == "DONE" {
            check_done_json(&op)?;
            return Ok(Waited::Done);
        }
        if started.elapsed() >= compute.polling.timeout {
            return Ok(Waited::TimedOut);
        }
        let Some(name) = op["name"].as_str().map(str::to_string) else {
            return Ok(Waited::TimedOut);
        };
        tokio::time::sleep(compute.polling.interval).await;
        let url = compute.clients.rest.compute_url(&format!(
            "projects/{}/regions/{region}/operations/{name}",
            compute.config.project_id
        ));
        op = compute
            .rest(
                "regionOperations.get",
                reqwest::Method::GET,
                &url,
                &[],
                None,
            )
            .await?;
    }
}
