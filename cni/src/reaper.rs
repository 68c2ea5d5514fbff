//! Deleting links off the critical path.
//!
//! `RTM_DELLINK` of a veth returns only after the kernel's RCU barrier (`netdev_run_todo`), which
//! takes 10–40 ms on a busy node and is not CPU work. `DEL` therefore only retires a pod's veth
//! (down, routes gone, both ends renamed to tombstones, see [`crate::network::retire`]) and leaves
//! the deletion to a detached grandchild: the plugin forks, the child starts a new session, forks
//! again and exits at once (the plugin reaps it), and the grandchild, an orphan, deletes the links
//! and exits. It holds none of the plugin's file descriptors (so a runtime reading the plugin's
//! stdout to its end is not kept waiting, and no IPAM lock is inherited), and it runs in the
//! network namespace of the thread that forked, which must be the node's.
//!
//! Between `fork` and `_exit` the children make only async-signal-safe system calls on memory
//! prepared before the fork (no allocation, no lock), so forking is sound even if another thread
//! existed.
//!
//! If the grandchild dies before it is done, the tombstones stay until `GC` removes them; a
//! tombstone is down, has no routes and no name a later `ADD` needs.

use std::io;

use crate::netlink::delete_link_request;

/// Deletes the links called `names` (in the calling thread's network namespace) from a detached
/// grandchild process, without waiting for the deletion.
///
/// # Errors
/// If `fork(2)` fails (nothing was started then) or waiting for the intermediate child fails.
pub fn delete_links_detached(names: &[String]) -> io::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let requests: Vec<Vec<u8>> = names.iter().map(|n| delete_link_request(n)).collect();
    // SAFETY: after fork the children only call async-signal-safe functions (see `child`).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: we are the freshly forked child.
        0 => unsafe { child(&requests) },
        pid => {
            let mut status = 0;
            loop {
                // SAFETY: waitpid(2) for the child just forked, into a local.
                let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
                if r == pid {
                    return Ok(());
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // SIGCHLD ignored (inherited from the runtime): the kernel reaped the child.
                    Some(libc::ECHILD) => return Ok(()),
                    _ => return Err(err),
                }
            }
        }
    }
}

/// The forked child: new session, fork the grandchild, exit.
///
/// # Safety
/// Only in a child just returned from `fork(2)`.
unsafe fn child(requests: &[Vec<u8>]) -> ! {
    // SAFETY: setsid(2), fork(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::setsid();
        if libc::fork() == 0 {
            grandchild(requests);
        }
        libc::_exit(0)
    }
}

/// The grandchild: detach from every inherited descriptor, send the requests, exit.
///
/// # Safety
/// Only in a process forked as described in the module documentation.
unsafe fn grandchild(requests: &[Vec<u8>]) -> ! {
    // SAFETY: every call here is an async-signal-safe system call on memory owned by the caller
    // (`requests`) or on the stack.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        if libc::syscall(libc::SYS_close_range, 3_u32, u32::MAX, 0_u32) != 0 {
            for fd in 3..1024 {
                libc::close(fd);
            }
        }
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd >= 0 {
            let mut ack = [0_u8; 1024];
            for request in requests {
                // The kernel handles the request inside send(2); the ACK (or error) is then
                // queued. Either way there is nothing left to do about this link.
                libc::send(fd, request.as_ptr().cast(), request.len(), 0);
                libc::recv(fd, ack.as_mut_ptr().cast(), ack.len(), libc::MSG_DONTWAIT);
            }
        }
        libc::_exit(0)
    }
}
