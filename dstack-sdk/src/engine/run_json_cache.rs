//! The serialised API models of runs, reused by `runs/list`.
//!
//! `dstack ps` asks for the same page of runs every few seconds, and almost none of them
//! changed since the last time: yet building one means parsing its run spec and every job spec
//! and writing them out again (~0.3 ms per run of 3 jobs). A run's JSON is kept here under its
//! id and the page options that shape it, with a fingerprint of what it was built from: the run
//! row's columns, its spec's hash and `jobs_rev`, which triggers on the `jobs` table bump on
//! every change a run's model shows (migration 0007). A lookup whose fingerprint differs is a
//! miss, so a run that moves on is rebuilt on the next request. Runs whose cost grows with the
//! clock (a job running on a priced instance) are never kept.
//!
//! The cache is bounded by size and cleared wholesale when it outgrows it; it holds nothing the
//! database does not have, so replicas sharing one database stay correct.
//! `DSTACK_SERVER_RUNS_LIST_CACHE=0` turns it off (to measure the uncached path).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bytes of JSON kept at most (~8,000 runs of 3 jobs).
const MAX_BYTES: usize = 64 << 20;

/// What a run's JSON depends on besides its rows: the job-submission limit and whether jobs
/// are included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RunJsonKey {
    /// The run id.
    pub(crate) run_id: String,
    /// `job_submissions_limit`.
    pub(crate) submissions_limit: Option<usize>,
    /// `include_jobs`.
    pub(crate) include_jobs: bool,
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    json: Arc<[u8]>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<RunJsonKey, Entry>,
    bytes: usize,
}

/// The cache (one per engine).
#[derive(Debug)]
pub(crate) struct RunJsonCache {
    inner: Mutex<Inner>,
    enabled: bool,
}

impl Default for RunJsonCache {
    fn default() -> Self {
        let off = std::env::var("DSTACK_SERVER_RUNS_LIST_CACHE")
            .is_ok_and(|v| matches!(v.trim(), "0" | "false" | "off"));
        Self {
            inner: Mutex::default(),
            enabled: !off,
        }
    }
}

impl RunJsonCache {
    /// Whether runs are cached (`DSTACK_SERVER_RUNS_LIST_CACHE` is not `0`).
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The cached JSON of `key` if it was built from rows with this `fingerprint`.
    pub(crate) fn get(&self, key: &RunJsonKey, fingerprint: &str) -> Option<Arc<[u8]>> {
        let inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        inner
            .entries
            .get(key)
            .filter(|e| e.fingerprint == fingerprint)
            .map(|e| e.json.clone())
    }

    /// Keeps the JSON of a finished run.
    pub(crate) fn put(&self, key: RunJsonKey, fingerprint: String, json: Arc<[u8]>) {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if inner.bytes + json.len() > MAX_BYTES {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += json.len();
        if let Some(old) = inner.entries.insert(key, Entry { fingerprint, json }) {
            inner.bytes -= old.json.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> RunJsonKey {
        RunJsonKey {
            run_id: id.into(),
            submissions_limit: Some(10),
            include_jobs: true,
        }
    }

    #[test]
    fn a_changed_fingerprint_is_a_miss() {
        let c = RunJsonCache::default();
        c.put(key("a"), "v1".into(), Arc::from(&b"{}"[..]));
        assert_eq!(c.get(&key("a"), "v1").as_deref(), Some(&b"{}"[..]));
        assert!(c.get(&key("a"), "v2").is_none());
        assert!(c.get(&key("b"), "v1").is_none());
        let other = RunJsonKey {
            include_jobs: false,
            ..key("a")
        };
        assert!(c.get(&other, "v1").is_none());
    }

    #[test]
    fn size_is_bounded() {
        let c = RunJsonCache::default();
        let big: Arc<[u8]> = Arc::from(vec![b' '; MAX_BYTES / 2 + 1]);
        c.put(key("a"), "v".into(), big.clone());
        c.put(key("b"), "v".into(), big);
        assert!(c.get(&key("a"), "v").is_none(), "cleared when full");
        assert!(c.get(&key("b"), "v").is_some());
        let inner = c.inner.lock().unwrap();
        assert_eq!(inner.bytes, MAX_BYTES / 2 + 1);
    }
}
