//! Unit tests of the configuration, the environment and the requests.

use std::collections::BTreeMap;

use crate::spec::CniError;

use super::env::{CniEnv, parse_env};
use super::parse_config;
use super::requests::{Source, parse_requests};

fn env(vars: &[(&str, &str)]) -> Result<CniEnv, CniError> {
    let map: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    parse_env(&|name| map.get(name).cloned())
}

#[test]
fn env_names_missing_and_invalid_variables() {
    let err = env(&[("CNI_COMMAND", "ADD")]).expect_err("missing");
    assert_eq!(err.code, 4);
    assert!(
        err.msg.contains("CNI_CONTAINERID")
            && err.msg.contains("CNI_IFNAME")
            && err.msg.contains("CNI_NETNS"),
        "{err}"
    );
    let err = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "-bad"),
        ("CNI_IFNAME", "a/b"),
        ("CNI_NETNS", "/x"),
    ])
    .expect_err("invalid");
    assert!(
        err.msg.contains("CNI_CONTAINERID") && err.msg.contains("CNI_IFNAME"),
        "{err}"
    );
    let err = env(&[("CNI_COMMAND", "NOPE")]).expect_err("bad verb");
    assert!(err.msg.contains("CNI_COMMAND"), "{err}");
    let ok = env(&[
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web",
        ),
    ])
    .expect("DEL needs no netns");
    assert_eq!(ok.pod_name(), Some("web"));
    assert_eq!(ok.pod_namespace(), Some("ns"));
    let err = env(&[("CNI_COMMAND", "STATUS"), ("CNI_ARGS", "novalue")]).expect_err("args");
    assert!(err.msg.contains("CNI_ARGS"), "{err}");
}

#[test]
fn config_errors_name_the_field() {
    let err = parse_config(b"{").expect_err("not json");
    assert_eq!(err.code, 6);
    let err = parse_config(br#"{"cniVersion":"0.2.0","name":"n"}"#).expect_err("old");
    assert_eq!(err.code, 1);
    let err = parse_config(br#"{"cniVersion":"1.0.0"}"#).expect_err("no name");
    assert_eq!(err.code, 7);
    assert!(err.msg.contains("name"), "{err}");
    let err = parse_config(br#"{"cniVersion":"1.0.0","name":"n","mtu":"x"}"#).expect_err("mtu");
    assert_eq!(err.code, 6);
    assert!(err.msg.contains("`mtu`"), "{err}");
    let err = parse_config(
        br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}}"#,
    )
    .expect_err("range");
    assert_eq!(err.code, 7);
    assert!(err.msg.contains("ipam.ranges[0][0].rangeStart"), "{err}");
    let err = parse_config(
        br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/33"}]]}}"#,
    )
    .expect_err("subnet");
    assert_eq!(err.code, 6);
    assert!(err.msg.contains("ipam.ranges[0][0].subnet"), "{err}");
    let err =
        parse_config(br#"{"cniVersion":"1.0.0","name":"n","ipMasq":true}"#).expect_err("masq");
    assert_eq!(err.code, 2);
    assert!(
        err.msg.contains("ipMasq") && err.msg.contains("true"),
        "{err}"
    );
}

#[test]
fn builtin_or_delegated_ipam() {
    let (conf, _) =
        parse_config(br#"{"cniVersion":"1.1.0","name":"n","type":"gannet-cni"}"#).expect("ok");
    assert!(conf.builtin_ipam());
    let (conf, _) = parse_config(
        br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"any"}]]}}"#,
    )
    .expect("the delegate's settings are not ours to check");
    assert!(!conf.builtin_ipam());
    assert_eq!(conf.ipam_type(), "host-local");
}

#[test]
fn requests_from_capabilities_args_and_cni_args() {
    let env = |args: &str| {
        parse_env(&|name: &str| match name {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_NETNS" => Some("/x".into()),
            "CNI_ARGS" => Some(args.into()),
            _ => None,
        })
        .expect("env")
    };
    let conf = |extra: &str| {
        parse_config(format!(r#"{{"cniVersion":"1.0.0","name":"n"{extra}}}"#).as_bytes())
            .expect("conf")
            .0
    };
    let r = parse_requests(
        &conf(""),
        &env("IgnoreUnknown=1;IP=10.0.0.5,fd00::5;MAC=02:00:00:00:00:01"),
    )
    .expect("CNI_ARGS");
    assert_eq!(
        r.ips,
        [
            ("10.0.0.5".parse().expect("ip"), Source::CniArgs("IP")),
            ("fd00::5".parse().expect("ip"), Source::CniArgs("IP"))
        ]
    );
    assert_eq!(r.mac, Some(([2, 0, 0, 0, 0, 1], Source::CniArgs("MAC"))));
    let r = parse_requests(
        &conf(r#","runtimeConfig":{"ips":["10.0.0.7/24"],"mac":"02:00:00:00:00:02"}"#),
        &env("IP=10.0.0.5;MAC=02:00:00:00:00:01"),
    )
    .expect("capabilities win");
    assert_eq!(r.ips[0].0.to_string(), "10.0.0.7");
    assert_eq!(r.ips[0].1.to_string(), "field `runtimeConfig.ips[0]`");
    assert_eq!(r.mac.expect("mac").0, [2, 0, 0, 0, 0, 2]);
    let err = parse_requests(&conf(""), &env("IP=10.0.0.300")).expect_err("bad ip");
    assert_eq!(err.code, 4);
    assert!(err.msg.contains("CNI_ARGS IP=10.0.0.300"), "{err}");
    let err = parse_requests(&conf(""), &env("MAC=01:00:5e:00:00:01")).expect_err("multicast");
    assert_eq!(err.code, 4);
    assert!(
        err.msg.contains("CNI_ARGS MAC=01:00:5e:00:00:01") && err.msg.contains("multicast"),
        "{err}"
    );
    let err = parse_requests(&conf(r#","runtimeConfig":{"ips":["x"]}"#), &env(""))
        .expect_err("bad field");
    assert_eq!(err.code, 7);
    assert!(err.msg.contains("runtimeConfig.ips[0]"), "{err}");
    let err = parse_requests(&conf(r#","args":{"cni":{"mac":"zz"}}"#), &env(""))
        .expect_err("bad args.cni.mac");
    assert_eq!(err.code, 7);
    assert!(err.msg.contains("args.cni.mac"), "{err}");
}
