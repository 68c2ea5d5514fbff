//! What every runtime must achieve with gannet-cni: two containers get their addresses from
//! gannet's IPAM, reach each other and the node (IPv4 and IPv6, source addresses unchanged), are
//! reached from the node, and leave nothing behind when they exit.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gannet_cni::agent_api::{Endpoint, RequestBody};
use gannet_testkit::probe::{self, ClientOptions, ServeReport, parse_json_output};
use gannet_testkit::{ChildGuard, bin_path, spawn};

use crate::sandbox::{NETWORK, NODE_V4, NODE_V6, POD_MTU, POD_V4_PREFIX, POD_V6_PREFIX, Sandbox};
use crate::shell::Container;

/// How long DEL may take to show after a container exited (podman runs it from a separate
/// `podman container cleanup` process that conmon starts).
const DEL_TIMEOUT: Duration = Duration::from_secs(20);
/// Port of the node's server.
const NODE_PORT: u16 = 8081;
/// Port of the server in pod a.
const POD_PORT: u16 = 8080;

/// A container runtime running inside a [`Sandbox`].
pub(crate) trait Runtime {
    /// Its name, for messages.
    fn name(&self) -> &'static str;
    /// The node it runs on.
    fn sandbox(&self) -> &Sandbox;
    /// Starts a container `name` on the gannet network whose main process is `/bin/sh`, attached
    /// to the runtime's foreground `run`; returns it once its shell answers, with `cni_id` set.
    fn start(&mut self, name: &str) -> Container;
    /// Checks what the runtime itself recorded of the attachment (podman: `inspect`).
    fn check_runtime_view(&mut self, _container: &Container, _seen: &Attachment) {}
    /// Stops a running container the way an operator does (podman stop, ctr task kill).
    fn stop(&mut self, container: &str);
    /// Whatever the runtime needs after a container exited and its DEL was seen (podman: `rm`).
    fn remove(&mut self, _container: &str) {}
    /// `K8S_POD_NAME` the runtime puts in `CNI_ARGS` for container `name`.
    fn pod_name(&self, name: &str) -> Option<String>;
    /// Checks the `CNI_NETNS` the runtime passed (as the agent registration reports it).
    fn check_netns(&self, netns: &Path, container: &Container);
}

/// One container's attachment as seen inside it and on the node.
#[derive(Debug, Clone)]
pub(crate) struct Attachment {
    /// The pod's IPv4 address.
    pub(crate) v4: String,
    /// The pod's IPv6 address.
    pub(crate) v6: String,
    /// `eth0`'s MAC address in the pod.
    pub(crate) mac: String,
    /// The host end's name.
    pub(crate) host_if: String,
}

/// The whole scenario; every step panics with what it expected and what it saw.
pub(crate) fn pods_reach_each_other_and_the_node(rt: &mut impl Runtime) {
    let mut node_server = serve_on_node(rt.sandbox());

    let mut a = rt.start("pod-a");
    let mut b = rt.start("pod-b");
    let att_a = check_attachment(rt, &mut a);
    let att_b = check_attachment(rt, &mut b);
    assert_ne!(
        (&att_a.v4, &att_a.v6),
        (&att_b.v4, &att_b.v6),
        "two pods got the same address"
    );
    rt.sandbox()
        .assert_nothing_leaked("with both containers running");

    // Pod a serves on POD_PORT (a busybox nc that answers every connection with "pod-a").
    a.sh_ok(&format!(
        "nc -ll -p {POD_PORT} -e /bin/sh -c 'echo pod-a; sleep 1' >/dev/null 2>&1 &"
    ));
    assert_eq!(
        ask(&mut b, &att_a.v4, POD_PORT),
        "pod-a",
        "pod b → pod a (IPv4)"
    );
    assert_eq!(
        ask(&mut b, &att_a.v6, POD_PORT),
        "pod-a",
        "pod b → pod a (IPv6)"
    );
    for (from, name) in [(&mut a, "pod a"), (&mut b, "pod b")] {
        assert_eq!(
            ask(from, NODE_V4, NODE_PORT),
            "node",
            "{name} → node (IPv4)"
        );
        assert_eq!(
            ask(from, NODE_V6, NODE_PORT),
            "node",
            "{name} → node (IPv6)"
        );
    }
    for addr in [&att_a.v4, &att_a.v6] {
        let ip: IpAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
        let to = SocketAddr::new(ip, POD_PORT);
        let report = rt
            .sandbox()
            .node
            .run(|| {
                probe::tcp_count(
                    &ClientOptions {
                        to,
                        bind: None,
                        timeout: Duration::from_secs(3),
                    },
                    3,
                )
            })
            .expect("client in the node namespace");
        assert_eq!(
            (report.ok, report.backend_count("pod-a")),
            (3, 3),
            "node → pod a at {to}: {report:?}"
        );
    }

    // The node saw the pods' own addresses: no NAT anywhere on the way.
    let served = stop_server(&mut node_server);
    let mut clients: Vec<&String> = served.clients.keys().collect();
    clients.sort();
    let mut expected = vec![&att_a.v4, &att_a.v6, &att_b.v4, &att_b.v6];
    expected.sort();
    assert_eq!(
        clients, expected,
        "source addresses the node's server saw: {served:?}"
    );

    // Pod a's shell exits: its DEL must remove its interface and addresses, and nothing of b's.
    exit_and_check_del(rt, a, &att_a, End::Exits);
    let (b_id, b_host) = (b.cni_id.clone(), att_b.host_if.clone());
    assert!(
        rt.sandbox().host_veths().iter().any(|(n, _)| *n == b_host),
        "DEL of pod a removed pod b's host interface"
    );
    assert_eq!(
        rt.sandbox()
            .allocations()
            .iter()
            .filter(|(_, id, _)| *id == b_id)
            .count(),
        2,
        "DEL of pod a touched pod b's records: {:?}",
        rt.sandbox().allocations()
    );
    // Pod b is stopped by the runtime.
    exit_and_check_del(rt, b, &att_b, End::Stopped);

    let sandbox = rt.sandbox();
    assert_eq!(
        sandbox.host_veths(),
        Vec::<(String, String)>::new(),
        "host interfaces left"
    );
    assert_eq!(
        sandbox.allocations(),
        Vec::<(String, String, String)>::new(),
        "address records left"
    );
    let routes = sandbox.node.ip(&["route", "show"]).expect("node routes");
    assert!(
        !routes.contains(POD_V4_PREFIX),
        "pod routes left on the node:\n{routes}"
    );
    sandbox.assert_nothing_leaked("after both containers exited");
}

/// Reads the attachment inside the container and checks it against the IPAM store, the node's
/// links and routes, and the agent registration the plugin sent.
fn check_attachment(rt: &mut impl Runtime, c: &mut Container) -> Attachment {
    let v4_out = c.sh_ok("ip -o -4 addr show dev eth0");
    let v6_out = c.sh_ok("ip -o -6 addr show dev eth0 scope global");
    let link = c.sh_ok("ip -o link show dev eth0");
    let v4 = only_address(&v4_out, "inet ", "/32", POD_V4_PREFIX, &c.name);
    let v6 = only_address(&v6_out, "inet6 ", "/128", POD_V6_PREFIX, &c.name);
    assert!(
        link.contains(&format!(" mtu {POD_MTU} ")),
        "{}: eth0 does not have the subnet file's MTU {POD_MTU}: {link}",
        c.name
    );
    assert!(
        v4 != format!("{POD_V4_PREFIX}1") && v6 != format!("{POD_V6_PREFIX}1"),
        "{}: got the node subnet's gateway address ({v4}, {v6})",
        c.name
    );
    let mac = link
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{}: no MAC in {link:?}", c.name))
        .to_owned();
    let routes = c.sh_ok("ip -4 route; ip -6 route");
    for needle in [
        "default via 169.254.1.1 dev eth0",
        "default via fe80::1 dev eth0",
    ] {
        assert!(
            routes.contains(needle),
            "{}: no {needle:?} in the pod's routes:\n{routes}",
            c.name
        );
    }
    let neighbours = c.sh_ok("ip neigh show dev eth0");

    let sandbox = rt.sandbox();
    let records = sandbox.allocations();
    for addr in [&v4, &v6] {
        assert!(
            records.contains(&(addr.clone(), c.cni_id.clone(), "eth0".to_owned())),
            "{}: {addr} has no record of container {} in gannet's IPAM store: {records:?}",
            c.name,
            c.cni_id
        );
    }
    let alias = format!("gannet-cni:{NETWORK}/{}/eth0", c.cni_id);
    let veths = sandbox.host_veths();
    let host_if = veths
        .iter()
        .find(|(_, a)| *a == alias)
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| {
            panic!(
                "{}: no host interface with alias {alias}: {veths:?}",
                c.name
            )
        });
    let route = sandbox
        .node
        .ip(&["route", "show", &v4])
        .expect("node route");
    assert!(
        route.contains(&format!("dev {host_if}")),
        "{}: the node routes {v4} via {route:?}, not {host_if}",
        c.name
    );

    let endpoint = registration(sandbox, &c.cni_id);
    let mut ips: Vec<String> = endpoint.ips.iter().map(ToString::to_string).collect();
    ips.sort();
    let mut want = vec![format!("{v4}/32"), format!("{v6}/128")];
    want.sort();
    assert_eq!(ips, want, "{}: registered addresses", c.name);
    assert_eq!(
        (
            &endpoint.mac,
            &endpoint.host_if_name,
            endpoint.if_name.as_str()
        ),
        (&mac, &host_if, "eth0"),
        "{}: registered interfaces",
        c.name
    );
    assert_eq!(
        endpoint.pod_name,
        rt.pod_name(&c.name),
        "{}: K8S_POD_NAME in CNI_ARGS as the registration reports it",
        c.name
    );
    rt.check_netns(&endpoint.netns, c);
    // The gateways resolve, permanently, to the host end (no ARP/ND, no proxy ARP).
    for gateway in ["169.254.1.1", "fe80::1"] {
        let entry = format!("{gateway} lladdr {}", endpoint.host_mac);
        assert!(
            neighbours
                .lines()
                .any(|l| l.starts_with(&entry) && l.contains("PERMANENT")),
            "{}: no permanent {entry:?} among the pod's neighbours:\n{neighbours}",
            c.name
        );
    }

    eprintln!(
        "{} {}: CNI_CONTAINERID={} eth0 {v4}/32 {v6}/128 {mac}, host end {host_if}, netns {}",
        rt.name(),
        c.name,
        c.cni_id,
        endpoint.netns.display()
    );
    let seen = Attachment {
        v4,
        v6,
        mac,
        host_if,
    };
    rt.check_runtime_view(c, &seen);
    seen
}

/// The one address in `ip -o addr` output, checked for prefix length and range.
fn only_address(out: &str, family: &str, len: &str, range: &str, name: &str) -> String {
    let found: Vec<&str> = out
        .split(family)
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name}: expected one {family}address: {out}"
    );
    let addr = found[0]
        .strip_suffix(len)
        .unwrap_or_else(|| panic!("{name}: {} is not a {len}", found[0]));
    assert!(
        addr.starts_with(range),
        "{name}: {addr} is not from gannet's range {range}…"
    );
    addr.to_owned()
}

/// The `Register` the plugin sent for `cni_id`.
fn registration(sandbox: &Sandbox, cni_id: &str) -> Endpoint {
    let requests = sandbox.agent.requests();
    requests
        .iter()
        .find_map(|r| match &r.body {
            RequestBody::Register { endpoint } if endpoint.container_id == cni_id => {
                Some(endpoint.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no registration of {cni_id} among {requests:?}"))
}

/// Asks `host:port` from inside the container with busybox `nc` (retrying while the server
/// starts) and returns the reply line.
fn ask(c: &mut Container, host: &str, port: u16) -> String {
    let out = c.sh_ok(&format!(
        "for i in $(seq 25); do r=$(echo x | nc -w 3 {host} {port}) && [ -n \"$r\" ] && break; \
         sleep 0.2; done; echo \"reply=$r\""
    ));
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("reply="))
        .unwrap_or_else(|| panic!("{}: no reply from {host}:{port}: {out}", c.name))
        .trim()
        .to_owned()
}

/// The node's server: `gannet-probe serve` on the node's addresses, in the node namespace.
fn serve_on_node(sandbox: &Sandbox) -> ChildGuard {
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args(["serve", "--name", "node", "--tcp"])
        .args(["--listen", &format!("{NODE_V4}:{NODE_PORT}")])
        .args(["--listen", &format!("[{NODE_V6}]:{NODE_PORT}")]);
    let mut server = spawn(cmd, Some(&sandbox.node), None).expect("starting the node's server");
    server
        .wait_for_line(probe::READY_LINE, Duration::from_secs(10))
        .expect("the node's server is ready");
    server
}

/// Stops the node's server and returns what it served.
fn stop_server(server: &mut ChildGuard) -> ServeReport {
    server.kill(libc::SIGTERM).expect("SIGTERM to the server");
    let output = server
        .wait_output(Duration::from_secs(10))
        .expect("the server stops");
    parse_json_output(&output).expect("the server's report")
}

/// How a container ends.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Its main process exits 0.
    Exits,
    /// The runtime stops it ([`Runtime::stop`]).
    Stopped,
}

/// Ends the container and waits until DEL removed its host interface, its IPAM records, and told
/// the agent.
fn exit_and_check_del(rt: &mut impl Runtime, c: Container, att: &Attachment, end: End) {
    let (name, id) = (c.name.clone(), c.cni_id.clone());
    match end {
        End::Exits => {
            c.exit();
        }
        End::Stopped => {
            rt.stop(&name);
            let output = c.wait_ended();
            eprintln!(
                "{} {name} stopped; its run ended with {}",
                rt.name(),
                output.status
            );
        }
    }
    let sandbox = rt.sandbox();
    sandbox.wait_until(&format!("DEL of {name}"), DEL_TIMEOUT, || {
        let veths = sandbox.host_veths();
        let records: Vec<_> = sandbox
            .allocations()
            .into_iter()
            .filter(|(_, owner, _)| *owner == id)
            .collect();
        if veths.iter().any(|(n, _)| *n == att.host_if) {
            Err(format!("host interface {} still there", att.host_if))
        } else if !records.is_empty() {
            Err(format!("address records still there: {records:?}"))
        } else if !sandbox.agent.unregistered(&id) {
            Err("no Unregister sent to the agent".to_owned())
        } else {
            Ok(())
        }
    });
    rt.remove(&name);
}
