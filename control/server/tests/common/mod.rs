//! Helpers of the integration tests: real etcd members on loopback, a control plane on a unix
//! socket in a per-test directory, polling.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses a different subset"
)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gannet_api::{Client, Credentials, ServerAddr};
use gannet_control::server::{self, ControlPlane, Listen, Options};
use gannet_control::store::{EmbeddedStore, EtcdStore, EtcdTls, Store};
use gannet_testkit::ChildGuard;

/// Debian's etcd-server.
pub const ETCD: &str = "/usr/bin/etcd";

/// Fails with a clear message when etcd is not installed.
pub fn require_etcd() {
    assert!(
        Path::new(ETCD).is_file(),
        "{ETCD} is missing: install Debian's etcd-server (apt-get install etcd-server); \
         the etcd tests run the real etcd on loopback"
    );
}

/// A free loopback port (bound and released; the tiny race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding 127.0.0.1:0")
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    process: Option<ChildGuard>,
}

/// An etcd cluster of real members on loopback ports, in a temporary directory; killed and
/// removed on drop (also when a test panics).
pub struct Etcd {
    pub members: Vec<Member>,
    cluster: String,
    token: String,
    /// With TLS: clients must show a certificate of this CA (`--client-cert-auth`).
    pub tls: Option<EtcdTls>,
    /// `gannet-control certs` output, when the members serve TLS.
    pub pki: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `size` members and waits until the cluster serves.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, false)
    }

    /// Starts `size` members serving clients over TLS with client certificates required (their
    /// certificates from `gannet-control certs`: the server pair for the members, the agent pair
    /// as the client's).
    pub fn start_tls(size: usize) -> Self {
        Self::start_with(size, true)
    }

    fn start_with(size: usize, tls: bool) -> Self {
        require_etcd();
        let dir = tempfile::tempdir().expect("temporary directory");
        let scheme = if tls { "https" } else { "http" };
        let pki = tls.then(|| {
            let pki = dir.path().join("pki");
            gannet_control::certs::generate(
                &pki,
                &["localhost".to_owned(), "127.0.0.1".to_owned()],
                false,
            )
            .expect("certificates for etcd");
            pki
        });
        let tls = pki.as_ref().map(|pki| {
            let read = |name: &str| std::fs::read(pki.join(name)).expect("certificate file");
            EtcdTls {
                ca_pem: read("ca.pem"),
                client: Some((read("agent.pem"), read("agent-key.pem"))),
            }
        });
        let token = format!("gannet-test-{}-{}", std::process::id(), free_port());
        let mut members = Vec::new();
        for i in 0..size {
            let name = format!("m{i}");
            members.push(Member {
                data_dir: dir.path().join(&name),
                name,
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                process: None,
            });
        }
        let cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Self {
            members,
            cluster,
            token,
            tls,
            pki,
            _dir: dir,
        };
        for i in 0..size {
            etcd.spawn(i);
        }
        etcd.wait_ready();
        etcd
    }

    fn spawn(&mut self, i: usize) {
        let member = &self.members[i];
        let mut command = Command::new(ETCD);
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"]);
        if let Some(pki) = &self.pki {
            command
                .arg("--cert-file")
                .arg(pki.join("server.pem"))
                .arg("--key-file")
                .arg(pki.join("server-key.pem"))
                .arg("--trusted-ca-file")
                .arg(pki.join("ca.pem"))
                .arg("--client-cert-auth");
        }
        let guard = gannet_testkit::spawn(command, None, None).expect("starting etcd");
        self.members[i].process = Some(guard);
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// A store on these members under `prefix`, with their TLS when they serve it.
    pub fn store(&self, prefix: &str) -> EtcdStore {
        EtcdStore::with_tls(&self.endpoints(), prefix, self.tls.as_ref()).expect("etcd endpoints")
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            process.kill(libc::SIGKILL).expect("killing etcd");
            let _ = process.wait_output(Duration::from_secs(5));
        }
    }

    fn wait_ready(&self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let deadline = Instant::now() + Duration::from_secs(20);
        runtime.block_on(async {
            let store = self.store("/ready-check/");
            loop {
                // A write needs a leader: the cluster is up.
                match store
                    .txn(
                        Vec::new(),
                        vec![gannet_control::store::Op::Put {
                            key: "probe".to_owned(),
                            value: b"1".to_vec(),
                        }],
                    )
                    .await
                {
                    Ok(Some(_)) => return,
                    result => assert!(
                        Instant::now() < deadline,
                        "etcd did not become ready within 20s: {result:?}; stderr of m0: {}",
                        self.members[0]
                            .process
                            .as_ref()
                            .map(ChildGuard::stderr_so_far)
                            .unwrap_or_default()
                    ),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

/// An embedded store in a fresh temporary directory (kept alive by the returned guard).
pub fn embedded() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("control.redb")).expect("opening the store");
    (Arc::new(store), dir)
}

/// A control plane on a unix socket in its own temporary directory.
pub struct Plane {
    pub plane: ControlPlane,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Plane {
    pub async fn start(store: Arc<dyn Store>, mut options: Options) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let socket = dir.path().join("control.sock");
        options.listen.insert(0, Listen::Unix(socket.clone()));
        let plane = server::start(store, options)
            .await
            .expect("starting the control plane");
        Self { plane, socket, dir }
    }

    pub fn addr(&self) -> ServerAddr {
        ServerAddr::Unix(self.socket.clone())
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.addr(), &Credentials::default())
            .await
            .expect("connecting over the unix socket")
    }
}

/// Options for tests: fast node lifecycle, no background compaction.
pub fn test_options() -> Options {
    Options {
        compaction: None,
        ..Options::default()
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses a YAML or JSON object of a served kind.
pub fn object(yaml: &str) -> gannet_api::Object {
    let value: serde_json::Value = serde_yaml_ng::from_str(yaml).expect("test YAML");
    let kind = gannet_api::Kind::from_type(
        value["apiVersion"].as_str().expect("apiVersion"),
        value["kind"].as_str().expect("kind"),
    )
    .expect("a served kind");
    gannet_api::Object::from_json(kind, value.to_string().as_bytes()).expect("test object")
}

/// The text of `/metrics` at `address`.
pub fn scrape(address: std::net::SocketAddr) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to /metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}
