//! The metrics endpoint both daemons serve (`--metrics-address`): `GET /metrics` answered with
//! what a render function returns (`OpenMetrics` text), over a deliberately small HTTP/1.1 server
//! (one request per connection, no keep-alive): Prometheus needs nothing more, and neither
//! daemon then carries a web framework for one page.

use std::{future::Future, io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// The variable gannetd reads `--metrics-address` from (gannet-control: `GANNET_CONTROL_METRICS_ADDRESS`).
pub const METRICS_ADDRESS_ENV: &str = "GANNET_METRICS_ADDRESS";
/// gannetd's default `--metrics-address`.
pub const AGENT_METRICS_ADDRESS: &str = "127.0.0.1:9962";
/// gannet-control's default `--metrics-address`.
pub const CONTROL_METRICS_ADDRESS: &str = "127.0.0.1:9963";
/// The path metrics are served on.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the `OpenMetrics` text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The longest request head read; a scraper's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// `--metrics-address` as given: `HOST:PORT` with an IP address, or empty (no metrics).
///
/// # Errors
/// A message for the flag when the text is neither.
pub fn parse_address(text: &str) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<SocketAddr>().map(Some).map_err(|_| {
        format!(
            "{text:?} is not IP:PORT (e.g. 127.0.0.1:9962, [::1]:9962, 0.0.0.0:9962; an empty \
             value turns metrics off)"
        )
    })
}

/// Binds the metrics listener.
///
/// # Errors
/// When the address cannot be bound (in use, not an address of this host, no permission).
pub async fn bind(address: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Serves `listener` until the task is dropped: `GET /metrics` (and `HEAD`) answered with what
/// `render` returns, each connection in a task of its own.
pub async fn serve<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let render = render.clone();
                tokio::spawn(async move {
                    let answered =
                        tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, render)).await;
                    match answered {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%error, "metrics request failed"),
                        Err(_) => tracing::debug!("metrics client too slow; connection closed"),
                    }
                });
            }
            Err(error) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "metrics listener: cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, render: F) -> io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            stream.write_all(&response(431, "", "")).await?;
            return Ok(());
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let reply = match route(&head) {
        Route::Metrics { head_only } => {
            let body = render().await;
            let mut reply = response(200, CONTENT_TYPE, &body);
            if head_only {
                reply.truncate(reply.len() - body.len());
            }
            reply
        }
        Route::Status(code) => response(code, "text/plain; charset=utf-8", reason(code)),
    };
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    Status(u16),
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Status(400);
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Status(400);
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != METRICS_PATH {
        return Route::Status(404);
    }
    match method {
        "GET" => Route::Metrics { head_only: false },
        "HEAD" => Route::Metrics { head_only: true },
        _ => Route::Status(405),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

fn response(code: u16, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(code),
        body.len()
    );
    if !content_type.is_empty() {
        out.push_str("Content-Type: ");
        out.push_str(content_type);
        out.push_str("\r\n");
    }
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_empty_turns_metrics_off() {
        assert_eq!(parse_address(""), Ok(None));
        assert_eq!(parse_address("  "), Ok(None));
        assert_eq!(
            parse_address("127.0.0.1:9962"),
            Ok(Some("127.0.0.1:9962".parse().expect("address")))
        );
        assert_eq!(
            parse_address("[::1]:0"),
            Ok(Some("[::1]:0".parse().expect("address")))
        );
        for bad in ["localhost:9962", "127.0.0.1", ":9962", "127.0.0.1:99999"] {
            let error = parse_address(bad).expect_err(bad);
            assert!(error.contains("IP:PORT"), "{bad}: {error}");
        }
    }

    #[test]
    fn requests_are_routed() {
        for (head, expected) in [
            (
                "GET /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head_only: false },
            ),
            (
                "GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                Route::Metrics { head_only: false },
            ),
            (
                "HEAD /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head_only: true },
            ),
            ("POST /metrics HTTP/1.1\r\n\r\n", Route::Status(405)),
            ("GET / HTTP/1.1\r\n\r\n", Route::Status(404)),
            ("GET /metricsx HTTP/1.1\r\n\r\n", Route::Status(404)),
            ("garbage\r\n\r\n", Route::Status(400)),
            ("GET /metrics SPDY/3\r\n\r\n", Route::Status(400)),
        ] {
            assert_eq!(route(head.as_bytes()), expected, "{head:?}");
        }
    }

    #[test]
    fn a_scrape_gets_the_rendered_text() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (listener, bound) = bind("127.0.0.1:0".parse().expect("address"))
                .await
                .expect("bind");
            let server = tokio::spawn(serve(listener, || async { "up 1\n# EOF\n".to_owned() }));
            for (request, status, body) in [
                (
                    "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                    "200 OK",
                    "up 1\n# EOF\n",
                ),
                ("GET /nope HTTP/1.1\r\n\r\n", "404 Not Found", "Not Found"),
            ] {
                let mut stream = TcpStream::connect(bound).await.expect("connect");
                stream.write_all(request.as_bytes()).await.expect("send");
                let mut reply = String::new();
                stream.read_to_string(&mut reply).await.expect("read");
                assert!(
                    reply.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                    "{request:?}: {reply}"
                );
                assert!(reply.ends_with(&format!("\r\n\r\n{body}")), "{reply}");
                if status.starts_with("200") {
                    assert!(reply.contains(CONTENT_TYPE), "{reply}");
                }
            }
            server.abort();
        });
    }
}
