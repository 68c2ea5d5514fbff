//! A container's `/bin/sh`, driven through the runtime's own foreground `run` (stdin and stdout
//! attached), so the test can run commands inside the container and, by closing the shell, make
//! the container exit the way it exits in production.

use std::process::Output;
use std::time::{Duration, Instant};

use gannet_testkit::ChildGuard;

/// How long a container may take to start and answer its first command.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one command in the container may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A running container whose main process is a shell reading commands from the runtime's stdin.
pub(crate) struct Container {
    /// The runtime's name for it.
    pub(crate) name: String,
    /// `CNI_CONTAINERID` as the runtime passes it (podman: the full id; ctr: `<namespace>-<id>`).
    pub(crate) cni_id: String,
    /// The runtime's `run` process (podman run -i / ctr run), killed on drop.
    run: ChildGuard,
    /// Commands sent so far (for unique end markers).
    sent: u32,
}

impl Container {
    /// Wraps the runtime's `run` process and waits until the shell answers.
    pub(crate) fn attach(name: &str, run: ChildGuard) -> Container {
        let mut container = Container {
            name: name.to_owned(),
            cni_id: String::new(),
            run,
            sent: 0,
        };
        let (status, out) = container.sh_within("echo started", START_TIMEOUT);
        assert_eq!(
            (status, out.trim()),
            (0, "started"),
            "container {name} did not start"
        );
        container
    }

    /// Runs `script` in the container's shell (stderr merged into stdout) and returns its exit
    /// status and output.
    pub(crate) fn sh(&mut self, script: &str) -> (i32, String) {
        self.sh_within(script, COMMAND_TIMEOUT)
    }

    /// Runs `script` and panics unless it exits 0; returns its output.
    pub(crate) fn sh_ok(&mut self, script: &str) -> String {
        let (status, out) = self.sh(script);
        assert_eq!(
            status, 0,
            "in container {}: `{script}` failed ({status}):\n{out}",
            self.name
        );
        out
    }

    fn sh_within(&mut self, script: &str, timeout: Duration) -> (i32, String) {
        self.sent += 1;
        let marker = format!("__gannet_done_{}__", self.sent);
        let line = format!("{{ {script}\n}} </dev/null 2>&1; echo \"{marker} $?\"");
        self.run
            .send_line(&line)
            .unwrap_or_else(|e| panic!("container {}: {e:#}", self.name));
        let deadline = Instant::now() + timeout;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.run.read_line(left).unwrap_or_else(|e| {
                panic!(
                    "container {}: no end of `{script}` within {timeout:?} (output so far: \
                     {out:?}): {e:#}",
                    self.name
                )
            });
            if let Some(status) = got.strip_prefix(&marker) {
                let status = status.trim().parse().unwrap_or(-1);
                return (status, out);
            }
            out.push_str(&got);
            out.push('\n');
        }
    }

    /// Ends the shell (so the container's main process exits 0) and waits for the runtime's `run`
    /// to return; panics unless it succeeds.
    pub(crate) fn exit(mut self) -> Output {
        self.run
            .send_line("exit 0")
            .unwrap_or_else(|e| panic!("container {}: {e:#}", self.name));
        let name = self.name.clone();
        let output = self.wait_ended();
        assert!(
            output.status.success(),
            "the run of container {name} ended with {}; stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Waits for the runtime's `run` to return (after the container was stopped from outside)
    /// and returns its output, whatever its status.
    pub(crate) fn wait_ended(mut self) -> Output {
        self.run
            .wait_output(COMMAND_TIMEOUT)
            .unwrap_or_else(|e| panic!("the run of container {} did not end: {e:#}", self.name))
    }
}
