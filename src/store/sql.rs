//! The seam between the store's logic and its two databases: `SqlConn` runs one SQL
//! statement (written once, PostgreSQL-style `$1` placeholders) on SQLite or PostgreSQL,
//! with parameters and result cells as `SqlValue`s (NULL, 64-bit integer or text — the
//! only column types the schema uses, so one statement text serves both backends).
//!
//! Invariants: every integer column is `BIGINT` (PostgreSQL checks Rust types exactly:
//! `BIGINT` ↔ `i64`); every statement passed to `execute`/`query` is a `&'static str`
//! (so drivers may cache its prepared form by address); `transaction` leaves no
//! transaction open, whatever the closure returns.

use super::StoreError;

/// One SQL parameter or result cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Text(String),
}

/// One result row.
pub type Row = Vec<SqlValue>;

impl From<i64> for SqlValue {
    fn from(v: i64) -> Self {
        SqlValue::Int(v)
    }
}

impl From<&str> for SqlValue {
    fn from(v: &str) -> Self {
        SqlValue::Text(v.to_string())
    }
}

impl From<&String> for SqlValue {
    fn from(v: &String) -> Self {
        SqlValue::Text(v.clone())
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// Which database a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Starts a transaction that will write. SQLite takes the write lock at once
    /// (`IMMEDIATE`), so two writers never deadlock upgrading a read lock.
    fn begin(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// Starts the transaction that applies migrations: replicas starting together on
    /// one PostgreSQL wait for each other on an advisory lock.
    pub fn begin_migrations(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN; SELECT pg_advisory_xact_lock(7415020301)",
        }
    }
}

/// A connection to one database.
pub trait SqlConn: Send {
    fn backend(&self) -> Backend;
    /// Runs one statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &'static str, params: &[SqlValue]) -> Result<u64, StoreError>;
    /// Runs one query; returns its rows.
    fn query(&mut self, sql: &'static str, params: &[SqlValue]) -> Result<Vec<Row>, StoreError>;
    /// Runs statements without parameters or results (DDL, `BEGIN`, `COMMIT`).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
}

/// Runs `f` in a write transaction: committed when it returns `Ok`, rolled back otherwise.
pub fn transaction<T>(
    conn: &mut dyn SqlConn,
    begin: &str,
    f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.batch(begin)?;
    let result = f(conn).and_then(|v| conn.batch("COMMIT").map(|()| v));
    if result.is_err() {
        // Nothing more to do when the rollback fails too: the connection reports it on
        // its next use, and the transaction did not commit.
        let _ = conn.batch("ROLLBACK");
    }
    result
}

/// `transaction` with the backend's ordinary write `BEGIN`.
pub fn write<T>(
    conn: &mut dyn SqlConn,
    f: impl FnOnce(&mut dyn SqlConn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let begin = conn.backend().begin();
    transaction(conn, begin, f)
}

/// Typed access to the cells of a row.
pub trait RowExt {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
}

impl RowExt for [SqlValue] {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.get(i) {
            Some(SqlValue::Text(s)) => Ok(s.clone()),
            other => Err(bad_cell(i, "text", other)),
        }
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.get(i) {
            Some(SqlValue::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.get(i) {
            Some(SqlValue::Int(v)) => Ok(*v),
            other => Err(bad_cell(i, "an integer", other)),
        }
    }
}

fn bad_cell(i: usize, wanted: &str, got: Option<&SqlValue>) -> StoreError {
    StoreError::Corrupt(format!("column {i}: expected {wanted}, found {got:?}"))
}

/// `$1`-style placeholders as SQLite's numbered `?1` (same numbers, so a parameter may be
/// used twice).
pub fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_their_numbers() {
        assert_eq!(
            sqlite_placeholders("SELECT a FROM t WHERE b = $2 AND c = $1 OR d = $2"),
            "SELECT a FROM t WHERE b = ?2 AND c = ?1 OR d = ?2"
        );
    }

    #[test]
    fn rows_are_read_by_type() {
        let row: Row = vec![SqlValue::Text("a".into()), SqlValue::Null, SqlValue::Int(3)];
        assert_eq!(row.text(0).ok().as_deref(), Some("a"));
        assert_eq!(row.opt_text(1).ok(), Some(None));
        assert_eq!(row.int(2).ok(), Some(3));
        assert!(matches!(row.int(0), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.text(9), Err(StoreError::Corrupt(_))));
        assert_eq!(SqlValue::from(None::<&str>), SqlValue::Null);
    }
}
