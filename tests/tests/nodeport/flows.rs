//! Where flows go and how long they stay: UDP flows of a removed backend, Maglev across nodes, a
//! full conntrack map, cluster IPs from a pod, session affinity, hairpin, a connection across a
//! restart of gannetd.

use std::{process::Command, time::Duration};

use gannet_testkit::{
    bin_path,
    cluster::EXTERNAL_V4,
    eventually,
    probe::{Report, parse_json_output},
    run_in, spawn,
};

use crate::fixture::{
    Cluster, NODE_PORT, NODES, PROBE_TIMEOUT, SMALL_CONNTRACK, SMALL_CONNTRACK_NODE,
    STICKY_NODE_PORT, TEN_IP, sock,
};

/// The backend each of `ports` (client source ports, one UDP flow each to `ten`'s external IP)
/// gets when the network hands the flows to `node`.
pub(crate) fn udp_backends(c: &Cluster, node: usize, ports: std::ops::Range<u16>) -> Vec<String> {
    c.external()
        .ip(&[
            "route",
            "replace",
            &format!("{TEN_IP}/32"),
            "via",
            &c.nodes[node].ipv4,
        ])
        .expect("routing the external IP");
    let to = sock(TEN_IP, 53);
    ports
        .map(|port| {
            let bind = format!("{EXTERNAL_V4}:{port}");
            let r = c.udp(&to, 1, &["--bind", &bind]);
            assert_eq!(
                r.ok,
                1,
                "UDP flow from port {port} via node {node}: {r:?}; {:#}",
                c.nodes[node].agent.status().unwrap_or_default()
            );
            r.backends.keys().next().cloned().unwrap_or_default()
        })
        .collect()
}

/// nftables data plane: UDP flows (fixed client ports) whose backend is removed from the service
/// go to the remaining backends at their next packet (their conntrack entries are deleted),
/// while flows of the remaining backends stay where they are (theirs are kept).
pub(crate) fn udp_flows_of_a_removed_backend_move(c: &mut Cluster) {
    let all: Vec<(usize, usize)> = (0..NODES).map(|n| (n, 0)).collect();
    c.apply_ten(&all);
    c.external()
        .ip(&[
            "route",
            "replace",
            &format!("{TEN_IP}/32"),
            "via",
            &c.nodes[0].ipv4,
        ])
        .expect("routing the external IP");
    eventually("ten answers", Duration::from_secs(15), || {
        Some(c.udp(&sock(TEN_IP, 53), 10, &["--per-request-socket"])).filter(|r| r.ok == 10)
    });
    const FLOWS: std::ops::Range<u16> = 48_000..48_030;
    let before = udp_backends(c, 0, FLOWS);
    let gone = c.nodes[1].pods[0].name.clone();
    assert!(
        before.contains(&gone),
        "some of 30 flows went to {gone}: {before:?}"
    );
    c.apply_ten(&[(0, 0), (2, 0)]);
    // Logged once the entries are deleted (the table changes first: until then a flow's next
    // packet may still find its entry).
    c.nodes[0]
        .agent
        .wait_log("forgot the UDP flows of a removed backend", 1)
        .expect("gannetd deletes the flows of the removed backend");
    let after = udp_backends(c, 0, FLOWS);
    for (port, (was, is)) in FLOWS.zip(before.iter().zip(&after)) {
        if *was == gone {
            assert_ne!(
                *is, gone,
                "flow from port {port} still goes to the removed backend"
            );
        } else {
            assert_eq!(is, was, "flow from port {port} keeps its backend");
        }
    }
}

pub(crate) fn maglev_across_nodes(c: &mut Cluster) {
    // Ten backends: the three pods there are and seven more.
    for (node, index) in [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2), (0, 3)] {
        let name = format!("{}-p{index}", c.nodes[node].name);
        c.add_pod(node, &name);
    }
    let all: Vec<(usize, usize)> = (0..NODES)
        .flat_map(|n| (0..c.nodes[n].pods.len()).map(move |i| (n, i)))
        .collect();
    assert_eq!(all.len(), 10);
    c.apply_ten(&all);
    for node in 0..NODES {
        c.external()
            .ip(&[
                "route",
                "replace",
                &format!("{TEN_IP}/32"),
                "via",
                &c.nodes[node].ipv4,
            ])
            .expect("routing the external IP");
        eventually("ten answers", Duration::from_secs(15), || {
            Some(c.udp(&sock(TEN_IP, 53), 10, &["--per-request-socket"])).filter(|r| r.ok == 10)
        });
    }
    const FLOWS: std::ops::Range<u16> = 47_000..47_150;
    let before = udp_backends(c, 0, FLOWS);
    let distinct: std::collections::BTreeSet<&String> = before.iter().collect();
    assert!(
        distinct.len() >= 8,
        "150 flows spread over the 10 backends: {distinct:?}"
    );
    // Node 1 has never seen these flows: it picks the same backends.
    let other = udp_backends(c, 1, FLOWS);
    assert_eq!(
        before, other,
        "every node picks the same backend for the same flow"
    );

    // One backend goes; node 2 (fresh to these flows) shows where they go now.
    let (gone_node, gone_index) = (1, 2);
    let gone = c.nodes[gone_node].pods[gone_index].name.clone();
    let rest: Vec<(usize, usize)> = all
        .iter()
        .copied()
        .filter(|p| *p != (gone_node, gone_index))
        .collect();
    c.apply_ten(&rest);
    // Every node has programmed the change for the external IP these flows go to.
    let frontend = format!("{}/UDP", sock(TEN_IP, 53));
    for node in &c.nodes {
        eventually(
            "the node drops the backend",
            Duration::from_secs(15),
            || {
                let status = node.agent.status().ok()?;
                status["services"]
                    .as_array()?
                    .iter()
                    .find(|s| s["frontend"] == frontend.as_str())
                    .filter(|s| s["packet_backends"].as_array().map(Vec::len) == Some(9))
                    .map(|_| ())
            },
        );
    }
    let after = udp_backends(c, SMALL_CONNTRACK_NODE, FLOWS);
    let stayed_on_kept: usize = before.iter().filter(|b| **b != gone).count();
    let moved: usize = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    let to_gone: Vec<(u16, &String)> = FLOWS
        .zip(&before)
        .zip(&after)
        .filter(|(_, a)| **a == gone)
        .map(|((port, b), _)| (port, b))
        .collect();
    assert!(
        to_gone.is_empty(),
        "no flow goes to the removed backend {gone}; these did (port, backend before): {to_gone:?}; \
         node 2: {:#}",
        c.nodes[SMALL_CONNTRACK_NODE]
            .agent
            .status()
            .unwrap_or_default()["nodeport"]
    );
    assert!(
        moved * 100 <= before.len() * 12,
        "removing 1 of 10 backends moved {moved} of the {stayed_on_kept} flows on the other nine"
    );
}

pub(crate) fn full_conntrack(c: &mut Cluster) {
    // Node 2's map holds 512 flows; more flows than that are all balanced.
    let to = sock(&c.nodes[SMALL_CONNTRACK_NODE].ipv4, NODE_PORT);
    let flows = SMALL_CONNTRACK / 2 + 200;
    let report = c.tcp(&to, flows);
    assert_eq!(
        report.ok,
        u64::from(flows),
        "a full conntrack map still balances new flows: {report:?}"
    );
    // The agent looks every 10 s.
    let agent = &mut c.nodes[SMALL_CONNTRACK_NODE].agent;
    if agent
        .wait_log("conntrack map is full or nearly", 1)
        .is_err()
    {
        agent
            .wait_log("conntrack map is full or nearly", 1)
            .expect("the agent says the map is full");
    }
}

/// Pods reach the cluster IPs (TCP over IPv4 and IPv6, UDP), every backend on every node: the
/// socket load balancer (eBPF), or the node's nftables table, whose replies from other nodes'
/// pods must be tracked to be translated back.
pub(crate) fn cluster_ips_from_a_pod(c: &Cluster) {
    let pod = &c.nodes[0].pods[0];
    let probe = |args: &[&str]| -> Report {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(["--timeout-ms", "2000"]).args(args);
        let out = run_in(
            cmd,
            Some(&pod.netns),
            Some(&c.nodes[0].cgroup),
            PROBE_TIMEOUT,
        )
        .unwrap();
        parse_json_output(&out).unwrap()
    };
    for to in ["10.96.0.80:80", "[fd00:96::80]:80"] {
        let report = eventually("the cluster IP answers", Duration::from_secs(15), || {
            Some(probe(&["tcp", "--to", to, "--count", "60"])).filter(|r| r.ok == 60)
        });
        assert_eq!(
            report.backends.len(),
            NODES,
            "{to}: every backend, on every node: {report:?}"
        );
    }
    let udp = probe(&[
        "udp",
        "--to",
        "10.96.0.80:53",
        "--count",
        "20",
        "--per-request-socket",
    ]);
    assert_eq!(udp.ok, 20, "UDP to the cluster IP: {udp:?}");
}

/// `sessionAffinity: ClientIP` on a node port: every connection of the external client goes to
/// the backend its first one got.
pub(crate) fn affinity_pins_a_client(c: &Cluster) {
    let endpoints: String = (0..NODES)
        .map(|n| {
            format!(
                "  - addresses: [\"{}\"]\n    nodeName: {}\n",
                c.nodes[n].pods[0].ip, c.nodes[n].name
            )
        })
        .collect();
    c.plane
        .apply(&format!(
            "apiVersion: v1
kind: Service
metadata:
  name: sticky
  namespace: default
spec:
  type: NodePort
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 600
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
    nodePort: {STICKY_NODE_PORT}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-v4
  namespace: default
  labels:
    kubernetes.io/service-name: sticky
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
{endpoints}"
        ))
        .expect("applying sticky");
    let to = sock(&c.nodes[0].ipv4, STICKY_NODE_PORT);
    let report = eventually("sticky answers", Duration::from_secs(15), || {
        Some(c.tcp(&to, 30)).filter(|r| r.ok == 30)
    });
    assert_eq!(
        report.backends.len(),
        1,
        "one client, one backend with ClientIP affinity: {report:?}"
    );
}

pub(crate) fn hairpin(c: &Cluster) {
    // A pod under the socket load balancer reaching its own service through the node port.
    let pod = &c.nodes[0].pods[0];
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["--timeout-ms", "2000", "tcp", "--to"])
        .arg(sock(&c.nodes[0].ipv4, NODE_PORT))
        .args(["--count", "30"]);
    let out = run_in(
        cmd,
        Some(&pod.netns),
        Some(&c.nodes[0].cgroup),
        PROBE_TIMEOUT,
    )
    .unwrap();
    let report: Report = parse_json_output(&out).unwrap();
    assert_eq!(report.ok, 30, "{report:?}");
    assert!(
        report.backend_count(&pod.name) > 0,
        "the pod reaches itself through its own service: {report:?}"
    );
}

pub(crate) fn flow_survives_restart(c: &mut Cluster) {
    let to = sock(&c.nodes[0].ipv4, NODE_PORT);
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["hold", "--to", &to]);
    let mut held = spawn(cmd, Some(c.external()), None).expect("starting hold");
    held.wait_for_line("connected", Duration::from_secs(10))
        .expect("connected through the NodePort");
    held.send_line("ping").unwrap();
    let backend = held
        .read_line(Duration::from_secs(5))
        .unwrap()
        .trim()
        .to_owned();
    c.nodes[0].agent.stop(libc::SIGKILL).unwrap();
    held.send_line("ping").unwrap();
    assert_eq!(
        held.read_line(Duration::from_secs(5)).unwrap().trim(),
        backend,
        "the tracked flow goes on while gannetd is down"
    );
    c.nodes[0].agent.restart().unwrap();
    c.nodes[0]
        .agent
        .wait_log("node programmed", NODES - 1)
        .unwrap();
    for _ in 0..3 {
        held.send_line("ping").unwrap();
        assert_eq!(
            held.read_line(Duration::from_secs(5)).unwrap().trim(),
            backend,
            "the same connection, the same backend, after the restart"
        );
    }
}
