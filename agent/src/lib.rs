//! gannetd, the gannet node agent: loads and owns the eBPF data plane and keeps it in step with
//! the services it is given.

pub mod config;
pub mod datapath;
pub mod logging;
pub mod run;
mod sys;
