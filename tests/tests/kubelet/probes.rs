//! Readiness, liveness and startup probes.

use super::*;

/// Readiness probes: a pod whose containers run is Ready only once each container's probe
/// passed (httpGet on busybox's httpd, tcpSocket on an `nc` listener, exec of a file test that
/// turns true after a few seconds), and its Service's endpoint turns ready with it; gannet-cni's
/// registration (addresses as soon as the sandbox has its network) does not make it Ready.
#[test]
fn a_pod_is_ready_and_an_endpoint_only_when_its_readiness_probes_pass() {
    if skip_reason().is_some() {
        return;
    }
    let node = Netns::new("kbready").unwrap();
    // An address of the node's own, as a real node has on its uplink: the probes' source.
    node.ip(&["addr", "add", "192.0.2.10/32", "dev", "lo"])
        .unwrap();
    let cgroup = Cgroup::new().unwrap();
    let plane = ControlPlane::start(&["--cluster-cidr", "10.244.0.0/16"]).unwrap();
    let containerd = Containerd::start(&node).unwrap();
    let (agent, _) = start_kubelet(&node, &cgroup, &plane, &containerd);
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: probed}}\nspec:\n  selector: {{app: probed}}\n  \
         ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: probed, labels: {{app: probed}}}}\nspec:\n  \
         nodeName: test-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: http\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/sh, -c, 'mkdir -p /www && echo ok >/www/healthz && exec /bin/busybox httpd -f -p 8080 -h /www']\n    \
         ports: [{{name: http, containerPort: 8080}}]\n    \
         readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 1}}\n  \
         - name: tcp\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/busybox, nc, -ll, -p, '9090', -e, /bin/true]\n    \
         readinessProbe: {{tcpSocket: {{port: 9090}}, periodSeconds: 1}}\n  \
         - name: exec\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/sh, -c, 'sleep 6; touch /tmp/ready; exec sleep 3600']\n    \
         readinessProbe: {{exec: {{command: [/bin/busybox, test, -f, /tmp/ready]}}, periodSeconds: 1}}\n"
    );
    plane.apply(&manifest).unwrap();
    let diagnose = || {
        format!(
            "node: {}{}\npod probed: {}\nslices: {}\n--- gannetd:\n{}",
            node.ip(&["-4", "addr"]).unwrap_or_default(),
            node.ip(&["-4", "route"]).unwrap_or_default(),
            plane
                .get_json("pod", "probed")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            plane
                .ctl(&["get", "endpointslices", "-o", "json"], None)
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let ready_of = |pod: &Value, name: &str| -> Option<bool> {
        pod["status"]["containerStatuses"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)?["ready"]
            .as_bool()
    };
    // httpGet and tcpSocket pass while the exec probe's file is not there yet: running, with an
    // address, not Ready, and its endpoint not ready.
    let waiting = wait(
        "the http and tcp containers to be ready, the exec one not yet",
        START,
        diagnose,
        || {
            let pod = plane.get_json("pod", "probed").ok()?;
            (ready_of(&pod, "http")? && ready_of(&pod, "tcp")? && !ready_of(&pod, "exec")?)
                .then_some(pod)
        },
    );
    assert_eq!(waiting["status"]["phase"], "Running", "{waiting}");
    assert_eq!(condition(&waiting, "Ready"), "False", "{waiting}");
    assert!(waiting["status"]["podIP"].is_string(), "{waiting}");
    let pod_ip = waiting["status"]["podIP"].as_str().unwrap().to_owned();
    let endpoint_ready = || -> Option<bool> {
        let out = plane
            .ctl(&["get", "endpointslices", "-o", "json"], None)
            .ok()?;
        let slices: Value = serde_json::from_slice(&out.stdout).ok()?;
        let items = slices["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .find(|e| e["addresses"][0] == pod_ip.as_str())
            .map(|e| e["conditions"]["ready"] == true)
    };
    assert_ne!(
        endpoint_ready(),
        Some(true),
        "an unready pod is no ready endpoint\n{}",
        diagnose()
    );
    // The exec probe's file appears: Ready, and a ready endpoint.
    let ready = wait("the pod to be Ready", START, diagnose, || {
        let pod = plane.get_json("pod", "probed").ok()?;
        (condition(&pod, "Ready") == "True").then_some(pod)
    });
    assert_eq!(condition(&ready, "ContainersReady"), "True", "{ready}");
    wait("its endpoint to be ready", START, diagnose, || {
        endpoint_ready().filter(|r| *r).map(|_| ())
    });
}

/// Liveness and startup probes: a container whose exec liveness probe starts failing (its file
/// is removed a few seconds after each start) is killed with the probe's grace period and
/// restarted, again and again (each new container passes its startup probe afresh), the pod
/// Running throughout; a container whose startup probe never passes is killed and restarted,
/// never started nor Ready, and its liveness probe (which would fail) and readiness probe (which
/// would pass) are never run.
#[test]
fn failing_liveness_and_startup_probes_kill_and_restart_the_container() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kblive");
    let KubeletNode { agent, plane, .. } = &kubelet;
    let alive_test = "exec: {command: [/bin/busybox, test, -f, /tmp/alive]}, periodSeconds: 1";
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: alive}}\nspec:\n  nodeName: test-node\n  \
         terminationGracePeriodSeconds: 30\n  containers:\n  \
         - name: app\n    image: {BUSYBOX_IMAGE}\n    \
         command: [/bin/sh, -c, 'touch /tmp/alive; sleep 4; rm /tmp/alive; exec sleep 3600']\n    \
         startupProbe: {{{alive_test}, failureThreshold: 5}}\n    \
         livenessProbe: {{{alive_test}, failureThreshold: 2, terminationGracePeriodSeconds: 1}}\n\
         ---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: never}}\nspec:\n  nodeName: test-node\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: app\n    image: {BUSYBOX_IMAGE}\n    command: [/bin/busybox, sleep, '3600']\n    \
         startupProbe: {{exec: {{command: [/bin/busybox, test, -f, /tmp/never]}}, periodSeconds: 1, failureThreshold: 2}}\n    \
         livenessProbe: {{exec: {{command: [/bin/busybox, 'false']}}, periodSeconds: 1, failureThreshold: 1}}\n    \
         readinessProbe: {{exec: {{command: [/bin/busybox, 'true']}}, periodSeconds: 1}}\n"
    );
    plane.apply(&manifest).unwrap();
    let diagnose = || {
        let pod = |name| {
            plane
                .get_json("pod", name)
                .map(|p| p.to_string())
                .unwrap_or_default()
        };
        format!(
            "pod alive: {}\npod never: {}\n--- gannetd:\n{}",
            pod("alive"),
            pod("never"),
            agent.logs()
        )
    };
    let app = |pod: &Value| pod["status"]["containerStatuses"][0].clone();
    // Every look at the pod whose startup probe never passes: never started, never Ready.
    let mut never_seen = 0;
    let mut check_never = || {
        if let Ok(pod) = plane.get_json("pod", "never") {
            assert_ne!(condition(&pod, "Ready"), "True", "{pod}");
            assert_ne!(app(&pod)["started"], true, "{pod}");
            assert_ne!(app(&pod)["ready"], true, "{pod}");
            never_seen += 1;
        }
    };
    // The liveness pod's first container passes its startup probe: started and ready.
    wait("alive to start and be ready", START, diagnose, || {
        check_never();
        let pod = plane.get_json("pod", "alive").ok()?;
        (app(&pod)["started"] == true && app(&pod)["ready"] == true).then_some(())
    });
    // Its file goes: killed, restarted at once; the next container's goes too: killed and, after
    // the back-off, restarted.
    let restarted = wait(
        "alive to be restarted twice by its liveness probe",
        START + Duration::from_secs(60),
        diagnose,
        || {
            check_never();
            let pod = plane.get_json("pod", "alive").ok()?;
            (app(&pod)["restartCount"].as_i64()? >= 2).then_some(pod)
        },
    );
    assert_eq!(restarted["status"]["phase"], "Running", "{restarted}");
    // Running again, it shows the attempt the probe killed as its last state.
    wait(
        "alive to run again with its killed attempt as lastState",
        Duration::from_secs(60),
        diagnose,
        || {
            check_never();
            let pod = plane.get_json("pod", "alive").ok()?;
            let app = app(&pod);
            (app["state"]["running"].is_object()
                && app["lastState"]["terminated"]["exitCode"].is_i64()
                && app["lastState"]["terminated"]["containerID"] != app["containerID"])
                .then_some(())
        },
    );
    let logs = agent.logs();
    let kills: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("Killing: container app failed its liveness probe"))
        .filter(|l| l.contains("default/alive"))
        .collect();
    assert!(
        kills.len() >= 2,
        "two liveness kills of alive logged\n{}",
        diagnose()
    );
    assert!(
        kills
            .iter()
            .all(|l| l.contains("grace_seconds=1") && l.contains("exec probe exited with 1")),
        "the kills name the probe's grace period and failure: {kills:#?}"
    );
    // The startup probe that never passes: killed and restarted, still never Ready.
    let never = wait(
        "never to be restarted by its startup probe",
        START,
        diagnose,
        || {
            check_never();
            let pod = plane.get_json("pod", "never").ok()?;
            (app(&pod)["restartCount"].as_i64()? >= 1).then_some(pod)
        },
    );
    assert_eq!(never["status"]["phase"], "Running", "{never}");
    assert!(never_seen > 0, "pod never was never read\n{}", diagnose());
    let logs = agent.logs();
    let never_lines = |needle: &str| {
        logs.lines()
            .filter(|l| l.contains(needle) && l.contains("default/never"))
            .count()
    };
    assert!(
        never_lines("Killing: container app failed its startup probe") >= 1,
        "never's startup kill logged\n{}",
        diagnose()
    );
    assert_eq!(
        never_lines("liveness") + never_lines("readiness"),
        0,
        "never's liveness and readiness probes ran before it started\n{}",
        diagnose()
    );
}
