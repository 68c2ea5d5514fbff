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

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tracing::{debug, info, warn};

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

/// What the request head asks for, as far as this server cares.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// A well-formed request; `HEAD` gets no body.
    Valid { is_head: bool },
    /// Answered with this status and closed.
    Invalid(&'static str),
}

/// Answers one connection: reads the request head, writes the answer, closes.
async fn answer(mut stream: TcpStream, health: watch::Receiver<ServiceHealth>, limits: Limits) {
    let request = match timeout(limits.read_timeout, read_head(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            debug!(%error, "health check connection closed before a request");
            return;
        }
        Err(_) => {
            debug!("health check request not received in time");
            return;
        }
    };
    let response = match request {
        Request::Valid { is_head } => {
            let health = health.borrow().clone();
            response(&health, is_head, SystemTime::now())
        }
        Request::Invalid(status) => error_response(status, SystemTime::now()),
    };
    let written = timeout(limits.write_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        debug!("health check response not delivered");
        return;
    }
    // Closing a socket with unread bytes (a request body, pipelined requests) makes the kernel
    // send a reset, which can destroy the response before the client reads it; read and drop
    // what still comes, briefly, then close.
    let _ = timeout(limits.linger, async {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Reads up to the end of the request head and judges it.
async fn read_head(stream: &mut TcpStream) -> io::Result<Request> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // The head ends at an empty line; a bare LF is accepted as a line end (RFC 9112, 2.2).
        let from = len.saturating_sub(2);
        len += n;
        if let Some(end) = find_head_end(&buf[from..len]) {
            return Ok(parse_head(&buf[..from + end]));
        }
        if len == MAX_HEAD {
            return Ok(Request::Invalid("431 Request Header Fields Too Large"));
        }
    }
}

/// Where the head ends: the first `\n` followed by an empty line (`\n` or `\r\n`). The head
/// without its last line end is what comes before it.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| {
        buf[i] == b'\n'
            && (buf.get(i + 1) == Some(&b'\n') || buf.get(i + 1..i + 3) == Some(b"\r\n"))
    })
}

/// Checks a request head (request line and header field lines, without the line end of the
/// last one and the empty line).
fn parse_head(head: &[u8]) -> Request {
    const BAD: Request = Request::Invalid("400 Bad Request");
    let Ok(head) = std::str::from_utf8(head) else {
        return BAD;
    };
    let mut lines = head
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return BAD;
    };
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return BAD;
    }
    let minor = match version.as_bytes() {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Request::Invalid("505 HTTP Version Not Supported");
            }
            *minor
        }
        _ => return BAD,
    };
    let mut hosts = 0;
    for line in lines {
        let Some((name, _value)) = line.split_once(':') else {
            return BAD;
        };
        // Also rejects obsolete line folding (a line starting with whitespace).
        if !is_token(name) {
            return BAD;
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    // HTTP/1.1 requests carry exactly one Host (RFC 9112, 3.2), as Go's server insists too.
    if hosts > 1 || (minor != b'0' && hosts == 0) {
        return BAD;
    }
    Request::Valid {
        is_head: method == "HEAD",
    }
}

/// kube-proxy's answer for `health`.
fn response(health: &ServiceHealth, is_head: bool, now: SystemTime) -> Vec<u8> {
    let status = if health.local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let body = body(health);
    let mut out = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: application/json\r\n\
         X-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {}\r\n\
         Date: {}\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n",
        health.local_endpoints,
        http_date(now),
        body.len()
    );
    if !is_head {
        out.push_str(&body);
    }
    out.into_bytes()
}

/// kube-proxy's JSON body, with its layout (tab-indented, no final newline).
fn body(health: &ServiceHealth) -> String {
    // JSON string literals, quoted and escaped.
    let namespace = serde_json::Value::from(health.namespace.as_str());
    let name = serde_json::Value::from(health.name.as_str());
    format!(
        "{{\n\
         \t\"service\": {{\n\
         \t\t\"namespace\": {namespace},\n\
         \t\t\"name\": {name}\n\
         \t}},\n\
         \t\"localEndpoints\": {},\n\
         \t\"serviceProxyHealthy\": true\n\
         }}",
        health.local_endpoints
    )
}

/// The answer to a request this server cannot take.
fn error_response(status: &str, now: SystemTime) -> Vec<u8> {
    let body = format!("{status}\n");
    format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Date: {}\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}",
        http_date(now),
        body.len()
    )
    .into_bytes()
}

/// `t` as an HTTP date (IMF-fixdate, RFC 9110 5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, time) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm, in years from March).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[usize::try_from(days % 7).expect("< 7")],
        MONTHS[usize::try_from(month - 1).expect("< 12")],
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn svc(name: &str, local_endpoints: usize) -> ServiceHealth {
        ServiceHealth {
            namespace: "default".to_owned(),
            name: name.to_owned(),
            local_endpoints,
        }
    }

    /// `N` distinct ports nobody listens on right now (bound, then released).
    fn free_ports<const N: usize>() -> [u16; N] {
        let held: [std::net::TcpListener; N] =
            std::array::from_fn(|_| std::net::TcpListener::bind((LOCALHOST, 0)).unwrap());
        held.map(|l| l.local_addr().unwrap().port())
    }

    fn free_port() -> u16 {
        let [port] = free_ports();
        port
    }

    fn servers() -> HealthServers {
        HealthServers::with_limits(
            vec![LOCALHOST],
            Limits {
                read_timeout: Duration::from_secs(2),
                write_timeout: Duration::from_secs(5),
                linger: Duration::from_millis(200),
            },
        )
    }

    /// A parsed response: status code, header fields, body.
    #[derive(Debug)]
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            let mut values = self
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name));
            let value = values.next().map(|(_, v)| v.as_str());
            assert!(values.next().is_none(), "{name} repeated in {self:?}");
            value
        }
    }

    /// Sends `request` on `stream` and reads the response up to the server's close.
    async fn exchange(mut stream: TcpStream, request: &[u8]) -> Response {
        stream.write_all(request).await.unwrap();
        let mut raw = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("the server closes the connection after answering")
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {raw:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(": ").unwrap();
                (n.to_owned(), v.to_owned())
            })
            .collect();
        Response {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    async fn get(port: u16) -> Response {
        let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        exchange(
            stream,
            b"GET /healthz HTTP/1.1\r\nHost: lb\r\nUser-Agent: test\r\n\r\n",
        )
        .await
    }

    #[tokio::test]
    async fn local_endpoints_answer_200_with_kube_proxys_body() {
        let port = free_port();
        let mut servers = servers();
        let errors = servers
            .update(BTreeMap::from([(port, svc("web", 3))]))
            .await;
        assert!(errors.is_empty(), "{errors:?}");

        let r = get(port).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("3"));
        assert_eq!(r.header("Connection"), Some("close"));
        assert_eq!(
            r.header("Content-Length"),
            Some(r.body.len().to_string().as_str())
        );
        assert_eq!(
            r.body,
            concat!(
                "{\n",
                "\t\"service\": {\n",
                "\t\t\"namespace\": \"default\",\n",
                "\t\t\"name\": \"web\"\n",
                "\t},\n",
                "\t\"localEndpoints\": 3,\n",
                "\t\"serviceProxyHealthy\": true\n",
                "}",
            )
        );
        let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "service": {"namespace": "default", "name": "web"},
                "localEndpoints": 3,
                "serviceProxyHealthy": true,
            })
        );
        servers.shutdown().await;
    }

    #[tokio::test]
    async fn no_local_endpoints_answer_503_on_any_path_and_method() {
        let port = free_port();
        let mut servers = servers();
        servers
            .update(BTreeMap::from([(port, svc("web", 0))]))
            .await;
        for request in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /anything?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
            b"GET /healthz HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\n\n",
        ] {
            let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
            let r = exchange(stream, request).await;
            assert_eq!(
                r.status,
                503,
                "{:?}: {r:?}",
                String::from_utf8_lossy(request)
            );
            assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("0"));
            assert!(r.body.contains("\"localEndpoints\": 0,"), "{r:?}");
        }
        // HEAD: the same head, no body.
        let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        let r = exchange(stream, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "");
        assert_ne!(r.header("Content-Length"), Some("0"));
        servers.shutdown().await;
    }

    #[tokio::test]
    async fn counts_change_without_reopening_the_port() {
        let port = free_port();
        let mut servers = servers();
        servers
            .update(BTreeMap::from([(port, svc("web", 0))]))
            .await;
        assert_eq!(get(port).await.status, 503);

        // A connection accepted before the update is answered after it, with the new count: the
        // listener was not replaced.
        let early = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        let errors = servers
            .update(BTreeMap::from([(port, svc("web", 2))]))
            .await;
        assert!(errors.is_empty(), "{errors:?}");
        let r = exchange(early, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("2"));

        servers
            .update(BTreeMap::from([(port, svc("web", 0))]))
            .await;
        assert_eq!(get(port).await.status, 503);
        servers.shutdown().await;
    }

    #[tokio::test]
    async fn removed_ports_are_closed_and_shutdown_closes_all() {
        let [a, b] = free_ports();
        let mut servers = servers();
        servers
            .update(BTreeMap::from([(a, svc("a", 1)), (b, svc("b", 1))]))
            .await;
        assert_eq!(get(a).await.status, 200);
        assert_eq!(get(b).await.status, 200);

        servers.update(BTreeMap::from([(b, svc("b", 1))])).await;
        let refused = TcpStream::connect((LOCALHOST, a)).await;
        assert_eq!(
            refused.as_ref().map_err(io::Error::kind).err(),
            Some(io::ErrorKind::ConnectionRefused),
            "port {a} should be closed: {refused:?}"
        );
        assert_eq!(get(b).await.status, 200);

        // Reopened later on the same port.
        servers
            .update(BTreeMap::from([(a, svc("a", 0)), (b, svc("b", 1))]))
            .await;
        assert_eq!(get(a).await.status, 503);

        servers.shutdown().await;
        for port in [a, b] {
            let refused = TcpStream::connect((LOCALHOST, port)).await;
            assert!(refused.is_err(), "port {port} open after shutdown");
        }
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported_and_the_others_still_serve() {
        let holder = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
        let busy = holder.local_addr().unwrap().port();
        let free = free_port();
        let desired = BTreeMap::from([(busy, svc("busy", 1)), (free, svc("free", 1))]);
        let mut servers = servers();

        let errors = servers.update(desired.clone()).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, busy);
        assert!(
            errors[0].1.contains(&format!("127.0.0.1:{busy}")) && errors[0].1.contains("in use"),
            "the error should name the address and the cause: {}",
            errors[0].1
        );
        assert_eq!(get(free).await.status, 200);

        // Once the other process lets go, the next update opens it.
        drop(holder);
        let errors = servers.update(desired).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(get(busy).await.status, 200);
        servers.shutdown().await;
    }

    #[tokio::test]
    async fn port_zero_is_refused() {
        let mut servers = servers();
        let errors = servers.update(BTreeMap::from([(0, svc("x", 1))])).await;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 0);
    }

    #[tokio::test]
    async fn slow_and_garbled_clients_do_not_hold_up_others() {
        let port = free_port();
        let mut servers = servers();
        servers
            .update(BTreeMap::from([(port, svc("web", 1))]))
            .await;

        // Half a request, then silence.
        let mut slow = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        // Connected, nothing sent.
        let mut mute = TcpStream::connect((LOCALHOST, port)).await.unwrap();

        let started = Instant::now();
        assert_eq!(get(port).await.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a good client waited {:?} behind slow ones",
            started.elapsed()
        );

        for (garbage, status) in [
            (
                &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
                400,
            ),
            (b"GET\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400), // no Host
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ] {
            let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
            let r = exchange(stream, garbage).await;
            assert_eq!(
                r.status,
                status,
                "{:?}: {r:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        // A head that never ends.
        let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(exchange(stream, huge.as_bytes()).await.status, 431);

        assert_eq!(get(port).await.status, 200);

        // The slow clients are dropped once their time is up, without an answer.
        for (what, stream) in [("slow", &mut slow), ("mute", &mut mute)] {
            let mut rest = Vec::new();
            timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("the {what} client was never disconnected"))
                .unwrap();
            assert!(rest.is_empty(), "the {what} client got {rest:?}");
        }
        servers.shutdown().await;
    }

    #[test]
    fn head_ends_are_found_with_crlf_or_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
            Some(24)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), None);
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        for (secs, expected) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_735_689_599, "Tue, 31 Dec 2024 23:59:59 GMT"),
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(http_date(t), expected, "{secs}");
        }
    }
}
