//! Watches: a shutdown ends them, a compacted or unreached revision is expired, `ListWatch` relists.

use super::*;

/// SIGTERM with agents watching: the open watch streams end at once with UNAVAILABLE (the
/// agents watch again from their last revision, at the next instance), so the shutdown does not
/// wait for its drain timeout.
#[tokio::test]
async fn shutdown_ends_open_watches_instead_of_waiting_for_the_drain() {
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let revision = client
        .apply(&[object(WEB)], false)
        .await
        .expect("apply")
        .revision;
    let mut watch = client
        .watch(Kind::Service, None, revision)
        .await
        .expect("watch");
    let Plane {
        plane: server,
        dir: _dir,
        ..
    } = plane;
    // A drain far longer than the test's patience: only ending the watch lets this return.
    tokio::time::timeout(
        Duration::from_secs(60),
        server.shutdown(Duration::from_secs(3600)),
    )
    .await
    .expect("the shutdown must not wait for the open watch");
    match watch.next().await {
        Err(error) => assert!(
            error.to_string().contains("shutting down"),
            "the watcher is told why: {error}"
        ),
        other => panic!("expected the watch to end with an error, got {other:?}"),
    }
}

#[tokio::test]
async fn compacted_watch_is_expired_and_list_watch_relists() {
    let (store, _dir) = embedded();
    let plane = Plane::start(Arc::clone(&store), test_options()).await;
    let mut client = plane.client().await;
    let r1 = client
        .apply(&[object(WEB)], false)
        .await
        .expect("apply")
        .revision;
    let mut api = object(WEB);
    api.metadata_mut().name = Some("api".to_owned());
    let r2 = client.apply(&[api], false).await.expect("apply").revision;
    store.compact(r2).await.expect("compact");

    match client.watch(Kind::Service, None, r1).await {
        Err(ClientError::Expired(message)) => assert!(message.contains("compacted"), "{message}"),
        other => panic!("expected an expired watch, got {other:?}"),
    }
    let mut watcher = ListWatch::resume(Kind::Service, None, r1);
    match watcher.next(&mut client).await.expect("relist") {
        Change::Synced { objects, revision } => {
            assert_eq!(objects.len(), 2);
            assert!(revision >= r2);
        }
        other => panic!("expected a relist, got {other:?}"),
    }
    client
        .delete(Kind::Service, "shop", "web", &DeleteOptions::default())
        .await
        .expect("delete");
    match watcher.next(&mut client).await.expect("event") {
        Change::Deleted { object, .. } => assert_eq!(object.name(), "web"),
        other => panic!("expected the delete, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_from_a_revision_the_store_never_reached_is_expired() {
    // As after the control plane's data was replaced: a client resumes from its old revision.
    let (store, _dir) = embedded();
    let plane = Plane::start(store, test_options()).await;
    let mut client = plane.client().await;
    let revision = client
        .apply(&[object(WEB)], false)
        .await
        .expect("apply")
        .revision;
    match client.watch(Kind::Service, None, revision + 1000).await {
        Err(ClientError::Expired(message)) => assert!(message.contains("ahead"), "{message}"),
        other => panic!("expected an expired watch, got {other:?}"),
    }
    let mut watcher = ListWatch::resume(Kind::Service, None, revision + 1000);
    match watcher.next(&mut client).await.expect("relist") {
        Change::Synced { objects, .. } => assert_eq!(objects.len(), 1),
        other => panic!("expected a relist, got {other:?}"),
    }
}
