//! Validation problems, and how they travel in a gRPC status.

use std::fmt;

use prost::Message as _;
use tonic::{Code, Status};

use crate::pb;

/// At most this many problems travel in one status (they are sent in headers).
pub const MAX_PROBLEMS: usize = 100;

/// One problem with one object of a request: `Service default/web: spec.ports[0].port: port 0 is
/// out of range 1..=65535`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Position of the object in the request.
    pub index: usize,
    /// `Service default/web`.
    pub object: String,
    /// `spec.ports[0].port`; `None` for the whole object.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.object)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl From<&Problem> for pb::Problem {
    fn from(problem: &Problem) -> Self {
        Self {
            index: u32::try_from(problem.index).unwrap_or(u32::MAX),
            object: problem.object.clone(),
            field: problem.field.clone().unwrap_or_default(),
            message: problem.message.clone(),
        }
    }
}

impl From<pb::Problem> for Problem {
    fn from(problem: pb::Problem) -> Self {
        Self {
            index: usize::try_from(problem.index).unwrap_or(usize::MAX),
            object: problem.object,
            field: (!problem.field.is_empty()).then_some(problem.field),
            message: problem.message,
        }
    }
}

/// `INVALID_ARGUMENT` with every problem in the message, one a line, and in the details as a
/// `Problems` message (the first [`MAX_PROBLEMS`]).
#[must_use]
pub fn invalid_status(problems: &[Problem]) -> Status {
    let shown = &problems[..problems.len().min(MAX_PROBLEMS)];
    let mut message = shown
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    if problems.len() > shown.len() {
        message.push_str(&format!("\n(and {} more)", problems.len() - shown.len()));
    }
    let details = pb::Problems {
        problems: shown.iter().map(pb::Problem::from).collect(),
    };
    Status::with_details(
        Code::InvalidArgument,
        message,
        details.encode_to_vec().into(),
    )
}

/// The problems of an `INVALID_ARGUMENT` status made by [`invalid_status`]; a status without
/// details yields one problem holding its message.
#[must_use]
pub fn problems_of(status: &Status) -> Vec<Problem> {
    if let Ok(details) = pb::Problems::decode(status.details())
        && !details.problems.is_empty()
    {
        return details.problems.into_iter().map(Problem::from).collect();
    }
    vec![Problem {
        index: 0,
        object: "request".to_owned(),
        field: None,
        message: status.message().to_owned(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_survive_a_status() {
        let problems = vec![
            Problem {
                index: 2,
                object: "Service default/web".to_owned(),
                field: Some("spec.ports[0].nodePort".to_owned()),
                message: "30000 is allocated to Service default/other".to_owned(),
            },
            Problem {
                index: 3,
                object: "Pod default/p".to_owned(),
                field: None,
                message: "whole object".to_owned(),
            },
        ];
        let status = invalid_status(&problems);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "Service default/web: spec.ports[0].nodePort: 30000 is allocated to Service \
             default/other\nPod default/p: whole object"
        );
        assert_eq!(problems_of(&status), problems);
    }
}
