//! The CNI socket: `<state_dir>/cni.sock`, where gannet-cni's requests arrive. Each connection
//! is served by its own task; requests go to the main loop through a channel.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use gannet_cni::agent_api::{self, Response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{Call, SOCKET};

/// How long a connection may take to send a whole request line (and to take its answer);
/// one that sends nothing, or too slowly, for this long is closed. gannet-cni sends its line at
/// once and waits [`agent_api::DEFAULT_TIMEOUT`] for the answer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens on `<state_dir>/cni.sock` (mode 0600) and forwards every request to `calls`.
///
/// The socket is bound in a directory of its own (mode 0700) and renamed into place: at
/// `cni.sock` it has had its final permissions from the start (no window between `bind`, which
/// applies the umask, and a `chmod`).
pub fn serve(state_dir: &Path, calls: mpsc::Sender<Call>) -> io::Result<PathBuf> {
    fs::create_dir_all(state_dir)?;
    let path = state_dir.join(SOCKET);
    let private = state_dir.join(format!(".{SOCKET}.{}", std::process::id()));
    // A leftover of a gannetd of the same pid (a container restarted): nobody else's.
    let _ = fs::remove_dir_all(&private);
    fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = private.join(SOCKET);
    let listener = UnixListener::bind(&bound).and_then(|listener| {
        fs::set_permissions(&bound, fs::Permissions::from_mode(0o600))?;
        // Replaces a stale socket of an earlier gannetd in one step.
        fs::rename(&bound, &path)?;
        Ok(listener)
    });
    let _ = fs::remove_dir_all(&private);
    let listener = listener?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, calls.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "accepting on the CNI socket");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(path)
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // A line is read up to MAX_LINE bytes and its newline, so a client cannot make gannetd
    // buffer more than that.
    let limit = agent_api::MAX_LINE as u64 + 1;
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut bounded = (&mut reader).take(limit);
        let read = bounded.read_until(b'\n', &mut line);
        match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(Ok(0)) => return,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "reading from a CNI client");
                return;
            }
            Err(_) => {
                debug!(
                    timeout_seconds = IDLE_TIMEOUT.as_secs(),
                    "closing an idle CNI connection"
                );
                return;
            }
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        }
        // The rest of an overlong line is still unread: answer, then close the connection.
        let overlong = !complete && line.len() > agent_api::MAX_LINE;
        let response = match agent_api::parse_request(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    return;
                }
                rx.await
                    .unwrap_or_else(|_| Response::error("gannetd is shutting down"))
            }
            Err(e) => Response::error(e),
        };
        let Ok(mut out) = serde_json::to_vec(&response) else {
            return;
        };
        out.push(b'\n');
        let written = tokio::time::timeout(IDLE_TIMEOUT, write.write_all(&out)).await;
        if !matches!(written, Ok(Ok(()))) || overlong {
            return;
        }
    }
}

/// Whether a gannetd answers on the CNI socket of `state_dir`.
#[must_use]
pub fn agent_running(state_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(state_dir.join(SOCKET)).is_ok()
}
