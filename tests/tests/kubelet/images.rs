//! `gannetctl image import --node`: an archive through gannet-control into the node's runtime.

use super::*;

/// `gannetctl image import FILE --node NAME` sends an archive through gannet-control to the node's
/// gannetd, which imports it into its runtime: a pod of that image then runs there, and its log
/// is read back through gannet-control. A node that is not attached, and a file that is not an
/// archive, are refused with their names.
#[test]
fn gannetctl_image_import_reaches_the_node_through_the_control_plane() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kbimage");
    let KubeletNode {
        agent,
        plane,
        containerd,
        ..
    } = &kubelet;
    let image = "gannet.test/imported:2";
    let archive = containerd
        .busybox_archive(image, &["/bin/sh", "-c", "echo imported-ok; sleep 1"])
        .unwrap();
    let archive_text = archive.display().to_string();
    let imported = plane
        .ctl(
            &["image", "import", &archive_text, "--node", "test-node"],
            None,
        )
        .unwrap();
    assert!(imported.status.success(), "{imported:?}\n{}", agent.logs());
    assert_eq!(
        String::from_utf8_lossy(&imported.stdout),
        format!("test-node: imported {image} ({archive_text})\n")
    );
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fresh}}\nspec:\n  nodeName: test-node\n  \
             restartPolicy: Never\n  containers:\n  - name: app\n    image: {image}\n"
        ))
        .unwrap();
    let diagnose = || {
        format!(
            "pod fresh: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "fresh")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    wait(
        "the imported image's pod to succeed",
        START,
        diagnose,
        || {
            let pod = plane.get_json("pod", "fresh").ok()?;
            (pod["status"]["phase"] == "Succeeded").then_some(())
        },
    );
    let logs = plane
        .ctl(
            &["logs", "fresh", "--state-dir", "/nonexistent/gannet-state"],
            None,
        )
        .unwrap();
    assert!(logs.status.success(), "{logs:?}");
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "imported-ok\n",
        "{}",
        agent.logs()
    );

    let elsewhere = plane
        .ctl(
            &["image", "import", &archive_text, "--node", "no-such-node"],
            None,
        )
        .unwrap();
    assert!(!elsewhere.status.success());
    let stderr = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(
        stderr.contains("no-such-node") && stderr.contains("not connected"),
        "{stderr}"
    );
    let garbage = archive.with_file_name("garbage.tar");
    std::fs::write(&garbage, b"this is not a tar archive").unwrap();
    let garbage_text = garbage.display().to_string();
    let refused = plane
        .ctl(
            &["image", "import", &garbage_text, "--node", "test-node"],
            None,
        )
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&garbage_text) && !stderr.contains(".import-"),
        "the error names the administrator's file, not the node's copy: {stderr}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(agent.state_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".import-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "archives left on the node: {leftovers:?}"
    );
}
