//! The store contract, run against both backends: the embedded redb file and a real etcd on
//! loopback. Then what only etcd does: replicas sharing it, and a member killed under writes.

#![expect(
    unused_crate_dependencies,
    reason = "a test binary links every dependency of the package"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Etcd, embedded};
use gannet_control::store::{Compare, EtcdStore, EtcdTls, EventKind, Op, Store, StoreError};

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
    }
}

fn absent(key: &str) -> Compare {
    Compare {
        key: key.to_owned(),
        mod_revision: 0,
    }
}

async fn transactions_compare_and_list_is_consistent(store: Arc<dyn Store>) {
    let first = store
        .txn(
            vec![absent("a/1"), absent("a/2")],
            vec![put("a/1", "x"), put("a/2", "y")],
        )
        .await
        .expect("txn")
        .expect("both absent");
    // The same compare fails now, and writes nothing.
    let again = store
        .txn(vec![absent("a/1")], vec![put("a/3", "z")])
        .await
        .expect("txn");
    assert_eq!(again, None, "compare on an existing key must fail");
    assert_eq!(
        store.get("a/3").await.expect("get"),
        None,
        "a failed txn wrote"
    );

    let (items, revision) = store.list("a/").await.expect("list");
    assert_eq!(revision, first);
    assert_eq!(
        items.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
        vec!["a/1", "a/2"]
    );
    assert!(
        items
            .iter()
            .all(|kv| kv.mod_revision == first && kv.create_revision == first)
    );

    let updated = store
        .txn(
            vec![Compare {
                key: "a/1".to_owned(),
                mod_revision: first,
            }],
            vec![
                put("a/1", "x2"),
                Op::Delete {
                    key: "a/2".to_owned(),
                },
            ],
        )
        .await
        .expect("txn")
        .expect("revision matches");
    assert!(updated > first);
    let a1 = store.get("a/1").await.expect("get").expect("a/1 exists");
    assert_eq!(
        (a1.value.as_slice(), a1.mod_revision, a1.create_revision),
        (&b"x2"[..], updated, first)
    );
    assert_eq!(store.get("a/2").await.expect("get"), None);
    // A prefix is a prefix: "a/" does not list "ab".
    store
        .txn(Vec::new(), vec![put("ab", "other")])
        .await
        .expect("txn");
    assert_eq!(store.list("a/").await.expect("list").0.len(), 1);
}

async fn watch_resumes_and_compaction_expires(store: Arc<dyn Store>) {
    let r1 = store
        .txn(Vec::new(), vec![put("w/1", "a")])
        .await
        .expect("txn")
        .expect("written");
    let r2 = store
        .txn(Vec::new(), vec![put("w/2", "b"), put("w/3", "c")])
        .await
        .expect("txn")
        .expect("written");
    let r3 = store
        .txn(
            Vec::new(),
            vec![
                Op::Delete {
                    key: "w/1".to_owned(),
                },
                put("other/x", "-"),
            ],
        )
        .await
        .expect("txn")
        .expect("written");

    // From r1: the two later revisions, each one batch, only keys under the prefix.
    let mut watch = store.watch("w/", r1).await.expect("watch");
    let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10s")
        .expect("stream open")
        .expect("no error");
    assert_eq!(
        batch
            .iter()
            .map(|e| (e.key.as_str(), e.revision, e.kind, e.created))
            .collect::<Vec<_>>(),
        vec![
            ("w/2", r2, EventKind::Put, true),
            ("w/3", r2, EventKind::Put, true)
        ]
    );
    let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10s")
        .expect("stream open")
        .expect("no error");
    assert_eq!(batch.len(), 1, "{batch:?}");
    assert_eq!(
        (batch[0].key.as_str(), batch[0].kind, batch[0].revision),
        ("w/1", EventKind::Delete, r3)
    );
    assert_eq!(batch[0].value, b"a", "a delete carries the last value");

    // Live events arrive too.
    let r4 = store
        .txn(Vec::new(), vec![put("w/2", "b2")])
        .await
        .expect("txn")
        .expect("written");
    let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a live event within 10s")
        .expect("stream open")
        .expect("no error");
    assert_eq!(
        (batch[0].key.as_str(), batch[0].revision, batch[0].created),
        ("w/2", r4, false)
    );
    drop(watch);

    // After compaction, resuming from before it is an explicit error; from after it works.
    store.compact(r3).await.expect("compact");
    let expired = match store.watch("w/", r1).await {
        Err(error) => error,
        Ok(mut watch) => tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an answer within 10s")
            .expect("stream open")
            .expect_err("a watch from a compacted revision must fail"),
    };
    assert!(
        matches!(expired, StoreError::Compacted { .. }),
        "{expired:?}"
    );
    let mut watch = store
        .watch("w/", r3)
        .await
        .expect("watch after the compacted revision");
    let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an event within 10s")
        .expect("stream open")
        .expect("no error");
    assert_eq!(batch[0].revision, r4);
}

#[tokio::test]
async fn embedded_transactions_compare_and_list_is_consistent() {
    let (store, _dir) = embedded();
    transactions_compare_and_list_is_consistent(store).await;
}

#[tokio::test]
async fn embedded_watch_resumes_and_compaction_expires() {
    let (store, _dir) = embedded();
    watch_resumes_and_compaction_expires(store).await;
}

#[tokio::test]
async fn embedded_store_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("control.redb");
    let revision = {
        let store = gannet_control::store::EmbeddedStore::open(&path).expect("open");
        store
            .txn(Vec::new(), vec![put("first", "-")])
            .await
            .expect("txn");
        store
            .txn(Vec::new(), vec![put("k", "v")])
            .await
            .expect("txn")
            .expect("written")
    };
    let store = gannet_control::store::EmbeddedStore::open(&path).expect("reopen");
    assert_eq!(store.current_revision().await.expect("revision"), revision);
    let kv = store.get("k").await.expect("get").expect("kept");
    assert_eq!(kv.value, b"v");
    let mut watch = store.watch("", revision - 1).await.expect("history kept");
    let batch = watch.next().await.expect("open").expect("ok");
    assert_eq!(batch[0].key, "k");
}

/// A restarted gannet-control may start while the old one still has the file open: the new
/// one waits for it (up to 10 s) instead of failing with "Database already open".
#[test]
fn a_second_open_of_the_store_waits_for_the_first_to_close() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("control.redb");
    let first = gannet_control::store::EmbeddedStore::open(&path).expect("open");
    let second = {
        let path = path.clone();
        std::thread::spawn(move || gannet_control::store::EmbeddedStore::open(&path).map(drop))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !second.is_finished(),
        "the second open must wait while the first has the file: {:?}",
        second.join()
    );
    drop(first);
    second
        .join()
        .expect("the opening thread")
        .expect("the second open succeeds once the first closed the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_contract() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let store: Arc<dyn Store> = Arc::new(EtcdStore::new(&etcd.endpoints(), "/t1/").expect("store"));
    transactions_compare_and_list_is_consistent(Arc::clone(&store)).await;
    // A second prefix on the same etcd sees nothing of the first.
    let other: Arc<dyn Store> = Arc::new(EtcdStore::new(&etcd.endpoints(), "/t2/").expect("store"));
    assert!(other.list("").await.expect("list").0.is_empty());
    watch_resumes_and_compaction_expires(other).await;
}

/// etcd serving TLS with `--client-cert-auth` (as kube-apiserver's etcd usually runs): the store
/// keeps its contract with the CA and a client certificate; without the certificate, or over
/// plain HTTP, etcd is unreachable and the error says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start_tls(1))
        .await
        .expect("etcd");
    let store: Arc<dyn Store> = Arc::new(etcd.store("/tls/"));
    transactions_compare_and_list_is_consistent(Arc::clone(&store)).await;
    watch_resumes_and_compaction_expires(Arc::new(etcd.store("/tls-watch/"))).await;

    let tls = etcd.tls.clone().expect("TLS material");
    let anonymous = EtcdStore::with_tls(
        &etcd.endpoints(),
        "/tls/",
        Some(&EtcdTls {
            client: None,
            ..tls
        }),
    )
    .expect("endpoints");
    let refused = anonymous.check().await;
    assert!(
        refused.is_err(),
        "etcd requires a client certificate: {refused:?}"
    );
    let plain: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|e| e.replace("https://", "http://"))
        .collect();
    let plain = EtcdStore::new(&plain, "/tls/").expect("endpoints");
    let refused = plain.check().await;
    assert!(refused.is_err(), "etcd serves only TLS: {refused:?}");
    assert!(
        EtcdStore::new(&etcd.endpoints(), "/tls/").is_err(),
        "an https:// endpoint without TLS material is refused at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_write_through_one_replica_reaches_a_watcher_on_another() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let replica_a = EtcdStore::new(&etcd.endpoints(), "/gannet/").expect("store");
    let replica_b = EtcdStore::new(&etcd.endpoints(), "/gannet/").expect("store");
    let mut watch = replica_b.watch("registry/", 0).await.expect("watch");
    let revision = replica_a
        .txn(Vec::new(), vec![put("registry/services/default/web", "{}")])
        .await
        .expect("txn")
        .expect("written");
    let batch = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("replica B sees replica A's write within 10s")
        .expect("open")
        .expect("ok");
    assert_eq!(
        (batch[0].key.as_str(), batch[0].revision),
        ("registry/services/default/web", revision)
    );
}

/// Three members; one is killed while a writer keeps writing through the store (which fails over
/// between members) and a watcher keeps watching: every acknowledged write is in etcd afterwards,
/// and the watcher saw every one of them, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_three_members_one_killed_while_writing_loses_nothing() {
    let mut etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let endpoints = etcd.endpoints();
    let writer = Arc::new(EtcdStore::new(&endpoints, "/gannet/").expect("store"));
    // The watcher prefers the member that will be killed, so it has to resume elsewhere.
    let watcher = EtcdStore::new(&endpoints, "/gannet/").expect("store");
    let start = writer.current_revision().await.expect("revision");
    let mut watch = watcher.watch("load/", start).await.expect("watch");

    const WRITES: usize = 300;
    let task = {
        let writer = Arc::clone(&writer);
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..WRITES {
                let key = format!("load/{i:04}");
                // Each write is retried by the store across members; a write that still fails
                // is not acknowledged and must not be counted.
                if let Ok(Some(revision)) = writer
                    .txn(vec![absent(&key)], vec![put(&key, &i.to_string())])
                    .await
                {
                    acknowledged.push((key, revision));
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| etcd.kill(0));
    let acknowledged = task.await.expect("writer");
    assert!(
        acknowledged.len() >= WRITES * 9 / 10,
        "only {} of {WRITES} writes succeeded with two of three members up",
        acknowledged.len()
    );
    let (stored, _) = writer.list("load/").await.expect("list from the survivors");
    let stored: std::collections::HashMap<String, u64> = stored
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect();
    for (key, revision) in &acknowledged {
        assert_eq!(
            stored.get(key),
            Some(revision),
            "acknowledged write {key} lost"
        );
    }
    let mut seen = Vec::new();
    while seen.len() < stored.len() {
        let batch = tokio::time::timeout(Duration::from_secs(15), watch.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "watcher stalled after {} of {} events",
                    seen.len(),
                    stored.len()
                )
            })
            .expect("open")
            .expect("no error");
        seen.extend(batch.into_iter().map(|event| (event.key, event.revision)));
    }
    let mut expected: Vec<(String, u64)> = stored.into_iter().collect();
    expected.sort_by_key(|(_, revision)| *revision);
    assert_eq!(
        seen, expected,
        "the watcher must see every write once, in revision order"
    );
}

/// Which member a failover measurement kills.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The first of the store's endpoints (the one gannet's client talks to first), whatever its
    /// role.
    First,
    /// The raft leader, with a follower as the store's first endpoint.
    Leader,
    /// A follower, as the store's first endpoint.
    Follower,
}

/// Whether the member serving `client_url` (plain `http://`) is the raft leader, from its
/// `/metrics`.
fn is_leader(client_url: &str) -> bool {
    use std::io::{Read, Write};
    let addr = client_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr)
        .unwrap_or_else(|e| panic!("connecting to {client_url} for /metrics: {e}"));
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("GET /metrics");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("reading {client_url}/metrics: {e}"));
    response
        .lines()
        .any(|line| line == "etcd_server_is_leader 1")
}

/// One put-then-get loop through a store on 3 members while one of them (`victim`) is killed
/// with SIGKILL one second in: how long the loop stalled, and how many operations failed
/// outright (the store gave up instead of failing over).
struct Failover {
    /// Whether the killed member was the leader.
    killed_leader: bool,
    /// From the kill to the first operation completing successfully after it.
    recovery: Duration,
    /// The longest time between two successful operations, over the whole loop.
    longest_gap: Duration,
    succeeded: usize,
    failed: usize,
}

async fn measure_failover(victim: Victim) -> Failover {
    use std::time::Instant;
    let mut etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let mut endpoints = etcd.endpoints();
    let leader = endpoints
        .iter()
        .position(|url| is_leader(url))
        .expect("one member reports etcd_server_is_leader 1");
    // `killed` indexes the cluster's members, in their original order.
    let killed = match victim {
        Victim::First => 0,
        Victim::Leader => {
            // The follower after the leader first, so gannet's client talks to it.
            let members = endpoints.len();
            endpoints.rotate_left((leader + 1) % members);
            leader
        }
        Victim::Follower => {
            let follower = (leader + 1) % endpoints.len();
            endpoints.rotate_left(follower);
            follower
        }
    };
    let store = Arc::new(EtcdStore::new(&endpoints, "/failover/").expect("store"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut completions = Vec::new();
            let mut failed = 0;
            let mut i = 0_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("k/{}", i % 100);
                let value = i.to_string();
                let written = store.txn(Vec::new(), vec![put(&key, &value)]).await;
                let read = match written {
                    Ok(_) => store.get(&key).await.map(|_| ()),
                    Err(error) => Err(error),
                };
                match read {
                    Ok(()) => completions.push(Instant::now()),
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (completions, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    tokio::task::block_in_place(|| etcd.kill(killed));
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (completions, failed) = task.await.expect("the loop");
    let recovery = completions
        .iter()
        .find(|at| **at > killed_at)
        .map(|at| at.duration_since(killed_at))
        .expect("no operation succeeded after the kill, in 4 s with two of three members up");
    let longest_gap = completions
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .unwrap_or_default();
    Failover {
        killed_leader: killed == leader,
        recovery,
        longest_gap,
        succeeded: completions.len(),
        failed,
    }
}

/// A measurement, not a check of time (see README, "Running gannet-control"): failover when the
/// first endpoint, the leader or a follower is killed, each `GANNET_FAILOVER_RUNS` times
/// (default 3), then 1 000 sequential puts and 1 000
/// gets on a healthy 3-member cluster. Run with
/// `cargo test -p gannet-control --test store -- --ignored --nocapture etcd_failover_and_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints numbers for the README, takes ~30 s"]
async fn etcd_failover_and_throughput() {
    use std::time::Instant;
    if std::env::var_os("RUST_LOG").is_some() {
        // What the store did while it stalled (its retries are logged at debug).
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .init();
    }
    let runs: usize = std::env::var("GANNET_FAILOVER_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(3);
    for (victim, run) in [Victim::First, Victim::Leader, Victim::Follower]
        .into_iter()
        .flat_map(|victim| (1..=runs).map(move |run| (victim, run)))
    {
        let failover = measure_failover(victim).await;
        println!(
            "failover {victim:?} run {run} (killed the {}): first success {:.1} ms after the \
             kill, longest gap {:.1} ms, {} put+get pairs succeeded, {} failed",
            if failover.killed_leader {
                "leader"
            } else {
                "a follower"
            },
            failover.recovery.as_secs_f64() * 1e3,
            failover.longest_gap.as_secs_f64() * 1e3,
            failover.succeeded,
            failover.failed,
        );
    }

    let etcd = tokio::task::spawn_blocking(|| Etcd::start(3))
        .await
        .expect("etcd");
    let store = EtcdStore::new(&etcd.endpoints(), "/throughput/").expect("store");
    const N: usize = 1000;
    let started = Instant::now();
    for i in 0..N {
        store
            .txn(Vec::new(), vec![put(&format!("k/{i:04}"), "value")])
            .await
            .expect("put")
            .expect("an unconditional put is written");
    }
    let puts = started.elapsed();
    let started = Instant::now();
    for i in 0..N {
        store
            .get(&format!("k/{i:04}"))
            .await
            .expect("get")
            .expect("the key was written");
    }
    let gets = started.elapsed();
    println!(
        "{N} sequential puts: {:.0} ms ({:.0}/s); {N} sequential gets: {:.0} ms ({:.0}/s)",
        puts.as_secs_f64() * 1e3,
        N as f64 / puts.as_secs_f64(),
        gets.as_secs_f64() * 1e3,
        N as f64 / gets.as_secs_f64(),
    );
}
