//! The host's end of the command channel: a request on a guest's `cmd.sock`, its response.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use gannet_lab::proto::{Request, Response};

/// How much longer than the command's own timeout the host waits for its response.
const SLACK: Duration = Duration::from_secs(10);

/// Runs `argv` in the guest whose command socket is `socket`, serialised with other clients
/// of that guest by an exclusive lock on `lock` (qemu serves one connection at a time).
pub(crate) fn call(
    socket: &Path,
    lock: &Path,
    argv: &[String],
    stdin: &str,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let lock_file =
        File::create(lock).with_context(|| format!("creating the lock {}", lock.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns for the call's duration.
    let rc = unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX) };
    anyhow::ensure!(
        rc == 0,
        "locking {}: {}",
        lock.display(),
        std::io::Error::last_os_error()
    );
    let stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is the lab up? `gannet-lab up`)",
            socket.display()
        )
    })?;
    let id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        ^ u64::from(std::process::id());
    let request = Request {
        id,
        argv: argv.to_vec(),
        stdin: stdin.to_owned(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let mut line = serde_json::to_string(&request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let deadline = Instant::now() + timeout + SLACK;
    let mut reader = BufReader::new(&stream);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "no response from the guest within {:?} for {argv:?}",
            timeout + SLACK
        );
        stream.set_read_timeout(Some(left))?;
        let mut text = String::new();
        let n = reader
            .read_line(&mut text)
            .with_context(|| format!("waiting for the guest's response to {argv:?}"))?;
        anyhow::ensure!(n > 0, "the guest's command channel closed (guest stopped?)");
        match serde_json::from_str::<Response>(&text) {
            Ok(response) if response.id == id => return Ok(response),
            // A response to an earlier client that went away, or a line cut by one.
            _ => {}
        }
    }
}
