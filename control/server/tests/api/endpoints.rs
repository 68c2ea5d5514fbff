//! The endpoints controller following pods into EndpointSlices.

use super::*;

#[tokio::test]
async fn endpoints_controller_follows_pods() {
    let (store, _dir) = embedded();
    let mut options = test_options();
    options.lifecycle.period = Duration::from_millis(100);
    let plane = Plane::start(store, options).await;
    let mut client = plane.client().await;
    let timeout = Duration::from_secs(10);
    client
        .apply(
            &[
                object(WEB),
                pod("web-1", Some("10.244.1.5"), true, 8080),
                pod("web-2", Some("10.244.1.6"), false, 8081),
                pod("web-3", None, true, 8080),
            ],
            false,
        )
        .await
        .expect("apply");

    // Named target ports resolve per pod: two port sets, two slices.
    let found = eventually("two slices for web", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            (found.len() == 2).then_some(found)
        }
    })
    .await;
    let summary: Vec<SliceSummary> = found
        .iter()
        .map(|s| {
            (
                s.metadata.name.clone().unwrap_or_default(),
                s.endpoints
                    .iter()
                    .map(|e| {
                        let c = e.conditions.clone().unwrap_or_default();
                        (
                            e.addresses[0].clone(),
                            c.ready.unwrap_or_default(),
                            c.serving.unwrap_or_default(),
                            c.terminating.unwrap_or_default(),
                        )
                    })
                    .collect(),
                s.ports.iter().flatten().filter_map(|p| p.port).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "web-ipv4".to_owned(),
                vec![("10.244.1.5".to_owned(), true, true, false)],
                vec![8080, 9090]
            ),
            (
                "web-ipv4-1".to_owned(),
                vec![("10.244.1.6".to_owned(), false, false, false)],
                vec![8081, 9090]
            ),
        ]
    );
    let labels = found[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/service-name").map(String::as_str),
        Some("web")
    );

    // web-2 turns ready (an agent reports its status): the controller follows.
    let ready = pod("web-2", Some("10.244.1.6"), true, 8081);
    client.update_status(&ready).await.expect("status");
    eventually("web-2 ready", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            found
                .iter()
                .any(|s| {
                    s.endpoints.iter().any(|e| {
                        e.addresses[0] == "10.244.1.6"
                            && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                    })
                })
                .then_some(())
        }
    })
    .await;

    // Graceful delete: terminating (serving, not ready), then gone after the grace period.
    let terminating = client
        .delete(
            Kind::Pod,
            "shop",
            "web-1",
            &DeleteOptions {
                resource_version: None,
                grace_period_seconds: Some(1),
            },
        )
        .await
        .expect("delete");
    assert!(terminating.metadata().deletion_timestamp.is_some());
    eventually("web-1 terminating", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            found
                .iter()
                .any(|s| {
                    s.endpoints.iter().any(|e| {
                        e.addresses[0] == "10.244.1.5"
                            && e.conditions.as_ref().is_some_and(|c| {
                                c.ready == Some(false)
                                    && c.serving == Some(true)
                                    && c.terminating == Some(true)
                            })
                    })
                })
                .then_some(())
        }
    })
    .await;
    eventually("web-1 removed", timeout, || {
        let mut client = client.clone();
        async move {
            let found = slices(&mut client, "shop").await;
            (found.len() == 1
                && found[0].endpoints.len() == 1
                && found[0].endpoints[0].addresses[0] == "10.244.1.6")
                .then_some(())
        }
    })
    .await;

    // A service without a selector keeps the user's slice; deleting web removes its slices.
    let manual = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {ports: [{port: 5432}]}\n",
    );
    let manual_slice = object(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nendpoints: [{addresses: [192.0.2.1]}]\nports: [{port: 5432}]\n",
    );
    client
        .apply(&[manual, manual_slice], false)
        .await
        .expect("apply");
    client
        .delete(Kind::Service, "shop", "web", &DeleteOptions::default())
        .await
        .expect("delete");
    eventually("only the user's slice left", timeout, || {
        let mut client = client.clone();
        async move {
            let names: Vec<String> = slices(&mut client, "shop")
                .await
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect();
            (names == ["db-1"]).then_some(())
        }
    })
    .await;
}
