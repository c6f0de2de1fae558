//! Versioned schema migrations, applied at start by `apply` (both backends run the same
//! DDL). A later feature adds its tables by appending a `Migration` with the next
//! version; a migration, once released, is never edited.
//!
//! Invariants: migrations apply in version order, each in its own transaction together
//! with its row in `tessera_migrations`, so a crash leaves the schema at a whole version;
//! replicas starting together on PostgreSQL serialize on an advisory lock and the later
//! ones find the work done. A database newer than this binary (versions it does not
//! know) is used as is: migrations only add tables, columns and indexes.

use super::sql::{transaction, RowExt, SqlConn};
use super::StoreError;

/// One schema step.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    /// Statements separated by `;` (no parameters).
    pub sql: &'static str,
}

/// Every migration, by version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "dialog: conversations, responses, items",
        sql: "
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        metadata TEXT NOT NULL,
        -- bumped by every change to the conversation's items (hot-cache validation)
        version BIGINT NOT NULL,
        -- position the next appended item gets
        next_position BIGINT NOT NULL
    );
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        previous_response_id TEXT,
        conversation_id TEXT,
        status TEXT NOT NULL,
        -- the response object as returned (JSON); '{}' once deleted
        body TEXT NOT NULL,
        -- 1: deleted (kept as a tombstone so later responses still find their ancestors)
        deleted BIGINT NOT NULL
    );
    CREATE INDEX responses_previous ON responses (previous_response_id);
    CREATE TABLE items (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        -- the item as returned (JSON)
        body TEXT NOT NULL,
        conversation_id TEXT,
        conversation_position BIGINT,
        response_id TEXT,
        -- 0: input of the response, 1: its output
        response_role BIGINT,
        response_position BIGINT
    );
    CREATE UNIQUE INDEX items_conversation ON items (conversation_id, conversation_position);
    CREATE INDEX items_response ON items (response_id, response_role, response_position);
    ",
    },
    Migration {
        version: 2,
        name: "conversation log: exchanges, hit categories, review queue",
        sql: "
    CREATE TABLE audit_exchanges (
        -- made by the server (exch_...); the client's request id may repeat
        id TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        route TEXT NOT NULL,
        model TEXT NOT NULL,
        -- hash of the API key (never the key)
        api_key_id TEXT NOT NULL,
        conversation_id TEXT,
        response_id TEXT,
        previous_response_id TEXT,
        -- the dialog: its conversation, else the first response of its chain
        thread_id TEXT,
        client_addr TEXT,
        forwarded_for TEXT,
        status BIGINT NOT NULL,
        finish_reason TEXT,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        -- JSON arrays: input messages, output choices, moderation hits
        input TEXT NOT NULL,
        output TEXT NOT NULL,
        hits TEXT NOT NULL
    );
    CREATE INDEX audit_exchanges_time ON audit_exchanges (created_at_ms, id);
    CREATE INDEX audit_exchanges_thread ON audit_exchanges (thread_id, created_at_ms, id);
    CREATE TABLE audit_hit_categories (
        exchange_id TEXT NOT NULL,
        category TEXT NOT NULL,
        PRIMARY KEY (exchange_id, category)
    );
    CREATE INDEX audit_hit_categories_category ON audit_hit_categories (category);
    CREATE TABLE audit_reviews (
        exchange_id TEXT PRIMARY KEY,
        -- flagged | sampled | manual
        reason TEXT NOT NULL,
        queued_at_ms BIGINT NOT NULL,
        -- NULL until reviewed: ok | violation
        verdict TEXT,
        note TEXT,
        reviewer TEXT,
        reviewed_at_ms BIGINT
    );
    CREATE INDEX audit_reviews_verdict ON audit_reviews (verdict);
    ",
    },
    Migration {
        version: 3,
        name: "feedback: one rating per answer, with the dialog it rated",
        sql: "
    CREATE TABLE feedback (
        response_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        conversation_id TEXT,
        -- +1 good, -1 bad
        rating BIGINT NOT NULL,
        comment TEXT,
        -- the rated dialog: JSON array of {role, content}, ending with the answer
        messages TEXT NOT NULL,
        -- when it was rated (the export's --since/--until select on it)
        created_at BIGINT NOT NULL
    );
    CREATE INDEX feedback_created ON feedback (created_at);
    CREATE INDEX feedback_conversation ON feedback (conversation_id);
    ",
    },
];

const CREATE_LEDGER: &str = "CREATE TABLE IF NOT EXISTS tessera_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// Applies the migrations `conn`'s database lacks; returns the versions applied now.
pub fn apply(conn: &mut dyn SqlConn, migrations: &[Migration]) -> Result<Vec<i64>, StoreError> {
    let begin = conn.backend().begin_migrations();
    transaction(conn, begin, |conn| {
        conn.batch(CREATE_LEDGER)?;
        let applied: Vec<i64> = conn
            .query(
                "SELECT version FROM tessera_migrations ORDER BY version",
                &[],
            )?
            .iter()
            .map(|row| row.int(0))
            .collect::<Result<_, _>>()?;
        let newest_known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(newer) = applied.iter().find(|&&v| v > newest_known) {
            tracing::warn!(
                version = newer,
                "the database has schema migrations newer than this tessera; using it as is"
            );
        }
        let mut now_applied = Vec::new();
        for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
            conn.batch(m.sql).map_err(|e| {
                StoreError::Query(format!("migration {} ({}) failed: {e}", m.version, m.name))
            })?;
            conn.execute(
                "INSERT INTO tessera_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[m.version.into(), m.name.into(), super::unix_now().into()],
            )?;
            tracing::info!(
                version = m.version,
                name = m.name,
                "schema migration applied"
            );
            now_applied.push(m.version);
        }
        Ok(now_applied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteConn;

    #[test]
    fn migrations_apply_once_in_order() {
        let mut conn = SqliteConn::memory().expect("memory db");
        let all: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(apply(&mut conn, MIGRATIONS).expect("applies"), all);
        assert!(apply(&mut conn, MIGRATIONS).expect("no-op").is_empty());
        let extra = [Migration {
            version: 1000,
            name: "test table",
            sql: "CREATE TABLE later_feature (id TEXT PRIMARY KEY)",
        }];
        assert_eq!(apply(&mut conn, &extra).expect("adds"), vec![1000]);
        let broken = [Migration {
            version: 1001,
            name: "broken",
            sql: "CREATE TABLE ok_part (id TEXT); CREATE TABLE (",
        }];
        let err = apply(&mut conn, &broken).expect_err("fails");
        assert!(err.to_string().contains("migration 1001"), "{err}");
        // The failed migration left nothing behind, not even its first statement.
        assert!(conn.query("SELECT id FROM ok_part", &[]).is_err());
    }

    #[test]
    fn versions_are_increasing() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }
}
