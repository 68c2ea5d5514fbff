//! `gannet-bench-peer`: the echo server and the traffic clients that `gannet-bench` runs inside
//! the pod namespaces. One thread each, so results of different paths are comparable.
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the library's; this binary only calls into it"
)]

use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gannet_bench::peer::{self, ClientOptions, Metric};

#[derive(Debug, Parser)]
#[command(name = "gannet-bench-peer", about = "Traffic peer of gannet-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve rr, crr and stream clients until killed; prints "ready" once listening.
    Server {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// One ASCII character identifying this backend in crr replies.
        #[arg(long, default_value = "a")]
        id: char,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// 1-byte request/response transactions on one connection.
    Rr(ClientArgs),
    /// New connections (connect, 1-byte request, response, close); cycles through the addresses.
    Crr(ClientArgs),
    /// Bulk throughput on one connection.
    Stream(ClientArgs),
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Server address (repeatable: crr connects to each in turn).
    #[arg(long = "addr", required = true)]
    addrs: Vec<SocketAddrV4>,
    /// Length of the measured interval in seconds.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Uncounted traffic before the interval, in seconds (rr, crr).
    #[arg(long, default_value_t = 0.2)]
    warmup: f64,
    /// Stop after this many operations (crr: a connectivity check).
    #[arg(long)]
    max_operations: Option<u64>,
    /// Run on this CPU only.
    #[arg(long)]
    cpu: Option<usize>,
}

fn pin(cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        peer::pin_to_cpu(cpu).map_err(|err| anyhow::anyhow!("--cpu {cpu}: {err}"))?;
    }
    Ok(())
}

fn client(metric: Metric, args: ClientArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.seconds > 0.0 && args.warmup >= 0.0,
        "--seconds must be positive and --warmup not negative"
    );
    pin(args.cpu)?;
    let options = ClientOptions {
        metric,
        addrs: args.addrs,
        duration: Duration::from_secs_f64(args.seconds),
        warmup: Duration::from_secs_f64(args.warmup),
        max_operations: args.max_operations,
    };
    let sample = peer::run_client(&options)?;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &sample)?;
    writeln!(stdout)?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Server { listen, id, cpu } => {
            anyhow::ensure!(
                id.is_ascii_graphic(),
                "--id must be one printable ASCII character"
            );
            pin(cpu)?;
            let id = u8::try_from(u32::from(id))?;
            peer::serve(listen, id, || {
                println!("{}", peer::READY_LINE);
            })
        }
        Command::Rr(args) => client(Metric::Rr, args),
        Command::Crr(args) => client(Metric::Crr, args),
        Command::Stream(args) => client(Metric::Stream, args),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gannet-bench-peer: {err:#}");
            ExitCode::FAILURE
        }
    }
}
