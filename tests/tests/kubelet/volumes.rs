//! Volumes: an `emptyDir` two containers share (kept in gannetd's `--state-dir` and removed with
//! the pod), a read-only `hostPath`, a `downwardAPI` file, and a volume kind gannetd does not
//! mount, named.

use super::*;

#[test]
fn containers_share_an_empty_dir_and_read_a_host_path() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbvol");
    let KubeletNode { agent, plane, .. } = &kubelet;
    let host = gannet_testkit::ScratchDir::new("kbvol-host");
    std::fs::create_dir_all(&host.0).unwrap();
    std::fs::write(host.0.join("host.txt"), "from-host\n").unwrap();
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: vols}}\nspec:\n  nodeName: test-node\n  \
             terminationGracePeriodSeconds: 1\n  volumes:\n  - {{name: scratch, emptyDir: {{}}}}\n  \
             - {{name: data, hostPath: {{path: {}, type: Directory}}}}\n  \
             - {{name: info, downwardAPI: {{items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]}}}}\n  \
             containers:\n  \
             - name: writer\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'mkdir -p /scratch/sub; echo shared-ok > /scratch/sub/msg; exec sleep 3600']\n    \
             volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n  \
             - name: reader\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'until cat /shared/msg; do sleep 0.1; done; cat /host/host.txt; \
             cat /info/name; echo; \
             touch /host/x 2>/dev/null || echo ro-ok; exec sleep 3600']\n    \
             volumeMounts:\n    - {{name: scratch, mountPath: /shared, subPath: sub}}\n    \
             - {{name: data, mountPath: /host, readOnly: true}}\n    \
             - {{name: info, mountPath: /info}}\n",
            host.0.display()
        ))
        .unwrap();
    let diagnose = || {
        format!(
            "pod vols: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "vols")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let state_dir = agent.state_dir().display().to_string();
    let read = wait("the reader to read both volumes", START, diagnose, || {
        let out = plane
            .ctl(
                &["logs", "vols", "-c", "reader", "--state-dir", &state_dir],
                None,
            )
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("ro-ok").then_some(text)
    });
    assert_eq!(read, "shared-ok\nfrom-host\nvols\nro-ok\n");
    assert!(
        !host.0.join("x").exists(),
        "the read-only hostPath was written"
    );
    let pod = plane.get_json("pod", "vols").unwrap();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let volume = agent
        .state_dir()
        .join("pods")
        .join(&uid)
        .join("volumes/scratch");
    assert_eq!(
        std::fs::read_to_string(volume.join("sub/msg")).unwrap(),
        "shared-ok\n",
        "the emptyDir is in gannetd's --state-dir"
    );

    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: secretive}}\nspec:\n  nodeName: test-node\n  \
             volumes: [{{name: creds, secret: {{secretName: db}}}}]\n  containers:\n  \
             - name: app\n    image: {BUSYBOX_IMAGE}\n    command: [/bin/sh, -c, 'sleep 3600']\n    \
             volumeMounts: [{{name: creds, mountPath: /creds}}]\n"
        ))
        .unwrap();
    let waiting = wait("the secret volume to be refused", START, diagnose, || {
        let pod = plane.get_json("pod", "secretive").ok()?;
        let waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (waiting["reason"] == "CreateContainerConfigError").then_some(waiting)
    });
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"creds\"") && m.contains("secret volumes")),
        "{waiting}"
    );

    let deleted = plane.ctl(&["delete", "pod", "vols"], None).unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    wait("the pod's volumes to be removed", START, diagnose, || {
        (!agent.state_dir().join("pods").join(&uid).exists()).then_some(())
    });
}
