//! The API end to end: real gRPC over a unix socket (and TLS on loopback), the embedded store in
//! a per-test directory, the controllers running; one test with two replicas on a real etcd.

#![expect(
    unused_crate_dependencies,
    reason = "a test binary links every dependency of the package"
)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use common::{Etcd, Plane, embedded, eventually, object, scrape, test_options};
use gannet_api::{
    Change, Client, ClientError, Credentials, DeleteOptions, EventType, Kind, ListWatch,
    NodeRegistration, Object, Outcome, ServerAddr,
};
use gannet_control::controller::nodes::Lifecycle;
use gannet_control::server::{Bound, Listen, TlsMaterial};
use gannet_control::store::{EtcdStore, Store};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

const WEB: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: metrics, port: 9090, protocol: TCP}
";

fn pod(name: &str, ip: Option<&str>, ready: bool, port: i32) -> Object {
    let status = match ip {
        Some(ip) => format!(
            "status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: \"{}\"}}]}}",
            if ready { "True" } else { "False" }
        ),
        None => String::new(),
    };
    object(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: shop, labels: {{app: web}}}}
spec:
  nodeName: node-1
  containers:
  - name: web
    image: nginx
    ports: [{{name: http, containerPort: {port}}}]
{status}
"
    ))
}

/// A slice's name, its endpoints (address, ready, serving, terminating) and port numbers.
type SliceSummary = (String, Vec<(String, bool, bool, bool)>, Vec<i32>);

fn service(object: &Object) -> &Service {
    match object {
        Object::Service(service) => service,
        other => panic!("expected a Service, got {other:?}"),
    }
}

async fn slices(client: &mut Client, namespace: &str) -> Vec<EndpointSlice> {
    client
        .list(Kind::EndpointSlice, Some(namespace))
        .await
        .expect("list slices")
        .items
        .into_iter()
        .filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(*s),
            _ => None,
        })
        .collect()
}

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

/// SIGTERM with agents watching: the open watch streams end at once with UNAVAILABLE (the
/// agents watch again from their last revision, at the next instance), so the shutdown does not
/// wait for its drain timeout.
#[tokio::test]
async fn shutdown_ends_open_watches_instead_of_waiting_for_the_drain() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let revision = client
        .apply(&[object(WEB)], false)
        .await
        .expect("apply")
        .revision;
    let mut watch = client
        .watch(Kind::Service, None, revision)
        .await
        .expect("watch");
    let Plane {
        plane: server,
        dir: _dir,
        ..
    } = plane;
    // A drain far longer than the test's patience: only ending the watch lets this return.
    tokio::time::timeout(
        Duration::from_secs(60),
        server.shutdown(Duration::from_secs(3600)),
    )
    .await
    .expect("the shutdown must not wait for the open watch");
    match watch.next().await {
        Err(error) => assert!(
            error.to_string().contains("shutting down"),
            "the watcher is told why: {error}"
        ),
        other => panic!("expected the watch to end with an error, got {other:?}"),
    }
}

#[tokio::test]
async fn compacted_watch_is_expired_and_list_watch_relists() {
    let (store, _dir) = embedded();
    let plane = Plane::start(Arc::clone(&store), test_options()).await;
    let mut client = plane.client().await;
    let r1 = client
        .apply(&[object(WEB)], false)
        .await
        .expect("apply")
        .revision;
    let mut api = object(WEB);
    api.metadata_mut().name = Some("api".to_owned());
    let r2 = client.apply(&[api], false).await.expect("apply").revision;
    store.compact(r2).await.expect("compact");

    match client.watch(Kind::Service, None, r1).await {
        Err(ClientError::Expired(message)) => assert!(message.contains("compacted"), "{message}"),
        other => panic!("expected an expired watch, got {other:?}"),
    }
    let mut watcher = ListWatch::resume(Kind::Service, None, r1);
    match watcher.next(&mut client).await.expect("relist") {
        Change::Synced { objects, revision } => {
            assert_eq!(objects.len(), 2);
            assert!(revision >= r2);
        }
        other => panic!("expected a relist, got {other:?}"),
    }
    client
        .delete(Kind::Service, "shop", "web", &DeleteOptions::default())
        .await
        .expect("delete");
    match watcher.next(&mut client).await.expect("event") {
        Change::Deleted { object, .. } => assert_eq!(object.name(), "web"),
        other => panic!("expected the delete, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_from_a_revision_the_store_never_reached_is_expired() {
    // As after the control plane's data was replaced: a client resumes from its old revision.
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let revision = client
        .apply(&[object(WEB)], false)
        .await
        .expect("apply")
        .revision;
    match client.watch(Kind::Service, None, revision + 1000).await {
        Err(ClientError::Expired(message)) => assert!(message.contains("ahead"), "{message}"),
        other => panic!("expected an expired watch, got {other:?}"),
    }
    let mut watcher = ListWatch::resume(Kind::Service, None, revision + 1000);
    match watcher.next(&mut client).await.expect("relist") {
        Change::Synced { objects, .. } => assert_eq!(objects.len(), 1),
        other => panic!("expected a relist, got {other:?}"),
    }
}

#[tokio::test]
async fn endpoints_controller_follows_pods() {
    let (store, _dir) = embedded();
    let mut options = test_options();
    options.lifecycle.period = Duration::from_millis(100);
    let plane = Plane::start(store, options).await;
    let mut client = plane.client().await;
    let timeout = Duration::from_secs(10);
    client
        .apply(
            &[
                object(WEB),
                pod("web-1", Some("10.244.1.5"), true, 8080),
                pod("web-2", Some("10.244.1.6"), false, 8081),
                pod("web-3", None, true, 8080),
            ],
            false,
        )
        .await
        .expect("apply");

    // Named target ports resolve per pod: two port sets, two slices.
    let found = eventually("two slices for web", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            (found.len() == 2).then_some(found)
        }
    })
    .await;
    let summary: Vec<SliceSummary> = found
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.endpoints
                    .iter()
                    .map(|e| {
                        let c = e.conditions.clone().unwrap_or_default();
                        (
                            e.addresses[0].clone(),
                            c.ready.unwrap_or_default(),
                            c.serving.unwrap_or_default(),
                            c.terminating.unwrap_or_default(),
                        )
                    })
                    .collect(),
                s.ports.iter().flatten().filter_map(|p| p.port).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "web-ipv4".to_owned(),
                vec![("10.244.1.5".to_owned(), true, true, false)],
                vec![8080, 9090]
            ),
            (
                "web-ipv4-1".to_owned(),
                vec![("10.244.1.6".to_owned(), false, false, false)],
                vec![8081, 9090]
            ),
        ]
    );
    let labels = found[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("web")
    );

    // web-2 turns ready (an agent reports its status): the controller follows.
    let ready = pod("web-2", Some("10.244.1.6"), true, 8081);
    client.update_status(&ready).await.expect("status");
    eventually("web-2 ready", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            found
                .iter()
                .any(|s| {
                    s.endpoints.iter().any(|e| {
                        e.addresses[0] == "10.244.1.6"
                            && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                    })
                })
                .then_some(())
        }
    })
    .await;

    // Graceful delete: terminating (serving, not ready), then gone after the grace period.
    let terminating = client
        .delete(
            Kind::Pod,
            "shop",
            "web-1",
            &DeleteOptions {
                resource_version: None,
                grace_period_seconds: Some(1),
            },
        )
        .await
        .expect("delete");
    assert!(terminating.metadata().deletion_timestamp.is_some());
    eventually("web-1 terminating", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            found
                .iter()
                .any(|s| {
                    s.endpoints.iter().any(|e| {
                        e.addresses[0] == "10.244.1.5"
                            && e.conditions.as_ref().is_some_and(|c| {
                                c.ready == Some(false)
                                    && c.serving == Some(true)
                                    && c.terminating == Some(true)
                            })
                    })
                })
                .then_some(())
        }
    })
    .await;
    eventually("web-1 removed", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            (found.len() == 1
                && found[0].endpoints.len() == 1
                && found[0].endpoints[0].addresses[0] == "10.244.1.6")
                .then_some(())
        }
    })
    .await;

    // A service without a selector keeps the user's slice; deleting web removes its slices.
    let manual = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {ports: [{port: 5432}]}\n",
    );
    let manual_slice = object(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nendpoints: [{addresses: [192.0.2.1]}]\nports: [{port: 5432}]\n",
    );
    client
        .apply(&[manual, manual_slice], false)
        .await
        .expect("apply");
    client
        .delete(Kind::Service, "shop", "web", &DeleteOptions::default())
        .await
        .expect("delete");
    eventually("only the user's slice left", timeout, || {
        let mut client = client.clone();
        async move {
            let names: Vec<String> = slices(&mut client, "shop")
                .await
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect();
            (names == ["db-1"]).then_some(())
        }
    })
    .await;
}

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

#[tokio::test]
async fn tls_needs_a_client_certificate_or_the_token() {
    let (store, _dir) = embedded();
    let pki = tempfile::tempdir().expect("temporary directory");
    gannet_control::certs::generate(
        pki.path(),
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
        false,
    )
    .expect("certs");
    let read = |name: &str| std::fs::read(pki.path().join(name)).expect("certificate file");
    let token = String::from_utf8(read("token"))
        .expect("utf-8")
        .trim()
        .to_owned();
    let mut options = test_options();
    options
        .listen
        .push(Listen::Tcp("127.0.0.1:0".parse().expect("addr")));
    options.tls = Some(TlsMaterial {
        cert_pem: read("server.pem"),
        key_pem: read("server-key.pem"),
        client_ca_pem: read("ca.pem"),
        token: Some(token.clone()),
    });
    options.metrics_address = Some("127.0.0.1:0".parse().expect("addr"));
    let plane = Plane::start(store, options).await;
    let port = plane
        .plane
        .bound()
        .iter()
        .find_map(|b| match b {
            Bound::Tls(addr) => Some(addr.port()),
            _ => None,
        })
        .expect("a TLS listener");
    let server = ServerAddr::Https {
        host: "127.0.0.1".to_owned(),
        port,
    };
    let base = Credentials {
        ca_pem: Some(read("ca.pem")),
        ..Credentials::default()
    };

    let mut admin = Client::connect(
        &server,
        &Credentials {
            token: Some(token),
            ..base.clone()
        },
    )
    .await
    .expect("connect");
    admin
        .apply(&[object(WEB)], false)
        .await
        .expect("the token may apply");

    let mut agent = Client::connect(
        &server,
        &Credentials {
            identity: Some((read("agent.pem"), read("agent-key.pem"))),
            ..base.clone()
        },
    )
    .await
    .expect("connect with a client certificate");
    assert_eq!(
        agent
            .list(Kind::Service, None)
            .await
            .expect("agents may list")
            .items
            .len(),
        1
    );
    assert!(matches!(
        agent.apply(&[object(WEB)], false).await,
        Err(ClientError::PermissionDenied(_))
    ));
    agent
        .apply(&[pod("p", None, false, 80)], false)
        .await
        .expect("agents may apply pods");
    let logs = agent
        .logs(gannet_api::pb::LogsRequest {
            pod: "p".to_owned(),
            container: "app".to_owned(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(logs, Err(ClientError::PermissionDenied(_))),
        "reaching nodes is an administrator's: {logs:?}"
    );

    let mut nobody = Client::connect(&server, &base)
        .await
        .expect("TLS without credentials connects");
    assert!(matches!(
        nobody.list(Kind::Service, None).await,
        Err(ClientError::Unauthenticated(_))
    ));
    let mut wrong = Client::connect(
        &server,
        &Credentials {
            token: Some("not-the-token".to_owned()),
            ..base.clone()
        },
    )
    .await
    .expect("connect");
    assert!(matches!(
        wrong.list(Kind::Service, None).await,
        Err(ClientError::Unauthenticated(_))
    ));
    let metrics = plane.plane.metrics_address().expect("metrics are served");
    let scraped = tokio::task::spawn_blocking(move || scrape(metrics))
        .await
        .expect("scrape");
    assert!(
        scraped.contains("gannet_control_grpc_unauthenticated_total 2"),
        "both refused calls are counted:\n{scraped}"
    );
    assert!(
        scraped.contains(
            "gannet_control_grpc_requests_total{method=\"Apply\",code=\"PermissionDenied\"} 1"
        ),
        "the agent's refused Apply is counted by method:\n{scraped}"
    );

    // A client that does not trust the CA cannot talk to the server at all.
    let other = tempfile::tempdir().expect("temporary directory");
    gannet_control::certs::generate(other.path(), &["localhost".to_owned()], false).expect("certs");
    let foreign = Credentials {
        ca_pem: Some(std::fs::read(other.path().join("ca.pem")).expect("ca")),
        ..Credentials::default()
    };
    assert!(
        Client::connect(&server, &foreign).await.is_err(),
        "a server certificate from another CA was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_etcd() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let store = |_: ()| -> Arc<dyn Store> {
        Arc::new(EtcdStore::new(&etcd.endpoints(), "/gannet/").expect("store"))
    };
    let a = Plane::start(store(()), test_options()).await;
    let b = Plane::start(store(()), test_options()).await;
    let mut client_a = a.client().await;
    let mut client_b = b.client().await;
    let mut watch = client_b
        .watch(Kind::Service, None, 0)
        .await
        .expect("watch on B");
    let applied = client_a
        .apply(&[object(WEB)], false)
        .await
        .expect("apply on A");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("B's watcher sees A's write within 10s")
        .expect("ok")
        .expect("open");
    assert_eq!(event.object, applied.objects[0].0);
    // Both replicas run the endpoints controller; they converge on one slice.
    client_b
        .apply(&[pod("web-1", Some("10.244.1.5"), true, 8080)], false)
        .await
        .expect("apply on B");
    eventually(
        "the slice, through either replica",
        Duration::from_secs(10),
        || {
            let mut client = client_a.clone();
            async move {
                let found = slices(&mut client, "shop").await;
                (found.len() == 1 && found[0].endpoints.len() == 1).then_some(())
            }
        },
    )
    .await;
    // And a second Service's IP cannot collide with the first's, whichever replica allocates.
    let mut api = object(WEB);
    api.metadata_mut().name = Some("api".to_owned());
    let second = client_b.apply(&[api], false).await.expect("apply on B");
    assert_ne!(
        service(&second.objects[0].0)
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone()),
        service(&applied.objects[0].0)
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
    );
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
