//! The `gannet-probe` traffic tool: its client and server logic and the JSON reports it prints.
//!
//! Every socket operation has a timeout, and failures are counted by errno name (`ECONNREFUSED`,
//! `ETIMEDOUT`, `EPERM`, ...) so tests can tell a rejected connect from a lost packet. Two names are
//! not errnos: `ETIMEDOUT` also stands for a reply that did not arrive within the timeout, and `EOF`
//! for a TCP connection closed before a reply line.
//!
//! Two modes report differently: `icmp` (echo requests through a raw socket, failures named
//! `timeout`, `frag-needed`, `dest-unreachable`, `time-exceeded` or an errno such as `EMSGSIZE`) and
//! `stream` (one TCP connection carrying a bulk transfer to a `serve --sink` server).

mod client;
mod icmp;
mod report;
mod server;
mod sys;
#[cfg(test)]
mod tests;

pub use self::client::{
    ClientOptions, Proto, StreamReport, UdpOptions, hold, hold_udp, run_loop, stream, tcp_count,
    tcp_request, udp_count,
};
pub use self::icmp::{IcmpOptions, IcmpReport, SpoofReport, icmp_echo, spoof_udp};
pub use self::report::{Failure, Report, ServeReport, errno_name, parse_json_output};
pub use self::server::Server;

/// Default timeout of every socket operation, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// What clients send as one request.
pub const REQUEST: &[u8] = b"x\n";
/// The line `serve` prints once every address is bound.
pub const READY_LINE: &str = "ready";
/// How much the TCP server reads per request.
const SERVER_READ: usize = 64;
/// Longest reply a client accepts.
const MAX_REPLY: usize = 4096;
/// How much `stream` writes, and a sink server reads, per call.
const STREAM_CHUNK: usize = 64 * 1024;
/// ICMP payload bytes per echo request when no size is given (ping's default).
pub const DEFAULT_ICMP_SIZE: usize = 56;
/// `icmp` failure: no reply (nor ICMP error about the request) within the timeout.
pub const ICMP_TIMEOUT: &str = "timeout";
/// `icmp` failure: an ICMP "fragmentation needed" (IPv4) or "packet too big" (IPv6) came back.
pub const ICMP_FRAG_NEEDED: &str = "frag-needed";
/// `icmp` failure: an ICMP "destination unreachable" other than "fragmentation needed" came back.
pub const ICMP_DEST_UNREACHABLE: &str = "dest-unreachable";
/// `icmp` failure: an ICMP "time exceeded" came back.
pub const ICMP_TIME_EXCEEDED: &str = "time-exceeded";
