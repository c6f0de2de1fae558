//! The embedded SQLite backend (`--data-dir`, the default): one database file
//! `DIR/tessera.db`, opened once per store worker.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a commit is on disk (the WAL is
//! fsynced) before `COMMIT` returns — a turn reported complete survives a crash or power
//! loss. WAL lets readers run beside the one writer; writers wait for each other up to
//! `BUSY_TIMEOUT` (transactions take the write lock at `BEGIN IMMEDIATE`).

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::sql::{sqlite_placeholders, Backend, Row, SqlConn, SqlValue};
use super::StoreError;

/// The database file inside `--data-dir`.
pub const DB_FILE: &str = "tessera.db";

/// How long a writer waits for another writer's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection (the store uses a few dozen).
const STATEMENT_CACHE: usize = 64;

pub struct SqliteConn {
    conn: Connection,
}

impl SqliteConn {
    /// Opens (creating it and `dir` when missing) `dir/tessera.db` in WAL mode.
    pub fn open_dir(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create --data-dir {}: {e}", dir.display()))
        })?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_error)?;
        // `journal_mode` answers with the mode set; WAL needs a file system with shared memory.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(sqlite_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "{} cannot use the WAL journal (got `{mode}`)",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(sqlite_error)?;
        Ok(Self::with(conn))
    }

    /// A private in-memory database (tests, embedding): lost when the connection closes,
    /// so the pool must keep exactly one.
    pub fn memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(sqlite_error)?;
        Ok(Self::with(conn))
    }

    fn with(conn: Connection) -> Self {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Self { conn }
    }
}

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            SqlValue::Null => ValueRef::Null,
            SqlValue::Int(v) => ValueRef::Integer(*v),
            SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
        }))
    }
}

fn cell(value: ValueRef<'_>) -> Result<SqlValue, StoreError> {
    Ok(match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(v) => SqlValue::Int(v),
        ValueRef::Text(bytes) => SqlValue::Text(
            String::from_utf8(bytes.to_vec())
                .map_err(|e| StoreError::Corrupt(format!("text column is not UTF-8: {e}")))?,
        ),
        other => {
            return Err(StoreError::Corrupt(format!(
                "unexpected column type {:?}",
                other.data_type()
            )))
        }
    })
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Busy(e.to_string())
        }
        Some(ErrorCode::CannotOpen | ErrorCode::DiskFull | ErrorCode::ReadOnly) => {
            StoreError::Unavailable(e.to_string())
        }
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
        _ => StoreError::Query(e.to_string()),
    }
}

impl SqlConn for SqliteConn {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn execute(&mut self, sql: &'static str, params: &[SqlValue]) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&sqlite_placeholders(sql))
            .map_err(sqlite_error)?;
        let changed = stmt
            .execute(rusqlite::params_from_iter(params))
            .map_err(sqlite_error)?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &'static str, params: &[SqlValue]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&sqlite_placeholders(sql))
            .map_err(sqlite_error)?;
        let columns = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .map_err(sqlite_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let cells = (0..columns)
                .map(|i| row.get_ref(i).map_err(sqlite_error).and_then(cell))
                .collect::<Result<Row, _>>()?;
            out.push(cells);
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(sqlite_error)
    }
}
