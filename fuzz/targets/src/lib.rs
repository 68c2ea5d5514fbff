//! The bodies of gannet's fuzz targets, one function per target, so that the libFuzzer binaries in
//! `fuzz/fuzz_targets/` and the corpus test of this crate (`corpus`, part of `cargo test`) run exactly the same code.
//!
//! Each function takes the raw input, feeds it to the parser or validator under test the way
//! its real caller does, and then checks what must hold for whatever the parser accepted (a
//! rendered file reads back, a result re-encodes, ...). A panic anywhere is a finding.
//!
//! | target             | code under test                                                        |
//! |--------------------|------------------------------------------------------------------------|
//! | `cni_config`       | `gannet_cni::config`: `CNI_ARGS`, the network configuration, requests   |
//! | `cni_prev_result`  | `gannet_cni::spec::CniResult`: `prevResult` and delegates' results     |
//! | `subnet_file`      | `gannet_cni::subnet_env`: the node's `subnet.env`, read and written     |
//! | `manifest`         | `gannet_k8s`: manifest files to checked objects and the desired state   |
//! | `control_apply`    | `gannet_control::registry::Registry::apply` on an in-memory store       |
//! | `cni_registration` | `gannet_cni::agent_api`: a request line on gannetd's CNI socket         |

use std::path::{Path, PathBuf};

use gannet_cni::agent_api::{self, RequestBody};
use gannet_cni::config::{self, Attachment};
use gannet_cni::net::Cidr;
use gannet_cni::spec::{CniResult, CniVersion, Interface, IpConfig};
use gannet_cni::subnet_env::SubnetEnv;

/// A target: takes any input, panics on a finding.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*/`).
pub const TARGETS: [(&str, Target); 6] = [
    ("cni_config", cni_config),
    ("cni_prev_result", cni_prev_result),
    ("subnet_file", subnet_file),
    ("manifest", manifest),
    ("control_apply", control_apply),
    ("cni_registration", cni_registration),
];

/// The first line is `CNI_ARGS` (for an `ADD`), the rest the network configuration on stdin.
pub fn cni_config(data: &[u8]) {
    let (args, stdin) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&data[..0], data),
    };
    let Ok(args) = std::str::from_utf8(args) else {
        return;
    };
    let env = config::parse_env(&|name| {
        match name {
            "CNI_COMMAND" => Some("ADD"),
            "CNI_CONTAINERID" => Some("fuzz"),
            "CNI_IFNAME" => Some("eth0"),
            "CNI_NETNS" => Some("/run/netns/fuzz"),
            "CNI_PATH" => Some("/opt/cni/bin"),
            "CNI_ARGS" => Some(args),
            _ => None,
        }
        .map(str::to_owned)
    });
    let conf = match config::parse_config(stdin) {
        Ok((conf, version)) => {
            assert!(CniVersion::parse(version.as_str()).is_some());
            conf
        }
        Err(error) => {
            // Printed to stdout as the spec's error object.
            let _ = error.to_json(CniVersion::LATEST.as_str());
            return;
        }
    };
    let _ = conf.data_dir();
    let _ = conf.gc_attachments();
    if conf.builtin_ipam()
        && let Some(ranges) = conf.configured_ranges()
    {
        config::validate_ranges(&ranges).expect("parse_config checked the ranges");
    }
    if let Ok(env) = &env {
        let _ = config::parse_requests(&conf, env);
    }
    if let Some(prev) = conf.prev_result.clone() {
        prev_result(prev);
    }
}

/// A JSON result, as in `prevResult` or a delegated IPAM plugin's output.
pub fn cni_prev_result(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        prev_result(value);
    }
}

fn prev_result(value: serde_json::Value) {
    let Ok(result) = CniResult::from_value(value) else {
        return;
    };
    for version in [
        CniVersion::V0_3_0,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::LATEST,
    ] {
        // What the plugin prints must read back as what it meant.
        let out = result.for_version(version);
        let json = serde_json::to_value(&out).expect("a result encodes");
        let back = CniResult::from_value(json).expect("a result the plugin prints reads back");
        assert_eq!(back, out, "result for {version} reads back differently");
    }
    // ADD appends its own interfaces and addresses to a previous result.
    let mut merged = result;
    merged.append(CniResult {
        cni_version: CniVersion::LATEST.as_str().to_owned(),
        interfaces: vec![Interface {
            name: "eth0".to_owned(),
            sandbox: "/run/netns/fuzz".to_owned(),
            ..Interface::default()
        }],
        ips: vec![IpConfig {
            version: None,
            address: "10.244.0.2/32".parse().expect("valid"),
            gateway: None,
            interface: Some(0),
        }],
        ..CniResult::default()
    });
    let _ = serde_json::to_vec(&merged.for_version(CniVersion::LATEST));
}

/// The text of a subnet file, as gannet-cni reads it; what it accepts is written back the way
/// gannetd writes a lease, and both must read back.
pub fn subnet_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("subnet.env");
    let Ok(env) = SubnetEnv::parse(path, text) else {
        return;
    };
    let again = SubnetEnv::parse(path, &env.render()).expect("a rendered subnet file reads back");
    assert_eq!(
        again, env,
        "the rendered subnet file reads back differently"
    );
    // What the file lets the IPAM allocate from must be ranges the IPAM takes.
    let ranges = env.ranges();
    config::validate_ranges(&ranges).expect("a subnet file's ranges are valid IPAM ranges");
    // gannetd writing the same lease: the pod subnets and the cluster networks.
    let pod_cidrs: Vec<Cidr> = [env.subnet, env.ipv6_subnet]
        .into_iter()
        .flatten()
        .collect();
    let cluster: Vec<Cidr> = [env.network, env.ipv6_network]
        .into_iter()
        .flatten()
        .collect();
    if let Ok(written) = SubnetEnv::for_lease(
        &pod_cidrs,
        &cluster,
        env.mtu.unwrap_or(1500),
        env.ipmasq.unwrap_or(false),
    ) {
        SubnetEnv::parse(path, &written.render()).expect("a lease's subnet file reads back");
    }
}

/// A manifest file (YAML or JSON, any number of documents), as gannetd reads its manifest
/// directory: parsed and checked, then joined into the desired state.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = PathBuf::from("fuzz.yaml");
    if let Ok(objects) = gannet_k8s::parse_documents(&file, text) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for object in objects {
            match object {
                gannet_k8s::Object::Service(service) => services.push((file.clone(), *service)),
                gannet_k8s::Object::EndpointSlice(slice) => slices.push((file.clone(), *slice)),
                gannet_k8s::Object::Node(node) => {
                    // gannetd writes its own Node's lease as the subnet file.
                    let pod_cidrs: Vec<Cidr> = node
                        .pod_cidrs
                        .iter()
                        .map(|net| Cidr::new(net.addr(), net.prefix_len()).expect("an IpNet fits"))
                        .collect();
                    if let Ok(env) = SubnetEnv::for_lease(&pod_cidrs, &[], 1450, true) {
                        SubnetEnv::parse(Path::new("subnet.env"), &env.render())
                            .expect("a Node's lease reads back as a subnet file");
                    }
                }
                gannet_k8s::Object::Ignored { .. } => {}
            }
        }
        let (state, errors) = gannet_k8s::desired_state(&services, &slices);
        for error in &errors {
            let _ = error.to_string();
        }
        let _ = format!("{state:?}");
    }
    // gannetctl's reading of the same file (every kind, typed later).
    let _ = gannet_k8s::read_documents(&file, text);
}

/// A stream of JSON objects (each with `apiVersion` and `kind`), as `gannetctl apply` sends
/// them: the objects of known kinds are decoded as gannet-control decodes a request's objects and
/// applied at once to an empty in-memory store, then applied again.
pub fn control_apply(data: &[u8]) {
    use gannet_api::{Kind, Object};
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>() {
        let Ok(value) = value else {
            break;
        };
        let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
        let Some(kind) = field("apiVersion")
            .zip(field("kind"))
            .and_then(|(api_version, kind)| Kind::from_type(api_version, kind))
        else {
            continue;
        };
        let json = serde_json::to_vec(&value).expect("a value encodes");
        if let Ok(object) = Object::from_json(kind, &json) {
            objects.push(object);
        }
    }
    if objects.is_empty() {
        return;
    }
    control::runtime().block_on(async {
        let registry = control::registry();
        let Ok(applied) = registry.apply(objects.clone(), false).await else {
            return;
        };
        assert_eq!(
            applied.objects.len(),
            objects.len(),
            "one outcome per object"
        );
        // The stored objects decode again (what list and watch hand out), and what Apply
        // stored, Apply takes back (as `gannetctl get -o yaml | gannetctl apply -f -`).
        let mut stored = Vec::new();
        for (object, _) in &applied.objects {
            let json = object.to_json().expect("a stored object encodes");
            stored.push(Object::from_json(object.kind(), &json).expect("a stored object decodes"));
        }
        if let Err(error) = registry.apply(stored, false).await {
            panic!("the stored objects are refused when applied again: {error:?}");
        }
        // The request again, on top of the first: an update of every object.
        let _ = registry.apply(objects, false).await;
    });
}

mod control {
    use std::sync::Arc;
    use std::time::Duration;

    use gannet_control::alloc::PodNetwork;
    use gannet_control::registry::{Network, Registry};
    use gannet_control::store::EmbeddedStore;

    thread_local! {
        static RUNTIME: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a tokio runtime"),
        ));
    }

    pub(super) fn runtime() -> &'static tokio::runtime::Runtime {
        RUNTIME.with(|runtime| *runtime)
    }

    /// A registry over an empty in-memory store, dual-stack.
    pub(super) fn registry() -> Registry {
        let store = EmbeddedStore::in_memory().expect("an in-memory store");
        let network = Network {
            service_cidrs: vec![
                "10.96.0.0/12".parse().expect("valid"),
                "fd00:96::/108".parse().expect("valid"),
            ],
            pod_networks: vec![
                PodNetwork {
                    cidr: "10.244.0.0/16".parse().expect("valid"),
                    node_prefix: 24,
                },
                PodNetwork {
                    cidr: "fd00:244::/56".parse().expect("valid"),
                    node_prefix: 64,
                },
            ],
            ..Network::default()
        };
        Registry::new(
            Arc::new(store),
            network,
            Duration::from_secs(10),
            Duration::from_secs(40),
        )
    }
}

/// One line of gannet-cni's requests to gannetd's CNI socket, parsed and checked as gannetd does
/// before it looks at its own state.
pub fn cni_registration(data: &[u8]) {
    let Ok(request) = agent_api::parse_request(data) else {
        return;
    };
    let line = serde_json::to_vec(&request).expect("a request encodes");
    assert_eq!(
        agent_api::parse_request(&line).expect("an encoded request reads back"),
        request
    );
    let RequestBody::Register { endpoint } = &request.body else {
        return;
    };
    let Ok(claim) = endpoint.check() else {
        return;
    };
    assert!(!claim.ips.is_empty());
    // The registry key and the host interface's alias name the attachment unambiguously.
    let attachment = Attachment {
        container_id: endpoint.container_id.clone(),
        ifname: endpoint.if_name.clone(),
    };
    let key = endpoint.key();
    assert_eq!(key.split('/').count(), 3, "key {key:?}");
    let alias = gannet_cni::network::alias(&endpoint.network, &attachment);
    assert_eq!(
        gannet_cni::network::parse_alias(&alias),
        Some((endpoint.network.clone(), attachment.clone())),
        "alias {alias:?}"
    );
    let _ = gannet_cni::network::host_if_name(&endpoint.network, &attachment);
}

#[cfg(test)]
mod corpus {
    //! Every saved input of every fuzz target (`fuzz/corpus/TARGET/`, which includes the inputs of
    //! the crashes found and fixed) through the target's function: what the fuzzer once found stays
    //! fixed, on the stable toolchain, without libFuzzer.

    use std::path::{Path, PathBuf};
    use std::time::Instant;

    use super::TARGETS;

    #[test]
    fn every_saved_input_runs_clean() {
        // GANNET_FUZZ_CORPUS: another root with the same layout (a fuzzer's working corpora).
        let root = std::env::var_os("GANNET_FUZZ_CORPUS").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"),
            PathBuf::from,
        );
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut inputs: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("corpus of {name} ({}): {e}", dir.display()))
                .map(|entry| entry.expect("a directory entry").path())
                .collect();
            inputs.sort();
            assert!(
                inputs.len() >= 5,
                "the corpus of {name} holds {} inputs, expected at least 5",
                inputs.len()
            );
            let started = Instant::now();
            for input in &inputs {
                let data = std::fs::read(input).expect("a corpus file");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(
                    outcome.is_ok(),
                    "{name}: input {} panicked (replay: cargo fuzz run {name} {})",
                    input.display(),
                    input.display()
                );
            }
            eprintln!(
                "{name}: {} inputs in {:.2?}",
                inputs.len(),
                started.elapsed()
            );
        }
    }
}
