//! Where the kubelet role keeps the containers' logs on a node, as gannetd writes them through the
//! runtime, and how they are read: by `gannetctl logs` on the pod's node, and by gannetd for a
//! `gannetctl logs` elsewhere (through gannet-control's `NodeProxy`).
//!
//! A log file holds CRI log lines (`TIMESTAMP STREAM TAG CONTENT`); [`LogFile`] hands out whole
//! lines only, so a line the runtime is still writing is read again when it is complete.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use crate::{Client, ClientError, Kind, Object};

/// The directory in gannetd's `--state-dir` that holds one directory per pod.
pub const DIR: &str = "pod-logs";

/// How often a follower looks for more of the file; every fourth time it also looks at the pod.
pub const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// Lines handed over at once.
const BATCH: usize = 512;

/// A pod's log directory in `state_dir` (its sandbox's `log_directory`).
#[must_use]
pub fn pod_dir(state_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    state_dir.join(DIR).join(pod_dir_name(namespace, name, uid))
}

/// A pod's log directory's name in [`DIR`].
#[must_use]
pub fn pod_dir_name(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}_{name}_{uid}")
}

/// A container attempt's log file, relative to its pod's directory (its `log_path`).
#[must_use]
pub fn container_file(container: &str, attempt: u32) -> String {
    format!("{container}/{attempt}.log")
}

/// The container attempt whose log is followed.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub attempt: u32,
}

impl Attempt {
    /// Whether the attempt no longer runs (the pod is gone, the container restarted or stopped).
    ///
    /// # Errors
    /// The control plane's.
    pub async fn ended(&self, client: &mut Client) -> Result<bool, ClientError> {
        let pod: Pod = match client.get(Kind::Pod, &self.namespace, &self.pod).await {
            Ok(Object::Pod(pod)) => *pod,
            Ok(_) | Err(ClientError::NotFound(_)) => return Ok(true),
            Err(error) => return Err(error),
        };
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|all| all.iter().find(|c| c.name == self.container));
        Ok(status.is_none_or(|status| {
            u32::try_from(status.restart_count).ok() != Some(self.attempt)
                || status.state.as_ref().is_none_or(|s| s.running.is_none())
        }))
    }
}

/// A CRI log file being read.
#[derive(Debug)]
pub struct LogFile {
    reader: BufReader<File>,
    /// Where the whole lines read so far end.
    position: u64,
    path: PathBuf,
}

impl LogFile {
    /// # Errors
    /// The file's (`NotFound` when the runtime has not written it).
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            reader: BufReader::new(File::open(path)?),
            position: 0,
            path: path.to_owned(),
        })
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `max` whole lines after those read before, each with its `\n`.
    ///
    /// # Errors
    /// The file's.
    pub fn read_lines(&mut self, max: usize) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        while lines.len() < max {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line)?;
            if read == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // The runtime is in the middle of the line: read it again when it is whole.
                self.reader.seek(SeekFrom::Start(self.position))?;
                break;
            }
            self.position += read as u64;
            lines.push(line);
        }
        Ok(lines)
    }

    /// Hands the lines written so far (only the last `tail`, when given) to `sink` in batches,
    /// then, with `follow`, what the attempt appends until it ends (and all it wrote was handed
    /// over) or the pod is gone.
    ///
    /// # Errors
    /// The file's, the control plane's, and `sink`'s.
    pub async fn stream<E, F>(
        &mut self,
        tail: Option<usize>,
        follow: Option<(&mut Client, &Attempt)>,
        mut sink: impl FnMut(Vec<String>) -> F,
    ) -> Result<(), E>
    where
        E: From<io::Error> + From<ClientError>,
        F: Future<Output = Result<(), E>>,
    {
        match tail {
            None => loop {
                let lines = self.read_lines(BATCH)?;
                if lines.is_empty() {
                    break;
                }
                sink(lines).await?;
            },
            Some(n) => {
                let mut kept: VecDeque<String> = VecDeque::with_capacity(n.min(BATCH));
                loop {
                    let lines = self.read_lines(BATCH)?;
                    if lines.is_empty() {
                        break;
                    }
                    for line in lines {
                        if n == 0 {
                            continue;
                        }
                        if kept.len() == n {
                            kept.pop_front();
                        }
                        kept.push_back(line);
                    }
                }
                let kept: Vec<String> = kept.into();
                for batch in kept.chunks(BATCH) {
                    sink(batch.to_vec()).await?;
                }
            }
        }
        let Some((client, attempt)) = follow else {
            return Ok(());
        };
        let mut polls = 0u32;
        let mut ended = false;
        loop {
            loop {
                let lines = self.read_lines(BATCH)?;
                if lines.is_empty() {
                    break;
                }
                sink(lines).await?;
            }
            if ended {
                return Ok(());
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            polls += 1;
            if polls.is_multiple_of(4) {
                // One more read after the attempt ended takes what it wrote last.
                ended = attempt.ended(client).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[derive(Debug)]
    enum Failed {
        Io(#[expect(dead_code, reason = "printed by unwrap")] io::Error),
        Client(#[expect(dead_code, reason = "printed by unwrap")] ClientError),
    }

    impl From<io::Error> for Failed {
        fn from(error: io::Error) -> Self {
            Self::Io(error)
        }
    }

    impl From<ClientError> for Failed {
        fn from(error: ClientError) -> Self {
            Self::Client(error)
        }
    }

    #[test]
    fn only_whole_lines_are_read_and_a_partial_one_is_read_again_when_whole() {
        let dir = std::env::temp_dir().join(format!("gannet-api-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0.log");
        let mut writer = File::create(&path).unwrap();
        writer
            .write_all(b"t1 stdout F one\nt2 stdout F tw")
            .unwrap();
        let mut file = LogFile::open(&path).unwrap();
        assert_eq!(file.read_lines(10).unwrap(), ["t1 stdout F one\n"]);
        assert!(file.read_lines(10).unwrap().is_empty());
        writer.write_all(b"o\nt3 stdout F three\n").unwrap();
        assert_eq!(
            file.read_lines(1).unwrap(),
            ["t2 stdout F two\n"],
            "the partial line is read whole, and no more than asked"
        );
        assert_eq!(file.read_lines(10).unwrap(), ["t3 stdout F three\n"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn tail_keeps_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("gannet-api-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0.log");
        let text: String = (0..2000).map(|i| format!("t stdout F {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        for (tail, expected) in [(Some(3), vec![1997, 1998, 1999]), (Some(0), vec![])] {
            let mut got = Vec::new();
            LogFile::open(&path)
                .unwrap()
                .stream(tail, None, |lines| {
                    got.extend(lines);
                    std::future::ready(Ok::<(), Failed>(()))
                })
                .await
                .unwrap();
            let expected: Vec<String> = expected
                .iter()
                .map(|i| format!("t stdout F {i}\n"))
                .collect();
            assert_eq!(got, expected);
        }
        let mut count = 0;
        LogFile::open(&path)
            .unwrap()
            .stream(None, None, |lines| {
                count += lines.len();
                std::future::ready(Ok::<(), Failed>(()))
            })
            .await
            .unwrap();
        assert_eq!(count, 2000);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
