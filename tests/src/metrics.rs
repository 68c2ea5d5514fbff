//! Scraping the daemons' `/metrics` under test: the fixtures start them on `127.0.0.1:0` (tests
//! run many at once; the default ports would collide), find the port they bound in their log,
//! and read series out of the `OpenMetrics` text.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::Netns;

/// What the fixtures pass, unless a test gives `--metrics-address` itself.
pub const TEST_METRICS_ADDRESS: &str = "127.0.0.1:0";

/// The address in the daemons' `serving metrics on http://ADDRESS/metrics` log line (the last
/// one in `log`).
#[must_use]
pub fn address_in_log(log: &str) -> Option<SocketAddr> {
    log.lines().rev().find_map(|line| {
        let rest = line.split("serving metrics on http://").nth(1)?;
        rest.split("/metrics").next()?.parse().ok()
    })
}

/// `GET /metrics` from `address` (in `netns`, when given: the daemon's loopback is there).
///
/// # Errors
/// If the connection fails or the answer is not `200 OK`.
pub fn scrape(address: SocketAddr, netns: Option<&Netns>) -> anyhow::Result<String> {
    let get = move || -> anyhow::Result<String> {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        let Some((head, body)) = reply.split_once("\r\n\r\n") else {
            bail!("no HTTP answer from {address}: {reply:?}");
        };
        if !head.starts_with("HTTP/1.1 200 ") {
            bail!("GET http://{address}/metrics: {head}");
        }
        Ok(body.to_owned())
    };
    match netns {
        Some(netns) => netns.run(get)?,
        None => get(),
    }
}

/// The value of the series `series` (name and labels exactly as rendered, e.g.
/// `gannet_cni_requests_total{operation="register",result="ok"}`), if present.
#[must_use]
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Every series of the family `name` (lines starting with `name{` or `name `), as (labels,
/// value).
#[must_use]
pub fn series<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let labels = key.strip_prefix(name)?;
            let labels = if labels.is_empty() {
                ""
            } else {
                labels.strip_prefix('{')?.strip_suffix('}')?
            };
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_found_in_the_log_and_values_in_the_text() {
        let log = "2026 INFO gannet_agent::run: serving metrics on http://127.0.0.1:41234/metrics address=127.0.0.1:41234\n";
        assert_eq!(
            address_in_log(log),
            Some("127.0.0.1:41234".parse().expect("address"))
        );
        assert_eq!(address_in_log("nothing"), None);
        let text = "# TYPE a counter\na_total{x=\"1\"} 3\na_total{x=\"2\"} 4.5\nb 7\n";
        assert_eq!(value(text, "a_total{x=\"2\"}"), Some(4.5));
        assert_eq!(value(text, "b"), Some(7.0));
        assert_eq!(value(text, "a_total{x=\"3\"}"), None);
        assert_eq!(
            series(text, "a_total"),
            vec![("x=\"1\"", 3.0), ("x=\"2\"", 4.5)]
        );
    }
}
