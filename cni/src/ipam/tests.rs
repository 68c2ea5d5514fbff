use super::records::INDEX_MARKER;
use super::*;

fn range(subnet: &str) -> RangeConf {
    RangeConf {
        subnet: subnet.parse().expect("cidr"),
        range_start: None,
        range_end: None,
        gateway: None,
    }
}

fn att(id: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

#[test]
fn candidates_skip_network_broadcast_and_gateway_and_wrap() {
    let mut r = range("10.0.0.0/29");
    r.gateway = Some("10.0.0.1".parse().expect("ip"));
    let all: Vec<String> = Candidates::new(&[r.clone()], None)
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(
        all,
        ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    );
    let from: Vec<String> = Candidates::new(&[r], Some("10.0.0.5".parse().expect("ip")))
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(
        from,
        ["10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
    );
    let v6: Vec<String> = Candidates::new(&[range("fd00::/126")], None)
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(v6, ["fd00::1", "fd00::2", "fd00::3"]);
    assert_eq!(
        Candidates::new(&[range("fd00::/64")], None)
            .next()
            .map(|i| i.to_string())
            .as_deref(),
        Some("fd00::1")
    );
}

#[test]
fn allocate_reuse_release_exhaust_gc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::new(dir.path().join("net"));
    let sets = vec![vec![range("10.0.0.0/30")], vec![range("fd00::/126")]];
    let a = store.allocate(&sets, &att("a"), &[]).expect("a");
    assert_eq!(
        a.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.1/32", "fd00::1/128"]
    );
    assert_eq!(
        store.allocate(&sets, &att("a"), &[]).expect("again"),
        a,
        "a retried ADD reuses"
    );
    let b = store.allocate(&sets, &att("b"), &[]).expect("b");
    assert_eq!(b[0].to_string(), "10.0.0.2/32");
    let err = store.allocate(&sets, &att("c"), &[]).expect_err("full");
    assert!(
        matches!(
            err,
            IpamError::Exhausted {
                set: 0,
                allocated: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.list().expect("list").len(),
        4,
        "a failed allocation leaves nothing"
    );
    assert_eq!(store.release(&att("a")).expect("release").len(), 2);
    assert!(store.release(&att("a")).expect("release twice").is_empty());
    let c = store.allocate(&sets, &att("c"), &[]).expect("c");
    assert_eq!(
        c[0].to_string(),
        "10.0.0.1/32",
        "wraps around to the freed address"
    );
    let valid: HashSet<Attachment> = [att("c")].into_iter().collect();
    let gone = store.gc(&valid).expect("gc");
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|r| r.attachment == att("b")));
    assert_eq!(store.lookup(&att("c")).expect("lookup").len(), 2);
}

#[test]
fn requested_addresses_and_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::new(dir.path().join("net"));
    let mut v4 = range("10.0.0.0/24");
    v4.range_start = Some("10.0.0.10".parse().expect("ip"));
    v4.gateway = Some("10.0.0.20".parse().expect("ip"));
    let sets = vec![vec![v4], vec![range("fd00::/120")]];
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let got = store
        .allocate(&sets, &att("a"), &[ip("10.0.0.50")])
        .expect("requested v4, dynamic v6");
    assert_eq!(
        got.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.50/32", "fd00::1/128"]
    );
    assert_eq!(
        store
            .allocate(&sets, &att("a"), &[ip("10.0.0.50")])
            .expect("retried"),
        got
    );
    for (bad, what) in [
        ("10.0.0.5", "before rangeStart"),
        ("10.0.0.20", "the gateway"),
        ("10.0.0.255", "broadcast"),
        ("10.1.0.1", "outside"),
    ] {
        let err = store
            .allocate(&sets, &att("b"), &[ip(bad)])
            .expect_err(what);
        assert!(
            matches!(err, IpamError::OutOfRange { ip: i, .. } if i == ip(bad)),
            "{what}: {err}"
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
    let err = store
        .allocate(&sets, &att("b"), &[ip("10.0.0.50")])
        .expect_err("taken");
    assert!(err.to_string().contains("a/eth0"), "{err}");
    let err = store
        .allocate(&sets, &att("a"), &[ip("10.0.0.51")])
        .expect_err("another request for a");
    assert!(matches!(err, IpamError::AlreadyHolds { .. }), "{err}");
    let err = store
        .allocate(&sets, &att("b"), &[ip("10.0.0.60"), ip("10.0.0.61")])
        .expect_err("two in one set");
    assert!(
        matches!(err, IpamError::TwoInOneSet { set: 0, .. }),
        "{err}"
    );
    assert_eq!(
        store.list().expect("list").len(),
        2,
        "failures left nothing"
    );
    let b = store
        .allocate(&sets, &att("b"), &[ip("fd00::77")])
        .expect("requested v6");
    assert_eq!(b[1].to_string(), "fd00::77/128");
    assert_eq!(
        b[0].to_string(),
        "10.0.0.10/32",
        "rangeStart, the first dynamic"
    );

    // The index agrees with the records; a stale index entry (a crash between writing the
    // index and linking the record) counts for nothing.
    let index = store.dir().join(INDEX_DIR).join("a:eth0");
    let text = fs::read_to_string(&index).expect("index of a");
    assert!(
        text.contains("10.0.0.50") && text.contains("fd00::1"),
        "{text}"
    );
    fs::write(&index, format!("{text}10.0.0.99\n")).expect("stale entry");
    assert_eq!(
        store.lookup(&att("a")).expect("lookup"),
        [ip("10.0.0.50"), ip("fd00::1")]
    );
    assert_eq!(store.release(&att("a")).expect("release").len(), 2);
    assert!(!index.exists(), "the index goes with the records");
    assert_eq!(store.lookup(&att("b")).expect("lookup b").len(), 2);

    // A store without the index (an older version's) is indexed on first use.
    fs::remove_dir_all(store.dir().join(INDEX_DIR)).expect("drop the index");
    fs::remove_file(store.dir().join(INDEX_MARKER)).expect("drop the marker");
    assert_eq!(store.release(&att("b")).expect("release b").len(), 2);
    assert!(store.list().expect("list").is_empty());
}
