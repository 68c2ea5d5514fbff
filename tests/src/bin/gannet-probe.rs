//! `gannet-probe`: the traffic tool that gannet's integration tests and benchmarks run inside
//! network namespaces. Results go to stdout as one JSON object at the end; logs go to stderr.
//! The logic lives in `gannet_testkit::probe`; this is its command line.

use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use gannet_testkit::probe::{self, ClientOptions, IcmpOptions, Proto, Server, UdpOptions};
use serde::Serialize;

/// Exit status for a bad command line (`EX_USAGE`).
const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gannet-probe",
    about = "TCP/UDP/ICMP traffic probe for gannet's tests"
)]
struct Cli {
    /// Timeout of every socket operation, in milliseconds.
    #[arg(long, global = true, default_value_t = probe::DEFAULT_TIMEOUT_MS)]
    timeout_ms: u64,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Answer every TCP read and UDP datagram with NAME; print `ready` once bound, and a JSON
    /// report on SIGTERM/SIGINT.
    Serve {
        /// The name to reply with.
        #[arg(long)]
        name: String,
        #[arg(
            long,
            required = true,
            help = "Address to bind, e.g. 0.0.0.0:8080 or [::]:8080 (repeatable)"
        )]
        listen: Vec<SocketAddr>,
        /// Serve TCP (both TCP and UDP if neither --tcp nor --udp is given).
        #[arg(long)]
        tcp: bool,
        /// Serve UDP.
        #[arg(long)]
        udp: bool,
        /// Make TCP connections sinks for `stream`: read until EOF, then reply with the number of
        /// bytes read and a newline, and close. UDP is unchanged.
        #[arg(long)]
        sink: bool,
    },
    /// COUNT new TCP connections, one request each.
    Tcp {
        #[command(flatten)]
        client: ClientArgs,
        /// Number of connections.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// COUNT UDP requests, by default through one unconnected socket.
    Udp {
        #[command(flatten)]
        client: ClientArgs,
        /// Number of requests.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Use a fresh socket per request.
        #[arg(long)]
        per_request_socket: bool,
        /// Connect the socket, then use send and recv instead of sendto.
        #[arg(long)]
        connected: bool,
    },
    /// Keep one TCP connection (or connected UDP socket); send a request for each `ping` line
    /// on stdin.
    Hold {
        #[command(flatten)]
        client: ClientArgs,
        /// A connected UDP socket instead of a TCP connection; a `reconnect` line connects it
        /// again.
        #[arg(long)]
        udp: bool,
        /// With --udp: leave the socket unconnected (`sendto`/`recvfrom` to --to).
        #[arg(long, requires = "udp")]
        unconnected: bool,
    },
    /// COUNT ICMP/ICMPv6 echo requests through a raw socket (needs `CAP_NET_RAW`), one at a time,
    /// each waiting up to --timeout-ms for its reply.
    Icmp {
        #[arg(long, help = "Destination address, e.g. 10.99.0.13 or fd00:99::13")]
        to: IpAddr,
        /// Number of echo requests.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// ICMP payload bytes, as ping's -s: the IP packet is 28 (IPv4) or 48 (IPv6) bytes more.
        #[arg(long, default_value_t = probe::DEFAULT_ICMP_SIZE)]
        size: usize,
        /// Forbid fragmentation (IPv4: `IP_PMTUDISC_DO`, DF set; IPv6: `IPV6_DONTFRAG`). Too big a
        /// packet then fails with EMSGSIZE or frag-needed. Without it IPv4 packets leave with DF
        /// clear and IPv6 ones are fragmented by the sender.
        #[arg(long)]
        dont_fragment: bool,
    },
    /// COUNT UDP datagrams over IPv4 from an address of your choice (a raw socket with headers
    /// of its own; needs `CAP_NET_RAW`), as a pod spoofing another's address would send them.
    Spoof {
        #[arg(
            long,
            help = "Source address to write into the packets, e.g. 10.244.3.3"
        )]
        from: std::net::Ipv4Addr,
        #[arg(long, help = "Destination, e.g. 10.244.3.4:8080")]
        to: std::net::SocketAddrV4,
        /// Number of datagrams.
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
    /// One TCP connection sending BYTES bytes to a `serve --sink` server, which replies with the
    /// count it received after EOF.
    Stream {
        #[command(flatten)]
        client: ClientArgs,
        /// Number of bytes to send.
        #[arg(long)]
        bytes: u64,
    },
    /// A new connection (or UDP socket) and one request, repeatedly for --duration-ms.
    Loop {
        #[command(flatten)]
        client: ClientArgs,
        /// How long to run, in milliseconds.
        #[arg(long)]
        duration_ms: u64,
        /// Pause between requests, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// tcp or udp.
        #[arg(long, default_value = "tcp")]
        proto: Proto,
        /// Stop at the first request that gets a reply (`first_ok_after_us` says when).
        #[arg(long)]
        until_ok: bool,
    },
}

#[derive(Debug, Args)]
struct ClientArgs {
    // Help as an attribute: in a doc comment the addresses would be read as Markdown links.
    #[arg(
        long,
        help = "Destination address, e.g. 10.96.0.10:80 or [fd00:96::10]:80"
    )]
    to: SocketAddr,
    /// Source address to bind before connecting (port 0 for any).
    #[arg(long)]
    bind: Option<SocketAddr>,
}

impl ClientArgs {
    fn options(&self, timeout: Duration) -> ClientOptions {
        ClientOptions {
            to: self.to,
            bind: self.bind,
            timeout,
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gannet-probe: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    match cli.mode {
        Mode::Serve {
            name,
            listen,
            tcp,
            udp,
            sink,
        } => {
            let (tcp, udp) = if tcp || udp { (tcp, udp) } else { (true, true) };
            let server = Server::bind(&name, &listen, tcp, udp)?;
            let server = if sink { server.with_sink() } else { server };
            serve(&name, &server)
        }
        Mode::Tcp { client, count } => {
            print_json(&probe::tcp_count(&client.options(timeout), count))
        }
        Mode::Udp {
            client,
            count,
            per_request_socket,
            connected,
        } => {
            let udp = UdpOptions {
                per_request_socket,
                connected,
            };
            print_json(&probe::udp_count(&client.options(timeout), count, udp))
        }
        Mode::Hold {
            client,
            udp,
            unconnected,
        } => {
            let (opts, input, output) = (client.options(timeout), io::stdin().lock(), io::stdout());
            let report = if udp {
                probe::hold_udp(&opts, !unconnected, input, output)?
            } else {
                probe::hold(&opts, input, output)?
            };
            print_json(&report)
        }
        Mode::Icmp {
            to,
            count,
            size,
            dont_fragment,
        } => print_json(&probe::icmp_echo(&IcmpOptions {
            to,
            count,
            size,
            dont_fragment,
            timeout,
        })?),
        Mode::Spoof { from, to, count } => print_json(&probe::spoof_udp(from, to, count)?),
        Mode::Stream { client, bytes } => {
            print_json(&probe::stream(&client.options(timeout), bytes))
        }
        Mode::Loop {
            client,
            duration_ms,
            interval_ms,
            proto,
            until_ok,
        } => print_json(&probe::run_loop(
            &client.options(timeout),
            proto,
            Duration::from_millis(duration_ms),
            Duration::from_millis(interval_ms),
            until_ok,
        )),
    }
}

/// Prints `ready`, serves until SIGTERM or SIGINT, then prints the report.
fn serve(name: &str, server: &Server) -> anyhow::Result<()> {
    // Block the stop signals before any thread exists, so every thread inherits the mask and only
    // sigwait() below receives them.
    let signals = block_stop_signals()?;
    server.start()?;
    for addr in server.local_addrs() {
        eprintln!("gannet-probe: {name} serving {addr}");
    }
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", probe::READY_LINE)
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    drop(stdout);
    let mut signal = 0;
    // SAFETY: `signals` is an initialised set and `signal` a valid out-pointer.
    let ret = unsafe { libc::sigwait(&raw const signals, &raw mut signal) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret)).context("sigwait");
    }
    eprintln!("gannet-probe: {name} stopping on signal {signal}");
    print_json(&server.report())
}

fn block_stop_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: an all-zero sigset_t is valid storage, and sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid, initialised by sigemptyset first.
    let ret = unsafe {
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut())
    };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret)).context("pthread_sigmask");
    }
    Ok(set)
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let json = serde_json::to_string(value).context("encoding the report")?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{json}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}
