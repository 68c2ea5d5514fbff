//! `gannetctl logs`: a container's log, in the CRI's log format, from the file the runtime writes
//! on the pod's node (in gannetd's `--state-dir`, see [`gannet_api::pod_logs`]): read directly
//! when this machine is that node, else through gannet-control from the node's gannetd.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use gannet_api::pod_logs::{self, Attempt, LogFile};
use gannet_api::{Client, ClientError, Kind, Object, pb};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

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
    /// gannetd's state directory on this node (where the runtime writes the pods' logs). When the
    /// pod's log is not there (the pod runs on another node), it is read through gannet-control
    /// from the node's gannetd.
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
    let attempt = Attempt {
        namespace: args.namespace.clone(),
        pod: args.pod.clone(),
        container,
        attempt: u32::try_from(attempt).unwrap_or(0),
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let pod_dir = pod_logs::pod_dir(&args.state_dir, &args.namespace, &args.pod, &uid);
    let path = pod_dir.join(pod_logs::container_file(
        &attempt.container,
        attempt.attempt,
    ));
    let follow = args.follow && !args.previous;
    let mut printer = Printer {
        timestamps: args.timestamps,
        source: path.display().to_string(),
        at_start: true,
    };
    let file = match LogFile::open(&path) {
        Ok(file) => Some(file),
        // Not this node's pod: ask its node.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !pod_dir.exists() => None,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no log at {}: the runtime has not written it, or it was removed",
                path.display()
            );
        }
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    match file {
        Some(mut file) => {
            let mut follower = client.clone();
            file.stream(
                args.tail,
                follow.then_some((&mut follower, &attempt)),
                |lines| std::future::ready(printer.print_all(&lines, out)),
            )
            .await?;
        }
        None => {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            printer.source = format!("node {node:?}");
            let request = pb::LogsRequest {
                namespace: attempt.namespace.clone(),
                pod: attempt.pod.clone(),
                uid,
                container: attempt.container.clone(),
                attempt: attempt.attempt,
                tail: args.tail.map(|n| n as u64),
                follow,
            };
            let mut chunks = client.logs(request).await.map_err(|error| remote(&error))?;
            while let Some(chunk) = chunks
                .message()
                .await
                .map_err(|status| remote(&ClientError::from(status)))?
            {
                let text = String::from_utf8_lossy(&chunk.data);
                let lines: Vec<&str> = text.split_inclusive('\n').collect();
                printer.print_all(&lines, out)?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A failure of reading the log through gannet-control, with what to do about it.
fn remote(error: &ClientError) -> anyhow::Error {
    match error {
        ClientError::Unavailable(_) => anyhow::anyhow!(
            "{error}; or run gannetctl logs on the pod's node (with its gannetd's --state-dir)"
        ),
        _ => anyhow::anyhow!("{error}"),
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
struct Printer {
    timestamps: bool,
    /// Where the lines come from, for errors.
    source: String,
    /// The next entry starts a line (the last one was full).
    at_start: bool,
}

impl Printer {
    fn print_all(&mut self, lines: &[impl AsRef<str>], out: &mut impl Write) -> anyhow::Result<()> {
        for line in lines {
            self.print(line.as_ref(), out)?;
        }
        Ok(())
    }

    /// One line of the file: `TIMESTAMP STREAM TAG CONTENT`, the tag `F` for a full line, `P`
    /// for a part of one that goes on in the next (a line longer than the runtime's buffer).
    fn print(&mut self, line: &str, out: &mut impl Write) -> anyhow::Result<()> {
        let Some(entry) = Entry::parse(line.strip_suffix('\n').unwrap_or(line)) else {
            bail!("{}: not a CRI log line: {:?}", self.source, line.trim_end());
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
            source: "0.log".to_owned(),
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
            source: "0.log".to_owned(),
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
