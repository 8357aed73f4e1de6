//! A read-through cache for the two lookups almost every request makes: token → user, and
//! project → (row, member roles, the full `Project` model), the project list, and
//! each user's memberships.
//!
//! Every write to users, projects, members or backends commits through
//! [`Engine::commit_identity`](super::Engine), which bumps a generation counter; an entry is
//! served only while the generation it was read at is current, so a refreshed token, a
//! deactivated user or a changed membership takes effect on the next request. Entries are
//! keyed by the token's sha256 (never the token) and the lower-cased project name.
//!
//! With several server replicas on one Postgres database each replica would also have to hear
//! the others' writes; that arrives with the Postgres store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::models::projects::Project;
use crate::models::users::ProjectRole;

use super::services::projects::ProjectRow;
use super::services::users::UserRow;

/// Entries kept per map at most; a map is cleared when it grows past this.
const MAX_ENTRIES: usize = 10_000;

/// What the cache keeps per project.
#[derive(Debug)]
pub(crate) struct ProjectSnapshot {
    /// The row.
    pub(crate) row: ProjectRow,
    /// Member roles by user id.
    pub(crate) roles: HashMap<String, ProjectRole>,
    /// The full wire model (members and backends included).
    pub(crate) full: Project,
}

#[derive(Debug)]
struct Map<V> {
    entries: Mutex<HashMap<String, (V, u64)>>,
}

impl<V: Clone> Map<V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &str, current: u64) -> Option<V> {
        let map = self.entries.lock().ok()?;
        map.get(key)
            .filter(|(_, g)| *g == current)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: String, value: V, generation: u64) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(key, (value, generation));
        }
    }

    fn clear(&self) {
        if let Ok(mut map) = self.entries.lock() {
            map.clear();
        }
    }
}

/// The cache. All methods take `&self`.
#[derive(Debug)]
pub(crate) struct ReadCache {
    generation: AtomicU64,
    tokens: Map<UserRow>,
    projects: Map<Arc<ProjectSnapshot>>,
    project_rows: Map<Arc<Vec<ProjectRow>>>,
    memberships: Map<Arc<HashSet<String>>>,
}

impl Default for ReadCache {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            tokens: Map::new(),
            projects: Map::new(),
            project_rows: Map::new(),
            memberships: Map::new(),
        }
    }
}

impl ReadCache {
    /// The current generation, read *before* the database lookup whose result is cached.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The user holding the token with this hash, if cached and current.
    pub(crate) fn user(&self, token_hash: &str) -> Option<UserRow> {
        self.tokens.get(token_hash, self.generation())
    }

    /// Remembers a token lookup made at `generation`.
    pub(crate) fn put_user(&self, token_hash: String, user: UserRow, generation: u64) {
        self.tokens.put(token_hash, user, generation);
    }

    /// The project snapshot for a (lower-cased) name, if cached and current.
    pub(crate) fn project(&self, name_lower: &str) -> Option<Arc<ProjectSnapshot>> {
        self.projects.get(name_lower, self.generation())
    }

    /// Remembers a project snapshot read at `generation`.
    pub(crate) fn put_project(&self, name_lower: String, p: Arc<ProjectSnapshot>, generation: u64) {
        self.projects.put(name_lower, p, generation);
    }

    /// All non-deleted project rows, if cached and current.
    pub(crate) fn project_rows(&self) -> Option<Arc<Vec<ProjectRow>>> {
        self.project_rows.get("", self.generation())
    }

    /// Remembers the project rows read at `generation`.
    pub(crate) fn put_project_rows(&self, rows: Arc<Vec<ProjectRow>>, generation: u64) {
        self.project_rows.put(String::new(), rows, generation);
    }

    /// The ids of the projects a user belongs to, if cached and current.
    pub(crate) fn memberships(&self, user_id: &str) -> Option<Arc<HashSet<String>>> {
        self.memberships.get(user_id, self.generation())
    }

    /// Remembers a user's memberships read at `generation`.
    pub(crate) fn put_memberships(
        &self,
        user_id: String,
        ids: Arc<HashSet<String>>,
        generation: u64,
    ) {
        self.memberships.put(user_id, ids, generation);
    }

    /// Called after every committed write to users, projects, members or backends.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.tokens.clear();
        self.projects.clear();
        self.project_rows.clear();
        self.memberships.clear();
    }
}
