//! A container's CPU and memory as the kubelet sets them: read back from the container's cgroup
//! (cgroup v1 controllers where the runtime uses them, as on this hybrid machine, else v2) and its
//! `oom_score_adj`.

use super::*;

/// `file` of the container process `pid`'s cgroup: the v1 hierarchy of `controller` when the
/// process is in one, else the unified (v2) one's `v2_file`.
fn cgroup_file(pid: u32, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroups");
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        if controllers.split(',').any(|c| c == controller) {
            let file = Path::new("/sys/fs/cgroup")
                .join(controllers)
                .join(path.trim_start_matches('/'))
                .join(v1_file);
            if let Ok(text) = std::fs::read_to_string(&file) {
                return text.trim().to_owned();
            }
        }
    }
    let path = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    let file = gannet_testkit::cgroup2_root()
        .expect("cgroup2 is mounted")
        .join(path.trim_start_matches('/'))
        .join(v2_file);
    std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (cgroups: {cgroups})", file.display()))
        .trim()
        .to_owned()
}

/// A Burstable pod: its container's cgroup has the CFS quota of its CPU limit, the shares of its
/// CPU request and its memory limit; its `oom_score_adj` is the kubelet's for its memory request
/// against the node's memory (what gannetd registered as capacity).
#[test]
fn container_limits_reach_the_cgroup_and_the_oom_score() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbres");
    let KubeletNode { agent, plane, .. } = &kubelet;
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: limited}}\nspec:\n  nodeName: test-node\n  \
             terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'exec /bin/busybox sleep 3141']\n    resources:\n      \
             requests: {{cpu: 250m, memory: 4Gi}}\n      limits: {{cpu: 500m, memory: 6Gi}}\n"
        ))
        .unwrap();
    let diagnose = || {
        format!(
            "pod limited: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "limited")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let pid = wait("the limited container to run", START, diagnose, || {
        find_process("sleep 3141")
    });
    assert_eq!(
        cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        (6u64 << 30).to_string(),
        "memory limit"
    );
    let quota = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(
        quota == "50000" || quota == "50000 100000",
        "CPU quota of 500m per 100 ms: {quota}"
    );
    let shares = cgroup_file(pid, "cpu", "cpu.shares", "cpu.weight");
    // v1: 250m × 1024; v2: runc's conversion of those shares to a weight.
    assert!(
        shares == "256" || shares == "10",
        "CPU shares of 250m: {shares}"
    );
    let node = plane.get_json("node", "test-node").unwrap();
    let memory: u64 = node["status"]["capacity"]["memory"]
        .as_str()
        .and_then(|m| m.strip_suffix("Ki"))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| k * 1024)
        .expect("the node's memory capacity in Ki");
    let expected = (1000 - (1000 * (4u64 << 30)) / memory).clamp(3, 999);
    let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(
        score.trim(),
        expected.to_string(),
        "oom_score_adj (Burstable)"
    );
}
