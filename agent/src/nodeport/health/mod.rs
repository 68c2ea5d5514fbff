//! The healthCheckNodePort server: what kube-proxy runs for each `type: LoadBalancer` service
//! with `externalTrafficPolicy: Local`, so that the cloud load balancer in front of the nodes
//! sends the service's traffic only to nodes that have one of its endpoints.
//!
//! One listener per health check port (on every configured node address); any request, for any
//! path and method, is answered as kube-proxy's `pkg/proxy/healthcheck` answers it: `200 OK`
//! when the node has local endpoints for the service, `503 Service Unavailable` when it has none,
//! with the count in `X-Load-Balancing-Endpoint-Weight` and kube-proxy's JSON body, byte for byte
//! (indented with tabs, no final newline):
//!
//! ```text
//! {
//!     "service": {
//!         "namespace": "default",
//!         "name": "web"
//!     },
//!     "localEndpoints": 2,
//!     "serviceProxyHealthy": true
//! }
//! ```
//!
//! `serviceProxyHealthy` is always `true` here: kube-proxy also answers 503 when its own rule
//! syncs have stalled; gannetd has no such signal to fold in yet.
//!
//! The HTTP/1.1 is deliberately small: read the request head (up to [`MAX_HEAD`] bytes, within a
//! timeout), check its request line and `Host`, answer, close (`Connection: close`). Every
//! connection is its own task, so a slow or garbled client delays nobody else.
//!
//! The listeners and the state they answer from are here; `http` reads and answers one
//! connection.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

mod http;
#[cfg(test)]
mod tests;

use http::answer;

/// The largest request head (request line and header fields) read; larger ones get `431`.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long to wait after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a health check port reports: the service it belongs to and how many of its endpoints
/// run on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: usize,
}

/// The health check listeners, one per port, kept in step with the desired ports by
/// [`HealthServers::update`]. Needs a tokio runtime. Dropping it stops the listeners without
/// waiting; [`HealthServers::shutdown`] waits until they are closed.
#[derive(Debug)]
pub struct HealthServers {
    addresses: Vec<IpAddr>,
    /// Whether `addresses` is the default `0.0.0.0` + `::`, where a host without IPv6 is fine.
    all_addresses: bool,
    limits: Limits,
    servers: BTreeMap<u16, Server>,
}

/// Per-connection time limits ([`LIMITS`]; the tests shorten them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// How long a client has to send its request head.
    read_timeout: Duration,
    /// How long writing the response may take.
    write_timeout: Duration,
    /// How long, after answering, unread request bytes are drained before the socket is closed
    /// (see [`answer`]).
    linger: Duration,
}

const LIMITS: Limits = Limits {
    read_timeout: Duration::from_secs(10),
    write_timeout: Duration::from_secs(10),
    linger: Duration::from_secs(1),
};

/// One port's listeners and the state they answer from, shared with them: an update changes the
/// answer without touching the sockets.
#[derive(Debug)]
struct Server {
    health: watch::Sender<ServiceHealth>,
    listeners: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
struct ListenError {
    addr: SocketAddr,
    source: io::Error,
}

impl HealthServers {
    /// Listeners on `bind`, the node addresses that accept NodePort traffic; empty means every
    /// address (`0.0.0.0` and `::`, the latter skipped on a host without IPv6). Nothing is opened
    /// until [`update`](Self::update).
    #[must_use]
    pub fn new(bind: Vec<IpAddr>) -> Self {
        Self::with_limits(bind, LIMITS)
    }

    fn with_limits(bind: Vec<IpAddr>, limits: Limits) -> Self {
        let all_addresses = bind.is_empty();
        let mut addresses = if all_addresses {
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ]
        } else {
            bind
        };
        let mut seen = std::collections::BTreeSet::new();
        addresses.retain(|a| seen.insert(*a));
        Self {
            addresses,
            all_addresses,
            limits,
            servers: BTreeMap::new(),
        }
    }

    /// Makes the listening ports exactly `desired`: opens the new ones, closes (and waits for)
    /// the ones no longer wanted, and updates the others in place, without reopening them.
    ///
    /// A port that cannot be opened (typically: another process holds it) is logged, returned
    /// with the reason, and left closed on every address; the other ports are served regardless,
    /// and the next update tries it again.
    pub async fn update(&mut self, desired: BTreeMap<u16, ServiceHealth>) -> Vec<(u16, String)> {
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|port| !desired.contains_key(port))
            .copied()
            .collect();
        for port in gone {
            if let Some(server) = self.servers.remove(&port) {
                let health = server.health.borrow().clone();
                info!(
                    port,
                    service = %format_args!("{}/{}", health.namespace, health.name),
                    "closing health check port"
                );
                server.stop().await;
            }
        }

        let mut errors = Vec::new();
        for (port, health) in desired {
            if let Some(server) = self.servers.get(&port) {
                server.health.send_if_modified(|current| {
                    if *current == health {
                        return false;
                    }
                    debug!(port, ?health, "health check port updated");
                    *current = health;
                    true
                });
                continue;
            }
            let service = format!("{}/{}", health.namespace, health.name);
            match self.start(port, health) {
                Ok(server) => {
                    info!(port, %service, "serving health checks");
                    self.servers.insert(port, server);
                }
                Err(error) => {
                    warn!(port, %service, %error, "cannot open the service's health check port");
                    errors.push((port, error));
                }
            }
        }
        errors
    }

    /// Closes every listener and waits until they are closed.
    pub async fn shutdown(mut self) {
        for (_, server) in std::mem::take(&mut self.servers) {
            server.stop().await;
        }
    }

    /// Opens `port` on every address and starts serving it; on any failure closes what it
    /// opened (a port is served on all addresses or on none, as kube-proxy does).
    fn start(&self, port: u16, health: ServiceHealth) -> Result<Server, String> {
        if port == 0 {
            return Err("port 0 is not a health check port".to_owned());
        }
        let mut listeners = Vec::with_capacity(self.addresses.len());
        for &ip in &self.addresses {
            let addr = SocketAddr::new(ip, port);
            match listen(addr, self.v6_only(ip)) {
                Ok(listener) => listeners.push(listener),
                Err(e)
                    if self.all_addresses
                        && ip.is_ipv6()
                        && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
                {
                    debug!(%addr, "no IPv6 on this host; health checks on IPv4 only");
                }
                Err(source) => return Err(ListenError { addr, source }.to_string()),
            }
        }
        let (health, receiver) = watch::channel(health);
        let listeners = listeners
            .into_iter()
            .map(|listener| tokio::spawn(serve(listener, receiver.clone(), self.limits)))
            .collect();
        Ok(Server { health, listeners })
    }

    /// `::` is made IPv6-only when `0.0.0.0` is also listened on, which would otherwise collide
    /// with it on hosts where `::` takes IPv4 too (the Linux default).
    fn v6_only(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            && self.addresses.contains(&IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

impl Server {
    /// Stops the listeners (and their connections) and waits until their sockets are closed.
    async fn stop(mut self) {
        let listeners = std::mem::take(&mut self.listeners);
        for listener in &listeners {
            listener.abort();
        }
        for listener in listeners {
            // Cancelled is the expected outcome; a panic has been reported by the runtime.
            let _ = listener.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

/// A listening socket on `addr`, with `SO_REUSEADDR` (so that a port closed by an update can be
/// reopened while its old connections are in `TIME_WAIT`, as Go's listeners allow).
fn listen(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if v6_only {
        set_ipv6_only(&socket)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// `IPV6_V6ONLY`, which tokio does not expose.
fn set_ipv6_only(socket: &TcpSocket) -> io::Result<()> {
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .expect("the size of a c_int fits a socklen_t");
    // SAFETY: a valid socket descriptor, and an option value of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const on).cast(),
            len,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Accepts connections on `listener` and answers each in its own task, until aborted (which
/// also aborts the connections in flight).
async fn serve(listener: TcpListener, health: watch::Receiver<ServiceHealth>, limits: Limits) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(answer(stream, health.clone(), limits));
                }
                Err(error) => {
                    let addr = listener.local_addr().ok();
                    warn!(?addr, %error, "health check port: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
