//! A pod's life on the node: start, serve, adoption after a gannetd restart, deletion; a runtime
//! that is not there; a panicking test's leftovers.

use super::*;

/// Apply → sandbox and container run → Running with the sandbox's IP → endpoint of its Service
/// → a client reaches it through the ClusterIP; a missing image is reported; gannetd SIGKILL +
/// restart adopts the running pod; delete → its containers, veth and IPAM record are gone; a
/// delete with a grace period ends with gannetd removing the stopped Pod.
#[test]
fn pods_bound_to_the_node_run_in_containerd_and_serve_their_service() {
    if skip_reason().is_some() {
        return;
    }
    let node = Netns::new("kbnode").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
    let containerd = Containerd::start(&node).unwrap();
    let runtime = containerd.address();
    let parent = containerd.cgroup_parent();
    let (mut agent, busybox) = start_kubelet(&node, &cgroup, &plane, &containerd);
    // Importing again (every blob already there, the image already named) is no error.
    assert_eq!(import(&busybox, &runtime).trim(), BUSYBOX_IMAGE);

    let diagnose = || {
        format!(
            "pod web-1: {}\n--- gannetd:\n{}\n--- containerd:\n{}",
            plane
                .get_json("pod", "web-1")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs(),
            containerd.logs()
        )
    };
    plane.apply(WEB).unwrap();
    let vip = plane.get_json("service", "web").unwrap()["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_owned();
    let pod = wait("web-1 to run and be ready", START, diagnose, || {
        let pod = plane.get_json("pod", "web-1").ok()?;
        // gannet-cni's registration reports the address (and Ready) as soon as the sandbox
        // has its network: wait for the worker's container status.
        (pod["status"]["phase"] == "Running"
            && condition(&pod, "Ready") == "True"
            && pod["status"]["podIP"].is_string()
            && pod["status"]["containerStatuses"][0]["state"]["running"].is_object())
        .then_some(pod)
    });
    let web_ip = pod["status"]["podIP"].as_str().unwrap().to_owned();
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["name"], "web", "{pod}");
    assert!(status["state"]["running"].is_object(), "{pod}");
    assert_eq!(condition(&pod, "ContainersReady"), "True", "{pod}");
    let container_id = status["containerID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(container_id.starts_with("containerd://"), "{pod}");
    let lease = plane.get_json("node", "test-node").unwrap();
    let prefix = lease["spec"]["podCIDR"]
        .as_str()
        .unwrap()
        .trim_end_matches(".0/24")
        .to_owned();
    assert!(
        web_ip.starts_with(&format!("{prefix}.")),
        "the pod's address {web_ip} comes from the node's lease ({prefix}.0/24)"
    );
    let record = files_named(&containerd.ipam_dir(), &web_ip);
    assert_eq!(record.len(), 1, "gannet-cni's IPAM record of {web_ip}");
    let web_veths = veths(&node);
    assert_eq!(web_veths.len(), 1, "web-1's host veth: {web_veths:?}");
    let containers = containerd.container_ids().unwrap();
    assert_eq!(
        containers.len(),
        2,
        "the sandbox's pause container and web: {containers:?}"
    );

    eventually("web-1 to be an endpoint of web", START, || {
        let out = plane.ctl(&["get", "endpointslices"], None).ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(&web_ip)
            .then_some(())
    });

    // A client pod of the test's own, wired by gannet-cni (the same IPAM records), reaches the
    // container through the ClusterIP.
    let client = Netns::new("kbcli").unwrap();
    let conf = containerd.plugin_conf(&agent.cni_socket(), &agent.subnet_file());
    let _client_ip = pod_ip(&cni(&node, &client, "ADD", "client", &conf));
    // gannet-probe sends a line and reads the reply line: the container's `nc` answers each
    // connection with its script's output.
    let probe = |to: &str, count: u64| {
        let mut cmd = Command::new(bin_path("gannet-probe"));
        cmd.args(["--timeout-ms", "1000", "tcp", "--to", to, "--count"])
            .arg(count.to_string());
        let output = run_in(cmd, Some(&client), Some(&cgroup), CMD_TIMEOUT).expect("gannet-probe");
        parse_json_output(&output).expect("probe report")
    };
    let to_vip = format!("{vip}:80");
    let report = wait(
        "the ClusterIP to answer with web-1's greeting",
        START,
        || {
            format!(
                "{:?}\n{:?}\n{}\n{}",
                probe(&to_vip, 1),
                probe(&format!("{web_ip}:8080"), 1),
                inside_pod("nc -ll"),
                diagnose()
            )
        },
        || Some(probe(&to_vip, 5)).filter(|r: &Report| r.ok == 5),
    );
    let fetch = || probe(&to_vip, 1).backends.into_keys().next();
    assert_eq!(
        report.backend_count("hello-from-web-1 from /tmp"),
        5,
        "command, args, env and workingDir reach the container: {report:?}"
    );

    // The container runs below the cgroup gannetd was given (--pod-cgroup-parent).
    let server = find_process("nc -ll -p 8080").expect("the container's nc runs");
    let cgroups = std::fs::read_to_string(format!("/proc/{server}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("{parent}/")),
        "the container's cgroups are below {parent}: {cgroups}"
    );

    // A pod whose image is not on the node: reported, not retried in a loop, gannetd unharmed.
    plane.apply(MISSING).unwrap();
    let missing = eventually("missing-1 to report its image", START, || {
        let pod = plane.get_json("pod", "missing-1").ok()?;
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        (waiting["reason"] == "ErrImageNeverPull").then(|| pod.clone())
    });
    let message = missing["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("gannet.test/not-imported:7"),
        "the message names the image: {missing}"
    );
    assert_eq!(missing["status"]["phase"], "Pending", "{missing}");
    assert_eq!(condition(&missing, "Ready"), "False", "{missing}");

    // gannetd killed and started again: it adopts the sandboxes and the container that run.
    let before = containerd.container_ids().unwrap();
    agent.stop(libc::SIGKILL).unwrap();
    agent.restart().unwrap();
    agent.wait_log("container runtime connected", 1).unwrap();
    // Several resyncs of every pod worker.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        containerd.container_ids().unwrap(),
        before,
        "after the restart the same sandboxes and containers run, none added"
    );
    let pod = plane.get_json("pod", "web-1").unwrap();
    assert_eq!(
        pod["status"]["containerStatuses"][0]["containerID"], container_id,
        "{pod}"
    );
    wait(
        "web-1 to answer through the ClusterIP after the restart",
        Duration::from_secs(10),
        || format!("{:?}\n{}", probe(&to_vip, 1), agent.logs()),
        || (fetch().as_deref() == Some("hello-from-web-1 from /tmp")).then_some(()),
    );

    // Deleted: its containers and sandbox go, and with them its veth and its address.
    let deleted = plane.ctl(&["delete", "pod", "web-1"], None).unwrap();
    assert!(deleted.status.success(), "gannetctl delete: {deleted:?}");
    eventually("web-1's containers to be removed", START, || {
        let ids = containerd.container_ids().ok()?;
        (ids.len() + 2 == before.len()).then_some(())
    });
    eventually("web-1's IPAM record to be released", START, || {
        files_named(&containerd.ipam_dir(), &web_ip)
            .is_empty()
            .then_some(())
    });
    let now = veths(&node);
    assert!(
        web_veths.is_disjoint(&now),
        "web-1's host veth {web_veths:?} is gone: now {now:?}"
    );
    assert!(
        plane.get_json("pod", "web-1").is_err(),
        "web-1 is gone from the control plane"
    );
    let logs = agent.logs();
    assert_eq!(
        logs.matches("sandbox running").count(),
        2,
        "one sandbox for web-1 and one for missing-1, never a second: {logs}"
    );

    // Deleted with a grace period: terminating, its sandbox removed, then gannetd removes the
    // Pod (the control plane alone would keep it for the whole 120 s).
    let deleted = plane
        .ctl(
            &["delete", "pod", "missing-1", "--grace-period", "120"],
            None,
        )
        .unwrap();
    assert!(deleted.status.success(), "gannetctl delete: {deleted:?}");
    wait(
        "missing-1 to be stopped and removed",
        Duration::from_secs(60),
        || format!("{:?}\n{}", containerd.container_ids(), agent.logs()),
        || {
            let gone = plane.get_json("pod", "missing-1").is_err();
            let ids = containerd.container_ids().ok()?;
            (gone && ids.is_empty()).then_some(())
        },
    );
    assert!(
        agent.logs().contains("terminated pod removed"),
        "gannetd removed the terminated pod"
    );
    cni(&node, &client, "DEL", "client", &conf);
}

/// A runtime that is not there stops gannetd at start with an error naming the flag.
#[test]
fn an_unreachable_container_runtime_stops_gannetd_naming_the_flag() {
    let node = Netns::new("kbbad").unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&[]).unwrap();
    let socket = std::env::temp_dir().join(gannet_testkit::unique_name("no-runtime"));
    let address = format!("unix://{}", socket.display());
    let started = Agent::start_with_control(
        Some(&node),
        &cgroup,
        &plane.addr(),
        &["--container-runtime", &address],
    );
    let Err(error) = started else {
        panic!("gannetd must not start without its runtime");
    };
    let text = format!("{error:#}");
    assert!(
        text.contains(&format!("--container-runtime {address}: cannot connect")),
        "the error names the flag and the socket: {text}"
    );
}

/// A test that panics while a pod runs leaves nothing behind: containerd, its shims and the
/// containers are killed, the pods' cgroups and containerd's temp dir removed.
#[test]
fn a_panicking_kubelet_test_leaves_no_runtime_state_behind() {
    if skip_reason().is_some() {
        return;
    }
    let seen = std::sync::Mutex::new(None);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let node = Netns::new("kbpanic").unwrap();
        let cgroup = Cgroup::new().unwrap();
        let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
        let containerd = Containerd::start(&node).unwrap();
        let runtime = containerd.address();
        let parent = containerd.cgroup_parent();
        let mut agent = Agent::start_with_control(
            Some(&node),
            &cgroup,
            &plane.addr(),
            &[
                "--container-runtime",
                &runtime,
                "--pod-cgroup-parent",
                &parent,
            ],
        )
        .unwrap();
        agent.wait_log("subnet file written", 1).unwrap();
        containerd
            .use_agent(&agent.cni_socket(), &agent.subnet_file())
            .unwrap();
        for (name, entrypoint) in [
            (PAUSE_IMAGE, &["/bin/busybox", "sleep", "2147483647"][..]),
            (BUSYBOX_IMAGE, &["/bin/sh"][..]),
        ] {
            let archive = containerd.busybox_archive(name, entrypoint).unwrap();
            import(&archive, &runtime);
        }
        plane
            .apply(
                "apiVersion: v1
kind: Pod
metadata:
  name: doomed
spec:
  nodeName: test-node
  containers:
  - name: app
    image: gannet.test/busybox:1
    command: [/bin/busybox, sleep, '31337']
",
            )
            .unwrap();
        let container = eventually("the doomed pod's container to run", START, || {
            find_process("sleep 31337")
        });
        let daemon = find_process(&format!(
            "{}",
            Path::new(runtime.trim_start_matches("unix://"))
                .with_file_name("config.toml")
                .display()
        ))
        .expect("containerd runs");
        *seen.lock().unwrap() = Some((
            container,
            daemon,
            Path::new(runtime.trim_start_matches("unix://"))
                .parent()
                .unwrap()
                .to_owned(),
            parent,
        ));
        panic!("deliberate panic with a pod running (this message is expected)");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    let (container, daemon, dir, parent) = seen
        .into_inner()
        .unwrap()
        .expect("the pod ran before the panic");
    for pid in [container, daemon] {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie_or_gone = state
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z'));
        assert!(zombie_or_gone, "process {pid} survived the panic: {state}");
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
    let leftovers: Vec<String> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|hierarchy| hierarchy.path().join(parent.trim_start_matches('/')))
        .filter(|path| path.exists())
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        leftovers.is_empty(),
        "the pods' cgroups survived: {leftovers:?}"
    );
}
