//! The report of `gannet-lab bench`: `lab-bench.json` (every measurement, medians, ratios),
//! `lab-bench.md` (the tables the README shows) and one PNG chart per metric, ratios to VM-to-VM
//! direct measured in the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path as FsPath, PathBuf};

use anyhow::Context as _;
use gannet_bench::chart::{GoalLine, GroupedRatios, Series, render_grouped};
use gannet_bench::scenario::stats::median;
use plotters::style::RGBColor;
use serde::Serialize;

use super::{Metric, Options, Path, Variant, VariantResult};

/// The goal: gannet `ebpf` cross-node pod → pod and pod → ClusterIP at this share of
/// VM-to-VM direct throughput, at least.
const GOAL_EBPF_OF_DIRECT: f64 = 0.85;

/// The medians of one path and metric of one variant.
#[derive(Debug, Clone, Copy, Serialize)]
struct Summary {
    median: f64,
    /// The median over the direct variant's median (same metric).
    ratio_to_direct: Option<f64>,
    loss_percent: Option<f64>,
    cpu_seconds_per_gbit: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    when: String,
    machine: gannet_bench::machine::Machine,
    accel: String,
    guest_memory_mib: u32,
    guest_cpus: u32,
    rounds: usize,
    settings: super::Settings,
    seed: u64,
    summaries: BTreeMap<Variant, BTreeMap<Path, BTreeMap<Metric, Summary>>>,
    verdicts: Vec<String>,
    variants: &'a [VariantResult],
}

fn summarize(
    results: &[VariantResult],
) -> BTreeMap<Variant, BTreeMap<Path, BTreeMap<Metric, Summary>>> {
    let direct: BTreeMap<Metric, f64> = results
        .iter()
        .find(|r| r.variant == Variant::Direct)
        .and_then(|r| r.samples.get(&Path::NodeToNode))
        .map(|by_metric| {
            by_metric
                .iter()
                .filter_map(|(m, s)| {
                    median(&s.iter().map(|x| x.value).collect::<Vec<_>>()).map(|v| (*m, v))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for r in results {
        let mut paths = BTreeMap::new();
        for (path, by_metric) in &r.samples {
            let mut metrics = BTreeMap::new();
            for (metric, samples) in by_metric {
                let values: Vec<f64> = samples.iter().map(|s| s.value).collect();
                let Some(m) = median(&values) else { continue };
                let loss: Vec<f64> = samples.iter().filter_map(|s| s.loss_percent).collect();
                let cpu: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| s.cpu_seconds_per_gbit)
                    .collect();
                metrics.insert(
                    *metric,
                    Summary {
                        median: m,
                        ratio_to_direct: direct.get(metric).filter(|d| **d > 0.0).map(|d| m / d),
                        loss_percent: median(&loss),
                        cpu_seconds_per_gbit: median(&cpu),
                    },
                );
            }
            paths.insert(*path, metrics);
        }
        out.insert(r.variant, paths);
    }
    out
}

/// Below this relative difference two medians count as even: the resolution of a few rounds on
/// TCG guests (the UDP load is met by nearly every path, within a fraction of a percent).
const EVEN: f64 = 0.01;

/// The goal's verdicts: ebpf against direct, every gannet variant against flannel (ahead, even
/// within [`EVEN`], or behind, each comparison named).
fn verdicts(s: &BTreeMap<Variant, BTreeMap<Path, BTreeMap<Metric, Summary>>>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(ebpf) = s.get(&Variant::Ebpf) {
        for path in [Path::CrossNodePod, Path::CrossNodeService] {
            for metric in [Metric::Stream, Metric::Udp] {
                if let Some(ratio) = ebpf
                    .get(&path)
                    .and_then(|m| m.get(&metric))
                    .and_then(|x| x.ratio_to_direct)
                {
                    let met = if ratio >= GOAL_EBPF_OF_DIRECT {
                        "met"
                    } else {
                        "NOT met"
                    };
                    out.push(format!(
                        "ebpf {}, {}: {ratio:.2}× direct (goal ≥ {GOAL_EBPF_OF_DIRECT}×: {met})",
                        path.describe(),
                        metric.name()
                    ));
                }
            }
        }
    }
    let Some(flannel) = s.get(&Variant::Flannel) else {
        return out;
    };
    for variant in [Variant::Vxlan, Variant::HostGw, Variant::Ebpf] {
        let Some(ours) = s.get(&variant) else {
            continue;
        };
        let mut behind = Vec::new();
        let mut even = 0;
        let mut compared = 0;
        for (path, metrics) in ours {
            for (metric, summary) in metrics {
                let Some(theirs) = flannel.get(path).and_then(|m| m.get(metric)) else {
                    continue;
                };
                compared += 1;
                if (summary.median - theirs.median).abs() <= EVEN * theirs.median {
                    even += 1;
                } else if summary.median < theirs.median {
                    behind.push(format!(
                        "{} {} {:.3} < {:.3}",
                        path.describe(),
                        metric.name(),
                        summary.median,
                        theirs.median
                    ));
                }
                if let (Some(a), Some(b)) =
                    (summary.cpu_seconds_per_gbit, theirs.cpu_seconds_per_gbit)
                {
                    compared += 1;
                    if (a - b).abs() <= EVEN * b {
                        even += 1;
                    } else if a > b {
                        behind.push(format!(
                            "{} CPU per Gbit {a:.2} s > {b:.2} s",
                            path.describe()
                        ));
                    }
                }
            }
        }
        let ahead = compared - even - behind.len();
        let mut line = format!(
            "{} against flannel, {compared} path × metric comparisons: ahead on {ahead}, even \
             (within {:.0} %) on {even}, behind on {}",
            variant.name(),
            EVEN * 100.0,
            behind.len()
        );
        if !behind.is_empty() {
            line.push_str(&format!(": {}", behind.join("; ")));
        }
        out.push(line);
    }
    out
}

fn color(variant: Variant) -> RGBColor {
    match variant {
        Variant::Direct => RGBColor(120, 120, 120),
        Variant::Flannel => RGBColor(213, 94, 0),
        Variant::Vxlan => RGBColor(86, 180, 233),
        Variant::HostGw => RGBColor(0, 158, 115),
        Variant::Ebpf => RGBColor(0, 114, 178),
    }
}

fn number(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Stream => format!("{value:.3}"),
        Metric::Udp | Metric::Rr => format!("{value:.0}"),
    }
}

/// A markdown table: a row per pod path, a column per variant, `cell` (or "—") in each,
/// followed by an empty line.
fn table(out: &mut String, variants: &[Variant], cell: impl Fn(Variant, Path) -> Option<String>) {
    let _ = write!(out, "| path |");
    for v in variants {
        let _ = write!(out, " {} |", v.name());
    }
    let _ = write!(out, "\n|---|");
    for _ in variants {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for path in Path::PODS {
        let _ = write!(out, "| {} |", path.describe());
        for &v in variants {
            let _ = write!(
                out,
                " {} |",
                cell(v, path).unwrap_or_else(|| "—".to_owned())
            );
        }
        out.push('\n');
    }
    out.push('\n');
}

fn markdown(
    options: &Options,
    s: &BTreeMap<Variant, BTreeMap<Path, BTreeMap<Metric, Summary>>>,
    results: &[VariantResult],
    verdicts: &[String],
) -> String {
    let pod_variants: Vec<Variant> = options
        .variants
        .iter()
        .copied()
        .filter(|v| *v != Variant::Direct)
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Two guests ({} MiB, {} CPU each, {}), {} rounds of {} s per measurement, UDP offered at \
         {} Mbit/s; medians, and in parentheses the ratio to VM-to-VM direct in the same run.\n",
        options.up.memory_mib,
        options.up.cpus,
        options.up.accel,
        options.rounds,
        options.settings.seconds,
        options.settings.udp_mbps
    );
    for metric in Metric::ALL {
        let direct = s
            .get(&Variant::Direct)
            .and_then(|p| p.get(&Path::NodeToNode))
            .and_then(|m| m.get(&metric));
        let _ = writeln!(
            out,
            "**{}** ({}){}\n",
            metric.describe(),
            metric.unit(),
            direct.map_or(String::new(), |d| format!(
                "; VM → VM direct: {}{}",
                number(metric, d.median),
                d.loss_percent
                    .map_or(String::new(), |l| format!(", {l:.1} % lost"))
            ))
        );
        table(&mut out, &pod_variants, |v, path| {
            let x = s.get(&v)?.get(&path)?.get(&metric)?;
            let mut c = number(metric, x.median);
            if let Some(l) = x.loss_percent {
                let _ = write!(c, ", {l:.1} % lost");
            }
            if let Some(r) = x.ratio_to_direct {
                let _ = write!(c, " ({r:.2}×)");
            }
            Some(c)
        });
    }
    let _ = writeln!(
        out,
        "**CPU** (both guests, all processes, seconds per gigabit of TCP stream){}\n",
        s.get(&Variant::Direct)
            .and_then(|p| p.get(&Path::NodeToNode))
            .and_then(|m| m.get(&Metric::Stream))
            .and_then(|x| x.cpu_seconds_per_gbit)
            .map_or(String::new(), |c| format!("; VM → VM direct: {c:.2}"))
    );
    table(&mut out, &pod_variants, |v, path| {
        let c = s
            .get(&v)?
            .get(&path)?
            .get(&Metric::Stream)?
            .cpu_seconds_per_gbit?;
        Some(format!("{c:.2}"))
    });
    let _ = writeln!(
        out,
        "**Memory** of gannet's processes (gannetd, and gannet-control on node1), MiB RSS after the run:"
    );
    for r in results {
        if r.gannet_rss_mib.is_empty() {
            continue;
        }
        let per_node: Vec<String> = r
            .gannet_rss_mib
            .iter()
            .map(|(node, mib)| format!("{node} {mib:.1}"))
            .collect();
        let _ = writeln!(out, "- {}: {}", r.variant.name(), per_node.join(", "));
    }
    let failures: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.failures
                .iter()
                .map(|f| format!("{}: {f}", r.variant.name()))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(
            out,
            "\nFailed attempts ({}; a measurement is tried up to 3 times):",
            failures.len()
        );
        for f in &failures {
            let first = f.lines().next().unwrap_or_default();
            let _ = writeln!(out, "- {first}");
        }
    }
    if !verdicts.is_empty() {
        out.push_str("\nGoals:\n");
        for v in verdicts {
            let _ = writeln!(out, "- {v}");
        }
    }
    out
}

fn chart(
    metric: Metric,
    options: &Options,
    s: &BTreeMap<Variant, BTreeMap<Path, BTreeMap<Metric, Summary>>>,
) -> GroupedRatios {
    let series = options
        .variants
        .iter()
        .filter(|v| **v != Variant::Direct)
        .map(|v| Series {
            label: v.name().to_owned(),
            color: color(*v),
            ratios: Path::PODS
                .iter()
                .map(|p| {
                    s.get(v)
                        .and_then(|x| x.get(p))
                        .and_then(|x| x.get(&metric))
                        .and_then(|x| x.ratio_to_direct)
                })
                .collect(),
        })
        .collect();
    let goals = if metric == Metric::Rr {
        Vec::new()
    } else {
        vec![GoalLine {
            value: GOAL_EBPF_OF_DIRECT,
            label: format!("ebpf cross-node goal {GOAL_EBPF_OF_DIRECT:.2}×"),
            color: color(Variant::Ebpf),
        }]
    };
    GroupedRatios {
        title: format!(
            "{}: {} — ratio to VM-to-VM direct (VM lab)",
            metric.name(),
            metric.describe()
        ),
        groups: Path::PODS.iter().map(|p| p.describe().to_owned()).collect(),
        x_desc: "path".to_owned(),
        y_desc: "ratio to VM-to-VM direct (higher is better)".to_owned(),
        series,
        goals,
    }
}

/// Writes the JSON, markdown and charts into `dir`; returns the markdown file.
pub(crate) fn write(
    dir: &FsPath,
    options: &Options,
    results: &[VariantResult],
) -> anyhow::Result<PathBuf> {
    let summaries = summarize(results);
    let verdicts = verdicts(&summaries);
    let report = Report {
        when: gannet_bench::util::rfc3339(std::time::SystemTime::now()),
        machine: gannet_bench::machine::collect(crate::repo_root().ok().as_deref()),
        accel: options.up.accel.to_string(),
        guest_memory_mib: options.up.memory_mib,
        guest_cpus: options.up.cpus,
        rounds: options.rounds,
        settings: options.settings,
        seed: options.seed,
        summaries: summaries.clone(),
        verdicts: verdicts.clone(),
        variants: results,
    };
    let json = dir.join("lab-bench.json");
    fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let md = dir.join("lab-bench.md");
    fs::write(&md, markdown(options, &summaries, results, &verdicts))
        .with_context(|| format!("writing {}", md.display()))?;
    if results.iter().any(|r| r.variant == Variant::Direct) {
        for metric in Metric::ALL {
            let png = dir.join(format!("lab-{}.png", metric.name()));
            if let Err(error) = render_grouped(&png, &chart(metric, options, &summaries)) {
                eprintln!("gannet-lab bench: no chart {}: {error:#}", png.display());
            }
        }
    }
    for v in &verdicts {
        eprintln!("gannet-lab bench: {v}");
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::super::measure::Measurement;
    use super::*;

    fn result(variant: Variant, path: Path, values: &[(Metric, f64)]) -> VariantResult {
        let mut by_metric = BTreeMap::new();
        for &(metric, value) in values {
            by_metric.insert(
                metric,
                vec![
                    Measurement {
                        value,
                        loss_percent: (metric == Metric::Udp).then_some(1.0),
                        cpu_seconds_per_gbit: (metric == Metric::Stream).then_some(2.0),
                    };
                    3
                ],
            );
        }
        VariantResult {
            variant,
            samples: BTreeMap::from([(path, by_metric)]),
            gannet_rss_mib: BTreeMap::new(),
            setup_seconds: 1.0,
            failures: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_to_direct_and_verdicts_name_what_is_behind() {
        let results = [
            result(
                Variant::Direct,
                Path::NodeToNode,
                &[
                    (Metric::Stream, 1.0),
                    (Metric::Udp, 50.0),
                    (Metric::Rr, 1000.0),
                ],
            ),
            result(
                Variant::Flannel,
                Path::CrossNodePod,
                &[
                    (Metric::Stream, 0.5),
                    (Metric::Udp, 40.0),
                    (Metric::Rr, 800.0),
                ],
            ),
            result(
                Variant::Ebpf,
                Path::CrossNodePod,
                &[
                    (Metric::Stream, 0.9),
                    (Metric::Udp, 45.0),
                    (Metric::Rr, 700.0),
                ],
            ),
        ];
        let s = summarize(&results);
        let ebpf = s[&Variant::Ebpf][&Path::CrossNodePod][&Metric::Stream];
        assert!((ebpf.ratio_to_direct.expect("a ratio") - 0.9).abs() < 1e-9);
        assert_eq!(ebpf.cpu_seconds_per_gbit, Some(2.0));
        let v = verdicts(&s);
        assert!(
            v.iter().any(
                |l| l.starts_with("ebpf cross node: pod → pod, stream: 0.90× direct")
                    && l.ends_with("met)")
            ),
            "{v:?}"
        );
        assert!(
            v.iter().any(|l| l.starts_with(
                "ebpf against flannel, 4 path × metric comparisons: ahead on 2, even (within 1 %) on 1, behind on 1"
            ) && l.contains("rr 700.000 < 800.000")),
            "{v:?}"
        );
    }
}
