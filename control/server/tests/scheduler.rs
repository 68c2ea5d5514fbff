//! The scheduler end to end: nodes registered through the API as gannetd registers them, Pods
//! applied without `spec.nodeName`, the bindings and `PodScheduled` conditions read back.

#![expect(
    unused_crate_dependencies,
    reason = "a test binary links every dependency of the package"
)]

mod common;

use std::time::Duration;

use common::{Plane, embedded, eventually, object, test_options};
use gannet_api::{Client, ClientError, Kind, NodeRegistration, NodeResources, Object};
use gannet_control::controller::nodes::Lifecycle;
use k8s_openapi::api::core::v1::{Node, Pod};

const WAIT: Duration = Duration::from_secs(10);

/// Registers `name` with `cpus` CPUs and `gib` GiB as capacity and allocatable (`None`: as an
/// agent that tells neither).
async fn register(
    client: &mut Client,
    name: &str,
    resources: Option<(u64, u64)>,
    labels: &[(&str, &str)],
) -> Node {
    let resources = resources.map(|(cpus, gib)| NodeResources {
        cpu_millicores: cpus * 1000,
        memory_bytes: gib << 30,
    });
    client
        .register_node(&NodeRegistration {
            name: name.to_owned(),
            internal_ips: vec!["192.0.2.10".parse().expect("ip")],
            vtep_mac: None,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            capacity: resources,
            allocatable: resources,
        })
        .await
        .unwrap_or_else(|error| panic!("registering {name}: {error}"))
        .node
}

/// A Pod of one container requesting `cpu` (and 64Mi), with `extra` spec lines.
fn pod(name: &str, cpu: &str, extra: &str) -> Object {
    object(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec:
{extra}
  containers:
  - name: main
    image: busybox
    resources:
      requests: {{cpu: \"{cpu}\", memory: 64Mi}}
"
    ))
}

async fn get_pod(client: &mut Client, name: &str) -> Pod {
    match client.get(Kind::Pod, "default", name).await {
        Ok(Object::Pod(pod)) => *pod,
        other => panic!("Pod default/{name}: {other:?}"),
    }
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref()?.node_name.clone()
}

/// The `PodScheduled` condition: (status, reason, message).
fn scheduled(pod: &Pod) -> Option<(String, Option<String>, Option<String>)> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the Pod is bound; returns its node, checking `PodScheduled=True` came with it.
async fn wait_bound(client: &Client, name: &str) -> String {
    let pod = eventually(&format!("Pod {name} bound"), WAIT, || {
        let mut client = client.clone();
        async move {
            let pod = get_pod(&mut client, name).await;
            node_of(&pod).is_some().then_some(pod)
        }
    })
    .await;
    let condition = eventually(&format!("Pod {name} PodScheduled=True"), WAIT, || {
        let mut client = client.clone();
        async move {
            scheduled(&get_pod(&mut client, name).await).filter(|(status, _, _)| status == "True")
        }
    })
    .await;
    assert_eq!(condition.1, None, "no reason on a scheduled pod: {pod:?}");
    node_of(&pod).expect("bound")
}

/// Waits until the Pod is marked unschedulable with `message`, and checks it is still unbound.
async fn wait_unschedulable(client: &Client, name: &str, message: &str) {
    let seen = eventually(
        &format!("Pod {name} PodScheduled=False: {message}"),
        WAIT,
        || {
            let mut client = client.clone();
            async move {
                let pod = get_pod(&mut client, name).await;
                let condition = scheduled(&pod)?;
                (condition.0 == "False" && condition.2.as_deref() == Some(message)).then_some(pod)
            }
        },
    )
    .await;
    let condition = scheduled(&seen).expect("the condition");
    assert_eq!(condition.1.as_deref(), Some("Unschedulable"), "{seen:?}");
    assert_eq!(node_of(&seen), None, "an unschedulable pod stays unbound");
    assert_eq!(
        seen.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
}

#[tokio::test]
async fn a_pod_goes_to_the_only_ready_node_never_to_a_not_ready_one_and_stays_there() {
    let (store, _dir) = embedded();
    let mut options = test_options();
    options.lifecycle = Lifecycle {
        period: Duration::from_millis(100),
        grace: Duration::from_millis(1500),
        release_grace: Duration::from_secs(3600),
    };
    let plane = Plane::start(store, options).await;
    let mut client = plane.client().await;
    // The larger node, first by name, goes silent: NotReady through the lifecycle controller.
    let registered = register(&mut client, "a-silent", Some((64, 256)), &[]).await;
    let allocatable = registered
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .expect("allocatable registered");
    assert_eq!(allocatable["cpu"].0, "64");
    assert_eq!(allocatable["memory"].0, "268435456Ki");
    eventually("a-silent NotReady", WAIT, || {
        let mut client = client.clone();
        async move {
            let Object::Node(node) = client.get(Kind::Node, "", "a-silent").await.ok()? else {
                return None;
            };
            node.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "Unknown")
                .then_some(())
        }
    })
    .await;
    register(&mut client, "b-ready", Some((2, 4)), &[]).await;
    let heartbeats = {
        let mut client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.heartbeat("b-ready").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    client
        .apply(&[pod("web", "100m", "")], false)
        .await
        .expect("apply web");
    assert_eq!(wait_bound(&client, "web").await, "b-ready");

    // Bound once: the manifest applied again keeps the node, another node is refused.
    client
        .apply(&[pod("web", "100m", "")], false)
        .await
        .expect("apply web again");
    assert_eq!(
        node_of(&get_pod(&mut client, "web").await).as_deref(),
        Some("b-ready")
    );
    match client
        .apply(&[pod("web", "100m", "  nodeName: a-silent")], false)
        .await
    {
        Err(ClientError::Invalid(problems)) => {
            assert_eq!(problems[0].field.as_deref(), Some("spec.nodeName"));
            assert!(
                problems[0].message.contains("bound to b-ready"),
                "{problems:?}"
            );
        }
        other => panic!("moving a bound pod must be refused, got {other:?}"),
    }
    heartbeats.abort();
}

#[tokio::test]
async fn node_selector_picks_among_labelled_nodes() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let hdd = register(&mut client, "n1", Some((16, 64)), &[("disk", "hdd")]).await;
    let labels = hdd.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some("n1")
    );
    register(&mut client, "n2", Some((2, 4)), &[("disk", "ssd")]).await;
    client
        .apply(
            &[
                pod("fast", "100m", "  nodeSelector: {disk: ssd}"),
                pod("nowhere", "100m", "  nodeSelector: {disk: nvme}"),
                pod("anywhere", "100m", ""),
            ],
            false,
        )
        .await
        .expect("apply");
    assert_eq!(wait_bound(&client, "fast").await, "n2");
    assert_eq!(
        wait_bound(&client, "anywhere").await,
        "n1",
        "without a selector the least allocated node"
    );
    wait_unschedulable(
        &client,
        "nowhere",
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.",
    )
    .await;
    // A node with the label arrives: the waiting pod goes there.
    register(&mut client, "n3", Some((1, 1)), &[("disk", "nvme")]).await;
    assert_eq!(wait_bound(&client, "nowhere").await, "n3");
}

#[tokio::test]
async fn the_least_allocated_node_wins_counting_bound_pods_that_have_not_finished() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    register(&mut client, "n1", Some((2, 4)), &[]).await;
    register(&mut client, "n2", Some((2, 4)), &[]).await;
    let finished: Object = {
        let Object::Pod(mut done) = pod("done", "2", "  nodeName: n2") else {
            unreachable!("a Pod")
        };
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".to_owned()),
            ..Default::default()
        });
        Object::Pod(done)
    };
    client
        .apply(&[pod("busy", "1", "  nodeName: n1"), finished], false)
        .await
        .expect("apply the bound pods");
    client
        .apply(&[pod("second", "500m", "")], false)
        .await
        .expect("apply second");
    assert_eq!(
        wait_bound(&client, "second").await,
        "n2",
        "n1 has 1 CPU requested by a running pod; n2's finished pod does not count"
    );
    // n1: 1 CPU of 2 taken; n2: 0.5: a pod of 1 CPU still fits either, n2 is less allocated.
    client
        .apply(&[pod("third", "1", "")], false)
        .await
        .expect("apply third");
    assert_eq!(wait_bound(&client, "third").await, "n2");
    // Now n2 has 1.5 CPU taken: 750m only fits n1.
    client
        .apply(&[pod("fourth", "750m", "")], false)
        .await
        .expect("apply fourth");
    assert_eq!(wait_bound(&client, "fourth").await, "n1");
}

#[tokio::test]
async fn a_pod_asking_too_much_stays_pending_with_the_reason_until_a_big_enough_node_comes() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    register(&mut client, "small", Some((2, 4)), &[]).await;
    client
        .apply(&[pod("huge", "3", "")], false)
        .await
        .expect("apply huge");
    wait_unschedulable(
        &client,
        "huge",
        "0/1 nodes are available: 1 Insufficient cpu.",
    )
    .await;
    // An agent that registers no resources takes no scheduled pods.
    register(&mut client, "legacy", None, &[]).await;
    wait_unschedulable(
        &client,
        "huge",
        "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had no allocatable resources registered.",
    )
    .await;
    register(&mut client, "big", Some((4, 8)), &[]).await;
    assert_eq!(wait_bound(&client, "huge").await, "big");

    // Pods arriving together are counted against each other: 3 CPUs are left (2 on small, 1 on
    // big), so of four 1-CPU pods the last (oldest first, then by name) waits.
    let batch: Vec<Object> = (1..=4).map(|i| pod(&format!("c{i}"), "1", "")).collect();
    client.apply(&batch, false).await.expect("apply c1..c4");
    let mut placed = Vec::new();
    for name in ["c1", "c2", "c3"] {
        placed.push(wait_bound(&client, name).await);
    }
    placed.sort();
    assert_eq!(placed, ["big", "small", "small"]);
    wait_unschedulable(
        &client,
        "c4",
        "0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had no allocatable resources registered.",
    )
    .await;

    // A pod for the node without allocatable resources waits, until gannet-cni's report from
    // that node binds it (as on a network-only node): then it is scheduled after all.
    client
        .apply(
            &[pod(
                "on-legacy",
                "100m",
                "  nodeSelector: {kubernetes.io/hostname: legacy}",
            )],
            false,
        )
        .await
        .expect("apply on-legacy");
    wait_unschedulable(
        &client,
        "on-legacy",
        "0/3 nodes are available: 2 node(s) didn't match Pod's node affinity/selector, 1 node(s) had no allocatable resources registered.",
    )
    .await;
    let mut reported = get_pod(&mut client, "on-legacy").await;
    reported.spec.get_or_insert_with(Default::default).node_name = Some("legacy".to_owned());
    client
        .update_status(&Object::Pod(Box::new(reported)))
        .await
        .expect("the node's status report binds the pod");
    assert_eq!(wait_bound(&client, "on-legacy").await, "legacy");

    // A bad quantity is refused at the door, naming the pod's field.
    match client.apply(&[pod("typo", "1 cpu", "")], false).await {
        Err(ClientError::Invalid(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].object, "Pod default/typo");
            assert_eq!(
                problems[0].field.as_deref(),
                Some("spec.containers[0].resources.requests.cpu")
            );
        }
        other => panic!("a bad quantity must be refused, got {other:?}"),
    }
}
