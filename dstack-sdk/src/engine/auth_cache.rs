//! A small cache of token → user for the authentication step of every request.
//!
//! Every write to the `users` table goes through the engine, which calls
//! [`AuthCache::invalidate`] after committing; an entry is used only while no users write
//! happened since it was read (a generation counter), so a refreshed token, a deactivated or
//! deleted user is refused at once. Entries are keyed by the token's sha256, never the token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::services::users::UserRow;

/// Entries kept at most; the map is cleared when it grows past this.
const MAX_ENTRIES: usize = 10_000;

/// The cache. Cheap to share; all methods take `&self`.
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    generation: AtomicU64,
    entries: Mutex<HashMap<String, (UserRow, u64)>>,
}

impl AuthCache {
    /// The current generation, read *before* the database lookup whose result is cached.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A cached user for this token hash, if no users write happened since it was read.
    pub(crate) fn get(&self, hash: &str) -> Option<UserRow> {
        let now = self.generation();
        let map = self.entries.lock().ok()?;
        map.get(hash)
            .filter(|(_, g)| *g == now)
            .map(|(u, _)| u.clone())
    }

    /// Remembers a lookup made at `generation`.
    pub(crate) fn put(&self, hash: String, user: UserRow, generation: u64) {
        if let Ok(mut map) = self.entries.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(hash, (user, generation));
        }
    }

    /// Called after every committed users write: all entries become stale.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.entries.lock() {
            map.clear();
        }
    }
}
