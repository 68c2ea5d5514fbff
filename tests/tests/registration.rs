//! The life of a CNI registration in gannetd: pods wired by the real gannet-cni in namespaces
//! of the test's own, registered over gannetd's real socket. A registration repeated or failed
//! half-way leaves nothing behind, endpoints whose veth went away are removed while gannetd
//! runs, a broken `endpoints.json` is rebuilt, `CHECK` asks gannetd, and the socket is born
//! with its final permissions and does not let idle clients hold a connection.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use gannet_testkit::{
    Cgroup, Netns, ScratchDir,
    agent::Agent,
    bpftool,
    cni::{ask_agent, cni, cni_output, pod_ip},
    eventually,
};
use serde_json::{Value, json};

fn conf(ipam_dir: &Path, socket: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "gannet-reg",
        "type": "gannet-cni",
        "agentSocket": socket,
        "ipam": {"type": "gannet", "subnet": "10.244.7.0/24", "dataDir": ipam_dir},
    })
}

/// The host ifindex gannetd's status shows for `ip`.
fn ifindex_of(agent: &Agent, ip: &str) -> Option<u64> {
    let status = agent.status().expect("gannetd status");
    status["endpoints"].as_array()?.iter().find_map(|e| {
        e["ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|i| i == ip))
            .then(|| e["host_ifindex"].as_u64())
            .flatten()
    })
}

/// The pod links pinned under gannetd's bpf root (`<ifindex>-from`, `<ifindex>-to`).
fn pinned_links(agent: &Agent) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(agent.bpf_root().join("links/pods"))
        .expect("the pod links directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The keys (host ifindexes) of the endpoint counters map, read with bpftool.
fn counter_keys(agent: &Agent) -> Vec<u64> {
    let mut keys: Vec<u64> = bpftool::map_keys(&agent.bpf_root().join("maps/GANNET_EP_STATS"))
        .into_iter()
        .map(|key| u64::from(u32::from_ne_bytes(key[..4].try_into().expect("4 bytes"))))
        .collect();
    keys.sort_unstable();
    keys
}

fn links_of(ifindex: u64) -> Vec<String> {
    vec![format!("{ifindex}-from"), format!("{ifindex}-to")]
}

/// Field order is drop order: gannetd's cleanup enters the node's namespace and detaches from
/// the cgroup, so the agent goes first.
struct Node {
    agent: Agent,
    node: Netns,
    ipam: ScratchDir,
    _cgroup: Cgroup,
}

impl Node {
    fn new(extra_args: &[&str]) -> Node {
        let node = Netns::new("node").unwrap();
        let cgroup = Cgroup::new().unwrap();
        let agent = Agent::start_in(Some(&node), &cgroup, extra_args).unwrap();
        Node {
            node,
            agent,
            ipam: ScratchDir::new("gannet-ipam"),
            _cgroup: cgroup,
        }
    }

    fn conf(&self) -> Value {
        conf(&self.ipam.0, &self.agent.cni_socket())
    }
}

#[test]
fn a_second_add_of_the_same_attachment_leaves_nothing_of_the_old_veth() {
    let n = Node::new(&[]);
    let (first, second) = (Netns::new("p1").unwrap(), Netns::new("p2").unwrap());
    let ip = pod_ip(&cni(&n.node, &first, "ADD", "pod-x", &n.conf()));
    let old = ifindex_of(&n.agent, &ip).expect("pod-x is an endpoint");
    assert_eq!(pinned_links(&n.agent), links_of(old));
    // The runtime sets the same attachment up again (a new sandbox namespace, the same
    // container id): gannet-cni replaces the veth, gannetd is asked to register it again.
    let ip2 = pod_ip(&cni(&n.node, &second, "ADD", "pod-x", &n.conf()));
    let new = ifindex_of(&n.agent, &ip2).expect("pod-x is an endpoint again");
    assert_ne!(old, new, "the second ADD makes a new veth");
    assert_eq!(
        pinned_links(&n.agent),
        links_of(new),
        "only the new veth's links may stay pinned (the old veth was {old})"
    );
    assert_eq!(
        counter_keys(&n.agent),
        vec![new],
        "only the new veth's counters may stay (the old veth was {old})"
    );
    cni(&n.node, &second, "DEL", "pod-x", &n.conf());
    assert!(pinned_links(&n.agent).is_empty(), "DEL removes the links");
}

#[test]
fn a_registration_that_fails_half_way_leaves_nothing() {
    // Room for two pod addresses (and two endpoints' counters): the first pod takes both of
    // its addresses, the second pod's counters and links are set up and then its addresses do
    // not fit.
    let n = Node::new(&["--max-endpoints", "2"]);
    let mut conf = n.conf();
    conf["ipam"] = json!({
        "type": "gannet",
        "dataDir": n.ipam.0,
        "ranges": [[{"subnet": "10.244.8.0/24"}], [{"subnet": "fd00:244:8::/64"}]],
    });
    let (a, b) = (Netns::new("pa").unwrap(), Netns::new("pb").unwrap());
    let ip_a = pod_ip(&cni(&n.node, &a, "ADD", "pod-a", &conf));
    let index_a = ifindex_of(&n.agent, &ip_a).expect("pod-a is an endpoint");
    let out = cni_output(&n.node, &b, "ADD", "pod-b", &conf);
    let error: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        !out.status.success() && error["code"] == 103,
        "the second pod's addresses cannot fit: its ADD must fail with code 103 (the agent \
         refused; retrying does not help); stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        pinned_links(&n.agent),
        links_of(index_a),
        "the failed registration's links must be gone"
    );
    assert_eq!(
        counter_keys(&n.agent),
        vec![index_a],
        "the failed registration's counters must be gone"
    );
    assert!(
        n.agent.logs().contains("registration failed"),
        "gannetd must say the registration failed; log:\n{}",
        n.agent.logs()
    );
    cni(&n.node, &a, "DEL", "pod-a", &conf);
}

/// The host veth gannet-cni made for `container` in `node`: its name and index.
fn host_veth(node: &Netns, container: &str) -> (String, u64) {
    let shown: Value =
        serde_json::from_str(&node.ip(&["-j", "link", "show"]).unwrap()).expect("ip -j");
    let alias = format!("gannet-cni:gannet-reg/{container}/eth0");
    shown
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifalias"] == alias.as_str())
        .map(|l| {
            (
                l["ifname"].as_str().expect("a name").to_owned(),
                l["ifindex"].as_u64().expect("an index"),
            )
        })
        .unwrap_or_else(|| panic!("no host veth with alias {alias}: {shown}"))
}

fn registry_file(agent: &Agent) -> String {
    std::fs::read_to_string(agent.state_dir().join("endpoints.json")).unwrap_or_default()
}

fn vanished_veths_are_reconciled(dataplane: &str) {
    let n = Node::new(&["--dataplane", dataplane]);
    let ebpf = dataplane == "ebpf";
    let pod = Netns::new("p").unwrap();
    let ip = pod_ip(&cni(&n.node, &pod, "ADD", "pod-gone", &n.conf()));
    let (host_if, index) = host_veth(&n.node, "pod-gone");
    if ebpf {
        assert_eq!(ifindex_of(&n.agent, &ip), Some(index), "an endpoint");
    }
    assert!(registry_file(&n.agent).contains("gannet-reg/pod-gone/eth0"));
    // The pod goes away without a DEL reaching gannetd: its veth is deleted.
    n.node.ip(&["link", "del", &host_if]).unwrap();
    eventually(
        "the endpoint to be removed from endpoints.json",
        Duration::from_secs(30),
        || (!registry_file(&n.agent).contains("pod-gone")).then_some(()),
    );
    if ebpf {
        assert_eq!(ifindex_of(&n.agent, &ip), None, "its addresses must go");
        assert!(
            pinned_links(&n.agent).is_empty(),
            "its links must go with it: {:?}",
            pinned_links(&n.agent)
        );
        assert!(counter_keys(&n.agent).is_empty(), "its counters too");
    }
    assert!(
        n.agent.logs().contains("its host veth is gone"),
        "gannetd must log the removal; log:\n{}",
        n.agent.logs()
    );
    let metrics = n.agent.scrape().unwrap();
    assert!(
        metrics.contains("gannet_cni_endpoints_vanished_total 1"),
        "the removal is counted: {metrics}"
    );
}

#[test]
fn endpoints_whose_veth_is_gone_are_removed_while_gannetd_runs() {
    vanished_veths_are_reconciled("ebpf");
}

#[test]
fn endpoints_whose_veth_is_gone_are_removed_while_gannetd_runs_nftables() {
    vanished_veths_are_reconciled("nftables");
}

fn broken_registry_is_rebuilt(dataplane: &str) {
    let mut n = Node::new(&["--dataplane", dataplane]);
    let ebpf = dataplane == "ebpf";
    let pod = Netns::new("p").unwrap();
    let conf = n.conf();
    let ip = pod_ip(&cni(&n.node, &pod, "ADD", "pod-r", &conf));
    let (_, index) = host_veth(&n.node, "pod-r");
    let registry = n.agent.state_dir().join("endpoints.json");
    let loud = "rebuilt it from the pod veths";
    for (broken, what) in [
        (&b"{\"gannet-reg/pod-r"[..], "corrupt"),
        (&b""[..], "empty"),
    ] {
        n.agent.stop(libc::SIGTERM).unwrap();
        std::fs::write(&registry, broken).unwrap();
        n.agent
            .restart()
            .unwrap_or_else(|e| panic!("gannetd must start with a {what} endpoints.json: {e}"));
        assert_eq!(
            n.agent.log_count(loud),
            1,
            "gannetd must say loudly that it rebuilt the registry ({what}); log:\n{}",
            n.agent.logs()
        );
        let saved = std::fs::read_to_string(&registry).unwrap();
        let record: Value = serde_json::from_str(&saved).expect("JSON");
        let record = &record["gannet-reg/pod-r/eth0"];
        assert_eq!(
            (record["hostIfIndex"].as_u64(), record["ips"][0].as_str()),
            (Some(index), Some(ip.as_str())),
            "the rebuilt registry ({what}) must hold the pod: {saved}"
        );
        assert!(
            registry.with_extension("json.corrupt").exists(),
            "the {what} file is kept aside"
        );
        if ebpf {
            assert_eq!(
                ifindex_of(&n.agent, &ip),
                Some(index),
                "the fast path stays"
            );
        }
    }
    // The rebuilt registration is a real one: DEL removes it.
    cni(&n.node, &pod, "DEL", "pod-r", &conf);
    assert!(
        !registry_file(&n.agent).contains("pod-r"),
        "DEL must find the rebuilt endpoint: {}",
        registry_file(&n.agent)
    );
    if ebpf {
        assert_eq!(ifindex_of(&n.agent, &ip), None);
        assert!(pinned_links(&n.agent).is_empty());
    }
}

#[test]
fn an_empty_or_corrupt_registry_is_rebuilt_from_the_pod_veths() {
    broken_registry_is_rebuilt("ebpf");
}

#[test]
fn an_empty_or_corrupt_registry_is_rebuilt_from_the_pod_veths_nftables() {
    broken_registry_is_rebuilt("nftables");
}

#[test]
fn registrations_naming_another_interface_are_refused_with_nftables_too() {
    let n = Node::new(&["--dataplane", "nftables"]);
    let answer = ask_agent(
        &n.agent.cni_socket(),
        &json!({"apiVersion": 1, "kind": "Register", "endpoint": {
            "network": "gannet-reg", "containerId": "intruder", "ifName": "eth0",
            "netns": "/proc/self/ns/net", "ips": ["10.244.7.77/32"], "mac": "02:00:00:00:00:09",
            "hostIfName": "lo", "hostIfIndex": 1, "hostMac": "02:00:00:00:00:0a",
            "podNamespace": "default", "podName": "intruder"}}),
    );
    assert_eq!(
        answer["ok"], false,
        "a registration naming lo must be refused: {answer}"
    );
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not the one gannet-cni makes"),
        "the refusal must say why: {error}"
    );
    assert!(
        !registry_file(&n.agent).contains("intruder"),
        "nothing may be recorded: {}",
        registry_file(&n.agent)
    );
}

#[test]
fn check_asks_gannetd_whether_it_still_knows_the_attachment() {
    let mut n = Node::new(&[]);
    let pod = Netns::new("p").unwrap();
    let mut conf = n.conf();
    let result = cni(&n.node, &pod, "ADD", "pod-c", &conf);
    conf["prevResult"] = result;
    cni(&n.node, &pod, "CHECK", "pod-c", &conf);

    // gannetd forgets the attachment (its veth and addresses stay as they were).
    let answer = ask_agent(
        &n.agent.cni_socket(),
        &json!({"apiVersion": 1, "kind": "Unregister", "network": "gannet-reg",
                "containerId": "pod-c", "ifName": "eth0"}),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    let out = cni_output(&n.node, &pod, "CHECK", "pod-c", &conf);
    let error: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        !out.status.success() && error["code"] == 101,
        "CHECK must fail with code 101 when gannetd does not know the attachment: {error}"
    );
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains("gannet-reg/pod-c/eth0 is not registered"),
        "CHECK must say what gannetd said: {msg}"
    );

    // No gannetd: CHECK cannot know, and says so with code 11 (try again later).
    n.agent.stop(libc::SIGTERM).unwrap();
    let out = cni_output(&n.node, &pod, "CHECK", "pod-c", &conf);
    let error: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        !out.status.success() && error["code"] == 11,
        "CHECK without gannetd must fail with code 11: {error}"
    );
    n.agent.restart().unwrap();
    conf.as_object_mut().unwrap().remove("prevResult");
    cni(&n.node, &pod, "DEL", "pod-c", &conf);
}

/// inotify events naming `name` in `dir`, read until `until` returns true or 20 s pass.
struct Inotify {
    fd: std::os::fd::OwnedFd,
}

impl Inotify {
    fn watch(dir: &Path) -> Inotify {
        use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
        // SAFETY: plain syscalls; the fd is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new fd of our own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
        // SAFETY: a valid fd and C string.
        let wd = unsafe {
            libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), path.as_ptr(), mask)
        };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        Inotify { fd }
    }

    /// The events queued so far, as (mask, name).
    fn events(&self) -> Vec<(u32, String)> {
        let mut file = std::fs::File::from(self.fd.try_clone().unwrap());
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::new();
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("reading inotify: {e}"),
            };
            let mut at = 0;
            while at + 16 <= n {
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buf[at + 16..at + 16 + len];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_owned();
                out.push((mask, name));
                at += 16 + len;
            }
        }
    }
}

#[test]
fn the_cni_socket_appears_with_its_final_permissions() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut n = Node::new(&[]);
    let state: PathBuf = n.agent.state_dir().to_owned();
    n.agent.stop(libc::SIGTERM).unwrap();
    let inotify = Inotify::watch(&state);
    n.agent.restart().unwrap();
    let events: Vec<(u32, String)> = inotify
        .events()
        .into_iter()
        .filter(|(_, name)| name == "cni.sock")
        .collect();
    assert!(
        events
            .iter()
            .all(|(mask, _)| mask & (libc::IN_CREATE | libc::IN_ATTRIB) == 0),
        "cni.sock must not be created in place and then have its permissions changed \
         (a window with the umask's permissions): events {events:?}"
    );
    assert!(
        events.iter().any(|(mask, _)| mask & libc::IN_MOVED_TO != 0),
        "cni.sock must arrive by rename: events {events:?}"
    );
    let mode = std::fs::metadata(n.agent.cni_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let leftovers: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with(".cni.sock"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no bind directory left: {leftovers:?}"
    );
}

#[test]
fn idle_and_trickling_connections_are_closed() {
    let n = Node::new(&[]);
    let socket = n.agent.cni_socket();
    // Silent: connects and sends nothing.
    let silent = UnixStream::connect(&socket).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Trickling: a byte every 200 ms, never a whole line.
    let trickle = UnixStream::connect(&socket).unwrap();
    let writer = trickle.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let began = Instant::now();
        let mut writer = writer;
        while began.elapsed() < Duration::from_secs(40) {
            if writer.write_all(b" ").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    let began = Instant::now();
    let mut byte = [0u8; 1];
    // A signal to this test process (another test's child exiting) may interrupt the read.
    let read = loop {
        match (&silent).read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other,
        }
    };
    assert!(
        matches!(read, Ok(0)),
        "gannetd must close a silent connection; read gave {read:?} after {:?}",
        began.elapsed()
    );
    assert!(
        sender.join().unwrap(),
        "gannetd must close a connection that trickles without ever sending a line"
    );
    // The socket still serves.
    let answer = ask_agent(&socket, &json!({"apiVersion": 1, "kind": "Status"}));
    assert_eq!(answer["ok"], true, "{answer}");
}
