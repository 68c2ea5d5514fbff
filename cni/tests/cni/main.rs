//! Integration tests of gannet-cni: the built binary driven as a runtime drives it, inside network
//! namespaces of the tests' own (never the root namespace), with real netlink, real reference
//! plugins and real packets.
#![expect(
    unused_crate_dependencies,
    reason = "integration tests use only some of the package's dependencies"
)]

mod agent;
mod chaining;
mod conformance;
mod del;
mod errors;
mod harness;
mod ipam;
mod requests;
mod traffic;
