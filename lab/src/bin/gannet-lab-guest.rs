//! gannet-lab-guest: the command server of a lab guest. busybox init keeps it running; it serves
//! the lab's requests on the virtio-serial port named by `--port`, one at a time (see
//! `gannet_lab::proto`).
#![expect(
    unused_crate_dependencies,
    reason = "serde is the protocol's, through the library"
)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead as _, BufReader, Read, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use gannet_lab::proto::{COMMAND_PORT, Request, Response};

/// How long output is still collected after the command exited, for pipes that something it
/// started in the background holds open.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// How often the port is read again while no host is connected (reads return end of file).
const IDLE_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Parser)]
#[command(
    version,
    about = "The command server of a gannet-lab guest (started by its init)"
)]
struct Args {
    /// Name of the virtio-serial port to serve (`/sys/class/virtio-ports/*/name`).
    #[arg(long, default_value = COMMAND_PORT)]
    port: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = find_port(&args.port)?;
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device)
        .with_context(|| format!("opening {}", device.display()))?;
    serve(&port)
}

/// `/dev/vportNpM` for the port named `name`.
fn find_port(name: &str) -> anyhow::Result<PathBuf> {
    let dir = "/sys/class/virtio-ports";
    for entry in fs::read_dir(dir).with_context(|| format!("reading {dir}"))? {
        let entry = entry?;
        let named = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if named.trim() == name {
            return Ok(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    anyhow::bail!("no virtio-serial port named {name} in {dir}")
}

fn serve(port: &File) -> anyhow::Result<()> {
    let mut reader = BufReader::new(port);
    let mut writer = port;
    let mut line = String::new();
    loop {
        line.clear();
        // While no host is connected, reads return end of file: wait and read again.
        if reader.read_line(&mut line)? == 0 {
            thread::sleep(IDLE_POLL);
            continue;
        }
        if !line.ends_with('\n') {
            // A partial line from a host that went away; the rest is lost with it.
            continue;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => run(&request),
            Err(error) => Response {
                id: 0,
                status: None,
                signal: None,
                timed_out: false,
                stdout: String::new(),
                stderr: String::new(),
                error: Some(format!("bad request: {error}")),
            },
        };
        let mut out = serde_json::to_string(&response)?;
        out.push('\n');
        writer.write_all(out.as_bytes())?;
        writer.flush()?;
    }
}

fn run(request: &Request) -> Response {
    let mut response = Response {
        id: request.id,
        status: None,
        signal: None,
        timed_out: false,
        stdout: String::new(),
        stderr: String::new(),
        error: None,
    };
    let Some((program, args)) = request.argv.split_first() else {
        response.error = Some("empty command".to_owned());
        return response;
    };
    let child = Command::new(program)
        .args(args)
        .env("PATH", "/usr/sbin:/usr/bin")
        .env("HOME", "/root")
        .current_dir("/root")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            response.error = Some(format!("cannot run {program}: {error}"));
            return response;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let input = request.stdin.clone();
        thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                response.timed_out = true;
                kill_group(child.id());
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(error) => {
                response.error = Some(format!("waiting for {program}: {error}"));
                break None;
            }
        }
    };
    if let Some(status) = status {
        response.status = status.code();
        response.signal = status.signal();
    }
    let until = Instant::now() + OUTPUT_GRACE;
    response.stdout = stdout
        .recv_timeout(until.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    response.stderr = stderr
        .recv_timeout(until.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    response
}

/// Reads a pipe to its end on a thread; the receiver gets the text.
fn collect(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

fn kill_group(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    let rc = unsafe { libc::kill(-pid, libc::SIGKILL) };
    if rc != 0 {
        eprintln!(
            "gannet-lab-guest: killing process group {pid}: {}",
            io::Error::last_os_error()
        );
    }
}
