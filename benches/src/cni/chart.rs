//! `latency.png`: grouped bars of the latency percentiles (x: ADD/DEL p50/p99 per concurrency,
//! bars: the two plugins), in milliseconds, with gannet-cni's p99 goal as a dashed line.

use std::path::Path;

use plotters::style::RGBColor;

use super::report::GOAL_P99_MS;
use super::results::{PhaseResult, Plugin, Verb};
use crate::chart::{GoalLine, GroupedRatios, Scale, Series, render_bars};

fn color(plugin: Plugin) -> RGBColor {
    match plugin {
        Plugin::Gannet => RGBColor(0, 114, 178),
        Plugin::Reference => RGBColor(213, 94, 0),
    }
}

/// One group of bars: its label and each plugin's value in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The x-axis label.
    pub label: String,
    /// (plugin, milliseconds).
    pub values: Vec<(Plugin, f64)>,
}

/// The groups drawn for `phases`: ADD p50, ADD p99, DEL p50, DEL p99 of every phase.
#[must_use]
pub fn groups(phases: &[PhaseResult]) -> Vec<Group> {
    let mut out = Vec::new();
    for phase in phases {
        let suffix = if phase.concurrency == 1 {
            String::new()
        } else {
            format!(" (×{})", phase.concurrency)
        };
        for verb in Verb::ALL {
            for (name, pick) in [
                (
                    "p50",
                    (|r: &super::results::VerbResult| r.latency.p50_ms) as fn(&_) -> f64,
                ),
                ("p99", |r| r.latency.p99_ms),
            ] {
                let values: Vec<(Plugin, f64)> = Plugin::ALL
                    .into_iter()
                    .filter_map(|plugin| Some((plugin, pick(phase.get(plugin, verb)?))))
                    .collect();
                if !values.is_empty() {
                    out.push(Group {
                        label: format!("{verb} {name}{suffix}"),
                        values,
                    });
                }
            }
        }
    }
    out
}

/// Draws the chart of `phases` into the PNG file `path`.
///
/// # Errors
/// If the font cannot be loaded, there is nothing to draw, or drawing or writing fails.
pub fn render(path: &Path, phases: &[PhaseResult]) -> anyhow::Result<()> {
    let groups = groups(phases);
    let series = Plugin::ALL
        .into_iter()
        .map(|plugin| Series {
            label: plugin.name().to_owned(),
            color: color(plugin),
            ratios: groups
                .iter()
                .map(|g| g.values.iter().find(|(p, _)| *p == plugin).map(|(_, v)| *v))
                .collect(),
        })
        .collect();
    let chart = GroupedRatios {
        title: "CNI plugin latency: wall time of one invocation (lower is better)".to_owned(),
        groups: groups.into_iter().map(|g| g.label).collect(),
        x_desc: String::new(),
        y_desc: "milliseconds".to_owned(),
        series,
        goals: vec![GoalLine {
            value: GOAL_P99_MS,
            label: format!("{} p99 goal < {GOAL_P99_MS:.0} ms", Plugin::Gannet),
            color: color(Plugin::Gannet),
        }],
    };
    render_bars(path, &chart, Scale::Milliseconds)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cni::results::{Sample, VerbResult};

    fn phase(concurrency: usize, gannet_add: f64) -> PhaseResult {
        let result = |wall_ms: f64| {
            VerbResult::new(
                vec![Sample {
                    pod: 0,
                    wall_ms,
                    user_ms: 0.0,
                    system_ms: 0.0,
                }],
                1.0,
            )
            .expect("sample")
        };
        let mut results = BTreeMap::new();
        results.insert(
            Plugin::Gannet,
            BTreeMap::from([(Verb::Add, result(gannet_add)), (Verb::Del, result(1.0))]),
        );
        results.insert(
            Plugin::Reference,
            BTreeMap::from([(Verb::Add, result(9.0))]),
        );
        PhaseResult {
            concurrency,
            pods_per_round: 10,
            order: BTreeMap::new(),
            results,
        }
    }

    #[test]
    fn groups_per_phase_verb_and_percentile() {
        let groups = groups(&[phase(1, 3.0), phase(4, 5.0)]);
        let labels: Vec<&str> = groups.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "ADD p50",
                "ADD p99",
                "DEL p50",
                "DEL p99",
                "ADD p50 (×4)",
                "ADD p99 (×4)",
                "DEL p50 (×4)",
                "DEL p99 (×4)"
            ]
        );
        assert_eq!(
            groups[4].values,
            [(Plugin::Gannet, 5.0), (Plugin::Reference, 9.0)]
        );
        // The reference has no DEL here: only gannet's bar.
        assert_eq!(groups[2].values, [(Plugin::Gannet, 1.0)]);
    }
}
