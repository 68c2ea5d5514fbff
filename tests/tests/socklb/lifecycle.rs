//! gannetd's life around a running data plane: SIGKILL and restart, a flushed ruleset, an
//! invalid manifest, a full map, cleanup.

use std::{process::Command, time::Duration};

use gannet_testkit::{
    agent::{endpoint_slice_yaml, service_yaml},
    probe::{Report, parse_json_output},
    run_in,
};

use crate::fixture::{Cluster, PROBE_TIMEOUT, Plane, VIP4, assert_all_ok};

#[test]
fn sigkill_and_restart_drop_no_request_and_adopt_the_data_plane() {
    sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_on(Plane::Ebpf);
}

#[test]
fn sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_nftables() {
    sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_on(Plane::Nftables);
}

fn sigkill_and_restart_drop_no_request_and_adopt_the_data_plane_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);
    let mut looping = c.spawn_probe(&[
        "loop",
        "--to",
        "10.96.0.10:80",
        "--duration-ms",
        "4000",
        "--interval-ms",
        "2",
    ]);
    std::thread::sleep(Duration::from_millis(700));
    c.agent.stop(libc::SIGKILL).expect("killing gannetd");
    std::thread::sleep(Duration::from_millis(700));
    c.agent.restart().expect("restarting gannetd");
    c.agent
        .wait_log(plane.adopted(), 1)
        .expect("the new gannetd adopts");
    let output = looping.wait_output(Duration::from_secs(30)).unwrap();
    let report: Report = parse_json_output(&output).unwrap();
    assert!(
        report.ok > 100,
        "the client made too few requests: {report:?}"
    );
    assert_eq!(
        report.failed, 0,
        "no request may fail while gannetd is killed and restarted: {report:?}"
    );
    // The restarted agent still applies changes.
    c.publish_endpoints(&[(2, true)]);
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "30"]);
    assert_eq!(after.backend_count("b2"), 30, "after restart: {after:?}");
}

/// nftables only: a firewall service that runs `nft flush ruleset` takes gannet's table with it;
/// gannetd notices within its repair interval (10 s) and programs the table again.
#[test]
fn a_flushed_ruleset_is_programmed_again_nftables() {
    let mut c = Cluster::on(Plane::Nftables, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);
    assert_all_ok(
        &c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "5"]),
        "before the flush",
    );
    let synced = c.agent.log_count("services synced");
    let mut nft = Command::new("nft");
    nft.args(["flush", "ruleset"]);
    let output = run_in(nft, Some(&c.net.pods()[0].netns), None, PROBE_TIMEOUT).unwrap();
    assert!(output.status.success(), "nft flush ruleset: {output:?}");
    assert!(!c.holds_state(), "the flush removed the table");
    c.agent
        .wait_log("was removed or changed outside gannetd", 1)
        .expect("gannetd notices the flush");
    c.agent
        .wait_log("services synced", synced + 1)
        .expect("gannetd programs the table again");
    let after = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "20"]);
    assert_all_ok(&after, "after the repair");
    assert_eq!(after.backends.len(), 2, "both backends again: {after:?}");
}

#[test]
fn invalid_manifest_is_rejected_and_the_running_state_stays() {
    invalid_manifest_is_rejected_and_the_running_state_stays_on(Plane::Ebpf);
}

#[test]
fn invalid_manifest_is_rejected_and_the_running_state_stays_nftables() {
    invalid_manifest_is_rejected_and_the_running_state_stays_on(Plane::Nftables);
}

fn invalid_manifest_is_rejected_and_the_running_state_stays_on(plane: Plane) {
    let mut c = Cluster::on(plane, 2, &[]);
    c.publish(None, &[(1, true), (2, true)]);
    // Break the service: SCTP is not supported.
    c.agent
        .apply(
            "web-svc.yaml",
            &service_yaml("web", &[VIP4], &[("http", 80, "SCTP")], None),
            "manifest rejected",
        )
        .unwrap();
    // Another file changes while this one stays bad: the error is not told again.
    c.agent
        .apply(
            "other-svc.yaml",
            &service_yaml("other", &["10.96.0.99"], &[("http", 80, "TCP")], None),
            "services synced",
        )
        .unwrap();
    let logs = c.agent.logs();
    assert_eq!(
        c.agent.log_count("manifest rejected"),
        1,
        "a bad manifest is logged once while it stays bad: {logs}"
    );
    let line = logs
        .lines()
        .find(|l| l.contains("manifest rejected"))
        .unwrap();
    for part in [
        "web-svc.yaml",
        "Service default/web",
        "spec.ports[0].protocol",
    ] {
        assert!(
            line.contains(part),
            "the error must name {part:?}; it says: {line}"
        );
    }
    let report = c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "20"]);
    assert_all_ok(&report, "the last good state keeps serving");
    assert_eq!(report.backends.len(), 2, "{report:?}");
}

#[test]
fn a_full_map_skips_the_service_that_does_not_fit_and_keeps_the_others() {
    let mut c = Cluster::new(1, &["--max-services", "2"]);
    let b1 = c.backend_v4(1);
    let mut yaml = String::new();
    for (i, name) in ["one", "two", "three"].iter().enumerate() {
        yaml.push_str(&service_yaml(
            name,
            &[&format!("10.96.1.{}", i + 1)],
            &[("http", 80, "TCP")],
            None,
        ));
        yaml.push_str("---\n");
        yaml.push_str(&endpoint_slice_yaml(
            &format!("{name}-1"),
            name,
            "IPv4",
            &[("http", "TCP")],
            &[(b1.clone(), true)],
        ));
        yaml.push_str("---\n");
    }
    c.agent
        .apply("three.yaml", &yaml, "manifests applied")
        .unwrap();
    let logs = c.agent.logs();
    assert!(
        logs.contains("could not program service") && logs.contains("default/three"),
        "the log must name the service that did not fit; log:\n{logs}"
    );
    for vip in ["10.96.1.1:80", "10.96.1.2:80"] {
        let report = c.probe(&["tcp", "--to", vip, "--count", "5"]);
        assert_all_ok(&report, vip);
    }
}

#[test]
fn cleanup_detaches_everything() {
    cleanup_detaches_everything_on(Plane::Ebpf);
}

#[test]
fn cleanup_detaches_everything_nftables() {
    cleanup_detaches_everything_on(Plane::Nftables);
}

fn cleanup_detaches_everything_on(plane: Plane) {
    let mut c = Cluster::on(plane, 1, &[]);
    c.publish(None, &[(1, true)]);
    assert_all_ok(
        &c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"]),
        "before cleanup",
    );
    let refused = c
        .agent
        .cleanup()
        .expect_err("cleanup must refuse while gannetd runs");
    assert!(
        refused.to_string().contains("still running"),
        "the refusal must say why: {refused:#}"
    );
    assert!(c.holds_state(), "a refused cleanup removes nothing");
    c.agent.stop(libc::SIGTERM).unwrap();
    // SIGTERM leaves the data plane running.
    assert_all_ok(
        &c.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "3"]),
        "after SIGTERM",
    );
    c.agent.cleanup().unwrap();
    assert!(
        !c.holds_state(),
        "cleanup must remove {} (eBPF) or the table inet gannet-services (nftables)",
        c.agent.bpf_root().display()
    );
    let after = c.probe(&[
        "--timeout-ms",
        "300",
        "tcp",
        "--to",
        "10.96.0.10:80",
        "--count",
        "1",
    ]);
    assert_eq!(
        after.ok, 0,
        "after cleanup the ClusterIP must no longer be translated: {after:?}"
    );
}
