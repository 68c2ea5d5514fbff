//! Self-tests of the test kit with real packets: a simulated node with pods, `gannet-probe` servers
//! and clients inside the pod namespaces, a client inside a cgroup, and cleanup of everything.
//! They need root (network namespaces, cgroups) and run in parallel.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gannet_testkit::probe::{READY_LINE, Report, ServeReport, parse_json_output};
use gannet_testkit::{
    Cgroup, ChildGuard, Netns, Pod, PodNet, bin_path, find_bin, run_in, spawn, unique_name,
};
// Dependencies of the library and the probe binary; `unused_crate_dependencies` is per target.
use {anyhow as _, clap as _, serde as _, serde_json as _};

const PROBE: &str = env!("CARGO_BIN_EXE_gannet-probe");
const PORT: u16 = 8080;
/// Bound on every probe run; the probe's own socket timeouts are much shorter.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

fn probe(args: &[&str]) -> Command {
    command(PROBE, args)
}

/// Runs a probe client in `netns` and parses its report.
fn run_probe(netns: &Netns, args: &[&str]) -> Report {
    let output = run_in(probe(args), Some(netns), None, RUN_TIMEOUT)
        .unwrap_or_else(|err| panic!("gannet-probe {args:?} in {}: {err:#}", netns.name()));
    parse_json_output(&output)
        .unwrap_or_else(|err| panic!("gannet-probe {args:?} in {}: {err:#}", netns.name()))
}

/// Starts `gannet-probe serve` (TCP and UDP, IPv4 and IPv6, port 8080) in `pod`, once it is ready.
fn start_server(pod: &Pod, name: &str) -> ChildGuard {
    let v4 = format!("0.0.0.0:{PORT}");
    let v6 = format!("[::]:{PORT}");
    let mut server = spawn(
        probe(&["serve", "--name", name, "--listen", &v4, "--listen", &v6]),
        Some(&pod.netns),
        None,
    )
    .expect("starting gannet-probe serve");
    server
        .wait_for_line(READY_LINE, READY_TIMEOUT)
        .expect("gannet-probe serve did not get ready");
    server
}

/// Stops a server with SIGTERM and returns what it served.
fn stop_server(mut server: ChildGuard) -> ServeReport {
    server.kill(libc::SIGTERM).expect("SIGTERM to the server");
    let output = server.wait_output(RUN_TIMEOUT).expect("server exit");
    parse_json_output(&output).expect("server report")
}

fn counts(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries
        .iter()
        .map(|&(key, n)| (key.to_owned(), n))
        .collect()
}

fn netns_list() -> String {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn pods_talk_tcp_and_udp_over_ipv4_and_ipv6() {
    let net = PodNet::new(3).expect("building a node with 3 pods");
    let (server_pod, client) = (&net.pods()[0], &net.pods()[1].netns);
    let server = start_server(server_pod, "pod0");

    let destinations = [
        (
            format!("{}:{PORT}", server_pod.ipv4),
            net.pods()[1].ipv4.to_string(),
        ),
        (
            format!("[{}]:{PORT}", server_pod.ipv6),
            net.pods()[1].ipv6.to_string(),
        ),
    ];
    for (to, _) in &destinations {
        let tcp = run_probe(client, &["tcp", "--to", to, "--count", "5"]);
        assert_eq!(
            (tcp.ok, tcp.failed, &tcp.backends, &tcp.peers),
            (5, 0, &counts(&[("pod0", 5)]), &counts(&[(to, 5)])),
            "TCP to {to}: expected 5 replies from pod0 with getpeername() = {to}, got {tcp:?}"
        );
        assert_eq!(tcp.first_error_after_us, None, "TCP to {to}: {tcp:?}");
        for mode in [&[][..], &["--per-request-socket"], &["--connected"]] {
            let mut args = vec!["udp", "--to", to, "--count", "4"];
            args.extend_from_slice(mode);
            let udp = run_probe(client, &args);
            assert_eq!(
                (udp.ok, udp.failed, &udp.backends, &udp.peers),
                (4, 0, &counts(&[("pod0", 4)]), &counts(&[(to, 4)])),
                "UDP {mode:?} to {to}: expected 4 replies from pod0 sent from {to}, got {udp:?}"
            );
        }
        for proto in ["tcp", "udp"] {
            let looped = run_probe(
                client,
                &[
                    "loop",
                    "--to",
                    to,
                    "--duration-ms",
                    "200",
                    "--interval-ms",
                    "10",
                    "--proto",
                    proto,
                ],
            );
            assert!(
                looped.ok >= 5 && looped.failed == 0 && looped.backends.keys().eq(["pod0"]),
                "loop {proto} to {to} for 200 ms: expected only successes from pod0, got {looped:?}"
            );
        }
    }

    let served = stop_server(server);
    for (to, client_ip) in &destinations {
        assert!(
            served.clients.get(client_ip).is_some_and(|&n| n >= 5 + 12),
            "server should have seen client {client_ip} (traffic to {to}) unchanged, saw {:?}",
            served.clients
        );
    }
    assert_eq!(served.name, "pod0");
    assert!(served.tcp_connections >= 10, "{served:?}");
}

#[test]
fn failures_are_named_and_fast() {
    let net = PodNet::new(2).expect("building a node with 2 pods");
    let (server_pod, client) = (&net.pods()[0], &net.pods()[1].netns);
    // Nothing listens on port 9.
    let closed = format!("{}:9", server_pod.ipv4);

    let tcp = run_probe(client, &["tcp", "--to", &closed, "--count", "3"]);
    assert_eq!(
        (tcp.ok, tcp.failed, &tcp.errors),
        (0, 3, &counts(&[("ECONNREFUSED", 3)])),
        "TCP to closed port {closed}: {tcp:?}"
    );
    let after = tcp
        .first_error_after_us
        .expect("first_error_after_us set on failure");
    assert!(
        after < 500_000,
        "a refused connect took {after} us, expected it to fail fast"
    );

    // Unconnected UDP sockets do not see ICMP port unreachable: the reply just never comes.
    let udp = run_probe(
        client,
        &[
            "udp",
            "--to",
            &closed,
            "--count",
            "2",
            "--timeout-ms",
            "200",
        ],
    );
    assert_eq!(
        udp.errors,
        counts(&[("ETIMEDOUT", 2)]),
        "UDP to closed port {closed}: {udp:?}"
    );
    // Connected ones do.
    let udp = run_probe(
        client,
        &[
            "udp",
            "--to",
            &closed,
            "--count",
            "2",
            "--connected",
            "--timeout-ms",
            "500",
        ],
    );
    assert_eq!(
        udp.errors,
        counts(&[("ECONNREFUSED", 2)]),
        "connected UDP to closed port {closed}: {udp:?}"
    );

    // Binding an address the pod does not have.
    let tcp = run_probe(
        client,
        &[
            "tcp",
            "--to",
            &closed,
            "--bind",
            "10.244.0.99:0",
            "--count",
            "1",
        ],
    );
    assert_eq!(
        tcp.errors,
        counts(&[("EADDRNOTAVAIL", 1)]),
        "bind to a foreign address: {tcp:?}"
    );
}

#[test]
fn bind_sets_the_source_address() {
    let net = PodNet::new(2).expect("building a node with 2 pods");
    let (server_pod, client_pod) = (&net.pods()[0], &net.pods()[1]);
    // A second address on the client pod, used as source.
    client_pod
        .netns
        .ip(&["addr", "add", "10.244.0.200/24", "dev", "eth0"])
        .expect("adding a second pod address");
    let server = start_server(server_pod, "pod0");
    let to = format!("{}:{PORT}", server_pod.ipv4);
    let tcp = run_probe(
        &client_pod.netns,
        &[
            "tcp",
            "--to",
            &to,
            "--bind",
            "10.244.0.200:0",
            "--count",
            "2",
        ],
    );
    assert_eq!(tcp.ok, 2, "{tcp:?}");
    let served = stop_server(server);
    assert_eq!(
        served.clients,
        counts(&[("10.244.0.200", 2)]),
        "server should see the bound source address"
    );
}

#[test]
fn client_in_a_cgroup_and_netns_holds_one_connection() {
    let net = PodNet::new(3).expect("building a node with 3 pods");
    let (server_pod, client_pod) = (&net.pods()[0], &net.pods()[2]);
    let server = start_server(server_pod, "pod0");
    let cgroup = Cgroup::new().expect("creating a cgroup");

    let to = format!("{}:{PORT}", server_pod.ipv4);
    let mut client = spawn(
        probe(&["hold", "--to", &to]),
        Some(&client_pod.netns),
        Some(&cgroup),
    )
    .expect("starting gannet-probe hold");
    let connected = client.read_line(READY_TIMEOUT).expect("hold's first line");
    assert_eq!(connected, format!("connected {to}"));

    let pid = client.pid();
    let membership =
        fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("reading /proc/PID/cgroup");
    let v2_line = membership
        .lines()
        .find(|line| line.starts_with("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line in /proc/{pid}/cgroup: {membership:?}"));
    assert!(
        v2_line.ends_with(&format!("/{}", cgroup.name())),
        "client should be in cgroup {}, /proc/{pid}/cgroup says {v2_line:?}",
        cgroup.name()
    );
    let procs = cgroup.procs().expect("reading cgroup.procs");
    assert_eq!(
        procs,
        [i32::try_from(pid).expect("pid")],
        "cgroup.procs of {}",
        cgroup.name()
    );

    let client_ns = fs::metadata(format!("/proc/{pid}/ns/net")).expect("stat /proc/PID/ns/net");
    let pod_ns = fs::metadata(client_pod.netns.path()).expect("stat the pod's netns file");
    assert_eq!(
        client_ns.ino(),
        pod_ns.ino(),
        "client should run in netns {}",
        client_pod.netns.name()
    );

    for _ in 0..3 {
        client.send_line("ping").expect("ping");
        assert_eq!(
            client.read_line(READY_TIMEOUT).expect("reply to ping"),
            "pod0"
        );
    }
    let output = client
        .wait_output(RUN_TIMEOUT)
        .expect("hold exits at end of stdin");
    let report: Report = parse_json_output(&output).expect("hold's report");
    assert_eq!(
        (report.ok, &report.peers),
        (3, &counts(&[(&to, 3)])),
        "{report:?}"
    );
    let served = stop_server(server);
    assert_eq!(
        served.tcp_connections, 1,
        "pings must share one connection: {served:?}"
    );
}

#[test]
fn commands_run_inside_the_pod_namespace() {
    let net = PodNet::new(1).expect("building a node with 1 pod");
    let pod = &net.pods()[0];
    let output = run_in(
        command("ip", &["-o", "addr", "show", "dev", "eth0"]),
        Some(&pod.netns),
        None,
        RUN_TIMEOUT,
    )
    .expect("ip addr in the pod");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "ip addr failed: {output:?}");
    for addr in [format!("{}/24", pod.ipv4), format!("{}/64", pod.ipv6)] {
        assert!(text.contains(&addr), "pod eth0 should have {addr}: {text}");
    }
}

fn read_sysctl(netns: &Netns, path: &str) -> String {
    let output = run_in(command("cat", &[path]), Some(netns), None, RUN_TIMEOUT).expect("cat");
    assert!(
        output.status.success(),
        "cat {path} in {}: {output:?}",
        netns.name()
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn sysctl_changes_only_its_namespace() {
    let net = PodNet::new(1).expect("building a node with 1 pod");
    let key = "/proc/sys/net/ipv4/ip_forward";
    let pod = &net.pods()[0].netns;
    let pod_before = read_sysctl(pod, key);
    net.node()
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("sysctl in the node");
    assert_eq!(
        read_sysctl(net.node(), key),
        "1",
        "node's ip_forward after sysctl"
    );
    assert_eq!(
        read_sysctl(pod, key),
        pod_before,
        "the pod's ip_forward must not change"
    );
    let err = net
        .node()
        .sysctl("net.ipv4.no_such_key", "1")
        .expect_err("unknown key");
    assert!(
        format!("{err:#}").contains("no_such_key"),
        "error should name the key: {err:#}"
    );
}

#[test]
fn ip_errors_name_the_command_and_stderr() {
    let netns = Netns::new("err").expect("creating a netns");
    let err = netns
        .ip(&["link", "set", "gannetnone0", "up"])
        .expect_err("no such device");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("ip -n {} link set gannetnone0 up", netns.name()))
            && message.contains("gannetnone0\""),
        "error should hold the command and ip's stderr: {message}"
    );
}

#[test]
fn guards_remove_namespaces_cgroups_and_processes() {
    // Two nodes at once with the same addresses: they must not see each other.
    let a = PodNet::new(2).expect("node a");
    let b = PodNet::new(2).expect("node b");
    let server_a = start_server(&a.pods()[0], "in-a");
    let server_b = start_server(&b.pods()[0], "in-b");
    let to = format!("{}:{PORT}", a.pods()[0].ipv4);
    assert_eq!(
        run_probe(&a.pods()[1].netns, &["tcp", "--to", &to]).backends,
        counts(&[("in-a", 1)])
    );
    assert_eq!(
        run_probe(&b.pods()[1].netns, &["tcp", "--to", &to]).backends,
        counts(&[("in-b", 1)])
    );

    let cgroup = Cgroup::new().expect("creating a cgroup");
    let cgroup_path = cgroup.path().to_path_buf();
    // A client left running inside both a pod and the cgroup when everything is dropped.
    let lingering = spawn(
        command("sleep", &["600"]),
        Some(&a.pods()[1].netns),
        Some(&cgroup),
    )
    .expect("starting sleep");
    let lingering_pid = lingering.pid();
    let names: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|net| {
            std::iter::once(net.node().name().to_owned())
                .chain(net.pods().iter().map(|pod| pod.netns.name().to_owned()))
        })
        .collect();
    let listed = netns_list();
    for name in &names {
        assert!(
            listed.contains(name.as_str()),
            "netns {name} should exist: {listed}"
        );
    }

    // Drop the namespaces and the cgroup first, while their processes still run.
    drop((a, b, cgroup));
    let listed = netns_list();
    for name in &names {
        assert!(
            !listed.contains(name.as_str()),
            "netns {name} left behind: {listed}"
        );
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "/run/netns/{name} left behind"
        );
    }
    assert!(
        !cgroup_path.exists(),
        "cgroup {} left behind",
        cgroup_path.display()
    );
    let status = fs::read_to_string(format!("/proc/{lingering_pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "process {lingering_pid} should have been killed: {status}"
    );
    drop((lingering, server_a, server_b));
    assert!(
        !Path::new(&format!("/proc/{lingering_pid}")).exists(),
        "process {lingering_pid} should have been reaped"
    );
}

#[test]
fn guards_clean_up_when_a_test_panics() {
    let mut created: Vec<PathBuf> = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = PodNet::new(1).expect("building a node with 1 pod");
        let cgroup = Cgroup::new().expect("creating a cgroup");
        let _server = start_server(&net.pods()[0], "doomed");
        created.push(net.node().path().to_path_buf());
        created.push(net.pods()[0].netns.path().to_path_buf());
        created.push(cgroup.path().to_path_buf());
        panic!("deliberate panic with live guards");
    }));
    assert!(outcome.is_err(), "the closure was supposed to panic");
    assert_eq!(created.len(), 3, "setup did not finish: {created:?}");
    for path in &created {
        assert!(
            !path.exists(),
            "{} left behind after a panic",
            path.display()
        );
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique_name("gannet-bin"));
        fs::create_dir(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn touch(path: &Path) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, b"").expect("touch");
}

#[test]
fn bin_path_looks_in_the_profile_dir_the_env_dir_or_next_to_the_exe() {
    let tmp = TempDir::new();
    let profile = tmp.0.join("target/debug");
    let test_exe = profile.join("deps/testkit-0123");
    touch(&test_exe);
    touch(&profile.join("gannet-probe"));
    assert_eq!(
        find_bin("gannet-probe", None, &test_exe).expect("found in target/debug"),
        profile.join("gannet-probe")
    );

    let other_exe = tmp.0.join("elsewhere/tool");
    touch(&other_exe);
    touch(&tmp.0.join("elsewhere/gannetd"));
    assert_eq!(
        find_bin("gannetd", None, &other_exe).expect("found next to the exe"),
        tmp.0.join("elsewhere/gannetd")
    );

    let env_dir = tmp.0.join("bins");
    touch(&env_dir.join("gannetd"));
    assert_eq!(
        find_bin("gannetd", Some(&env_dir), &test_exe).expect("found in the env dir"),
        env_dir.join("gannetd")
    );

    let err = find_bin("gannetd", None, &test_exe).expect_err("gannetd is not in target/debug");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!(
            "not found at {}",
            profile.join("gannetd").display()
        )) && message.contains("cargo build --workspace --bins"),
        "unhelpful message: {message}"
    );

    // The real lookup from this test executable finds the probe cargo built for it.
    if std::env::var_os(gannet_testkit::BIN_DIR_ENV).is_none() {
        assert_eq!(bin_path("gannet-probe"), Path::new(PROBE));
    }
}
