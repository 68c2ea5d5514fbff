//! Arguments more than one scenario takes, and their checks: every problem is collected, each
//! naming its flag, and the run exits with `EX_USAGE` listing them.

use std::time::Duration;

use clap::Args;

use crate::peer::Traffic;
use crate::services::MAX_SERVICES;
use crate::util;

/// The measurement settings of the traffic scenarios (`clusterip`, `overlay`, `nodeport`).
#[derive(Debug, Args)]
pub struct TrafficArgs {
    /// Measurements of every path and metric [default: 3; --quick: 2].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Length of one measurement in seconds [default: 2; --quick: 0.5].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Seed of the random measurement order [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// The CPU that every peer (client and servers) runs on [default: the last CPU].
    #[arg(long, conflicts_with = "no_pin")]
    pub cpu: Option<usize>,
    /// Let the scheduler place the peers (results then depend on where it puts them).
    #[arg(long)]
    pub no_pin: bool,
}

impl TrafficArgs {
    /// The values (quick: 2 rounds of 0.5 s after 0.1 s of warm-up, else 3 of 2 s after 0.2 s)
    /// and every problem, each naming its flag.
    pub fn settings(&self, quick: bool, errors: &mut Vec<String>) -> Traffic {
        let rounds = self.rounds.unwrap_or(if quick { 2 } else { 3 });
        if rounds == 0 {
            errors.push("--rounds 0: must be at least 1".to_owned());
        }
        let seconds = self.seconds.unwrap_or(if quick { 0.5 } else { 2.0 });
        if !(0.05..=600.0).contains(&seconds) {
            errors.push(format!("--seconds {seconds}: must be between 0.05 and 600"));
        }
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let peer_cpu = if self.no_pin {
            None
        } else {
            let cpu = self.cpu.unwrap_or(cpus - 1);
            if cpu >= cpus {
                errors.push(format!(
                    "--cpu {cpu}: this machine has CPUs 0 to {}",
                    cpus - 1
                ));
            }
            Some(cpu)
        };
        Traffic {
            rounds,
            duration: Duration::from_secs_f64(seconds.clamp(0.05, 600.0)),
            warmup: Duration::from_secs_f64(if quick { 0.1 } else { 0.2 }),
            seed: seed(self.seed),
            peer_cpu,
        }
    }
}

/// The numbers of services of `--services`, or the defaults, and every problem with them.
pub fn service_counts(
    given: Option<&Vec<usize>>,
    default: &[usize],
    errors: &mut Vec<String>,
) -> Vec<usize> {
    let counts = given.cloned().unwrap_or_else(|| default.to_vec());
    if counts.is_empty() {
        errors.push("--services: give at least one number".to_owned());
    }
    for &n in &counts {
        if !(1..=MAX_SERVICES).contains(&n) {
            errors.push(format!(
                "--services {n}: must be between 1 and {MAX_SERVICES}"
            ));
        }
    }
    counts
}

/// `--seed`, or one from the clock.
#[must_use]
pub fn seed(given: Option<u64>) -> u64 {
    given.unwrap_or_else(util::clock_seed)
}

/// `errors` as the scenario's result: its configuration if there are none.
///
/// # Errors
/// Every problem, each naming its flag.
pub fn checked<C>(config: C, errors: Vec<String>) -> Result<C, Vec<String>> {
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traffic(rounds: Option<usize>, seconds: Option<f64>, cpu: Option<usize>) -> TrafficArgs {
        TrafficArgs {
            rounds,
            seconds,
            seed: Some(7),
            cpu,
            no_pin: false,
        }
    }

    #[test]
    fn traffic_defaults_follow_quick() {
        let mut errors = Vec::new();
        let quick = traffic(None, None, None).settings(true, &mut errors);
        assert_eq!(
            (quick.rounds, quick.duration),
            (2, Duration::from_millis(500))
        );
        let full = traffic(None, None, None).settings(false, &mut errors);
        assert_eq!(
            (full.rounds, full.duration, full.seed),
            (3, Duration::from_secs(2), 7)
        );
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn every_bad_flag_is_named() {
        let mut errors = Vec::new();
        let _ = traffic(Some(0), Some(0.01), Some(100_000)).settings(false, &mut errors);
        let _ = service_counts(Some(&vec![0, MAX_SERVICES + 1]), &[1], &mut errors);
        let _ = service_counts(Some(&Vec::new()), &[1], &mut errors);
        assert_eq!(
            errors,
            [
                "--rounds 0: must be at least 1".to_owned(),
                "--seconds 0.01: must be between 0.05 and 600".to_owned(),
                format!(
                    "--cpu 100000: this machine has CPUs 0 to {}",
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1
                ),
                format!("--services 0: must be between 1 and {MAX_SERVICES}"),
                format!(
                    "--services {}: must be between 1 and {MAX_SERVICES}",
                    MAX_SERVICES + 1
                ),
                "--services: give at least one number".to_owned(),
            ]
        );
        assert_eq!(checked(1, Vec::new()), Ok(1));
        assert_eq!(checked(1, vec!["x".to_owned()]), Err(vec!["x".to_owned()]));
    }
}
