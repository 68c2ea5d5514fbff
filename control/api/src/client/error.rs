//! What a call can fail with, each cause printed once.

use super::*;

/// Errors of [`Client`] calls. Status codes of the API map to the variants documented in the
/// `.proto` file.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid server address {0:?}: use unix:PATH, https://HOST:PORT, or http://HOST:PORT \
         (a loopback server started with --insecure)"
    )]
    Address(String),
    /// Its message carries the causes of `source` (each once); [`chain`] and `anyhow`'s `{:#}`
    /// do not repeat them.
    #[error("cannot connect to {server}: {}", causes(source))]
    Connect {
        server: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid TLS credentials: {0}")]
    Tls(String),
    /// `INVALID_ARGUMENT`: nothing was applied.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
    /// `ABORTED`: a stale `resourceVersion`.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The server's message says what was not found (`Service default/web not found`).
    #[error("{}", not_found(.0))]
    NotFound(String),
    /// `OUT_OF_RANGE`: the watch revision was compacted; list again.
    #[error("expired, list again: {0}")]
    Expired(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server or its store cannot be reached; retry with backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(Box<Status>),
    #[error("bad object from the server: {0}")]
    Convert(#[from] ConvertError),
    #[error("the server ended the watch")]
    WatchEnded,
}

/// `error` and its causes, `: `-separated, each told once: tonic and hyper wrap an error in
/// layers that repeat their source's message (`transport error: transport error: No such file or
/// directory (os error 2): No such file or directory (os error 2)`); a cause whose text an
/// earlier message already holds is left out.
#[must_use]
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        push_cause(&mut parts, error.to_string());
        next = error.source();
    }
    parts.join(": ")
}

/// The causes below a connection error, without tonic's uninformative `transport error`.
pub(super) fn causes(source: &tonic::transport::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(source);
    while let Some(error) = next {
        push_cause(&mut parts, error.to_string());
        next = error.source();
    }
    if parts.is_empty() {
        source.to_string()
    } else {
        parts.join(": ")
    }
}

pub(super) fn push_cause(parts: &mut Vec<String>, text: String) {
    let said = |t: &str| parts.iter().any(|p| p.contains(t));
    if text.is_empty() || text == "transport error" && !parts.is_empty() || said(&text) {
        return;
    }
    parts.push(text);
}

pub(super) fn not_found(message: &str) -> String {
    if message.contains("not found") {
        message.to_owned()
    } else {
        format!("not found: {message}")
    }
}

pub(super) struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl ClientError {
    /// Whether trying again later (with backoff, maybe after reconnecting) can succeed.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::Unavailable(_) | Self::WatchEnded
        ) || matches!(self, Self::Status(status) if matches!(status.code(), Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted))
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => Self::Invalid(problems_of(&status)),
            Code::Aborted => Self::Conflict(message),
            Code::NotFound => Self::NotFound(message),
            Code::OutOfRange => Self::Expired(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::Unavailable => Self::Unavailable(message),
            _ => Self::Status(Box::new(status)),
        }
    }
}
