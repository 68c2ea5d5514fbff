//! `ManifestDir`: change detection, last good contents, deletion.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{backend, error, frontend, ip, service_doc, slice_doc};
use crate::{DesiredState, Frontend, ManifestDir, ManifestError, Protocol, ScanOutcome};

/// A directory under the system temp dir, unique per process and test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("gannet-k8s-{test}-{}-{unique}", std::process::id()));
        fs::create_dir(&path)
            .unwrap_or_else(|error| panic!("creating {}: {error}", path.display()));
        Self(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The path as text, for building expected errors.
    fn file(&self, name: &str) -> String {
        let path = self.path(name);
        path.to_str()
            .unwrap_or_else(|| panic!("temp path {} is not UTF-8", path.display()))
            .to_owned()
    }

    fn write(&self, name: &str, text: &str) {
        let path = self.path(name);
        fs::write(&path, text)
            .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
    }

    fn remove(&self, name: &str) {
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
fn web(cluster_ip: &str, port: u16) -> String {
    service_doc(
        "web",
        &format!("clusterIP: {cluster_ip}\nports:\n  - name: http\n    port: {port}\n"),
    )
}

/// Service `shop/api` on 10.96.0.30 with one unnamed port.
fn api(port: u16) -> String {
    service_doc(
        "api",
        &format!("clusterIP: 10.96.0.30\nports:\n  - port: {port}\n"),
    )
}

/// `EndpointSlice` `shop/web-abc` of `shop/web`: port http is 8080, all `addresses` ready.
fn web_slice(addresses: &[&str]) -> String {
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

/// The changes of a scan that must have been joined for the Services it touches only.
fn changes_of(manifests: &mut ManifestDir) -> BTreeMap<Frontend, Option<String>> {
    let scan = manifests
        .scan_changes()
        .expect("scan")
        .expect("the scan must see a change");
    let changes = scan
        .changes
        .unwrap_or_else(|| panic!("expected the change joined alone, it was joined whole"));
    changes
        .into_iter()
        .map(|(frontend, port)| {
            let backends = port.map(|port| {
                let list: Vec<String> = port.backends.iter().map(ToString::to_string).collect();
                list.join(",")
            });
            (frontend, backends)
        })
        .collect()
}

/// Whether the scan saw a change and joined the whole directory for it.
fn joined_whole(manifests: &mut ManifestDir) -> bool {
    manifests
        .scan_changes()
        .expect("scan")
        .expect("the scan must see a change")
        .changes
        .is_none()
}

#[test]
fn a_change_is_joined_for_the_services_it_touches_and_reported_as_frontends() {
    let dir = TempDir::new("incremental");
    dir.write(
        "services.yaml",
        &format!("{}---\n{}", web("10.96.0.10", 80), api(81)),
    );
    dir.write("web-slice.yaml", &web_slice(&["10.244.0.5"]));
    let mut manifests = ManifestDir::new(&dir.0);
    assert!(
        joined_whole(&mut manifests),
        "the first scan joins everything"
    );

    let web_frontend = frontend("10.96.0.10", 80, Protocol::Tcp);
    dir.write("web-slice.yaml", &web_slice(&["10.244.0.5", "10.244.0.6"]));
    assert_eq!(
        changes_of(&mut manifests),
        BTreeMap::from([(
            web_frontend,
            Some("10.244.0.5:8080,10.244.0.6:8080".to_owned())
        )]),
        "only web's frontend changed, with both endpoints"
    );

    // Rewriting a file with the same objects changes nothing.
    dir.write(
        "web-slice.yaml",
        &format!("# again\n{}", web_slice(&["10.244.0.5", "10.244.0.6"])),
    );
    assert_eq!(changes_of(&mut manifests), BTreeMap::new());

    // A Service moved to another port: the old frontend is gone, the new one has web's backends.
    dir.write(
        "services.yaml",
        &format!("{}---\n{}", web("10.96.0.10", 8000), api(81)),
    );
    assert_eq!(
        changes_of(&mut manifests),
        BTreeMap::from([
            (web_frontend, None),
            (
                frontend("10.96.0.10", 8000, Protocol::Tcp),
                Some("10.244.0.5:8080,10.244.0.6:8080".to_owned())
            ),
        ])
    );

    // The slice's file removed: web has no backends left.
    dir.remove("web-slice.yaml");
    assert_eq!(
        changes_of(&mut manifests),
        BTreeMap::from([(
            frontend("10.96.0.10", 8000, Protocol::Tcp),
            Some(String::new())
        )])
    );

    // A file that stops parsing changes nothing and reports its errors.
    dir.write("services.yaml", "kind: [\n");
    let scan = manifests.scan_changes().expect("scan").expect("a change");
    assert_eq!(
        scan.changes,
        Some(BTreeMap::new()),
        "its last good objects stay"
    );
    assert_eq!(scan.errors.len(), 1, "{:?}", scan.errors);
    assert_eq!(scan.state.services.len(), 2);
}

#[test]
fn a_conflict_is_joined_whole_until_the_directory_has_none() {
    let dir = TempDir::new("incremental-conflict");
    dir.write("a.yaml", &web("10.96.0.10", 80));
    let mut manifests = ManifestDir::new(&dir.0);
    assert!(joined_whole(&mut manifests));
    // api on web's frontend: decided by file order, so joined whole, and api loses.
    dir.write(
        "b.yaml",
        &service_doc("api", "clusterIP: 10.96.0.10\nports:\n  - port: 80\n"),
    );
    assert!(
        joined_whole(&mut manifests),
        "a new conflict needs the whole join"
    );
    dir.write("c.yaml", &web_slice(&["10.244.0.5"]));
    assert!(
        joined_whole(&mut manifests),
        "so does any change while it lasts"
    );
    dir.remove("b.yaml");
    assert!(joined_whole(&mut manifests), "the scan that ends it too");
    dir.write("c.yaml", &web_slice(&["10.244.0.7"]));
    assert_eq!(
        changes_of(&mut manifests),
        BTreeMap::from([(
            frontend("10.96.0.10", 80, Protocol::Tcp),
            Some("10.244.0.7:8080".to_owned())
        )])
    );
    // A second definition of a slice name is a conflict too.
    dir.write("d.yaml", &web_slice(&["10.244.0.8"]));
    assert!(joined_whole(&mut manifests));
}

/// Many changes of every kind, each scan's state and errors compared with a fresh whole join of
/// the same directory.
#[test]
fn changes_joined_alone_give_what_a_whole_join_gives() {
    let dir = TempDir::new("incremental-equal");
    let mut manifests = ManifestDir::new(&dir.0);
    let mut reference = ManifestDir::new(&dir.0);
    // A small generator (no dependency): the same sequence on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    let files = ["a.yaml", "b.yaml", "c.yaml", "d.yaml"];
    let mut incremental = 0;
    for round in 0..120 {
        let file = files[usize::try_from(next(4)).expect("small")];
        let service = next(5);
        let text = match next(7) {
            0 => String::new(),
            1 => "kind: [\n".to_owned(),
            2 | 3 => {
                // A slice of service `service`, sometimes named like another file's.
                let endpoints: String = (0..next(4))
                    .map(|e| format!("  - addresses: [\"10.244.{service}.{e}\"]\n    conditions: {{ready: {}}}\n", next(3) > 0))
                    .collect();
                slice_doc(
                    &format!("s{service}-{}", next(2)),
                    &format!("svc{service}"),
                    &format!(
                        "addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n{endpoints}"
                    ),
                )
            }
            kind => {
                // Service `service`, sometimes on another one's address, sometimes with a node
                // port another one may hold too.
                let ip = if kind == 4 { next(5) } else { service };
                let node_port = if next(3) == 0 {
                    format!(
                        "\ntype: NodePort\nports:\n  - name: http\n    port: 80\n    nodePort: {}\n",
                        30_000 + next(3)
                    )
                } else {
                    "\nports:\n  - name: http\n    port: 80\n".to_owned()
                };
                service_doc(
                    &format!("svc{service}"),
                    &format!("clusterIP: 10.96.0.{}{node_port}", 10 + ip),
                )
            }
        };
        dir.write(file, &text);
        let Some(scan) = manifests.scan_changes().expect("scan") else {
            continue;
        };
        incremental += usize::from(scan.changes.is_some());
        let (state, errors) = (scan.state.clone(), scan.errors);
        // The same directory seen through the same scans (so with the same last good contents
        // of broken files), joined whole each time.
        reference.forget_join();
        let whole = reference
            .scan()
            .expect("scan")
            .expect("the reference sees the same change");
        assert_eq!(
            state, whole.state,
            "round {round}: state differs from a whole join"
        );
        assert_eq!(
            errors, whole.errors,
            "round {round}: errors differ from a whole join"
        );
    }
    assert!(
        incremental > 20,
        "only {incremental} changes were joined alone"
    );
}

/// Measurement, not a check: how long a scan takes that finds one small file changed beside a
/// file of 10 000 services × 10 endpoints (`cargo test -p gannet-k8s --release -- --ignored
/// --nocapture one_changed_file_beside_10000_services`).
#[test]
#[ignore = "measurement"]
fn one_changed_file_beside_10000_services() {
    use std::fmt::Write as _;
    use std::time::Instant;
    let dir = TempDir::new("scan-cost");
    let mut big = String::new();
    for i in 0..10_000_u32 {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let _ = write!(
            big,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80, targetPort: 8080}}]}}\n"
        );
        if i > 0 {
            let _ = write!(
                big,
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s{i}-1, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
            );
            for j in 0..10 {
                let _ = writeln!(
                    big,
                    "  - addresses: [\"10.{}.{}.{j}\"]\n    conditions: {{ready: true}}",
                    100 + i / 250,
                    i % 250
                );
            }
        }
    }
    dir.write("services.yaml", &big);
    let mut manifests = ManifestDir::new(&dir.0);
    let started = Instant::now();
    manifests.scan().expect("first scan").expect("an outcome");
    println!("first scan: {:?}", started.elapsed());
    for round in 0..5 {
        let slice = format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: s0-1, namespace: default, labels: {{kubernetes.io/service-name: s0}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\n\
             endpoints: [{{addresses: [\"10.99.0.{round}\"], conditions: {{ready: true}}}}]\n"
        );
        dir.write("s0.yaml", &slice);
        let started = Instant::now();
        let scan = manifests.scan_changes().expect("scan").expect("an outcome");
        let changed = scan.changes.as_ref().map(BTreeMap::len);
        println!(
            "scan after one change: {:?} ({} frontends, {changed:?} changed)",
            started.elapsed(),
            scan.state.services.len()
        );
    }
}
