//! Running the real gannet-cni binary as a container runtime does: environment, configuration
//! on stdin, the result on stdout.

use std::{io::Write as _, process::Command, time::Duration};

use serde_json::Value;

use crate::{Netns, bin_path, spawn};

/// Runs gannet-cni `command` in the `node` namespace for the pod namespace `pod`, with
/// `CNI_ARGS` naming the pod `default/<container>`; panics unless it succeeds. Returns the
/// result (`Null` for verbs without one).
pub fn cni(node: &Netns, pod: &Netns, command: &str, container: &str, conf: &Value) -> Value {
    let output = cni_output(node, pod, command, container, conf);
    assert!(
        output.status.success(),
        "gannet-cni {command} for {container} failed: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.stdout.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&output.stdout).expect("gannet-cni result is JSON")
}

/// Like [`cni`], whether it succeeds or not: what gannet-cni exited with and printed.
pub fn cni_output(
    node: &Netns,
    pod: &Netns,
    command: &str,
    container: &str,
    conf: &Value,
) -> std::process::Output {
    let mut cmd = Command::new(bin_path("gannet-cni"));
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"),
        );
    let mut child = spawn(cmd, Some(node), None).expect("starting gannet-cni");
    child
        .stdin()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("writing the config");
    child.close_stdin();
    child
        .wait_output(Duration::from_secs(20))
        .expect("gannet-cni exits")
}

/// The first address of a CNI result, without its prefix length.
#[must_use]
pub fn pod_ip(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap_or(cidr).to_owned()
}

/// Sends one request line to gannetd's CNI socket and returns the answer (as gannet-cni does,
/// for tests that speak the protocol themselves).
///
/// # Panics
/// If the socket does not answer within 10 s or the answer is not JSON.
#[must_use]
pub fn ask_agent(socket: &std::path::Path, request: &Value) -> Value {
    use std::io::BufRead as _;
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connecting");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut line = serde_json::to_vec(request).expect("json");
    line.push(b'\n');
    stream.write_all(&line).expect("sending");
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .expect("an answer");
    serde_json::from_str(&answer).expect("a JSON answer")
}
