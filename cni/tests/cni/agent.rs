//! Registration with the agent, against a minimal in-test server speaking `agent_api`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use gannet_cni::agent_api::{Request, RequestBody, Response};
use gannet_testkit::Netns;
use serde_json::{Value, json};

use crate::harness::{Attach, Node, ip};

/// The other side of the wire protocol: records requests, answers per `refuse_register`.
struct FakeAgent {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    fn start(socket: PathBuf, refuse_register: bool) -> FakeAgent {
        let listener = UnixListener::bind(&socket).expect("binding the agent socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    };
                    stream.set_nonblocking(false).expect("blocking");
                    let mut reader = BufReader::new(&stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        continue;
                    }
                    let response = match serde_json::from_str::<Request>(&line) {
                        Ok(request) => {
                            let refuse = refuse_register
                                && matches!(request.body, RequestBody::Register { .. });
                            requests.lock().expect("lock").push(request);
                            if refuse {
                                Response::error("no room")
                            } else {
                                Response::ok()
                            }
                        }
                        Err(e) => Response::error(format!("bad request: {e}")),
                    };
                    let mut out = serde_json::to_vec(&response).expect("json");
                    out.push(b'\n');
                    let _ = (&stream).write_all(&out);
                }
            })
        };
        FakeAgent {
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn conf_with_agent(node: &Node, socket: &PathBuf) -> Value {
    let mut conf = node.config("1.1.0", &["10.90.0.0/24", "fd90::/64"]);
    conf["agentSocket"] = json!(socket);
    conf
}

#[test]
fn add_registers_and_del_unregisters() {
    let node = Node::new();
    let socket = node.path().join("agent.sock");
    let agent = FakeAgent::start(socket.clone(), false);
    let conf = conf_with_agent(&node, &socket);
    let pod = Netns::new("pod").expect("pod");
    let mut att = Attach::new("reg1", &pod);
    att.args =
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=reg1"
            .into();
    node.exec("gannet-cni", "STATUS", None, &conf)
        .expect_ok("STATUS with the agent up");
    let result = node
        .exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD");
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let index: u32 = ip(&node.ns, &["-o", "link", "show", &host_if])
        .split(':')
        .next()
        .expect("index")
        .trim()
        .parse()
        .expect("number");

    let requests = agent.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests.iter().all(|r| r.api_version == 1));
    assert_eq!(requests[0].body, RequestBody::Status);
    assert_eq!(requests[1].body, RequestBody::Status, "ADD asks first");
    let RequestBody::Register { endpoint } = &requests[2].body else {
        panic!("third request is not Register: {requests:?}");
    };
    assert_eq!(endpoint.network, "gnet");
    assert_eq!(endpoint.container_id, "reg1");
    assert_eq!(endpoint.if_name, "eth0");
    assert_eq!(endpoint.netns, pod.path());
    assert_eq!(
        endpoint
            .ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.90.0.1/32", "fd90::1/128"]
    );
    assert_eq!(endpoint.host_if_name, host_if);
    assert_eq!(endpoint.host_if_index, index, "the host veth's ifindex");
    assert_eq!(
        endpoint.host_mac,
        result["interfaces"][0]["mac"].as_str().expect("mac")
    );
    assert_eq!(
        endpoint.mac,
        result["interfaces"][1]["mac"].as_str().expect("mac")
    );
    assert_eq!(endpoint.pod_namespace.as_deref(), Some("shop"));
    assert_eq!(endpoint.pod_name.as_deref(), Some("web-0"));

    node.exec("gannet-cni", "DEL", Some(&att), &conf)
        .expect_ok("DEL");
    let requests = agent.requests();
    assert_eq!(
        requests.last().map(|r| &r.body),
        Some(&RequestBody::Unregister {
            network: "gnet".into(),
            container_id: "reg1".into(),
            if_name: "eth0".into()
        }),
        "{requests:?}"
    );
}

#[test]
fn without_the_agent_status_is_50_and_add_is_11_creating_nothing() {
    let node = Node::new();
    let socket = node.path().join("absent.sock");
    let conf = conf_with_agent(&node, &socket);
    let pod = Netns::new("pod").expect("pod");
    let att = Attach::new("early", &pod);
    node.exec("gannet-cni", "STATUS", None, &conf).expect_error(
        50,
        &["agent", "absent.sock"],
        "STATUS without agent",
    );
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_error(11, &["agent", "absent.sock"], "ADD without agent");
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(node.allocations("gnet").is_empty());
    assert!(!ip(&pod, &["-o", "link", "show"]).contains("eth0"));
    // DEL still works (best effort) without the agent.
    node.exec("gannet-cni", "DEL", Some(&att), &conf)
        .expect_ok("DEL without agent");

    // The agent comes up: the same ADD succeeds.
    let _agent = FakeAgent::start(socket.clone(), false);
    node.exec("gannet-cni", "STATUS", None, &conf)
        .expect_ok("STATUS");
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_ok("ADD once the agent is up");
}

#[test]
fn a_refused_registration_rolls_the_add_back() {
    let node = Node::new();
    let socket = node.path().join("agent.sock");
    let agent = FakeAgent::start(socket.clone(), true);
    let conf = conf_with_agent(&node, &socket);
    let pod = Netns::new("pod").expect("pod");
    let att = Attach::new("refused", &pod);
    node.exec("gannet-cni", "ADD", Some(&att), &conf)
        .expect_error(103, &["no room"], "refused registration");
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(
        node.allocations("gnet").is_empty(),
        "{:?}",
        node.allocations("gnet")
    );
    assert!(
        agent
            .requests()
            .iter()
            .any(|r| matches!(r.body, RequestBody::Register { .. }))
    );
}
