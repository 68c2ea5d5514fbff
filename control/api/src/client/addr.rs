//! Where gannet-control is (`--server`) and the credentials to show it.

use super::*;

/// The unix socket `gannet-control` listens on and clients use by default.
pub const DEFAULT_SOCKET: &str = "/run/gannet/control.sock";
/// [`DEFAULT_SOCKET`] as an address, the form every binary's `--help` shows.
pub const DEFAULT_SERVER: &str = "unix:/run/gannet/control.sock";
/// The environment variable that names the server when `--server` is not given.
pub const SERVER_ENV: &str = "GANNET_SERVER";
/// Largest message either side accepts (a full list of 10 000 Services is a few MB).
pub const MAX_MESSAGE_SIZE: usize = 256 << 20;

/// Where gannet-control listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// `unix:PATH`
    Unix(PathBuf),
    /// `https://HOST:PORT`: TLS, the server's certificate checked against a CA.
    Https { host: String, port: u16 },
    /// `http://HOST:PORT`: plain TCP, only served on loopback with `--insecure`.
    Http { host: String, port: u16 },
}

impl Default for ServerAddr {
    fn default() -> Self {
        Self::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

impl FromStr for ServerAddr {
    type Err = ClientError;

    /// `unix:PATH` (also `unix://PATH` and a bare absolute path), `https://HOST:PORT`,
    /// `http://HOST:PORT`; IPv6 hosts in brackets.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ClientError::Address(text.to_owned());
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
            .or_else(|| text.starts_with('/').then_some(text))
        {
            if path.is_empty() {
                return Err(bad());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let host = host.to_owned();
        Ok(if tls {
            Self::Https { host, port }
        } else {
            Self::Http { host, port }
        })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_port = |f: &mut fmt::Formatter<'_>, scheme: &str, host: &str, port: u16| {
            if host.contains(':') {
                write!(f, "{scheme}://[{host}]:{port}")
            } else {
                write!(f, "{scheme}://{host}:{port}")
            }
        };
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Https { host, port } => host_port(f, "https", host, *port),
            Self::Http { host, port } => host_port(f, "http", host, *port),
        }
    }
}

/// What a client presents and trusts on TLS connections; ignored on unix sockets.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// PEM of the CA that signed the server's certificate (`ca.pem` of `gannet-control certs`).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key: how agents authenticate (`agent.pem`, `agent-key.pem`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Bearer token: how gannetctl authenticates (`token`). Sent on TLS connections only.
    pub token: Option<String>,
    /// The name to check the server certificate against; default: the host of the address.
    pub server_name: Option<String>,
}
