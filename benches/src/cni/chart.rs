//! `latency.png`: grouped bars of the latency percentiles (x: ADD/DEL p50/p99 per concurrency,
//! bars: the two plugins), in milliseconds, with gannet-cni's p99 goal as a dashed line.

use std::fs;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::report::GOAL_P99_MS;
use super::results::{PhaseResult, Plugin, Verb};
use crate::chart::{FAMILY, SIZE, load_font};
use crate::scenario::stats::format_ms;

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
    load_font()?;
    let groups = groups(phases);
    if groups.is_empty() {
        bail!("no results to chart");
    }
    draw(path, &groups).map_err(|err| anyhow!("drawing {}: {err}", path.display()))?;
    fs::metadata(path).with_context(|| format!("{} was not written", path.display()))?;
    Ok(())
}

fn draw(path: &Path, groups: &[Group]) -> Result<(), Box<dyn std::error::Error>> {
    let n = groups.len() as f64;
    let highest = groups
        .iter()
        .flat_map(|g| g.values.iter().map(|(_, v)| *v))
        .fold(GOAL_P99_MS, f64::max);
    // Headroom above the bars for the legend.
    let top = highest * 1.35;

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CNI plugin latency: wall time of one invocation (lower is better)",
            (FAMILY, 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..n, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Key points every 0.5: the group centres get the labels, the boundaries none.
        .x_labels(2 * groups.len() + 1)
        .x_label_formatter(&|x| {
            let centre = x - 0.5;
            if (centre - centre.round()).abs() > 1e-6 || centre < 0.0 {
                return String::new();
            }
            labels
                .get(centre.round() as usize)
                .cloned()
                .unwrap_or_default()
        })
        .y_desc("milliseconds")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 16))
        .draw()?;

    let goal_style = color(Plugin::Gannet).stroke_width(2);
    chart
        .draw_series(std::iter::once(DashedPathElement::new(
            vec![(0.0, GOAL_P99_MS), (n, GOAL_P99_MS)],
            8,
            6,
            goal_style,
        )))?
        .label(format!("{} p99 goal < {GOAL_P99_MS:.0} ms", Plugin::Gannet))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], goal_style));

    let slot = 0.8 / Plugin::ALL.len() as f64;
    let value_style = TextStyle::from((FAMILY, 13).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (index, plugin) in Plugin::ALL.into_iter().enumerate() {
        let fill = color(plugin);
        let bars: Vec<(f64, f64)> = groups
            .iter()
            .enumerate()
            .filter_map(|(g, group)| {
                let value = group.values.iter().find(|(p, _)| *p == plugin)?.1;
                Some((g as f64 + 0.1 + index as f64 * slot, value))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, value)| {
                Rectangle::new(
                    [(x + slot * 0.06, 0.0), (x + slot * 0.94, value)],
                    fill.filled(),
                )
            }))?
            .label(plugin.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill.filled()));
        chart.draw_series(bars.iter().map(|&(x, value)| {
            Text::new(
                format_ms(value).replace(" ms", ""),
                (x + slot / 2.0, value + top * 0.005),
                value_style.clone(),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FAMILY, 15))
        .draw()?;
    root.present()?;
    Ok(())
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
