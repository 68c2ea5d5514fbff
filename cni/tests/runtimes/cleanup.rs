//! The sandbox's guards: a test that panics while containers run leaves nothing behind.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::containerd::{self, Containerd};
use crate::podman::{self, Podman};
use crate::sandbox::skip;
use crate::scenario::Runtime;

/// What a sandbox had while its container ran.
#[derive(Debug, Default)]
struct Footprint {
    netns: PathBuf,
    temp_dir: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
    pids: BTreeSet<i32>,
}

/// Starts a container with `make`'s runtime, records its footprint, panics, and checks that the
/// unwinding removed all of it.
fn panic_with_a_running_container<R: Runtime>(make: impl FnOnce() -> R) {
    let seen = Mutex::new(Footprint::default());
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut rt = make();
        let _container = rt.start("doomed");
        let sandbox = rt.sandbox();
        let mut pids = sandbox.cgroups.pids();
        pids.extend(
            sandbox
                .node
                .pids()
                .expect("processes in the node namespace"),
        );
        *seen.lock().expect("lock") = Footprint {
            netns: sandbox.node.path().to_owned(),
            temp_dir: sandbox.path().to_owned(),
            cgroup_dirs: sandbox.cgroups.dirs(),
            pids,
        };
        panic!("deliberate panic with container `doomed` running (this message is expected)");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");
    let seen = seen.into_inner().expect("lock");
    let name = std::any::type_name::<R>();
    assert!(
        !seen.cgroup_dirs.is_empty() && !seen.pids.is_empty(),
        "{name}: nothing was recorded: {seen:?}"
    );
    for path in [&seen.netns, &seen.temp_dir]
        .into_iter()
        .chain(&seen.cgroup_dirs)
    {
        assert!(
            !Path::new(path).exists(),
            "{name}: {} is still there after the panic",
            path.display()
        );
    }
    // A zombie (state Z) has exited and holds nothing but its pid until its parent (or, once
    // reparented, the machine's init) reaps it.
    let alive: Vec<String> = seen
        .pids
        .iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter(|stat| {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            state != Some(Some('Z'))
        })
        .collect();
    assert!(
        alive.is_empty(),
        "{name}: processes {alive:?} (of {:?}) survived the panic",
        seen.pids
    );
}

/// Podman and containerd sandboxes that panic with a container running: containers, conmon,
/// containerd and its shims are killed, the cgroups, the node namespace and the temp dir removed.
#[test]
fn a_panicking_test_leaves_no_runtime_state_behind() {
    let mut ran = 0;
    match podman::prerequisites_missing() {
        Some(why) => skip(
            "a_panicking_test_leaves_no_runtime_state_behind (podman)",
            &why,
        ),
        None => {
            panic_with_a_running_container(Podman::new);
            ran += 1;
        }
    }
    match containerd::prerequisites_missing() {
        Some(why) => skip(
            "a_panicking_test_leaves_no_runtime_state_behind (containerd)",
            &why,
        ),
        None => {
            panic_with_a_running_container(Containerd::new);
            ran += 1;
        }
    }
    eprintln!("checked the cleanup of {ran} runtime(s)");
}
