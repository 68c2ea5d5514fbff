//! The gannet demo: a simulated node in network namespaces, gannetd attached to a client pod's
//! cgroup, the Kubernetes manifests of `examples/demo/`, and real traffic through the ClusterIP.
//! Everything it creates is removed when it ends, also on Ctrl-C or failure.

use std::{
    collections::BTreeMap,
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, bail};
use gannet_testkit::{
    Cgroup, ChildGuard, PodNet,
    agent::Agent,
    bin_path,
    probe::{Report, parse_json_output},
    run_in, spawn,
};

use clap as _;
use serde as _;
use serde_json as _;

const WEB: &str = include_str!("../../../examples/demo/web.yaml");
const WEB_3_NOT_READY: &str = include_str!("../../../examples/demo/web-3-not-ready.yaml");
const EMPTY: &str = include_str!("../../../examples/demo/empty.yaml");
const PODS: [&str; 4] = ["client", "web-1", "web-2", "web-3"];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
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

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

struct Demo {
    agent: Agent,
    _servers: Vec<ChildGuard>,
    cgroup: Cgroup,
    net: PodNet,
}

impl Demo {
    fn probe(&self, args: &[&str]) -> anyhow::Result<Report> {
        check_interrupted()?;
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(args);
        let output = run_in(
            cmd,
            Some(&self.net.pods()[0].netns),
            Some(&self.cgroup),
            Duration::from_secs(60),
        )?;
        parse_json_output(&output)
    }

    fn gannetd_said(&self, needle: &str) {
        if let Some(line) = self.agent.logs().lines().rev().find(|l| l.contains(needle)) {
            let msg = line.split_once(": ").map_or(line, |(_, m)| m);
            println!("      gannetd: {msg}");
        }
    }
}

fn bars(backends: &BTreeMap<String, u64>, total: u64) {
    for name in &PODS[1..] {
        let n = backends.get(*name).copied().unwrap_or(0);
        let width = usize::try_from(n * 40 / total.max(1)).unwrap_or(0);
        println!("        {name:<6} {:<40} {n:>4}", "█".repeat(width));
    }
}

fn demo() -> anyhow::Result<()> {
    println!("gannet demo: socket-level ClusterIP load balancing by real eBPF programs\n");

    println!("[1/6] A simulated node in network namespaces: a client pod and three web pods");
    let net = PodNet::new(PODS.len()).context("building the pod network")?;
    for (pod, name) in net.pods().iter().zip(PODS) {
        println!("        {name:<7} {}", pod.ipv4);
    }
    let mut servers = Vec::new();
    for (pod, name) in net.pods().iter().zip(PODS).skip(1) {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(["serve", "--name", name, "--listen", "0.0.0.0:8080"]);
        let mut server = spawn(cmd, Some(&pod.netns), None)?;
        server.wait_for_line("ready", Duration::from_secs(10))?;
        servers.push(server);
    }
    let cgroup = Cgroup::new()?;

    println!(
        "\n[2/6] gannetd attached to the client's cgroup {}",
        cgroup.path().display()
    );
    let agent = Agent::start(&cgroup, &[])?;
    let mut demo = Demo {
        agent,
        _servers: servers,
        cgroup,
        net,
    };
    println!("      pinned under {}", demo.agent.bpf_root().display());

    println!(
        "\n[3/6] Apply examples/demo/web.yaml: Service web (10.96.0.10) with 3 ready endpoints"
    );
    demo.agent.apply("web.yaml", WEB, "manifests applied")?;
    demo.gannetd_said("services synced");
    let report = demo.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "300"])?;
    println!("      300 new TCP connections from the client to 10.96.0.10:80:");
    bars(&report.backends, 300);
    let peers: Vec<&String> = report.peers.keys().collect();
    println!(
        "      getpeername() in the client says: {peers:?}; failed: {}",
        report.failed
    );
    let udp = demo.probe(&["udp", "--to", "10.96.0.10:53", "--count", "3"])?;
    println!(
        "      UDP (DNS-style) to 10.96.0.10:53: replies from {:?}, answered by {:?}",
        udp.peers.keys().collect::<Vec<_>>(),
        udp.backends.keys().collect::<Vec<_>>()
    );

    println!("\n[4/6] web-3 fails its readiness probe: apply examples/demo/web-3-not-ready.yaml");
    demo.agent
        .apply("web.yaml", WEB_3_NOT_READY, "manifests applied")?;
    demo.gannetd_said("services synced");
    let report = demo.probe(&["tcp", "--to", "10.96.0.10:80", "--count", "300"])?;
    println!("      300 new connections:");
    bars(&report.backends, 300);

    println!("\n[5/6] A service without ready pods: apply examples/demo/empty.yaml");
    demo.agent.apply("empty.yaml", EMPTY, "manifests applied")?;
    let report = demo.probe(&["tcp", "--to", "10.96.0.20:80", "--count", "1"])?;
    println!(
        "      connect() to 10.96.0.20:80 fails with {:?} after {} µs (no timeout, no packet to the VIP)",
        report.errors.keys().collect::<Vec<_>>(),
        report.first_error_after_us.unwrap_or(0)
    );

    println!(
        "\n[6/6] gannetd is killed (SIGKILL) and restarted while the client loops through the service"
    );
    let mut cmd = Command::new(bin_path("gannet-probe"));
    cmd.args([
        "loop",
        "--to",
        "10.96.0.10:80",
        "--duration-ms",
        "3000",
        "--interval-ms",
        "1",
    ]);
    let mut looping = spawn(cmd, Some(&demo.net.pods()[0].netns), Some(&demo.cgroup))?;
    std::thread::sleep(Duration::from_millis(800));
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
    check_interrupted()
}
