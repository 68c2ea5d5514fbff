//! `scripts/install` into a temporary root (`--destdir`), from the binaries the suite built:
//! what lands where, the units through `systemd-analyze verify --root`, the environment files
//! against the daemons' own flags, and `--uninstall` leaving the root as it found it (but for a
//! configuration file an operator changed). Nothing outside the temporary directories is
//! written, and nothing is started.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use gannet_testkit::{ScratchDir, bin_path, cgroup2_root, run_in};

const TIMEOUT: Duration = Duration::from_secs(120);

const BINARIES: [&str; 3] = ["gannetd", "gannet-control", "gannetctl"];
const UNITS: [&str; 2] = ["gannetd.service", "gannet-control.service"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit lives in the repository")
        .to_path_buf()
}

/// The directory holding the binaries the suite built (`target/debug`).
fn build_dir() -> PathBuf {
    let gannetd = bin_path("gannetd");
    for name in BINARIES.iter().chain(&["gannet-cni"]) {
        let _ = bin_path(name);
    }
    gannetd
        .parent()
        .expect("a binary has a directory")
        .to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(mut cmd: Command, what: &str) -> Output {
    cmd.env_remove("DESTDIR");
    run_in(cmd, None, None, TIMEOUT).unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// A temporary root: created, removed with everything in it when the test ends or panics.
fn scratch_root(prefix: &str) -> ScratchDir {
    let dir = ScratchDir::new(prefix);
    fs::create_dir(&dir.0).expect("creating the temporary root");
    dir
}

/// `scripts/install ARGS --destdir ROOT`, which must succeed.
fn install(root: &Path, args: &[&str]) -> String {
    assert!(
        root.starts_with(std::env::temp_dir()) && root != std::env::temp_dir(),
        "never install outside a temporary root: {}",
        root.display()
    );
    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.args(args).arg("--destdir").arg(root);
    let output = run(cmd, "scripts/install");
    assert_eq!(
        output.status.code(),
        Some(0),
        "scripts/install {args:?} --destdir {}: {}{}",
        root.display(),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            out.insert(
                path.strip_prefix(root)
                    .expect("under the root")
                    .display()
                    .to_string(),
            );
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The variables a binary's subcommand documents in its `--help` (`[env: NAME=]`).
fn variables_in_help(binary: &str, subcommand: &str) -> BTreeSet<String> {
    let mut cmd = Command::new(bin_path(binary));
    cmd.args([subcommand, "--help"]);
    let help = text(&run(cmd, "--help").stdout);
    help.split("[env: ")
        .skip(1)
        .map(|rest| rest.split('=').next().unwrap_or_default().to_owned())
        .collect()
}

/// `NAME=VALUE` of the commented defaults (`#NAME=VALUE`) of an environment file; every
/// variable line must be commented out, so the defaults the binary has apply.
fn commented_defaults(path: &Path) -> Vec<(String, String)> {
    let content = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut defaults = Vec::new();
    for line in content.lines() {
        assert!(
            line.is_empty() || line.starts_with('#'),
            "{}: every setting is a commented default, found {line:?}",
            path.display()
        );
        if let Some((name, value)) = line.strip_prefix('#').and_then(|l| l.split_once('='))
            && name.starts_with("GANNET_")
            && !name.contains(' ')
        {
            defaults.push((name.to_owned(), value.to_owned()));
        }
    }
    defaults
}

/// The environment file names every variable of the daemon's flags, and its defaults, set,
/// are accepted: the daemon runs with them and `refused`, flags its validation refuses, and
/// must exit 64 naming that refusal and nothing else.
fn check_env_file(root: &Path, file: &str, binary: &str, refused: &[String], refusal: &str) {
    let path = root.join("etc/gannet").join(file);
    let defaults = commented_defaults(&path);
    let named: BTreeSet<String> = defaults.iter().map(|(n, _)| n.clone()).collect();
    let documented = variables_in_help(binary, "run");
    let missing: Vec<_> = documented.difference(&named).collect();
    assert!(
        missing.is_empty(),
        "{file} must name every variable of `{binary} run` (as a commented default); \
         missing: {missing:?}"
    );
    let unknown: Vec<_> = named
        .iter()
        .filter(|n| !documented.contains(*n) && n.as_str() != "GANNET_LOG")
        .collect();
    assert!(
        unknown.is_empty(),
        "{file} names variables {binary} does not read: {unknown:?}"
    );

    let mut cmd = Command::new(bin_path(binary));
    cmd.args(refused);
    for (name, value) in defaults.iter().filter(|(_, v)| !v.is_empty()) {
        cmd.env(name, value);
    }
    let output = run(cmd, binary);
    let stderr = text(&output.stderr);
    assert!(
        output.status.code() == Some(64)
            && stderr.contains(refusal)
            && stderr.matches("\n  ").count() == 1,
        "{binary} {refused:?} with the defaults of {file} set must be refused for {refusal} \
         alone (the defaults themselves parse and validate): {stderr}"
    );
}

/// `systemd-analyze verify --root ROOT` of the installed units, with the host's own units
/// (targets, `network-online.target`) copied into `ROOT/usr/lib/systemd/system` for the run
/// and removed after it. It checks the units' syntax and that each `ExecStart=` binary exists
/// and is executable inside the root.
fn verify_units(root: &Path) -> Output {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is needed to verify the units (Debian package systemd; scripts/setup \
         installs it)"
    );
    let host_units = Path::new("/usr/lib/systemd/system");
    let units = root.join("usr/lib/systemd/system");
    fs::create_dir_all(&units).expect("creating the host units' directory in the root");
    for entry in fs::read_dir(host_units).expect("the host's systemd units") {
        let entry = entry.expect("a directory entry");
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::copy(entry.path(), units.join(entry.file_name())).expect("copying a host unit");
        }
    }
    let mut cmd = Command::new(analyze);
    cmd.arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("--man=no")
        .args(UNITS);
    let output = run(cmd, "systemd-analyze verify");
    fs::remove_dir_all(root.join("usr/lib")).expect("removing the host units again");
    output
}

#[test]
fn install_then_uninstall_leaves_the_root_as_it_was() {
    let root = scratch_root("gannet-install");
    let from = build_dir();
    let from_arg = from.to_str().expect("a UTF-8 build directory");
    let stdout = install(&root.0, &["--from", from_arg]);
    assert!(
        stdout.contains("Nothing was started"),
        "the install says it started nothing: {stdout}"
    );

    // The binaries, executable, as built.
    let bin = root.0.join("usr/local/bin");
    for name in BINARIES {
        let path = bin.join(name);
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o755,
            "{}",
            path.display()
        );
        assert_eq!(
            meta.len(),
            fs::metadata(from.join(name))
                .expect("the built binary")
                .len(),
            "{} is the built {name}",
            path.display()
        );
    }
    let mut version = Command::new(bin.join("gannetd"));
    version.arg("--version");
    let output = run(version, "the installed gannetd --version");
    assert!(
        text(&output.stdout).starts_with("gannetd "),
        "the installed gannetd runs: {output:?}"
    );

    // gannet-cni through its own installer: the binary and a conflist naming it.
    let cni = root.0.join("opt/cni/bin/gannet-cni");
    let mode = fs::metadata(&cni)
        .expect("gannet-cni installed")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "{}", cni.display());
    let conflist = root.0.join("etc/cni/net.d/10-gannet.conflist");
    let conf: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&conflist).expect("the conflist installed"))
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", conflist.display()));
    assert_eq!(conf["name"], "gannet", "{conf}");
    assert_eq!(conf["plugins"][0]["type"], "gannet-cni", "{conf}");
    assert_eq!(
        conf["plugins"][0]["agentSocket"], "/run/gannet/cni.sock",
        "{conf}"
    );

    // The units: the binaries of the prefix, their environment files, no cleanup on stop.
    let unit_dir = root.0.join("usr/local/lib/systemd/system");
    for (unit, binary, env) in [
        ("gannetd.service", "gannetd", "gannetd.env"),
        (
            "gannet-control.service",
            "gannet-control",
            "gannet-control.env",
        ),
    ] {
        let path = unit_dir.join(unit);
        let content =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let settings: Vec<&str> = content
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .collect();
        for expected in [
            format!("ExecStart=/usr/local/bin/{binary} run"),
            format!("EnvironmentFile=-/etc/gannet/{env}"),
            "Restart=on-failure".to_owned(),
            "KillSignal=SIGTERM".to_owned(),
        ] {
            assert!(
                settings.contains(&expected.as_str()),
                "{unit}: {expected}: {content}"
            );
        }
        assert!(
            !settings
                .iter()
                .any(|l| l.starts_with("ExecStop") || l.contains("cleanup")),
            "{unit}: nothing may tear the data plane down on a stop: {content}"
        );
        assert!(
            !settings.iter().any(|l| l.starts_with("RuntimeDirectory")),
            "{unit}: systemd would remove /run/gannet (the CNI socket, the pods' registry) on a \
             stop: {content}"
        );
    }
    let gannetd_unit = fs::read_to_string(unit_dir.join("gannetd.service")).expect("the unit");
    let dependencies: Vec<&str> = gannetd_unit
        .lines()
        .filter(|l| {
            ["After=", "Wants=", "Requires=", "BindsTo="]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    assert!(
        dependencies.contains(&"After=gannet-control.service")
            && !dependencies
                .iter()
                .any(|l| !l.starts_with("After=") && l.contains("gannet-control")),
        "gannetd starts after a control plane on the same host, and does not pull one in: \
         {dependencies:?}"
    );

    // Verified by systemd, inside the root: and the check is real, a missing binary fails it.
    let output = verify_units(&root.0);
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "systemd-analyze verify of the installed units: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let moved = root.0.join("usr/local/bin/gannetd.away");
    fs::rename(bin.join("gannetd"), &moved).expect("moving gannetd away");
    let output = verify_units(&root.0);
    fs::rename(&moved, bin.join("gannetd")).expect("moving gannetd back");
    assert!(
        !output.status.success() && text(&output.stderr).contains("/usr/local/bin/gannetd"),
        "systemd-analyze verify must fail when ExecStart's binary is missing from the root: {}",
        text(&output.stderr)
    );

    // The environment files name every flag's variable, and their defaults are accepted; for
    // gannetd also by `gannetd cleanup`, which takes run's flags and variables.
    // (run checks its cgroup: the one of this host, which may be a hybrid one.)
    let cgroup = cgroup2_root().expect("the cgroup v2 mount");
    let args = |list: &[&str]| list.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let mut run_args = args(&["run", "--bpf-root", "relative", "--cgroup-path"]);
    run_args.push(cgroup.display().to_string());
    let refusal = "--bpf-root relative: must be an absolute path";
    check_env_file(&root.0, "gannetd.env", "gannetd", &run_args, refusal);
    let cleanup_args = args(&["cleanup", "--bpf-root", "relative"]);
    check_env_file(&root.0, "gannetd.env", "gannetd", &cleanup_args, refusal);
    let control_args = args(&["run", "--node-port-range", "x"]);
    check_env_file(
        &root.0,
        "gannet-control.env",
        "gannet-control",
        &control_args,
        "--node-port-range x: must be",
    );

    // Everything installed is in the list --uninstall works from.
    let manifest = fs::read_to_string(root.0.join("usr/local/share/gannet/installed-files"))
        .expect("the list of installed files");
    let listed: BTreeSet<String> = manifest
        .lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2))
        .map(|p| p.trim_start_matches('/').to_owned())
        .chain(["usr/local/share/gannet/installed-files".to_owned()])
        .collect();
    assert_eq!(
        tree(&root.0),
        listed,
        "the list names exactly what was installed"
    );

    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.args(["--uninstall", "--destdir"]).arg(&root.0);
    let output = run(cmd, "scripts/install --uninstall");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let left = tree(&root.0);
    assert!(
        left.is_empty(),
        "--uninstall leaves nothing behind: {left:?}"
    );
}

#[test]
fn a_changed_environment_file_stays_and_an_unchanged_one_is_updated() {
    let root = scratch_root("gannet-install-conf");
    let build = build_dir();
    let from = build.to_str().expect("a UTF-8 build directory");
    install(&root.0, &["--from", from]);
    let changed = root.0.join("etc/gannet/gannetd.env");
    let mut content = fs::read_to_string(&changed).expect("gannetd.env");
    content.push_str("GANNET_NODE_NAME=worker-1\n");
    fs::write(&changed, &content).expect("changing gannetd.env");
    let unchanged = root.0.join("etc/gannet/gannet-control.env");
    fs::write(&unchanged, "# an older default\n").expect("writing an older default");
    // The older default, recorded as installed: as if an earlier version had installed it.
    let list = root.0.join("usr/local/share/gannet/installed-files");
    let sum = {
        let mut cmd = Command::new("sha256sum");
        cmd.arg(&unchanged);
        let out = text(&run(cmd, "sha256sum").stdout);
        out.split(' ').next().unwrap_or_default().to_owned()
    };
    let manifest = fs::read_to_string(&list).expect("the list");
    let manifest: String = manifest
        .lines()
        .map(|l| {
            if l.ends_with(" /etc/gannet/gannet-control.env") {
                format!("conf {sum} /etc/gannet/gannet-control.env\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&list, manifest).expect("rewriting the list");

    let stdout = install(&root.0, &["--from", from]);
    assert!(
        stdout.contains("/etc/gannet/gannetd.env: kept (changed since it was installed)"),
        "a reinstall says it keeps the changed file: {stdout}"
    );
    assert_eq!(fs::read_to_string(&changed).expect("gannetd.env"), content);
    assert_eq!(
        fs::read(&unchanged).expect("gannet-control.env"),
        fs::read(repo().join("dist/gannet-control.env")).expect("the default"),
        "a file nobody changed since an earlier install is replaced by the new default"
    );

    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.args(["--uninstall", "--destdir"]).arg(&root.0);
    let output = run(cmd, "scripts/install --uninstall");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        text(&output.stdout)
            .contains("kept /etc/gannet/gannetd.env (changed since it was installed)"),
        "--uninstall names the file it keeps: {}",
        text(&output.stdout)
    );
    assert_eq!(
        tree(&root.0),
        ["etc", "etc/gannet", "etc/gannet/gannetd.env"]
            .map(String::from)
            .into(),
        "only the changed file (and its directories) stays"
    );
    assert_eq!(fs::read_to_string(&changed).expect("gannetd.env"), content);

    // Nothing installed under the prefix any more: --uninstall says so and fails.
    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.args(["--uninstall", "--destdir"]).arg(&root.0);
    let output = run(cmd, "scripts/install --uninstall again");
    assert!(
        output.status.code() == Some(1)
            && text(&output.stderr).contains("installed-files: not found"),
        "{output:?}"
    );
}
