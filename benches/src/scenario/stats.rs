//! The statistics every scenario reports: the median of repeated measurements, nearest-rank
//! percentiles of latencies, and the latency table rows of `results.md`.

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::thousands;

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
#[must_use]
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    } else {
        sorted[mid]
    })
}

/// The `p`-th percentile (0 < p ≤ 100) of `values` by the nearest-rank method: the smallest
/// value that at least `p`% of the values are less than or equal to, so always a value that was
/// measured. `None` if there are no values.
#[must_use]
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // Rank ⌈p/100 · n⌉, 1-based; computed in integers where possible so 99% of 200 is exactly 198.
    let rank = (p / 100.0 * n as f64 - 1e-9).ceil().max(1.0) as usize;
    Some(sorted[rank.min(n) - 1])
}

/// Latency statistics of a set of timed operations, in milliseconds (nearest-rank percentiles).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStats {
    /// Number of operations.
    pub count: usize,
    /// Fastest.
    pub min_ms: f64,
    /// Median (nearest rank).
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl LatencyStats {
    /// The statistics of `samples_ms`; `None` if empty.
    #[must_use]
    pub fn from_samples(samples_ms: &[f64]) -> Option<LatencyStats> {
        let count = samples_ms.len();
        Some(LatencyStats {
            count,
            min_ms: percentile(samples_ms, f64::MIN_POSITIVE)?,
            p50_ms: percentile(samples_ms, 50.0)?,
            p90_ms: percentile(samples_ms, 90.0)?,
            p99_ms: percentile(samples_ms, 99.0)?,
            max_ms: percentile(samples_ms, 100.0)?,
            mean_ms: samples_ms.iter().sum::<f64>() / count as f64,
        })
    }
}

/// `4.56789` → `4.57 ms`; fewer decimals as the value grows.
#[must_use]
pub fn format_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{} ms", thousands(ms))
    }
}

/// The head of a latency table whose rows are [`latency_row`]s; `what` names the first column.
pub fn latency_header(out: &mut String, what: &str) {
    let _ = writeln!(
        out,
        "| {what} | count | min | p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|---:|"
    );
}

/// One row of a latency table: count, min, p50, p90, p99 and max of `stats`, or dashes when
/// nothing was measured.
pub fn latency_row(out: &mut String, what: &str, stats: Option<&LatencyStats>) {
    match stats {
        Some(s) => {
            let _ = writeln!(
                out,
                "| {what} | {} | {} | {} | {} | {} | {} |",
                s.count,
                format_ms(s.min_ms),
                format_ms(s.p50_ms),
                format_ms(s.p90_ms),
                format_ms(s.p99_ms),
                format_ms(s.max_ms)
            );
        }
        None => {
            let _ = writeln!(out, "| {what} | 0 | – | – | – | – | – |");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 0.0), None);
        assert_eq!(percentile(&[7.0], 50.0), Some(7.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        // Unsorted input.
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 75.0), Some(3.0));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 76.0), Some(4.0));
        assert_eq!(percentile(&[4.0, 1.0, 3.0, 2.0], 100.0), Some(4.0));
        // 1..=200: p50 is the 100th value, p99 the 198th, p100 the largest.
        let values: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(100.0));
        assert_eq!(percentile(&values, 90.0), Some(180.0));
        assert_eq!(percentile(&values, 99.0), Some(198.0));
        assert_eq!(percentile(&values, 100.0), Some(200.0));
        assert_eq!(percentile(&values, f64::MIN_POSITIVE), Some(1.0));
        // 50 values: p99 is the 50th (⌈49.5⌉), i.e. the maximum.
        let values: Vec<f64> = (1..=50).map(f64::from).collect();
        assert_eq!(percentile(&values, 99.0), Some(50.0));
        assert_eq!(percentile(&values, 50.0), Some(25.0));
    }

    #[test]
    fn latency_rows() {
        let stats = LatencyStats::from_samples(&[4.0, 1.0, 250.0, 12.345]).expect("samples");
        assert_eq!(stats.mean_ms, (4.0 + 1.0 + 250.0 + 12.345) / 4.0);
        let mut out = String::new();
        latency_row(&mut out, "ADD", Some(&stats));
        latency_row(&mut out, "DEL", None);
        assert_eq!(
            out,
            "| ADD | 4 | 1.00 ms | 4.00 ms | 250 ms | 250 ms | 250 ms |\n\
             | DEL | 0 | – | – | – | – | – |\n"
        );
        assert_eq!(format_ms(0.123), "0.12 ms");
        assert_eq!(format_ms(12.345), "12.3 ms");
        assert_eq!(format_ms(1234.6), "1,235 ms");
    }
}
