//! The redb store against a BTreeMap model, and its durability under kill -9.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;
use wk::store::{Error, EventKind, RedbStore, Store};

use crate::harness::WK;

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u8),
    Update {
        key: u8,
        value: u8,
        precondition: Precondition,
    },
    Delete {
        key: u8,
        precondition: Precondition,
    },
}

#[derive(Clone, Copy, Debug)]
enum Precondition {
    None,
    Current,
    Stale,
}

fn precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        Just(Precondition::None),
        Just(Precondition::Current),
        Just(Precondition::Stale)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Create(k, v)),
        (0u8..6, any::<u8>(), precondition()).prop_map(|(key, value, precondition)| Op::Update {
            key,
            value,
            precondition
        }),
        (0u8..6, precondition()).prop_map(|(key, precondition)| Op::Delete { key, precondition }),
    ]
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Rev(u64),
    AlreadyExists,
    NotFound,
    Conflict,
}

fn outcome<T>(r: Result<T, Error>, rev: impl Fn(&T) -> u64) -> Outcome {
    match r {
        Ok(t) => Outcome::Rev(rev(&t)),
        Err(Error::AlreadyExists(_)) => Outcome::AlreadyExists,
        Err(Error::NotFound(_)) => Outcome::NotFound,
        Err(Error::Conflict { .. }) => Outcome::Conflict,
        Err(e) => panic!("unexpected store error: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn redb_store_behaves_like_a_btreemap(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = RedbStore::open(&dir.path().join("s.redb")).unwrap();
            let mut watch = store.watch("/k/", 1).await.unwrap();
            let mut model: BTreeMap<String, (u64, Vec<u8>)> = BTreeMap::new();
            let mut rev = 0u64;
            let mut expected_events = Vec::new();
            for op in ops {
                let (got, want) = match op {
                    Op::Create(k, v) => {
                        let key = format!("/k/{k}");
                        let got = outcome(store.create(&key, Bytes::from(vec![v])).await, |r| *r);
                        let want = if model.contains_key(&key) { Outcome::AlreadyExists } else {
                            rev += 1;
                            model.insert(key.clone(), (rev, vec![v]));
                            expected_events.push((EventKind::Created, key, rev, vec![v]));
                            Outcome::Rev(rev)
                        };
                        (got, want)
                    }
                    Op::Update { key, value, precondition } => {
                        let key = format!("/k/{key}");
                        let current = model.get(&key).map(|(r, _)| *r);
                        let expected = match precondition { Precondition::None => None, Precondition::Current => Some(current.unwrap_or(0)), Precondition::Stale => Some(current.unwrap_or(0) + 1000) };
                        let got = outcome(store.update(&key, Bytes::from(vec![value]), expected).await, |r| *r);
                        let want = match current {
                            None => Outcome::NotFound,
                            Some(c) if expected.is_some_and(|e| e != c) => Outcome::Conflict,
                            Some(_) => {
                                rev += 1;
                                model.insert(key.clone(), (rev, vec![value]));
                                expected_events.push((EventKind::Updated, key, rev, vec![value]));
                                Outcome::Rev(rev)
                            }
                        };
                        (got, want)
                    }
                    Op::Delete { key, precondition } => {
                        let key = format!("/k/{key}");
                        let current = model.get(&key).cloned();
                        let expected = match precondition { Precondition::None => None, Precondition::Current => Some(current.as_ref().map_or(0, |c| c.0)), Precondition::Stale => Some(current.as_ref().map_or(0, |c| c.0) + 1000) };
                        let got = outcome(store.delete(&key, expected).await, |kv| kv.mod_revision);
                        let want = match current {
                            None => Outcome::NotFound,
                            Some((c, _)) if expected.is_some_and(|e| e != c) => Outcome::Conflict,
                            Some((_, last)) => {
                                rev += 1;
                                model.remove(&key);
                                expected_events.push((EventKind::Deleted, key, rev, last));
                                Outcome::Rev(rev)
                            }
                        };
                        (got, want)
                    }
                };
                assert_eq!(got, want);
            }
            let (listed, list_rev) = store.list("/k/").await.unwrap();
            assert_eq!(list_rev, rev);
            let listed: BTreeMap<String, (u64, Vec<u8>)> = listed.into_iter().map(|kv| (kv.key, (kv.mod_revision, kv.value.to_vec()))).collect();
            assert_eq!(listed, model);
            assert_eq!(store.current_revision().await.unwrap(), rev);
            let mut seen = Vec::new();
            while seen.len() < expected_events.len() {
                let e = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.expect("watch event").expect("stream open").expect("event");
                seen.push((e.kind, e.kv.key, e.kv.mod_revision, e.kv.value.to_vec()));
            }
            assert_eq!(seen, expected_events);
            // A watch that starts in the past replays from there.
            if rev > 1 {
                let mut replay = store.watch("/k/", rev).await.unwrap();
                let e = tokio::time::timeout(Duration::from_secs(5), replay.next()).await.unwrap().unwrap().unwrap();
                assert_eq!(e.kv.mod_revision, rev);
            }
        });
    }
}

#[test]
fn reopening_keeps_every_write_and_the_revision() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            store.create("/a", Bytes::from_static(b"1")).await.unwrap();
            store
                .update("/a", Bytes::from_static(b"2"), Some(1))
                .await
                .unwrap();
            store.create("/b", Bytes::from_static(b"3")).await.unwrap();
            store.delete("/b", None).await.unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.current_revision().await.unwrap(), 4);
        let a = store.get("/a").await.unwrap().unwrap();
        assert_eq!((a.value.as_ref(), a.mod_revision), (&b"2"[..], 2));
        assert!(store.get("/b").await.unwrap().is_none());
        assert_eq!(
            store.create("/c", Bytes::from_static(b"4")).await.unwrap(),
            5
        );
        assert!(
            matches!(store.watch("/", 1).await, Err(Error::Compacted { .. })),
            "history from before the restart is not replayable"
        );
    });
}

#[tokio::test]
async fn a_database_half_made_by_a_killed_process_does_not_block_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.redb");
    // What a process killed while creating the database leaves behind.
    std::fs::write(dir.path().join("state.redb.creating"), b"redb\x1a\x0a").unwrap();
    let store = RedbStore::open(&db).expect("opens beside a half-made file");
    assert_eq!(
        store.create("/a", Bytes::from_static(b"1")).await.unwrap(),
        1
    );
    drop(store);
    assert!(!dir.path().join("state.redb.creating").exists());
    let store = RedbStore::open(&db).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 1);
}

#[test]
fn acknowledged_writes_survive_kill_minus_nine() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..20 {
        let mut child = Command::new(WK)
            .args(["debug", "store-writer", "--writers", "8", "--db"])
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.push(line);
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(5..300)));
        child.kill().expect("kill -9");
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        for line in lines {
            assert!(!line.starts_with("ERROR"), "round {round}: {line}");
            let (key, rev) = line.split_once(' ').unwrap();
            acked.push((key.to_owned(), rev.parse().unwrap()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = RedbStore::open(&db).expect("reopens after kill -9");
            assert!(
                !store.repaired_on_open(),
                "round {round}: the store needed repair"
            );
            let (all, rev) = store.list("/crash/").await.unwrap();
            let stored: BTreeMap<String, u64> = all
                .into_iter()
                .map(|kv| (kv.key, kv.mod_revision))
                .collect();
            for (key, r) in &acked {
                assert_eq!(
                    stored.get(key),
                    Some(r),
                    "round {round}: acknowledged write {key}@{r} lost"
                );
                assert!(rev >= *r);
            }
        });
    }
    assert!(
        acked.len() > 100,
        "the writer acknowledged only {} writes",
        acked.len()
    );
}
