//! gannet-control's scheduler placing pods on a kubelet node.

use super::*;

/// gannet-control's scheduler and a real kubelet node: gannetd registers its CPUs and memory as
/// allocatable (with the standard labels), a Pod without `spec.nodeName` is bound to it and runs,
/// and one asking for more CPU than the node has stays Pending with kube-scheduler's reason.
#[test]
fn a_pod_without_a_node_is_scheduled_onto_the_kubelet_node_and_runs() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbsched");
    let KubeletNode { agent, plane, .. } = &kubelet;
    let registered = plane.get_json("node", "test-node").unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        registered["status"]["allocatable"]["cpu"],
        cpus.to_string(),
        "{registered}"
    );
    assert!(
        registered["status"]["capacity"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with("Ki")),
        "{registered}"
    );
    assert_eq!(
        registered["metadata"]["labels"]["kubernetes.io/os"], "linux",
        "{registered}"
    );
    let pod = |name: &str, cpu: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  \
             - {{name: app, image: {BUSYBOX_IMAGE}, command: [/bin/busybox, sleep, '3600'], \
             resources: {{requests: {{cpu: '{cpu}', memory: 16Mi}}}}}}\n"
        )
    };
    plane.apply(&pod("placed", "100m")).unwrap();
    plane.apply(&pod("too-big", "1000")).unwrap();
    let diagnose = |name: &str| {
        format!(
            "pod {name}: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", name)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let running = wait(
        "placed to be scheduled and run",
        START,
        || diagnose("placed"),
        || {
            let pod = plane.get_json("pod", "placed").ok()?;
            (pod["status"]["phase"] == "Running").then_some(pod)
        },
    );
    assert_eq!(running["spec"]["nodeName"], "test-node", "{running}");
    assert_eq!(condition(&running, "PodScheduled"), "True", "{running}");
    let pending = wait(
        "too-big to be found unschedulable",
        START,
        || diagnose("too-big"),
        || {
            let pod = plane.get_json("pod", "too-big").ok()?;
            (condition(&pod, "PodScheduled") == "False").then_some(pod)
        },
    );
    let scheduled = pending["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(scheduled["reason"], "Unschedulable", "{pending}");
    assert_eq!(
        scheduled["message"], "0/1 nodes are available: 1 Insufficient cpu.",
        "{pending}"
    );
    assert_eq!(pending["spec"]["nodeName"], Value::Null, "{pending}");
    assert_eq!(pending["status"]["phase"], "Pending", "{pending}");
    let described = plane.ctl(&["describe", "pod", "too-big"], None).unwrap();
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described.contains(
            "PodScheduled  False  Unschedulable  0/1 nodes are available: 1 Insufficient cpu."
        ),
        "gannetctl describe pod shows why: {described}"
    );
    let described = plane.ctl(&["describe", "node", "test-node"], None).unwrap();
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("Allocatable:") && l.ends_with(&format!("cpu: {cpus}"))),
        "gannetctl describe node shows the allocatable CPUs: {described}"
    );
    let wide = plane.ctl(&["get", "pods", "-o", "wide"], None).unwrap();
    let wide = String::from_utf8_lossy(&wide.stdout).into_owned();
    let row = wide
        .lines()
        .find(|l| l.starts_with("placed"))
        .unwrap_or_else(|| panic!("placed is listed: {wide}"));
    assert!(
        row.split_whitespace().any(|c| c == "test-node"),
        "gannetctl get pods -o wide shows the node: {wide}"
    );
}
