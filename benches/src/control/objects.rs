//! The objects the `control` scenario stores in gannet-control: per service a selector-less `v1`
//! `Service` with a given cluster IP and one `discovery.k8s.io/v1` `EndpointSlice` with its
//! endpoints, as JSON (what gannetctl sends), and the same services for the kube-proxy rule
//! generators.

use std::net::Ipv4Addr;

use anyhow::{Context as _, ensure};
use gannet_api::{Kind, Object};
use serde_json::{Value, json};

use crate::services::{NAMESPACE, PORT_NAME, SERVICE_PORT, Service, TARGET_PORT};

/// The first cluster IP (service `i` gets this plus `i`), in gannet-control's `--service-cidr`.
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The service network given to gannet-control (and the kube-proxy rules).
pub const SERVICE_CIDR: &str = crate::services::SERVICE_CIDR;
/// Where the endpoints' addresses start (service `i`, endpoint `j`: this plus `i·E + j`): pods of
/// other nodes, never connected to. 10.128.0.0/10 holds 4 M of them.
const FIRST_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
/// Where the addresses that the incremental changes swap in start (change `k`: this plus `k`), so
/// every change really changes a slice.
const FIRST_REPLACEMENT: Ipv4Addr = Ipv4Addr::new(10, 192, 0, 0);
/// Most services: the cluster IPs stay in 10.96.0.0/12.
pub const MAX_SERVICES: usize = 100_000;
/// Most endpoints per service.
pub const MAX_ENDPOINTS_PER_SERVICE: usize = 100;
/// Most endpoints in all: they stay below the replacement addresses.
pub const MAX_ENDPOINTS: usize = 1 << 22;

fn offset(base: Ipv4Addr, by: usize) -> Ipv4Addr {
    let by = u32::try_from(by).expect("address offsets are small");
    Ipv4Addr::from(u32::from(base) + by)
}

/// `count` services with `endpoints` endpoints each, all at addresses of absent pods.
///
/// # Errors
/// If `count` or `endpoints` is 0 or above its maximum.
pub fn services(count: usize, endpoints: usize) -> anyhow::Result<Vec<Service>> {
    ensure!(
        (1..=MAX_SERVICES).contains(&count),
        "the number of services must be between 1 and {MAX_SERVICES}, not {count}"
    );
    ensure!(
        (1..=MAX_ENDPOINTS_PER_SERVICE).contains(&endpoints),
        "endpoints per service must be between 1 and {MAX_ENDPOINTS_PER_SERVICE}, not {endpoints}"
    );
    ensure!(
        count * endpoints <= MAX_ENDPOINTS,
        "at most {MAX_ENDPOINTS} endpoints in all, not {count} × {endpoints}"
    );
    Ok((0..count)
        .map(|i| Service {
            namespace: NAMESPACE.to_owned(),
            name: format!("svc-{i:05}"),
            port_name: PORT_NAME.to_owned(),
            cluster_ip: offset(FIRST_CLUSTER_IP, i),
            protocol: crate::services::Protocol::Tcp,
            port: SERVICE_PORT,
            endpoints: (0..endpoints)
                .map(|j| offset(FIRST_ENDPOINT, i * endpoints + j))
                .collect(),
            target_port: TARGET_PORT,
            node_port: None,
        })
        .collect())
}

/// The address change `k` swaps in.
#[must_use]
pub fn replacement(k: usize) -> Ipv4Addr {
    offset(FIRST_REPLACEMENT, k)
}

/// The name of the one `EndpointSlice` of `svc`.
#[must_use]
pub fn slice_name(svc: &Service) -> String {
    format!("{}-1", svc.name)
}

/// The `Service` of `svc` as JSON: selector-less, `ClusterIP`, its cluster IP given.
#[must_use]
pub fn service_json(svc: &Service) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": svc.name, "namespace": svc.namespace },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": svc.cluster_ip.to_string(),
            "clusterIPs": [svc.cluster_ip.to_string()],
            "ports": [{
                "name": svc.port_name,
                "protocol": "TCP",
                "port": svc.port,
                "targetPort": svc.target_port,
            }],
        },
    })
}

/// The `EndpointSlice` of `svc` as JSON: every endpoint ready.
#[must_use]
pub fn slice_json(svc: &Service) -> Value {
    let endpoints: Vec<Value> = svc
        .endpoints
        .iter()
        .map(|address| json!({ "addresses": [address.to_string()], "conditions": { "ready": true } }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(svc),
            "namespace": svc.namespace,
            "labels": { "kubernetes.io/service-name": svc.name },
        },
        "addressType": "IPv4",
        "ports": [{ "name": svc.port_name, "protocol": "TCP", "port": svc.target_port }],
        "endpoints": endpoints,
    })
}

fn object(kind: Kind, value: &Value) -> anyhow::Result<Object> {
    let json = serde_json::to_vec(value)?;
    Object::from_json(kind, &json).with_context(|| format!("building a {kind}"))
}

/// The `Service` of `svc` as an API object.
///
/// # Errors
/// Only if the JSON above does not decode (a bug).
pub fn service_object(svc: &Service) -> anyhow::Result<Object> {
    object(Kind::Service, &service_json(svc))
}

/// The `EndpointSlice` of `svc` as an API object.
///
/// # Errors
/// Only if the JSON above does not decode (a bug).
pub fn slice_object(svc: &Service) -> anyhow::Result<Object> {
    object(Kind::EndpointSlice, &slice_json(svc))
}

/// `10.96.0.10:80/TCP`, as `gannetd status` names a frontend.
#[must_use]
pub fn frontend(svc: &Service) -> String {
    format!("{}:{}/TCP", svc.cluster_ip, svc.port)
}

/// The backends of `svc` as `gannetd status` lists them, sorted.
#[must_use]
pub fn backends(svc: &Service) -> Vec<String> {
    let mut out: Vec<String> = svc
        .endpoints
        .iter()
        .map(|address| format!("{address}:{}", svc.target_port))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_in_their_networks() {
        let services = services(10_000, 10).expect("services");
        assert_eq!(services[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(services[9_999].cluster_ip, Ipv4Addr::new(10, 96, 39, 25));
        assert_eq!(services[0].endpoints[9], Ipv4Addr::new(10, 128, 0, 9));
        assert_eq!(services[1].endpoints[0], Ipv4Addr::new(10, 128, 0, 10));
        let last = services[9_999].endpoints[9];
        assert_eq!(last, Ipv4Addr::new(10, 129, 134, 159));
        let per = MAX_ENDPOINTS / MAX_SERVICES;
        let largest = super::services(MAX_SERVICES, per).expect("largest");
        let vip = largest[MAX_SERVICES - 1].cluster_ip;
        assert!(
            vip < Ipv4Addr::new(10, 112, 0, 0),
            "{vip} left 10.96.0.0/12"
        );
        let ep = largest[MAX_SERVICES - 1].endpoints[per - 1];
        assert!(
            ep < FIRST_REPLACEMENT,
            "{ep} reaches the replacement addresses"
        );
        assert!(super::services(0, 10).is_err());
        assert!(super::services(1, 0).is_err());
        assert!(super::services(MAX_SERVICES, MAX_ENDPOINTS_PER_SERVICE).is_err());
    }

    #[test]
    fn objects_decode_as_the_api_types() {
        let svc = &services(2, 3).expect("services")[1];
        let service = service_object(svc).expect("service");
        assert_eq!(service.kind(), Kind::Service);
        assert_eq!(service.name(), "svc-00001");
        assert_eq!(service.namespace(), NAMESPACE);
        let slice = slice_object(svc).expect("slice");
        assert_eq!(slice.name(), "svc-00001-1");
        let json = slice_json(svc);
        assert_eq!(
            json["metadata"]["labels"]["kubernetes.io/service-name"],
            "svc-00001"
        );
        assert_eq!(json["endpoints"].as_array().map(Vec::len), Some(3));
        assert_eq!(json["endpoints"][0]["addresses"][0], "10.128.0.3");
        assert_eq!(frontend(svc), "10.96.0.11:80/TCP");
        assert_eq!(
            backends(svc),
            ["10.128.0.3:8080", "10.128.0.4:8080", "10.128.0.5:8080"]
        );
    }
}
