//! The gannet demo: gannet-control on its embedded defaults, gannetd in a simulated node's network
//! namespace taking its services and its pod-CIDR lease from it, pods wired by the real gannet-cni,
//! the Kubernetes manifests of `examples/demo/` applied with gannetctl, and real traffic through
//! the ClusterIP; then a second node joins over the VXLAN overlay and serves too. Everything it
//! creates is removed when it ends, also on Ctrl-C or failure.

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gannet_testkit::{
    Cgroup, ChildGuard, Netns,
    agent::Agent,
    bin_path,
    cluster::Underlay,
    control::ControlPlane,
    probe::{Report, parse_json_output},
    run_in, spawn,
};
use serde_json::{Value, json};

use clap::Parser as _;
use serde as _;

const WEB: &str = include_str!("../../../examples/demo/web.yaml");
const WEB_4: &str = include_str!("../../../examples/demo/web-4.yaml");
const EMPTY: &str = include_str!("../../../examples/demo/empty.yaml");
const WEB_5: &str = include_str!("../../../examples/demo/web-5.yaml");
const WEB_PUBLIC: &str = include_str!("../../../examples/demo/web-public.yaml");
const VIP: &str = "10.96.0.10";
const TO_HTTP: &str = "10.96.0.10:80";
/// How long the demo waits for something gannet does in the background.
const WAIT: Duration = Duration::from_secs(20);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The command line: nothing to set, but `--help` and `--version` answer instead of running.
#[derive(clap::Parser)]
#[command(
    name = "gannet-demo",
    version,
    about = "The gannet demo: gannet-control, gannetd and gannet-cni on simulated nodes (network \
             namespaces of their own, nothing connected to the host's network), the manifests of \
             examples/demo applied with gannetctl, and real traffic through a ClusterIP and \
             NodePorts. Run as root; everything it creates is removed when it ends, also on \
             Ctrl-C."
)]
struct Cli {}

fn main() -> ExitCode {
    if let Err(e) = Cli::try_parse() {
        let _ = e.print();
        return if e.use_stderr() {
            ExitCode::from(64)
        } else {
            ExitCode::SUCCESS
        };
    }
    if unsafe_is_root() {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        }
        match demo() {
            Ok(()) => {
                println!("\nDone: gannetd cleaned up, namespaces and cgroup removed.");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("\ndemo failed: {e:#}");
                ExitCode::FAILURE
            }
        }
    } else {
        eprintln!("gannet-demo: run as root (it loads eBPF programs and creates namespaces)");
        ExitCode::from(64)
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Values as a person reads them: `10.96.0.10:80, 10.96.0.11:80` (`none` when empty).
fn joined<'a>(values: impl Iterator<Item = &'a String>) -> String {
    let values: Vec<&str> = values.map(String::as_str).collect();
    if values.is_empty() {
        "none".to_owned()
    } else {
        values.join(", ")
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A pod of the demo: its network namespace (wired by gannet-cni), its node and, for web pods,
/// its server.
struct DemoPod {
    name: &'static str,
    node: usize,
    _server: Option<ChildGuard>,
    netns: Netns,
}

/// The second node's gannetd and cgroup, once it joined.
struct SecondNode {
    agent: Agent,
    _cgroup: Cgroup,
}

/// Field order is drop order: pods' networks go (CNI DEL) while the gannetds still run, then the
/// gannetds, the control plane, the cgroup and the nodes.
struct Demo {
    pods: Vec<DemoPod>,
    second: Option<SecondNode>,
    agent: Agent,
    plane: ControlPlane,
    /// gannet-cni's configuration on each node.
    cni_confs: Vec<Value>,
    ipam_dir: PathBuf,
    cgroup: Cgroup,
    underlay: Underlay,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = cni_run(
                &self.underlay.nodes()[pod.node].netns,
                &pod.netns,
                "DEL",
                pod.name,
                &self.cni_confs[pod.node],
            );
        }
        let _ = std::fs::remove_dir_all(&self.ipam_dir);
    }
}

/// gannet-cni's configuration for a node whose gannetd is `agent`.
fn cni_conf(agent: &Agent, ipam_dir: &std::path::Path, node: usize) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "gannet-demo",
        "type": "gannet-cni",
        "subnetFile": agent.subnet_file(),
        "agentSocket": agent.cni_socket(),
        "ipam": {"type": "gannet", "dataDir": ipam_dir.join(format!("node-{node}"))},
    })
}

/// Runs gannet-cni as a runtime does, for `default/<name>`; returns its result.
fn cni_run(
    node: &Netns,
    pod: &Netns,
    command: &str,
    name: &str,
    conf: &Value,
) -> anyhow::Result<Value> {
    use std::io::Write as _;
    let mut cmd = Command::new(bin_path("gannet-cni"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("demo-{name}"))
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
        );
    let mut child = spawn(cmd, Some(node), None)?;
    child
        .stdin()
        .context("gannet-cni stdin")?
        .write_all(conf.to_string().as_bytes())?;
    child.close_stdin();
    let output = child.wait_output(Duration::from_secs(20))?;
    if !output.status.success() {
        bail!(
            "gannet-cni {command} {name}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if output.stdout.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

impl Demo {
    fn probe(&self, args: &[&str]) -> anyhow::Result<Report> {
        check_interrupted()?;
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        let output = run_in(
            cmd,
            Some(&self.pods[0].netns),
            Some(&self.cgroup),
            Duration::from_secs(60),
        )?;
        parse_json_output(&output)
    }

    /// `gannet-probe ARGS…` from the host outside the cluster (not under the socket load
    /// balancer: its packets reach the nodes' NodePort program).
    fn probe_outside(&self, args: &[&str]) -> anyhow::Result<Report> {
        check_interrupted()?;
        let outside = self
            .underlay
            .external()
            .ok_or_else(|| anyhow::anyhow!("no outside host"))?;
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        let output = run_in(cmd, Some(outside), None, Duration::from_secs(60))?;
        parse_json_output(&output)
    }

    fn gannetd_said(&self, needle: &str) {
        if let Some(line) = self.agent.logs().lines().rev().find(|l| l.contains(needle)) {
            let msg = line.split_once(": ").map_or(line, |(_, m)| m);
            println!("      gannetd: {msg}");
        }
    }

    /// Creates a pod's namespace on `node`, wires it with gannet-cni and (for web pods) starts its
    /// server.
    fn add_pod(&mut self, name: &'static str, node: usize) -> anyhow::Result<()> {
        check_interrupted()?;
        let netns = Netns::new(name)?;
        let result = cni_run(
            &self.underlay.nodes()[node].netns,
            &netns,
            "ADD",
            name,
            &self.cni_confs[node],
        )?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .context("gannet-cni returned no address")?
            .to_owned();
        let server = if name.starts_with("web") {
            let mut cmd = Command::new(bin_path("gannet-probe"));
            cmd.args(["serve", "--name", name, "--listen", "0.0.0.0:8080"]);
            let mut server = spawn(cmd, Some(&netns), None)?;
            server.wait_for_line("ready", Duration::from_secs(10))?;
            Some(server)
        } else {
            None
        };
        println!("        {name:<7} {ip}");
        self.pods.push(DemoPod {
            name,
            node,
            _server: server,
            netns,
        });
        Ok(())
    }

    /// `gannetctl ARGS`, echoed with its output indented.
    fn gannetctl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
        check_interrupted()?;
        let output = self.plane.ctl(args, stdin)?;
        if !output.status.success() {
            bail!(
                "gannetctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        println!("      $ gannetctl {}", args.join(" "));
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            println!("        {line}");
        }
        Ok(())
    }

    /// Waits until the data plane serves `frontend` with exactly `backends` (`ip:port`).
    fn wait_backends(&self, frontend: &str, count: usize) -> anyhow::Result<()> {
        wait_backends_of(&self.agent, frontend, count)
    }
}

/// Waits until `agent` has programmed `frontend` with `count` backends.
fn wait_backends_of(agent: &Agent, frontend: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        check_interrupted()?;
        let status = agent.status()?;
        let now = status["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| {
                s["frontend"]
                    .as_str()
                    .is_some_and(|f| f.starts_with(frontend))
            })
            .and_then(|s| s["backends"].as_array().map(Vec::len));
        if now == Some(count) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{frontend} has {} backends after {} s, not {count}; gannetd log:\n{}",
                now.map_or_else(|| "no".to_owned(), |n| n.to_string()),
                WAIT.as_secs(),
                agent.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Demo {
    fn bars(&self, report: &Report) {
        let total: u64 = report.backends.values().sum();
        for pod in self.pods.iter().filter(|p| p.name.starts_with("web")) {
            let n = report.backends.get(pod.name).copied().unwrap_or(0);
            let width = usize::try_from(n * 40 / total.max(1)).unwrap_or(0);
            println!("        {:<6} {:<40} {n:>4}", pod.name, "█".repeat(width));
        }
    }
}

fn demo() -> anyhow::Result<()> {
    println!(
        "gannet demo: gannet-control, gannetd and gannet-cni on simulated nodes; real eBPF, real packets\n"
    );

    println!("[1/9] gannet-control on its embedded defaults (one store file, a unix socket)");
    let plane = ControlPlane::start(&[])?;
    println!("      serving on {}", plane.addr());

    // Two nodes: namespaces on a bridge of their own (nothing connects them to this machine's
    // network); the second joins in step 8.
    let underlay = Underlay::new(2)?;
    let cgroup = Cgroup::new()?;
    println!(
        "\n[2/9] gannetd joins, in node-0's namespace ({}), with the VXLAN overlay, attached to the pods' cgroup {}",
        underlay.nodes()[0].ipv4,
        cgroup.path().display()
    );
    let mut agent = start_node(&underlay, 0, &cgroup, &plane.addr())?;
    agent.wait_log("subnet file written", 1)?;
    let lease = std::fs::read_to_string(agent.subnet_file())?;
    println!(
        "      node registered; its lease, as gannet-cni reads it ({}):",
        agent.subnet_file().display()
    );
    for line in lease.lines() {
        println!("        {line}");
    }
    let ipam_dir = std::env::temp_dir().join(gannet_testkit::unique_name("gannet-demo-ipam"));
    let cni_confs = vec![cni_conf(&agent, &ipam_dir, 0)];
    let mut demo = Demo {
        pods: Vec::new(),
        second: None,
        agent,
        plane,
        cni_confs,
        ipam_dir,
        cgroup,
        underlay,
    };

    println!(
        "\n[3/9] gannetctl apply -f examples/demo/web.yaml: Service web ({VIP}) selecting pods web-1..3"
    );
    demo.gannetctl(&["apply", "-f", "-"], Some(WEB))?;
    println!("      gannet-cni wires the pods (addresses from the node's lease):");
    for name in ["client", "web-1", "web-2", "web-3"] {
        demo.add_pod(name, 0)?;
    }
    demo.wait_backends(TO_HTTP, 3)?;
    println!(
        "      gannetd reported their addresses; the endpoints controller made them endpoints:"
    );
    demo.gannetctl(&["get", "endpointslices"], None)?;
    demo.gannetd_said("services synced");
    let report = demo.probe(&["tcp", "--to", TO_HTTP, "--count", "300"])?;
    println!("      300 new TCP connections from the client to {TO_HTTP}:");
    demo.bars(&report);
    println!(
        "      getpeername() in the client says: {}; failed: {}",
        joined(report.peers.keys()),
        report.failed
    );
    let udp = demo.probe(&["udp", "--to", "10.96.0.10:53", "--count", "3"])?;
    println!(
        "      UDP (DNS-style) to 10.96.0.10:53: replies from {}, answered by {}",
        joined(udp.peers.keys()),
        joined(udp.backends.keys())
    );

    println!("\n[4/9] web-3 is shutting down: deleted with a grace period, it turns terminating");
    demo.gannetctl(&["delete", "pod", "web-3", "--grace-period", "120"], None)?;
    demo.wait_backends(TO_HTTP, 2)?;
    let report = demo.probe(&["tcp", "--to", TO_HTTP, "--count", "300"])?;
    println!("      300 new connections:");
    demo.bars(&report);

    println!("\n[5/9] A service that selects no pod: gannetctl apply -f examples/demo/empty.yaml");
    demo.gannetctl(&["apply", "-f", "-"], Some(EMPTY))?;
    demo.wait_backends("10.96.0.20:80", 0)?;
    let report = demo.probe(&["tcp", "--to", "10.96.0.20:80", "--count", "1"])?;
    println!(
        "      connect() to 10.96.0.20:80 fails with {} after {} µs (no timeout, no packet to the VIP)",
        joined(report.errors.keys()),
        report.first_error_after_us.unwrap_or(0)
    );

    println!(
        "\n[6/9] gannet-control stops, and gannetd is killed (SIGKILL) and restarted, while the client loops through the service"
    );
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args([
        "loop",
        "--to",
        TO_HTTP,
        "--duration-ms",
        "4000",
        "--interval-ms",
        "1",
    ]);
    let mut looping = spawn(cmd, Some(&demo.pods[0].netns), Some(&demo.cgroup))?;
    std::thread::sleep(Duration::from_millis(500));
    demo.plane.stop()?;
    println!("      gannet-control stopped");
    std::thread::sleep(Duration::from_millis(500));
    demo.agent.stop(libc::SIGKILL)?;
    println!("      gannetd killed; programs stay attached through their pinned links");
    std::thread::sleep(Duration::from_millis(800));
    demo.agent.restart()?;
    demo.gannetd_said("adopted the running data plane");
    let report: Report = parse_json_output(&looping.wait_output(Duration::from_secs(30))?)?;
    println!(
        "      the client made {} requests meanwhile; {} failed",
        report.ok + report.failed,
        report.failed
    );

    println!("\n[7/9] gannet-control is back; a new pod web-4 starts (examples/demo/web-4.yaml)");
    demo.plane.restart()?;
    demo.gannetctl(&["apply", "-f", "-"], Some(WEB_4))?;
    demo.add_pod("web-4", 0)?;
    demo.wait_backends(TO_HTTP, 3)?;
    demo.gannetd_said("watching the control plane again");
    let report = demo.probe(&["tcp", "--to", TO_HTTP, "--count", "300"])?;
    println!("      300 new connections:");
    demo.bars(&report);

    println!(
        "\n[8/9] A second node joins ({}); pod web-5 starts there (examples/demo/web-5.yaml)",
        demo.underlay.nodes()[1].ipv4
    );
    let cgroup = Cgroup::new()?;
    let mut agent = start_node(&demo.underlay, 1, &cgroup, &demo.plane.addr())?;
    agent.wait_log("node programmed", 1)?;
    demo.agent.wait_log("node programmed", 1)?;
    demo.cni_confs.push(cni_conf(&agent, &demo.ipam_dir, 1));
    demo.second = Some(SecondNode {
        agent,
        _cgroup: cgroup,
    });
    println!("      node-0 reaches node-1's pods through gannet.vxlan (Flannel's wire format):");
    let node0 = &demo.underlay.nodes()[0].netns;
    for line in node0.ip(&["route", "show", "proto", "87"])?.lines() {
        println!("        $ ip route: {line}");
    }
    for line in node0.ip(&["neigh", "show", "dev", "gannet.vxlan"])?.lines() {
        println!("        $ ip neigh: {line}");
    }
    demo.gannetctl(&["apply", "-f", "-"], Some(WEB_5))?;
    demo.add_pod("web-5", 1)?;
    demo.wait_backends(TO_HTTP, 4)?;
    let report = demo.probe(&["tcp", "--to", TO_HTTP, "--count", "300"])?;
    println!("      300 new connections from the client on node-0; web-5 answers from node-1:");
    demo.bars(&report);

    println!(
        "\n[9/9] From outside the cluster: gannetctl apply -f examples/demo/web-public.yaml (NodePort 30080)"
    );
    demo.underlay.add_external()?;
    demo.gannetctl(&["apply", "-f", "-"], Some(WEB_PUBLIC))?;
    demo.wait_backends("10.96.0.11:80", 4)?;
    if let Some(second) = &demo.second {
        wait_backends_of(&second.agent, "10.96.0.11:80", 4)?;
    }
    for node in 0..2 {
        let to = format!("{}:30080", demo.underlay.nodes()[node].ipv4);
        let report = demo.probe_outside(&["tcp", "--to", &to, "--count", "300"])?;
        println!(
            "      300 new connections from a host outside to {to} (node-{node}'s tc program: \
             Maglev, conntrack, SNAT into the overlay for the other node's pod); failed: {}",
            report.failed
        );
        demo.bars(&report);
    }
    check_interrupted()
}

/// gannetd on node `index` of `underlay` with the VXLAN overlay and masquerade, against the
/// control plane at `control`.
fn start_node(
    underlay: &Underlay,
    index: usize,
    cgroup: &Cgroup,
    control: &str,
) -> anyhow::Result<Agent> {
    let node = &underlay.nodes()[index];
    let ip = node.ipv4.to_string();
    Agent::start_node(
        &node.netns,
        cgroup,
        control,
        &[
            "--overlay",
            "vxlan",
            "--nodeport-interfaces",
            "eth0",
            "--masquerade=true",
            "--node-name",
            &node.name,
            "--node-ip",
            &ip,
        ],
    )
}
