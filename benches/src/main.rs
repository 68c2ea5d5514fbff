//! `gannet-bench`: runs a benchmark scenario and writes `results.json`, `results.md` and charts.
//! Each scenario is its arguments implementing [`scenario::Scenario`]; this file only
//! dispatches.
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the library's; this binary only calls into it"
)]

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use gannet_bench::clusterip::{self, cli::ClusterIpArgs};
use gannet_bench::cni::cli::CniArgs;
use gannet_bench::control::cli::ControlArgs;
use gannet_bench::kubeproxy::{iptables, nft};
use gannet_bench::nodeport::cli::NodePortArgs;
use gannet_bench::overlay::cli::OverlayArgs;
use gannet_bench::pods::cli::PodsArgs;
use gannet_bench::scenario::{self, EXIT_USAGE};
use gannet_bench::services::{bench_services, manifests_yaml, with_node_ports};
use gannet_bench::util;

#[derive(Debug, Parser)]
#[command(
    name = "gannet-bench",
    version,
    about = "gannet's benchmarks: socket-level service load balancing against the limit and kube-proxy. Needs root."
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Client pod → ClusterIP → backend pod: direct, gannet, kube-proxy nftables and iptables
    /// rules, at 1, 1 000 and 10 000 programmed services.
    Clusterip(ClusterIpArgs),
    /// CNI ADD and DEL latency and pods per second: gannet-cni next to the reference bridge +
    /// host-local plugins, for 200 pods each.
    Cni(CniArgs),
    /// gannet-control feeding gannetd: full sync of 10 000 services × 10 endpoints to fresh
    /// agents (time, RSS), incremental change latency with 3 agents watching, and kube-proxy's
    /// nft -f / iptables-restore of the same services.
    Control(ControlArgs),
    /// Pod to pod across two nodes, directly and through a ClusterIP: the underlay, a
    /// Flannel-style vxlan setup with the reference CNI plugins, and gannet's overlay modes
    /// (vxlan, host-gw, ebpf).
    Overlay(OverlayArgs),
    /// From outside the cluster to NodeIP:nodePort, the backend on another node: gannet's tc
    /// NodePort program, the same behind its XDP front, gannetd's nftables data plane,
    /// kube-proxy's nftables and iptables rules; per-packet cost of the programs (kernel test
    /// runs), rr, crr and stream, at 1 and 10 000 services.
    Nodeport(NodePortArgs),
    /// Pod start latency under gannetd's kubelet role (apply → Ready, apply → first answer
    /// through the pod's Service) against `ctr run --cni` of the same image and CNI
    /// configuration, and gannetd's memory with the pods running. Needs containerd and runc.
    Pods(PodsArgs),
    /// Print what the clusterip scenario programs for N services: kube-proxy's nftables rules,
    /// its iptables-restore input, or gannetd's manifests. Needs no root.
    Rules(RulesArgs),
}

#[derive(Debug, Args)]
struct RulesArgs {
    /// What to print.
    #[arg(value_enum)]
    what: RulesKind,
    /// Number of services (the last one is the measured one).
    #[arg(long, default_value_t = 2)]
    services: usize,
    /// As `NodePort` services, as the nodeport scenario programs them (node ports from 30000).
    #[arg(long)]
    node_ports: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RulesKind {
    /// `nft -f` input (kube-proxy's nftables mode).
    Nft,
    /// `iptables-restore --noflush` input (kube-proxy's iptables mode).
    Iptables,
    /// Service and EndpointSlice YAML (gannetd's manifest directory).
    Manifests,
}

fn print_rules(args: &RulesArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut services = bench_services(args.services, &clusterip::BACKEND_IPS)?;
    if args.node_ports {
        with_node_ports(&mut services)?;
    }
    let text = match args.what {
        RulesKind::Nft => nft::ruleset(&services),
        RulesKind::Iptables => iptables::restore_input(&services),
        RulesKind::Manifests => manifests_yaml(&services),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::catch_interrupts();
    match &cli.scenario {
        Scenario::Rules(args) => match print_rules(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("gannet-bench: {err:#}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Scenario::Clusterip(args) => scenario::run(args),
        Scenario::Cni(args) => scenario::run(args),
        Scenario::Control(args) => scenario::run(args),
        Scenario::Overlay(args) => scenario::run(args),
        Scenario::Nodeport(args) => scenario::run(args),
        Scenario::Pods(args) => scenario::run(args),
    }
}
