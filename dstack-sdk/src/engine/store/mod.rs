//! The state store: SQLite (default) through sqlx, with migrations embedded in the binary.
//!
//! SQLite is opened in WAL mode with foreign keys on, `synchronous=NORMAL` and a 30 s busy
//! timeout. Writes go through a pool of exactly one connection so "database is locked" cannot
//! happen; reads use a separate pool in parallel. Queries use `$N` placeholders and portable
//! SQL so that a Postgres store can be added beside this one without changing them.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one this build supports.
    #[error(
        "unsupported database URL {0:?}: use sqlite:///<path> (Postgres arrives with the replicas work)"
    )]
    UnsupportedUrl(String),
    /// Opening or migrating the database failed.
    #[error("cannot open the database: {0}")]
    Open(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// A handle to the database: one writer connection, several readers.
#[derive(Debug, Clone)]
pub struct Store {
    writer: SqlitePool,
    reader: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and runs the migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open(sqlx::Error::Io(e)))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            // 16 MiB of page cache per connection (SQLite's default is 2 MiB): the pages a
            // `runs/list` page touches stay in memory instead of being re-read from the OS.
            .pragma("cache_size", "-16384");
        Self::open_with(opts).await
    }

    /// Opens a database from a URL: `sqlite:///abs/path.db`, `sqlite://rel.db`,
    /// or dstack's `sqlite+aiosqlite:///path` form.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let path = url
            .strip_prefix("sqlite+aiosqlite://")
            .or_else(|| url.strip_prefix("sqlite://"))
            .ok_or_else(|| StoreError::UnsupportedUrl(url.to_string()))?;
        let path = path.split('?').next().unwrap_or(path);
        Self::open_sqlite(Path::new(path)).await
    }

    /// A fresh in-memory database (tests and throwaway embedded engines).
    pub async fn open_memory() -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(StoreError::Open)?
            .foreign_keys(true)
            .shared_cache(true);
        // One connection serves reads and writes so both see the same in-memory database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts)
            .await
            .map_err(StoreError::Open)?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
        })
    }

    async fn open_with(opts: SqliteConnectOptions) -> Result<Self, StoreError> {
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(StoreError::Open)?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(StoreError::Open)?;
        Ok(Self { writer, reader })
    }

    /// The read pool.
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Begins a write transaction on the single writer connection.
    pub async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin().await?)
    }
}
