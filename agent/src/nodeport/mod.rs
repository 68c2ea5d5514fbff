//! Traffic from outside the node: Maglev tables and the healthCheckNodePort server.

pub mod frontends;
pub mod health;
pub mod maglev;
pub mod setup;
