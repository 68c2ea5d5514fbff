//! The built-in IPAM under load and under `SIGKILL`, and the delegation to `host-local`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use gannet_testkit::Netns;
use serde_json::{Value, json};

use crate::harness::{Attach, GANNET, Node, ip};

fn addr(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned()
}

#[test]
fn hundred_concurrent_adds_get_distinct_addresses() {
    const PODS: usize = 100;
    let node = Node::new();
    let conf = node.config("1.0.0", &["10.70.0.0/24"]);
    let pods: Vec<Netns> = (0..PODS)
        .map(|_| Netns::new("p").expect("pod netns"))
        .collect();
    let atts: Vec<Attach> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Attach::new(&format!("c{i}"), p))
        .collect();
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = atts
            .iter()
            .map(|att| {
                scope.spawn(|| {
                    node.exec("gannet-cni", "ADD", Some(att), &conf)
                        .expect_ok("concurrent ADD")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    let addresses: HashSet<String> = results.iter().map(addr).collect();
    assert_eq!(
        addresses.len(),
        PODS,
        "duplicate addresses among {results:?}"
    );
    assert_eq!(node.allocations("gnet").len(), PODS);
    assert_eq!(node.host_veths().len(), PODS);
    std::thread::scope(|scope| {
        for att in &atts {
            scope.spawn(|| {
                node.exec("gannet-cni", "DEL", Some(att), &conf)
                    .expect_ok("concurrent DEL")
            });
        }
    });
    assert!(
        node.allocations("gnet").is_empty(),
        "{:?}",
        node.allocations("gnet")
    );
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    // The per-attachment index went with the records.
    let index: Vec<String> = std::fs::read_dir(node.store("gnet").join("attachments"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        index.is_empty(),
        "index entries left after every DEL: {index:?}"
    );
    node.wait_for_tombstones(&pods.iter().collect::<Vec<_>>());
}

#[test]
fn pool_exhaustion_is_a_clear_error_and_creates_nothing() {
    let node = Node::new();
    let conf = node.config("1.1.0", &["10.71.0.0/29"]);
    let pods: Vec<Netns> = (0..7).map(|_| Netns::new("p").expect("pod")).collect();
    for (i, pod) in pods.iter().enumerate().take(6) {
        let result = node
            .exec(
                "gannet-cni",
                "ADD",
                Some(&Attach::new(&format!("x{i}"), pod)),
                &conf,
            )
            .expect_ok("ADD");
        assert_eq!(addr(&result), format!("10.71.0.{}/32", i + 1));
    }
    let last = Attach::new("x6", &pods[6]);
    node.exec("gannet-cni", "ADD", Some(&last), &conf)
        .expect_error(
            100,
            &["IP pool exhausted", "10.71.0.0/29", "6 addresses allocated"],
            "seventh ADD in a /29",
        );
    assert_eq!(
        node.host_veths().len(),
        6,
        "the failed ADD left an interface"
    );
    assert!(!ip(&pods[6], &["-o", "link", "show"]).contains("eth0"));
    node.exec(
        "gannet-cni",
        "DEL",
        Some(&Attach::new("x2", &pods[2])),
        &conf,
    )
    .expect_ok("DEL");
    let result = node
        .exec("gannet-cni", "ADD", Some(&last), &conf)
        .expect_ok("ADD after a DEL");
    assert_eq!(addr(&result), "10.71.0.3/32", "the freed address is reused");
}

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "the plugin never reached {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_during_add_then_gc_leaks_and_doubles_nothing() {
    let node = Node::new();
    let conf = node.config("1.1.0", &["10.72.0.0/24"]);
    let keep_pod = Netns::new("keep").expect("pod");
    let keep = Attach::new("keep", &keep_pod);
    let kept = node
        .exec("gannet-cni", "ADD", Some(&keep), &conf)
        .expect_ok("ADD keep");

    // Killed with the address reserved but no link yet, and with the veth pair created.
    let mut killed = Vec::new();
    for point in ["after-ipam", "after-veth"] {
        let pod = Netns::new("kill").expect("pod");
        let att = Attach::new(point, &pod);
        let marker = node.path().join(point);
        let mut child = node.spawn_gannet(
            "ADD",
            &att,
            &conf,
            &[(
                gannet_cni::plugin::PAUSE_ENV,
                &format!("{point}:{}", marker.display()),
            )],
        );
        wait_for(&marker);
        child.kill(libc::SIGKILL).expect("SIGKILL");
        let status = child
            .wait_output(Duration::from_secs(10))
            .expect("reaped")
            .status;
        assert!(!status.success(), "{point}: {status}");
        killed.push((pod, att));
    }
    assert_eq!(
        node.allocations("gnet").len(),
        3,
        "the killed ADDs hold their addresses"
    );
    assert_eq!(
        node.host_veths().len(),
        2,
        "the ADD killed after-veth left its pair"
    );

    // The runtime retries the second ADD: same address, the leftover pair replaced.
    let (_, retried) = &killed[1];
    let before: Vec<(String, String)> = node.allocations("gnet");
    let again = node
        .exec("gannet-cni", "ADD", Some(retried), &conf)
        .expect_ok("retried ADD");
    let held = before
        .iter()
        .find(|(_, id)| id == "after-veth")
        .expect("record of the killed ADD");
    assert_eq!(
        addr(&again),
        format!("{}/32", held.0),
        "a retried ADD reuses its reservation"
    );
    assert_eq!(
        node.allocations("gnet").len(),
        3,
        "no second address for the retried attachment"
    );

    // GC with the attachments the runtime still knows: the first killed ADD is reclaimed.
    node.gc(&conf, &[&keep, retried]).expect_ok("GC");
    let left: Vec<String> = node
        .allocations("gnet")
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    let ids: HashSet<String> = left.into_iter().collect();
    assert_eq!(
        ids,
        HashSet::from(["keep".to_owned(), "after-veth".to_owned()])
    );

    // Kills at arbitrary moments: afterwards GC restores a consistent store.
    let pods: Vec<Netns> = (0..12).map(|_| Netns::new("rk").expect("pod")).collect();
    for (i, pod) in pods.iter().enumerate() {
        let att = Attach::new(&format!("rand{i}"), pod);
        let mut child = node.spawn_gannet("ADD", &att, &conf, &[]);
        // Spread the kills over the plugin's few milliseconds of work.
        std::thread::sleep(Duration::from_micros(500 * (i as u64 % 8)));
        child.kill(libc::SIGKILL).expect("SIGKILL");
        let _ = child.wait_output(Duration::from_secs(10));
    }
    node.gc(&conf, &[&keep]).expect_ok("GC after random kills");
    let left: Vec<(String, String)> = node.allocations("gnet");
    assert_eq!(left.len(), 1, "only keep's address stays: {left:?}");
    let mut index: Vec<String> = std::fs::read_dir(node.store("gnet").join("attachments"))
        .expect("index directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    index.sort();
    assert_eq!(
        index,
        ["keep:eth0"],
        "GC leaves the index matching the records"
    );
    assert_eq!(format!("{}/32", left[0].0), addr(&kept));
    assert_eq!(
        node.host_veths().len(),
        1,
        "only keep's interface stays: {:?}",
        node.host_veths()
    );
    let stray: Vec<String> = std::fs::read_dir(node.store("gnet"))
        .expect("store")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary records left: {stray:?}");
    // And the pool hands out fresh, distinct addresses again.
    let fresh: HashSet<String> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            addr(
                &node
                    .exec(
                        "gannet-cni",
                        "ADD",
                        Some(&Attach::new(&format!("new{i}"), pod)),
                        &conf,
                    )
                    .expect_ok("ADD after GC"),
            )
        })
        .collect();
    assert_eq!(fresh.len(), pods.len());
    assert!(
        !fresh.contains(&addr(&kept)),
        "an address was handed out twice"
    );
}

#[test]
fn host_local_is_delegated_to() {
    let node = Node::new();
    let pod = Netns::new("pod").expect("pod");
    let data = node.path().join("host-local");
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": "hlnet",
        "type": "gannet-cni",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.73.0.0/24"}]], "dataDir": data},
    });
    let att = Attach::new("hl", &pod);
    // host-local 1.1.1 speaks up to 1.0.0: the delegation negotiates down, our result is 1.1.0.
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD via host-local");
    assert_eq!(result["cniVersion"], "1.1.0");
    assert_eq!(
        addr(&result),
        "10.73.0.2/32",
        "host-local's first address: {result}"
    );
    assert!(
        data.join("hlnet").join("10.73.0.2").exists(),
        "host-local's record"
    );
    assert!(ip(&pod, &["addr", "show", "eth0"]).contains("10.73.0.2/32"));
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result;
    node.exec("gannet-cni", "CHECK", Some(&att), &with_prev)
        .expect_ok("CHECK via host-local");
    node.exec("gannet-cni", "GC", None, &json!({"cniVersion": "1.1.0", "name": "hlnet", "type": "gannet-cni", "ipam": conf["ipam"], "cni.dev/valid-attachments": [{"containerID": "hl", "ifname": "eth0"}]})).expect_ok("GC with a pre-1.1 IPAM");
    node.exec("gannet-cni", "DEL", Some(&att), &with_prev)
        .expect_ok("DEL via host-local");
    assert!(
        !data.join("hlnet").join("10.73.0.2").exists(),
        "host-local released the address"
    );
    assert!(node.host_veths().is_empty());
}

#[test]
fn install_places_binary_and_conflist_and_logs_go_to_the_log_file() {
    let node = Node::new();
    let bin = node.path().join("opt-cni-bin");
    let confdir = node.path().join("etc-cni-net.d");
    let run = || {
        let out = std::process::Command::new(GANNET)
            .args(["install", "--bin-dir"])
            .arg(&bin)
            .arg("--conf-dir")
            .arg(&confdir)
            .env_remove("CNI_COMMAND")
            .output()
            .expect("install");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(first.contains("wrote"), "{first}");
    let installed = bin.join("gannet-cni");
    assert_eq!(
        std::fs::read(&installed).expect("installed binary"),
        std::fs::read(GANNET).expect("built binary")
    );
    let conflist: Value = serde_json::from_str(
        &std::fs::read_to_string(confdir.join("10-gannet.conflist")).expect("conflist"),
    )
    .expect("JSON");
    assert_eq!(conflist["plugins"][0]["type"], "gannet-cni");
    // By default the conflist works with gannetd's defaults on this node.
    assert_eq!(
        conflist["plugins"][0]["agentSocket"], "/run/gannet/cni.sock",
        "{conflist}"
    );
    assert_eq!(
        conflist["plugins"][0]["subnetFile"], "/run/gannet/subnet.env",
        "{conflist}"
    );
    assert!(
        conflist["cniVersions"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    );
    std::fs::write(confdir.join("10-gannet.conflist"), "{\"mine\":1}").expect("edit");
    assert!(run().contains("kept"), "an existing conflist is kept");

    // Log file option.
    let pod = Netns::new("pod").expect("pod");
    let log = node.path().join("cni.log");
    let mut conf = node.config("1.0.0", &["10.74.0.0/24"]);
    conf["logFile"] = json!(log);
    let att = Attach::new("logged", &pod);
    let reply = node.exec("gannet-cni", "ADD", Some(&att), &conf);
    reply.expect_ok("ADD");
    assert!(
        reply.stdout.lines().count() == 1,
        "stdout holds only the result: {:?}",
        reply.stdout
    );
    let text = std::fs::read_to_string(&log).expect("log file");
    assert!(
        text.contains("pod interface ready") && text.contains("logged"),
        "{text}"
    );
}
