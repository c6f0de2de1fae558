//! Bench (report only, no timing asserts): the cost of writing the conversation log per
//! exchange, on SQLite (a temporary `--data-dir`; WAL, `synchronous=FULL`) and on
//! PostgreSQL (`scripts/postgres.sh`, fsync on), at the batch sizes the writer thread
//! makes: 1 (one request at a time), 16, and 256 (`MAX_BATCH`, a backlog). Each
//! exchange is a chat turn of ~600 characters in and ~600 out (mixed Chinese and
//! English), with a moderation hit on every 8th, which then also goes to the review
//! queue. Wall time on a shared machine: read it as an order of magnitude.
//!
//! `cargo test --release --test audit_bench -- --ignored --nocapture`

mod pg_support;

use std::time::Instant;

use serde_json::json;
use tessera::store::{AuditEntry, AuditRecord, ReviewReason, StoreConfig, StorePool};

/// Exchanges written per store and batch size.
const EXCHANGES: usize = 1024;

fn exchange(n: usize) -> AuditEntry {
    let flagged = n.is_multiple_of(8);
    let said =
        format!("第{n}轮: 我想了解一下账户的利息是怎么计算的? Please explain the fees. ").repeat(8);
    let answered =
        format!("Turn {n}: 利息按日计算,按月结息。The monthly fee is listed in your contract. ")
            .repeat(8);
    let hits = if flagged {
        json!([{"stage": "input", "category": "fraud", "action": "flag", "param": "messages[0].content", "index": 0, "text": "账户"}])
    } else {
        json!([])
    };
    let record = AuditRecord {
        id: format!("exch_bench_{n:08}_{:08x}", rand::random::<u32>()),
        request_id: format!("bench-{n}"),
        created_at_ms: 1_767_225_600_000 + n as i64,
        route: "/v1/chat/completions".into(),
        model: "smol".into(),
        api_key_id: "key-0123456789abcdef".into(),
        client_addr: Some("127.0.0.1:40000".into()),
        status: 200,
        finish_reason: Some("stop".into()),
        prompt_tokens: 180,
        completion_tokens: 170,
        input: json!([{"role": "user", "content": said}]).to_string(),
        output: json!([{"index": 0, "finish_reason": "stop", "text": answered}]).to_string(),
        hits: hits.to_string(),
        categories: if flagged {
            vec!["fraud".into()]
        } else {
            vec![]
        },
        ..AuditRecord::default()
    };
    AuditEntry {
        record,
        review: flagged.then_some(ReviewReason::Flagged),
    }
}

/// Writes `EXCHANGES` exchanges in batches of `batch` (one transaction each); µs per
/// exchange.
fn per_exchange_us(pool: &StorePool, batch: usize, offset: usize) -> f64 {
    let entries: Vec<AuditEntry> = (0..EXCHANGES).map(|i| exchange(offset + i)).collect();
    let started = Instant::now();
    for chunk in entries.chunks(batch) {
        let chunk = chunk.to_vec();
        pool.run_blocking(move |s| s.append_audit(&chunk))
            .expect("the batch is written");
    }
    started.elapsed().as_secs_f64() * 1e6 / EXCHANGES as f64
}

fn bench(name: &str, config: &StoreConfig) {
    let pool = StorePool::open(config).expect("store");
    // Warm up (connections, page cache, prepared statements).
    per_exchange_us(&pool, 16, 0);
    for (round, batch) in [1usize, 16, 256].into_iter().enumerate() {
        let us = per_exchange_us(&pool, batch, (round + 1) * EXCHANGES);
        println!("{name}: batch {batch:>3}: {us:>8.1} µs per exchange ({EXCHANGES} exchanges)");
    }
}

#[test]
#[ignore = "bench: run with --ignored --nocapture"]
fn audit_write_cost_per_exchange() {
    let dir = std::env::temp_dir().join(format!("tessera-audit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    bench(
        "sqlite",
        &StoreConfig::Sqlite {
            data_dir: dir.clone(),
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    let pg = pg_support::Postgres::start();
    bench(
        "postgresql",
        &StoreConfig::Postgres {
            url: pg.new_database(),
        },
    );
}
