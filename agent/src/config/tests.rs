//! Unit tests of the command line: defaults shared with gannet-cni, variables, errors naming
//! their flags.

use super::*;

#[test]
fn gannet_cni_defaults_are_gannetd_defaults() {
    let cli = Cli::try_parse_from(["gannetd"]).expect("defaults parse");
    let state_dir = cli.run.common.dirs.state_dir;
    assert_eq!(
        state_dir.join(crate::endpoints::SOCKET),
        Path::new(gannet_cni::agent_api::DEFAULT_SOCKET),
        "the conflist gannet-cni installs must find gannetd's socket"
    );
    assert_eq!(
        state_dir.join(SUBNET_FILE),
        Path::new(gannet_cni::config::DEFAULT_SUBNET_FILE),
        "the conflist gannet-cni installs must find gannetd's subnet file"
    );
}

#[test]
fn server_and_tls_dir_take_their_old_names_too() {
    for (server, tls_dir) in [
        ("--server", "--tls-dir"),
        ("--control", "--control-tls-dir"),
    ] {
        let cli = Cli::try_parse_from(["gannetd", server, "unix:/tmp/c.sock", tls_dir, "/tmp/pki"])
            .unwrap_or_else(|e| panic!("{server} and {tls_dir} must parse: {e}"));
        assert_eq!(
            cli.run.server.as_deref(),
            Some("unix:/tmp/c.sock"),
            "{server}"
        );
        assert_eq!(cli.run.tls_dir(), Path::new("/tmp/pki"), "{tls_dir}");
    }
}

#[test]
fn status_takes_only_the_flags_it_uses() {
    for flag in [
        "--server",
        "--node-name",
        "--dataplane",
        "--log-format",
        "--cgroup-path",
    ] {
        assert!(
            Cli::try_parse_from(["gannetd", "status", flag, "x"]).is_err(),
            "gannetd status must refuse {flag}"
        );
    }
}

/// Issue 12: cleanup takes the arguments of `gannetd run`, so a unit or an operator can pass
/// the agent's own; those it does not use are listed under a heading of their own.
#[test]
fn container_runtime_needs_a_control_plane_and_a_unix_socket() {
    let errors = |args: &[&str]| -> String {
        let mut all = vec!["gannetd"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(&all).unwrap_or_else(|e| panic!("{all:?}: {e}"));
        match cli.run.validate() {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let manifests = std::env::temp_dir();
    let manifests = manifests.to_str().unwrap();
    let text = errors(&[
        "--manifest-dir",
        manifests,
        "--container-runtime",
        "unix:///run/containerd/containerd.sock",
    ]);
    assert!(
        text.contains("--container-runtime unix:///run/containerd/containerd.sock: runs the Pods of a control plane"),
        "{text}"
    );
    let text = errors(&["--container-runtime", "tcp://10.0.0.1:1"]);
    assert!(
        text.contains("--container-runtime `tcp://10.0.0.1:1`: only unix sockets"),
        "{text}"
    );
    let text = errors(&[
        "--container-runtime",
        "unix:///x.sock",
        "--pod-cgroup-parent",
        "kubepods",
    ]);
    assert!(
        text.contains("--pod-cgroup-parent kubepods: must start with /"),
        "{text}"
    );
}

#[test]
fn cleanup_accepts_every_flag_of_run() {
    use clap::CommandFactory as _;
    let cli = Cli::command();
    let sub = |name: &str| {
        cli.find_subcommand(name)
            .unwrap_or_else(|| panic!("gannetd {name} exists"))
            .clone()
    };
    let (run, cleanup) = (sub("run"), sub("cleanup"));
    for arg in run.get_arguments() {
        let id = arg.get_id().as_str();
        let theirs = cleanup
            .get_arguments()
            .find(|a| a.get_id() == arg.get_id())
            .unwrap_or_else(|| panic!("gannetd cleanup must accept --{id} as run does"));
        assert_eq!(theirs.get_long(), arg.get_long(), "{id}");
        assert_eq!(theirs.get_env(), arg.get_env(), "{id}");
        let heading = theirs.get_help_heading();
        if CLEANUP_OWN_FLAGS.contains(&id) {
            assert_eq!(heading, None, "--{id} is cleanup's own");
        } else {
            assert_eq!(heading, Some(IGNORED_RUN_FLAGS_HEADING), "--{id}");
        }
    }

    let args = [
        "gannetd",
        "cleanup",
        "--bpf-root",
        "/sys/fs/bpf/x",
        "--node-name",
        "n1",
        "--server",
        "unix:/x.sock",
        "--manifest-dir",
        "/nonexistent",
        "--dataplane",
        "nftables",
        "--cgroup-path",
        "/sys/fs/cgroup",
        "--node-ip",
        "10.0.0.1,10.0.0.2",
        "--masquerade=false",
        "--nodeport-interfaces=",
        "--max-backends",
        "10",
    ];
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let Some(Command::Cleanup(cleanup)) = cli.command else {
        panic!("{args:?} is a cleanup");
    };
    assert_eq!(cleanup.dirs.bpf_root, Path::new("/sys/fs/bpf/x"));
    assert_eq!(
        cleanup.run_flags.flags,
        [
            "--cgroup-path",
            "--dataplane",
            "--node-name",
            "--manifest-dir",
            "--server",
            "--node-ip",
            "--masquerade",
            "--max-backends",
            "--nodeport-interfaces",
        ]
        .map(String::from),
        "the ignored flags are named, each once, in run's order"
    );
    // Values are parsed as run parses them.
    assert!(Cli::try_parse_from(["gannetd", "cleanup", "--dataplane", "bogus"]).is_err());
}

/// Every flag of `gannetd run` can come from the environment (the systemd unit's
/// environment file sets them): `GANNET_` and the flag's name.
#[test]
fn every_flag_of_run_has_a_variable() {
    let run = RunArgs::augment_args(clap::Command::new("run"));
    for arg in run.get_arguments() {
        let long = arg.get_long().expect("every flag is a long flag");
        let expected = format!("GANNET_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(
            arg.get_env().map(|v| v.to_string_lossy().into_owned()),
            Some(expected),
            "--{long}"
        );
    }
}

#[test]
fn lru_maps_below_the_floor_are_refused_naming_the_flag() {
    let cli = Cli::try_parse_from([
        "gannetd",
        "--manifest-dir",
        "/tmp",
        "--max-conntrack",
        "64",
        "--max-affinity",
        "1023",
        "--max-rev-nat",
        "1024",
    ])
    .expect("flags parse");
    let errors = cli
        .run
        .validate()
        .expect_err("capacities below the floor")
        .0;
    for flag in [
        "--max-conntrack 64: must be at least 1024",
        "--max-affinity 1023",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(flag)),
            "an error naming `{flag}`: {errors:?}"
        );
    }
    assert!(
        !errors.iter().any(|e| e.contains("--max-rev-nat")),
        "1024 is enough: {errors:?}"
    );
}
