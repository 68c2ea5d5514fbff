//! The containers' probes, as the kubelet runs them: `exec` (a command in the container through
//! the CRI's `ExecSync`, success: exit 0), `tcpSocket` (a TCP connection to the pod), `httpGet`
//! (an HTTP GET to the pod, success: a status from 200 to 399). Each probe runs every
//! `periodSeconds` (10) after `initialDelaySeconds`, each try bounded by `timeoutSeconds` (1),
//! and counts from the container's start: a restarted container starts over.
//!
//! - `startupProbe`: until it passed once, the other two are not run and the container is
//!   neither started nor ready; `failureThreshold` (3) failures in a row and it is killed. Once
//!   passed it is not run again for that container.
//! - `livenessProbe`: `failureThreshold` failures in a row and the container is killed (the
//!   worker stops it and the pod's `restartPolicy` restarts it).
//! - `readinessProbe`: the container turns ready after `successThreshold` (1) successes in a row
//!   and unready after `failureThreshold` failures in a row; it is not ready before its first
//!   success.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info};

use super::cri::{Cri, call};
use super::label;
use super::status::{Observed, PodView};

/// One of a container's three probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// The container's probe of this kind.
    #[must_use]
    pub fn of(self, container: &Container) -> Option<&Probe> {
        match self {
            Self::Startup => container.startup_probe.as_ref(),
            Self::Liveness => container.liveness_probe.as_ref(),
            Self::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Startup => "startup",
            Self::Liveness => "liveness",
            Self::Readiness => "readiness",
        })
    }
}

/// One probe's counts for one container.
#[derive(Debug)]
struct Tracker {
    /// The probe's result so far: liveness passes until it fails, startup and readiness fail
    /// until they pass (as the kubelet's initial results).
    passing: bool,
    successes: i32,
    failures: i32,
    last: Option<Instant>,
}

impl Tracker {
    fn new(kind: Kind) -> Self {
        Self {
            passing: kind == Kind::Liveness,
            successes: 0,
            failures: 0,
            last: None,
        }
    }

    /// Counts one outcome; returns whether the result changed.
    fn record(
        &mut self,
        kind: Kind,
        probe: &Probe,
        outcome: &Result<(), String>,
        now: Instant,
    ) -> bool {
        self.last = Some(now);
        let before = self.passing;
        if outcome.is_ok() {
            self.failures = 0;
            self.successes += 1;
            // Kubernetes accepts only 1 for the startup and liveness probes' successThreshold.
            let needed = match kind {
                Kind::Readiness => probe.success_threshold.unwrap_or(1).max(1),
                Kind::Startup | Kind::Liveness => 1,
            };
            if self.successes >= needed {
                self.passing = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                self.passing = false;
            }
        }
        before != self.passing
    }
}

/// What one probe's outcome means for its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing changed.
    Same,
    /// The startup probe passed, or readiness changed.
    Changed,
    /// The startup or liveness probe failed `failureThreshold` times in a row: kill it.
    Kill,
}

/// The probes' state of one container, kept by its pod's worker across syncs.
#[derive(Debug)]
pub struct Probes {
    /// The container the counts belong to (a restart starts over).
    container_id: String,
    first_seen: Instant,
    startup: Tracker,
    liveness: Tracker,
    readiness: Tracker,
}

impl Probes {
    #[must_use]
    pub fn new(container_id: &str, now: Instant) -> Self {
        Self {
            container_id: container_id.to_owned(),
            first_seen: now,
            startup: Tracker::new(Kind::Startup),
            liveness: Tracker::new(Kind::Liveness),
            readiness: Tracker::new(Kind::Readiness),
        }
    }

    #[must_use]
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    fn tracker(&mut self, kind: Kind) -> &mut Tracker {
        match kind {
            Kind::Startup => &mut self.startup,
            Kind::Liveness => &mut self.liveness,
            Kind::Readiness => &mut self.readiness,
        }
    }

    /// Whether `container` started: it has no startup probe, or that probe passed.
    #[must_use]
    pub fn started(&self, container: &Container) -> bool {
        container.startup_probe.is_none() || self.startup.passing
    }

    /// Whether `container` is ready as far as its probes say: started, and its readiness probe
    /// (if any) passes.
    #[must_use]
    pub fn ready(&self, container: &Container) -> bool {
        self.started(container) && (container.readiness_probe.is_none() || self.readiness.passing)
    }

    /// The probes of `container` to run at `now`, in order: its startup probe alone until it
    /// passed, then its liveness and readiness probes.
    #[must_use]
    pub fn due(&self, container: &Container, now: Instant) -> Vec<Kind> {
        let due = |kind: Kind, tracker: &Tracker| {
            kind.of(container).is_some_and(|probe| {
                let delay = seconds(probe.initial_delay_seconds, 0);
                let period = seconds(probe.period_seconds, 10);
                now >= self.first_seen + delay
                    && tracker.last.is_none_or(|last| now >= last + period)
            })
        };
        if !self.started(container) {
            return if due(Kind::Startup, &self.startup) {
                vec![Kind::Startup]
            } else {
                Vec::new()
            };
        }
        [
            (Kind::Liveness, &self.liveness),
            (Kind::Readiness, &self.readiness),
        ]
        .into_iter()
        .filter(|(kind, tracker)| due(*kind, tracker))
        .map(|(kind, _)| kind)
        .collect()
    }

    /// Counts one outcome of `container`'s `kind` probe at `now`.
    pub fn record(
        &mut self,
        container: &Container,
        kind: Kind,
        outcome: &Result<(), String>,
        now: Instant,
    ) -> Verdict {
        let Some(probe) = kind.of(container) else {
            return Verdict::Same;
        };
        let tracker = self.tracker(kind);
        let changed = tracker.record(kind, probe, outcome, now);
        match kind {
            Kind::Startup | Kind::Liveness if !tracker.passing && outcome.is_err() => {
                // Killed: its next container starts over; until then nothing counts twice.
                if tracker.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    Verdict::Kill
                } else {
                    Verdict::Same
                }
            }
            _ if changed => Verdict::Changed,
            _ => Verdict::Same,
        }
    }
}

/// A container a probe failed: the worker kills it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    /// The container's name in the pod spec.
    pub container: String,
    /// Its runtime id.
    pub id: String,
    pub kind: Kind,
    /// The last failure, for the log.
    pub failure: String,
    /// The probe's own `terminationGracePeriodSeconds`, when it has one.
    pub grace_seconds: Option<i64>,
}

fn seconds(value: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(value.map_or(default, |v| u64::try_from(v).unwrap_or(0)))
}

/// Runs `probe` of `container` (running as `container_id` in a pod at `pod_ip`) once.
///
/// # Errors
/// Why the probe failed, for the log.
pub async fn run(
    cri: &mut Cri,
    probe: &Probe,
    container: &Container,
    container_id: &str,
    pod_ip: Option<IpAddr>,
) -> Result<(), String> {
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(exec) = &probe.exec {
        let request = cri::ExecSyncRequest {
            container_id: container_id.to_owned(),
            cmd: exec.command.clone().unwrap_or_default(),
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(1),
        };
        let response = call("ExecSync", cri.runtime.exec_sync(request)).await?;
        if response.exit_code == 0 {
            return Ok(());
        }
        let output: String = String::from_utf8_lossy(&response.stdout)
            .chars()
            .chain(String::from_utf8_lossy(&response.stderr).chars())
            .take(200)
            .collect();
        let output = output.trim();
        return Err(if output.is_empty() {
            format!("exec probe exited with {}", response.exit_code)
        } else {
            format!("exec probe exited with {}: {output}", response.exit_code)
        });
    }
    let (host, port, http_path) = if let Some(tcp) = &probe.tcp_socket {
        (tcp.host.clone(), &tcp.port, None)
    } else if let Some(http) = &probe.http_get {
        if http.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            return Err("httpGet probes over HTTPS are not supported yet".to_owned());
        }
        (
            http.host.clone(),
            &http.port,
            Some(http.path.clone().unwrap_or_else(|| "/".to_owned())),
        )
    } else {
        return Err("a probe without exec, tcpSocket or httpGet".to_owned());
    };
    let ip = match host {
        Some(host) => host
            .parse::<IpAddr>()
            .map_err(|_| format!("probe host {host}: only an IP address is supported"))?,
        None => pod_ip.ok_or("the pod has no address yet")?,
    };
    let addr = SocketAddr::new(ip, port_number(port, container)?);
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let Some(path) = http_path else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: gannetd-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0_u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading from {addr}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no HTTP status line from {addr}"))?;
        if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe of {addr}{path}: status {code}"))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("probe of {addr} timed out after {timeout:?}"))?
}

/// Runs the probes that are due of the pod's running containers, notes each container's
/// readiness and, for those with a startup probe, whether they started, in `view`; returns the
/// containers a startup or liveness probe failed, to be killed.
pub async fn run_due(
    cri: &mut Cri,
    pod: &Pod,
    view: &mut PodView,
    probes: &mut HashMap<String, Probes>,
) -> Vec<Failed> {
    let specs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let pod_ip = view.ips.first().and_then(|ip| ip.parse().ok());
    let mut failed = Vec::new();
    for spec in specs {
        if spec.startup_probe.is_none()
            && spec.liveness_probe.is_none()
            && spec.readiness_probe.is_none()
        {
            continue;
        }
        let running = view
            .containers
            .iter()
            .find_map(|(name, observed)| match observed {
                Observed::Runtime(status)
                    if *name == spec.name
                        && status.state == i32::from(cri::ContainerState::ContainerRunning) =>
                {
                    Some(status.id.clone())
                }
                _ => None,
            });
        let Some(id) = running else {
            probes.remove(&spec.name);
            view.readiness.insert(spec.name.clone(), false);
            continue;
        };
        let state = probes
            .entry(spec.name.clone())
            .or_insert_with(|| Probes::new(&id, Instant::now()));
        if state.container_id() != id {
            *state = Probes::new(&id, Instant::now());
        }
        for kind in state.due(spec, Instant::now()) {
            let Some(probe) = kind.of(spec) else { continue };
            let outcome = run(cri, probe, spec, &id, pod_ip).await;
            match state.record(spec, kind, &outcome, Instant::now()) {
                Verdict::Kill => {
                    failed.push(Failed {
                        container: spec.name.clone(),
                        id: id.clone(),
                        kind,
                        failure: outcome.err().unwrap_or_default(),
                        grace_seconds: probe.termination_grace_period_seconds,
                    });
                    break;
                }
                Verdict::Changed => info!(
                    pod = label(pod),
                    container = spec.name,
                    probe = %kind,
                    started = state.started(spec),
                    ready = state.ready(spec),
                    outcome = outcome.as_ref().err().map_or("succeeded", String::as_str),
                    "{kind} probe result changed"
                ),
                Verdict::Same => {
                    if let Err(error) = &outcome {
                        debug!(pod = label(pod), container = spec.name, probe = %kind, %error, "probe failed");
                    }
                }
            }
        }
        if spec.startup_probe.is_some() {
            view.started.insert(spec.name.clone(), state.started(spec));
        }
        view.readiness.insert(spec.name.clone(), state.ready(spec));
    }
    failed
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port_number(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("probe port {n}")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("probe port {name}: no container port of that name")),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ContainerPort;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn probe(delay: i32, period: i32, failures: i32) -> Option<Probe> {
        Some(Probe {
            initial_delay_seconds: Some(delay),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            success_threshold: Some(1),
            ..Probe::default()
        })
    }

    fn failure() -> Result<(), String> {
        Err("no".to_owned())
    }

    #[test]
    fn readiness_needs_its_thresholds_and_waits_its_delay() {
        let container = Container {
            readiness_probe: probe(5, 2, 2),
            ..Container::default()
        };
        let t0 = Instant::now();
        let mut p = Probes::new("c1", t0);
        assert!(!p.ready(&container));
        assert_eq!(p.due(&container, t0 + 4 * S), []);
        assert_eq!(p.due(&container, t0 + 5 * S), [Kind::Readiness]);
        let r = Kind::Readiness;
        assert_eq!(
            p.record(&container, r, &Ok(()), t0 + 5 * S),
            Verdict::Changed
        );
        assert!(p.ready(&container));
        assert_eq!(p.due(&container, t0 + 6 * S), []);
        // One failure is not enough to turn it unready; two in a row are; never a kill.
        assert_eq!(
            p.record(&container, r, &failure(), t0 + 7 * S),
            Verdict::Same
        );
        assert!(p.ready(&container));
        assert_eq!(
            p.record(&container, r, &failure(), t0 + 9 * S),
            Verdict::Changed
        );
        assert!(!p.ready(&container));
        assert_eq!(
            p.record(&container, r, &failure(), t0 + 11 * S),
            Verdict::Same
        );
    }

    #[test]
    fn liveness_kills_after_its_failure_threshold_in_a_row() {
        let container = Container {
            liveness_probe: probe(3, 1, 3),
            ..Container::default()
        };
        let t0 = Instant::now();
        let mut p = Probes::new("c1", t0);
        // Without a readiness or startup probe, a running container is started and ready.
        assert!(p.started(&container) && p.ready(&container));
        assert_eq!(p.due(&container, t0 + 2 * S), []);
        assert_eq!(p.due(&container, t0 + 3 * S), [Kind::Liveness]);
        let l = Kind::Liveness;
        assert_eq!(
            p.record(&container, l, &failure(), t0 + 3 * S),
            Verdict::Same
        );
        assert_eq!(
            p.record(&container, l, &failure(), t0 + 4 * S),
            Verdict::Same
        );
        // A success in between starts the count over.
        assert_eq!(p.record(&container, l, &Ok(()), t0 + 5 * S), Verdict::Same);
        assert_eq!(
            p.record(&container, l, &failure(), t0 + 6 * S),
            Verdict::Same
        );
        assert_eq!(
            p.record(&container, l, &failure(), t0 + 7 * S),
            Verdict::Same
        );
        assert_eq!(
            p.record(&container, l, &failure(), t0 + 8 * S),
            Verdict::Kill
        );
        // Still running (the stop failed): the next failure kills again.
        assert_eq!(
            p.record(&container, l, &failure(), t0 + 9 * S),
            Verdict::Kill
        );
        // The liveness probe says nothing of readiness.
        assert!(p.ready(&container));
        // The next container starts afresh, its delay counted from its own start.
        let t1 = t0 + 20 * S;
        let p = Probes::new("c2", t1);
        assert_eq!(p.due(&container, t1 + 2 * S), []);
        assert_eq!(p.due(&container, t1 + 3 * S), [Kind::Liveness]);
    }

    #[test]
    fn a_startup_probe_holds_the_others_back_until_it_passes_once() {
        let container = Container {
            startup_probe: probe(0, 1, 2),
            liveness_probe: probe(0, 1, 1),
            readiness_probe: probe(0, 1, 1),
            ..Container::default()
        };
        let t0 = Instant::now();
        let s = Kind::Startup;
        let mut p = Probes::new("c1", t0);
        assert!(!p.started(&container) && !p.ready(&container));
        assert_eq!(p.due(&container, t0), [Kind::Startup]);
        assert_eq!(p.record(&container, s, &failure(), t0), Verdict::Same);
        assert_eq!(p.due(&container, t0 + S), [Kind::Startup]);
        assert_eq!(p.record(&container, s, &Ok(()), t0 + S), Verdict::Changed);
        // Started, not yet ready (its readiness probe has not passed); the startup probe is
        // not run again, the other two are.
        assert!(p.started(&container) && !p.ready(&container));
        assert_eq!(
            p.due(&container, t0 + 5 * S),
            [Kind::Liveness, Kind::Readiness]
        );
        let r = Kind::Readiness;
        assert_eq!(
            p.record(&container, r, &Ok(()), t0 + 5 * S),
            Verdict::Changed
        );
        assert!(p.ready(&container));
        // failureThreshold failures in a row of a startup probe that never passes: a kill.
        let mut q = Probes::new("c2", t0);
        assert_eq!(q.record(&container, s, &failure(), t0), Verdict::Same);
        assert_eq!(q.due(&container, t0 + S), [Kind::Startup]);
        assert_eq!(q.record(&container, s, &failure(), t0 + S), Verdict::Kill);
        assert!(!q.started(&container) && !q.ready(&container));
    }

    #[test]
    fn named_ports_are_the_containers() {
        let container = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".to_owned()),
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        };
        assert_eq!(
            port_number(&IntOrString::String("http".into()), &container),
            Ok(8080)
        );
        assert_eq!(port_number(&IntOrString::Int(81), &container), Ok(81));
        assert!(port_number(&IntOrString::String("grpc".into()), &container).is_err());
    }
}
