//! The PostgreSQL backend (`--database-url postgres://…`, env `TESSERA_DATABASE_URL`):
//! what replicas share. One blocking `postgres::Client` per store worker (the crate runs
//! its own small runtime per client, so nothing here touches actix's or the engine's
//! threads); statements are prepared once per connection and kept.
//!
//! Durability is PostgreSQL's: a `COMMIT` returns after its WAL record is flushed
//! (`synchronous_commit = on`, the server default). A dropped connection (server restart,
//! failover) is re-opened on the next call; the call that saw it fails with
//! `StoreError::Unavailable` (503) and may be retried by the client.

use std::collections::HashMap;
use std::error::Error;

use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::sql::{Backend, Row, SqlConn, SqlValue};
use super::StoreError;

pub struct PgConn {
    url: String,
    client: Client,
    /// Prepared statements by their (static) SQL text.
    prepared: HashMap<&'static str, Statement>,
}

impl PgConn {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let client = Client::connect(url, NoTls).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                redact(url)
            ))
        })?;
        Ok(Self {
            url: url.to_string(),
            client,
            prepared: HashMap::new(),
        })
    }

    /// Re-opens the connection when the server closed it.
    fn ensure_open(&mut self) -> Result<(), StoreError> {
        if self.client.is_closed() {
            *self = Self::connect(&self.url)?;
        }
        Ok(())
    }

    fn statement(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        self.ensure_open()?;
        if let Some(stmt) = self.prepared.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.client.prepare(sql).map_err(pg_error)?;
        self.prepared.insert(sql, stmt.clone());
        Ok(stmt)
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn pg_error(e: postgres::Error) -> StoreError {
    use postgres::error::SqlState;
    if e.is_closed() {
        return StoreError::Unavailable(format!("the PostgreSQL connection closed: {e}"));
    }
    let detail = e
        .as_db_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_string());
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(detail),
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            StoreError::Busy(detail)
        }
        None if e.as_db_error().is_none() => StoreError::Unavailable(detail),
        _ => StoreError::Query(detail),
    }
}

type BoxError = Box<dyn Error + Sync + Send>;

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, BoxError> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(v) if *ty == Type::INT8 => v.to_sql(ty, out),
            SqlValue::Text(s) if <&str as ToSql>::accepts(ty) => s.as_str().to_sql(ty, out),
            other => Err(format!("cannot send {other:?} as a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked per value in `to_sql` (NULL fits every column type).
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for SqlValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(match *ty {
            Type::INT8 => SqlValue::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => SqlValue::Int(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => SqlValue::Int(i16::from_sql(ty, raw)?.into()),
            _ => SqlValue::Text(<&str>::from_sql(ty, raw)?.to_string()),
        })
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(SqlValue::Null)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2) || <&str as FromSql>::accepts(ty)
    }
}

fn as_params(params: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl SqlConn for PgConn {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn execute(&mut self, sql: &'static str, params: &[SqlValue]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        self.client
            .execute(&stmt, &as_params(params))
            .map_err(pg_error)
    }

    fn query(&mut self, sql: &'static str, params: &[SqlValue]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let rows = self
            .client
            .query(&stmt, &as_params(params))
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        row.try_get::<_, SqlValue>(i)
                            .map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
                    })
                    .collect()
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.ensure_open()?;
        self.client.batch_execute(sql).map_err(pg_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/tessera"),
            "postgres://app:***@db:5432/tessera"
        );
        assert_eq!(redact("host=/tmp user=x"), "host=/tmp user=x");
    }
}
