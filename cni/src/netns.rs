//! Network namespaces (entered on a short-lived thread, never by the whole process) and sysctls.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// Opens a network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
///
/// # Errors
/// If it cannot be opened or is not a network namespace.
pub fn open(path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    // An nsfs file; refuse ordinary files early with a clear error.
    let magic_ok = {
        // SAFETY: fstatfs(2) writes into the zeroed struct we pass.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `file` is open and `stat` is a valid out-pointer.
        let ok = unsafe { libc::fstatfs(file.as_raw_fd(), &raw mut stat) } == 0;
        ok && (stat.f_type == NSFS_MAGIC || stat.f_type == PROC_SUPER_MAGIC)
    };
    if !magic_ok {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a network namespace file",
        ));
    }
    Ok(file)
}

const NSFS_MAGIC: libc::__fsword_t = 0x6e73_6673;
const PROC_SUPER_MAGIC: libc::__fsword_t = 0x9fa0;

/// Whether `netns` is the calling process's own network namespace.
///
/// # Errors
/// If either cannot be inspected.
pub fn is_own(netns: &File) -> io::Result<bool> {
    let own = std::fs::metadata("/proc/thread-self/ns/net")?;
    let other = netns.metadata()?;
    Ok(own.dev() == other.dev() && own.ino() == other.ino())
}

/// Runs `f` on a thread that joined `netns`; the rest of the process stays where it is. Sockets
/// `f` creates belong to `netns` for their whole life.
///
/// # Errors
/// If the namespace cannot be joined.
///
/// # Panics
/// If `f` panics.
pub fn run_in<R: Send>(netns: &File, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: `fd` is an open namespace file kept open by the caller's borrow;
                // setns(2) affects only this thread.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Reads sysctl `key` (slash form: `net/ipv4/ip_forward`) of the calling thread's namespace.
///
/// # Errors
/// If it cannot be read.
pub fn sysctl_get(key: &str) -> io::Result<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key)).map(|v| v.trim().to_owned())
}

/// Sets sysctl `key` to `value` unless it already has that value.
///
/// # Errors
/// If it cannot be read or written.
pub fn sysctl_ensure(key: &str, value: &str) -> io::Result<()> {
    if sysctl_get(key)? == value {
        return Ok(());
    }
    std::fs::write(Path::new("/proc/sys").join(key), value)
}
