//! One measurement of `gannet-lab bench`: a client in node1 (the traffic peer for TCP
//! throughput and request/response, iperf3 for UDP at a fixed offered load), and the guests'
//! CPU time around a throughput run.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::setup::{Target, Workload};
use super::{Metric, Path};
use crate::lab::NodeState;

/// The guests' clock tick (`USER_HZ`), the unit of /proc/stat.
const USER_HZ: f64 = 100.0;
/// UDP datagrams: payload bytes, so that they fit the smallest pod MTU (1450, VXLAN) with their
/// headers, on every variant alike.
const UDP_PAYLOAD: u32 = 1350;

/// How a measurement is made.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Settings {
    /// Length of one measurement in seconds.
    pub(crate) seconds: u32,
    /// The offered UDP load, Mbit/s.
    pub(crate) udp_mbps: u32,
}

/// What one measurement gave.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Measurement {
    /// In [`Metric::unit`].
    pub(crate) value: f64,
    /// UDP: the share of datagrams lost, in percent.
    pub(crate) loss_percent: Option<f64>,
    /// TCP throughput: both guests' CPU time (all of it, not only gannet's) per gigabit
    /// transferred, in seconds.
    pub(crate) cpu_seconds_per_gbit: Option<f64>,
}

/// Measures `metric` over `path`.
pub(crate) fn measure(
    nodes: &[NodeState],
    workload: &Workload,
    path: Path,
    metric: Metric,
    settings: Settings,
) -> anyhow::Result<Measurement> {
    let target = workload.targets[&path];
    let exec = workload
        .client_netns
        .as_deref()
        .map_or(String::new(), |ns| format!("ip netns exec {ns} "));
    let timeout = Duration::from_secs(u64::from(settings.seconds) + 60);
    match metric {
        Metric::Rr => {
            let sample = peer(&nodes[0], &exec, "rr", target, settings, timeout)?;
            Ok(Measurement {
                value: sample.value,
                loss_percent: None,
                cpu_seconds_per_gbit: None,
            })
        }
        Metric::Stream => {
            let before = cpu_busy(nodes)?;
            let sample = peer(&nodes[0], &exec, "stream", target, settings, timeout)?;
            let cpu = cpu_busy(nodes)? - before;
            #[expect(clippy::cast_precision_loss, reason = "byte counts far below 2^52")]
            let gbit = sample.bytes as f64 * 8.0 / 1e9;
            Ok(Measurement {
                value: sample.value,
                loss_percent: None,
                cpu_seconds_per_gbit: (gbit > 0.0).then(|| cpu / gbit),
            })
        }
        Metric::Udp => {
            let script = format!(
                "{exec}iperf3 --client {} --port {} --udp --bitrate {}M --length {UDP_PAYLOAD} \
                 --time {} --json",
                target.ip, target.iperf_port, settings.udp_mbps, settings.seconds
            );
            let out = nodes[0].sh(&script, timeout)?;
            let (mbps, loss) = iperf_udp(&out).with_context(|| format!("`{script}`"))?;
            Ok(Measurement {
                value: mbps,
                loss_percent: Some(loss),
                cpu_seconds_per_gbit: None,
            })
        }
    }
}

/// A run of the traffic peer's client `mode` against `target`.
fn peer(
    node: &NodeState,
    exec: &str,
    mode: &str,
    target: Target,
    settings: Settings,
    timeout: Duration,
) -> anyhow::Result<gannet_bench::peer::Sample> {
    let script = format!(
        "{exec}gannet-bench-peer {mode} --addr {}:{} --seconds {}",
        target.ip, target.peer_port, settings.seconds
    );
    let out = node.sh(&script, timeout)?;
    let sample: gannet_bench::peer::Sample = serde_json::from_str(out.trim())
        .with_context(|| format!("`{script}` printed no sample: {out}"))?;
    anyhow::ensure!(
        sample.error_count() == 0,
        "`{script}`: failed operations {:?}",
        sample.errors
    );
    Ok(sample)
}

/// The CPU time both guests spent so far (every CPU, everything but idle and I/O wait), in
/// seconds.
fn cpu_busy(nodes: &[NodeState]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for node in nodes {
        let line = node.sh("head -1 /proc/stat", Duration::from_secs(30))?;
        total +=
            busy_seconds(&line).with_context(|| format!("{}: /proc/stat: {line:?}", node.name))?;
    }
    Ok(total)
}

/// The busy seconds of /proc/stat's `cpu` line.
fn busy_seconds(line: &str) -> Option<f64> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest and guest_nice are in user)
    let busy: u64 = values
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    #[expect(clippy::cast_precision_loss, reason = "tick counts far below 2^52")]
    Some(busy as f64 / USER_HZ)
}

/// The received throughput (Mbit/s) and loss (percent) of an iperf3 UDP client's JSON report.
fn iperf_udp(json: &str) -> anyhow::Result<(f64, f64)> {
    let report: serde_json::Value = serde_json::from_str(json).context("iperf3's JSON")?;
    if let Some(error) = report.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {error}");
    }
    let sum = &report["end"]["sum"];
    let sent = sum["bits_per_second"]
        .as_f64()
        .context("iperf3's report has no end.sum.bits_per_second")?;
    let loss = sum["lost_percent"]
        .as_f64()
        .context("iperf3's report has no end.sum.lost_percent")?;
    let received = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(sent * (1.0 - loss / 100.0));
    Ok((received / 1e6, loss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_idle_and_iowait_out() {
        let line = "cpu  100 5 50 1000 20 3 2 0 0 0";
        assert_eq!(busy_seconds(line), Some(1.6));
        assert_eq!(busy_seconds("intr 1 2"), None);
    }

    #[test]
    fn iperf_udp_reads_received_rate_and_loss() {
        let json = r#"{"end":{"sum":{"bits_per_second":100000000.0,"lost_percent":10.0}}}"#;
        let (mbps, loss) = iperf_udp(json).expect("parsed");
        assert!((mbps - 90.0).abs() < 1e-9 && (loss - 10.0).abs() < 1e-9);
        let json = r#"{"end":{"sum":{"bits_per_second":1e8,"lost_percent":1.0},"sum_received":{"bits_per_second":5e7}}}"#;
        assert_eq!(iperf_udp(json).expect("parsed").0, 50.0);
        assert!(iperf_udp(r#"{"error":"unable to connect"}"#).is_err());
    }
}
