//! The binaries' command lines as a person meets them: `--version` on each, `gannet-demo --help`
//! printing help instead of running, and gannetd's control-plane flags under their new and old
//! names. Every gannetd here is refused for its flags before it creates anything (a bad
//! `--server`, `--cgroup-path /proc`), so nothing touches the host.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{
    process::{Command, Output, Stdio},
    time::Duration,
};

use gannet_testkit::{ScratchDir, bin_path, run_in};

/// How long a binary that must answer at once may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// The control-plane variables, old and new: none leaks in from the environment of the test.
const VARIABLES: [&str; 4] = [
    "GANNET_SERVER",
    "GANNET_CONTROL",
    "GANNET_TLS_DIR",
    "GANNET_CONTROL_TLS_DIR",
];

fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin_path(binary));
    cmd.args(args)
        .env_remove("CNI_COMMAND")
        .stdin(Stdio::null());
    for name in VARIABLES {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    run_in(cmd, None, None, TIMEOUT)
        .unwrap_or_else(|e| panic!("{binary} {args:?} must exit at once: {e:#}"))
}

/// Flags and variables of one gannetd start.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_binary_answers_version() {
    for binary in [
        "gannetd",
        "gannet-cni",
        "gannet-control",
        "gannetctl",
        "gannet-demo",
    ] {
        let output = run(binary, &["--version"], &[]);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{binary} --version: {}",
            text(&output.stderr)
        );
        assert_eq!(
            text(&output.stdout),
            format!("{binary} {}\n", env!("CARGO_PKG_VERSION")),
            "{binary} --version prints its name and version"
        );
    }
}

#[test]
fn gannet_cni_run_by_a_runtime_speaks_cni_whatever_its_arguments() {
    // CNI_COMMAND=VERSION is the spec's version query; `--version` is only for a person.
    let mut cmd = Command::new(bin_path("gannet-cni"));
    cmd.arg("--version")
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null());
    let output = run_in(cmd, None, None, TIMEOUT).expect("gannet-cni exits");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let reply: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("a CNI VERSION result, not {stdout:?}: {e}"));
    assert!(
        reply["supportedVersions"].is_array(),
        "the spec's version result: {reply}"
    );
}

#[test]
fn gannet_demo_help_prints_help_and_runs_nothing() {
    let output = run("gannet-demo", &["--help"], &[]);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        text(&output.stderr)
    );
    assert!(
        stdout.contains("Usage: gannet-demo") && !stdout.contains("[1/"),
        "help, not a run of the demo: {stdout}"
    );
    let output = run("gannet-demo", &["--no-such-flag"], &[]);
    assert_eq!(
        output.status.code(),
        Some(64),
        "an unknown flag is a usage error, not a run: {}",
        text(&output.stderr)
    );
}

/// gannetd's flags for `--cgroup-path /proc`: refused before anything is created, whatever
/// else is wrong.
const HARMLESS: [&str; 2] = ["--cgroup-path", "/proc"];

#[test]
fn gannetd_takes_the_control_plane_by_its_new_and_old_names() {
    let address = "tcp://nowhere";
    let cases: [Case<'_>; 5] = [
        (&["--server", address], &[]),
        (&["--control", address], &[]),
        (&[], &[("GANNET_SERVER", address)]),
        (&[], &[("GANNET_CONTROL", address)]),
        // The new variable wins over the old one.
        (
            &[],
            &[("GANNET_SERVER", address), ("GANNET_CONTROL", "unix:/x")],
        ),
    ];
    for (flags, env) in cases {
        let mut args = HARMLESS.to_vec();
        args.extend_from_slice(flags);
        let output = run("gannetd", &args, env);
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{flags:?} {env:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("--server {address}:")),
            "{flags:?} {env:?}: the address is read and named as --server: {stderr}"
        );
    }

    let empty = ScratchDir::new("gannet-nopki");
    std::fs::create_dir_all(&empty.0).expect("creating an empty TLS directory");
    let dir = empty.0.to_str().expect("utf-8");
    let cases: [Case<'_>; 4] = [
        (&["--tls-dir", dir], &[]),
        (&["--control-tls-dir", dir], &[]),
        (&[], &[("GANNET_TLS_DIR", dir)]),
        (&[], &[("GANNET_CONTROL_TLS_DIR", dir)]),
    ];
    for (flags, env) in cases {
        let mut args = HARMLESS.to_vec();
        args.extend_from_slice(&["--server", "https://127.0.0.1:7443"]);
        args.extend_from_slice(flags);
        let output = run("gannetd", &args, env);
        let stderr = text(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{flags:?} {env:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("--tls-dir {dir}: cannot read"))
                && stderr.contains("agent.pem"),
            "{flags:?} {env:?}: the directory is read and named as --tls-dir: {stderr}"
        );
    }
}

/// `gannetd status` takes only the flags it uses; `gannetd cleanup` takes every flag (and
/// variable) of `gannetd run`, so a unit or an operator can pass the agent's own, ignores those
/// it does not use, and says so. Every cleanup here is refused for its relative `--bpf-root`
/// after parsing, before it looks at anything.
#[test]
fn gannetd_cleanup_takes_run_flags_and_status_only_its_own() {
    for flag in ["--server", "--cgroup-path", "--node-name", "--log-format"] {
        let output = run("gannetd", &["status", flag, "x"], &[]);
        assert_eq!(
            output.status.code(),
            Some(64),
            "gannetd status {flag}: {}",
            text(&output.stderr)
        );
    }
    let help = text(&run("gannetd", &["status", "--help"], &[]).stdout);
    assert!(
        help.contains("--bpf-root") && !help.contains("--cgroup-path"),
        "{help}"
    );

    let output = run(
        "gannetd",
        &[
            "cleanup",
            "--bpf-root",
            "relative",
            "--server",
            "unix:/nonexistent/control.sock",
            "--node-name",
            "worker-1",
            "--dataplane",
            "nftables",
            "--cgroup-path",
            "/sys/fs/cgroup",
            "--masquerade=false",
        ],
        &[
            ("GANNET_LOG", "debug"),
            ("GANNET_MANIFEST_DIR", "/nonexistent"),
            ("GANNET_OVERLAY", "host-gw"),
            ("GANNET_MAX_BACKENDS", "10"),
        ],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--bpf-root relative: must be an absolute path")
            && !stderr.contains("unexpected argument"),
        "cleanup accepts run's flags and checks its own: {stderr}"
    );
    assert!(
        stderr.contains(
            "ignoring flags of gannetd run that cleanup does not use \
             flags=\"--cgroup-path,--dataplane,--node-name,--server,--masquerade\""
        ),
        "cleanup names the flags it ignores: {stderr}"
    );
    assert!(
        stderr.contains("variables=\"GANNET_MANIFEST_DIR,GANNET_OVERLAY,GANNET_MAX_BACKENDS\""),
        "cleanup names the variables it ignores (at debug): {stderr}"
    );

    let help = text(&run("gannetd", &["cleanup", "--help"], &[]).stdout);
    let (own, ignored) = help
        .split_once("Accepted for `gannetd run` compatibility (unused):")
        .unwrap_or_else(|| {
            panic!("cleanup --help lists run's flags under their own heading: {help}")
        });
    // An option's own line: "      --flag <VALUE>".
    let lists = |section: &str, flag: &str| section.contains(&format!("\n      {flag} "));
    for flag in ["--bpf-root", "--state-dir", "--log-format"] {
        assert!(lists(own, flag) && !lists(ignored, flag), "{flag}: {help}");
    }
    for flag in [
        "--node-name",
        "--server",
        "--manifest-dir",
        "--cgroup-path",
        "--max-backends",
    ] {
        assert!(lists(ignored, flag) && !lists(own, flag), "{flag}: {help}");
    }
}
