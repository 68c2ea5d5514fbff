//! `ManifestDir::scan_changes`: a change joined for the Services it touches, checked against
//! whole joins.

use std::collections::BTreeMap;

use super::dir::{TempDir, api, web, web_slice};
use super::{frontend, service_doc, slice_doc};
use crate::{Frontend, ManifestDir, Protocol};

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
