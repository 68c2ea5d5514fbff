use std::time::{Instant, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::http::{find_head_end, http_date};
use super::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn svc(name: &str, local_endpoints: usize) -> ServiceHealth {
    ServiceHealth {
        namespace: "default".to_owned(),
        name: name.to_owned(),
        local_endpoints,
    }
}

/// `N` distinct ports nobody listens on right now (bound, then released).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind((LOCALHOST, 0)).unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

fn servers() -> HealthServers {
    HealthServers::with_limits(
        vec![LOCALHOST],
        Limits {
            read_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(200),
        },
    )
}

/// A parsed response: status code, header fields, body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let value = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "{name} repeated in {self:?}");
        value
    }
}

/// Sends `request` on `stream` and reads the response up to the server's close.
async fn exchange(mut stream: TcpStream, request: &[u8]) -> Response {
    stream.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("the server closes the connection after answering")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn get(port: u16) -> Response {
    let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    exchange(
        stream,
        b"GET /healthz HTTP/1.1\r\nHost: lb\r\nUser-Agent: test\r\n\r\n",
    )
    .await
}

#[tokio::test]
async fn local_endpoints_answer_200_with_kube_proxys_body() {
    let port = free_port();
    let mut servers = servers();
    let errors = servers
        .update(BTreeMap::from([(port, svc("web", 3))]))
        .await;
    assert!(errors.is_empty(), "{errors:?}");

    let r = get(port).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("3"));
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(
        r.body,
        concat!(
            "{\n",
            "\t\"service\": {\n",
            "\t\t\"namespace\": \"default\",\n",
            "\t\t\"name\": \"web\"\n",
            "\t},\n",
            "\t\"localEndpoints\": 3,\n",
            "\t\"serviceProxyHealthy\": true\n",
            "}",
        )
    );
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "service": {"namespace": "default", "name": "web"},
            "localEndpoints": 3,
            "serviceProxyHealthy": true,
        })
    );
    servers.shutdown().await;
}

#[tokio::test]
async fn no_local_endpoints_answer_503_on_any_path_and_method() {
    let port = free_port();
    let mut servers = servers();
    servers
        .update(BTreeMap::from([(port, svc("web", 0))]))
        .await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /anything?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody",
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\n\n",
    ] {
        let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        let r = exchange(stream, request).await;
        assert_eq!(
            r.status,
            503,
            "{:?}: {r:?}",
            String::from_utf8_lossy(request)
        );
        assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("0"));
        assert!(r.body.contains("\"localEndpoints\": 0,"), "{r:?}");
    }
    // HEAD: the same head, no body.
    let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    let r = exchange(stream, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "");
    assert_ne!(r.header("Content-Length"), Some("0"));
    servers.shutdown().await;
}

#[tokio::test]
async fn counts_change_without_reopening_the_port() {
    let port = free_port();
    let mut servers = servers();
    servers
        .update(BTreeMap::from([(port, svc("web", 0))]))
        .await;
    assert_eq!(get(port).await.status, 503);

    // A connection accepted before the update is answered after it, with the new count: the
    // listener was not replaced.
    let early = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    let errors = servers
        .update(BTreeMap::from([(port, svc("web", 2))]))
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let r = exchange(early, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("X-Load-Balancing-Endpoint-Weight"), Some("2"));

    servers
        .update(BTreeMap::from([(port, svc("web", 0))]))
        .await;
    assert_eq!(get(port).await.status, 503);
    servers.shutdown().await;
}

#[tokio::test]
async fn removed_ports_are_closed_and_shutdown_closes_all() {
    let [a, b] = free_ports();
    let mut servers = servers();
    servers
        .update(BTreeMap::from([(a, svc("a", 1)), (b, svc("b", 1))]))
        .await;
    assert_eq!(get(a).await.status, 200);
    assert_eq!(get(b).await.status, 200);

    servers.update(BTreeMap::from([(b, svc("b", 1))])).await;
    let refused = TcpStream::connect((LOCALHOST, a)).await;
    assert_eq!(
        refused.as_ref().map_err(io::Error::kind).err(),
        Some(io::ErrorKind::ConnectionRefused),
        "port {a} should be closed: {refused:?}"
    );
    assert_eq!(get(b).await.status, 200);

    // Reopened later on the same port.
    servers
        .update(BTreeMap::from([(a, svc("a", 0)), (b, svc("b", 1))]))
        .await;
    assert_eq!(get(a).await.status, 503);

    servers.shutdown().await;
    for port in [a, b] {
        let refused = TcpStream::connect((LOCALHOST, port)).await;
        assert!(refused.is_err(), "port {port} open after shutdown");
    }
}

#[tokio::test]
async fn a_port_in_use_is_reported_and_the_others_still_serve() {
    let holder = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let busy = holder.local_addr().unwrap().port();
    let free = free_port();
    let desired = BTreeMap::from([(busy, svc("busy", 1)), (free, svc("free", 1))]);
    let mut servers = servers();

    let errors = servers.update(desired.clone()).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, busy);
    assert!(
        errors[0].1.contains(&format!("127.0.0.1:{busy}")) && errors[0].1.contains("in use"),
        "the error should name the address and the cause: {}",
        errors[0].1
    );
    assert_eq!(get(free).await.status, 200);

    // Once the other process lets go, the next update opens it.
    drop(holder);
    let errors = servers.update(desired).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(get(busy).await.status, 200);
    servers.shutdown().await;
}

#[tokio::test]
async fn port_zero_is_refused() {
    let mut servers = servers();
    let errors = servers.update(BTreeMap::from([(0, svc("x", 1))])).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, 0);
}

#[tokio::test]
async fn slow_and_garbled_clients_do_not_hold_up_others() {
    let port = free_port();
    let mut servers = servers();
    servers
        .update(BTreeMap::from([(port, svc("web", 1))]))
        .await;

    // Half a request, then silence.
    let mut slow = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    // Connected, nothing sent.
    let mut mute = TcpStream::connect((LOCALHOST, port)).await.unwrap();

    let started = Instant::now();
    assert_eq!(get(port).await.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a good client waited {:?} behind slow ones",
        started.elapsed()
    );

    for (garbage, status) in [
        (
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            400,
        ),
        (b"GET\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400), // no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    ] {
        let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
        let r = exchange(stream, garbage).await;
        assert_eq!(
            r.status,
            status,
            "{:?}: {r:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    // A head that never ends.
    let stream = TcpStream::connect((LOCALHOST, port)).await.unwrap();
    let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "a".repeat(MAX_HEAD));
    assert_eq!(exchange(stream, huge.as_bytes()).await.status, 431);

    assert_eq!(get(port).await.status, 200);

    // The slow clients are dropped once their time is up, without an answer.
    for (what, stream) in [("slow", &mut slow), ("mute", &mut mute)] {
        let mut rest = Vec::new();
        timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .unwrap_or_else(|_| panic!("the {what} client was never disconnected"))
            .unwrap();
        assert!(rest.is_empty(), "the {what} client got {rest:?}");
    }
    servers.shutdown().await;
}

#[test]
fn head_ends_are_found_with_crlf_or_lf() {
    assert_eq!(
        find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"),
        Some(24)
    );
    assert_eq!(find_head_end(b"GET / HTTP/1.0\n\n"), Some(14));
    assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), None);
}

#[test]
fn http_dates_are_imf_fixdate() {
    for (secs, expected) in [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1_735_689_599, "Tue, 31 Dec 2024 23:59:59 GMT"),
    ] {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(http_date(t), expected, "{secs}");
    }
}
