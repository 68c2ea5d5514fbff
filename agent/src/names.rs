//! Which Service port each programmed frontend belongs to (`<state-dir>/services.json`), for
//! `gannetd status`: neither the pinned maps nor the nftables table hold names. Kept from what
//! is programmed and written at most once a second, off the path of a change.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gannet_k8s::{DesiredState, Frontend, ServicePort};
use tracing::warn;

/// The file, in the state directory.
pub const FILE: &str = "services.json";

/// How often the file is written at most.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// The names of the programmed frontends and when they were last written.
#[derive(Debug)]
pub struct ServiceNames {
    names: BTreeMap<Frontend, String>,
    file: PathBuf,
    dirty: bool,
    written: Option<Instant>,
}

/// `namespace/name:port` as kubectl and kube-proxy print a Service port (`namespace/name` for an
/// unnamed port).
fn name_of(port: &ServicePort) -> String {
    if port.port_name.is_empty() {
        format!("{}/{}", port.namespace, port.name)
    } else {
        format!("{}/{}:{}", port.namespace, port.name, port.port_name)
    }
}

impl ServiceNames {
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            names: BTreeMap::new(),
            file: state_dir.join(FILE),
            // Nothing to write before the first state: the file of the last run (the same
            // services, adopted) stays until then.
            dirty: false,
            written: None,
        }
    }

    /// Takes the names of a whole desired state.
    pub fn full(&mut self, state: &DesiredState) {
        let names: BTreeMap<Frontend, String> = state
            .services
            .iter()
            .map(|(frontend, port)| (*frontend, name_of(port)))
            .collect();
        // The first state is written even when empty: it replaces the last run's file.
        if names != self.names || self.written.is_none() {
            self.names = names;
            self.dirty = true;
        }
    }

    /// Takes a change of frontends (`None`: removed).
    pub fn changes(&mut self, changes: &BTreeMap<Frontend, Option<ServicePort>>) {
        for (frontend, port) in changes {
            let changed = match port {
                Some(port) => {
                    let name = name_of(port);
                    self.names.insert(*frontend, name.clone()).as_ref() != Some(&name)
                }
                None => self.names.remove(frontend).is_some(),
            };
            self.dirty |= changed;
        }
    }

    /// Writes the file when the names changed and the last write is a second old.
    pub fn flush(&mut self, now: Instant) {
        if !self.dirty || self.written.is_some_and(|at| now < at + WRITE_EVERY) {
            return;
        }
        self.dirty = false;
        self.written = Some(now);
        let by_text: BTreeMap<String, &String> = self
            .names
            .iter()
            .map(|(frontend, name)| (frontend.to_string(), name))
            .collect();
        let result = serde_json::to_vec(&by_text)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let tmp = self.file.with_extension("json.tmp");
                fs::write(&tmp, json)?;
                fs::rename(&tmp, &self.file)
            });
        if let Err(error) = result {
            warn!(file = %self.file.display(), %error, "cannot write the services' names");
        }
    }
}

/// The names `gannetd` wrote, by frontend as `status` prints it (`10.96.0.10:80/TCP`); empty
/// when there is no file (gannetd not started yet, or an older gannetd).
#[must_use]
pub fn read(state_dir: &Path) -> BTreeMap<String, String> {
    fs::read(state_dir.join(FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Removes the file; whether it was there.
///
/// # Errors
/// When it exists and cannot be removed.
pub fn cleanup(state_dir: &Path) -> std::io::Result<bool> {
    match fs::remove_file(state_dir.join(FILE)) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gannet_k8s::{Backend, Protocol};

    fn port(name: &str, port_name: &str) -> ServicePort {
        ServicePort {
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            port_name: port_name.to_owned(),
            backends: vec![Backend {
                ip: "10.244.0.5".parse().expect("ip"),
                port: 8080,
            }],
            terminating: Vec::new(),
            backend_nodes: BTreeMap::new(),
            session_affinity_timeout: None,
            external: None,
        }
    }

    fn frontend(last: u8) -> Frontend {
        Frontend {
            ip: std::net::IpAddr::from([10, 96, 0, last]),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn names_follow_full_states_and_changes_and_are_written_at_most_once_a_second() {
        let dir = std::env::temp_dir().join(format!("gannet-names-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let mut names = ServiceNames::new(&dir);
        let mut state = DesiredState::default();
        state.services.insert(frontend(10), port("web", "http"));
        state.services.insert(frontend(11), port("api", ""));
        names.full(&state);
        let start = Instant::now();
        names.flush(start);
        assert_eq!(
            read(&dir),
            BTreeMap::from([
                ("10.96.0.10:80/TCP".to_owned(), "shop/web:http".to_owned()),
                ("10.96.0.11:80/TCP".to_owned(), "shop/api".to_owned()),
            ])
        );
        names.changes(&BTreeMap::from([
            (frontend(11), None),
            (frontend(12), Some(port("db", "sql"))),
        ]));
        names.flush(start + Duration::from_millis(500));
        assert_eq!(read(&dir).len(), 2, "not written again within a second");
        names.flush(start + WRITE_EVERY);
        assert_eq!(
            read(&dir),
            BTreeMap::from([
                ("10.96.0.10:80/TCP".to_owned(), "shop/web:http".to_owned()),
                ("10.96.0.12:80/TCP".to_owned(), "shop/db:sql".to_owned()),
            ])
        );
        assert!(cleanup(&dir).expect("cleanup"), "the file was there");
        assert!(read(&dir).is_empty());
        fs::remove_dir_all(&dir).expect("removing the temp dir");
    }
}
