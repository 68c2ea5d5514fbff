//! Objects: apply, get, list and watch over the unix socket; preconditions and all-or-nothing
//! batches; allocations of cluster IPs and node ports; status updates binding pods.

use super::*;

#[tokio::test]
async fn apply_get_list_and_watch_resume_over_the_unix_socket() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mode = std::fs::metadata(&plane.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
    let mut client = plane.client().await;

    let applied = client.apply(&[object(WEB)], false).await.expect("apply");
    let (web, outcome) = &applied.objects[0];
    assert_eq!(*outcome, Outcome::Created);
    let spec = service(web).spec.clone().expect("spec");
    let ip: std::net::IpAddr = spec
        .cluster_ip
        .clone()
        .expect("allocated")
        .parse()
        .expect("an IP");
    assert!(
        "10.96.0.0/12"
            .parse::<ipnet::IpNet>()
            .expect("cidr")
            .contains(&ip),
        "{ip}"
    );
    assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_owned()]));
    let ports = spec.ports.expect("ports");
    assert_eq!(
        ports[1].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9090)),
        "targetPort defaults to port"
    );
    assert_eq!(web.resource_version(), Some(applied.revision));

    // Re-applying the unchanged manifest (no clusterIP) keeps everything.
    let again = client.apply(&[object(WEB)], false).await.expect("apply");
    assert_eq!(again.objects[0].1, Outcome::Unchanged);
    assert_eq!(
        service(&again.objects[0].0)
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone()),
        Some(ip.to_string())
    );

    let got = client.get(Kind::Service, "shop", "web").await.expect("get");
    assert_eq!(got, *web);
    assert!(matches!(
        client.get(Kind::Service, "shop", "nope").await,
        Err(ClientError::NotFound(_))
    ));

    let list = client.list(Kind::Service, None).await.expect("list");
    assert_eq!(list.items.len(), 1);
    let start = list.revision;

    // Two more changes; a watch from `start` sees both, one from in between only the second.
    let mut other = object(WEB);
    other.metadata_mut().name = Some("api".to_owned());
    let r1 = client.apply(&[other], false).await.expect("apply").revision;
    client
        .delete(Kind::Service, "shop", "web", &DeleteOptions::default())
        .await
        .expect("delete");
    let mut watch = client
        .watch(Kind::Service, None, start)
        .await
        .expect("watch");
    let first = watch.next().await.expect("event").expect("open");
    assert_eq!(
        (first.kind, first.object.name(), first.revision),
        (EventType::Added, "api", r1)
    );
    assert!(first.last_of_revision);
    let second = watch.next().await.expect("event").expect("open");
    assert_eq!(
        (second.kind, second.object.name()),
        (EventType::Deleted, "web")
    );
    let mut resumed = client.watch(Kind::Service, None, r1).await.expect("watch");
    let only = resumed.next().await.expect("event").expect("open");
    assert_eq!((only.kind, only.object.name()), (EventType::Deleted, "web"));
    // Namespaced watches see their namespace only.
    let mut elsewhere = client
        .watch(Kind::Service, Some("default"), start)
        .await
        .expect("watch");
    let mut in_default = object(WEB);
    in_default.metadata_mut().namespace = Some("default".to_owned());
    client.apply(&[in_default], false).await.expect("apply");
    let event = elsewhere.next().await.expect("event").expect("open");
    assert_eq!(event.object.namespace(), "default");
}

/// A list of a control plane nothing was written to yet, then a write, then a watch from the
/// list's revision: the watch sees the write. (The embedded store's first revision was 0, which a
/// watch takes as "from now on": an agent listing the empty store missed the nodes registered
/// before its watch opened.)
#[tokio::test]
async fn a_watch_after_the_list_of_a_fresh_store_misses_nothing() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let list = client.list(Kind::Service, None).await.expect("list");
    assert!(list.items.is_empty());
    assert_ne!(
        list.revision, 0,
        "a list names a revision a watch can resume after"
    );
    let applied = client.apply(&[object(WEB)], false).await.expect("apply");
    let mut watch = client
        .watch(Kind::Service, None, list.revision)
        .await
        .expect("watch");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("the write made before the watch opened is delivered")
        .expect("event")
        .expect("open");
    assert_eq!(
        (event.kind, event.object.name(), event.revision),
        (EventType::Added, "web", applied.revision)
    );
}

#[tokio::test]
async fn stale_resource_version_is_refused_and_invalid_batches_apply_nothing() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let created = client
        .apply(&[object(WEB)], false)
        .await
        .expect("apply")
        .objects[0]
        .0
        .clone();

    let mut changed = created.clone();
    changed.metadata_mut().labels = Some([("app".to_owned(), "web2".to_owned())].into());
    let outcome = client
        .apply(&[changed.clone()], false)
        .await
        .expect("apply with the current version");
    assert_eq!(outcome.objects[0].1, Outcome::Configured);
    // `created` carries the old resourceVersion now.
    let mut stale = created.clone();
    stale.metadata_mut().labels = Some([("app".to_owned(), "web3".to_owned())].into());
    match client.apply(&[stale], false).await {
        Err(ClientError::Conflict(message)) => assert!(message.contains("stale"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let delete_stale = DeleteOptions {
        resource_version: created.resource_version(),
        grace_period_seconds: None,
    };
    assert!(matches!(
        client
            .delete(Kind::Service, "shop", "web", &delete_stale)
            .await,
        Err(ClientError::Conflict(_))
    ));

    let before = client
        .list(Kind::Pod, None)
        .await
        .expect("list")
        .items
        .len();
    let bad_service = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad}\nspec: {type: NodePort, ports: [{port: 0, nodePort: 80}]}\n",
    );
    let bad_pod = pod("p-bad", None, false, 70000);
    let good_pod = pod("p-good", None, false, 8080);
    match client.apply(&[good_pod, bad_service, bad_pod], false).await {
        Err(ClientError::Invalid(problems)) => {
            let found: Vec<(usize, Option<&str>)> = problems
                .iter()
                .map(|p| (p.index, p.field.as_deref()))
                .collect();
            assert_eq!(
                found,
                vec![
                    (1, Some("spec.ports[0].port")),
                    (2, Some("spec.containers[0].ports[0].containerPort")),
                ],
                "{problems:#?}"
            );
            assert_eq!(problems[0].object, "Service default/bad");
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
    // The node port outside the range is found by the allocator, and also applies nothing.
    let outside = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 80}]}\n",
    );
    match client
        .apply(&[pod("p-good", None, false, 8080), outside], false)
        .await
    {
        Err(ClientError::Invalid(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:#?}");
            assert_eq!(problems[0].field.as_deref(), Some("spec.ports[0].nodePort"));
            assert!(
                problems[0].message.contains("30000-32767"),
                "{}",
                problems[0].message
            );
        }
        other => panic!("expected validation errors, got {other:?}"),
    }
    assert_eq!(
        client
            .list(Kind::Pod, None)
            .await
            .expect("list")
            .items
            .len(),
        before,
        "something was applied"
    );
}

#[tokio::test]
async fn cluster_ips_and_node_ports_are_allocated_validated_and_released() {
    let (store, _dir) = embedded();
    let mut options = test_options();
    options.network.node_ports = 30000..=30001;
    let plane = Plane::start(store, options).await;
    let mut client = plane.client().await;

    let given = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.10, type: NodePort, ports: [{port: 80}, {name: dns, port: 53, protocol: UDP}]}\n",
    );
    // Two unnamed... one port unnamed among two is a problem: name it.
    let given = match given {
        Object::Service(mut s) => {
            s.spec
                .as_mut()
                .expect("spec")
                .ports
                .as_mut()
                .expect("ports")[0]
                .name = Some("http".to_owned());
            Object::Service(s)
        }
        other => other,
    };
    let applied = client.apply(&[given], false).await.expect("apply");
    let spec = service(&applied.objects[0].0).spec.clone().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
    let node_ports: Vec<i32> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.node_port)
        .collect();
    assert_eq!(node_ports.len(), 2);
    assert!(
        node_ports.iter().all(|p| (30000..=30001).contains(p)),
        "{node_ports:?}"
    );
    assert_ne!(node_ports[0], node_ports[1]);

    // The same IP for another service, an IP outside the CIDR, and an exhausted node port range.
    let taken = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
    );
    let outside = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {clusterIP: 192.168.0.1, ports: [{port: 80}]}\n",
    );
    let exhausted = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: d}\nspec: {type: NodePort, ports: [{port: 80}]}\n",
    );
    match client.apply(&[taken, outside, exhausted], false).await {
        Err(ClientError::Invalid(problems)) => {
            let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert_eq!(messages.len(), 3, "{messages:#?}");
            assert!(
                messages[0].contains("10.96.0.10 is already allocated to Service default/a"),
                "{messages:#?}"
            );
            assert!(
                messages[1].contains(
                    "192.168.0.1 is not a usable address of the service CIDR 10.96.0.0/12"
                ),
                "{messages:#?}"
            );
            assert!(
                messages[2].contains("spec.ports[0].nodePort: no free node port left"),
                "{messages:#?}"
            );
        }
        other => panic!("expected allocation errors, got {other:?}"),
    }
    // Changing the cluster IP is refused; switching to ClusterIP releases the node ports.
    let mut moved = applied.objects[0].0.clone();
    if let Object::Service(s) = &mut moved {
        s.metadata.resource_version = None;
        let spec = s.spec.as_mut().expect("spec");
        spec.cluster_ip = Some("10.96.0.11".to_owned());
        spec.cluster_ips = None;
    }
    assert!(
        matches!(client.apply(&[moved], false).await, Err(ClientError::Invalid(p)) if p[0].message.contains("immutable"))
    );
    let as_cluster_ip = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: ClusterIP, ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]}\n",
    );
    client
        .apply(&[as_cluster_ip], false)
        .await
        .expect("type change");
    let d = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: d}\nspec: {type: NodePort, ports: [{port: 80}]}\n",
    );
    client
        .apply(&[d], false)
        .await
        .expect("the released node ports are free again");
    // Deleting releases the cluster IP.
    client
        .delete(Kind::Service, "default", "a", &DeleteOptions::default())
        .await
        .expect("delete");
    let b = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
    );
    client
        .apply(&[b], false)
        .await
        .expect("the released cluster IP is free again");
}

fn node_name(object: &Object) -> Option<String> {
    match object {
        Object::Pod(pod) => pod.spec.as_ref()?.node_name.clone(),
        other => panic!("expected a Pod, got {other:?}"),
    }
}

#[tokio::test]
async fn a_status_update_binds_an_unplaced_pod_but_never_moves_a_bound_one() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let unplaced = "apiVersion: v1
kind: Pod
metadata: {name: loose, namespace: shop}
spec:
  containers:
  - {name: web, image: nginx}
";
    client
        .apply(&[object(unplaced)], false)
        .await
        .expect("apply");
    // The scheduler may write the Pod in between (Unschedulable: no node has allocatable
    // resources; PodScheduled=True once bound): a report on a stale revision is refused and
    // made again on the Pod as it is, as gannetd does.
    async fn report(client: &mut Client, node: &str) -> Object {
        let mut attempts = 0;
        loop {
            let mut report = client.get(Kind::Pod, "shop", "loose").await.expect("get");
            if let Object::Pod(pod) = &mut report {
                pod.spec.get_or_insert_with(Default::default).node_name = Some(node.to_owned());
            }
            match client.update_status(&report).await {
                Err(ClientError::Conflict(_)) if attempts < 5 => attempts += 1,
                result => return result.expect("status"),
            }
        }
    }
    let unbound = client.get(Kind::Pod, "shop", "loose").await.expect("get");
    assert_eq!(node_name(&unbound), None);
    let bound = report(&mut client, "node-7").await;
    assert_eq!(node_name(&bound), Some("node-7".to_owned()), "{bound:?}");

    // Bound now: another node's report does not move it.
    let kept = report(&mut client, "node-8").await;
    assert_eq!(node_name(&kept), Some("node-7".to_owned()), "{kept:?}");
    let stored = client.get(Kind::Pod, "shop", "loose").await.expect("get");
    assert_eq!(node_name(&stored), Some("node-7".to_owned()), "{stored:?}");
}
