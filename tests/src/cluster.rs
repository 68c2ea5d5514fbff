//! A simulated multi-node underlay for the overlay tests: an "underlay" namespace holding a bridge,
//! node namespaces plugged into it by veth pairs (each node's end is its `eth0`), and optionally an
//! "external" namespace on the same bridge that stands for a host outside the cluster.
//!
//! It is the physical network between nodes, nothing more: no pods, no routes beyond the connected
//! subnet, no overlay. Nothing connects it to the root namespace, so no packet leaves the machine.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::Netns;

/// The bridge in the underlay namespace that every node (and the external host) is plugged into.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// The underlay interface inside each node namespace (and the external namespace).
pub const NODE_IF: &str = "eth0";
/// MTU of both ends of every underlay veth pair.
pub const UNDERLAY_MTU: u32 = 1500;
/// Prefix length of the underlay's IPv4 subnet, 10.99.0.0/24.
pub const UNDERLAY_PREFIX_V4: u8 = 24;
/// Prefix length of the underlay's IPv6 subnet, `fd00:99::/64`.
pub const UNDERLAY_PREFIX_V6: u8 = 64;
/// The external host's IPv4 address on the underlay.
pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 250);
/// The external host's IPv6 address on the underlay.
pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x250);
/// Name of the external host's port on the bridge (in the underlay namespace).
const EXTERNAL_PORT: &str = "external";
/// How long to wait for a link's operational state to follow its administrative state.
pub const LINK_STATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Last octet of node 0's addresses.
const FIRST_NODE_HOST: usize = 11;
/// Highest last octet a node may have (250 is the external host).
const LAST_NODE_HOST: usize = 249;

/// Node `index`'s underlay addresses: `10.99.0.(11+index)` and `fd00:99::(11+index)`, the IPv6
/// address's last group spelling the same digits as the IPv4 address's last octet (node 2:
/// `10.99.0.13` and `fd00:99::13`), as [`crate::PodNet`] does for pods.
///
/// # Panics
/// If `index` is above 238 (the address would leave 10.99.0.11-249).
#[must_use]
pub fn node_addrs(index: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = FIRST_NODE_HOST + index;
    assert!(
        host <= LAST_NODE_HOST,
        "node {index} does not fit 10.99.0.{FIRST_NODE_HOST}-{LAST_NODE_HOST}"
    );
    let v4 = u8::try_from(host).expect("host checked against the /24");
    let v6 = u16::from_str_radix(&host.to_string(), 16).expect("decimal digits are hex digits");
    (
        Ipv4Addr::new(10, 99, 0, v4),
        Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, v6),
    )
}

/// Node `index`'s name as the control plane would know it: `node-<index>`.
#[must_use]
pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

/// One node on the underlay: its namespace, holding `eth0` with these addresses.
#[derive(Debug)]
pub struct UnderlayNode {
    /// The node's network namespace (IPv4 and IPv6 forwarding enabled).
    pub netns: Netns,
    /// The node's IPv4 address on `eth0` (in 10.99.0.0/24).
    pub ipv4: Ipv4Addr,
    /// The node's IPv6 address on `eth0` (in `fd00:99::/64`).
    pub ipv6: Ipv6Addr,
    /// The node's name, `node-<index>`.
    pub name: String,
    /// Name of the node's port on the bridge, the other end of its `eth0`, in the underlay namespace.
    pub underlay_port: String,
}

/// Nodes `node-0`..`node-(N-1)` on one layer-2 segment (bridge `br0` in the underlay namespace), and
/// optionally an external host on it.
///
/// Every node has `eth0` with `10.99.0.(11+i)/24` and `fd00:99::(11+i)/64`, MTU 1500, up, and only the
/// connected routes; IPv4 and IPv6 forwarding are on, so a node can route for the pods or tunnels a
/// test adds. The bridge has no address: the underlay namespace only switches frames.
///
/// Dropping it deletes the node and external namespaces first (which destroys their veth pairs),
/// then the underlay namespace.
#[derive(Debug)]
pub struct Underlay {
    // Field order is drop order: nodes and the external host before the underlay.
    nodes: Vec<UnderlayNode>,
    external: Option<Netns>,
    /// `XDP_PASS` programs on the bridge's ports ([`Underlay::wire_like`]).
    xdp_links: Vec<std::os::fd::OwnedFd>,
    underlay: Netns,
}

impl Underlay {
    /// Builds the underlay namespace with its bridge and `nodes` nodes plugged into it, everything up.
    /// IPv6 addresses are added with `nodad`, so the nodes can talk when this returns.
    ///
    /// # Errors
    /// If `nodes` does not fit 10.99.0.11-249 (at most 239), or any `ip` or `sysctl` command fails;
    /// whatever was created is removed again.
    pub fn new(nodes: usize) -> anyhow::Result<Underlay> {
        ensure!(
            nodes <= LAST_NODE_HOST + 1 - FIRST_NODE_HOST,
            "{nodes} nodes do not fit 10.99.0.{FIRST_NODE_HOST}-{LAST_NODE_HOST}"
        );
        // Declared before `list`, so on an early return the nodes are dropped before the underlay.
        let underlay = Netns::new("ul")?;
        disable_dad(&underlay)?;
        underlay.ip(&[
            "link",
            "add",
            UNDERLAY_BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        underlay.ip(&["link", "set", UNDERLAY_BRIDGE, "up"])?;

        let mut list = Vec::with_capacity(nodes);
        for index in 0..nodes {
            let netns = Netns::new(&format!("node{index}"))?;
            disable_dad(&netns)?;
            let underlay_port = format!("node{index}");
            plug(&underlay, &netns, &underlay_port)?;
            let (ipv4, ipv6) = node_addrs(index);
            add_addrs(&netns, ipv4, ipv6)?;
            netns.sysctl("net.ipv4.ip_forward", "1")?;
            netns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            list.push(UnderlayNode {
                netns,
                ipv4,
                ipv6,
                name: node_name(index),
                underlay_port,
            });
        }
        for node in &list {
            wait_oper_state(&node.netns, NODE_IF, true, LINK_STATE_TIMEOUT)?;
            wait_oper_state(&underlay, &node.underlay_port, true, LINK_STATE_TIMEOUT)?;
        }
        Ok(Underlay {
            nodes: list,
            external: None,
            xdp_links: Vec::new(),
            underlay,
        })
    }

    /// Adds the external host: a namespace plugged into the bridge like a node, with
    /// [`EXTERNAL_V4`]`/24` and [`EXTERNAL_V6`]`/64` on its `eth0` and no route beyond that subnet
    /// (no default route, no forwarding). It stands for a client or server outside the cluster:
    /// it can reach the nodes' underlay addresses, but nothing behind them unless a node
    /// masquerades or a test adds routes. Returns its namespace; a second call returns the same one.
    ///
    /// # Errors
    /// If an `ip` command fails; the namespace is removed again.
    pub fn add_external(&mut self) -> anyhow::Result<&Netns> {
        if self.external.is_none() {
            let netns = Netns::new("ext")?;
            disable_dad(&netns)?;
            plug(&self.underlay, &netns, EXTERNAL_PORT)?;
            add_addrs(&netns, EXTERNAL_V4, EXTERNAL_V6)?;
            wait_oper_state(&netns, NODE_IF, true, LINK_STATE_TIMEOUT)?;
            wait_oper_state(&self.underlay, EXTERNAL_PORT, true, LINK_STATE_TIMEOUT)?;
            self.external = Some(netns);
        }
        Ok(self.external.as_ref().expect("set above"))
    }

    /// The nodes, in creation order (node i has host part 11+i).
    #[must_use]
    pub fn nodes(&self) -> &[UnderlayNode] {
        &self.nodes
    }

    /// The external host's namespace, if [`Underlay::add_external`] was called.
    #[must_use]
    pub fn external(&self) -> Option<&Netns> {
        self.external.as_ref()
    }

    /// The underlay namespace holding the bridge and the nodes' ports (for `tcpdump`, link state,
    /// or a test that wants to shape the "wire").
    #[must_use]
    pub fn bridge_ns(&self) -> &Netns {
        &self.underlay
    }

    /// Makes the veth "wire" behave like one between NICs, for XDP: every host (the nodes and
    /// the external one) checksums what it sends in software (`tx off`: a veth otherwise passes a
    /// packet with its checksum left to "offload", which no wire carries and XDP cannot finish),
    /// and the bridge's ports take frames a node's XDP program transmits (an `XDP_PASS` program
    /// on each: a veth is woken for frames its peer's XDP program sends only when it runs XDP
    /// itself). The programs stay attached as long as the underlay.
    ///
    /// # Errors
    /// If `ethtool` fails or a program cannot be attached.
    pub fn wire_like(&mut self) -> anyhow::Result<()> {
        let mut ports: Vec<String> = self.nodes.iter().map(|n| n.underlay_port.clone()).collect();
        for node in &self.nodes {
            node.netns.ethtool(&["-K", NODE_IF, "tx", "off"])?;
        }
        if let Some(external) = &self.external {
            external.ethtool(&["-K", NODE_IF, "tx", "off"])?;
            ports.push(EXTERNAL_PORT.to_owned());
        }
        for port in ports {
            self.xdp_links
                .push(crate::xdp_pass::attach(&self.underlay, &port)?);
        }
        Ok(())
    }

    /// Takes node `index`'s port on the bridge down (`up == false`) or up again: with it down,
    /// nothing reaches the node over the underlay and the node's `eth0` loses carrier, as when a
    /// node's cable is pulled. Its addresses and routes stay. Returns once the node's `eth0` reports
    /// the new operational state (up, or not up).
    ///
    /// # Errors
    /// If there is no node `index`, `ip` fails, or `eth0` does not follow within
    /// [`LINK_STATE_TIMEOUT`].
    pub fn set_link(&self, index: usize, up: bool) -> anyhow::Result<()> {
        let node = self
            .nodes
            .get(index)
            .with_context(|| format!("no node {index} (the underlay has {})", self.nodes.len()))?;
        let state = if up { "up" } else { "down" };
        self.underlay
            .ip(&["link", "set", &node.underlay_port, state])?;
        wait_oper_state(&node.netns, NODE_IF, up, LINK_STATE_TIMEOUT)
    }
}

/// Creates a veth pair from the underlay namespace: `port` stays there, enslaved to the bridge, and
/// its peer is created directly in `netns` as `eth0`; both get MTU 1500 and are brought up.
fn plug(underlay: &Netns, netns: &Netns, port: &str) -> anyhow::Result<()> {
    let mtu = UNDERLAY_MTU.to_string();
    underlay.ip(&[
        "link",
        "add",
        port,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        NODE_IF,
        "mtu",
        &mtu,
        "netns",
        netns.name(),
    ])?;
    underlay.ip(&["link", "set", port, "master", UNDERLAY_BRIDGE, "up"])?;
    netns.ip(&["link", "set", NODE_IF, "up"])?;
    Ok(())
}

/// Turns IPv6 duplicate address detection off in `netns`, for the links that exist and those
/// created later (`net.ipv6.conf.{all,default}.accept_dad=0`), so every address is usable at once.
///
/// This matters beyond the addresses themselves: while a link's link-local address is tentative,
/// the kernel sends no neighbour solicitation on it for packets it forwards (it solicits from the
/// link-local address), so a namespace that routes IPv6 drops forwarded packets for the first
/// one to two seconds after a link appears.
///
/// # Errors
/// If `sysctl` fails.
pub fn disable_dad(netns: &Netns) -> anyhow::Result<()> {
    netns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    netns.sysctl("net.ipv6.conf.default.accept_dad", "0")
}

/// Waits until link `dev` in `netns` is operationally up (`up`), or anything but up (`!up`).
///
/// A veth end that was just brought up is not usable at once: the kernel turns its carrier on
/// through the deferred link-watch work (up to a second later), and until then IPv6 treats the
/// link as not ready and drops what it should route there. Waiting for `state UP` closes that gap.
///
/// # Errors
/// If `ip` fails or the state is not reached within `timeout`; the error shows the last state.
pub fn wait_oper_state(
    netns: &Netns,
    dev: &str,
    up: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let line = netns.ip(&["-o", "link", "show", "dev", dev])?;
        let state = line
            .split_whitespace()
            .skip_while(|&word| word != "state")
            .nth(1)
            .unwrap_or("?");
        if (state == "UP") == up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{dev} in netns {} is still {state} after {timeout:?} (expected {})",
                netns.name(),
                if up { "UP" } else { "not UP" }
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Adds the underlay addresses to `eth0` in `netns` (IPv6 without duplicate address detection).
fn add_addrs(netns: &Netns, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> anyhow::Result<()> {
    netns.ip(&[
        "addr",
        "add",
        &format!("{ipv4}/{UNDERLAY_PREFIX_V4}"),
        "dev",
        NODE_IF,
    ])?;
    netns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ipv6}/{UNDERLAY_PREFIX_V6}"),
        "dev",
        NODE_IF,
        "nodad",
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read as _, Write as _};
    use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
    use std::process::Command;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;

    /// Bound on every connect and accept in these tests.
    const TIMEOUT: Duration = Duration::from_secs(3);

    /// A listener in `netns` on `ip`, port chosen by the kernel.
    fn listen(netns: &Netns, ip: IpAddr) -> TcpListener {
        netns
            .run(|| TcpListener::bind(SocketAddr::new(ip, 0)))
            .expect("joining the node's netns")
            .unwrap_or_else(|err| panic!("listening on {ip} in {}: {err}", netns.name()))
    }

    /// Connects from `from` to `to`, within `timeout`.
    fn connect(from: &Netns, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        from.run(|| TcpStream::connect_timeout(&to, timeout))
            .expect("joining the client's netns")
    }

    /// Accepts one connection within `TIMEOUT`, exchanges a byte each way, and returns the client
    /// address the server saw.
    fn accept_and_echo(listener: &TcpListener, client: &mut TcpStream) -> SocketAddr {
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + TIMEOUT;
        let (mut server, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(err) if err.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("accepting on {:?}: {err}", listener.local_addr()),
            }
        };
        server.set_nonblocking(false).expect("blocking");
        server.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        client.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        client.write_all(b"?").expect("client write");
        let mut byte = [0_u8; 1];
        server.read_exact(&mut byte).expect("server read");
        server.write_all(b"!").expect("server write");
        client.read_exact(&mut byte).expect("client read");
        assert_eq!(&byte, b"!", "reply byte");
        peer
    }

    /// Opens a TCP connection from `from` to `ip` in `to`, and checks the server saw `from_ip`.
    fn assert_tcp(from: &Netns, from_ip: IpAddr, to: &Netns, ip: IpAddr) {
        let listener = listen(to, ip);
        let addr = listener.local_addr().expect("local addr");
        let mut client = connect(from, addr, TIMEOUT).unwrap_or_else(|err| {
            panic!(
                "expected {} to connect to {addr} in {}, got {err}",
                from.name(),
                to.name()
            )
        });
        let peer = accept_and_echo(&listener, &mut client);
        assert_eq!(
            peer.ip(),
            from_ip,
            "the server at {addr} saw the wrong client"
        );
    }

    #[test]
    fn node_addresses_spell_the_same_digits() {
        assert_eq!(
            node_addrs(0),
            (
                Ipv4Addr::new(10, 99, 0, 11),
                "fd00:99::11".parse().expect("v6")
            )
        );
        assert_eq!(
            node_addrs(238),
            (
                Ipv4Addr::new(10, 99, 0, 249),
                "fd00:99::249".parse().expect("v6")
            )
        );
        assert_eq!(node_name(2), "node-2");
    }

    #[test]
    fn nodes_and_external_host_reach_each_other() {
        let mut underlay = Underlay::new(3).expect("building a 3-node underlay");
        let (n0, n2) = (&underlay.nodes()[0], &underlay.nodes()[2]);
        assert_eq!(
            (n2.ipv4, n2.ipv6, n2.name.as_str()),
            (
                Ipv4Addr::new(10, 99, 0, 13),
                "fd00:99::13".parse().expect("v6"),
                "node-2"
            )
        );
        assert_tcp(&n0.netns, n0.ipv4.into(), &n2.netns, n2.ipv4.into());
        assert_tcp(&n0.netns, n0.ipv6.into(), &n2.netns, n2.ipv6.into());

        underlay.add_external().expect("adding the external host");
        let external = underlay.external().expect("external host");
        let n1 = &underlay.nodes()[1];
        assert_tcp(external, EXTERNAL_V4.into(), &n1.netns, n1.ipv4.into());
        assert_tcp(external, EXTERNAL_V6.into(), &n1.netns, n1.ipv6.into());

        let routes = external.ip(&["-4", "route", "show"]).expect("ip route");
        assert_eq!(
            routes.lines().count(),
            1,
            "the external host must only have its connected route, has: {routes}"
        );
        let beyond = connect(
            external,
            SocketAddr::from(([10, 244, 0, 10], 80)),
            Duration::from_millis(500),
        );
        assert_eq!(
            beyond.as_ref().map_err(std::io::Error::raw_os_error).err(),
            Some(Some(libc::ENETUNREACH)),
            "the external host must not reach beyond the underlay: {beyond:?}"
        );
        let forwarding = n1
            .netns
            .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
            .expect("joining netns")
            .expect("reading ip_forward");
        assert_eq!(forwarding.trim(), "1", "ip_forward on {}", n1.name);
    }

    #[test]
    fn a_node_with_its_link_down_is_unreachable_until_it_is_up() {
        let underlay = Underlay::new(2).expect("building a 2-node underlay");
        let (n0, n1) = (&underlay.nodes()[0], &underlay.nodes()[1]);
        // Learn the neighbour first, so the failure below is the link's, not ARP's.
        assert_tcp(&n0.netns, n0.ipv4.into(), &n1.netns, n1.ipv4.into());

        underlay.set_link(1, false).expect("link down");
        let listener = listen(&n1.netns, n1.ipv4.into());
        let addr = listener.local_addr().expect("local addr");
        let cut = connect(&n0.netns, addr, Duration::from_millis(300));
        assert_eq!(
            cut.as_ref().map_err(std::io::Error::kind).err(),
            Some(ErrorKind::TimedOut),
            "node-1's link is down, expected a connect timeout: {cut:?}"
        );

        underlay.set_link(1, true).expect("link up");
        let mut client = connect(&n0.netns, addr, TIMEOUT)
            .unwrap_or_else(|err| panic!("node-1's link is up again, still cannot connect: {err}"));
        accept_and_echo(&listener, &mut client);
        assert!(underlay.set_link(2, true).is_err(), "there is no node 2");
    }

    #[test]
    fn drop_deletes_every_namespace() {
        let mut underlay = Underlay::new(2).expect("building an underlay");
        underlay.add_external().expect("adding the external host");
        let mut names: Vec<String> = underlay
            .nodes()
            .iter()
            .map(|n| n.netns.name().to_owned())
            .collect();
        names.push(underlay.bridge_ns().name().to_owned());
        names.push(underlay.external().expect("external").name().to_owned());
        drop(underlay);
        let output = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list");
        let list = String::from_utf8_lossy(&output.stdout);
        for name in &names {
            assert!(
                !list.split_whitespace().any(|word| word == name),
                "{name} left behind: {list}"
            );
        }
    }
}
