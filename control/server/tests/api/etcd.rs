//! Two gannet-control replicas on one real etcd.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_etcd() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd");
    let store = |_: ()| -> Arc<dyn Store> {
        Arc::new(EtcdStore::new(&etcd.endpoints(), "/gannet/").expect("store"))
    };
    let a = Plane::start(store(()), test_options()).await;
    let b = Plane::start(store(()), test_options()).await;
    let mut client_a = a.client().await;
    let mut client_b = b.client().await;
    let mut watch = client_b
        .watch(Kind::Service, None, 0)
        .await
        .expect("watch on B");
    let applied = client_a
        .apply(&[object(WEB)], false)
        .await
        .expect("apply on A");
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("B's watcher sees A's write within 10s")
        .expect("ok")
        .expect("open");
    assert_eq!(event.object, applied.objects[0].0);
    // Both replicas run the endpoints controller; they converge on one slice.
    client_b
        .apply(&[pod("web-1", Some("10.244.1.5"), true, 8080)], false)
        .await
        .expect("apply on B");
    eventually(
        "the slice, through either replica",
        Duration::from_secs(10),
        || {
            let mut client = client_a.clone();
            async move {
                let found = slices(&mut client, "shop").await;
                (found.len() == 1 && found[0].endpoints.len() == 1).then_some(())
            }
        },
    )
    .await;
    // And a second Service's IP cannot collide with the first's, whichever replica allocates.
    let mut api = object(WEB);
    api.metadata_mut().name = Some("api".to_owned());
    let second = client_b.apply(&[api], false).await.expect("apply on B");
    assert_ne!(
        service(&second.objects[0].0)
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone()),
        service(&applied.objects[0].0)
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
    );
}
