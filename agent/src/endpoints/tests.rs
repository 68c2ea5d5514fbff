use super::*;

fn endpoint(container: &str, ips: &[&str], ns: &str, name: &str) -> agent_api::Endpoint {
    agent_api::Endpoint {
        network: "gannet".into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        netns: "/run/netns/x".into(),
        ips: ips.iter().map(|ip| ip.parse().expect("cidr")).collect(),
        mac: "02:00:00:00:00:01".into(),
        host_if_name: "lo".into(),
        host_if_index: 1,
        host_mac: "02:00:00:00:00:02".into(),
        pod_namespace: Some(ns.into()),
        pod_name: Some(name.into()),
    }
}

fn register(
    registry: &mut Registry,
    endpoint: agent_api::Endpoint,
    pod_cidrs: &[ipnet::IpNet],
) -> Response {
    registry
        .handle(
            Request::new(RequestBody::Register { endpoint }),
            None,
            pod_cidrs,
        )
        .0
}

fn refused(response: &Response, why: &str) {
    assert!(!response.ok, "must be refused ({why}): {response:?}");
    let error = response.error.as_deref().unwrap_or_default();
    assert!(error.contains(why), "the error must say {why:?}: {error}");
}

#[test]
fn registrations_claim_only_valid_names_and_addresses_of_their_own() {
    /// Removed on drop, also when the test fails.
    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let dir = TempDir(std::env::temp_dir().join(format!("gannet-registry-{}", std::process::id())));
    fs::create_dir_all(&dir.0).expect("temp dir");
    let mut registry = Registry::load(&dir.0, None).expect("empty registry");
    // No veths here: the rest of the checks.
    registry.check_interfaces = false;
    let cidrs: Vec<ipnet::IpNet> = vec!["10.244.0.0/24".parse().unwrap()];

    let ok = register(
        &mut registry,
        endpoint("a", &["10.244.0.2/32"], "default", "web-1.x"),
        &cidrs,
    );
    assert!(ok.ok, "{ok:?}");
    // The same attachment again keeps its address.
    let again = register(
        &mut registry,
        endpoint("a", &["10.244.0.2/32"], "default", "web-1.x"),
        &cidrs,
    );
    assert!(again.ok, "{again:?}");
    refused(
        &register(
            &mut registry,
            endpoint("b", &["10.244.0.2/32"], "default", "web-2"),
            &cidrs,
        ),
        "belongs to endpoint gannet/a/eth0",
    );
    refused(
        &register(
            &mut registry,
            endpoint("b", &["10.96.0.10/32"], "default", "web-2"),
            &cidrs,
        ),
        "outside this node's pod CIDRs (10.244.0.0/24)",
    );
    refused(
        &register(
            &mut registry,
            endpoint("b", &["127.0.0.1/32"], "default", "web-2"),
            &[],
        ),
        "not a pod address",
    );
    refused(
        &register(
            &mut registry,
            endpoint("b", &["10.244.0.3/32"], "Default", "web-2"),
            &cidrs,
        ),
        "podNamespace \"Default\"",
    );
    refused(
        &register(
            &mut registry,
            endpoint("b", &["10.244.0.3/32"], "default", "web_2"),
            &cidrs,
        ),
        "podName \"web_2\"",
    );
    // Without a lease the pod CIDRs are not known: any unicast address of its own.
    let free = register(
        &mut registry,
        endpoint("b", &["10.96.0.10/32"], "default", "web-2"),
        &[],
    );
    assert!(free.ok, "{free:?}");
    assert_eq!(registry.records().len(), 2, "{:?}", registry.records());
}

#[test]
fn the_host_interface_must_be_the_attachments_veth() {
    let mut lo = endpoint("a", &["10.244.0.2/32"], "default", "web-1");
    let err = check_host_interface(&lo).expect_err("lo is no pod's veth");
    assert!(
        err.contains("not the one gannet-cni makes"),
        "the error must say why: {err}"
    );
    // The right name, but no such interface here.
    let attachment = gannet_cni::config::Attachment {
        container_id: "a".into(),
        ifname: "eth0".into(),
    };
    lo.host_if_name = gannet_cni::network::host_if_name("gannet", &attachment);
    let err = check_host_interface(&lo).expect_err("no such interface");
    assert!(err.contains("does not exist"), "{err}");
}
