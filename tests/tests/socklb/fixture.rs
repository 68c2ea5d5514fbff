//! The node every check runs on: backend pods, a client pod, gannetd on either data plane, and
//! the probes the checks drive.

use std::{process::Command, time::Duration};

use gannet_testkit::{
    Cgroup, ChildGuard, Netns, PodNet,
    agent::{Agent, endpoint_slice_yaml, service_yaml},
    bin_path,
    probe::{Report, parse_json_output},
    run_in, spawn,
};

pub(crate) const VIP4: &str = "10.96.0.10";
pub(crate) const VIP6: &str = "fd00:96::10";
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// The data plane a check runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plane {
    Ebpf,
    Nftables,
}

impl Plane {
    /// What gannetd logs when a restart takes over what the killed one programmed.
    pub(crate) fn adopted(self) -> &'static str {
        match self {
            Plane::Ebpf => "adopted the running data plane",
            Plane::Nftables => "adopted the nftables table inet gannet-services",
        }
    }

    /// How `sendto()` from a local client to a service without backends fails at once: the
    /// socket load balancer refuses in the hook; the table rejects the datagram in the output
    /// hook, which the kernel reports to the sender as a dropped packet.
    pub(crate) fn udp_refusal(self) -> &'static str {
        match self {
            Plane::Ebpf => "ECONNREFUSED",
            Plane::Nftables => "EPERM",
        }
    }
}

/// A node with one client pod (pod 0) and `n` backend pods (pods 1..=n, named b1..bn) serving
/// TCP and UDP on port 8080 over IPv4 and IPv6, and gannetd attached to the client's cgroup
/// (eBPF) or programming the client pod's namespace (nftables). Field order is drop order.
pub(crate) struct Cluster {
    pub(crate) agent: Agent,
    _servers: Vec<ChildGuard>,
    pub(crate) cgroup: Cgroup,
    pub(crate) net: PodNet,
    pub(crate) plane: Plane,
}

impl Cluster {
    pub(crate) fn new(backends: usize, agent_args: &[&str]) -> Cluster {
        Cluster::on(Plane::Ebpf, backends, agent_args)
    }

    pub(crate) fn on(plane: Plane, backends: usize, agent_args: &[&str]) -> Cluster {
        Cluster::build(plane, false, backends, agent_args)
    }

    /// The eBPF data plane with gannetd in the node's namespace (where the bridge is), not the
    /// test's, as on a node: clients there are host-network ones, clients in pods are in
    /// namespaces of their own.
    pub(crate) fn ebpf_in_node(backends: usize, agent_args: &[&str]) -> Cluster {
        Cluster::build(Plane::Ebpf, true, backends, agent_args)
    }

    fn build(plane: Plane, in_node: bool, backends: usize, agent_args: &[&str]) -> Cluster {
        let net = PodNet::new(backends + 1).expect("building the pod network");
        let mut servers = Vec::new();
        for (i, pod) in net.pods().iter().enumerate().skip(1) {
            let mut cmd = Command::new(bin_path("gannet-probe"));
            cmd.args(["serve", "--name", &format!("b{i}")]).args([
                "--listen",
                "0.0.0.0:8080",
                "--listen",
                "[::]:8080",
            ]);
            let mut server = spawn(cmd, Some(&pod.netns), None).expect("starting a backend");
            server
                .wait_for_line("ready", Duration::from_secs(10))
                .expect("backend ready");
            servers.push(server);
        }
        let cgroup = Cgroup::new().expect("creating the test cgroup");
        let agent = match plane {
            Plane::Ebpf => Agent::start_in(in_node.then(|| net.node()), &cgroup, agent_args),
            Plane::Nftables => {
                let mut args = vec!["--dataplane", "nftables"];
                args.extend_from_slice(agent_args);
                Agent::start_in(Some(&net.pods()[0].netns), &cgroup, &args)
            }
        }
        .expect("starting gannetd");
        Cluster {
            agent,
            _servers: servers,
            cgroup,
            net,
            plane,
        }
    }

    pub(crate) fn backend_v4(&self, i: usize) -> String {
        self.net.pods()[i].ipv4.to_string()
    }

    pub(crate) fn backend_v6(&self, i: usize) -> String {
        self.net.pods()[i].ipv6.to_string()
    }

    /// Publishes service `web` (TCP 80 "http", UDP 53 "dns") with the given ready backends.
    pub(crate) fn publish(&mut self, affinity: Option<u32>, ready: &[(usize, bool)]) {
        self.agent
            .apply(
                "web-svc.yaml",
                &service_yaml(
                    "web",
                    &[VIP4],
                    &[("http", 80, "TCP"), ("dns", 53, "UDP")],
                    affinity,
                ),
                "manifests applied",
            )
            .expect("service applied");
        self.publish_endpoints(ready);
    }

    pub(crate) fn publish_endpoints(&mut self, ready: &[(usize, bool)]) {
        let endpoints: Vec<(String, bool)> = ready
            .iter()
            .map(|(i, r)| (self.backend_v4(*i), *r))
            .collect();
        self.agent
            .apply(
                "web-eps.yaml",
                &endpoint_slice_yaml(
                    "web-1",
                    "web",
                    "IPv4",
                    &[("http", "TCP"), ("dns", "UDP")],
                    &endpoints,
                ),
                "manifests applied",
            )
            .expect("endpoints applied");
    }

    /// Runs gannet-probe in the client pod and the test cgroup; returns its report.
    pub(crate) fn probe(&self, args: &[&str]) -> Report {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        let output = run_in(
            cmd,
            Some(&self.net.pods()[0].netns),
            Some(&self.cgroup),
            PROBE_TIMEOUT,
        )
        .expect("running the probe");
        parse_json_output(&output).expect("probe report")
    }

    /// Like `probe`, but in the client pod *outside* the cgroup: no load balancing.
    pub(crate) fn probe_outside_cgroup(&self, args: &[&str]) -> Report {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        let output = run_in(cmd, Some(&self.net.pods()[0].netns), None, PROBE_TIMEOUT)
            .expect("running the probe");
        parse_json_output(&output).expect("probe report")
    }

    /// Whether what gannetd programs is still there: its bpffs directory (eBPF) or its table
    /// in the client pod's namespace (nftables).
    pub(crate) fn holds_state(&self) -> bool {
        match self.plane {
            Plane::Ebpf => self.agent.bpf_root().exists(),
            Plane::Nftables => {
                let mut nft = Command::new("nft");
                nft.args(["list", "table", "inet", "gannet-services"]);
                run_in(nft, Some(&self.net.pods()[0].netns), None, PROBE_TIMEOUT)
                    .expect("running nft")
                    .status
                    .success()
            }
        }
    }

    pub(crate) fn spawn_probe(&self, args: &[&str]) -> ChildGuard {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        spawn(cmd, Some(&self.net.pods()[0].netns), Some(&self.cgroup)).expect("spawning probe")
    }

    /// A `hold` probe in the node's namespace, in the test cgroup or (`in_cgroup` false)
    /// outside it; returns it once connected, with the `connected` line.
    pub(crate) fn hold_in_node(&self, args: &[&str], in_cgroup: bool) -> (ChildGuard, String) {
        self.hold_in(self.net.node(), args, in_cgroup)
    }

    /// A `hold` probe in pod `pod`'s namespace, in the test cgroup or outside it.
    pub(crate) fn hold_in_pod(
        &self,
        pod: usize,
        args: &[&str],
        in_cgroup: bool,
    ) -> (ChildGuard, String) {
        self.hold_in(&self.net.pods()[pod].netns, args, in_cgroup)
    }

    fn hold_in(&self, netns: &Netns, args: &[&str], in_cgroup: bool) -> (ChildGuard, String) {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.arg("hold").args(args);
        let mut probe =
            spawn(cmd, Some(netns), in_cgroup.then_some(&self.cgroup)).expect("spawning probe");
        let line = probe
            .wait_for_line("connected", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("hold {args:?} must connect: {e:#}"));
        (probe, line)
    }
}

/// Sends `ping` to a `hold` probe and returns its answer (a backend name or `error: ERRNO`).
pub(crate) fn ping(probe: &mut ChildGuard) -> String {
    probe.send_line("ping").expect("writing to the probe");
    probe
        .read_line(Duration::from_secs(5))
        .expect("the probe answers every ping")
        .trim()
        .to_owned()
}

pub(crate) fn assert_all_ok(report: &Report, what: &str) {
    assert!(
        report.failed == 0 && report.ok > 0,
        "{what}: expected every request to succeed, got {report:?}"
    );
}
