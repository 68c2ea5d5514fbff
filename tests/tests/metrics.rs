//! The daemons' Prometheus metrics, scraped from the real binaries: values that must move when
//! services are applied, pods registered, requests made and watches opened; and a metrics address
//! that cannot be bound stops a daemon at start, leaving nothing behind.
//!
//! The fixtures start every daemon on `--metrics-address 127.0.0.1:0` (tests run many at once)
//! and find the port in its log. Nothing here touches the root network namespace's interfaces or
//! the root cgroup.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{net::TcpListener, process::Command, time::Duration};

use gannet_testkit::{
    Cgroup, Netns, ScratchDir,
    agent::{Agent, endpoint_slice_yaml, service_yaml},
    bin_path,
    cni::{cni, cni_output, pod_ip},
    control::ControlPlane,
    eventually,
    metrics::{series, value},
    run_in, unique_name,
};
use serde_json::json;

/// A service `web` (10.96.7.7:80/TCP) with two ready backends, as manifests.
fn web_service() -> String {
    let service = service_yaml("web", &["10.96.7.7"], &[("http", 80, "TCP")], None);
    let slice = endpoint_slice_yaml(
        "web-1",
        "web",
        "IPv4",
        &[("http", "TCP")],
        &[
            ("10.244.9.11".to_owned(), true),
            ("10.244.9.12".to_owned(), true),
        ],
    );
    format!("{service}---\n{slice}")
}

/// The value of `series` in `text`; panics naming what is missing.
fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("expected the series {series} in:\n{text}"))
}

/// The apply-duration histogram's count for `kind` (0 before the first).
fn applies(text: &str, kind: &str) -> f64 {
    value(
        text,
        &format!("gannet_dataplane_apply_duration_seconds_count{{kind=\"{kind}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn gannetd_metrics_follow_services_and_cni_registrations() {
    let node = Netns::new("mnode").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let mut agent = Agent::start_in(Some(&node), &cgroup, &[]).unwrap();

    let before = agent.scrape().unwrap();
    assert!(
        before
            .lines()
            .any(|l| l.starts_with("gannet_agent_info{") && l.contains("dataplane=\"ebpf\"")),
        "gannet_agent_info names the data plane:\n{before}"
    );
    assert_eq!(
        must(&before, "gannet_map_capacity{map=\"services\"}"),
        65_536.0,
        "the service map's capacity is --max-services (default 65 536)"
    );
    assert_eq!(must(&before, "gannet_service_frontends"), 0.0);
    assert!(
        before.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF:\n{before}"
    );

    agent
        .apply("web.yaml", &web_service(), "services synced")
        .unwrap();
    let after = agent.scrape().unwrap();
    for (series, expected) in [
        ("gannet_service_frontends", 1.0),
        ("gannet_service_backends", 2.0),
        ("gannet_map_entries{map=\"services\"}", 1.0),
        ("gannet_map_entries{map=\"backends\"}", 2.0),
        ("gannet_map_entries{map=\"slots\"}", 2.0),
    ] {
        assert_eq!(
            must(&after, series),
            expected,
            "{series} after applying one service with two backends:\n{after}"
        );
    }
    assert!(
        applies(&after, "incremental") > applies(&before, "incremental"),
        "the apply of the manifest change is timed (incremental count grows):\nbefore:\n{before}\nafter:\n{after}"
    );
    assert!(
        value(&after, "gannet_nodeport_packets_total{event=\"new_flow\"}").is_some(),
        "the NodePort programs' counters are exported:\n{after}"
    );

    // A pod wired by the real gannet-cni registers with gannetd.
    let pod = Netns::new("mpod").unwrap();
    let ipam = ScratchDir::new("gannet-ipam");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "gannet-metrics",
        "type": "gannet-cni",
        "ipam": {"type": "gannet", "subnet": "10.244.5.0/24", "dataDir": ipam.0},
        "agentSocket": agent.cni_socket(),
    });
    let container = unique_name("m-pod");
    let ip = pod_ip(&cni(&node, &pod, "ADD", &container, &conf));
    let registered = agent.scrape().unwrap();
    assert_eq!(
        must(
            &registered,
            "gannet_cni_requests_total{operation=\"register\",result=\"ok\"}"
        ),
        1.0,
        "one registration ({ip}):\n{registered}"
    );
    assert_eq!(must(&registered, "gannet_cni_endpoints"), 1.0);
    assert_eq!(
        must(&registered, "gannet_map_entries{map=\"endpoints\"}"),
        1.0,
        "the pod's address is in the endpoint map"
    );
    let pod_series: Vec<_> = series(&registered, "gannet_endpoint_packets_total")
        .into_iter()
        .filter(|(labels, _)| {
            labels.contains("namespace=\"default\"")
                && labels.contains(&format!("pod=\"{container}\""))
        })
        .collect();
    assert_eq!(
        pod_series.len(),
        2,
        "rx and tx packet counters of default/{container}:\n{registered}"
    );

    // Three echo requests from the node to the pod: the pod program counts them in and their
    // replies out.
    let mut echo = Command::new(bin_path("gannet-probe"));
    echo.args(["icmp", "--to", &ip, "--count", "3"]);
    let output = run_in(echo, Some(&node), None, Duration::from_secs(30)).unwrap();
    assert!(
        output.status.success(),
        "echo to the pod: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pod_labels = format!("namespace=\"default\",pod=\"{container}\",interface=");
    let counted = |text: &str, direction: &str| -> f64 {
        series(text, "gannet_endpoint_packets_total")
            .into_iter()
            .filter(|(labels, _)| {
                labels.starts_with(&pod_labels)
                    && labels.ends_with(&format!("direction=\"{direction}\""))
            })
            .map(|(_, n)| n)
            .sum()
    };
    let moved = agent.scrape().unwrap();
    assert!(
        counted(&moved, "rx") >= 3.0 && counted(&moved, "tx") >= 3.0,
        "the pod's packet counters moved with 3 echo requests and replies:\n{moved}"
    );
    assert!(
        counted(&moved, "rx") > counted(&registered, "rx"),
        "rx grew:\nbefore:\n{registered}\nafter:\n{moved}"
    );

    cni(&node, &pod, "DEL", &container, &conf);
    let gone = agent.scrape().unwrap();
    assert_eq!(
        must(
            &gone,
            "gannet_cni_requests_total{operation=\"unregister\",result=\"ok\"}"
        ),
        1.0,
        "one unregistration:\n{gone}"
    );
    assert_eq!(must(&gone, "gannet_cni_endpoints"), 0.0);
    assert!(
        series(&gone, "gannet_endpoint_packets_total").is_empty(),
        "a pod that went away has no counters left:\n{gone}"
    );
}

/// A map gannetd writes from user space that the kernel finds full is counted in
/// `gannet_map_full_total` under the map's name: here the pods' maps, made to hold one pod
/// (`--max-endpoints 1` sizes the address map and the per-pod counters alike). A second pod's
/// registration writes its counters first; the kernel refuses them (E2BIG), and so gannetd the
/// registration.
#[test]
fn a_full_pod_map_is_counted() {
    let node = Netns::new("mfull").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let agent = Agent::start_in(Some(&node), &cgroup, &["--max-endpoints", "1"]).unwrap();
    let full = |text: &str| must(text, "gannet_map_full_total{map=\"endpoint_stats\"}");
    let before = agent.scrape().unwrap();
    assert_eq!(
        full(&before),
        0.0,
        "the series exists from the start, at 0:\n{before}"
    );
    for map in [
        "services",
        "slots",
        "backends",
        "maglev",
        "source_ranges",
        "endpoints",
        "nodes",
    ] {
        must(&before, &format!("gannet_map_full_total{{map=\"{map}\"}}"));
    }

    let ipam = ScratchDir::new("gannet-ipam");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "gannet-full",
        "type": "gannet-cni",
        "ipam": {"type": "gannet", "subnet": "10.244.6.0/24", "dataDir": ipam.0},
        "agentSocket": agent.cni_socket(),
    });
    let first = Netns::new("mfull1").unwrap();
    let first_id = unique_name("full-1");
    cni(&node, &first, "ADD", &first_id, &conf);
    let one = agent.scrape().unwrap();
    assert_eq!(
        must(&one, "gannet_map_entries{map=\"endpoints\"}"),
        1.0,
        "{one}"
    );
    assert_eq!(full(&one), 0.0, "one address fits:\n{one}");

    let second = Netns::new("mfull2").unwrap();
    let second_id = unique_name("full-2");
    let refused = cni_output(&node, &second, "ADD", &second_id, &conf);
    assert!(
        !refused.status.success(),
        "a second pod's address does not fit an endpoint map of one: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let after = agent.scrape().unwrap();
    assert!(
        full(&after) >= 1.0,
        "the refused write is counted against the pods' counter map:\nbefore:\n{one}\nafter:\n{after}"
    );
    assert_eq!(must(&after, "gannet_cni_endpoints"), 1.0, "{after}");
    cni(&node, &first, "DEL", &first_id, &conf);
}

#[test]
fn the_nftables_data_plane_reports_what_it_programmed() {
    let netns = Netns::new("mnft").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let mut agent = Agent::start_in(Some(&netns), &cgroup, &["--dataplane", "nftables"]).unwrap();
    let before = agent.scrape().unwrap();
    assert!(
        before
            .lines()
            .any(|l| l.starts_with("gannet_agent_info{") && l.contains("dataplane=\"nftables\"")),
        "gannet_agent_info names the data plane:\n{before}"
    );
    agent
        .apply("web.yaml", &web_service(), "services synced")
        .unwrap();
    let after = agent.scrape().unwrap();
    assert_eq!(must(&after, "gannet_service_frontends"), 1.0, "{after}");
    assert_eq!(must(&after, "gannet_service_backends"), 2.0, "{after}");
    assert!(
        applies(&after, "incremental") > applies(&before, "incremental"),
        "the nftables apply is timed too:\n{after}"
    );
    assert!(
        series(&after, "gannet_map_entries").is_empty(),
        "no eBPF maps with the nftables data plane:\n{after}"
    );
}

#[test]
fn a_metrics_address_in_use_stops_gannetd_before_anything_is_created() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let cgroup = Cgroup::new().unwrap();
    let name = unique_name("gannet-mx");
    let bpf_root = std::path::Path::new("/sys/fs/bpf").join(&name);
    let state_dir = ScratchDir::new("gannet-mx-state");
    let manifests = ScratchDir::new("gannet-mx-manifests");
    std::fs::create_dir_all(&manifests.0).unwrap();
    let mut cmd = Command::new(bin_path("gannetd"));
    cmd.arg("--cgroup-path")
        .arg(cgroup.path())
        .arg("--bpf-root")
        .arg(&bpf_root)
        .arg("--state-dir")
        .arg(&state_dir.0)
        .arg("--manifest-dir")
        .arg(&manifests.0)
        .args([
            "--overlay",
            "none",
            "--masquerade=false",
            "--nodeport-interfaces=",
            "--metrics-address",
            &address,
        ]);
    let output = run_in(cmd, None, None, Duration::from_secs(20)).unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "gannetd must fail to start when its metrics address is taken; log:\n{log}"
    );
    assert!(
        log.contains(&format!("--metrics-address {address}")),
        "the error names the flag and the address; log:\n{log}"
    );
    assert!(
        !bpf_root.exists() && !state_dir.0.exists(),
        "nothing is left half-configured: {} exists: {}, {} exists: {}",
        bpf_root.display(),
        bpf_root.exists(),
        state_dir.0.display(),
        state_dir.0.exists()
    );
    drop(taken);

    // A value that is no address is a usage error, before anything is tried.
    let output = Command::new(bin_path("gannetd"))
        .args(["--manifest-dir", "/", "--metrics-address", "localhost:9962"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--metrics-address"), "{stderr}");
}

#[test]
fn gannet_control_counts_requests_watchers_and_nodes_and_gannetd_its_watches() {
    let mut plane = ControlPlane::start(&[]).unwrap();
    let before = plane.scrape().unwrap();
    let applied = |text: &str| {
        value(
            text,
            "gannet_control_grpc_requests_total{method=\"Apply\",code=\"OK\"}",
        )
        .unwrap_or(0.0)
    };
    plane.apply(&web_service()).unwrap();
    let after = plane.scrape().unwrap();
    assert_eq!(
        applied(&after),
        applied(&before) + 1.0,
        "gannetctl apply is one Apply call:\n{after}"
    );
    assert!(
        must(
            &after,
            "gannet_control_store_duration_seconds_count{operation=\"txn\"}"
        ) >= 1.0,
        "the apply wrote through the store:\n{after}"
    );

    let cgroup = Cgroup::new().unwrap();
    let mut agent = Agent::start_with_control(None, &cgroup, &plane.addr(), &[]).unwrap();
    agent.wait_log("services synced", 1).unwrap();
    // The agent opens its watches one by one (the Node watch may follow the services' sync),
    // and a scrape may fall between a write and the count of the call that made it.
    let watched = eventually(
        "the node to be Ready and its watches open",
        Duration::from_secs(10),
        || {
            let text = plane.scrape().unwrap();
            let watching = ["Service", "EndpointSlice", "Node"].iter().all(|kind| {
                value(
                    &text,
                    &format!("gannet_control_watchers{{kind=\"{kind}\"}}"),
                )
                .is_some_and(|n| n >= 1.0)
            });
            // Register is counted as its answer goes out, after the Node was written.
            let registered = value(
                &text,
                "gannet_control_grpc_requests_total{method=\"Register\",code=\"OK\"}",
            )
            .is_some();
            (value(&text, "gannet_control_nodes{ready=\"true\"}") == Some(1.0)
                && watching
                && registered)
                .then_some(text)
        },
    );
    for kind in ["Service", "EndpointSlice", "Node"] {
        assert!(
            must(
                &watched,
                &format!("gannet_control_watchers{{kind=\"{kind}\"}}")
            ) >= 1.0,
            "gannetd watches {kind}s:\n{watched}"
        );
    }
    assert_eq!(
        must(&watched, "gannet_control_pod_cidr_leases"),
        1.0,
        "the node holds a pod CIDR lease:\n{watched}"
    );
    assert!(
        must(
            &watched,
            "gannet_control_grpc_requests_total{method=\"Register\",code=\"OK\"}"
        ) >= 1.0,
        "the agent registered its node:\n{watched}"
    );

    let agent_view = agent.scrape().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = must(&agent_view, "gannet_control_last_event_timestamp_seconds");
    assert!(
        (now - 120.0..=now + 1.0).contains(&last),
        "the last event is recent ({last} vs now {now}):\n{agent_view}"
    );
    assert_eq!(
        must(
            &agent_view,
            "gannet_control_watch_reconnects_total{kind=\"Service\"}"
        ),
        0.0,
        "no reconnect yet:\n{agent_view}"
    );
    assert_eq!(must(&agent_view, "gannet_service_frontends"), 1.0);

    // The control plane goes away and comes back: the watches reconnect, and say so.
    plane.stop().unwrap();
    agent.wait_log("control plane unreachable", 1).unwrap();
    plane.restart().unwrap();
    let reconnected = eventually("the watches to reconnect", Duration::from_secs(30), || {
        let text = agent.scrape().unwrap();
        (value(
            &text,
            "gannet_control_watch_reconnects_total{kind=\"Service\"}",
        ) >= Some(1.0))
        .then_some(text)
    });
    assert!(
        agent.logs().contains("watching the control plane again"),
        "the reconnect is logged too; metrics:\n{reconnected}"
    );
}

#[test]
fn gannet_control_fails_at_start_when_its_metrics_address_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let error = ControlPlane::start(&["--metrics-address", &address])
        .expect_err("gannet-control must not start on a taken metrics address");
    let message = format!("{error:#}");
    assert!(
        message.contains("exit status: 1")
            && message.contains(&format!("--metrics-address {address}")),
        "gannet-control exits with status 1 naming the flag and the address: {message}"
    );
    // And turned off, it serves nothing.
    let mut plane = ControlPlane::start(&["--metrics-address="]).unwrap();
    assert!(
        plane.scrape().is_err(),
        "with an empty --metrics-address there is no metrics endpoint"
    );
    plane.stop().unwrap();
}
