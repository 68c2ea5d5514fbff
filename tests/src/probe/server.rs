//! The `serve` mode: TCP listeners and UDP sockets answering with the backend's name, and the
//! `--sink` byte counter.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;

use super::report::{Failure, ServeReport};
use super::sys::{bind_socket, check, new_socket, set_int_option};
use super::{SERVER_READ, STREAM_CHUNK};

/// The `serve` mode: TCP listeners and UDP sockets that answer every request with the name.
#[derive(Debug)]
pub struct Server {
    name: Arc<str>,
    pub(super) tcp: Vec<TcpListener>,
    pub(super) udp: Vec<UdpSocket>,
    /// TCP connections are sinks (see [`Server::with_sink`]).
    sink: bool,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    tcp_connections: AtomicU64,
    tcp_requests: AtomicU64,
    udp_requests: AtomicU64,
    sink_bytes: AtomicU64,
    clients: Mutex<BTreeMap<String, u64>>,
    tcp_clients: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn client(&self, peer: SocketAddr) {
        *self
            .clients
            .lock()
            .expect("stats lock")
            .entry(peer.ip().to_string())
            .or_default() += 1;
    }

    fn tcp_client(&self, peer: SocketAddr) {
        self.tcp_connections.fetch_add(1, Ordering::Relaxed);
        *self
            .tcp_clients
            .lock()
            .expect("stats lock")
            .entry(peer.ip().to_string())
            .or_default() += 1;
    }
}

impl Server {
    /// Binds TCP (if `tcp`) and UDP (if `udp`) on every address in `listen`. IPv6 sockets are
    /// `IPV6_V6ONLY`, so `0.0.0.0:P` and `[::]:P` can both be bound.
    ///
    /// # Errors
    /// If a socket cannot be created or bound; the error names the address.
    pub fn bind(name: &str, listen: &[SocketAddr], tcp: bool, udp: bool) -> anyhow::Result<Server> {
        let mut server = Server {
            name: Arc::from(name),
            tcp: Vec::new(),
            udp: Vec::new(),
            sink: false,
            stats: Arc::default(),
        };
        for addr in listen {
            if tcp {
                server
                    .tcp
                    .push(tcp_listen(addr).with_context(|| format!("listening on TCP {addr}"))?);
            }
            if udp {
                server
                    .udp
                    .push(udp_bind(addr).with_context(|| format!("binding UDP {addr}"))?);
            }
        }
        Ok(server)
    }

    /// Makes every TCP connection a sink (`serve --sink`): the server reads until the client shuts
    /// its side down (EOF), then replies with the number of bytes it read, in decimal, and a
    /// newline, and closes. The whole connection counts as one request. UDP is unchanged.
    #[must_use]
    pub fn with_sink(mut self) -> Server {
        self.sink = true;
        self
    }

    /// The bound addresses, as `tcp ADDR` / `udp ADDR`.
    #[must_use]
    pub fn local_addrs(&self) -> Vec<String> {
        let tcp = self.tcp.iter().map(|l| (l.local_addr(), "tcp"));
        let udp = self.udp.iter().map(|s| (s.local_addr(), "udp"));
        tcp.chain(udp)
            .map(|(addr, proto)| match addr {
                Ok(addr) => format!("{proto} {addr}"),
                Err(err) => format!("{proto} ?: {err}"),
            })
            .collect()
    }

    /// Starts serving on background threads: one per socket plus one per TCP connection.
    ///
    /// # Errors
    /// If a socket cannot be duplicated for its thread.
    pub fn start(&self) -> anyhow::Result<()> {
        for listener in &self.tcp {
            let listener = listener.try_clone().context("duplicating a TCP listener")?;
            let (name, stats, sink) = (Arc::clone(&self.name), Arc::clone(&self.stats), self.sink);
            thread::spawn(move || accept_loop(&listener, &name, &stats, sink));
        }
        for socket in &self.udp {
            let socket = socket.try_clone().context("duplicating a UDP socket")?;
            let (name, stats) = (Arc::clone(&self.name), Arc::clone(&self.stats));
            thread::spawn(move || udp_loop(&socket, &name, &stats));
        }
        Ok(())
    }

    /// What has been served so far.
    #[must_use]
    pub fn report(&self) -> ServeReport {
        ServeReport {
            name: self.name.to_string(),
            tcp_connections: self.stats.tcp_connections.load(Ordering::Relaxed),
            tcp_requests: self.stats.tcp_requests.load(Ordering::Relaxed),
            udp_requests: self.stats.udp_requests.load(Ordering::Relaxed),
            clients: self.stats.clients.lock().expect("stats lock").clone(),
            tcp_clients: self.stats.tcp_clients.lock().expect("stats lock").clone(),
            sink_bytes: self.stats.sink_bytes.load(Ordering::Relaxed),
        }
    }
}

fn accept_loop(listener: &TcpListener, name: &Arc<str>, stats: &Arc<Stats>, sink: bool) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stats.tcp_client(peer);
                let (name, stats) = (Arc::clone(name), Arc::clone(stats));
                if sink {
                    thread::spawn(move || sink_connection(stream, peer, &stats));
                } else {
                    thread::spawn(move || serve_connection(stream, peer, &name, &stats));
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("gannet-probe: accept: {}", Failure::from(err));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Answers every read of up to 64 bytes with `NAME\n` until the client closes.
fn serve_connection(mut stream: TcpStream, peer: SocketAddr, name: &str, stats: &Stats) {
    let reply = format!("{name}\n");
    let mut buf = [0_u8; SERVER_READ];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {
                stats.tcp_requests.fetch_add(1, Ordering::Relaxed);
                stats.client(peer);
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Reads until EOF, then replies with the byte count and a newline (see [`Server::with_sink`]).
fn sink_connection(mut stream: TcpStream, peer: SocketAddr, stats: &Stats) {
    let mut buf = vec![0_u8; STREAM_CHUNK];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let n = u64::try_from(n).expect("a read fits u64");
                total += n;
                stats.sink_bytes.fetch_add(n, Ordering::Relaxed);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!(
                    "gannet-probe: sink from {peer}: {} after {total} bytes",
                    Failure::from(err)
                );
                return;
            }
        }
    }
    stats.tcp_requests.fetch_add(1, Ordering::Relaxed);
    stats.client(peer);
    if let Err(err) = stream.write_all(format!("{total}\n").as_bytes()) {
        eprintln!("gannet-probe: sink reply to {peer}: {}", Failure::from(err));
    }
}

fn udp_loop(socket: &UdpSocket, name: &str, stats: &Stats) {
    let mut buf = [0_u8; 2048];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                stats.udp_requests.fetch_add(1, Ordering::Relaxed);
                stats.client(peer);
                if let Err(err) = socket.send_to(name.as_bytes(), peer) {
                    eprintln!("gannet-probe: UDP reply to {peer}: {}", Failure::from(err));
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => {
                eprintln!("gannet-probe: UDP receive: {}", Failure::from(err));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

pub(super) fn tcp_listen(addr: &SocketAddr) -> io::Result<TcpListener> {
    let fd = new_socket(addr, libc::SOCK_STREAM)?;
    set_int_option(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind_socket(&fd, addr)?;
    // SAFETY: listen(2) on a socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 1024) })?;
    Ok(TcpListener::from(fd))
}

fn udp_bind(addr: &SocketAddr) -> io::Result<UdpSocket> {
    let fd = new_socket(addr, libc::SOCK_DGRAM)?;
    bind_socket(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}
