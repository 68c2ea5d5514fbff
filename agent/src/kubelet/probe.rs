//! Readiness probes, as the kubelet runs them: `exec` (a command in the container through the
//! CRI's `ExecSync`, success: exit 0), `tcpSocket` (a TCP connection to the pod), `httpGet` (an
//! HTTP GET to the pod, success: a status from 200 to 399). Each container's probe runs every
//! `periodSeconds` (10) after `initialDelaySeconds`, each try bounded by `timeoutSeconds` (1);
//! the container turns ready after `successThreshold` (1) successes in a row and unready after
//! `failureThreshold` (3) failures in a row. A container is not ready before its first success.

use std::collections::HashMap;
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

/// One container's readiness, kept by its pod's worker across syncs.
#[derive(Debug)]
pub struct Readiness {
    /// The container the counts belong to (a restart starts over).
    container_id: String,
    ready: bool,
    successes: i32,
    failures: i32,
    last: Option<Instant>,
    first_seen: Instant,
}

impl Readiness {
    #[must_use]
    pub fn new(container_id: &str) -> Self {
        Self {
            container_id: container_id.to_owned(),
            ready: false,
            successes: 0,
            failures: 0,
            last: None,
            first_seen: Instant::now(),
        }
    }

    #[must_use]
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    #[must_use]
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Whether the probe is due at `now`.
    #[must_use]
    pub fn due(&self, probe: &Probe, now: Instant) -> bool {
        let delay = seconds(probe.initial_delay_seconds, 0);
        let period = seconds(probe.period_seconds, 10);
        now >= self.first_seen + delay && self.last.is_none_or(|last| now >= last + period)
    }

    /// Counts one probe's outcome; returns whether readiness changed.
    pub fn record(&mut self, probe: &Probe, outcome: &Result<(), String>, now: Instant) -> bool {
        self.last = Some(now);
        let before = self.ready;
        if outcome.is_ok() {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                self.ready = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                self.ready = false;
            }
        }
        before != self.ready
    }
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
        return if response.exit_code == 0 {
            Ok(())
        } else {
            Err(format!("exec probe exited with {}", response.exit_code))
        };
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

/// Runs the readiness probes that are due of the pod's running containers and notes each
/// probed container's readiness in `view`; a restarted container starts unready.
pub async fn probe_readiness(
    cri: &mut Cri,
    pod: &Pod,
    view: &mut PodView,
    readiness: &mut HashMap<String, Readiness>,
) {
    let specs = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let pod_ip = view.ips.first().and_then(|ip| ip.parse().ok());
    for spec in specs {
        let Some(probe) = &spec.readiness_probe else {
            continue;
        };
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
            readiness.remove(&spec.name);
            view.readiness.insert(spec.name.clone(), false);
            continue;
        };
        let state = readiness
            .entry(spec.name.clone())
            .or_insert_with(|| Readiness::new(&id));
        if state.container_id() != id {
            *state = Readiness::new(&id);
        }
        let now = std::time::Instant::now();
        if state.due(probe, now) {
            let outcome = run(cri, probe, spec, &id, pod_ip).await;
            if state.record(probe, &outcome, now) {
                info!(
                    pod = label(pod),
                    container = spec.name,
                    ready = state.ready(),
                    outcome = outcome.as_ref().err().map_or("succeeded", String::as_str),
                    "readiness changed"
                );
            } else if let Err(error) = &outcome {
                debug!(pod = label(pod), container = spec.name, %error, "readiness probe failed");
            }
        }
        view.readiness.insert(spec.name.clone(), state.ready());
    }
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

    #[test]
    fn readiness_needs_its_thresholds_and_waits_its_delay() {
        let probe = Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(2),
            failure_threshold: Some(2),
            success_threshold: Some(1),
            ..Probe::default()
        };
        let mut r = Readiness::new("c1");
        let t0 = r.first_seen;
        assert!(!r.due(&probe, t0 + Duration::from_secs(4)));
        assert!(r.due(&probe, t0 + Duration::from_secs(5)));
        assert!(r.record(&probe, &Ok(()), t0 + Duration::from_secs(5)));
        assert!(r.ready());
        assert!(!r.due(&probe, t0 + Duration::from_secs(6)));
        // One failure is not enough to turn it unready; two in a row are.
        assert!(!r.record(&probe, &Err("no".into()), t0 + Duration::from_secs(7)));
        assert!(r.ready());
        assert!(r.record(&probe, &Err("no".into()), t0 + Duration::from_secs(9)));
        assert!(!r.ready());
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
