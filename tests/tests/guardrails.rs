//! Operator guardrails of gannetd: one agent per bpf root and state directory, a cleanup that
//! cannot cut a running agent, a failed start that leaves nothing, flags that fail early.
//!
//! gannetd runs attached to a test cgroup, in the test's own network namespace with everything
//! that would touch it switched off (no overlay, no masquerade, no NodePort program), as in
//! `socklb/`. Nothing here touches the root cgroup or the host's network.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use gannet_testkit::{Cgroup, ScratchDir, agent::Agent, bin_path, spawn, unique_name};

/// How long a gannetd that must refuse to start may take to exit.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(15);

/// A bpf root and state directory of a gannetd started by a test outside [`Agent`]: whatever a
/// start that should not have happened left there is removed by `gannetd cleanup` on drop.
struct Leftovers {
    bpf_root: PathBuf,
    state_dir: ScratchDir,
    manifests: ScratchDir,
}

impl Leftovers {
    fn new() -> Leftovers {
        let manifests = ScratchDir::new("gannet-gm");
        std::fs::create_dir_all(&manifests.0).expect("creating a manifest directory");
        Leftovers {
            bpf_root: PathBuf::from("/sys/fs/bpf").join(unique_name("gannet-gr")),
            state_dir: ScratchDir::new("gannet-gs"),
            manifests,
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = Command::new(bin_path("gannetd"))
            .arg("cleanup")
            .arg("--bpf-root")
            .arg(&self.bpf_root)
            .arg("--state-dir")
            .arg(&self.state_dir.0)
            .output();
    }
}

/// Runs a gannetd that is expected to refuse to start (in this namespace, attached to
/// `cgroup` should it start anyway), and returns how it exited. If it keeps running, it is
/// killed and the test fails.
fn gannetd_that_must_exit(
    cgroup: &Path,
    bpf_root: &Path,
    state_dir: &Path,
    manifests: &Path,
) -> Output {
    let mut cmd = Command::new(bin_path("gannetd"));
    cmd.arg("--cgroup-path")
        .arg(cgroup)
        .arg("--bpf-root")
        .arg(bpf_root)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--manifest-dir")
        .arg(manifests)
        .args([
            "--node-name",
            "test-node",
            "--overlay",
            "none",
            "--masquerade=false",
            "--nodeport-interfaces=",
            // Never the default port: tests run many gannetd at once.
            "--metrics-address",
            gannet_testkit::metrics::TEST_METRICS_ADDRESS,
        ]);
    let mut child = spawn(cmd, None, None).expect("starting gannetd");
    match child.wait_output(REFUSAL_TIMEOUT) {
        Ok(output) => output,
        Err(e) => panic!("gannetd was expected to refuse to start, but kept running: {e:#}"),
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_second_agent_on_the_same_bpf_root_or_state_dir_is_refused_naming_the_first() {
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let agent = Agent::start(&cgroup, &[]).expect("starting gannetd");
    let pid = agent.pid().expect("gannetd runs");
    let holder = format!("pid {pid} (");

    // The same bpf root, another state directory.
    let other = Leftovers::new();
    let same_root = gannetd_that_must_exit(
        cgroup.path(),
        agent.bpf_root(),
        &other.state_dir.0,
        &other.manifests.0,
    );
    let message = stderr(&same_root);
    assert!(
        !same_root.status.success(),
        "a second gannetd on the same --bpf-root must exit non-zero: {message}"
    );
    assert!(
        message.contains("--bpf-root") && message.contains(&holder),
        "the refusal must name --bpf-root and the first gannetd ({holder}…): {message}"
    );
    assert!(
        message.contains(&format!("{} --cgroup-path", bin_path("gannetd").display())),
        "the refusal must show the holder's command line: {message}"
    );
    assert!(
        !other.state_dir.0.exists(),
        "the refused gannetd must not leave its state directory behind"
    );

    // The same state directory, another bpf root.
    let other = Leftovers::new();
    let same_state = gannetd_that_must_exit(
        cgroup.path(),
        &other.bpf_root,
        agent.state_dir(),
        &other.manifests.0,
    );
    let message = stderr(&same_state);
    assert!(
        !same_state.status.success(),
        "a second gannetd on the same --state-dir must exit non-zero: {message}"
    );
    assert!(
        message.contains("--state-dir") && message.contains(&holder),
        "the refusal must name --state-dir and the first gannetd ({holder}…): {message}"
    );
    assert!(
        !other.bpf_root.exists(),
        "the refused gannetd must remove the bpf root it created ({})",
        other.bpf_root.display()
    );
    // The first one still owns its socket and answers on it.
    assert!(
        std::os::unix::net::UnixStream::connect(agent.cni_socket()).is_ok(),
        "the first gannetd must still answer on {}",
        agent.cni_socket().display()
    );
}

/// Runs `gannetd cleanup` for `bpf_root` and `state_dir`.
fn cleanup(bpf_root: &Path, state_dir: &Path) -> Output {
    let mut cmd = Command::new(bin_path("gannetd"));
    cmd.arg("cleanup")
        .arg("--bpf-root")
        .arg(bpf_root)
        .arg("--state-dir")
        .arg(state_dir);
    gannet_testkit::run_in(cmd, None, None, REFUSAL_TIMEOUT).expect("running gannetd cleanup")
}

#[test]
fn cleanup_is_refused_while_an_agent_holds_either_directory() {
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let mut agent = Agent::start(&cgroup, &[]).expect("starting gannetd");
    let pid = agent.pid().expect("gannetd runs");
    let link = agent.bpf_root().join("links/gannet_connect4");
    assert!(link.exists(), "gannetd pins {}", link.display());

    // Its bpf root with another state directory (once enough to remove the whole data plane),
    // then its state directory with another bpf root.
    let other = Leftovers::new();
    for (bpf_root, state_dir, flag) in [
        (agent.bpf_root(), other.state_dir.0.as_path(), "--bpf-root"),
        (other.bpf_root.as_path(), agent.state_dir(), "--state-dir"),
    ] {
        let output = cleanup(bpf_root, state_dir);
        let message = stderr(&output);
        assert!(
            !output.status.success(),
            "cleanup of {flag} must be refused while gannetd runs: {message}"
        );
        assert!(
            message.contains(flag) && message.contains(&format!("pid {pid} (")),
            "the refusal must name {flag} and the running gannetd (pid {pid}): {message}"
        );
        assert!(
            link.exists() && agent.cni_socket().exists(),
            "a refused cleanup ({flag}) must remove nothing"
        );
    }
    assert_eq!(
        agent.log_count("taken away underneath it"),
        0,
        "gannetd must not have noticed any removal: {}",
        agent.logs()
    );

    // Once it is stopped, the same cleanup goes through.
    agent.stop(libc::SIGTERM).expect("stopping gannetd");
    let output = cleanup(agent.bpf_root(), &other.state_dir.0);
    assert!(
        output.status.success(),
        "cleanup after stop: {}",
        stderr(&output)
    );
    assert!(
        !agent.bpf_root().exists(),
        "cleanup must remove {}",
        agent.bpf_root().display()
    );
}

#[test]
fn an_agent_whose_link_is_unpinned_underneath_it_exits_non_zero_naming_it() {
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let mut agent = Agent::start(&cgroup, &[]).expect("starting gannetd");
    let link = agent.bpf_root().join("links/gannet_connect4");
    // Unpinning the link detaches the program from the test cgroup: what an older cleanup or
    // a hand-made `rm` did to a running agent.
    std::fs::remove_file(&link).expect("removing a pinned link");
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("gannetd must notice and exit");
    assert!(
        !status.success(),
        "gannetd must exit non-zero when its link is gone: {status}"
    );
    let logs = agent.logs();
    assert!(
        logs.contains("taken away underneath it") && logs.contains(&link.display().to_string()),
        "gannetd must log what was removed ({}): {logs}",
        link.display()
    );
}

#[test]
fn a_start_that_fails_after_loading_leaves_no_pins_behind() {
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let dirs = Leftovers::new();
    // A registry gannetd cannot read (a directory where the file belongs; a corrupt file is
    // rebuilt instead): it fails after it has loaded and pinned the data plane.
    std::fs::create_dir_all(&dirs.state_dir.0).expect("creating the state directory");
    let registry = dirs.state_dir.0.join("endpoints.json");
    std::fs::create_dir(&registry).expect("making the registry unreadable");
    let output = gannetd_that_must_exit(
        cgroup.path(),
        &dirs.bpf_root,
        &dirs.state_dir.0,
        &dirs.manifests.0,
    );
    let message = stderr(&output);
    assert!(
        !output.status.success() && message.contains("endpoint registry"),
        "gannetd must fail on the broken registry: {message}"
    );
    assert!(
        message.contains("socket load balancer attached"),
        "the start must have got as far as pinning (else this test proves nothing): {message}"
    );
    assert!(
        !dirs.bpf_root.exists(),
        "a failed start must remove the pins it created, so the next start does not adopt \
         them; left: {:?}",
        std::fs::read_dir(&dirs.bpf_root)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    assert!(
        registry.exists(),
        "the state directory was there before: its files are not the failed start's to remove"
    );
}

/// Runs `binary` with `args` (it must exit on its own), returning its status code and stderr.
fn run(binary: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin_path(binary));
    cmd.args(args);
    let output = gannet_testkit::run_in(cmd, None, None, REFUSAL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{binary} must exit at once on bad flags: {e:#}"));
    (output.status.code(), stderr(&output))
}

#[test]
fn flags_that_would_fail_late_exit_64_naming_the_flag_before_anything_is_created() {
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let dirs = Leftovers::new();
    let bpf_root = dirs.bpf_root.to_str().expect("utf-8");
    let state_dir = dirs.state_dir.0.to_str().expect("utf-8");
    let manifests = dirs.manifests.0.to_str().expect("utf-8");
    let common = [
        "--state-dir",
        state_dir,
        "--manifest-dir",
        manifests,
        "--overlay",
        "none",
        "--masquerade=false",
        "--nodeport-interfaces=",
    ];

    // --cgroup-path naming a file of a cgroup v2 directory (statfs alone says cgroup2).
    let file = cgroup.path().join("cgroup.procs");
    let file = file.to_str().expect("utf-8");
    let mut args = vec!["--cgroup-path", file, "--bpf-root", bpf_root];
    args.extend_from_slice(&common);
    let (code, message) = run("gannetd", &args);
    assert_eq!(code, Some(64), "--cgroup-path FILE: {message}");
    assert!(
        message.contains(&format!("--cgroup-path {file}: not a directory")),
        "the error must name --cgroup-path: {message}"
    );
    assert!(
        !dirs.bpf_root.exists() && !dirs.state_dir.0.exists(),
        "a start refused for its flags must create nothing"
    );

    // --bpf-root outside bpffs.
    let outside = ScratchDir::new("gannet-nb");
    let outside_root = outside.0.join("bpf");
    let outside_root = outside_root.to_str().expect("utf-8");
    let cgroup_path = cgroup.path().to_str().expect("utf-8");
    let mut args = vec!["--cgroup-path", cgroup_path, "--bpf-root", outside_root];
    args.extend_from_slice(&common);
    let (code, message) = run("gannetd", &args);
    assert_eq!(code, Some(64), "--bpf-root outside bpffs: {message}");
    assert!(
        message.contains(&format!("--bpf-root {outside_root}:"))
            && message.contains("not on a bpffs mount"),
        "the error must name --bpf-root and say why: {message}"
    );
    assert!(
        !outside.0.exists() && !dirs.state_dir.0.exists(),
        "a start refused for its flags must create nothing"
    );

    // gannetd cleanup never removes a tree outside bpffs.
    std::fs::create_dir_all(&outside.0).expect("creating a directory outside bpffs");
    let precious = outside.0.join("precious");
    std::fs::write(&precious, "keep me").expect("writing a file");
    let outside_dir = outside.0.to_str().expect("utf-8");
    let (code, message) = run(
        "gannetd",
        &[
            "cleanup",
            "--bpf-root",
            outside_dir,
            "--state-dir",
            state_dir,
        ],
    );
    assert_eq!(
        code,
        Some(64),
        "cleanup --bpf-root outside bpffs: {message}"
    );
    assert!(
        message.contains(&format!("--bpf-root {outside_dir}:")) && precious.exists(),
        "cleanup must refuse, naming --bpf-root, and remove nothing: {message}"
    );

    // gannet-control: overlapping pod and service ranges. Its store and socket are scratch
    // paths, should it start anyway.
    let control = ScratchDir::new("gannet-cc");
    let data_dir = control.0.join("data");
    let socket = format!("unix:{}", control.0.join("control.sock").display());
    let (code, message) = run(
        "gannet-control",
        &[
            "--data-dir",
            data_dir.to_str().expect("utf-8"),
            "--listen",
            &socket,
            "--cluster-cidr",
            "10.0.0.0/8",
            "--service-cidr",
            "10.96.0.0/12",
        ],
    );
    assert_eq!(code, Some(64), "overlapping CIDRs: {message}");
    assert!(
        message.contains("--service-cidr 10.96.0.0/12: overlaps --cluster-cidr 10.0.0.0/8"),
        "the error must name both flags: {message}"
    );
    assert!(!data_dir.exists(), "gannet-control must create nothing");
}

/// With the packet path off (`--nodeport-interfaces=`, as the test kit starts gannetd), a
/// NodePort Service is named once in a warning: nothing from outside reaches its node port. A
/// ClusterIP Service is not.
#[test]
fn a_node_port_service_without_the_packet_path_is_named_once() {
    const WARNING: &str = "nothing from outside this node reaches them";
    let cgroup = Cgroup::new().expect("creating the test cgroup");
    let mut agent = Agent::start(&cgroup, &[]).expect("starting gannetd");
    let cluster = "apiVersion: v1\nkind: Service\nmetadata: {name: inside, namespace: default}\n\
                   spec: {clusterIP: 10.96.0.20, ports: [{port: 80, targetPort: 8080}]}\n";
    agent
        .apply("inside.yaml", cluster, "manifests applied")
        .expect("a ClusterIP service");
    let public = "apiVersion: v1\nkind: Service\nmetadata: {name: public, namespace: default}\n\
                  spec: {type: NodePort, clusterIP: 10.96.0.21, ports: [{port: 80, targetPort: 8080, nodePort: 30080}]}\n";
    agent
        .apply("public.yaml", public, WARNING)
        .expect("the NodePort service is named in a warning");
    // Another change: the service is not named again.
    agent
        .apply(
            "inside.yaml",
            &cluster.replace("8080", "8081"),
            "manifests applied",
        )
        .expect("a change");
    let logs = agent.logs();
    assert_eq!(agent.log_count(WARNING), 1, "{logs}");
    assert!(
        logs.lines()
            .filter(|l| l.contains(WARNING))
            .all(|l| l.contains("default/public")),
        "{logs}"
    );
}
