//! The HTTP side of a health check port: one connection's request head read (bounded in size and
//! time) and checked, and kube-proxy's answer written.

use std::io;
use std::time::SystemTime;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::debug;

use super::{Limits, MAX_HEAD, ServiceHealth};

/// What the request head asks for, as far as this server cares.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// A well-formed request; `HEAD` gets no body.
    Valid { is_head: bool },
    /// Answered with this status and closed.
    Invalid(&'static str),
}

/// Answers one connection: reads the request head, writes the answer, closes.
pub(super) async fn answer(
    mut stream: TcpStream,
    health: watch::Receiver<ServiceHealth>,
    limits: Limits,
) {
    let request = match timeout(limits.read_timeout, read_head(&mut stream)).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            debug!(%error, "health check connection closed before a request");
            return;
        }
        Err(_) => {
            debug!("health check request not received in time");
            return;
        }
    };
    let response = match request {
        Request::Valid { is_head } => {
            let health = health.borrow().clone();
            response(&health, is_head, SystemTime::now())
        }
        Request::Invalid(status) => error_response(status, SystemTime::now()),
    };
    let written = timeout(limits.write_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        debug!("health check response not delivered");
        return;
    }
    // Closing a socket with unread bytes (a request body, pipelined requests) makes the kernel
    // send a reset, which can destroy the response before the client reads it; read and drop
    // what still comes, briefly, then close.
    let _ = timeout(limits.linger, async {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Reads up to the end of the request head and judges it.
async fn read_head(stream: &mut TcpStream) -> io::Result<Request> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // The head ends at an empty line; a bare LF is accepted as a line end (RFC 9112, 2.2).
        let from = len.saturating_sub(2);
        len += n;
        if let Some(end) = find_head_end(&buf[from..len]) {
            return Ok(parse_head(&buf[..from + end]));
        }
        if len == MAX_HEAD {
            return Ok(Request::Invalid("431 Request Header Fields Too Large"));
        }
    }
}

/// Where the head ends: the first `\n` followed by an empty line (`\n` or `\r\n`). The head
/// without its last line end is what comes before it.
pub(super) fn find_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find(|&i| {
        buf[i] == b'\n'
            && (buf.get(i + 1) == Some(&b'\n') || buf.get(i + 1..i + 3) == Some(b"\r\n"))
    })
}

/// Checks a request head (request line and header field lines, without the line end of the
/// last one and the empty line).
fn parse_head(head: &[u8]) -> Request {
    const BAD: Request = Request::Invalid("400 Bad Request");
    let Ok(head) = std::str::from_utf8(head) else {
        return BAD;
    };
    let mut lines = head
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return BAD;
    };
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !is_token(method) || target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return BAD;
    }
    let minor = match version.as_bytes() {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major != b'1' {
                return Request::Invalid("505 HTTP Version Not Supported");
            }
            *minor
        }
        _ => return BAD,
    };
    let mut hosts = 0;
    for line in lines {
        let Some((name, _value)) = line.split_once(':') else {
            return BAD;
        };
        // Also rejects obsolete line folding (a line starting with whitespace).
        if !is_token(name) {
            return BAD;
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    // HTTP/1.1 requests carry exactly one Host (RFC 9112, 3.2), as Go's server insists too.
    if hosts > 1 || (minor != b'0' && hosts == 0) {
        return BAD;
    }
    Request::Valid {
        is_head: method == "HEAD",
    }
}

/// kube-proxy's answer for `health`.
fn response(health: &ServiceHealth, is_head: bool, now: SystemTime) -> Vec<u8> {
    let status = if health.local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let body = body(health);
    let mut out = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: application/json\r\n\
         X-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {}\r\n\
         Date: {}\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n",
        health.local_endpoints,
        http_date(now),
        body.len()
    );
    if !is_head {
        out.push_str(&body);
    }
    out.into_bytes()
}

/// kube-proxy's JSON body, with its layout (tab-indented, no final newline).
fn body(health: &ServiceHealth) -> String {
    // JSON string literals, quoted and escaped.
    let namespace = serde_json::Value::from(health.namespace.as_str());
    let name = serde_json::Value::from(health.name.as_str());
    format!(
        "{{\n\
         \t\"service\": {{\n\
         \t\t\"namespace\": {namespace},\n\
         \t\t\"name\": {name}\n\
         \t}},\n\
         \t\"localEndpoints\": {},\n\
         \t\"serviceProxyHealthy\": true\n\
         }}",
        health.local_endpoints
    )
}

/// The answer to a request this server cannot take.
fn error_response(status: &str, now: SystemTime) -> Vec<u8> {
    let body = format!("{status}\n");
    format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Date: {}\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}",
        http_date(now),
        body.len()
    )
    .into_bytes()
}

/// `t` as an HTTP date (IMF-fixdate, RFC 9110 5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(super) fn http_date(t: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, time) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm, in years from March).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[usize::try_from(days % 7).expect("< 7")],
        MONTHS[usize::try_from(month - 1).expect("< 12")],
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}
