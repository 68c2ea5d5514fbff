//! The one error type of this crate: a problem in one document of one manifest file.

use std::fmt;
use std::path::PathBuf;

/// One document of a file that failed: names file, object and field.
///
/// Displays as `{file}: document {n}: {object}: {field}: {message}`, leaving out the parts that are
/// not known, e.g. `svc.yaml: document 2: Service default/web: spec.ports[0].protocol: protocol
/// SCTP is not supported (gannet balances TCP and UDP)`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{message}", .file.display(), Context(self))]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based position of the document in the file, counting empty documents, as a person counts
    /// the `---` separators. 0 when the problem is not tied to one document: the file could not be
    /// read, or the object was handed to [`desired_state`](crate::desired_state) directly rather
    /// than read by [`parse_documents`](crate::parse_documents).
    pub document: usize,
    /// `Service default/web`, `EndpointSlice default/web-abc12`; `None` when the document could not
    /// be read far enough to tell.
    pub object: Option<String>,
    /// Path of the offending field, e.g. `spec.ports[0].protocol`.
    pub field: Option<String>,
    pub message: String,
}

/// The optional middle of [`ManifestError`]'s message, each part followed by `": "`.
struct Context<'a>(&'a ManifestError);

impl fmt::Display for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ManifestError {
            document,
            object,
            field,
            ..
        } = self.0;
        if *document != 0 {
            write!(f, "document {document}: ")?;
        }
        if let Some(object) = object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = field {
            write!(f, "{field}: ")?;
        }
        Ok(())
    }
}

/// A problem found in one object, before it is placed in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: Option<String>,
    pub(crate) message: String,
}

impl FieldError {
    pub(crate) fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}
