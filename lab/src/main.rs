//! gannet-lab: qemu guests running gannet, joined by an L2 network inside a network namespace of
//! the lab's own. See the README, "The VM lab".

mod bench;
mod channel;
mod cluster;
mod lab;
mod qemu;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::qemu::Accel;

/// Exit status for bad arguments (`EX_USAGE`).
const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A lab of qemu guests running gannet, joined by a network of their own",
    long_about = "A lab of qemu guests running gannet, joined by a network of their own.\n\n\
        The guests boot the image vm-images/build makes (a Debian kernel, busybox, the gannet \
        binaries). Their network is a bridge inside a network namespace the lab creates \
        (gannet-lab-PID); nothing is connected to the host's network. Needs root."
)]
struct Cli {
    /// The lab's directory: its state, and per node the serial console, the services' logs and
    /// the command socket. Default: target/gannet-lab in the repository.
    #[arg(long, global = true, env = "GANNET_LAB_DIR")]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boots the guests (replacing a lab already in --dir) and starts gannet on them.
    Up(UpArgs),
    /// Stops the guests and removes the namespace, its bridge and taps (logs stay), and any
    /// lab a killed run left behind.
    Down,
    /// Runs a command in a guest; its output and exit status are the command's (124 after
    /// --timeout, 128+N when signal N ended it).
    Exec(ExecArgs),
    /// Measures pod networking on identical two-guest labs, one per variant (VM to VM directly,
    /// a Flannel-style node, gannet's overlays): TCP stream, UDP at a fixed load, TCP
    /// request/response over the paths of perf-tests' netperf; writes JSON, a markdown table and
    /// charts.
    Bench(BenchArgs),
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of guests (node1 … nodeN, at 10.77.0.11 … on the lab network).
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// The pod network between nodes: `vxlan`, `ebpf`, `host-gw` (gannetd's --overlay), or
    /// `off` to only boot the guests without starting gannet.
    #[arg(long, default_value = "vxlan")]
    overlay: String,
    #[command(flatten)]
    guests: GuestArgs,
    /// A process whose end leaves the lab behind, to be removed by the next `up` or `down`
    /// (tests pass their own pid).
    #[arg(long)]
    owner_pid: Option<i32>,
}

/// How the guests are made (`up` and `bench`).
#[derive(Debug, clap::Args)]
struct GuestArgs {
    /// A built image (a directory with vmlinuz and initramfs.cpio). Default: vm-images/build
    /// makes one (or finds it in its cache) from the binaries next to gannet-lab.
    #[arg(long)]
    image: Option<PathBuf>,
    /// How the guests' CPUs run.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Memory of each guest, MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// CPUs of each guest.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// How long the guests get to boot (seconds).
    #[arg(long, default_value_t = 300)]
    boot_timeout: u64,
}

impl GuestArgs {
    /// What is wrong with these flags, each problem naming its flag.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.memory < 256 {
            problems.push(format!("--memory {}: at least 256 (MiB)", self.memory));
        }
        if self.cpus == 0 {
            problems.push("--cpus 0: at least 1".to_owned());
        }
        if let Some(image) = &self.image {
            for f in ["vmlinuz", "initramfs.cpio"] {
                if !image.join(f).is_file() {
                    problems.push(format!("--image {}: no {f} there", image.display()));
                }
            }
        }
        problems
    }

    /// The options of `lab::up` for `nodes` guests; the image is built when none is given.
    fn up_options(
        &self,
        nodes: usize,
        owner: Option<lab::Owner>,
    ) -> anyhow::Result<lab::UpOptions> {
        let root = repo_root();
        if let Ok(root) = &root {
            run_script(&root.join("vm-images/setup"), &[])?;
        }
        let image = match &self.image {
            Some(image) => image.canonicalize()?,
            None => build_image(&root?)?,
        };
        Ok(lab::UpOptions {
            nodes,
            image,
            accel: self.accel.resolve(),
            memory_mib: self.memory,
            cpus: self.cpus,
            owner,
            boot_timeout: Duration::from_secs(self.boot_timeout),
        })
    }
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// The variants, comma-separated, measured in this order: direct (VM to VM, the limit),
    /// flannel, vxlan, host-gw, ebpf.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,flannel,vxlan,host-gw,ebpf"
    )]
    variants: Vec<String>,
    /// Measurements of every path and metric per variant.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of one measurement, seconds.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// The offered UDP load, Mbit/s (below what VM to VM carries under TCG here, so that the
    /// loss is the variant's).
    #[arg(long, default_value_t = 50)]
    udp_mbps: u32,
    /// Seed of the measurement order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the report goes (lab-bench.json, lab-bench.md, lab-*.png; each variant's lab, its
    /// consoles and logs, in labs/). Default: bench/ in the lab directory (--dir).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    guests: GuestArgs,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// node1 … nodeN (or just the number).
    node: String,
    /// Kill the command after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Pass this process's standard input to the command (read to its end first).
    #[arg(long)]
    stdin: bool,
    /// The command and its arguments (no shell: use `sh -c '…'`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("gannet-lab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("gannet-lab: run as root (it creates a network namespace and tap devices)");
        return Ok(ExitCode::from(EX_USAGE));
    }
    let dir = match cli.dir {
        Some(dir) => dir,
        None => repo_root()?.join("target/gannet-lab"),
    };
    match cli.command {
        Cmd::Up(args) => up(&dir, &args),
        Cmd::Down => {
            lab::down(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec(args) => exec(&dir, &args),
        Cmd::Bench(args) => bench_cmd(&dir, &args),
    }
}

fn bench_cmd(dir: &Path, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let mut problems = args.guests.problems();
    let mut variants = Vec::new();
    for name in &args.variants {
        match bench::Variant::parse(name) {
            Some(v) if variants.contains(&v) => {
                problems.push(format!("--variants: {name} is given twice"));
            }
            Some(v) => variants.push(v),
            None => problems.push(format!(
                "--variants {name}: one of direct, flannel, vxlan, host-gw, ebpf"
            )),
        }
    }
    for (flag, value) in [
        ("--rounds", args.rounds),
        ("--seconds", args.seconds as usize),
        ("--udp-mbps", args.udp_mbps as usize),
    ] {
        if value == 0 {
            problems.push(format!("{flag} 0: at least 1"));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("gannet-lab: {p}");
        }
        return Ok(ExitCode::from(EX_USAGE));
    }
    // The labs belong to this process: killed, they are removed by the next up or down.
    let owner = lab::Owner::of(i32::try_from(std::process::id())?)?;
    let options = bench::Options {
        variants,
        rounds: args.rounds,
        settings: bench::Settings {
            seconds: args.seconds,
            udp_mbps: args.udp_mbps,
        },
        seed: args.seed,
        out: args.out.clone().unwrap_or_else(|| dir.join("bench")),
        up: args.guests.up_options(2, Some(owner))?,
    };
    let md = bench::run(&options)?;
    eprintln!("gannet-lab bench: report in {}", md.display());
    Ok(ExitCode::SUCCESS)
}

fn up(dir: &Path, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let mut problems = Vec::new();
    if !(1..=200).contains(&args.nodes) {
        problems.push(format!("--nodes {}: between 1 and 200", args.nodes));
    }
    let overlay = match args.overlay.as_str() {
        "off" => None,
        mode @ ("vxlan" | "ebpf" | "host-gw") => Some(mode.to_owned()),
        other => {
            problems.push(format!(
                "--overlay {other}: one of vxlan, ebpf, host-gw, off"
            ));
            None
        }
    };
    problems.extend(args.guests.problems());
    let owner = match args.owner_pid.map(lab::Owner::of).transpose() {
        Ok(owner) => owner,
        Err(error) => {
            problems.push(format!("{error:#}"));
            None
        }
    };
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("gannet-lab: {p}");
        }
        return Ok(ExitCode::from(EX_USAGE));
    }
    let state = lab::up(dir, &args.guests.up_options(args.nodes, owner)?)?;
    if let Some(overlay) = overlay {
        let started = Instant::now();
        if let Err(error) = cluster::start(dir, state, &overlay) {
            eprintln!(
                "gannet-lab: starting gannet failed; the guests stay up for a look (`gannet-lab down` removes them)"
            );
            return Err(error);
        }
        eprintln!(
            "gannet-lab: gannet runs on every node ({overlay}) after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn exec(dir: &Path, args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let state = lab::load(dir)?;
    let wanted = if args.node.chars().all(|c| c.is_ascii_digit()) {
        format!("node{}", args.node)
    } else {
        args.node.clone()
    };
    let Some(node) = state.nodes.iter().find(|n| n.name == wanted) else {
        let names: Vec<&str> = state.nodes.iter().map(|n| n.name.as_str()).collect();
        eprintln!(
            "gannet-lab: no node {} in this lab (nodes: {})",
            args.node,
            names.join(", ")
        );
        return Ok(ExitCode::from(EX_USAGE));
    };
    let mut input = String::new();
    if args.stdin {
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading standard input")?;
    }
    let r = node.call(&args.command, &input, Duration::from_secs(args.timeout))?;
    std::io::stdout().write_all(r.stdout.as_bytes())?;
    std::io::stderr().write_all(r.stderr.as_bytes())?;
    if let Some(error) = &r.error {
        eprintln!("gannet-lab: {}: {error}", node.name);
        return Ok(ExitCode::from(127));
    }
    let code = if r.timed_out {
        eprintln!(
            "gannet-lab: {}: timed out after {} s",
            node.name, args.timeout
        );
        124
    } else {
        match (r.status, r.signal) {
            (Some(s), _) => s & 0xff,
            (None, Some(s)) => 128 + s,
            _ => 1,
        }
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The repository: the directory above `target/` holding gannet-lab, or above the working
/// directory, with `vm-images/build`.
fn repo_root() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    for start in exe.iter().chain(cwd.iter()) {
        for dir in start.ancestors() {
            if dir.join("vm-images/build").is_file() && dir.join("Cargo.toml").is_file() {
                return Ok(dir.to_owned());
            }
        }
    }
    anyhow::bail!(
        "cannot find the repository (a directory with vm-images/build) above gannet-lab or the working directory; give --image and --dir"
    )
}

/// Runs vm-images/build with the binaries next to this one; returns the image directory.
fn build_image(root: &Path) -> anyhow::Result<PathBuf> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("gannet-lab's directory")?
        .to_owned();
    let started = Instant::now();
    let out = run_script(
        &root.join("vm-images/build"),
        &["--bin-dir".as_ref(), bin_dir.as_os_str()],
    )?;
    let image = PathBuf::from(out.trim());
    eprintln!(
        "gannet-lab: image {} ({:.1} s)",
        image.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}

fn run_script(script: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let out = Command::new(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(out.status.success(), "{} failed", script.display());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
