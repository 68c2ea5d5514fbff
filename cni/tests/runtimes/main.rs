//! gannet-cni driven, unmodified, by real container runtimes: podman's CNI backend and containerd's
//! `ctr run --cni`, both on runc, each inside a sandbox of the test's own (see `sandbox.rs`: a node
//! network namespace, a private mount namespace over a temp dir, a cgroup subtree; nothing in the
//! root network namespace, which is compared before and after).
//!
//! Each test starts two busybox containers (podman: `podman import` of a tarball; ctr: `--rootfs`
//! of the same directory; no registry) on the conflist `gannet-cni install` writes, without its
//! portmap (so no netfilter rule anywhere) and with the IPAM ranges and MTU from a Flannel-style
//! subnet file. It checks inside the containers that the address came from gannet's IPAM, talks
//! pod → pod, pod → node and node → pod over IPv4 and IPv6, checks what the plugin registered with
//! a (fake) agent, then ends one container by exiting its shell and stops the other through the
//! runtime, and checks each time that the runtime's DEL removed the host interface and the address
//! records.
//!
//! Needs root and the Debian packages `podman` (with `conmon`, `runc`), `containerd`, `runc`,
//! `busybox-static` and `nftables`; a test whose packages are missing prints `SKIPPED …` and
//! passes. Anything a runtime does wrong fails.
//!
//! # What the runtimes do (observed on Debian 12 with these tests)
//!
//! podman 4.3.1, CNI backend (`network_backend = "cni"`):
//! - calls `VERSION` first with a dummy environment (`CNI_NETNS=dummy`, `CNI_PATH=dummy`, stdin
//!   `{"cniVersion":"1.0.0"}`), then `ADD` with `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<container
//!   name>` and `CNI_NETNS=/run/netns/netns-<uuid>` (a netns podman creates itself);
//! - its vendored libcni takes the conflist's `cniVersion` (1.0.0; `cniVersions` is ignored) and
//!   refuses a 1.1.0 result ("unsupported CNI result version"); podman refuses a result without
//!   interface `mac`s ("invalid MAC address"); `podman inspect` shows the result's IPv4, IPv6 and
//!   MAC;
//! - when the container exits, `DEL` (with `prevResult`) comes from `podman container cleanup`,
//!   which conmon starts with a reduced environment (`CONTAINERS_CONF` and `PATH` survive,
//!   `CONTAINERS_STORAGE_CONF` does not; storage settings travel as flags). The pod's netns still
//!   exists then, so DEL finds the veth;
//! - `--ip` and `--ip6` (two addresses) arrive as the `ips` capability (`runtimeConfig.ips`,
//!   plain addresses; a single address would be `CNI_ARGS` `IP=`), `--mac-address` as `CNI_ARGS`
//!   `MAC=`; podman passes a taken static address on (this network's IPAM is not host-local, so
//!   podman knows no subnets of it) and shows the plugin's refusal (code 102);
//! - never `CHECK`, `GC` or `STATUS`;
//! - here it needs `default_ulimits` within the machine's hard `nofile` limit (20000; without them
//!   runc fails "error setting rlimit type 7: operation not permitted"), `runtime = "runc"` (crun
//!   1.8: "cgroups in hybrid mode not supported, drop all controllers from cgroupv2") and
//!   `cgroup_manager = "cgroupfs"` (no systemd).
//!
//! containerd 1.6.20 with `ctr run --cni`:
//! - the CNI calls come from the `ctr` process (go-cni), not the daemon: conflists only from
//!   `/etc/cni/net.d`, plugins from `/opt/cni/bin` and `/usr/lib/cni` (`CNI_PATH`), neither
//!   configurable; hence the sandbox's private mount namespace;
//! - `ADD` with an empty `CNI_ARGS`, `CNI_CONTAINERID=<namespace>-<id>` and
//!   `CNI_NETNS=/proc/<task pid>/ns/net`; no `VERSION`, `CHECK`, `GC` or `STATUS`; like podman it
//!   refuses a 1.1.0 result, and it does not need `mac`s;
//! - `DEL` only from a foreground `ctr run`, after the task was deleted: the netns is gone by then
//!   and `CNI_NETNS` is empty, so the kernel already removed the veth and DEL's work is the address
//!   records (and the agent's `Unregister`). A detached `ctr run -d --cni` never sends DEL (ctr's
//!   `run` calls go-cni's `Remove` only on its foreground path, and no other ctr command calls
//!   CNI): its addresses stay allocated until a `GC` (ctr's limitation, not the plugin's);
//! - the CRI plugin (what the kubelet uses, with `K8S_POD_*` arguments, capitalised
//!   `runtimeConfig` keys and a second DEL) is not exercised: Debian 12 packages no CRI client
//!   (no `cri-tools`/`crictl`, no `nerdctl`, no `grpcurl`), so driving it would need a gRPC CRI
//!   client in the test.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests use only some of the package's dependencies"
)]

mod cleanup;
mod containerd;
mod podman;
mod sandbox;
mod scenario;
mod shell;
