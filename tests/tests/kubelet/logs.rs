//! `gannetctl logs`, on the node and through gannet-control.

use super::*;

/// `gannetctl logs` reads what the containers wrote from the runtime's log files in gannetd's
/// `--state-dir`: a container's current and previous attempt (`-p`), `--tail`, `--timestamps`,
/// `-f` until the container ends; a pod with two containers needs `-c`. Run elsewhere (a
/// `--state-dir` without the pod), it gets the same from the node's gannetd through
/// gannet-control.
#[test]
fn gannetctl_logs_prints_what_a_container_wrote() {
    if skip_reason().is_some() {
        return;
    }
    let kubelet = KubeletNode::start("kblogs");
    let KubeletNode { agent, plane, .. } = &kubelet;
    plane
        .apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: talker}}\nspec:\n  nodeName: test-node\n  \
             restartPolicy: OnFailure\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
             - name: counter\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'echo start; echo oops >&2; for i in 1 2 3; do echo line $i; done; sleep 1; exit 1']\n  \
             - name: ticker\n    image: {BUSYBOX_IMAGE}\n    \
             command: [/bin/sh, -c, 'echo one; sleep 5; echo two']\n"
        ))
        .unwrap();
    let state_dir = agent.state_dir().display().to_string();
    let logs_from = |dir: &str, args: &[&str]| {
        let mut all = vec!["logs", "talker", "--state-dir", dir];
        all.extend_from_slice(args);
        plane.ctl(&all, None).unwrap()
    };
    let logs = |args: &[&str]| logs_from(&state_dir, args);
    // Another machine: the pod's log files are not there.
    let elsewhere = |args: &[&str]| logs_from("/nonexistent/gannet-state", args);
    let diagnose = || {
        format!(
            "pod talker: {}\n--- gannetd:\n{}",
            plane
                .get_json("pod", "talker")
                .map(|p| p.to_string())
                .unwrap_or_default(),
            agent.logs()
        )
    };
    let status = |pod: &Value, name: &str| {
        pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_default()
    };
    wait("ticker to run", START, diagnose, || {
        let pod = plane.get_json("pod", "talker").ok()?;
        status(&pod, "ticker")["state"]["running"]
            .is_object()
            .then_some(())
    });
    // Follows the ticker from its first line to its end, here and through gannet-control.
    let follower = Command::new(bin_path("gannetctl"))
        .args([
            "--server",
            &plane.addr(),
            "logs",
            "talker",
            "-c",
            "ticker",
            "-f",
        ])
        .args(["--state-dir", "/nonexistent/gannet-state"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = logs(&["-c", "ticker", "-f"]);
    let followed_elsewhere = follower.wait_with_output().unwrap();
    for followed in [followed, followed_elsewhere] {
        assert!(followed.status.success(), "logs -f: {followed:?}");
        assert_eq!(String::from_utf8_lossy(&followed.stdout), "one\ntwo\n");
    }

    let two = logs(&[]);
    assert!(!two.status.success(), "logs without -c: {two:?}");
    let stderr = String::from_utf8_lossy(&two.stderr);
    assert!(
        stderr.contains("choose one of: counter, ticker"),
        "{stderr}"
    );
    wait("counter to be restarted", START, diagnose, || {
        let pod = plane.get_json("pod", "talker").ok()?;
        (status(&pod, "counter")["restartCount"].as_i64()? >= 1).then_some(())
    });
    let previous = logs(&["-c", "counter", "-p"]);
    assert!(previous.status.success(), "logs -p: {previous:?}");
    // Both streams, each in order (the runtime reads them from two pipes: no order between).
    let previous = String::from_utf8_lossy(&previous.stdout).into_owned();
    let stdout: Vec<&str> = previous.lines().filter(|l| *l != "oops").collect();
    assert_eq!(
        stdout,
        ["start", "line 1", "line 2", "line 3"],
        "{previous}"
    );
    assert_eq!(
        previous.lines().filter(|l| *l == "oops").count(),
        1,
        "{previous}"
    );
    assert_eq!(
        String::from_utf8_lossy(&elsewhere(&["-c", "counter", "-p"]).stdout),
        previous,
        "through gannet-control"
    );
    let tail = logs(&["-c", "counter", "-p", "--tail", "1", "--timestamps"]);
    let tail_elsewhere = elsewhere(&["-c", "counter", "-p", "--tail", "1", "--timestamps"]);
    assert_eq!(tail.stdout, tail_elsewhere.stdout, "{tail_elsewhere:?}");
    let tail = String::from_utf8_lossy(&tail.stdout).into_owned();
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 1, "{tail}");
    let (time, rest) = lines[0].split_once(' ').unwrap();
    assert!(time.starts_with("20") && time.ends_with('Z'), "{tail}");
    assert!(rest == "line 3" || rest == "oops", "{tail}");
    // The current attempt writes the same lines (read once it got to its last one).
    wait(
        "the counter's current attempt to log",
        START,
        diagnose,
        || {
            let out = logs(&["-c", "counter"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("line 3")
                .then_some(())
        },
    );
    let missing = logs(&["-c", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("container \"nope\" is not valid"),
        "{missing:?}"
    );
}
