//! gannet-control's API: the protobuf services (generated at build time from `proto/`), the
//! Kubernetes objects they carry, and a client for gannetctl and agents.
//!
//! - [`pb`]: the generated messages, clients and servers (`gannet.control.v1`);
//! - [`Object`] and [`Kind`]: the five kinds served, as k8s-openapi types, and their framing;
//! - [`Client`]: one method per RPC; [`ListWatch`]: list, then watch, resume, relist;
//! - [`metrics`]: the `/metrics` endpoint gannetd and gannet-control serve.

mod client;
pub mod metrics;
mod object;
mod problem;

/// The generated protobuf messages and tonic services.
#[expect(
    clippy::doc_markdown,
    clippy::default_trait_access,
    clippy::too_many_lines,
    reason = "generated code"
)]
pub mod pb {
    tonic::include_proto!("gannet.control.v1");
}

/// File names in the TLS directory that `gannet-control certs` writes and clients read.
pub mod pki {
    /// The cluster CA's certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// The agents' client certificate and its key.
    pub const AGENT_CERT: &str = "agent.pem";
    pub const AGENT_KEY: &str = "agent-key.pem";
    /// The administrators' bearer token (gannetctl).
    pub const TOKEN: &str = "token";
}

/// Where the kubelet role keeps the containers' logs on a node, as gannetd writes them through the
/// runtime and `gannetctl logs` reads them.
pub mod pod_logs {
    use std::path::{Path, PathBuf};

    /// The directory in gannetd's `--state-dir` that holds one directory per pod.
    pub const DIR: &str = "pod-logs";

    /// A pod's log directory in `state_dir` (its sandbox's `log_directory`).
    #[must_use]
    pub fn pod_dir(state_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
        state_dir
            .join(DIR)
            .join(format!("{namespace}_{name}_{uid}"))
    }

    /// A container attempt's log file, relative to its pod's directory (its `log_path`).
    #[must_use]
    pub fn container_file(container: &str, attempt: u32) -> String {
        format!("{container}/{attempt}.log")
    }
}

pub use client::{
    Applied, Auth, Change, Client, ClientError, Credentials, DEFAULT_SERVER, DEFAULT_SOCKET,
    DeleteOptions, EventType, ListWatch, ListedObjects, MAX_MESSAGE_SIZE, NodeRegistration,
    NodeResources, ObjectList, Outcome, Registered, SERVER_ENV, ServerAddr, WatchEvent,
    WatchStream, chain,
};
pub use object::{ConvertError, DEFAULT_NAMESPACE, Kind, Object, Typed, object_label};
pub use problem::{MAX_PROBLEMS, Problem, invalid_status, problems_of};

// The generated code names `tonic_prost::ProstCodec`.
use tonic_prost as _;
