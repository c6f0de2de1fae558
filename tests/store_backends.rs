//! The `Store` contract, one suite run against both backends: SQLite in a temporary
//! `--data-dir` and a real PostgreSQL (Debian's package, `scripts/postgres.sh`, a
//! throwaway cluster on loopback). Covers conversations and their items (order, pages,
//! removal, versions), turns committed whole (or not at all), response chains through a
//! deleted ancestor, owner scoping, concurrent appends, reopening (restart) and two pools
//! on one PostgreSQL database (two replicas).

mod pg_support;

use std::path::PathBuf;
use std::sync::Arc;

use pg_support::Postgres;
use tessera::store::{
    ConversationRecord, ItemRecord, Owner, PageQuery, ResponseRecord, StoreConfig, StoreError,
    StorePool, TurnRecord,
};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tessera-store-{tag}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn item(id: &str) -> ItemRecord {
    ItemRecord {
        id: id.to_string(),
        created_at: 1,
        body: format!(r#"{{"id":"{id}"}}"#),
    }
}

fn ids(items: &[ItemRecord]) -> Vec<String> {
    items.iter().map(|i| i.id.clone()).collect()
}

fn conversation(id: &str) -> ConversationRecord {
    ConversationRecord {
        id: id.to_string(),
        created_at: 7,
        metadata: r#"{"k":"v"}"#.into(),
        version: 1,
    }
}

fn page(after: Option<&str>, limit: usize, descending: bool) -> PageQuery {
    PageQuery {
        after: after.map(str::to_string),
        limit,
        descending,
    }
}

fn response(id: &str, previous: Option<&str>, conversation: Option<&str>) -> ResponseRecord {
    ResponseRecord {
        id: id.to_string(),
        created_at: 9,
        previous_response_id: previous.map(str::to_string),
        conversation_id: conversation.map(str::to_string),
        status: "completed".into(),
        body: format!(r#"{{"id":"{id}"}}"#),
    }
}

/// Conversations: create, items in order, pages both ways, removal, metadata, owners.
fn conversations(pool: &StorePool) {
    let (a, b) = (Owner::of_key("key-a"), Owner::of_key("key-b"));
    let (o, o2) = (a.clone(), a.clone());
    pool.run_blocking(move |s| {
        s.create_conversation(&o, &conversation("conv_1"), &[item("m0"), item("m1")])
    })
    .expect("create");
    let v = pool
        .run_blocking(move |s| s.append_items(&o2, "conv_1", &[item("m2"), item("m3"), item("m4")]))
        .expect("append");
    assert_eq!(v, 2, "every change bumps the version");
    let o = a.clone();
    let history = pool
        .run_blocking(move |s| s.conversation_history(&o, "conv_1"))
        .expect("history")
        .expect("exists");
    assert_eq!(
        (history.version, ids(&history.items)),
        (
            2,
            vec![
                "m0".into(),
                "m1".into(),
                "m2".into(),
                "m3".into(),
                "m4".into()
            ]
        )
    );
    let o = a.clone();
    let p = pool
        .run_blocking(move |s| s.conversation_items(&o, "conv_1", &page(Some("m1"), 2, false)))
        .expect("page");
    assert_eq!(
        (ids(&p.items), p.has_more),
        (vec!["m2".into(), "m3".into()], true)
    );
    let o = a.clone();
    let p = pool
        .run_blocking(move |s| s.conversation_items(&o, "conv_1", &page(None, 10, true)))
        .expect("page");
    assert_eq!(ids(&p.items)[0], "m4");
    assert!(!p.has_more);
    let o = a.clone();
    let bad = pool
        .run_blocking(move |s| s.conversation_items(&o, "conv_1", &page(Some("nope"), 2, false)));
    assert!(matches!(bad, Err(StoreError::NotFound(_))), "{bad:?}");
    let o = a.clone();
    let v = pool
        .run_blocking(move |s| s.delete_conversation_item(&o, "conv_1", "m2"))
        .expect("delete item");
    assert_eq!(v, 3);
    let o = a.clone();
    let gone = pool.run_blocking(move |s| s.delete_conversation_item(&o, "conv_1", "m2"));
    assert_eq!(gone, Err(StoreError::NotFound("item")));
    let o = a.clone();
    let meta = pool
        .run_blocking(move |s| s.set_conversation_metadata(&o, "conv_1", r#"{"x":"y"}"#))
        .expect("metadata");
    assert_eq!((meta.metadata.as_str(), meta.version), (r#"{"x":"y"}"#, 3));
    // Another owner sees nothing and changes nothing.
    let ob = b.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.conversation(&ob, "conv_1")),
        Ok(None)
    );
    let ob = b.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.append_items(&ob, "conv_1", &[item("evil")])),
        Err(StoreError::NotFound("conversation"))
    );
    let ob = b.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.delete_conversation(&ob, "conv_1")),
        Ok(false)
    );
    let o = a.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.conversation_version(&o, "conv_1")),
        Ok(Some(3))
    );
    let o = a.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.delete_conversation(&o, "conv_1")),
        Ok(true)
    );
    let o = a.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.conversation_version(&o, "conv_1")),
        Ok(None)
    );
}

/// Turns: committed whole, chained through a deleted ancestor, appended to a
/// conversation; a turn on a missing conversation writes nothing.
fn turns(pool: &StorePool) {
    let a = Owner::of_key("key-a");
    let turn = |id: &str, prev: Option<&str>, n: &str| TurnRecord {
        response: Some(response(id, prev, None)),
        conversation_id: None,
        input: vec![item(&format!("{n}-in"))],
        output: vec![item(&format!("{n}-out"))],
        replaces: None,
    };
    for (id, prev, n) in [
        ("resp_1", None, "t1"),
        ("resp_2", Some("resp_1"), "t2"),
        ("resp_3", Some("resp_2"), "t3"),
    ] {
        let (o, t) = (a.clone(), turn(id, prev, n));
        assert_eq!(pool.run_blocking(move |s| s.commit_turn(&o, &t)), Ok(None));
    }
    let o = a.clone();
    let chain = pool
        .run_blocking(move |s| s.response_history(&o, "resp_3"))
        .expect("history")
        .expect("exists");
    assert_eq!(chain.response_ids, vec!["resp_1", "resp_2", "resp_3"]);
    assert_eq!(
        ids(&chain.items),
        vec!["t1-in", "t1-out", "t2-in", "t2-out", "t3-in", "t3-out"]
    );
    let o = a.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.delete_response(&o, "resp_2")),
        Ok(true)
    );
    let o = a.clone();
    let chain = pool
        .run_blocking(move |s| s.response_history(&o, "resp_3"))
        .expect("history")
        .expect("exists");
    assert_eq!(
        chain.response_ids,
        vec!["resp_1", "resp_3"],
        "the walk passes the tombstone"
    );
    assert_eq!(
        ids(&chain.items),
        vec!["t1-in", "t1-out", "t3-in", "t3-out"]
    );
    let o = a.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.response_chain(&o, "resp_2")),
        Ok(None)
    );
    let o = a.clone();
    let input = pool
        .run_blocking(move |s| s.response_input_items(&o, "resp_3", &page(None, 5, false)))
        .expect("input items");
    assert_eq!(ids(&input.items), vec!["t3-in"]);
    let ob = Owner::of_key("key-b");
    assert_eq!(
        pool.run_blocking(move |s| s.response(&ob, "resp_3")),
        Ok(None)
    );
    // A turn on a conversation that does not exist commits nothing, not even its response.
    let o = a.clone();
    let orphan = TurnRecord {
        response: Some(response("resp_x", None, Some("conv_missing"))),
        conversation_id: Some("conv_missing".into()),
        input: vec![item("x-in")],
        output: vec![item("x-out")],
        replaces: None,
    };
    assert_eq!(
        pool.run_blocking(move |s| s.commit_turn(&o, &orphan)),
        Err(StoreError::NotFound("conversation"))
    );
    let o = a.clone();
    assert_eq!(
        pool.run_blocking(move |s| s.response(&o, "resp_x")),
        Ok(None)
    );
    // A turn on a conversation appends its items after the ones there.
    let o = a.clone();
    pool.run_blocking(move |s| s.create_conversation(&o, &conversation("conv_2"), &[item("c0")]))
        .expect("create");
    let o = a.clone();
    let t = TurnRecord {
        response: None,
        conversation_id: Some("conv_2".into()),
        input: vec![item("c1")],
        output: vec![item("c2")],
        replaces: None,
    };
    assert_eq!(
        pool.run_blocking(move |s| s.commit_turn(&o, &t)),
        Ok(Some(2))
    );
    let o = a.clone();
    let h = pool
        .run_blocking(move |s| s.conversation_history(&o, "conv_2"))
        .expect("h")
        .expect("exists");
    assert_eq!(ids(&h.items), vec!["c0", "c1", "c2"]);
}

/// 8 writers × 10 appends on one conversation: every item once, each append's items
/// adjacent, no position collides.
fn concurrent_appends(pool: &Arc<StorePool>) {
    let a = Owner::of_key("key-a");
    let o = a.clone();
    pool.run_blocking(move |s| s.create_conversation(&o, &conversation("conv_c"), &[]))
        .expect("create");
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (pool, o) = (pool.clone(), a.clone());
            std::thread::spawn(move || {
                for k in 0..10 {
                    let o = o.clone();
                    let items = vec![item(&format!("w{w}-{k}-a")), item(&format!("w{w}-{k}-b"))];
                    pool.run_blocking(move |s| s.append_items(&o, "conv_c", &items))
                        .expect("append");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let o = a.clone();
    let h = pool
        .run_blocking(move |s| s.conversation_history(&o, "conv_c"))
        .expect("h")
        .expect("exists");
    assert_eq!(h.items.len(), 160);
    assert_eq!(h.version, 81);
    for pair in h.items.chunks(2) {
        assert_eq!(
            pair[0].id.replace("-a", ""),
            pair[1].id.replace("-b", ""),
            "one append's items are adjacent"
        );
    }
    for w in 0..8 {
        let order: Vec<&str> = h
            .items
            .iter()
            .map(|i| i.id.as_str())
            .filter(|id| id.starts_with(&format!("w{w}-")) && id.ends_with("-a"))
            .collect();
        let expected: Vec<String> = (0..10).map(|k| format!("w{w}-{k}-a")).collect();
        assert_eq!(order, expected, "each writer's appends stay in its order");
    }
}

fn suite(cfg: &StoreConfig) {
    let pool = StorePool::open(cfg).expect("store opens");
    conversations(&pool);
    turns(&pool);
    concurrent_appends(&pool);
}

#[test]
fn sqlite_store_keeps_the_contract_and_survives_reopening() {
    let dir = temp_dir("sqlite");
    let cfg = StoreConfig::Sqlite {
        data_dir: dir.clone(),
    };
    suite(&cfg);
    // A new pool on the same directory (a restart) sees everything committed.
    let pool = StorePool::open(&cfg).expect("reopens");
    let o = Owner::of_key("key-a");
    let chain = pool
        .run_blocking(move |s| s.response_chain(&o, "resp_3"))
        .expect("chain");
    assert_eq!(
        chain,
        Some(vec!["resp_1".to_string(), "resp_3".to_string()])
    );
    drop(pool);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn memory_store_keeps_the_contract() {
    suite(&StoreConfig::Memory);
}

#[test]
fn postgres_store_keeps_the_contract_and_is_shared_by_replicas() {
    let pg = Postgres::start();
    let cfg = StoreConfig::Postgres {
        url: pg.new_database(),
    };
    suite(&cfg);
    // A second pool (another replica) on the same database reads and writes the same rows.
    let other = StorePool::open(&cfg).expect("second pool");
    let o = Owner::of_key("key-a");
    let h = other
        .run_blocking(move |s| s.conversation_history(&o, "conv_2"))
        .expect("h")
        .expect("shared");
    assert_eq!(h.items.len(), 3);
    let o = Owner::of_key("key-a");
    other
        .run_blocking(move |s| s.append_items(&o, "conv_2", &[item("c3")]))
        .expect("append");
    let first = StorePool::open(&cfg).expect("third pool");
    let o = Owner::of_key("key-a");
    assert_eq!(
        first.run_blocking(move |s| s.conversation_version(&o, "conv_2")),
        Ok(Some(3))
    );
}

#[test]
fn an_unreachable_postgres_is_a_clear_error() {
    let err = StorePool::open(&StoreConfig::Postgres {
        url: "postgres://nobody:pw@127.0.0.1:1/none".into(),
    })
    .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{text}");
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("pw@"),
        "{text}"
    );
}
