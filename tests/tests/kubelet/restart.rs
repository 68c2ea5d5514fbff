//! Restart policies: exited containers started again, or left alone, as the pod says.

use super::*;

/// Pods whose container exits: `Always` restarts it (at once, then after 10 s: the restart count
/// grows, `CrashLoopBackOff` with the last exit in between, the pod Running); `OnFailure` leaves
/// a clean exit alone (Succeeded); `Never` leaves a failure alone (Failed).
#[test]
fn exited_containers_follow_the_pods_restart_policy() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbrestart");
    let KubeletNode { agent, plane, .. } = &kubelet;
    let pod = |name: &str, policy: &str, exit: i32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: test-node\n  \
             restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - {{name: app, image: {BUSYBOX_IMAGE}, command: [/bin/sh, -c, 'sleep 1; exit {exit}']}}\n"
        )
    };
    plane.apply(&pod("crashing", "Always", 3)).unwrap();
    plane.apply(&pod("done", "OnFailure", 0)).unwrap();
    plane.apply(&pod("failed", "Never", 3)).unwrap();
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
    let app = |pod: &Value| pod["status"]["containerStatuses"][0].clone();
    // Restarted at once after the first exit, then backed off for 10 s.
    let backing_off = wait(
        "crashing to back off after its first restart",
        START + Duration::from_secs(30),
        || diagnose("crashing"),
        || {
            let pod = plane.get_json("pod", "crashing").ok()?;
            (app(&pod)["state"]["waiting"]["reason"] == "CrashLoopBackOff").then_some(pod)
        },
    );
    let status = app(&backing_off);
    assert_eq!(status["restartCount"], 1, "{backing_off}");
    assert_eq!(
        status["lastState"]["terminated"]["exitCode"], 3,
        "{backing_off}"
    );
    assert_eq!(backing_off["status"]["phase"], "Running", "{backing_off}");
    assert!(
        status["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("back-off 10s"),
        "{backing_off}"
    );
    wait(
        "crashing to be restarted a second time after its back-off",
        Duration::from_secs(40),
        || diagnose("crashing"),
        || {
            let pod = plane.get_json("pod", "crashing").ok()?;
            (app(&pod)["restartCount"].as_i64()? >= 2).then_some(())
        },
    );
    for (name, phase, code) in [("done", "Succeeded", 0), ("failed", "Failed", 3)] {
        let pod = wait(
            &format!("{name} to end {phase}"),
            START,
            || diagnose(name),
            || {
                let pod = plane.get_json("pod", name).ok()?;
                (pod["status"]["phase"] == phase).then_some(pod)
            },
        );
        let status = app(&pod);
        assert_eq!(status["restartCount"], 0, "{pod}");
        assert_eq!(status["state"]["terminated"]["exitCode"], code, "{pod}");
    }
    // Left as they are: no container of theirs was started again.
    std::thread::sleep(Duration::from_secs(3));
    for name in ["done", "failed"] {
        let pod = plane.get_json("pod", name).unwrap();
        assert_eq!(app(&pod)["restartCount"], 0, "{pod}");
    }
}
