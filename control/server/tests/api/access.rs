//! Who may call what over TLS: a client certificate (agents) or the token (administrators).

use super::*;

#[tokio::test]
async fn tls_needs_a_client_certificate_or_the_token() {
    let (store, _dir) = embedded();
    let pki = tempfile::tempdir().expect("temporary directory");
    gannet_control::certs::generate(
        pki.path(),
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
        false,
    )
    .expect("certs");
    let read = |name: &str| std::fs::read(pki.path().join(name)).expect("certificate file");
    let token = String::from_utf8(read("token"))
        .expect("utf-8")
        .trim()
        .to_owned();
    let mut options = test_options();
    options
        .listen
        .push(Listen::Tcp("127.0.0.1:0".parse().expect("addr")));
    options.tls = Some(TlsMaterial {
        cert_pem: read("server.pem"),
        key_pem: read("server-key.pem"),
        client_ca_pem: read("ca.pem"),
        token: Some(token.clone()),
    });
    options.metrics_address = Some("127.0.0.1:0".parse().expect("addr"));
    let plane = Plane::start(store, options).await;
    let port = plane
        .plane
        .bound()
        .iter()
        .find_map(|b| match b {
            Bound::Tls(addr) => Some(addr.port()),
            _ => None,
        })
        .expect("a TLS listener");
    let server = ServerAddr::Https {
        host: "127.0.0.1".to_owned(),
        port,
    };
    let base = Credentials {
        ca_pem: Some(read("ca.pem")),
        ..Credentials::default()
    };

    let mut admin = Client::connect(
        &server,
        &Credentials {
            token: Some(token),
            ..base.clone()
        },
    )
    .await
    .expect("connect");
    admin
        .apply(&[object(WEB)], false)
        .await
        .expect("the token may apply");

    let mut agent = Client::connect(
        &server,
        &Credentials {
            identity: Some((read("agent.pem"), read("agent-key.pem"))),
            ..base.clone()
        },
    )
    .await
    .expect("connect with a client certificate");
    assert_eq!(
        agent
            .list(Kind::Service, None)
            .await
            .expect("agents may list")
            .items
            .len(),
        1
    );
    assert!(matches!(
        agent.apply(&[object(WEB)], false).await,
        Err(ClientError::PermissionDenied(_))
    ));
    agent
        .apply(&[pod("p", None, false, 80)], false)
        .await
        .expect("agents may apply pods");
    let logs = agent
        .logs(gannet_api::pb::LogsRequest {
            pod: "p".to_owned(),
            container: "app".to_owned(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(logs, Err(ClientError::PermissionDenied(_))),
        "reaching nodes is an administrator's: {logs:?}"
    );

    let mut nobody = Client::connect(&server, &base)
        .await
        .expect("TLS without credentials connects");
    assert!(matches!(
        nobody.list(Kind::Service, None).await,
        Err(ClientError::Unauthenticated(_))
    ));
    let mut wrong = Client::connect(
        &server,
        &Credentials {
            token: Some("not-the-token".to_owned()),
            ..base.clone()
        },
    )
    .await
    .expect("connect");
    assert!(matches!(
        wrong.list(Kind::Service, None).await,
        Err(ClientError::Unauthenticated(_))
    ));
    let metrics = plane.plane.metrics_address().expect("metrics are served");
    let scraped = tokio::task::spawn_blocking(move || scrape(metrics))
        .await
        .expect("scrape");
    assert!(
        scraped.contains("gannet_control_grpc_unauthenticated_total 2"),
        "both refused calls are counted:\n{scraped}"
    );
    assert!(
        scraped.contains(
            "gannet_control_grpc_requests_total{method=\"Apply\",code=\"PermissionDenied\"} 1"
        ),
        "the agent's refused Apply is counted by method:\n{scraped}"
    );

    // A client that does not trust the CA cannot talk to the server at all.
    let other = tempfile::tempdir().expect("temporary directory");
    gannet_control::certs::generate(other.path(), &["localhost".to_owned()], false).expect("certs");
    let foreign = Credentials {
        ca_pem: Some(std::fs::read(other.path().join("ca.pem")).expect("ca")),
        ..Credentials::default()
    };
    assert!(
        Client::connect(&server, &foreign).await.is_err(),
        "a server certificate from another CA was accepted"
    );
}
