//! The echo server: one thread, one epoll instance, level-triggered, non-blocking sockets.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use anyhow::Context as _;

use super::{CRR_REQUEST, SINK_REQUEST};

/// How much one read takes at most (large, so a bulk sender is drained in few calls).
const READ_BUFFER: usize = 256 * 1024;
/// How many events one `epoll_wait` returns at most.
const MAX_EVENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No byte read yet.
    New,
    Echo,
    Sink,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    mode: Mode,
    received: u64,
}

/// Listens on `listen` and serves every connection as the protocol in the module documentation
/// says, answering crr requests with `id`; calls `ready` once the socket listens. Runs until the
/// process is killed.
///
/// # Errors
/// If the address cannot be bound or epoll fails.
pub fn serve(listen: SocketAddr, id: u8, ready: impl FnOnce()) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: `epfd` is a new descriptor that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    let listen_fd = listener.as_raw_fd();
    epoll_add(epfd, listen_fd).context("adding the listener to epoll")?;
    ready();

    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut buf = vec![0_u8; READ_BUFFER];
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        // SAFETY: `events` is valid for MAX_EVENTS entries; MAX_EVENTS fits in a c_int.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("epoll_wait");
        }
        for event in &events[..usize::try_from(n).unwrap_or(0)] {
            let fd = RawFd::try_from(event.u64).unwrap_or(-1);
            if fd == listen_fd {
                accept_all(&listener, epfd, &mut conns);
            } else if let Some(conn) = conns.get_mut(&fd)
                && !serve_readable(conn, id, &mut buf)
            {
                // Dropping the stream closes it, which also removes it from the epoll set.
                conns.remove(&fd);
            }
        }
    }
}

fn epoll_add(epfd: RawFd, fd: RawFd) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: u64::try_from(fd).map_err(|_| io::Error::from(ErrorKind::InvalidInput))?,
    };
    // SAFETY: `event` is a valid epoll_event; the descriptors are open.
    if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &raw mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn accept_all(listener: &TcpListener, epfd: RawFd, conns: &mut HashMap<RawFd, Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                    continue;
                }
                let fd = stream.as_raw_fd();
                if epoll_add(epfd, fd).is_ok() {
                    conns.insert(
                        fd,
                        Conn {
                            stream,
                            mode: Mode::New,
                            received: 0,
                        },
                    );
                }
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            // WouldBlock: the queue is empty. Anything else (EMFILE, ECONNABORTED): try again
            // on the next event rather than spin.
            Err(_) => return,
        }
    }
}

/// Serves one readable connection; false when it is finished and must be closed.
fn serve_readable(conn: &mut Conn, id: u8, buf: &mut [u8]) -> bool {
    let n = match conn.stream.read(buf) {
        Ok(n) => n,
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return true;
        }
        Err(_) => return false,
    };
    if n == 0 {
        if conn.mode == Mode::Sink {
            // The client waits for the count; the socket's send buffer is empty by now.
            let _ = conn
                .stream
                .set_nonblocking(false)
                .and_then(|()| conn.stream.write_all(&conn.received.to_le_bytes()));
        }
        return false;
    }
    if conn.mode == Mode::New {
        match buf[0] {
            CRR_REQUEST => {
                // Answer and close: the server closes first.
                let _ = conn.stream.write(&[id]);
                return false;
            }
            SINK_REQUEST => conn.mode = Mode::Sink,
            _ => conn.mode = Mode::Echo,
        }
    }
    match conn.mode {
        Mode::Sink => {
            conn.received += n as u64;
            true
        }
        // A request/response client has at most one small request in flight, so the reply fits
        // the send buffer; a client that floods instead is disconnected.
        _ => matches!(conn.stream.write(&buf[..n]), Ok(written) if written == n),
    }
}
