//! `tracing` set-up: level from `GANNET_LOG` (default `info`), plain or JSON lines on stderr.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// A list as a log field shows it: `10.244.0.0/24,fd00::/64`, the values without `Debug`'s
/// brackets and quotes (`-` when empty).
pub fn list<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("GANNET_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
