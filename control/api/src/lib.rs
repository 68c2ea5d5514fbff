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

pub mod pod_logs;

pub use client::{
    Applied, Auth, Change, Client, ClientError, Credentials, DEFAULT_SERVER, DEFAULT_SOCKET,
    DeleteOptions, EventType, IMAGE_CHUNK, ListWatch, ListedObjects, MAX_MESSAGE_SIZE,
    NodeRegistration, NodeResources, ObjectList, Outcome, Registered, SERVER_ENV, ServerAddr,
    Session, WatchEvent, WatchStream, chain,
};
pub use object::{ConvertError, DEFAULT_NAMESPACE, Kind, Object, Typed, object_label};
pub use problem::{MAX_PROBLEMS, Problem, invalid_status, problems_of};

// The generated code names `tonic_prost::ProstCodec`.
use tonic_prost as _;
