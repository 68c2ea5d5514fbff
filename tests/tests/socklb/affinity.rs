//! ClientIP session affinity: a client pinned to one backend, and never to another backend that
//! reuses a released backend id.

use gannet_testkit::{
    agent::{AGENT_TIMEOUT, endpoint_slice_yaml, service_yaml},
    bpftool,
};

use crate::fixture::{Cluster, Plane, assert_all_ok};

#[test]
fn client_ip_affinity_pins_a_client_to_one_backend() {
    client_ip_affinity_pins_a_client_to_one_backend_on(Plane::Ebpf);
}

#[test]
fn client_ip_affinity_pins_a_client_to_one_backend_nftables() {
    client_ip_affinity_pins_a_client_to_one_backend_on(Plane::Nftables);
}

fn client_ip_affinity_pins_a_client_to_one_backend_on(plane: Plane) {
    let mut c = Cluster::on(plane, 3, &[]);
    c.publish(Some(600), &[(1, true), (2, true), (3, true)]);
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "60"]);
    assert_all_ok(&report, "connections with ClientIP affinity");
    assert_eq!(
        report.backends.len(),
        1,
        "ClientIP affinity must pin the client to one backend: {:?}",
        report.backends
    );
    // Removing the pinned backend moves the client on, and it stays pinned to the new one.
    let pinned: usize = report.backends.keys().next().unwrap()[1..].parse().unwrap();
    let rest: Vec<(usize, bool)> = (1..=3)
        .filter(|i| *i != pinned)
        .map(|i| (i, true))
        .collect();
    c.publish_endpoints(&rest);
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "30"]);
    assert_all_ok(&after, "connections after the pinned backend left");
    assert_eq!(
        after.backends.len(),
        1,
        "pinned again: {:?}",
        after.backends
    );
    assert_eq!(
        after.backend_count(&format!("b{pinned}")),
        0,
        "the removed backend must not be used: {:?}",
        after.backends
    );
}

/// The id of backend `ip:8080` in `GANNET_BACKENDS` (value: IPv4-mapped address, port in network
/// order), if it is there.
fn backend_id(root: &std::path::Path, ip: std::net::Ipv4Addr) -> Option<u32> {
    let mut want = ip.to_ipv6_mapped().octets().to_vec();
    want.extend_from_slice(&8080u16.to_be_bytes());
    bpftool::map_dump(&root.join("maps/GANNET_BACKENDS"))
        .into_iter()
        .find(|(_, value)| value.get(..18) == Some(&want[..]))
        .map(|(key, _)| u32::from_ne_bytes(key[..4].try_into().expect("a u32 key")))
}

#[test]
fn affinity_never_follows_a_reused_backend_id_to_another_backend() {
    let mut c = Cluster::new(3, &[]);
    let root = c.agent.bpf_root().to_owned();
    // web, with ClientIP affinity, has b1; the client is pinned to it.
    c.publish(Some(600), &[(1, true)]);
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "1"]);
    assert_eq!(report.backend_count("b1"), 1, "web has only b1: {report:?}");
    let b1 = c.net.pods()[1].ipv4;
    let b1_id = backend_id(&root, b1).expect("b1 in the backend map");
    let affinity_pin = root.join("maps/GANNET_AFFINITY");
    // The client's entries, as a purge that failed (or a crash before it) would leave them.
    let stale = bpftool::map_dump(&affinity_pin);
    assert!(
        stale.iter().any(|(_, v)| v[..4] == b1_id.to_ne_bytes()),
        "an affinity entry for b1 (id {b1_id}): {stale:?}"
    );

    // b1 leaves web for b2; once b1's id is freed, another service's backend b3 takes it.
    c.publish_endpoints(&[(1, false), (2, true)]);
    gannet_testkit::eventually("b1's backend id to be freed", AGENT_TIMEOUT, || {
        backend_id(&root, b1).is_none().then_some(())
    });
    c.agent
        .apply(
            "other.yaml",
            &format!(
                "{}---\n{}",
                service_yaml("other", &["10.96.0.20"], &[("http", 80, "TCP")], None),
                endpoint_slice_yaml(
                    "other-1",
                    "other",
                    "IPv4",
                    &[("http", "TCP")],
                    &[(c.backend_v4(3), true)],
                )
            ),
            "manifests applied",
        )
        .expect("service other applied");
    assert_eq!(
        backend_id(&root, c.net.pods()[3].ipv4),
        Some(b1_id),
        "b3 must have taken b1's freed id (the case this test is about)"
    );

    // The stale entries come back, fresh (bpf_ktime_get_ns is CLOCK_MONOTONIC).
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) },
        0
    );
    let now_ns =
        u64::try_from(now.tv_sec).unwrap() * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap();
    for (key, value) in &stale {
        let mut value = value.clone();
        value[8..16].copy_from_slice(&now_ns.to_ne_bytes());
        bpftool::map_update(&affinity_pin, key, &value);
    }
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "5"]);
    assert_eq!(
        after.backend_count("b2"),
        5,
        "a stale affinity entry must not send web's client to b3, another service's backend \
         that reuses the id: {after:?}"
    );
}
