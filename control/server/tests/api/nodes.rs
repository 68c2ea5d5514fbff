//! Nodes: pod CIDR leases, heartbeats and their Lease objects, readiness and release.

use super::*;

fn pod_cidrs(node: &Node) -> Vec<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
}

fn ready(node: &Object) -> Option<String> {
    let Object::Node(node) = node else {
        return None;
    };
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test]
async fn node_leases_heartbeats_and_release_after_grace() {
    let (store, _dir) = embedded();
    let mut options = test_options();
    options
        .network
        .pod_networks
        .push(gannet_control::alloc::PodNetwork {
            cidr: "fd00:10:244::/56".parse().expect("cidr"),
            node_prefix: 64,
        });
    options.lifecycle = Lifecycle {
        period: Duration::from_millis(100),
        grace: Duration::from_millis(1500),
        release_grace: Duration::from_millis(1500),
    };
    let plane = Plane::start(store, options).await;
    let mut client = plane.client().await;
    let registration = |name: &str| NodeRegistration {
        name: name.to_owned(),
        internal_ips: vec!["192.0.2.10".parse().expect("ip")],
        vtep_mac: Some("02:42:ac:11:00:02".to_owned()),
        labels: Default::default(),
        capacity: None,
        allocatable: None,
    };
    let n1 = client
        .register_node(&registration("n1"))
        .await
        .expect("register n1");
    assert_eq!(n1.pod_cidrs, vec!["10.244.0.0/24", "fd00:10:244::/64"]);
    let n2 = client
        .register_node(&registration("n2"))
        .await
        .expect("register n2");
    assert_eq!(n2.pod_cidrs, vec!["10.244.1.0/24", "fd00:10:244:1::/64"]);
    let again = client
        .register_node(&registration("n1"))
        .await
        .expect("re-register n1");
    assert_eq!(
        again.pod_cidrs, n1.pod_cidrs,
        "the same node gets its lease back"
    );
    assert_eq!(
        n1.node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("gannet.io/vtep-mac"))
            .map(String::as_str),
        Some("02:42:ac:11:00:02")
    );
    assert!(matches!(
        client.heartbeat("ghost").await,
        Err(ClientError::NotFound(_))
    ));
    match client
        .register_node(&NodeRegistration {
            vtep_mac: Some("nope".to_owned()),
            ..registration("n9")
        })
        .await
    {
        Err(ClientError::Invalid(problems)) => {
            assert_eq!(problems[0].field.as_deref(), Some("vtep_mac"));
        }
        other => panic!("expected an invalid MAC, got {other:?}"),
    }

    // n2 keeps sending heartbeats; n1 goes silent: NotReady, lease kept for the grace period.
    let heartbeats = {
        let mut client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.heartbeat("n2").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let timeout = Duration::from_secs(10);
    eventually("n1 NotReady", timeout, || {
        let mut client = client.clone();
        async move {
            (ready(&client.get(Kind::Node, "", "n1").await.ok()?)?.as_str() == "Unknown")
                .then_some(())
        }
    })
    .await;
    let n3 = client
        .register_node(&registration("n3"))
        .await
        .expect("register n3");
    assert_eq!(
        n3.pod_cidrs,
        vec!["10.244.2.0/24", "fd00:10:244:2::/64"],
        "n1's expired lease is not handed out during its grace period"
    );
    let released = eventually("n1's lease released", timeout, || {
        let mut client = client.clone();
        async move {
            match client.get(Kind::Node, "", "n1").await.ok()? {
                Object::Node(node) if pod_cidrs(&node).is_empty() => Some(node),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(
        released
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("gannet.io/released-pod-cidrs"))
            .map(String::as_str),
        Some("10.244.0.0/24,fd00:10:244::/64")
    );
    let n2_now = client.get(Kind::Node, "", "n2").await.expect("n2");
    assert_eq!(
        ready(&n2_now).as_deref(),
        Some("True"),
        "n2 sends heartbeats"
    );
    // n1 comes back: its old CIDRs are still free, so it gets them again.
    let back = client
        .register_node(&registration("n1"))
        .await
        .expect("n1 back");
    assert_eq!(back.pod_cidrs, n1.pod_cidrs);
    heartbeats.abort();
}

/// Heartbeats renew the node's Lease (`kube-node-lease/<node>`), not the Node: a Node watcher
/// sees an event only when the node changes (`NotReady` when the Lease is not renewed, Ready when
/// it is again), and a deleted node's Lease goes.
#[tokio::test]
async fn heartbeats_renew_the_node_lease_and_leave_the_node_alone() {
    let (store, _dir) = embedded();
    let mut options = test_options();
    options.lifecycle = Lifecycle {
        period: Duration::from_millis(100),
        grace: Duration::from_millis(1500),
        release_grace: Duration::from_secs(3600),
    };
    let plane = Plane::start(store, options).await;
    let mut client = plane.client().await;
    let registered = client
        .register_node(&NodeRegistration {
            name: "n1".to_owned(),
            internal_ips: vec!["192.0.2.10".parse().expect("ip")],
            vtep_mac: None,
            labels: Default::default(),
            capacity: None,
            allocatable: None,
        })
        .await
        .expect("register n1");
    let node_revision = registered
        .node
        .metadata
        .resource_version
        .clone()
        .expect("a stored node has a resourceVersion");
    let lease = |object: Object| match object {
        Object::Lease(lease) => *lease,
        other => panic!("expected a Lease, got {other:?}"),
    };
    let first = lease(
        client
            .get(Kind::Lease, "kube-node-lease", "n1")
            .await
            .expect("registration creates the node's Lease"),
    );
    let spec = first.spec.clone().expect("the Lease has a spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
    assert_eq!(
        spec.lease_duration_seconds,
        Some(1),
        "the grace, in seconds"
    );
    let owner = &first.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "n1"));
    assert_eq!(Some(&owner.uid), registered.node.metadata.uid.as_ref());

    let mut nodes = client
        .watch(Kind::Node, None, node_revision.parse().expect("a number"))
        .await
        .expect("watch nodes");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.heartbeat("n1").await.expect("heartbeat");
    }
    let renewed = lease(
        client
            .get(Kind::Lease, "kube-node-lease", "n1")
            .await
            .expect("the Lease"),
    );
    let renew_time = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.clone())
            .map(|t| t.0)
    };
    assert!(
        renew_time(&renewed) > renew_time(&first),
        "heartbeats move the renew time: {:?} then {:?}",
        renew_time(&first),
        renew_time(&renewed)
    );
    let node = client.get(Kind::Node, "", "n1").await.expect("n1");
    assert_eq!(
        node.metadata().resource_version.as_deref(),
        Some(node_revision.as_str()),
        "heartbeats do not rewrite the Node"
    );
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), nodes.next()).await {
        panic!("a Node watcher sees no event for heartbeats, got {event:?}");
    }

    // No renewal for longer than the grace: NotReady, the one event a watcher sees.
    let event = tokio::time::timeout(Duration::from_secs(10), nodes.next())
        .await
        .expect("an event when the Lease runs out")
        .expect("watch")
        .expect("an event");
    assert_eq!(ready(&event.object).as_deref(), Some("Unknown"));
    // The next heartbeat makes it Ready again: a second event.
    client.heartbeat("n1").await.expect("heartbeat");
    let event = tokio::time::timeout(Duration::from_secs(10), nodes.next())
        .await
        .expect("an event when the node is back")
        .expect("watch")
        .expect("an event");
    assert_eq!(ready(&event.object).as_deref(), Some("True"));

    // The Node goes: its Lease goes after it.
    client
        .delete(Kind::Node, "", "n1", &DeleteOptions::default())
        .await
        .expect("delete n1");
    eventually("n1's Lease removed", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            matches!(
                client.get(Kind::Lease, "kube-node-lease", "n1").await,
                Err(ClientError::NotFound(_))
            )
            .then_some(())
        }
    })
    .await;
}
