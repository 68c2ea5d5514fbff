//! The client's pure parts: addresses, error chains.

use super::*;

#[test]
fn a_chain_tells_each_cause_once() {
    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);
    let io = Layer("No such file or directory (os error 2)", None);
    let error = Layer(
        "transport error",
        Some(Box::new(Layer(
            "transport error",
            Some(Box::new(Layer(
                "No such file or directory (os error 2)",
                Some(Box::new(io)),
            ))),
        ))),
    );
    assert_eq!(
        chain(&error),
        "transport error: No such file or directory (os error 2)"
    );
    assert_eq!(
        ClientError::NotFound("Service default/missing not found".to_owned()).to_string(),
        "Service default/missing not found"
    );
}

#[test]
fn the_default_server_is_the_default_socket() {
    assert_eq!(
        DEFAULT_SERVER.parse::<ServerAddr>().expect("parses"),
        ServerAddr::default()
    );
}

#[test]
fn server_addresses_parse_and_print() {
    let cases = [
        (
            "unix:/run/gannet/control.sock",
            "unix:/run/gannet/control.sock",
        ),
        ("unix:///tmp/a.sock", "unix:/tmp/a.sock"),
        ("/tmp/b.sock", "unix:/tmp/b.sock"),
        ("https://cp.example:6443", "https://cp.example:6443"),
        ("https://[::1]:6443/", "https://[::1]:6443"),
        ("http://127.0.0.1:7000", "http://127.0.0.1:7000"),
    ];
    for (text, printed) in cases {
        let addr: ServerAddr = text
            .parse()
            .unwrap_or_else(|error| panic!("{text}: {error}"));
        assert_eq!(addr.to_string(), printed, "{text}");
    }
    for bad in [
        "",
        "unix:",
        "tcp://a:1",
        "https://host",
        "https://:1",
        "http://a:99999",
    ] {
        assert!(bad.parse::<ServerAddr>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn statuses_map_to_errors() {
    assert!(matches!(
        ClientError::from(Status::out_of_range("compacted")),
        ClientError::Expired(_)
    ));
    assert!(matches!(
        ClientError::from(Status::aborted("stale")),
        ClientError::Conflict(_)
    ));
    assert!(ClientError::from(Status::unavailable("down")).is_transient());
    assert!(!ClientError::from(Status::not_found("x")).is_transient());
}
