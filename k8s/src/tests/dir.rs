//! `ManifestDir`: change detection, last good contents, deletion.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{backend, error, ip, service_doc, slice_doc};
use crate::{DesiredState, Frontend, ManifestDir, ManifestError, Protocol, ScanOutcome};

/// A directory under the system temp dir, unique per process and test, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("gannet-k8s-{test}-{}-{unique}", std::process::id()));
        fs::create_dir(&path)
            .unwrap_or_else(|error| panic!("creating {}: {error}", path.display()));
        Self(path)
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The path as text, for building expected errors.
    fn file(&self, name: &str) -> String {
        let path = self.path(name);
        path.to_str()
            .unwrap_or_else(|| panic!("temp path {} is not UTF-8", path.display()))
            .to_owned()
    }

    pub(super) fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        fs::write(&path, text)
            .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
    }

    pub(super) fn remove(&self, name: &str) {
        let path = self.path(name);
        fs::remove_file(&path)
            .unwrap_or_else(|error| panic!("removing {}: {error}", path.display()));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.0) {
            // Not a panic: it would abort a test that is already failing.
            eprintln!("cannot remove test directory {}: {error}", self.0.display());
        }
    }
}

fn scan_changed(manifests: &mut ManifestDir) -> ScanOutcome {
    match manifests.scan() {
        Ok(Some(outcome)) => outcome,
        Ok(None) => panic!("expected the scan to see a change, it saw none"),
        Err(error) => panic!("scan failed: {error}"),
    }
}

fn assert_unchanged(manifests: &mut ManifestDir) {
    match manifests.scan() {
        Ok(None) => {}
        Ok(Some(outcome)) => panic!("expected no change, the scan returned {outcome:#?}"),
        Err(error) => panic!("scan failed: {error}"),
    }
}

/// The frontends of a state with their backends, as text, for compact comparisons.
fn summary(state: &DesiredState) -> BTreeMap<String, (String, Vec<String>)> {
    state
        .services
        .iter()
        .map(|(frontend, port)| {
            (
                frontend.to_string(),
                (
                    format!("{}/{}", port.namespace, port.name),
                    port.backends.iter().map(ToString::to_string).collect(),
                ),
            )
        })
        .collect()
}

fn entry(frontend: &str, service: &str, backends: &[&str]) -> (String, (String, Vec<String>)) {
    (
        frontend.to_owned(),
        (
            service.to_owned(),
            backends.iter().map(|&backend| backend.to_owned()).collect(),
        ),
    )
}

/// Service `shop/web` with one port, named http.
pub(super) fn web(cluster_ip: &str, port: u16) -> String {
    service_doc(
        "web",
        &format!("clusterIP: {cluster_ip}\nports:\n  - name: http\n    port: {port}\n"),
    )
}

/// Service `shop/api` on 10.96.0.30 with one unnamed port.
pub(super) fn api(port: u16) -> String {
    service_doc(
        "api",
        &format!("clusterIP: 10.96.0.30\nports:\n  - port: {port}\n"),
    )
}

/// `EndpointSlice` `shop/web-abc` of `shop/web`: port http is 8080, all `addresses` ready.
pub(super) fn web_slice(addresses: &[&str]) -> String {
    let endpoints: String = addresses
        .iter()
        .map(|address| format!("  - addresses: [\"{address}\"]\n"))
        .collect();
    let body =
        format!("addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}");
    slice_doc("web-abc", "web", &body)
}

#[test]
fn unchanged_directory_scans_to_none() {
    let dir = TempDir::new("unchanged");
    let mut manifests = ManifestDir::new(&dir.0);
    assert_eq!(
        scan_changed(&mut manifests),
        ScanOutcome {
            state: DesiredState::default(),
            errors: vec![],
            nodes: BTreeMap::new(),
        },
        "the first scan always reports, even an empty directory"
    );
    assert_unchanged(&mut manifests);

    dir.write("web.yaml", &web("10.96.0.20", 80));
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        outcome.state.services.keys().copied().collect::<Vec<_>>(),
        [Frontend {
            ip: ip("10.96.0.20"),
            port: 80,
            protocol: Protocol::Tcp
        }]
    );
    assert_unchanged(&mut manifests);
    assert_unchanged(&mut manifests);
}

#[test]
fn files_added_modified_and_deleted() {
    let dir = TempDir::new("lifecycle");
    let mut manifests = ManifestDir::new(&dir.0);
    dir.write(
        "web.yaml",
        &format!(
            "{}---\n{}",
            web("10.96.0.20", 80),
            web_slice(&["10.244.1.1"])
        ),
    );
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([entry("10.96.0.20:80/TCP", "shop/web", &["10.244.1.1:8080"])])
    );

    // Another file; its slice adds a backend to web, which lives in the first file.
    dir.write(
        "api.yaml",
        &format!(
            "{}---\n{}",
            api(443),
            web_slice(&["10.244.2.2"]).replace("web-abc", "web-def")
        ),
    );
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([
            entry(
                "10.96.0.20:80/TCP",
                "shop/web",
                &["10.244.1.1:8080", "10.244.2.2:8080"]
            ),
            entry("10.96.0.30:443/TCP", "shop/api", &[]),
        ])
    );
    assert_unchanged(&mut manifests);

    // Modified in place: the web service moves to port 8000 and gains an endpoint.
    dir.write(
        "web.yaml",
        &format!(
            "{}---\n{}",
            web("10.96.0.20", 8000),
            web_slice(&["10.244.1.1", "10.244.1.3"])
        ),
    );
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([
            entry(
                "10.96.0.20:8000/TCP",
                "shop/web",
                &["10.244.1.1:8080", "10.244.1.3:8080", "10.244.2.2:8080"]
            ),
            entry("10.96.0.30:443/TCP", "shop/api", &[]),
        ])
    );

    dir.remove("api.yaml");
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([entry(
            "10.96.0.20:8000/TCP",
            "shop/web",
            &["10.244.1.1:8080", "10.244.1.3:8080"]
        )])
    );
    assert_unchanged(&mut manifests);
}

#[test]
fn only_visible_manifest_files_of_the_directory_are_read() {
    let dir = TempDir::new("names");
    let service = |name: &str, last_octet: u8| {
        service_doc(
            name,
            &format!("clusterIP: 10.96.0.{last_octet}\nports:\n  - port: 80\n"),
        )
    };
    dir.write("a.yaml", &service("a", 1));
    dir.write("b.yml", &service("b", 2));
    dir.write(
        "c.json",
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "c"},
            "spec": {"clusterIP": "10.96.0.3", "ports": [{"port": 80}]}}"#,
    );
    dir.write(".d.yaml", &service("d", 4));
    dir.write("e.yaml.bak", &service("e", 5));
    dir.write("f.txt", &service("f", 6));
    fs::create_dir(dir.path("g.yaml")).expect("creating a directory named like a manifest");
    fs::write(dir.path("g.yaml").join("h.yaml"), service("h", 8))
        .expect("writing a nested manifest");

    let mut manifests = ManifestDir::new(&dir.0);
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([
            entry("10.96.0.1:80/TCP", "shop/a", &[]),
            entry("10.96.0.2:80/TCP", "shop/b", &[]),
            entry("10.96.0.3:80/TCP", "default/c", &[]),
        ])
    );

    // Changes to files that are not read are not changes.
    dir.write(".d.yaml", &service("d", 40));
    dir.write("f.txt", "notes");
    assert_unchanged(&mut manifests);
}

#[test]
fn invalid_edit_keeps_the_last_good_state_and_is_reported_once() {
    let dir = TempDir::new("invalid-edit");
    let mut manifests = ManifestDir::new(&dir.0);
    dir.write(
        "web.yaml",
        &format!(
            "{}---\n{}",
            web_slice(&["10.244.1.1"]),
            web("10.96.0.20", 80)
        ),
    );
    dir.write("api.yaml", &api(443));
    let good = scan_changed(&mut manifests);
    assert_eq!(good.errors, []);
    assert_eq!(
        summary(&good.state),
        BTreeMap::from([
            entry("10.96.0.20:80/TCP", "shop/web", &["10.244.1.1:8080"]),
            entry("10.96.0.30:443/TCP", "shop/api", &[]),
        ])
    );

    // The edit moves the port to SCTP and adds an endpoint: none of it may take effect.
    let broken = format!(
        "{}---\n{}      protocol: SCTP\n",
        web_slice(&["10.244.1.1", "10.244.1.2"]),
        web("10.96.0.20", 80)
    );
    dir.write("web.yaml", &broken);
    let sctp_error = error(
        &dir.file("web.yaml"),
        2,
        Some("Service shop/web"),
        Some("spec.ports[0].protocol"),
        "protocol SCTP is not supported (gannet balances TCP and UDP)",
    );
    let outcome = scan_changed(&mut manifests);
    assert_eq!(
        outcome.state, good.state,
        "the last good contents of web.yaml must stay in effect"
    );
    assert_eq!(outcome.errors, std::slice::from_ref(&sctp_error));
    assert_eq!(
        outcome.errors[0].to_string(),
        format!(
            "{}: document 2: Service shop/web: spec.ports[0].protocol: \
             protocol SCTP is not supported (gannet balances TCP and UDP)",
            dir.file("web.yaml")
        )
    );
    assert_unchanged(&mut manifests);

    // Another file changes: the outcome is the whole picture, so the error that persists is in it.
    dir.write("api.yaml", &api(8443));
    let outcome = scan_changed(&mut manifests);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([
            entry("10.96.0.20:80/TCP", "shop/web", &["10.244.1.1:8080"]),
            entry("10.96.0.30:8443/TCP", "shop/api", &[]),
        ])
    );
    assert_eq!(outcome.errors, [sctp_error]);

    // Fixed: the new contents take effect and the error is gone.
    dir.write("web.yaml", &broken.replace("SCTP", "UDP"));
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    let web_udp = &outcome.state.services[&Frontend {
        ip: ip("10.96.0.20"),
        port: 80,
        protocol: Protocol::Udp,
    }];
    // The slice's port is TCP, so the UDP frontend has no backends.
    assert_eq!(
        (web_udp.name.as_str(), web_udp.backends.as_slice()),
        ("web", &[][..])
    );
    assert_eq!(outcome.state.services.len(), 2, "{:#?}", outcome.state);
}

#[test]
fn broken_file_contributes_nothing_until_fixed_and_nothing_once_deleted() {
    let dir = TempDir::new("broken");
    let mut manifests = ManifestDir::new(&dir.0);
    dir.write(
        "web.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n namespace: shop\n",
    );
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.state, DesiredState::default());
    assert_eq!(
        outcome.errors,
        [error(
            &dir.file("web.yaml"),
            1,
            None,
            None,
            "invalid YAML: did not find expected key at line 5 column 2, \
             while parsing a block mapping"
        )]
    );

    dir.write(
        "web.yaml",
        &format!(
            "{}---\n{}",
            web("10.96.0.20", 80),
            web_slice(&["10.244.1.1"])
        ),
    );
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([entry("10.96.0.20:80/TCP", "shop/web", &["10.244.1.1:8080"])])
    );

    // Broken again, then deleted: the last good contents go with the file, and so do its errors.
    dir.write("web.yaml", "kind: Service\n");
    let outcome = scan_changed(&mut manifests);
    assert_eq!(
        outcome.errors,
        [error(
            &dir.file("web.yaml"),
            1,
            None,
            Some("apiVersion"),
            "must be set"
        )]
    );
    assert_eq!(outcome.state.services.len(), 1);
    dir.remove("web.yaml");
    assert_eq!(
        scan_changed(&mut manifests),
        ScanOutcome {
            state: DesiredState::default(),
            errors: vec![],
            nodes: BTreeMap::new(),
        }
    );
}

#[test]
fn conflicts_between_files_resolve_by_file_name() {
    let dir = TempDir::new("conflict");
    let mut manifests = ManifestDir::new(&dir.0);
    dir.write(
        "b.yaml",
        &format!(
            "{}---\n{}",
            web_slice(&["10.244.1.1"]),
            web("10.96.0.21", 80)
        ),
    );
    dir.write("a.yaml", &web("10.96.0.20", 80));
    let outcome = scan_changed(&mut manifests);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([entry("10.96.0.20:80/TCP", "shop/web", &["10.244.1.1:8080"])])
    );
    assert_eq!(
        outcome.errors,
        [ManifestError {
            file: dir.path("b.yaml"),
            document: 2,
            object: Some("Service shop/web".to_owned()),
            field: Some("metadata.name".to_owned()),
            message: format!(
                "Service shop/web is already defined in {} document 1; the first definition wins",
                dir.file("a.yaml")
            ),
        }]
    );

    dir.remove("a.yaml");
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([entry("10.96.0.21:80/TCP", "shop/web", &["10.244.1.1:8080"])])
    );
    assert_eq!(
        outcome
            .state
            .services
            .values()
            .next()
            .map(|port| port.backends.clone()),
        Some(vec![backend("10.244.1.1", 8080)])
    );
}

#[test]
fn missing_directory_is_an_io_error() {
    let dir = TempDir::new("missing");
    let mut manifests = ManifestDir::new(dir.path("absent"));
    match manifests.scan() {
        Err(error) => assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}"),
        Ok(outcome) => panic!("expected NotFound, got {outcome:#?}"),
    }
    assert!(!Path::new(&dir.path("absent")).exists());
}

#[test]
fn config_map_volume_updates_are_seen_through_symlinks() {
    // The layout the kubelet writes: web.yaml -> ..data/web.yaml, ..data -> ..<timestamp>, and an
    // update swaps ..data atomically. The new file has the same size as the old one.
    let dir = TempDir::new("configmap");
    fs::create_dir(dir.path("..2025_01_01")).expect("creating the first version");
    fs::write(dir.path("..2025_01_01/web.yaml"), web("10.96.0.20", 80)).expect("first version");
    std::os::unix::fs::symlink("..2025_01_01", dir.path("..data")).expect("linking ..data");
    std::os::unix::fs::symlink("..data/web.yaml", dir.path("web.yaml")).expect("linking web.yaml");

    let mut manifests = ManifestDir::new(&dir.0);
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([entry("10.96.0.20:80/TCP", "shop/web", &[])])
    );
    assert_unchanged(&mut manifests);

    fs::create_dir(dir.path("..2025_01_02")).expect("creating the second version");
    fs::write(dir.path("..2025_01_02/web.yaml"), web("10.96.0.21", 80)).expect("second version");
    std::os::unix::fs::symlink("..2025_01_02", dir.path("..data_tmp")).expect("linking ..data_tmp");
    fs::rename(dir.path("..data_tmp"), dir.path("..data")).expect("swapping ..data");
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.errors, []);
    assert_eq!(
        summary(&outcome.state),
        BTreeMap::from([entry("10.96.0.21:80/TCP", "shop/web", &[])])
    );
}

#[test]
fn unreadable_file_is_reported_for_the_whole_file() {
    let dir = TempDir::new("not-utf8");
    fs::write(dir.path("web.yaml"), b"kind: Service\nname: \xff\n").expect("writing bytes");
    let mut manifests = ManifestDir::new(&dir.0);
    let outcome = scan_changed(&mut manifests);
    assert_eq!(outcome.state, DesiredState::default());
    assert_eq!(
        outcome.errors,
        [error(
            &dir.file("web.yaml"),
            0,
            None,
            None,
            "not UTF-8: invalid utf-8 sequence of 1 bytes from index 20"
        )]
    );
    assert_eq!(
        outcome.errors[0].to_string(),
        format!(
            "{}: not UTF-8: invalid utf-8 sequence of 1 bytes from index 20",
            dir.file("web.yaml")
        )
    );
}

#[test]
fn node_manifests_are_read_for_the_overlay() {
    let dir = TempDir::new("nodes");
    let mut manifests = ManifestDir::new(&dir.0);
    dir.write(
        "nodes.yaml",
        "apiVersion: v1
kind: Node
metadata:
  name: n1
  annotations:
    gannet.io/vtep-mac: 0e:00:00:00:00:01
spec:
  podCIDRs: [10.244.1.0/24]
status:
  addresses:
  - type: InternalIP
    address: 10.99.0.11
---
apiVersion: v1
kind: Node
metadata:
  name: n2
spec:
  podCIDRs: [nonsense]
",
    );
    let outcome = scan_changed(&mut manifests);
    // The file holds a bad Node: the whole file is refused, naming the object and field.
    assert!(outcome.nodes.is_empty(), "{outcome:?}");
    let text = outcome
        .errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("document 2: Node n2: spec.podCIDRs[0]"),
        "{text}"
    );

    dir.write(
        "nodes.yaml",
        "apiVersion: v1
kind: Node
metadata:
  name: n1
  annotations:
    gannet.io/vtep-mac: 0e:00:00:00:00:01
spec:
  podCIDRs: [10.244.1.0/24]
status:
  addresses:
  - type: InternalIP
    address: 10.99.0.11
",
    );
    let outcome = scan_changed(&mut manifests);
    assert!(outcome.errors.is_empty(), "{outcome:?}");
    let n1 = &outcome.nodes["n1"];
    assert_eq!(n1.pod_cidrs[0].to_string(), "10.244.1.0/24");
    assert_eq!(n1.vtep_mac, Some([0x0e, 0, 0, 0, 0, 1]));
    assert_eq!(n1.internal_ips[0].to_string(), "10.99.0.11");
}
