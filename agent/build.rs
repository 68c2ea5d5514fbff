//! Builds the kernel programs in `ebpf/programs` for `bpfel-unknown-none` with aya-build, so a
//! plain `cargo build` builds everything. The object lands in `OUT_DIR` and is embedded in
//! gannetd with `include_bytes_aligned!`.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};
// Depended on only so that cargo reruns this script when the programs change.
use gannet_ebpf as _;

fn main() -> anyhow::Result<()> {
    // The programs are built with the same stable toolchain, with `-Z build-std=core`, which
    // needs RUSTC_BOOTSTRAP=1 (aya-build honours it). Set it here so no caller has to.
    if std::env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    // aya-build passes every line the inner cargo writes to stderr on as a `cargo:warning`, so
    // its progress ("Compiling core …", ~35 lines) would show as warnings of every build. Quiet
    // keeps its errors and the compiler's messages, which are the lines worth a warning.
    if std::env::var_os("CARGO_TERM_QUIET").is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    }
    let metadata = cargo_metadata_root()?;
    let programs = Package {
        name: "gannet-ebpf",
        root_dir: &metadata,
        ..Default::default()
    };
    // Same toolchain as this build (rustup names it in RUSTUP_TOOLCHAIN), "stable" otherwise.
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    aya_build::build_ebpf([programs], Toolchain::Custom(&toolchain))
        .context("building the kernel programs (needs `rustup component add rust-src` and `cargo install bpf-linker@0.10.1 --locked`; `scripts/setup` does both)")
}

fn cargo_metadata_root() -> anyhow::Result<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent crate has no parent directory"))?
        .join("ebpf")
        .join("programs");
    root.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))
}
