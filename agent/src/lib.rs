//! gannetd, the gannet node agent: loads and owns the eBPF data plane and keeps it in step with
//! the services it is given.

pub mod config;
pub mod conntrack;
pub mod control;
pub mod datapath;
pub mod endpoints;
pub mod kubelet;
pub mod lock;
pub mod logging;
pub mod masquerade;
pub mod metrics;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod nodeport;
pub mod overlay;
pub mod run;
pub mod sockdiag;
pub mod status;
pub mod subnet;
mod sys;
