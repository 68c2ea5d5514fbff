//! Goals: what a scenario promises (`gannet rr ≥ 0.97× direct`), what it measured and whether
//! the promise held. One row type for every scenario: written to `results.json` by those that
//! keep their goals there, listed in `results.md` and printed as the verdict at the end of a run.

use std::fmt::Write as _;

use serde::Serialize;

/// One goal and whether it was met.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// What is promised, with its target (`apply → Ready p99 < 2 s`).
    pub goal: String,
    /// What the run measured, as shown.
    pub measured: String,
    /// `None`: could not be decided (a measurement is missing, or only a bound was measured).
    pub met: Option<bool>,
}

impl Goal {
    /// A goal that `measured` (if anything was) met or not, as `met` judges it.
    #[must_use]
    pub fn judged<T: Copy>(
        goal: impl Into<String>,
        measured: Option<T>,
        show: impl FnOnce(T) -> String,
        met: impl FnOnce(T) -> bool,
    ) -> Goal {
        Goal {
            goal: goal.into(),
            measured: measured.map_or_else(|| NOT_MEASURED.to_owned(), show),
            met: measured.map(met),
        }
    }

    /// The verdict as words: `met`, `not met` or `not measured`.
    #[must_use]
    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => NOT_MEASURED,
        }
    }
}

/// What a goal without a measurement shows.
pub const NOT_MEASURED: &str = "not measured";

/// A goal's verdict in the tables: met, not met (both bold), or not measured (`None`).
#[must_use]
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => NOT_MEASURED,
    }
}

/// The `## Goals` section of `results.md`: `intro` (if any) and a table of `goals` with their
/// verdicts.
pub fn goals_section(out: &mut String, intro: Option<&str>, goals: &[Goal]) {
    out.push_str("## Goals (shown, not asserted)\n\n");
    if let Some(intro) = intro {
        let _ = writeln!(out, "{intro}\n");
    }
    out.push_str("| goal | measured | |\n|---|---|---|\n");
    for g in goals {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            g.goal,
            g.measured.replace('|', "\\|"),
            verdict(g.met)
        );
    }
    out.push('\n');
}

/// The goals as the end of a run prints them, one line each: `goal: measured (verdict)`.
#[must_use]
pub fn verdict_lines(goals: &[Goal]) -> Vec<String> {
    goals
        .iter()
        .map(|g| format!("{}: {} ({})", g.goal, g.measured, g.verdict()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judged_goals_show_and_decide() {
        let met = Goal::judged(
            "p99 < 2 s",
            Some(1500.0),
            |ms| format!("{ms:.0} ms"),
            |ms| ms < 2000.0,
        );
        assert_eq!(met.measured, "1500 ms");
        assert_eq!(met.met, Some(true));
        let missed = Goal::judged(
            "p99 < 2 s",
            Some(2500.0),
            |ms| format!("{ms:.0} ms"),
            |ms| ms < 2000.0,
        );
        assert_eq!(missed.met, Some(false));
        let unknown = Goal::judged("p99 < 2 s", None::<f64>, |ms| format!("{ms}"), |_| true);
        assert_eq!(
            (unknown.measured.as_str(), unknown.met),
            (NOT_MEASURED, None)
        );
        assert_eq!(
            verdict_lines(&[met, missed, unknown]),
            [
                "p99 < 2 s: 1500 ms (met)",
                "p99 < 2 s: 2500 ms (not met)",
                "p99 < 2 s: not measured (not measured)",
            ]
        );
    }

    #[test]
    fn the_section_escapes_table_bars() {
        let mut out = String::new();
        let goals = [Goal {
            goal: "crr ≥ 1.5×".to_owned(),
            measured: "a | b".to_owned(),
            met: None,
        }];
        goals_section(&mut out, Some("At 10 000 services."), &goals);
        assert_eq!(
            out,
            "## Goals (shown, not asserted)\n\nAt 10 000 services.\n\n\
             | goal | measured | |\n|---|---|---|\n| crr ≥ 1.5× | a \\| b | not measured |\n\n"
        );
    }
}
