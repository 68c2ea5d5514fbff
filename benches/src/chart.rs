//! PNG charts as grouped bars: the `clusterip` scenario's (one per metric, x: services
//! programmed, bars: the five paths as a ratio to direct) and any other scenario's through
//! [`GroupedRatios`] (ratios, or milliseconds: [`Scale`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow, bail};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::peer::Metric;
use crate::report::{GOAL_CRR, GOAL_RR};
use crate::results::{RunResult, Variant};
use crate::scenario::stats::format_ms;

/// Environment variable naming the TrueType font for the charts.
pub const FONT_ENV: &str = "GANNET_BENCH_FONT";
/// The font used when [`FONT_ENV`] is not set (Debian's `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family name the font is registered under.
pub(crate) const FAMILY: &str = "sans-serif";
pub(crate) const SIZE: (u32, u32) = (1100, 620);

/// The font file the charts will use.
#[must_use]
pub fn font_path() -> PathBuf {
    std::env::var_os(FONT_ENV).map_or_else(|| PathBuf::from(DEFAULT_FONT), PathBuf::from)
}

/// Loads the chart font once; call it before a long run so a missing font fails early.
///
/// # Errors
/// If the font file is missing or not a usable font; the message says how to install it.
pub fn load_font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = font_path();
            let bytes = fs::read(&path).map_err(|err| {
                format!(
                    "chart font {}: {err}; install it with `apt-get install fonts-dejavu-core` \
                     or point ${FONT_ENV} at a TrueType font",
                    path.display()
                )
            })?;
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("chart font {}: not a usable TrueType font", path.display()))
        })
        .clone()
        .map_err(|message| anyhow!(message))
}

/// One series of bars (one bar per group).
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend entry.
    pub label: String,
    pub color: RGBColor,
    /// The ratio in each group, in group order; `None` draws no bar.
    pub ratios: Vec<Option<f64>>,
}

/// A dashed horizontal line with a legend entry (a goal).
#[derive(Debug, Clone)]
pub struct GoalLine {
    pub value: f64,
    pub label: String,
    pub color: RGBColor,
}

/// A chart of ratios to a reference (drawn as a solid line at 1): groups along x, one bar per
/// series in every group, its value written above it.
#[derive(Debug, Clone)]
pub struct GroupedRatios {
    pub title: String,
    /// The groups' labels, left to right.
    pub groups: Vec<String>,
    pub x_desc: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    pub goals: Vec<GoalLine>,
}

fn color(variant: Variant) -> RGBColor {
    match variant {
        Variant::Direct => RGBColor(120, 120, 120),
        Variant::Gannet => RGBColor(0, 114, 178),
        Variant::GannetNft => RGBColor(0, 158, 115),
        Variant::KubeProxyNft => RGBColor(230, 159, 0),
        Variant::KubeProxyIptables => RGBColor(213, 94, 0),
    }
}

fn goal(metric: Metric) -> Option<f64> {
    match metric {
        Metric::Rr => Some(GOAL_RR),
        Metric::Crr => Some(GOAL_CRR),
        Metric::Stream => None,
    }
}

/// Draws the `clusterip` chart of `metric` over `runs` into the PNG file `path`.
///
/// # Errors
/// If the font cannot be loaded, there is nothing to draw, or drawing or writing fails.
pub fn render(path: &Path, metric: Metric, runs: &[RunResult]) -> anyhow::Result<()> {
    if runs.is_empty() {
        bail!("no results to chart");
    }
    let groups = runs
        .iter()
        .map(|run| {
            let direct = run
                .get(Variant::Direct, metric)
                .map(|r| {
                    format!(
                        " (direct: {} {})",
                        crate::report::format_value(metric, r.median),
                        metric.unit()
                    )
                })
                .unwrap_or_default();
            format!(
                "{} service{}{direct}",
                crate::report::thousands(run.services as f64),
                if run.services == 1 { "" } else { "s" }
            )
        })
        .collect();
    let series = Variant::ALL
        .into_iter()
        .map(|variant| Series {
            label: format!("{} ({})", variant.name(), variant.letter()),
            color: color(variant),
            ratios: runs
                .iter()
                .map(|run| run.get(variant, metric).and_then(|r| r.ratio_to_direct))
                .collect(),
        })
        .collect();
    let chart = GroupedRatios {
        title: format!("{metric}: {} — ratio to direct", metric.describe()),
        groups,
        x_desc: "services programmed".to_owned(),
        y_desc: "ratio to direct (higher is better)".to_owned(),
        series,
        goals: goal(metric)
            .map(|value| GoalLine {
                value,
                label: format!("gannet goal {value:.2}×"),
                color: color(Variant::Gannet),
            })
            .into_iter()
            .collect(),
    };
    render_grouped(path, &chart)
}

/// Draws `<metric>.png` into `out` for every metric, from `chart`; returns the file names per
/// metric.
///
/// # Errors
/// If a chart cannot be drawn or written.
pub fn write_metric_charts(
    out: &Path,
    chart: impl Fn(Metric) -> GroupedRatios,
) -> anyhow::Result<Vec<(Metric, String)>> {
    let mut files = Vec::new();
    for metric in Metric::ALL {
        let file = format!("{metric}.png");
        render_grouped(&out.join(&file), &chart(metric))?;
        files.push((metric, file));
    }
    Ok(files)
}

/// What the bars of a [`GroupedRatios`] chart measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Ratios to a reference, drawn as a solid line at 1; the legend in the upper right.
    Ratio,
    /// Milliseconds (lower is better); the legend in the upper left.
    Milliseconds,
}

/// Draws `chart` (of ratios) into the PNG file `path`.
///
/// # Errors
/// If the font cannot be loaded, there are no groups, or drawing or writing fails.
pub fn render_grouped(path: &Path, chart: &GroupedRatios) -> anyhow::Result<()> {
    render_bars(path, chart, Scale::Ratio)
}

/// Draws `chart`, its bars on `scale`, into the PNG file `path`.
///
/// # Errors
/// If the font cannot be loaded, there are no groups, or drawing or writing fails.
pub fn render_bars(path: &Path, chart: &GroupedRatios, scale: Scale) -> anyhow::Result<()> {
    load_font()?;
    if chart.groups.is_empty() || chart.series.is_empty() {
        bail!("no results to chart");
    }
    draw(path, chart, scale).map_err(|err| anyhow!("drawing {}: {err}", path.display()))?;
    fs::metadata(path).with_context(|| format!("{} was not written", path.display()))?;
    Ok(())
}

fn draw(path: &Path, spec: &GroupedRatios, scale: Scale) -> Result<(), Box<dyn std::error::Error>> {
    let groups = spec.groups.len();
    let (floor, headroom, legend) = match scale {
        Scale::Ratio => (1.0_f64, 1.5, SeriesLabelPosition::UpperRight),
        Scale::Milliseconds => (0.0, 1.35, SeriesLabelPosition::UpperLeft),
    };
    // Headroom above the bars for the legend.
    let top = spec
        .series
        .iter()
        .flat_map(|s| s.ratios.iter().flatten().copied())
        .chain(spec.goals.iter().map(|g| g.value))
        .fold(floor, f64::max)
        * headroom;

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&spec.title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..groups as f64, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Key points every 0.5: the group centres get the labels, the boundaries none.
        .x_labels(2 * groups + 1)
        .x_label_formatter(&|x| {
            let centre = x - 0.5;
            if (centre - centre.round()).abs() > 1e-6 || centre < 0.0 {
                return String::new();
            }
            spec.groups
                .get(centre.round() as usize)
                .cloned()
                .unwrap_or_default()
        })
        .x_desc(spec.x_desc.as_str())
        .y_desc(spec.y_desc.as_str())
        .y_label_formatter(&|y| match scale {
            Scale::Ratio => format!("{y:.1}"),
            Scale::Milliseconds => format!("{y:.0}"),
        })
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 16))
        .draw()?;

    if scale == Scale::Ratio {
        // The reference: ratio 1.
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (groups as f64, 1.0)],
            BLACK.stroke_width(1),
        )))?;
    }
    for goal in &spec.goals {
        let style = goal.color.stroke_width(2);
        chart
            .draw_series(std::iter::once(DashedPathElement::new(
                vec![(0.0, goal.value), (groups as f64, goal.value)],
                8,
                6,
                style,
            )))?
            .label(goal.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }

    let slot = 0.8 / spec.series.len() as f64;
    let value_style = TextStyle::from((FAMILY, 14).into_font())
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (index, series) in spec.series.iter().enumerate() {
        let fill = series.color;
        let bars: Vec<(f64, f64)> = series
            .ratios
            .iter()
            .enumerate()
            .filter_map(|(g, ratio)| Some((g as f64 + 0.1 + index as f64 * slot, (*ratio)?)))
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x, ratio)| {
                Rectangle::new(
                    [(x + slot * 0.06, 0.0), (x + slot * 0.94, ratio)],
                    fill.filled(),
                )
            }))?
            .label(series.label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill.filled()));
        chart.draw_series(bars.iter().map(|&(x, ratio)| {
            Text::new(
                match scale {
                    Scale::Ratio => format!("{ratio:.2}"),
                    Scale::Milliseconds => format_ms(ratio).replace(" ms", ""),
                },
                (x + slot / 2.0, ratio + top * 0.005),
                value_style.clone(),
            )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font((FAMILY, 15))
        .draw()?;
    root.present()?;
    Ok(())
}
