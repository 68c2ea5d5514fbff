//! `NodeProxy` end to end over gannet-control's unix socket: an administrator's `Logs` and
//! `ImportImage` reach the node's gannetd through its `Attach` stream and a `Serve` session. The
//! node's side here is the same client calls gannetd makes (`connect_node`, `serve_session`),
//! answering as a test wants; gannetd's own answers (real log files, a real containerd) are tested
//! in the kubelet tests.

#![expect(
    unused_crate_dependencies,
    reason = "a test binary links every dependency of the package"
)]

mod common;

use std::time::Duration;

use common::{Plane, embedded, object, scrape, test_options};
use gannet_api::{Client, ClientError, pb};

const TIMEOUT: Duration = Duration::from_secs(20);

fn pod(name: &str, node: Option<&str>) -> gannet_api::Object {
    let node = node.map_or(String::new(), |n| format!("\n  nodeName: {n}"));
    object(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:{node}\n  containers:\n  \
         - {{name: app, image: busybox}}\n"
    ))
}

fn logs_request(pod: &str, container: &str) -> pb::LogsRequest {
    pb::LogsRequest {
        namespace: "default".to_owned(),
        pod: pod.to_owned(),
        container: container.to_owned(),
        ..pb::LogsRequest::default()
    }
}

/// Reads a logs stream to its end.
async fn read_all(client: &mut Client, request: pb::LogsRequest) -> Result<Vec<u8>, ClientError> {
    let mut stream = client.logs(request).await?;
    let mut all = Vec::new();
    while let Some(chunk) = stream.message().await? {
        all.extend(chunk.data);
    }
    Ok(all)
}

/// The next call for an attached node.
async fn next_call(calls: &mut tonic::Streaming<pb::NodeCall>) -> pb::NodeCall {
    tokio::time::timeout(TIMEOUT, calls.message())
        .await
        .expect("a call within the timeout")
        .expect("the attach stream")
        .expect("a call, not the end")
}

#[tokio::test]
async fn logs_reach_the_pods_node_and_come_back_whole() {
    let (store, _dir) = embedded();
    let mut options = test_options();
    options.metrics_address = Some("127.0.0.1:0".parse().expect("addr"));
    let plane = Plane::start(store, options).await;
    let metrics = plane.plane.metrics_address().expect("metrics are served");
    let attached = move || async move {
        let text = tokio::task::spawn_blocking(move || scrape(metrics))
            .await
            .expect("scrape");
        text.lines()
            .find_map(|l| l.strip_prefix("gannet_control_attached_nodes "))
            .map(str::to_owned)
    };
    let mut admin = plane.client().await;
    admin
        .apply(&[pod("web", Some("n1")), pod("loose", None)], false)
        .await
        .expect("apply");
    let uid = match admin.get(gannet_api::Kind::Pod, "default", "web").await {
        Ok(gannet_api::Object::Pod(pod)) => pod.metadata.uid.expect("a uid"),
        other => panic!("{other:?}"),
    };

    // Nobody attached for n1 yet.
    let error = read_all(&mut admin, logs_request("web", "app"))
        .await
        .expect_err("no node attached");
    assert!(
        matches!(&error, ClientError::Unavailable(m) if m.contains("n1") && m.contains("not connected")),
        "{error}"
    );
    // Refused before any node is asked.
    let error = read_all(&mut admin, logs_request("loose", "app"))
        .await
        .expect_err("not bound");
    assert!(error.to_string().contains("not bound to a node"), "{error}");
    let error = read_all(&mut admin, logs_request("web", "nope"))
        .await
        .expect_err("no such container");
    assert!(
        matches!(&error, ClientError::NotFound(m) if m.contains("\"nope\"")),
        "{error}"
    );

    assert_eq!(attached().await.as_deref(), Some("0"));
    let mut node = plane.client().await;
    let mut calls = node.connect_node("n1").await.expect("attach");
    assert_eq!(
        attached().await.as_deref(),
        Some("1"),
        "the attached node is counted"
    );
    let node_side = tokio::spawn(async move {
        let call = next_call(&mut calls).await;
        let Some(pb::node_call::Call::Logs(request)) = call.call else {
            panic!("a logs call: {call:?}");
        };
        let mut session = node
            .serve_session(call.session)
            .await
            .expect("open the session");
        for data in [&b"t1 stdout F one\n"[..], b"t2 stdout F two\n"] {
            session
                .output
                .send(pb::SessionOutput {
                    session: 0,
                    output: Some(pb::session_output::Output::Data(data.to_vec())),
                })
                .await
                .expect("send");
        }
        // As gannetd does: end the output, then wait for gannet-control to end the session.
        drop(session.output);
        while let Ok(Some(_)) = session.input.message().await {}
        (request, calls)
    });
    let got = tokio::time::timeout(TIMEOUT, read_all(&mut admin, logs_request("web", "app")))
        .await
        .expect("within the timeout")
        .expect("logs");
    assert_eq!(got, b"t1 stdout F one\nt2 stdout F two\n");
    let (request, mut calls) = node_side.await.expect("node side");
    assert_eq!(request.uid, uid, "gannet-control names the pod's uid");
    assert_eq!(request.container, "app");

    // A node's failure reaches the administrator with the node's name.
    let mut node = plane.client().await;
    let failing = tokio::spawn(async move {
        let call = next_call(&mut calls).await;
        let mut session = node.serve_session(call.session).await.expect("session");
        session
            .output
            .send(pb::SessionOutput {
                session: 0,
                output: Some(pb::session_output::Output::Failure(pb::Failure {
                    code: tonic::Code::NotFound.into(),
                    message: "no log at /x/0.log".to_owned(),
                })),
            })
            .await
            .expect("send");
        drop(session.output);
        while let Ok(Some(_)) = session.input.message().await {}
        calls
    });
    let error = read_all(&mut admin, logs_request("web", "app"))
        .await
        .expect_err("the node failed");
    assert!(
        matches!(&error, ClientError::NotFound(m) if m.contains("n1") && m.contains("no log at /x/0.log")),
        "{error}"
    );
    // The node goes away: it is no longer reachable.
    drop(failing.await.expect("node side"));
    common::eventually("the node to be detached", TIMEOUT, || {
        let mut admin = admin.clone();
        async move {
            match read_all(&mut admin, logs_request("web", "app")).await {
                Err(ClientError::Unavailable(m)) if m.contains("not connected") => Some(()),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(attached().await.as_deref(), Some("0"), "the node left");
}

#[tokio::test]
async fn an_image_archive_reaches_the_node_whole() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut admin = plane.client().await;
    let mut node = plane.client().await;
    let mut calls = node.connect_node("n2").await.expect("attach");
    let archive: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let node_side = tokio::spawn(async move {
        let call = next_call(&mut calls).await;
        let Some(pb::node_call::Call::ImportImage(import)) = call.call else {
            panic!("an import call: {call:?}");
        };
        let mut session = node.serve_session(call.session).await.expect("session");
        let mut received = Vec::new();
        while let Some(chunk) = session.input.message().await.expect("the input") {
            received.extend(chunk.data);
        }
        session
            .output
            .send(pb::SessionOutput {
                session: 0,
                output: Some(pb::session_output::Output::Imported(
                    pb::ImportImageResponse {
                        images: vec!["gannet.test/x:1".to_owned()],
                    },
                )),
            })
            .await
            .expect("send");
        drop(session.output);
        while let Ok(Some(_)) = session.input.message().await {}
        (import, received)
    });
    let chunks: Vec<Vec<u8>> = archive
        .chunks(gannet_api::IMAGE_CHUNK)
        .map(<[u8]>::to_vec)
        .collect();
    let images = tokio::time::timeout(
        TIMEOUT,
        admin.import_image(
            "n2",
            "x.tar",
            archive.len() as u64,
            tokio_stream::iter(chunks),
        ),
    )
    .await
    .expect("within the timeout")
    .expect("import");
    assert_eq!(images, ["gannet.test/x:1"]);
    let (import, received) = node_side.await.expect("node side");
    assert_eq!(import.file_name, "x.tar");
    assert_eq!(import.size, archive.len() as u64);
    assert!(received == archive, "the archive arrived changed");

    let error = admin
        .import_image("n3", "x.tar", 1, tokio_stream::iter(vec![vec![0u8]]))
        .await
        .expect_err("n3 is not attached");
    assert!(
        matches!(&error, ClientError::Unavailable(m) if m.contains("n3")),
        "{error}"
    );
}

/// SIGTERM with a node attached: its stream ends at once (the node attaches again to the next
/// instance), so the shutdown does not wait for its drain timeout.
#[tokio::test]
async fn shutdown_ends_attached_nodes_streams() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut node = plane.client().await;
    let mut calls = node.connect_node("n4").await.expect("attach");
    let Plane {
        plane: server,
        dir: _dir,
        ..
    } = plane;
    tokio::time::timeout(
        Duration::from_secs(60),
        server.shutdown(Duration::from_secs(3600)),
    )
    .await
    .expect("the shutdown must not wait for the attached node");
    match calls.message().await {
        Err(status) => assert!(status.message().contains("shutting down"), "{status}"),
        other => panic!("expected the stream to end with an error, got {other:?}"),
    }
}
