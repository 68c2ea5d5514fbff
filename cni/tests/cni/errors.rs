//! Malformed stdin or environment → the spec's error code, naming the field or variable.

use gannet_testkit::Netns;
use serde_json::json;

use crate::harness::{Attach, Node};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn malformed_input_gets_the_specs_codes() {
    let node = Node::new();
    let pod = Netns::new("pod").expect("pod");
    let netns = pod.path().display().to_string();
    let full = |command: &str| {
        env(&[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &node.cni_path),
        ])
    };
    let conf = node.config("1.0.0", &["10.30.0.0/24"]).to_string();
    let run =
        |env: &[(String, String)], stdin: &str| node.exec_raw("gannet-cni", env, stdin.as_bytes());

    // Environment.
    run(&env(&[("CNI_COMMAND", "ADD")]), &conf).expect_error(
        4,
        &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        "ADD without variables",
    );
    run(&env(&[]), &conf).expect_error(4, &["CNI_COMMAND"], "no CNI_COMMAND");
    run(&env(&[("CNI_COMMAND", "FROB")]), &conf).expect_error(
        4,
        &["CNI_COMMAND", "FROB"],
        "unknown verb",
    );
    let mut bad = full("ADD");
    bad[3].1 = "much-too-long-interface".into();
    run(&bad, &conf).expect_error(4, &["CNI_IFNAME"], "long ifname");
    let mut bad = full("ADD");
    bad[1].1 = "../etc".into();
    run(&bad, &conf).expect_error(4, &["CNI_CONTAINERID"], "bad container id");
    let mut bad = full("ADD");
    bad.push(("CNI_ARGS".into(), "K8S_POD_NAME".into()));
    run(&bad, &conf).expect_error(4, &["CNI_ARGS"], "CNI_ARGS without =");
    let mut bad = full("ADD");
    bad[2].1 = "/nonexistent/netns".into();
    run(&bad, &conf).expect_error(4, &["CNI_NETNS", "/nonexistent/netns"], "missing netns");

    // Stdin.
    run(&full("ADD"), "{not json").expect_error(6, &["not valid JSON"], "garbage");
    run(&full("ADD"), "").expect_error(6, &["not valid JSON"], "empty stdin");
    run(&full("ADD"), r#"{"name":"n"}"#).expect_error(6, &["cniVersion"], "no version");
    run(&full("ADD"), r#"{"cniVersion":"0.2.0","name":"n"}"#).expect_error(
        1,
        &["0.2.0"],
        "old version",
    );
    run(
        &full("ADD"),
        r#"{"cniVersion":"1.0.0","type":"gannet-cni"}"#,
    )
    .expect_error(7, &["name"], "no name");
    run(&full("ADD"), r#"{"cniVersion":"1.0.0","name":"bad name!"}"#).expect_error(
        7,
        &["name"],
        "bad name",
    );
    run(
        &full("ADD"),
        r#"{"cniVersion":"1.0.0","name":"n","mtu":"big"}"#,
    )
    .expect_error(6, &["mtu"], "mtu type");
    run(
        &full("ADD"),
        r#"{"cniVersion":"1.0.0","name":"n","ipMasq":true}"#,
    )
    .expect_error(2, &["ipMasq", "true"], "unsupported field");
    let ranges = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.1.0.9"}]]}});
    run(&full("ADD"), &ranges.to_string()).expect_error(
        7,
        &["ipam.ranges[0][0].rangeEnd", "10.1.0.9"],
        "range outside subnet",
    );
    let ranges = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.0.0.0/99"}});
    run(&full("ADD"), &ranges.to_string()).expect_error(6, &["ipam.subnet"], "bad subnet");
    let prev = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"subnet": "10.0.0.0/24"}, "prevResult": {"ips": [{"address": "x"}]}});
    run(&full("CHECK"), &prev.to_string()).expect_error(
        6,
        &["prevResult", "ips[0].address"],
        "bad prevResult",
    );
    run(&full("CHECK"), &conf).expect_error(7, &["prevResult"], "CHECK without prevResult");
    // The delegate must exist.
    let delegated = json!({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "no-such-ipam"}});
    run(&full("ADD"), &delegated.to_string()).expect_error(
        7,
        &["no-such-ipam", "ipam.type"],
        "missing delegate",
    );
    // Nothing was created by any of this.
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    let _ = Attach::new("unused", &pod);
}

/// A subnet file the agent has not written yet: ADD waits for it (`subnetFileWaitSeconds`) and
/// then says try again later; STATUS says unavailable at once; a file written while ADD waits is
/// used.
#[test]
fn missing_subnet_file_is_transient() {
    let node = Node::new();
    let pod = Netns::new("pod").expect("pod");
    let file = node.path().join("subnet.env");
    let impatient = json!({
        "cniVersion": "1.1.0", "name": "gnet", "type": "gannet-cni",
        "subnetFile": file, "subnetFileWaitSeconds": 1, "ipam": {"dataDir": node.path().join("ipam")},
    });
    let conf = json!({
        "cniVersion": "1.1.0", "name": "gnet", "type": "gannet-cni",
        "subnetFile": file, "ipam": {"dataDir": node.path().join("ipam")},
    });
    let att = Attach::new("early", &pod);
    node.exec("gannet-cni", "ADD", Some(&att), &impatient)
        .expect_error(
            11,
            &["subnet.env", "after waiting 1 s"],
            "ADD before the subnet file",
        );
    node.exec("gannet-cni", "STATUS", None, &conf).expect_error(
        50,
        &["subnet.env"],
        "STATUS before the subnet file",
    );
    // The agent writes the file while ADD waits (default: up to 10 s).
    let writer = {
        let file = file.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            std::fs::write(&file, "FLANNEL_NETWORK=10.40.0.0/16\nFLANNEL_SUBNET=10.40.3.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n").expect("write");
        })
    };
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD waiting for the subnet file");
    writer.join().expect("writer");
    node.exec("gannet-cni", "STATUS", None, &conf)
        .expect_ok("STATUS");
    assert_eq!(
        result["ips"][0]["address"], "10.40.3.2/32",
        "skips the flannel gateway .1: {result}"
    );
    assert_eq!(result["interfaces"][1]["mtu"], 1400);
    let link = pod.ip(&["link", "show", "eth0"]).expect("link");
    assert!(link.contains("mtu 1400"), "{link}");
    std::fs::write(&file, "FLANNEL_SUBNET=bogus\n").expect("write");
    node.exec("gannet-cni", "STATUS", None, &conf).expect_error(
        50,
        &["FLANNEL_SUBNET", "line 1"],
        "STATUS with a broken file",
    );
}
