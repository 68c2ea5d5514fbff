//! Controllers: loops that keep derived objects in line with the objects they come from.

pub mod endpoints;
mod informer;
pub mod nodes;
pub mod scheduler;
