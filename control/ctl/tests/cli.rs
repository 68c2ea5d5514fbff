//! gannetctl as users run it: the real binary against a control plane on a unix socket in a
//! per-test directory.

#![expect(
    unused_crate_dependencies,
    reason = "a test binary links every dependency of the package"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gannet_control::server::{self, ControlPlane, Listen, Options};
use gannet_control::store::EmbeddedStore;

const GANNETCTL: &str = env!("CARGO_BIN_EXE_gannetctl");

const SHOP: &str = "# from the Kubernetes documentation, unchanged apart from names
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app.kubernetes.io/name: web
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: http-web-svc
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  labels:
    app.kubernetes.io/name: web
spec:
  nodeName: node-1
  containers:
  - name: nginx
    image: nginx:stable
    ports:
      - containerPort: 80
        name: http-web-svc
status:
  phase: Running
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}]
  conditions: [{type: Ready, status: \"True\"}]
";

const SLICE_JSON: &str = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
 "metadata":{"name":"db-1","labels":{"kubernetes.io/service-name":"db"}},
 "addressType":"IPv4","ports":[{"name":"","port":5432,"protocol":"TCP"}],
 "endpoints":[{"addresses":["192.0.2.7"],"conditions":{"ready":true}}]}"#;

struct Fixture {
    _plane: ControlPlane,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("control.redb")).expect("store");
    let socket = dir.path().join("control.sock");
    let options = Options {
        listen: vec![Listen::Unix(socket.clone())],
        compaction: None,
        ..Options::default()
    };
    let plane = server::start(Arc::new(store), options)
        .await
        .expect("control plane");
    Fixture {
        _plane: plane,
        socket,
        dir,
    }
}

impl Fixture {
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(GANNETCTL);
        command
            .arg("--server")
            .arg(format!("unix:{}", self.socket.display()))
            .args(args)
            .env_remove("GANNET_SERVER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let stdin = stdin.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().expect("starting gannetctl");
            let mut pipe = child.stdin.take().expect("stdin");
            if let Some(text) = stdin {
                pipe.write_all(text.as_bytes()).expect("writing stdin");
            }
            drop(pipe);
            child.wait_with_output().expect("gannetctl output")
        })
        .await
        .expect("join")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("writing a manifest");
        path
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "gannetctl failed ({}): stdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_and_delete_like_kubectl() {
    let fixture = start().await;
    let manifests = fixture.dir.path().join("manifests");
    fixture.write("manifests/shop.yaml", SHOP);
    fixture.write("manifests/slice.json", SLICE_JSON);
    fixture.write("manifests/README.md", "not a manifest");
    let applied = ok(&fixture.run(&["apply", "-f", path(&manifests)], None).await);
    assert_eq!(
        applied,
        "service/web created\npod/web-1 created\nendpointslice.discovery.k8s.io/db-1 created\n"
    );
    let again = ok(&fixture.run(&["apply", "-f", path(&manifests)], None).await);
    assert!(again.contains("service/web unchanged"), "{again}");

    let table = ok(&fixture.run(&["get", "svc"], None).await);
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[3], row[4]),
        ("web", "ClusterIP", "<none>", "80/TCP"),
        "{table}"
    );
    assert!(row[2].starts_with("10."), "{table}");

    let yaml = ok(&fixture
        .run(&["get", "service", "web", "-o", "yaml"], None)
        .await);
    let value: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("YAML output");
    assert_eq!(value["kind"], "Service");
    assert_eq!(value["spec"]["clusterIP"].as_str(), Some(row[2]));

    let pods = ok(&fixture.run(&["get", "pods", "-o", "wide"], None).await);
    assert!(
        pods.contains("web-1")
            && pods.contains("1/1")
            && pods.contains("10.244.1.5")
            && pods.contains("node-1"),
        "{pods}"
    );

    // The endpoints controller has made the slice, with the named port resolved.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let slices = ok(&fixture.run(&["get", "eps"], None).await);
        if slices
            .lines()
            .any(|l| l.starts_with("web-ipv4") && l.contains("80") && l.contains("10.244.1.5"))
        {
            assert!(
                slices
                    .lines()
                    .any(|l| l.starts_with("db-1") && l.contains("192.0.2.7")),
                "{slices}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slice for web after 10s:\n{slices}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let json = ok(&fixture
        .run(&["get", "pods", "-A", "-o", "json"], None)
        .await);
    let list: serde_json::Value = serde_json::from_str(&json).expect("JSON output");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["metadata"]["name"], "web-1");

    let deleted = ok(&fixture.run(&["delete", "service", "web"], None).await);
    assert_eq!(deleted, "service \"web\" deleted\n");
    let missing = fixture.run(&["delete", "service", "web"], None).await;
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("not found"),
        "{}",
        text(&missing.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_apply_nothing_and_name_file_document_and_field() {
    let fixture = start().await;
    let file = fixture.write(
        "bad.yaml",
        &format!(
            "{SHOP}---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
---
apiVersion: v1
kind: Service
metadata: {{name: broken}}
spec:
  ports: [{{port: 80, protocol: SCTP}}]
"
        ),
    );
    let output = fixture.run(&["apply", "-f", path(&file)], None).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let file = file.display();
    assert!(
        stderr.contains(&format!("{file}: document 3: Deployment web: kind Deployment (apps/v1) is not served by gannet-control")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{file}: document 4: Service default/broken: spec.ports[0].protocol: protocol SCTP is not supported")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing applied"), "{stderr}");

    // A problem only the server can find (the address is outside the service CIDR) also names
    // the file and document, and applies nothing.
    let outside = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: 192.168.1.1, ports: [{port: 80}]}\n";
    let output = fixture.run(&["apply", "-f", "-"], Some(outside)).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("<stdin>: document 2: Service default/x: spec.clusterIP: 192.168.1.1 is not a usable address of the service CIDR 10.96.0.0/12"),
        "{stderr}"
    );
    let pods = fixture.run(&["get", "pods"], None).await;
    assert_eq!(text(&pods.stdout), "", "the pod of the failed apply exists");
    assert!(
        text(&pods.stderr).contains("No resources found"),
        "{}",
        text(&pods.stderr)
    );

    let usage = fixture.run(&["get", "deployments"], None).await;
    assert_eq!(usage.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes() {
    let fixture = start().await;
    let mut command = Command::new(GANNETCTL);
    command
        .arg("--server")
        .arg(format!("unix:{}", fixture.socket.display()))
        .args(["get", "svc", "-w"]);
    let mut watcher = gannet_testkit::spawn(command, None, None).expect("gannetctl get -w");
    let header =
        tokio::task::block_in_place(|| watcher.read_line(Duration::from_secs(10))).expect("header");
    assert!(header.starts_with("NAME"), "{header}");
    let applied = fixture.run(&["apply", "-f", "-"], Some(SHOP)).await;
    ok(&applied);
    let line =
        tokio::task::block_in_place(|| watcher.wait_for_line("web", Duration::from_secs(10)))
            .expect("a row for web");
    assert!(line.contains("ClusterIP"), "{line}");
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("nobody.sock");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(GANNETCTL)
            .arg("--server")
            .arg(format!("unix:{}", socket.display()))
            .args(["get", "nodes"])
            .output()
            .expect("gannetctl")
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cannot connect to unix:"), "{stderr}");
    let cause = "No such file or directory (os error 2)";
    assert_eq!(
        stderr.matches(cause).count(),
        1,
        "each cause once: {stderr}"
    );
    assert_eq!(
        stderr.matches("transport error").count(),
        0,
        "no uninformative layers: {stderr}"
    );
    assert!(
        stderr.contains("is gannet-control running")
            && stderr.contains("--server or GANNET_SERVER"),
        "a hint a person can act on: {stderr}"
    );

    // A TCP address that nobody serves: the same, once.
    let output = tokio::task::spawn_blocking(|| {
        Command::new(GANNETCTL)
            .args(["--server", "http://127.0.0.1:1", "get", "nodes"])
            .env_remove("GANNET_SERVER")
            .output()
            .expect("gannetctl")
    })
    .await
    .expect("join");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.matches("tcp connect error").count(),
        1,
        "each cause once: {stderr}"
    );
    assert!(stderr.contains("is gannet-control running"), "{stderr}");
}

#[tokio::test]
async fn the_server_comes_from_gannet_server_too_and_missing_objects_are_named_once() {
    let fixture = start().await;
    let socket = format!("unix:{}", fixture.socket.display());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(GANNETCTL)
            .env("GANNET_SERVER", socket)
            .args(["get", "service", "missing"])
            .output()
            .expect("gannetctl")
    })
    .await
    .expect("join");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "gannetctl: Service default/missing not found",
        "found the server through GANNET_SERVER, and says `not found` once"
    );
}

/// kubectl's habits: several kinds at once (`svc,po`, `all`, names prefixed with their kind),
/// several names, label selectors, `delete -f` with the manifests that created the objects,
/// `--ignore-not-found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_kinds_selectors_and_delete_by_manifest() {
    let fixture = start().await;
    let shop = fixture.write("shop.yaml", SHOP);
    let other = fixture.write(
        "other.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: db-1, labels: {app.kubernetes.io/name: db}}\n\
         spec: {containers: [{name: pg, image: postgres}]}\n",
    );
    ok(&fixture
        .run(&["apply", "-f", path(&shop), "-f", path(&other)], None)
        .await);

    let both = ok(&fixture.run(&["get", "svc,po"], None).await);
    let names: Vec<&str> = both
        .lines()
        .filter(|l| !l.starts_with("NAME") && !l.is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["service/web", "pod/db-1", "pod/web-1"], "{both}");
    let all = ok(&fixture.run(&["get", "all"], None).await);
    assert!(
        all.contains("pod/web-1") && all.contains("service/web"),
        "{all}"
    );

    let selected = ok(&fixture
        .run(&["get", "pods", "-l", "app.kubernetes.io/name=web"], None)
        .await);
    assert!(
        selected.contains("web-1") && !selected.contains("db-1"),
        "{selected}"
    );
    let not_web = ok(&fixture
        .run(
            &[
                "get",
                "po",
                "-l",
                "app.kubernetes.io/name!=web",
                "-o",
                "json",
            ],
            None,
        )
        .await);
    let list: serde_json::Value = serde_json::from_str(&not_web).expect("JSON");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{not_web}");
    assert_eq!(list["items"][0]["metadata"]["name"], "db-1");
    // describe: a Service with its endpoints (once the endpoints controller made its slice).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let described = ok(&fixture.run(&["describe", "svc", "web"], None).await);
        let line = |key: &str| {
            described
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(line("Name:").ends_with("web"), "{described}");
        assert!(
            line("Selector:").ends_with("app.kubernetes.io/name=web"),
            "{described}"
        );
        assert!(
            line("TargetPort:").ends_with("http-web-svc/TCP"),
            "{described}"
        );
        if line("Endpoints:").ends_with("10.244.1.5:80") {
            // What happened, oldest first: the Service made, then its slice, which the
            // endpoints controller last changed to hold the ready pod.
            let events: Vec<String> = described
                .lines()
                .skip_while(|l| !l.starts_with("Events:"))
                .skip(2)
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                .collect();
            assert_eq!(
                events.first().map(String::as_str),
                Some("created"),
                "{described}"
            );
            assert!(
                events.iter().any(|e| e.starts_with("EndpointSlice web-")
                    && e.ends_with("last changed; now 1 ready")),
                "{described}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no endpoints after 10s:\n{described}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pod = ok(&fixture.run(&["describe", "po", "web-1"], None).await);
    assert!(
        pod.lines()
            .any(|l| l.starts_with("Node:") && l.ends_with("node-1")),
        "{pod}"
    );
    assert!(
        pod.lines()
            .skip_while(|l| !l.starts_with("Events:"))
            .any(|l| l.trim_end().ends_with("created")),
        "the pod's creation as an event:\n{pod}"
    );
    let two = ok(&fixture.run(&["get", "pods", "web-1", "db-1"], None).await);
    assert_eq!(two.lines().count(), 3, "a header and two pods: {two}");
    let bad = fixture.run(&["get", "pods", "-l", "=x"], None).await;
    assert_eq!(bad.status.code(), Some(64), "{}", text(&bad.stderr));
    assert!(text(&bad.stderr).contains("-l"), "{}", text(&bad.stderr));

    let deleted = ok(&fixture.run(&["delete", "-f", path(&shop)], None).await);
    assert_eq!(
        deleted, "service \"web\" deleted\npod \"web-1\" deleted\n",
        "delete -f removes what the manifest names"
    );
    let again = fixture.run(&["delete", "-f", path(&shop)], None).await;
    assert!(!again.status.success(), "already gone: an error");
    ok(&fixture
        .run(&["delete", "-f", path(&shop), "--ignore-not-found"], None)
        .await);
    let by_label = ok(&fixture
        .run(&["delete", "pods", "-l", "app.kubernetes.io/name=db"], None)
        .await);
    assert_eq!(by_label, "pod \"db-1\" deleted\n");
}
