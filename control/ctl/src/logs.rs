//! `gannetctl logs`: a container's log, read from the file the runtime writes on the pod's node
//! (in gannetd's `--state-dir`, see [`gannet_api::pod_logs`]), in the CRI's log format.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use gannet_api::{Client, ClientError, Kind, Object};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// How often `--follow` looks for more of the file, and (every fourth time) at the pod.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The pod.
    pod: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The container (needed when the pod has more than one).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// The container's previous attempt (the one before its last restart).
    #[arg(short = 'p', long)]
    previous: bool,
    /// Keep printing what the container writes, until it ends or the pod is deleted.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    /// Each line with the time the runtime received it (RFC 3339).
    #[arg(long)]
    timestamps: bool,
    /// gannetd's state directory on this node (where the runtime writes the pods' logs).
    #[arg(
        long,
        default_value = "/run/gannet",
        env = "GANNET_STATE_DIR",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
}

/// Prints the log of the container `args` names.
pub(crate) async fn logs(
    client: &mut Client,
    args: &LogsArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let pod = get_pod(client, &args.namespace, &args.pod)
        .await?
        .with_context(|| format!("pod {}/{} not found", args.namespace, args.pod))?;
    let container = container_name(&pod, args.container.as_deref())?;
    let status = container_status(&pod, &container);
    let Some(status) = status else {
        bail!(
            "container {container:?} in pod {}/{} has not been created yet",
            args.namespace,
            args.pod
        );
    };
    let attempt = if args.previous {
        match status.restart_count.checked_sub(1) {
            Some(previous) if previous >= 0 => previous,
            _ => bail!(
                "previous terminated container {container:?} in pod {}/{} not found",
                args.namespace,
                args.pod
            ),
        }
    } else {
        status.restart_count
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let path =
        gannet_api::pod_logs::pod_dir(&args.state_dir, &args.namespace, &args.pod, uid).join(
            gannet_api::pod_logs::container_file(&container, u32::try_from(attempt).unwrap_or(0)),
        );
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("{}", missing_file(&pod, &path));
        }
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let mut reader = BufReader::new(file);
    let mut printer = Printer {
        timestamps: args.timestamps,
        path: &path,
        at_start: true,
    };
    let mut line = String::new();
    let mut kept: VecDeque<String> = VecDeque::new();
    let mut position = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        position += read as u64;
        match args.tail {
            Some(0) => {}
            Some(n) => {
                if kept.len() == n {
                    kept.pop_front();
                }
                kept.push_back(line.clone());
            }
            None => printer.print(&line, out)?,
        }
    }
    for line in &kept {
        printer.print(line, out)?;
    }
    out.flush()?;
    if !args.follow || args.previous {
        return Ok(ExitCode::SUCCESS);
    }
    follow(
        client,
        args,
        &container,
        attempt,
        reader,
        position,
        &mut printer,
        out,
    )
    .await
}

/// Prints what the runtime appends to the file until the container attempt ends (and all it
/// wrote is printed) or the pod is gone.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, the state of `logs`"
)]
async fn follow(
    client: &mut Client,
    args: &LogsArgs,
    container: &str,
    attempt: i32,
    mut reader: BufReader<File>,
    mut position: u64,
    printer: &mut Printer<'_>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    let mut polls = 0u32;
    let mut ended = false;
    loop {
        loop {
            line.clear();
            let read = reader
                .read_line(&mut line)
                .with_context(|| format!("reading {}", printer.path.display()))?;
            if read == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // The runtime is in the middle of a line: read it again whole later.
                reader.seek(SeekFrom::Start(position))?;
                break;
            }
            position += read as u64;
            printer.print(&line, out)?;
        }
        out.flush()?;
        if ended {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(FOLLOW_POLL).await;
        polls += 1;
        if polls.is_multiple_of(4) {
            // One more read after the attempt ended takes what it wrote last.
            ended = match get_pod(client, &args.namespace, &args.pod).await? {
                None => true,
                Some(pod) => container_status(&pod, container).is_none_or(|status| {
                    status.restart_count != attempt
                        || status.state.as_ref().is_none_or(|s| s.running.is_none())
                }),
            };
        }
    }
}

/// Why the log file is not there, for a person.
fn missing_file(pod: &Pod, path: &Path) -> String {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    let here = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if !node.is_empty() && node != here {
        format!(
            "no log at {}: the pod runs on node {node:?}, and gannetctl logs reads the runtime's \
             log files where the pod runs: run it there (with that gannetd's --state-dir)",
            path.display()
        )
    } else {
        format!(
            "no log at {}: is --state-dir (GANNET_STATE_DIR) the pod's gannetd's?",
            path.display()
        )
    }
}

async fn get_pod(client: &mut Client, namespace: &str, name: &str) -> anyhow::Result<Option<Pod>> {
    match client.get(Kind::Pod, namespace, name).await {
        Ok(Object::Pod(pod)) => Ok(Some(*pod)),
        Ok(other) => bail!("the control plane answered a {:?} for a pod", other.kind()),
        Err(ClientError::NotFound(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// `wanted`, checked against the pod's containers, or its only container.
fn container_name(pod: &Pod, wanted: Option<&str>) -> anyhow::Result<String> {
    let names: Vec<&str> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    match (wanted, names.as_slice()) {
        (Some(wanted), _) if names.contains(&wanted) => Ok(wanted.to_owned()),
        (Some(wanted), _) => bail!(
            "container {wanted:?} is not valid for pod {pod_name}: its containers are {}",
            names.join(", ")
        ),
        (None, [only]) => Ok((*only).to_owned()),
        (None, _) => bail!(
            "a container name must be specified for pod {pod_name} (-c), choose one of: {}",
            names.join(", ")
        ),
    }
}

fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)
}

/// Writes the lines of a CRI log file as the container wrote them.
struct Printer<'a> {
    timestamps: bool,
    path: &'a Path,
    /// The next entry starts a line (the last one was full).
    at_start: bool,
}

impl Printer<'_> {
    /// One line of the file: `TIMESTAMP STREAM TAG CONTENT`, the tag `F` for a full line, `P`
    /// for a part of one that goes on in the next (a line longer than the runtime's buffer).
    fn print(&mut self, line: &str, out: &mut impl Write) -> anyhow::Result<()> {
        let Some(entry) = Entry::parse(line.strip_suffix('\n').unwrap_or(line)) else {
            bail!(
                "{}: not a CRI log line: {:?}",
                self.path.display(),
                line.trim_end()
            );
        };
        if self.timestamps && self.at_start {
            write!(out, "{} ", entry.time)?;
        }
        self.at_start = entry.full;
        out.write_all(entry.content.as_bytes())?;
        if entry.full {
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// A parsed line of a CRI log file.
#[derive(Debug, PartialEq, Eq)]
struct Entry<'a> {
    time: &'a str,
    full: bool,
    content: &'a str,
}

impl<'a> Entry<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.splitn(4, ' ');
        let time = fields.next()?;
        let stream = fields.next()?;
        let tag = fields.next()?;
        if !matches!(stream, "stdout" | "stderr") {
            return None;
        }
        let full = match tag.split(':').next()? {
            "F" => true,
            "P" => false,
            _ => return None,
        };
        Some(Self {
            time,
            full,
            content: fields.next().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_with_their_time_and_tag() {
        assert_eq!(
            Entry::parse("2026-12-05T10:00:00.123456789Z stdout F hello world"),
            Some(Entry {
                time: "2026-12-05T10:00:00.123456789Z",
                full: true,
                content: "hello world"
            })
        );
        assert_eq!(
            Entry::parse("2026-12-05T10:00:00Z stderr P part"),
            Some(Entry {
                time: "2026-12-05T10:00:00Z",
                full: false,
                content: "part"
            })
        );
        // An empty line the container wrote.
        assert_eq!(
            Entry::parse("2026-12-05T10:00:00Z stdout F"),
            Some(Entry {
                time: "2026-12-05T10:00:00Z",
                full: true,
                content: ""
            })
        );
        assert_eq!(Entry::parse("not a log line"), None);
        assert_eq!(Entry::parse("2026-12-05T10:00:00Z stdin F x"), None);
    }

    #[test]
    fn partial_lines_join_and_timestamps_prefix_each_entry() {
        let mut printer = Printer {
            timestamps: false,
            path: Path::new("0.log"),
            at_start: true,
        };
        let mut out = Vec::new();
        for line in [
            "t1 stdout P abc\n",
            "t2 stdout F def\n",
            "t3 stderr F ghi\n",
        ] {
            printer.print(line, &mut out).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "abcdef\nghi\n");
        let mut printer = Printer {
            timestamps: true,
            path: Path::new("0.log"),
            at_start: true,
        };
        let mut out = Vec::new();
        for line in ["t1 stdout F x\n", "t2 stdout P y\n", "t3 stdout F z\n"] {
            printer.print(line, &mut out).unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "t1 x\nt2 yz\n");
        let error = printer.print("garbage\n", &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("0.log: not a CRI log line"));
    }
}
