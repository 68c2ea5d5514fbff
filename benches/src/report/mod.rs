//! `results.md`: the results as markdown tables, with the goals next to the numbers.
//!
//! Here: what every scenario's report uses (number formats, result cells, the warnings section;
//! the goals table is [`crate::scenario::goal`]'s). The ClusterIP scenario's document is `render.rs`, its programming measurement
//! `programming.rs`.

use std::fmt::Write as _;

use crate::peer::Metric;
use crate::results::{LoadTime, MetricResult, RunResult, Variant};

mod programming;
mod render;
#[cfg(test)]
mod tests;

pub use self::render::render;

/// The size the goals are stated for.
pub const GOAL_SERVICES: usize = 10_000;
/// gannet's rr goal, as a ratio to direct.
pub const GOAL_RR: f64 = 0.97;
/// gannet's crr goal, as a ratio to direct.
pub const GOAL_CRR: f64 = 0.95;
/// gannet-nft's goal for programming the services, as a speed-up over `nft -f` of kube-proxy's
/// rules.
pub const GOAL_PROGRAMMING_SPEEDUP: f64 = 10.0;
/// gannet-nft's goal for one endpoint change's p99, in milliseconds.
pub const GOAL_CHANGE_P99_MS: f64 = 50.0;

/// `1234567.8` → `1,234,568`.
#[must_use]
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if value < -0.5 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A value of `metric` in its unit, as the tables show it.
#[must_use]
pub fn format_value(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Rr | Metric::Crr => thousands(value),
        Metric::Stream => format!("{value:.2}"),
    }
}

fn format_services(n: usize) -> String {
    thousands(n as f64).replace(',', " ")
}

fn format_seconds(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}

fn format_load(load: &LoadTime) -> String {
    format!(
        "{} (user {}, sys {})",
        format_seconds(load.seconds),
        format_seconds(load.user_seconds),
        format_seconds(load.system_seconds)
    )
}

fn format_bytes(bytes: usize) -> String {
    let bytes = bytes as f64;
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.0} KiB", (bytes / 1024.0).max(1.0))
    }
}

/// A result as two table cells: the median with its half range (`40,000 (±2%)`) and its ratio to
/// the reference (`0.97×`); dashes for what was not measured.
#[must_use]
pub fn result_cells(metric: Metric, result: Option<&MetricResult>) -> (String, String) {
    match result {
        Some(result) => (
            format!(
                "{} (±{:.0}%)",
                format_value(metric, result.median),
                result.spread * 50.0
            ),
            result
                .ratio_to_direct
                .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×")),
        ),
        None => ("–".to_owned(), "–".to_owned()),
    }
}

fn cell(run: &RunResult, variant: Variant, metric: Metric) -> (String, String) {
    result_cells(metric, run.get(variant, metric))
}

fn ratio(run: &RunResult, variant: Variant, metric: Metric) -> Option<f64> {
    run.get(variant, metric)?.ratio_to_direct
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ahead,
    Behind,
    Tie,
}

/// Whether `ours` is ahead of `theirs` by more than the noise of either.
fn compare(ours: &MetricResult, theirs: &MetricResult) -> (&'static str, Outcome) {
    let noise = ours.spread.max(theirs.spread) / 2.0;
    let ratio = ours.median / theirs.median;
    if ratio > 1.0 + noise {
        ("ahead", Outcome::Ahead)
    } else if ratio < 1.0 - noise {
        ("behind", Outcome::Behind)
    } else {
        ("within noise", Outcome::Tie)
    }
}

/// The section listing the run's warnings, if it had any.
pub fn warnings_section(out: &mut String, warnings: &[String]) {
    if !warnings.is_empty() {
        out.push_str("## Warnings\n\n");
        for warning in warnings {
            let _ = writeln!(out, "- {warning}");
        }
        out.push('\n');
    }
}
