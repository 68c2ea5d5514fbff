//! gannet's kernel programs are the binaries of this crate (see `src/sock.rs`). This empty
//! library lets the agent depend on the crate, so its build script reruns when they change.
#![no_std]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        unused_crate_dependencies,
        reason = "build-std links compiler_builtins into every crate"
    )
)]

// The binaries use these; the library only exists as the build-dependency anchor.
use aya_ebpf as _;
use gannet_common as _;
