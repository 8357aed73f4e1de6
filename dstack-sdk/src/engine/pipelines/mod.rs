//! Lease-based background pipelines (dstack-api.md §5.1).
//!
//! Each pipeline (one per entity kind) runs three parts inside one supervising task:
//!
//! * a **fetcher** that claims due rows by writing a lease (`lock_token`, `lock_expires_at`,
//!   `lock_owner`) in one statement, then hands each claimed row to a worker. API handlers
//!   "hint" it to fetch at once; empty fetches back off 0.5 → 1 → 2 → 5 s with jitter;
//! * a **heartbeater** that extends the leases of in-flight rows (`WHERE id = $1 AND
//!   lock_token = $2`) and forgets rows whose token changed;
//! * at most `workers` **workers** doing the slow work outside transactions and writing back
//!   only while their token still holds (the final write clears the lease).
//!
//! Nothing that matters lives only in memory: a restarted engine finds the rows a dead process
//! had leased claimable again once their `lock_expires_at` has passed.

/// Implements [`Pipeline::claim`] and [`Pipeline::heartbeat`] for a table: `$table` is the
/// table name and `$cond` the SQL filter of rows this pipeline processes. The calling module
/// provides `MIN_INTERVAL` (the minimum time between two ticks of one row) and imports
/// `Engine`, `Lease` and `db_before`; or, as a third argument, a closure `|&Engine| -> Duration`
/// giving that interval.
macro_rules! lease_impl {
    ($table:literal, $cond:literal) => {
        lease_impl!($table, $cond, |_engine| MIN_INTERVAL);
    };
    // `$interval` maps the engine to the minimum time between two ticks of one row.
    ($table:literal, $cond:literal, $interval:expr) => {
        async fn claim(engine: &Engine, limit: i64, lease: &Lease) -> crate::Result<Vec<String>> {
            let min_interval: fn(&Engine) -> std::time::Duration = $interval;
            let mut tx = engine.store().begin().await?;
            let rows: Vec<(String,)> = sqlx::query_as(concat!(
                "UPDATE ",
                $table,
                " SET lock_token = $1, lock_expires_at = $2, lock_owner = $3, \
                 skip_min_processing_interval = FALSE \
                 WHERE id IN (SELECT id FROM ",
                $table,
                " WHERE ",
                $cond,
                " \
                   AND (lock_expires_at IS NULL OR lock_expires_at < $4) \
                   AND (lock_owner IS NULL OR lock_owner = $3) \
                   AND (skip_min_processing_interval = TRUE OR last_processed_at <= $5) \
                   ORDER BY last_processed_at LIMIT $6) RETURNING id"
            ))
            .bind(&lease.token)
            .bind(&lease.expires_at)
            .bind(Self::NAME)
            .bind(&lease.now)
            .bind(db_before(min_interval(engine)))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(rows.into_iter().map(|r| r.0).collect())
        }

        heartbeat_impl!($table);
    };
}

/// Implements [`Pipeline::heartbeat`] for a table (`$table`): extends the lease of a row while
/// the token still holds.
macro_rules! heartbeat_impl {
    ($table:literal) => {
        async fn heartbeat(
            engine: &Engine,
            id: &str,
            token: &str,
            expires_at: &str,
        ) -> crate::Result<bool> {
            let mut tx = engine.store().begin().await?;
            let r = sqlx::query(concat!(
                "UPDATE ",
                $table,
                " SET lock_expires_at = $1 WHERE id = $2 AND lock_token = $3"
            ))
            .bind(expires_at)
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(r.rows_affected() == 1)
        }
    };
}

pub(crate) mod fleets;
pub(crate) mod instances;
#[cfg(all(feature = "agent", feature = "http"))]
pub(crate) mod jobs;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use super::{Engine, time};

/// Tunables of the background pipelines (part of [`EngineOptions`](super::EngineOptions)).
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Whether [`Engine::open`](super::Engine::open) starts the pipelines (off when
    /// `DSTACK_SERVER_BACKGROUND_PROCESSING_DISABLED` is set).
    pub enabled: bool,
    /// How long a claimed row stays leased without a heartbeat (dstack: 20–30 s).
    pub lease: Duration,
    /// Workers per pipeline (`DSTACK_SERVER_PIPELINE_WORKERS`; default 10): how many rows of
    /// one kind are processed at once, e.g. cloud instances being created.
    pub workers: usize,
    /// How long a running job's agent may stay unreachable before the job fails with
    /// `instance_unreachable` (`DSTACK_SERVER_JOB_DISCONNECT_TIMEOUT`, seconds; default 120).
    pub job_disconnect_timeout: Duration,
    /// How often IDLE and BUSY instances are health-checked (and their idle time evaluated)
    /// (`DSTACK_SERVER_INSTANCE_CHECK_INTERVAL`, seconds; dstack: twice the instance
    /// pipeline's 7 s, i.e. 14).
    pub instance_check_interval: Duration,
    /// How long a cloud instance may stay unreachable before it is terminated with
    /// `unreachable` (`DSTACK_SERVER_INSTANCE_UNREACHABLE_TIMEOUT`, seconds; dstack: 20 min).
    /// SSH-fleet instances are never terminated for this.
    pub instance_unreachable_timeout: Duration,
    /// The minimum time between two ticks of one fleet
    /// (`DSTACK_SERVER_FLEET_PROCESSING_INTERVAL`, seconds; dstack: 15).
    pub fleet_interval: Duration,
    /// The unit of the fleet consolidation back-off: attempts wait 1, 2, 5, 10, then 30 units
    /// (`DSTACK_SERVER_FLEET_CONSOLIDATION_BACKOFF_UNIT`, seconds; dstack: 1 min).
    pub consolidation_backoff_unit: Duration,
}

/// `name` as whole seconds, if set and valid.
fn env_secs(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl Default for PipelineOptions {
    /// dstack's values; the lifecycle intervals can be shortened through their environment
    /// variables (read here, so that every engine of a process sees them).
    fn default() -> Self {
        Self {
            enabled: true,
            lease: Duration::from_secs(30),
            workers: env_secs("DSTACK_SERVER_PIPELINE_WORKERS")
                .map_or(10, |n| n.as_secs().clamp(1, 256) as usize),
            job_disconnect_timeout: Duration::from_secs(120),
            instance_check_interval: env_secs("DSTACK_SERVER_INSTANCE_CHECK_INTERVAL")
                .unwrap_or(Duration::from_secs(14)),
            instance_unreachable_timeout: env_secs("DSTACK_SERVER_INSTANCE_UNREACHABLE_TIMEOUT")
                .unwrap_or(Duration::from_secs(20 * 60)),
            fleet_interval: env_secs("DSTACK_SERVER_FLEET_PROCESSING_INTERVAL")
                .unwrap_or(Duration::from_secs(15)),
            consolidation_backoff_unit: env_secs("DSTACK_SERVER_FLEET_CONSOLIDATION_BACKOFF_UNIT")
                .unwrap_or(Duration::from_secs(60)),
        }
    }
}

/// The entity kinds that have a pipeline; used to hint one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    /// `FleetPipeline`.
    Fleets,
    /// `InstancePipeline`.
    Instances,
    /// `JobPipeline` (submitted/provisioning/running/terminating jobs).
    Jobs,
    /// `RunPipeline`.
    Runs,
}

/// Wake-up signals from API handlers to the fetchers, and the running pipeline tasks.
#[derive(Debug, Default)]
pub(crate) struct Pipelines {
    fleets: Notify,
    instances: Notify,
    jobs: Notify,
    runs: Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Pipelines {
    fn notify(&self, kind: PipelineKind) -> &Notify {
        match kind {
            PipelineKind::Fleets => &self.fleets,
            PipelineKind::Instances => &self.instances,
            PipelineKind::Jobs => &self.jobs,
            PipelineKind::Runs => &self.runs,
        }
    }
}

/// One claim: the token written on every row of the batch and its expiry.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// The shared token of the batch.
    pub(crate) token: String,
    /// `lock_expires_at` as stored.
    pub(crate) expires_at: String,
    /// Now, as stored.
    pub(crate) now: String,
}

/// What a pipeline does; implemented by a unit type per entity kind.
pub(crate) trait Pipeline: Send + Sync + 'static {
    /// The `lock_owner` written on claimed rows.
    const NAME: &'static str;
    /// The kind (for hints).
    const KIND: PipelineKind;

    /// Claims up to `limit` due rows with `lease` in one statement; returns their ids.
    fn claim(
        engine: &Engine,
        limit: i64,
        lease: &Lease,
    ) -> impl Future<Output = crate::Result<Vec<String>>> + Send;

    /// Extends the lease of `id` if `token` still holds it; `false` when the row was stolen.
    fn heartbeat(
        engine: &Engine,
        id: &str,
        token: &str,
        expires_at: &str,
    ) -> impl Future<Output = crate::Result<bool>> + Send;

    /// Processes one claimed row; the final write must be `WHERE id = … AND lock_token = …`
    /// and clear the lease.
    fn process(engine: Engine, id: String, token: String) -> impl Future<Output = ()> + Send;
}

/// The stored form of "now + d".
pub(crate) fn db_after(d: Duration) -> String {
    time::to_db(time::now() + chrono::Duration::from_std(d).unwrap_or_default())
}

/// The stored form of "now − d".
pub(crate) fn db_before(d: Duration) -> String {
    time::to_db(time::now() - chrono::Duration::from_std(d).unwrap_or_default())
}

impl Engine {
    /// Wakes a pipeline's fetcher at once (after an API call created due work).
    pub fn hint(&self, kind: PipelineKind) {
        self.inner.pipelines.notify(kind).notify_one();
    }

    /// Starts the background pipelines; [`Engine::open`] and [`Engine::in_memory`] call it
    /// once unless [`PipelineOptions::enabled`] is off.
    pub(crate) fn start_pipelines(&self) {
        #[allow(unused_mut)]
        let mut handles = vec![
            spawn_pipeline::<fleets::FleetPipeline>(self.clone()),
            spawn_pipeline::<instances::InstancePipeline>(self.clone()),
        ];
        #[cfg(all(feature = "agent", feature = "http"))]
        {
            handles.push(spawn_pipeline::<jobs::JobPipeline>(self.clone()));
            handles.push(spawn_pipeline::<jobs::RunPipeline>(self.clone()));
        }
        if let Ok(mut tasks) = self.inner.pipelines.tasks.lock() {
            tasks.extend(handles);
        }
    }

    /// Stops the background pipelines at once, abandoning in-flight work: the leases stay in
    /// the database and expire, so another engine on the same database resumes the work (the
    /// effect of a killed server). API calls keep working.
    pub fn stop_background(&self) {
        let tasks = match self.inner.pipelines.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in tasks {
            t.abort();
        }
    }
}

type InFlight = Arc<Mutex<HashMap<String, String>>>;

fn spawn_pipeline<P: Pipeline>(engine: Engine) -> JoinHandle<()> {
    let span = tracing::info_span!("pipeline", name = P::NAME);
    tokio::spawn(run::<P>(engine).instrument(span))
}

const BACKOFF_MS: [u64; 4] = [500, 1000, 2000, 5000];

async fn run<P: Pipeline>(engine: Engine) {
    let opts = engine.inner.options.pipelines.clone();
    let workers = opts.workers.max(1);
    let in_flight: InFlight = Arc::default();
    let done = Arc::new(Notify::new());
    let permits = Arc::new(Semaphore::new(workers));
    // Dropping the set (when this task is aborted) aborts the heartbeater and the workers.
    let mut set = JoinSet::new();
    set.spawn(heartbeater::<P>(
        engine.clone(),
        in_flight.clone(),
        opts.lease,
    ));
    let mut empty_fetches = 0usize;
    tracing::debug!(workers, "pipeline started");
    loop {
        while set.try_join_next().is_some() {}
        let busy = in_flight.lock().map(|m| m.len()).unwrap_or(0);
        let capacity = (workers * 2).saturating_sub(busy);
        let mut claimed = 0usize;
        if busy * 2 <= workers && capacity > 0 {
            let lease = Lease {
                token: uuid::Uuid::new_v4().to_string(),
                expires_at: db_after(opts.lease),
                now: time::to_db(time::now()),
            };
            match P::claim(&engine, capacity as i64, &lease).await {
                Ok(ids) => {
                    claimed = ids.len();
                    for id in ids {
                        if let Ok(mut m) = in_flight.lock() {
                            m.insert(id.clone(), lease.token.clone());
                        }
                        let engine = engine.clone();
                        let in_flight = in_flight.clone();
                        let done = done.clone();
                        let permits = permits.clone();
                        let token = lease.token.clone();
                        set.spawn(async move {
                            let _permit = permits.acquire_owned().await;
                            P::process(engine, id.clone(), token).await;
                            if let Ok(mut m) = in_flight.lock() {
                                m.remove(&id);
                            }
                            done.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "fetch failed"),
            }
        }
        let delay = if claimed > 0 {
            empty_fetches = 0;
            Duration::from_millis(50)
        } else {
            let ms = BACKOFF_MS[empty_fetches.min(BACKOFF_MS.len() - 1)];
            empty_fetches += 1;
            let jitter = (uuid::Uuid::new_v4().as_u128() % 100) as u64;
            Duration::from_millis(ms + jitter)
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = engine.inner.pipelines.notify(P::KIND).notified() => { empty_fetches = 0; }
            _ = done.notified() => {}
        }
    }
}

async fn heartbeater<P: Pipeline>(engine: Engine, in_flight: InFlight, lease: Duration) {
    let every = (lease / 4).max(Duration::from_millis(250));
    loop {
        tokio::time::sleep(every).await;
        let items: Vec<(String, String)> = match in_flight.lock() {
            Ok(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => continue,
        };
        if items.is_empty() {
            continue;
        }
        let expires_at = db_after(lease);
        for (id, token) in items {
            match P::heartbeat(&engine, &id, &token, &expires_at).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(%id, "lease lost; the row was claimed elsewhere");
                    if let Ok(mut m) = in_flight.lock() {
                        m.remove(&id);
                    }
                }
                Err(e) => tracing::warn!(%id, error = %e, "heartbeat failed"),
            }
        }
    }
}
