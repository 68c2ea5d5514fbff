//! The API end to end: real gRPC over a unix socket (and TLS on loopback), the embedded store in
//! a per-test directory, the controllers running; one test with two replicas on a real etcd.

#![expect(
    unused_crate_dependencies,
    reason = "a test binary links every dependency of the package"
)]

#[path = "../common/mod.rs"]
mod common;

mod access;
mod endpoints;
mod etcd;
mod nodes;
mod objects;
mod watch;

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
