//! The traffic peer that the harness runs inside the pod namespaces: a single-threaded echo server
//! and three single-threaded clients, so that every way of reaching a backend is measured with the
//! same code and the ratios between them mean something.
//!
//! Protocol: the first byte a client sends on a connection chooses what the server does with it.
//! - [`CRR_REQUEST`]: the server answers with its one-byte id and closes the connection at once;
//!   the client closes abortively (RST), so no `TIME_WAIT` sockets build up on either side;
//! - [`SINK_REQUEST`]: the server reads and discards until end of file, then writes the number of
//!   bytes it received (8 bytes, little endian) and closes;
//! - anything else: the server echoes every byte it reads (request/response).

mod client;
mod server;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::{ClientOptions, run_client};
pub use server::serve;

/// First byte of a connect/request/response/close transaction.
pub const CRR_REQUEST: u8 = b'C';
/// First byte of a bulk-throughput connection.
pub const SINK_REQUEST: u8 = b'S';
/// The byte a request/response client sends (echoed back).
pub const RR_REQUEST: u8 = b'r';
/// The line the server prints on stdout once it listens.
pub const READY_LINE: &str = "ready";
/// Timeout of every blocking socket operation of the clients (connect, send, receive).
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(2);

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// 1-byte request/response transactions per second on one connection.
    Rr,
    /// New connections per second: connect, 1-byte request, 1-byte response, close (RST).
    Crr,
    /// Bulk TCP throughput on one connection, in Gbit/s.
    Stream,
}

impl Metric {
    /// Every metric, in the order they are measured and reported.
    pub const ALL: [Metric; 3] = [Metric::Rr, Metric::Crr, Metric::Stream];

    /// The name used on the command line, in file names and in JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Metric::Rr => "rr",
            Metric::Crr => "crr",
            Metric::Stream => "stream",
        }
    }

    /// The unit of [`Sample::value`].
    #[must_use]
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Rr => "transactions/s",
            Metric::Crr => "connections/s",
            Metric::Stream => "Gbit/s",
        }
    }

    /// One line saying what the metric is.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Metric::Rr => "1-byte request/response transactions per second on one TCP connection",
            Metric::Crr => {
                "new TCP connections per second (connect, 1-byte request, response, close)"
            }
            Metric::Stream => "bulk TCP throughput on one connection",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|metric| metric.name() == s)
            .ok_or_else(|| format!("unknown metric {s:?} (expected rr, crr or stream)"))
    }
}

/// What one client run measured; printed by the peer as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// What was measured.
    pub metric: Metric,
    /// Transactions (rr), connections (crr) or 0 (stream) counted in the measured interval.
    pub operations: u64,
    /// Bytes the server acknowledged having received (stream), else 0.
    pub bytes: u64,
    /// Length of the measured interval in seconds (after the warm-up).
    pub seconds: f64,
    /// The result in [`Metric::unit`].
    pub value: f64,
    /// Failed operations, by errno name (or `EOF`, `SHORT` for protocol violations).
    pub errors: BTreeMap<String, u64>,
    /// Responses by the id of the backend that sent them (crr only).
    pub backends: BTreeMap<String, u64>,
}

/// How a traffic scenario (`clusterip`, `overlay`, `nodeport`) measures with the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traffic {
    /// Measurements of every path and metric.
    pub rounds: usize,
    /// Length of one measurement.
    pub duration: Duration,
    /// Uncounted traffic before each rr and crr measurement.
    pub warmup: Duration,
    /// Seed of the measurement order.
    pub seed: u64,
    /// The CPU every peer (client and servers) is pinned to, if any.
    pub peer_cpu: Option<usize>,
}

/// Pins the calling thread (the whole single-threaded peer) to `cpu`.
///
/// # Errors
/// If `sched_setaffinity` fails, for example because the CPU does not exist.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET checks the index against the
    // set's size; sched_setaffinity reads the set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Sample {
    /// All failed operations together.
    #[must_use]
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}
