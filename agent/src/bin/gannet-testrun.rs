//! `gannet-testrun`: what one packet costs the NodePort programs of a running gannetd, measured
//! with `BPF_PROG_TEST_RUN`. A tool for benchmarks (`gannet-bench nodeport` runs it), not part of
//! a node's installation.
//!
//! Run it inside the node's network namespace, against gannetd's `--bpf-root`, with a frontend
//! gannetd serves from outside (`NodeIP:nodePort`): it loads a second copy of the pod object
//! with gannetd's pinned maps (see `gannet_agent::datapath::testrun`), attaches nothing, and runs
//! frames from `--client` through each `--program` (`gannet_nodeport` in tc,
//! `gannet_nodeport_xdp` in XDP):
//!
//! - `miss`: a packet to a port of the node that is no frontend (what every other packet on the
//!   interface pays);
//! - `tracked`: a packet of an established flow (its first packet created the conntrack entries):
//!   the hit path, rewritten and redirected as the entry says (XDP: rewritten and transmitted
//!   when it leaves by the interface it came in on, else passed untouched to tc);
//! - `reply`: the backend's answer in that flow, arriving on `--reply-interface` (the overlay
//!   device, where replies of flows sent into the overlay come back) for tc, and on
//!   `--interface` for XDP, which runs only on the external interfaces;
//! - `first-packet`: the first packet of a new flow (Maglev lookup, SNAT port, two conntrack
//!   entries); the entries are removed after each run, so every run finds the map as the last.
//!
//! Why one run per call: the kernel repeats a test run on the same packet, so from the second
//! repetition on a program sees its own output; for a program that rewrites the packet (every
//! tc path above except `miss`) `repeat` measures something else (a `miss`, here: the rewritten
//! packet is nobody's frontend, which the output shows as `repeat_check`). So every path is
//! run once per call, `--calls` times, interleaved; the kernel's time of a single run includes
//! reading the clock once, which is measured on the `miss` frame (a single run against
//! `--repeat` repetitions of it, which leave the packet as it was) and subtracted. A path whose
//! single run leaves the frame as it was (and, unlike `first-packet`, the maps as they were: an
//! XDP program passing the packet to tc) is also run with `--repeat` repetitions, and that time
//! is its cost; both numbers are reported, which also shows how far the subtraction is off.
//!
//! Prints one JSON document on stdout, with the NodePort program's interfaces, counters and
//! conntrack usage before and after. The runs count in the programs' counters (`gannetd
//! status`); the packets are never sent anywhere (a test run does not carry out a redirect or
//! a transmit).
//! `--state-only` prints only those (cheaply: `gannetd status` reads every Maglev table).
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the library's; this tool only calls into it"
)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use gannet_agent::datapath::{
    frame::{TCP_ACK, TCP_SYN, tcp_v4},
    testrun::{Hook, NodePortState, PacketPrograms, interface},
};
use gannet_common::{CtEntry, CtKey, PROTO_TCP, v4_mapped};
use serde::Serialize;

/// The MAC the client's frames come from, and the backend's replies (nothing checks them).
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfa];
const BACKEND_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xbe];
/// Repetitions of the tracked frame in the check that shows what `repeat` would measure.
const REPEAT_CHECK: u32 = 1000;
/// Samples of the repeated runs (of `miss`, and of the paths that leave frame and maps as they
/// were), spread over the calls.
const REPEATED_SAMPLES: usize = 10;

#[derive(Debug, Parser)]
#[command(
    name = "gannet-testrun",
    version,
    about = "What one packet costs gannetd's NodePort programs, through BPF_PROG_TEST_RUN \
             against a running gannetd's maps (a benchmark tool). Needs root; run it in the \
             node's network namespace."
)]
struct Args {
    /// gannetd's `--bpf-root`.
    #[arg(long)]
    bpf_root: PathBuf,
    /// A program of the pod object to measure (repeatable).
    #[arg(long = "program", default_value = "gannet_nodeport")]
    programs: Vec<String>,
    /// The interface the client's packets arrive on.
    #[arg(long, default_value = "eth0")]
    interface: String,
    /// The interface the backend's replies arrive on, for tc programs [default: --interface];
    /// XDP programs get them on --interface.
    #[arg(long)]
    reply_interface: Option<String>,
    /// Print only the NodePort program's interfaces, counters and conntrack usage.
    #[arg(long)]
    state_only: bool,
    /// The client's address.
    #[arg(long, required_unless_present = "state_only")]
    client: Option<Ipv4Addr>,
    /// The client port of the tracked flow.
    #[arg(long, default_value_t = 40000)]
    client_port: u16,
    /// First client port of the new flows (`first-packet`); `--calls` ports from here.
    #[arg(long, default_value_t = 1024)]
    first_port: u16,
    /// A frontend gannetd serves from outside: `NodeIP:nodePort`.
    #[arg(long, required_unless_present = "state_only")]
    frontend: Option<SocketAddrV4>,
    /// A port of the frontend's address that is no frontend (the `miss` path).
    #[arg(long, required_unless_present = "state_only")]
    miss_port: Option<u16>,
    /// Runs of every path (one packet each).
    #[arg(long, default_value_t = 20_000)]
    calls: u32,
    /// Repetitions of the `miss` frame in one run (its time per repetition).
    #[arg(long, default_value_t = 100_000)]
    repeat: u32,
    /// Run on this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

/// Nearest-rank percentiles of a path's single runs, in nanoseconds.
#[derive(Debug, Serialize)]
struct Spread {
    p10: f64,
    median: f64,
    p90: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Spread {
        values.sort_by(f64::total_cmp);
        Spread {
            p10: percentile(&values, 10.0),
            median: percentile(&values, 50.0),
            p90: percentile(&values, 90.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct PathResult {
    path: &'static str,
    /// What the path is.
    what: &'static str,
    /// The interface the frames arrived on.
    interface: String,
    /// Verdicts of the single runs, by name.
    verdicts: BTreeMap<String, u64>,
    /// The kernel's time of single runs.
    single_run_ns: Spread,
    /// The single runs' median minus the clock overhead.
    single_minus_overhead_ns: f64,
    /// The time per repetition of `--repeat` repetitions, median of the samples: for the paths
    /// that leave the frame and the maps as they were (`miss`; XDP passing a packet to tc).
    repeated_ns: Option<f64>,
    /// What one packet costs: the repeated time where there is one, else the single runs'
    /// median minus the clock overhead.
    ns_per_packet: f64,
}

#[derive(Debug, Serialize)]
struct RepeatCheck {
    repetitions: u32,
    /// The verdict of the last repetition of the tracked frame.
    last_verdict: String,
    /// Its time per repetition.
    ns_per_repetition: f64,
}

#[derive(Debug, Serialize)]
struct ProgramResult {
    program: String,
    hook: &'static str,
    /// The tracked flow: client → frontend, as translated.
    client: String,
    frontend: String,
    backend: String,
    /// The source the backend sees (the SNAT address and port, or the client).
    source_at_backend: String,
    /// Median single `miss` run minus its time per repetition: reading the clock and leaving
    /// the program, once per run.
    clock_overhead_ns: f64,
    repeat_check: RepeatCheck,
    paths: Vec<PathResult>,
}

#[derive(Debug, Serialize)]
struct Report {
    bpf_root: String,
    interface: String,
    reply_interface: String,
    calls: u32,
    repeat: u32,
    cpu: Option<usize>,
    state_before: NodePortState,
    programs: Vec<ProgramResult>,
    state_after: NodePortState,
}

/// Where the tracked flow and the `miss` frame go.
struct Flow {
    client: SocketAddrV4,
    frontend: SocketAddrV4,
    miss_port: u16,
}

fn key(src: SocketAddrV4, dst: SocketAddrV4) -> CtKey {
    CtKey {
        saddr: v4_mapped(src.ip().octets()),
        daddr: v4_mapped(dst.ip().octets()),
        sport: src.port().to_be(),
        dport: dst.port().to_be(),
        proto: PROTO_TCP,
        pad: [0; 3],
    }
}

fn v4(mapped: [u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(mapped[12], mapped[13], mapped[14], mapped[15])
}

/// The reply direction's key of a flow whose client entry is `entry`.
fn reply_key(entry: &CtEntry) -> CtKey {
    CtKey {
        saddr: entry.daddr,
        daddr: entry.saddr,
        sport: entry.dport,
        dport: entry.sport,
        proto: PROTO_TCP,
        pad: [0; 3],
    }
}

struct Interface {
    index: u32,
    mac: [u8; 6],
}

fn open_interface(name: &str) -> anyhow::Result<Interface> {
    let (index, mac) = interface(name)?;
    Ok(Interface { index, mac })
}

/// The verdicts and times of one path's runs.
#[derive(Default)]
struct Samples {
    verdicts: BTreeMap<String, u64>,
    times: Vec<f64>,
    /// Times per repetition of repeated runs (paths that leave frame and maps as they were).
    repeated: Vec<f64>,
}

impl Samples {
    /// Runs `frame` once through `name` as if it arrived on `ifindex`, and records it.
    fn run(
        &mut self,
        programs: &PacketPrograms,
        name: &str,
        hook: Hook,
        frame: &[u8],
        ifindex: u32,
    ) -> anyhow::Result<()> {
        let run = programs.run(name, frame, ifindex, 1)?;
        *self
            .verdicts
            .entry(hook.verdict_name(run.verdict))
            .or_default() += 1;
        self.times.push(run.duration.as_nanos() as f64);
        Ok(())
    }

    /// Runs `frame` `repeat` times through `name` and records the time per repetition.
    fn run_repeated(
        &mut self,
        programs: &PacketPrograms,
        name: &str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> anyhow::Result<()> {
        let run = programs.run(name, frame, ifindex, repeat)?;
        self.repeated.push(run.duration.as_nanos() as f64);
        Ok(())
    }
}

/// One path: its frame, where it arrives, and whether `repeat` measures it.
struct Path {
    name: &'static str,
    what: &'static str,
    frame: Vec<u8>,
    interface: String,
    ifindex: u32,
    /// The frame comes out of a run as it went in, and the run changes no map the path
    /// depends on: repetitions are the same path.
    repeatable: bool,
}

/// What each path is, for `hook`.
fn what(hook: Hook, path: &str) -> &'static str {
    match (hook, path) {
        (_, "miss") => "a packet to a port of the node that is no frontend",
        (Hook::Tc, "tracked") => {
            "a packet of an established flow: conntrack hit, rewrite, FIB lookup, redirect"
        }
        (Hook::Tc, "reply") => {
            "the backend's reply in that flow: conntrack hit, reverse rewrite, FIB, redirect"
        }
        (Hook::Tc, _) => {
            "the first packet of a new flow: Maglev, SNAT port, two conntrack entries, rewrite, \
             FIB, redirect"
        }
        (Hook::Xdp, "tracked") => {
            "a packet of an established flow: conntrack hit, backend check, FIB lookup; rewritten \
             and transmitted (XDP_TX) when it leaves by the interface it came in on, else passed \
             untouched to tc"
        }
        (Hook::Xdp, "reply") => {
            "the backend's reply in that flow, arriving on the external interface: conntrack \
             hit, FIB lookup; rewritten and transmitted (XDP_TX) when the client is out of the \
             same interface, else passed untouched"
        }
        (Hook::Xdp, _) => {
            "the first packet of a new flow: Maglev, SNAT port, two conntrack entries, then as \
             tracked"
        }
    }
}

fn measure(
    args: &Args,
    flow: &Flow,
    programs: &mut PacketPrograms,
    name: &str,
    ingress: &Interface,
    reply_if: &Interface,
) -> anyhow::Result<ProgramResult> {
    let hook = programs
        .hook(name)
        .with_context(|| format!("{name} is neither tc nor XDP"))?;
    // XDP runs only on the external interfaces: the replies it sees arrive there.
    let reply_if = match hook {
        Hook::Tc => reply_if,
        Hook::Xdp => ingress,
    };
    let client = flow.client;
    let frontend = flow.frontend;
    let frame = |from: SocketAddrV4, to: SocketAddrV4, flags| {
        tcp_v4(
            ingress.mac,
            CLIENT_MAC,
            *from.ip(),
            from.port(),
            *to.ip(),
            to.port(),
            64,
            flags,
        )
    };

    // The tracked flow: its first packet creates the entries.
    let first = programs.run(name, &frame(client, frontend, TCP_SYN), ingress.index, 1)?;
    let Some(entry) = programs.conntrack_entry(&key(client, frontend)) else {
        bail!(
            "the first packet {client} → {frontend} created no conntrack entry (verdict {}): is \
             {frontend} a frontend this gannetd serves from outside?",
            hook.verdict_name(first.verdict)
        );
    };
    let backend = SocketAddrV4::new(v4(entry.daddr), u16::from_be(entry.dport));
    let source = SocketAddrV4::new(v4(entry.saddr), u16::from_be(entry.sport));
    let tracked = frame(client, frontend, TCP_ACK);
    let reply = tcp_v4(
        reply_if.mac,
        BACKEND_MAC,
        *backend.ip(),
        backend.port(),
        *source.ip(),
        source.port(),
        64,
        TCP_ACK,
    );
    let miss = frame(
        client,
        SocketAddrV4::new(*frontend.ip(), flow.miss_port),
        TCP_ACK,
    );
    let unchanged = programs.run(name, &miss, ingress.index, 1)?;
    ensure!(
        unchanged.output == miss,
        "the miss frame (port {}) was rewritten (verdict {}): is it a frontend?",
        flow.miss_port,
        hook.verdict_name(unchanged.verdict)
    );
    let repeated_tracked = programs.run(name, &tracked, ingress.index, REPEAT_CHECK)?;
    let as_it_was = |frame: &[u8], ifindex| -> anyhow::Result<bool> {
        Ok(programs.run(name, frame, ifindex, 1)?.output == frame)
    };
    let tracked_unchanged = as_it_was(&tracked, ingress.index)?;
    let reply_unchanged = as_it_was(&reply, reply_if.index)?;
    let path = |name, frame, interface: &Interface, ifname: &str, repeatable| Path {
        name,
        what: what(hook, name),
        frame,
        interface: ifname.to_owned(),
        ifindex: interface.index,
        repeatable,
    };
    let reply_name = match hook {
        Hook::Tc => args.reply_interface.as_deref().unwrap_or(&args.interface),
        Hook::Xdp => &args.interface,
    };
    let mut paths = [
        path("miss", miss, ingress, &args.interface, true),
        path(
            "tracked",
            tracked,
            ingress,
            &args.interface,
            tracked_unchanged,
        ),
        path("reply", reply, reply_if, reply_name, reply_unchanged),
        // Never repeatable: its run creates the entries the next one would find.
        path("first-packet", Vec::new(), ingress, &args.interface, false),
    ];

    let mut samples: [Samples; 4] = Default::default();
    let every = (args.calls as usize / REPEATED_SAMPLES).max(1);
    let mut port = args.first_port;
    for call in 0..args.calls as usize {
        if port == args.client_port {
            port = port.wrapping_add(1);
        }
        let new_client = SocketAddrV4::new(*client.ip(), port);
        paths[3].frame = frame(new_client, frontend, TCP_SYN);
        for (path, s) in paths.iter().zip(samples.iter_mut()) {
            if call % every == 0 && path.repeatable {
                s.run_repeated(programs, name, &path.frame, path.ifindex, args.repeat)?;
            }
            s.run(programs, name, hook, &path.frame, path.ifindex)?;
        }
        // Leave the map as the run found it (and its SNAT port free).
        let new_key = key(new_client, frontend);
        if let Some(new_entry) = programs.conntrack_entry(&new_key) {
            programs.forget(&reply_key(&new_entry));
        }
        programs.forget(&new_key);
        port = port.wrapping_add(1).max(1024);
    }
    programs.forget(&reply_key(&entry));
    programs.forget(&key(client, frontend));

    let overhead = {
        let [miss_s, ..] = &samples;
        Spread::of(miss_s.times.clone()).median - Spread::of(miss_s.repeated.clone()).median
    };
    let paths = paths
        .into_iter()
        .zip(samples)
        .map(|(path, s)| {
            let single = Spread::of(s.times);
            let repeated = (!s.repeated.is_empty()).then(|| Spread::of(s.repeated).median);
            let single_minus_overhead_ns = single.median - overhead;
            PathResult {
                path: path.name,
                what: path.what,
                interface: path.interface,
                verdicts: s.verdicts,
                ns_per_packet: repeated.unwrap_or(single_minus_overhead_ns),
                single_run_ns: single,
                single_minus_overhead_ns,
                repeated_ns: repeated,
            }
        })
        .collect();
    Ok(ProgramResult {
        program: name.to_owned(),
        hook: hook.name(),
        client: client.to_string(),
        frontend: frontend.to_string(),
        backend: backend.to_string(),
        source_at_backend: source.to_string(),
        clock_overhead_ns: overhead,
        repeat_check: RepeatCheck {
            repetitions: REPEAT_CHECK,
            last_verdict: hook.verdict_name(repeated_tracked.verdict),
            ns_per_repetition: repeated_tracked.duration.as_nanos() as f64,
        },
        paths,
    })
}

fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET checks the index.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

fn run(args: &Args) -> anyhow::Result<serde_json::Value> {
    ensure!(args.calls > 0, "--calls must be at least 1");
    ensure!(args.repeat > 1, "--repeat must be at least 2");
    if let Some(cpu) = args.cpu {
        pin_to(cpu)?;
    }
    let names: Vec<&str> = args.programs.iter().map(String::as_str).collect();
    let mut programs = PacketPrograms::load(&args.bpf_root, &names)?;
    let state_before = programs.nodeport_state()?;
    if args.state_only {
        return Ok(serde_json::to_value(state_before)?);
    }
    let (Some(client), Some(frontend), Some(miss_port)) =
        (args.client, args.frontend, args.miss_port)
    else {
        bail!("--client, --frontend and --miss-port are needed without --state-only");
    };
    let flow = Flow {
        client: SocketAddrV4::new(client, args.client_port),
        frontend,
        miss_port,
    };
    let reply_name = args.reply_interface.as_deref().unwrap_or(&args.interface);
    let ingress = open_interface(&args.interface)?;
    let reply_if = open_interface(reply_name)?;
    let mut results = Vec::new();
    for name in &names {
        results.push(
            measure(args, &flow, &mut programs, name, &ingress, &reply_if)
                .with_context(|| format!("measuring {name}"))?,
        );
    }
    let report = Report {
        bpf_root: args.bpf_root.display().to_string(),
        interface: args.interface.clone(),
        reply_interface: reply_name.to_owned(),
        calls: args.calls,
        repeat: args.repeat,
        cpu: args.cpu,
        state_before,
        programs: results,
        state_after: programs.nodeport_state()?,
    };
    Ok(serde_json::to_value(report)?)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gannet-testrun: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("gannet-testrun: {e:#}");
            ExitCode::FAILURE
        }
    }
}
