//! A container's environment as the kubelet makes it.

use super::*;

/// A container's environment as the kubelet makes it: `$(NAME)` references to earlier
/// variables, `fieldRef` (name, labels, node, the sandbox's address) and `resourceFieldRef`
/// (a limit with a divisor); a `secretKeyRef` (gannet-control serves no Secrets) leaves the
/// container waiting with `CreateContainerConfigError` naming the Secret.
#[test]
fn containers_get_their_environment_from_the_pod_and_its_resources() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbenv");
    let KubeletNode { agent, plane, .. } = &kubelet;
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: envy, labels: {{tier: front}}}}\nspec:\n  \
             nodeName: test-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: app\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'env | sort; exec sleep 3600']\n    \
             resources: {{limits: {{memory: 64Mi}}}}\n    env:\n    \
             - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}\n    \
             - {{name: TIER, valueFrom: {{fieldRef: {{fieldPath: \"metadata.labels['tier']\"}}}}}}\n    \
             - {{name: NODE, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}\n    \
             - {{name: IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}\n    \
             - {{name: URL, value: 'http://$(IP):8080/$(POD)'}}\n    \
             - {{name: MEM_MIB, valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}}}\n\
             ---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: secretive}}\nspec:\n  \
             nodeName: test-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: app\n    image: {BUSYBOX_IMAGE}\n    command: [/bin/busybox, sleep, '3600']\n    \
             env: [{{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: db, key: password}}}}}}]\n"
        ))
        .unwrap();
    let diagnose = || {
        format!(
            "pod envy: {}\npod secretive: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "envy")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            plane
                .get_json("pod", "secretive")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let state_dir = agent.state_dir().display().to_string();
    let (ip, env) = wait(
        "envy to run and write its environment",
        START,
        diagnose,
        || {
            let pod = plane.get_json("pod", "envy").ok()?;
            let ip = pod["status"]["podIP"].as_str()?.to_owned();
            let out = plane
                .ctl(&["logs", "envy", "--state-dir", &state_dir], None)
                .ok()?;
            let env = String::from_utf8_lossy(&out.stdout).into_owned();
            env.contains("URL=").then_some((ip, env))
        },
    );
    for line in [
        "POD=envy".to_owned(),
        "TIER=front".to_owned(),
        "NODE=test-node".to_owned(),
        format!("IP={ip}"),
        format!("URL=http://{ip}:8080/envy"),
        "MEM_MIB=64".to_owned(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in\n{env}");
    }
    let waiting = wait("secretive to wait for its Secret", START, diagnose, || {
        let pod = plane.get_json("pod", "secretive").ok()?;
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(waiting)
    });
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("secret \"db\" not found")),
        "{waiting}"
    );
}
