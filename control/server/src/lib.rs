//! gannet-control, the compact control plane: the gRPC API of `gannet-api` over a store of
//! Kubernetes objects (embedded redb or etcd), with the allocators and controllers that make the
//! objects useful to gannet's agents.
//!
//! - [`store`]: the [`store::Store`] trait and its two backends;
//! - [`registry`]: API semantics (validation, allocation, revisions, preconditions);
//! - [`controller`]: the endpoints controller and the node lifecycle controller;
//! - [`grpc`]: the tonic services and their authentication;
//! - [`server`]: listeners (unix socket, TLS, loopback plain TCP) and start-up;
//! - [`certs`]: the CA and certificates `gannet-control certs` writes;
//! - [`metrics`]: the Prometheus metrics served on `--metrics-address`;
//! - [`config`]: the command line, validated in one place.

pub mod alloc;
pub mod certs;
pub mod config;
pub mod controller;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod node_proxy;
pub mod registry;
pub mod server;
pub mod store;
pub mod validate;

// The binary's error type; the library returns `thiserror` enums.
use anyhow as _;
// Used by the integration tests only.
#[cfg(test)]
use {gannet_testkit as _, libc as _, serde_yaml_ng as _, tempfile as _};
