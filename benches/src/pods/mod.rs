//! The pods scenario: how long a pod takes to start under gannetd's kubelet role, against the
//! runtime alone.
//!
//! One node: a network namespace of the run, containerd started in it by the test kit (its own
//! root, state and socket; the pods' cgroups below a cgroup of the run), gannet-control, and
//! gannetd with `--container-runtime`. Each round starts one pod each way, in alternating order:
//! - gannet: `gannetctl apply` of a Pod (as the API call) → sandbox, CNI ADD through containerd's
//!   CNI configuration (gannet-cni), container → `Ready`; and → the first request answered
//!   through its Service's ClusterIP (a client in the node loops on it from before the apply);
//! - the runtime alone: `ctr run --cni -d` of the same image and command with the same CNI
//!   configuration (gannet-cni; `ctr` reads it from /etc/cni/net.d and /opt/cni/bin, which a
//!   private mount namespace of the run provides), timed until `ctr` returns with the task
//!   started;
//! - the CRI alone: the calls gannetd makes for such a pod (`RunPodSandbox`, `CreateContainer`,
//!   `StartContainer`) made directly, with no control plane, watch or status in between: what
//!   is left of gannet's time beyond it is the kubelet role's own.
//!
//! The pods stay up until the end: gannetd's memory is read with all of them running.

pub mod cli;
pub mod report;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gannet_agent::kubelet::cri::{Cri, RuntimeEndpoint};
use gannet_api::{Client, Credentials, Kind, Object, ServerAddr};
use gannet_testkit::containerd::{BUSYBOX_IMAGE, Containerd, PAUSE_IMAGE};
use gannet_testkit::control::ControlPlane;
use gannet_testkit::{
    Cgroup, ChildGuard, Netns, agent::Agent, bin_path, probe::Report, run_in, spawn,
};
use k8s_cri::v1 as cri;
use serde::Serialize;

use crate::control::procs;
use crate::scenario::stats::LatencyStats;

/// How long one pod may take to start (image unpack, sandbox, CNI) before the run fails.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound of every short command (`ctr`, imports).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the pod's status is read while waiting for `Ready`.
const STATUS_POLL: Duration = Duration::from_millis(5);
/// The server port in the pods; the Services' port is 80.
const POD_PORT: u16 = 8080;

/// The scenario's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Pods started each way.
    pub pods: usize,
}

/// What the run measured, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// gannet: `gannetctl apply` of the Pod, until it returned (a process and one API call).
    pub gannet_applied: Option<LatencyStats>,
    /// gannet: `gannetctl apply` → the Pod's `Ready` condition true.
    pub gannet_ready: Option<LatencyStats>,
    /// gannet: `gannetctl apply` → the first request answered through the pod's Service.
    pub gannet_first_answer: Option<LatencyStats>,
    /// The runtime alone: `ctr run --cni -d` until it returned with the task started.
    pub runtime_started: Option<LatencyStats>,
    /// The CRI alone: `RunPodSandbox` until `StartContainer` returned.
    pub cri_started: Option<LatencyStats>,
    /// gannetd's memory with every gannet pod running, in KiB.
    pub agent_memory: procs::Memory,
}

/// The node the run starts pods on, and everything it needs; dropped (and all of it cleaned up)
/// at the end.
/// The fields drop in order: what runs in the namespace before the namespace.
struct Node {
    /// A process holding the private mount namespace `ctr run --cni` runs in.
    ctr_mounts: ChildGuard,
    /// The run's scratch directory: the CNI files for `ctr` (bind-mounted in `ctr_mounts`) and
    /// the containers' logs.
    scratch: PathBuf,
    agent: Agent,
    containerd: Containerd,
    plane: ControlPlane,
    cgroup: Cgroup,
    netns: Netns,
}

/// Runs the scenario, its files in `scratch`; `progress` is told each finished round.
///
/// # Errors
/// When the node cannot be set up or a pod does not start.
pub fn run(config: &Config, scratch: &Path, progress: &dyn Fn(usize)) -> anyhow::Result<Measured> {
    let node = Node::start(scratch)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the control-plane client")?;
    let mut client = runtime.block_on(async {
        let server: ServerAddr = node.plane.addr().parse()?;
        anyhow::Ok(Client::connect(&server, &Credentials::default()).await?)
    })?;
    // The Services first (not timed): one per pod, selecting it.
    let mut services = String::new();
    for i in 0..config.pods {
        let _ = write!(
            services,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: bench-{i}}}\nspec:\n  \
             selector: {{app: bench-{i}}}\n  ports: [{{port: 80, targetPort: {POD_PORT}}}]\n"
        );
    }
    node.plane.apply(&services)?;
    let mut applied = Vec::new();
    let mut ready = Vec::new();
    let mut answered = Vec::new();
    let mut runtime_started = Vec::new();
    let mut cri_started = Vec::new();
    let mut cri = runtime.block_on(async {
        let endpoint: RuntimeEndpoint = node
            .containerd
            .address()
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        anyhow::Ok(Cri::connect(&endpoint).await?.0)
    })?;
    for i in 0..config.pods {
        crate::util::check_interrupted()?;
        // Rotated per round: each way goes first, second and third as often.
        for way in 0..3 {
            let way = (way + i) % 3;
            if way == 2 {
                cri_started.push(millis(runtime.block_on(node.cri_run(&mut cri, i))?));
            } else if way == 0 {
                let cluster_ip = runtime.block_on(cluster_ip(&mut client, i))?;
                let (to_applied, to_ready, to_answer) = node.start_pod(i, &cluster_ip, |name| {
                    runtime.block_on(is_ready(&mut client, name))
                })?;
                applied.push(millis(to_applied));
                ready.push(millis(to_ready));
                answered.push(millis(to_answer));
            } else {
                runtime_started.push(millis(node.ctr_run(i)?));
            }
        }
        progress(i + 1);
    }
    let agent_memory = procs::memory(node.agent.pid().context("gannetd is not running")?)?;
    node.ctr_cleanup(config.pods);
    drop(node);
    Ok(Measured {
        gannet_applied: LatencyStats::from_samples(&applied),
        gannet_ready: LatencyStats::from_samples(&ready),
        gannet_first_answer: LatencyStats::from_samples(&answered),
        runtime_started: LatencyStats::from_samples(&runtime_started),
        cri_started: LatencyStats::from_samples(&cri_started),
        agent_memory,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn cluster_ip(client: &mut Client, i: usize) -> anyhow::Result<String> {
    match client
        .get(Kind::Service, "default", &format!("bench-{i}"))
        .await?
    {
        Object::Service(service) => service
            .spec
            .and_then(|s| s.cluster_ip)
            .with_context(|| format!("Service bench-{i} has no clusterIP")),
        other => bail!("asked for a Service, got a {:?}", other.kind()),
    }
}

async fn is_ready(client: &mut Client, name: &str) -> anyhow::Result<bool> {
    match client.get(Kind::Pod, "default", name).await? {
        Object::Pod(pod) => Ok(pod
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))),
        other => bail!("asked for a Pod, got a {:?}", other.kind()),
    }
}

/// The pods' command: a server answering each connection's first line with the pod's name (what
/// gannet-probe's clients expect), on busybox.
fn server_command(name: &str) -> String {
    format!(
        "printf '#!/bin/sh\\nread line\\necho {name}\\n' > /tmp/reply && chmod +x /tmp/reply && \
         exec nc -ll -p {POD_PORT} -e /tmp/reply"
    )
}

impl Node {
    fn start(scratch: &Path) -> anyhow::Result<Node> {
        let netns = Netns::new("bpods")?;
        // The node's own address (the source of its probes, as on a real node's uplink).
        netns.ip(&["addr", "add", "192.0.2.10/32", "dev", "lo"])?;
        let cgroup = Cgroup::new()?;
        let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"])?;
        let containerd = Containerd::start(&netns)?;
        let runtime = containerd.address();
        let mut agent = Agent::start_with_control(
            Some(&netns),
            &cgroup,
            &plane.addr(),
            &[
                "--container-runtime",
                &runtime,
                "--pod-cgroup-parent",
                &containerd.cgroup_parent(),
            ],
        )?;
        agent.wait_log("subnet file written", 1)?;
        agent.wait_log("container runtime connected", 1)?;
        containerd.use_agent(&agent.cni_socket(), &agent.subnet_file())?;
        let pause =
            containerd.busybox_archive(PAUSE_IMAGE, &["/bin/busybox", "sleep", "2147483647"])?;
        let busybox = containerd.busybox_archive(BUSYBOX_IMAGE, &["/bin/sh"])?;
        for archive in [&pause, &busybox] {
            let mut cmd = Command::new(bin_path("gannetd"));
            cmd.args(["image", "import"])
                .arg(archive)
                .args(["--container-runtime", &runtime]);
            let output = run_in(cmd, None, None, COMMAND_TIMEOUT)?;
            if !output.status.success() {
                bail!(
                    "gannetd image import {}: {}",
                    archive.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        let ctr_mounts = ctr_mount_namespace(&netns, &containerd, &agent, scratch)?;
        Ok(Node {
            netns,
            cgroup,
            plane,
            containerd,
            agent,
            ctr_mounts,
            scratch: scratch.to_owned(),
        })
    }

    /// Applies pod `i` and returns how long until `gannetctl apply` returned, until the pod was
    /// `Ready` and until a client in the node got its first answer through `cluster_ip`.
    fn start_pod(
        &self,
        i: usize,
        cluster_ip: &str,
        mut ready: impl FnMut(&str) -> anyhow::Result<bool>,
    ) -> anyhow::Result<(Duration, Duration, Duration)> {
        let name = format!("bench-{i}");
        let mut client = Command::new(bin_path("gannet-probe"));
        client.args([
            "--timeout-ms",
            "1000",
            "loop",
            "--to",
            &format!("{cluster_ip}:80"),
            "--duration-ms",
            &START_TIMEOUT.as_millis().to_string(),
            "--interval-ms",
            "5",
            "--until-ok",
        ]);
        let mut client = spawn(client, Some(&self.netns), Some(&self.cgroup))?;
        // The client runs before the apply (its first requests fail: no endpoints yet).
        std::thread::sleep(Duration::from_millis(50));
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  \
             nodeName: test-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: server\n    image: {BUSYBOX_IMAGE}\n    command: [/bin/sh, -c, {:?}]\n",
            server_command(&name)
        );
        let applied = Instant::now();
        self.plane.apply(&pod)?;
        let to_applied = applied.elapsed();
        let to_ready = loop {
            if ready(&name)? {
                break applied.elapsed();
            }
            if applied.elapsed() > START_TIMEOUT {
                bail!(
                    "pod {name} not Ready after {START_TIMEOUT:?}; gannetd:\n{}",
                    self.agent.logs()
                );
            }
            std::thread::sleep(STATUS_POLL);
        };
        let exited = loop {
            if client.try_wait()?.is_some() {
                break applied.elapsed();
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let output = client.wait_output(COMMAND_TIMEOUT)?;
        let report: Report = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("reading gannet-probe's report for {name}"))?;
        let Some(first_ok) = report.first_ok_after_us else {
            bail!("no answer through {cluster_ip}:80 for pod {name}: {report:?}");
        };
        // The client's run ended right after its first answer: count back from its exit.
        let tail = Duration::from_micros(report.elapsed_us.saturating_sub(first_ok));
        Ok((to_applied, to_ready, exited.saturating_sub(tail)))
    }

    /// The CRI calls gannetd makes for pod `cri-bench-i` (sandbox, container, start), made
    /// directly; how long from the first call until the last returned.
    async fn cri_run(&self, cri: &mut Cri, i: usize) -> anyhow::Result<Duration> {
        let name = format!("cri-bench-{i}");
        let sandbox_config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: format!("{name}-uid"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: self.scratch.join(&name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.containerd.cgroup_parent(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod.into(),
                        pid: cri::NamespaceMode::Container.into(),
                        ipc: cri::NamespaceMode::Pod.into(),
                        ..cri::NamespaceOption::default()
                    }),
                    ..cri::LinuxSandboxSecurityContext::default()
                }),
                ..cri::LinuxPodSandboxConfig::default()
            }),
            ..cri::PodSandboxConfig::default()
        };
        let began = Instant::now();
        let sandbox = cri
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {name}"))?
            .into_inner()
            .pod_sandbox_id;
        let container = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "server".to_owned(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: BUSYBOX_IMAGE.to_owned(),
                ..cri::ImageSpec::default()
            }),
            command: vec!["/bin/sh".to_owned(), "-c".to_owned(), server_command(&name)],
            log_path: "server/0.log".to_owned(),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..cri::ContainerConfig::default()
        };
        let id = cri
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox,
                config: Some(container),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .with_context(|| format!("CreateContainer in {name}"))?
            .into_inner()
            .container_id;
        cri.runtime
            .start_container(cri::StartContainerRequest { container_id: id })
            .await
            .with_context(|| format!("StartContainer in {name}"))?;
        Ok(began.elapsed())
    }

    /// `ctr run --cni -d` of the pods' image and command as container `ctr-bench-i`; how long
    /// until it returned.
    fn ctr_run(&self, i: usize) -> anyhow::Result<Duration> {
        let id = format!("ctr-bench-{i}");
        let mut cmd = self.ctr();
        cmd.args(["run", "--cni", "-d", "--cgroup"])
            .arg(format!("{}/{id}", self.containerd.cgroup_parent()))
            .args([BUSYBOX_IMAGE, &id, "/bin/sh", "-c", &server_command(&id)]);
        let began = Instant::now();
        let output = run_in(cmd, Some(&self.netns), None, COMMAND_TIMEOUT)?;
        let took = began.elapsed();
        if !output.status.success() {
            bail!(
                "ctr run --cni {id}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(took)
    }

    /// `ctr` in the private mount namespace that has the CNI files, on containerd's socket.
    fn ctr(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{}/ns/mnt", self.ctr_mounts.pid()))
            .arg("--")
            .arg("ctr")
            .args(self.containerd.ctr().get_args());
        cmd
    }

    /// Stops and removes the `ctr run` containers (their cgroups with them).
    fn ctr_cleanup(&self, pods: usize) {
        for i in 0..pods {
            let id = format!("ctr-bench-{i}");
            for args in [
                vec!["task", "kill", "-s", "SIGKILL", &id],
                vec!["task", "delete", "-f", &id],
                vec!["container", "delete", &id],
            ] {
                let mut cmd = self.ctr();
                cmd.args(&args);
                let _ = run_in(cmd, Some(&self.netns), None, COMMAND_TIMEOUT);
            }
        }
    }
}

/// A process in a private mount namespace (a copy of containerd's) whose /etc/cni/net.d holds the same conflist
/// containerd's CRI uses and whose /opt/cni/bin holds gannet-cni and the loopback plugin, as
/// `ctr run --cni` reads them; the host's directories are not touched.
fn ctr_mount_namespace(
    netns: &Netns,
    containerd: &Containerd,
    agent: &Agent,
    files: &Path,
) -> anyhow::Result<ChildGuard> {
    let net_d = files.join("net.d");
    let bin = files.join("bin");
    std::fs::create_dir_all(&net_d)?;
    std::fs::create_dir_all(&bin)?;
    let mut conflist = containerd.plugin_conf(&agent.cni_socket(), &agent.subnet_file());
    let plugin = conflist.take();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "gannet",
        "plugins": [plugin],
    });
    std::fs::write(net_d.join("10-gannet.conflist"), conflist.to_string())?;
    std::fs::copy(bin_path("gannet-cni"), bin.join("gannet-cni"))?;
    let loopback = Path::new(crate::cni::REFERENCE_DIR).join("loopback");
    std::fs::copy(&loopback, bin.join("loopback")).with_context(|| {
        format!(
            "copying {} (containernetworking-plugins)",
            loopback.display()
        )
    })?;
    let script = format!(
        "set -e; \
         mount -t tmpfs gannet-bench /etc/cni; mkdir -p /etc/cni/net.d; \
         mount --bind {net_d} /etc/cni/net.d; \
         mount -t tmpfs gannet-bench /opt; mkdir -p /opt/cni/bin; \
         mount --bind {bin} /opt/cni/bin; echo ready; exec sleep infinity",
        net_d = net_d.display(),
        bin = bin.display()
    );
    // From containerd's mount namespace: `ctr` and the shim meet in its /run (the task's fifos).
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--target={}", containerd.mount_namespace_pid()))
        .args([
            "--mount",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]);
    let mut holder = spawn(cmd, Some(netns), None)?;
    holder.wait_for_line("ready", COMMAND_TIMEOUT)?;
    Ok(holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pods_server_answers_a_line_with_its_name() {
        let command = server_command("bench-7");
        assert!(command.contains("echo bench-7"), "{command}");
        assert!(command.ends_with("-e /tmp/reply"), "{command}");
    }
}
