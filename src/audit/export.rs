//! `tessera audit export --since DATE [--until DATE] --format jsonl`: the logged
//! exchanges of a time range, read straight from the store (the server need not run),
//! one JSON object per line (`view.rs`'s shape, which `view::parse` reads back), oldest
//! first, for regulators.
//!
//! Invariants: the range is `[since, until)` in UTC (`until` defaults to now); the store
//! is read a page at a time, so memory stays flat whatever the range holds; a SQLite
//! store that does not exist is an error, never a new empty database.

use std::io::Write;
use std::path::Path;

use super::time::{parse_date, SystemClock};
use super::view::to_json;
use super::Clock;
use crate::store::{sqlite, Cursor, StoreConfig, StorePool};

/// Exchanges read per store query.
pub const PAGE: usize = 500;

/// What to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRange {
    pub since_ms: i64,
    pub until_ms: i64,
}

impl ExportRange {
    /// `--since`/`--until` as given (a date, an RFC 3339 time, or unix seconds).
    pub fn parse(since: &str, until: Option<&str>) -> Result<Self, String> {
        let date = |flag: &str, text: &str| {
            parse_date(text).ok_or_else(|| {
                format!(
                    "--{flag} must be a date (2026-01-31), a UTC time (2026-01-31T08:00:00Z) \
                     or unix seconds. Given: {text:?}"
                )
            })
        };
        let since_ms = date("since", since)?;
        let until_ms = match until {
            Some(text) => date("until", text)?,
            None => SystemClock.now_ms().saturating_add(1),
        };
        if until_ms <= since_ms {
            return Err(format!(
                "--until must be after --since. Given: {since:?} .. {}",
                until.unwrap_or("now")
            ));
        }
        Ok(Self { since_ms, until_ms })
    }
}

/// Writes every exchange of `range` to `out` as JSON lines; how many.
pub fn export(pool: &StorePool, range: &ExportRange, out: &mut dyn Write) -> Result<u64, String> {
    let (since, until) = (range.since_ms, range.until_ms);
    let mut from = Cursor::start();
    let mut written = 0;
    loop {
        let after = from.clone();
        let page = pool
            .run_blocking(move |s| s.export_audit(since, until, &after, PAGE))
            .map_err(|e| format!("reading the conversation log: {e}"))?;
        for ex in &page {
            writeln!(out, "{}", to_json(ex)).map_err(|e| format!("writing the export: {e}"))?;
        }
        written += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == PAGE => from = Cursor::of(&last.record),
            _ => break,
        }
    }
    out.flush()
        .map_err(|e| format!("writing the export: {e}"))?;
    Ok(written)
}

/// Opens the store of `cfg` for export (refusing a SQLite directory without a database).
pub fn open_store(cfg: &StoreConfig) -> Result<std::sync::Arc<StorePool>, String> {
    if let StoreConfig::Sqlite { data_dir } = cfg {
        let file = data_dir.join(sqlite::DB_FILE);
        if !file.exists() {
            return Err(format!(
                "no conversation log at {} (give the server's --data-dir or --database-url)",
                file.display()
            ));
        }
    }
    StorePool::open(cfg).map_err(|e| format!("opening the store ({}): {e}", cfg.describe()))
}

/// The `tessera audit export` command: to `output` (a file) or stdout; how many
/// exchanges it wrote.
pub fn run(
    cfg: &StoreConfig,
    range: &ExportRange,
    format: &str,
    output: Option<&Path>,
) -> Result<u64, String> {
    if format != "jsonl" {
        return Err(format!(
            "--format must be `jsonl` (the only format). Given: {format:?}"
        ));
    }
    let pool = open_store(cfg)?;
    match output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            export(&pool, range, &mut std::io::BufWriter::new(file))
        }
        None => export(&pool, range, &mut std::io::stdout().lock()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEntry, AuditRecord};

    #[test]
    fn ranges_are_checked() {
        let r = ExportRange::parse("2026-01-01", Some("2026-01-02")).expect("valid");
        assert_eq!(r.until_ms - r.since_ms, super::super::time::DAY_MS);
        assert!(ExportRange::parse("2026-01-02", Some("2026-01-01")).is_err());
        assert!(ExportRange::parse("last week", None)
            .unwrap_err()
            .contains("--since"));
    }

    #[test]
    fn pages_cover_the_range_exactly_once_in_order() {
        let pool = StorePool::open(&StoreConfig::Memory).expect("store");
        // 2.5 pages of records one ms apart, some sharing a time.
        let n = PAGE * 5 / 2;
        let batch: Vec<AuditEntry> = (0..n)
            .map(|i| AuditEntry {
                record: AuditRecord {
                    id: format!("exch_{i:05}"),
                    created_at_ms: 1000 + (i / 2) as i64,
                    input: "[]".into(),
                    output: "[]".into(),
                    hits: "[]".into(),
                    ..AuditRecord::default()
                },
                review: None,
            })
            .collect();
        pool.run_blocking(move |s| s.append_audit(&batch))
            .expect("written");
        let range = ExportRange {
            since_ms: 1001,
            until_ms: 1000 + (n / 2) as i64 - 1,
        };
        let mut out = Vec::new();
        let count = export(&pool, &range, &mut out).expect("exported");
        let ids: Vec<String> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| super::super::view::parse(l).expect("parses").record.id)
            .collect();
        let want: Vec<String> = (2..n - 2).map(|i| format!("exch_{i:05}")).collect();
        assert_eq!((count as usize, ids), (want.len(), want));
        assert!(open_store(&StoreConfig::Sqlite {
            data_dir: std::env::temp_dir().join("tessera-no-such-log-dir")
        })
        .is_err());
    }
}
