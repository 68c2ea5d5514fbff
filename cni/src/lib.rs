//! `gannet-cni`: a CNI plugin (spec 1.1.0, also 0.3.x, 0.4.0, 1.0.0) for routed pod networking, with
//! built-in IPAM and an optional registration of every pod endpoint with the gannet agent.
//!
//! The binary is a thin shell around [`plugin::run`]; the agent depends on this library for the
//! [`agent_api`] wire types.

pub mod agent_api;
pub mod config;
pub mod delegate;
pub mod install;
pub mod ipam;
pub mod net;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod plugin;
pub mod reaper;
pub mod spec;
pub mod subnet_env;

#[cfg(test)]
use gannet_testkit as _;
#[cfg(test)]
use tempfile as _;
// Used only by the binary's command line; `unused_crate_dependencies` is checked per target.
use anyhow as _;
use clap as _;
