//! Socket-level ClusterIP load balancing, end to end: gannetd attached to a test cgroup, backend
//! servers in pod namespaces, clients in a pod namespace *and* the test cgroup, real sockets.
//!
//! The behaviour checks run against both data planes, with the same assertions: the eBPF socket
//! load balancer (gannetd in the test's namespace, attached to the test cgroup), and the nftables
//! data plane (`*_nftables`: gannetd runs `--dataplane nftables` in the client pod's namespace,
//! whose table translates the client's connections in the nat output hook, as for a process on a
//! node). Where the planes differ by design the check says so.
//!
//! Nothing here touches the root network namespace or the root cgroup.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests link all of the package's dependencies; these use the kit"
)]

mod affinity;
mod balancing;
mod endpoints;
mod fixture;
mod lifecycle;
mod startup;
mod udp;
