//! Unit tests of the command line: variables, defaults, errors naming their flags.

use std::path::PathBuf;

use clap::{Args, Parser};

use crate::certs;
use crate::registry::Network;
use crate::server::Listen;

use super::validate::StoreConfig;
use super::{Cli, RunArgs};

fn args(extra: &[&str]) -> RunArgs {
    let mut argv = vec!["gannet-control"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("test flags parse").run
}

/// Every flag of `gannet-control run` can come from the environment (the systemd unit's
/// environment file sets them): `GANNET_CONTROL_` and the flag's name, except the variables
/// shared with the other binaries (`GANNET_TLS_DIR`, `GANNET_LOG_FORMAT`) and
/// `GANNET_ETCD_ENDPOINTS`, which predates the rule.
#[test]
fn every_flag_of_run_has_a_variable() {
    let run = RunArgs::augment_args(clap::Command::new("run"));
    for arg in run.get_arguments() {
        let long = arg.get_long().expect("every flag is a long flag");
        let expected = match long {
            "tls-dir" | "log-format" | "etcd-endpoints" => {
                format!("GANNET_{}", long.to_uppercase().replace('-', "_"))
            }
            _ => format!("GANNET_CONTROL_{}", long.to_uppercase().replace('-', "_")),
        };
        assert_eq!(
            arg.get_env().map(|v| v.to_string_lossy().into_owned()),
            Some(expected),
            "--{long}"
        );
    }
}

#[test]
fn defaults_make_a_one_machine_setup() {
    let config = args(&[]).validate().expect("defaults are valid");
    assert_eq!(
        config.store,
        StoreConfig::Embedded {
            path: PathBuf::from("/var/lib/gannet/control/control.redb")
        }
    );
    assert_eq!(
        config.options.listen,
        vec![Listen::Unix(PathBuf::from("/run/gannet/control.sock"))]
    );
    assert_eq!(config.options.network, Network::default());
    assert_eq!(config.options.socket_mode, 0o660);
}

#[test]
fn every_problem_is_reported_with_its_flag() {
    let errors = args(&[
        "--listen",
        "0.0.0.0:7000",
        "--insecure",
        "--cluster-cidr",
        "10.244.0.1/16,fd00::/48",
        "--node-cidr-mask-size-ipv6",
        "40",
        "--service-cidr",
        "nonsense",
        "--node-port-range",
        "9-2",
        "--socket-mode",
        "999",
        "--etcd-endpoints",
        "etcd-without-port",
    ])
    .validate()
    .expect_err("all wrong")
    .0;
    let flags: Vec<&str> = errors
        .iter()
        .map(|e| e.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        flags,
        vec![
            "--insecure:",
            "--cluster-cidr",
            "--node-cidr-mask-size-ipv6",
            "--service-cidr",
            "--node-port-range",
            "--socket-mode",
            "--etcd-endpoints",
        ],
        "{errors:#?}"
    );
}

#[test]
fn etcd_tls_flags_are_checked_together() {
    let errors = |extra: &[&str]| {
        let mut all = vec!["--etcd-endpoints"];
        all.extend_from_slice(extra);
        args(&all).validate().err().map(|e| e.0).unwrap_or_default()
    };
    let https_without_ca = errors(&["https://127.0.0.1:2379"]);
    assert!(
        https_without_ca
            .iter()
            .any(|e| e.starts_with("--etcd-cafile: required")),
        "{https_without_ca:#?}"
    );
    let unused = errors(&["http://127.0.0.1:2379", "--etcd-cafile", "/nonexistent.pem"]);
    assert!(
        unused
            .iter()
            .any(|e| e.starts_with("--etcd-cafile: given, but no --etcd-endpoints is https://")),
        "{unused:#?}"
    );
    let half = errors(&[
        "https://127.0.0.1:2379,http://127.0.0.1:2380",
        "--etcd-cafile",
        "/nonexistent.pem",
        "--etcd-certfile",
        "/c.pem",
    ]);
    for expected in [
        "--etcd-endpoints https://127.0.0.1:2379,http://127.0.0.1:2380: all members",
        "--etcd-cafile /nonexistent.pem: No such file",
        "--etcd-certfile and --etcd-keyfile: give both or neither",
    ] {
        assert!(
            half.iter().any(|e| e.starts_with(expected)),
            "expected {expected:?} in {half:#?}"
        );
    }
}

#[test]
fn tls_listener_needs_the_certificates() {
    let dir = std::env::temp_dir().join(format!("gannet-config-{}", std::process::id()));
    let errors = args(&[
        "--listen",
        "127.0.0.1:0",
        "--tls-dir",
        dir.to_str().expect("utf-8"),
    ])
    .validate()
    .expect_err("no files")
    .0;
    assert_eq!(
        errors.len(),
        1,
        "one line for the missing files: {errors:#?}"
    );
    for name in [certs::SERVER_CERT, certs::SERVER_KEY, certs::CA_CERT] {
        assert!(errors[0].contains(name), "names {name}: {errors:#?}");
    }
    assert_eq!(
        errors[0].matches("gannet-control certs").count(),
        1,
        "one hint: {errors:#?}"
    );
}

#[test]
fn overlapping_cluster_and_service_cidrs_are_refused() {
    let errors = args(&[
        "--cluster-cidr",
        "10.0.0.0/8,fd00:10:244::/56",
        "--service-cidr",
        "10.96.0.0/12,fd00:10::/32",
    ])
    .validate()
    .expect_err("both families overlap")
    .0;
    assert_eq!(
        errors,
        vec![
            "--service-cidr 10.96.0.0/12: overlaps --cluster-cidr 10.0.0.0/8 (cluster IPs and \
             pod addresses need ranges of their own)",
            "--service-cidr fd00:10::/32: overlaps --cluster-cidr fd00:10:244::/56 (cluster \
             IPs and pod addresses need ranges of their own)",
        ],
    );
    args(&[
        "--cluster-cidr",
        "10.96.0.0/16",
        "--service-cidr",
        "10.97.0.0/16",
    ])
    .validate()
    .expect("adjacent ranges do not overlap");
}

#[test]
fn dual_stack_networks() {
    let config = args(&[
        "--cluster-cidr",
        "10.244.0.0/16,fd00:10:244::/56",
        "--service-cidr",
        "fd00:96::/108,10.96.0.0/16",
    ])
    .validate()
    .expect("valid");
    let network = config.options.network;
    assert_eq!(network.pod_networks.len(), 2);
    assert_eq!(network.pod_networks[1].node_prefix, 64);
    assert_eq!(network.service_cidrs[0].to_string(), "fd00:96::/108");
}
