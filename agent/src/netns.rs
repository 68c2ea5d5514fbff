//! The network namespaces of a set of processes, and short work done inside them.
//!
//! Netlink (like every socket) sees the network namespace of the thread that created it. To
//! reach the sockets of pods in namespaces of their own, gannetd finds those namespaces through
//! the processes of its cgroup sub-tree (`/proc/PID/ns/net`, one per namespace: they are told
//! apart by the namespace file's device and inode, as `ip netns identify` does) and creates a
//! socket in each from a short-lived helper thread ([`in_each`]): the thread `setns`es into one
//! namespace after the other, creates what it is asked to, and exits. gannetd's own threads never
//! change namespace; a socket keeps the namespace it was created in, so the caller uses what the
//! helper returns from where it is.

use std::{
    collections::BTreeSet,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd},
        unix::fs::MetadataExt as _,
    },
    path::PathBuf,
};

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The calling thread's network namespace.
///
/// # Errors
/// If `/proc/thread-self/ns/net` cannot be read (no procfs).
pub fn current() -> io::Result<NsId> {
    std::fs::metadata("/proc/thread-self/ns/net").map(|m| NsId::of(&m))
}

/// A namespace found through one of the processes.
#[derive(Debug)]
pub struct Found {
    pub id: NsId,
    /// The process it was found through (for messages).
    pub pid: i32,
    /// `/proc/PID/ns/net`, open: it keeps the namespace alive (and the same) after the process
    /// has gone.
    pub file: File,
}

impl AsFd for Found {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// What [`of_processes`] found.
#[derive(Debug, Default)]
pub struct Namespaces {
    /// One entry per namespace, other than the ones excepted, in the order first seen.
    pub found: Vec<Found>,
    /// The first process whose namespace could not be read for another reason than the
    /// process having gone (which is no error), with the error, and how many such processes.
    pub failed: Option<(i32, io::Error, usize)>,
}

/// The network namespaces of `pids`, each once, leaving out those in `except` (gannetd's own).
/// Processes that exit meanwhile are skipped.
pub fn of_processes(pids: impl IntoIterator<Item = i32>, except: &[NsId]) -> Namespaces {
    let mut seen: BTreeSet<NsId> = except.iter().copied().collect();
    let mut out = Namespaces::default();
    let mut fail = |pid: i32, e: io::Error| match &mut out.failed {
        Some((_, _, n)) => *n += 1,
        None => out.failed = Some((pid, e, 1)),
    };
    let mut found = Vec::new();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        // A stat first, so a namespace seen already costs no descriptor.
        match std::fs::metadata(&path) {
            Ok(meta) if seen.contains(&NsId::of(&meta)) => continue,
            Ok(_) => {}
            Err(e) if gone(&e) => continue,
            Err(e) => {
                fail(pid, e);
                continue;
            }
        }
        // The process may have been replaced between the two calls: what counts is the file
        // opened.
        let opened = File::open(&path).and_then(|file| {
            let meta = file.metadata()?;
            Ok((file, NsId::of(&meta)))
        });
        match opened {
            Ok((file, id)) => {
                if seen.insert(id) {
                    found.push(Found { id, pid, file });
                }
            }
            Err(e) if gone(&e) => {}
            Err(e) => fail(pid, e),
        }
    }
    out.found = found;
    out
}

/// Whether reading `/proc/PID/...` failed because the process is gone.
fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH))
}

/// Runs `make` once inside each namespace of `namespaces` (open nsfs files), on one helper thread
/// that joins them one after the other and then exits; returns the results in the same order.
/// The calling thread's namespace never changes. What `make` creates (sockets) stays in the
/// namespace it was created in.
///
/// # Errors
/// Per namespace: if it cannot be joined (`setns`), or `make` fails.
pub fn in_each<N, T, E>(
    namespaces: &[N],
    make: impl Fn() -> Result<T, E> + Sync,
) -> Vec<Result<T, InNsError<E>>>
where
    N: AsFd + Sync,
    T: Send,
    E: Send,
{
    if namespaces.is_empty() {
        return Vec::new();
    }
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("gannet-netns".into())
            .spawn_scoped(scope, || {
                namespaces
                    .iter()
                    .map(|ns| {
                        // SAFETY: `ns` is an open namespace file; setns(2) with CLONE_NEWNET
                        // changes the namespace of this helper thread only.
                        if unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                            return Err(InNsError::Join(io::Error::last_os_error()));
                        }
                        make().map_err(InNsError::Make)
                    })
                    .collect::<Vec<_>>()
            });
        match helper {
            Ok(helper) => helper
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => {
                let kind = e.kind();
                let message = e.to_string();
                namespaces
                    .iter()
                    .map(|_| {
                        Err(InNsError::Join(io::Error::new(
                            kind,
                            format!("starting the helper thread: {message}"),
                        )))
                    })
                    .collect()
            }
        }
    })
}

/// Why [`in_each`] failed for one namespace.
#[derive(Debug, thiserror::Error)]
pub enum InNsError<E> {
    #[error("joining the network namespace: {0}")]
    Join(#[source] io::Error),
    #[error(transparent)]
    Make(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_is_left_out_and_each_namespace_found_once() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let own = current().expect("procfs");
        // The process twice, and a pid that cannot exist (beyond pid_max).
        let ns = of_processes([me, me, i32::MAX], &[own]);
        assert!(ns.found.is_empty(), "own namespace left out: {ns:?}");
        assert!(ns.failed.is_none(), "a vanished pid is no error: {ns:?}");
        let ns = of_processes([me, me, i32::MAX], &[]);
        assert_eq!(ns.found.len(), 1, "one namespace, once: {ns:?}");
        assert_eq!(ns.found[0].id, own);
        assert_eq!(ns.found[0].pid, me);
    }

    #[test]
    fn work_in_a_namespace_leaves_the_caller_where_it_was() {
        let own = current().expect("procfs");
        let files = [
            File::open("/proc/self/ns/net").expect("own namespace file"),
            File::open("/proc/self/ns/net").expect("own namespace file"),
        ];
        let ids = in_each(&files, || current().map_err(|e| e.to_string()));
        assert_eq!(ids.len(), 2);
        for id in ids {
            assert_eq!(id.expect("joined"), own);
        }
        assert_eq!(current().expect("procfs"), own);
        // Not a namespace file: setns fails, reported per namespace.
        let not_ns = [File::open("/proc/self/status").expect("a file")];
        let r = in_each(&not_ns, || Ok::<_, String>(()));
        assert!(matches!(r.as_slice(), [Err(InNsError::Join(_))]), "{r:?}");
    }
}
