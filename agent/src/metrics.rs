//! gannetd's Prometheus metrics (`--metrics-address`, `GET /metrics`).
//!
//! Two kinds: what happens (applies, CNI requests, full maps) is counted where it happens, in
//! [`Metrics`]; what is (map use, programmed frontends, per-pod and NodePort counters the kernel
//! programs keep, the watches' state) is read at each scrape by the main loop, which owns the
//! data plane: the server asks it for a [`Snapshot`] through [`Scrapes`] and renders that.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::Registry,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    control::WatchStats,
    datapath::{BpfMaps, full, nodeport::NodePortStats, pods::PodFastPath, reconcile::Counts},
};

/// How long a scrape waits for the main loop (busy with a large sync, say) before it is answered
/// with the values of the previous one.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// One label.
type Label = (&'static str, &'static str);
type HistogramFamily = Family<[Label; 1], Histogram, fn() -> Histogram>;

/// Apply durations: 0.5 ms to about 65 s.
fn apply_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 18))
}

/// The metrics counted as things happen; cheap to clone (every metric is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    apply: HistogramFamily,
    cni: Family<[Label; 2], Counter>,
    vanished: Counter,
    snapshot: Arc<Mutex<Snapshot>>,
}

/// The readings taken at a scrape.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Per map: its label, entries in use, capacity.
    pub maps: Vec<(&'static str, u64, u64)>,
    /// What the data plane has programmed.
    pub counts: Counts,
    /// The control-plane watches, when services come from a control plane.
    pub control: Option<ControlReadings>,
    /// Registered CNI endpoints.
    pub endpoints: u64,
    /// The pod programs' counters, per endpoint (eBPF data plane).
    pub traffic: Vec<EndpointTraffic>,
    /// The NodePort programs' counters, when they are loaded.
    pub nodeport: Option<NodePortStats>,
}

/// The control-plane client's readings.
#[derive(Debug, Default, Clone)]
pub struct ControlReadings {
    /// Per kind: how often its watch was opened again after failing.
    pub reconnects: Vec<(String, u64)>,
    /// When the last change arrived (seconds since the Unix epoch).
    pub last_event: Option<f64>,
}

/// One endpoint's counters, from the pod's point of view.
#[derive(Debug, Default, Clone)]
pub struct EndpointTraffic {
    pub namespace: String,
    pub pod: String,
    /// The host side of its veth.
    pub interface: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub dropped_source: u64,
    pub dropped_neighbour: u64,
}

/// The readings' collector: renders the last [`Snapshot`].
#[derive(Debug)]
struct Readings(Arc<Mutex<Snapshot>>);

impl Metrics {
    /// The metrics and the registry that renders them, for gannetd with `dataplane`.
    #[must_use]
    pub fn new(dataplane: &str) -> (Metrics, Registry) {
        let mut registry = Registry::default();
        registry.register(
            "gannet_agent",
            "gannetd's version and data plane (value 1)",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("dataplane", dataplane.to_owned()),
            ]),
        );
        let metrics = Metrics {
            apply: Family::new_with_constructor(apply_histogram),
            cni: Family::default(),
            vanished: Counter::default(),
            snapshot: Arc::default(),
        };
        registry.register(
            "gannet_dataplane_apply_duration_seconds",
            "Time taken to program services into the data plane: kind=full (a whole desired \
             state: the first sync from the control plane, the first scan of the manifest \
             directory or one that had to join it whole) or incremental (changes from the watch \
             or from changed manifest files)",
            metrics.apply.clone(),
        );
        registry.register(
            "gannet_cni_requests",
            "CNI registrations gannetd handled, by operation (register, unregister) and result \
             (ok, error)",
            metrics.cni.clone(),
        );
        registry.register(
            "gannet_cni_endpoints_vanished",
            "Registered endpoints gannetd removed because their host veth was gone (the pod went \
             away without a DEL reaching gannetd)",
            metrics.vanished.clone(),
        );
        registry.register_collector(Box::new(Readings(Arc::clone(&metrics.snapshot))));
        // Every series that can appear, at 0 from the start (an absent series is not a zero).
        for operation in ["register", "unregister"] {
            for result in ["ok", "error"] {
                metrics
                    .cni
                    .get_or_create(&[("operation", operation), ("result", result)])
                    .inc_by(0);
            }
        }
        (metrics, registry)
    }

    /// Counts one apply of the data plane (`full`: a whole desired state).
    pub fn applied(&self, full: bool, took: Duration) {
        let kind = if full { "full" } else { "incremental" };
        self.apply
            .get_or_create(&[("kind", kind)])
            .observe(took.as_secs_f64());
    }

    /// Counts a CNI request (`None`: not a registration, e.g. a status check).
    pub fn cni_request(&self, operation: Option<&'static str>, ok: bool) {
        if let Some(operation) = operation {
            let result = if ok { "ok" } else { "error" };
            self.cni
                .get_or_create(&[("operation", operation), ("result", result)])
                .inc();
        }
    }

    /// Counts endpoints removed because their host veth was gone.
    pub fn endpoints_vanished(&self, count: usize) {
        self.vanished
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Keeps the readings of this scrape.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        *self.snapshot.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

/// A map's label in metrics: its role, not its pinned name.
#[must_use]
pub fn map_label(name: &str) -> String {
    use gannet_common::map_names as m;
    let label = match name {
        m::SERVICES => "services",
        m::SLOTS => "slots",
        m::BACKENDS => "backends",
        m::AFFINITY => "affinity",
        m::REV_NAT => "rev_nat",
        m::MAGLEV => "maglev",
        m::ENDPOINTS => "endpoints",
        m::CONNTRACK => "conntrack",
        m::SOURCE_RANGES => "source_ranges",
        m::ENDPOINT_STATS => "endpoint_stats",
        m::NODES => "nodes",
        other => return other.to_lowercase().replace([' ', '-'], "_"),
    };
    label.to_owned()
}

/// The requests for a snapshot, as the main loop receives them: it answers each with
/// [`Metrics::set_snapshot`] and then the sender.
pub type Scrapes = mpsc::Receiver<oneshot::Sender<()>>;

/// Serves `listener`: each scrape asks the main loop for a snapshot (through the returned
/// [`Scrapes`]), then renders `registry`.
#[must_use]
pub fn serve(listener: tokio::net::TcpListener, registry: Registry) -> Scrapes {
    let registry = Arc::new(registry);
    let (ask, scrapes) = mpsc::channel::<oneshot::Sender<()>>(4);
    let render = move || {
        let registry = Arc::clone(&registry);
        let ask = ask.clone();
        async move {
            let (done, wait) = oneshot::channel();
            if ask.send(done).await.is_ok()
                && tokio::time::timeout(SNAPSHOT_TIMEOUT, wait).await.is_err()
            {
                tracing::debug!("scrape: the main loop is busy; serving the last readings");
            }
            let mut text = String::new();
            if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
                tracing::warn!(%error, "cannot encode the metrics");
                let _ = writeln!(text, "# EOF");
            }
            text
        }
    };
    tokio::spawn(gannet_api::metrics::serve(listener, render));
    scrapes
}

/// Binds `--metrics-address`.
///
/// # Errors
/// A message naming the flag and the address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    gannet_api::metrics::bind(address).await.map_err(|e| {
        anyhow::anyhow!(
            "--metrics-address {address}: cannot listen: {e}; give another address (port 0: \
             any free port), or an empty value to turn metrics off"
        )
    })
}

fn as_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Writes one family of constant values.
fn family<L, V>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    V: prometheus_client::encoding::EncodeGaugeValue
        + prometheus_client::encoding::EncodeCounterValue,
{
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let encoder = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(encoder)?,
            _ => ConstGauge::new(value).encode(encoder)?,
        }
    }
    Ok(())
}

/// No labels.
const NONE: [Label; 0] = [];

impl Collector for Readings {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let e = &mut encoder;
        let map = |(name, used, capacity): &(&'static str, u64, u64), pick_capacity: bool| {
            (
                [("map", *name)],
                if pick_capacity { *capacity } else { *used },
            )
        };
        family(
            e,
            "gannet_map_entries",
            "Entries in use in each of the data plane's maps (LRU maps and conntrack are \
             counted by walking them; conntrack at its last sweep).",
            MetricType::Gauge,
            s.maps.iter().map(|m| map(m, false)),
        )?;
        family(
            e,
            "gannet_map_capacity",
            "Capacity of each of the data plane's maps (entries).",
            MetricType::Gauge,
            s.maps.iter().map(|m| map(m, true)),
        )?;
        family(
            e,
            "gannet_map_full",
            "Writes to a map that the kernel refused because the map was full, by map: each a \
             service frontend, source range, Maglev table, pod endpoint or node route that \
             could not be programmed (service_slots: a service with more backends than one \
             service may have).",
            MetricType::Counter,
            full::counts()
                .into_iter()
                .map(|(map, n)| ([("map", map_label(map))], n)),
        )?;
        family(
            e,
            "gannet_service_frontends",
            "Service frontends programmed (cluster IP, node port, external IP or load balancer \
             IP × port × protocol).",
            MetricType::Gauge,
            [(NONE, as_u64(s.counts.frontends))],
        )?;
        family(
            e,
            "gannet_service_backends",
            "Distinct backends (address:port) programmed.",
            MetricType::Gauge,
            [(NONE, as_u64(s.counts.backends))],
        )?;
        family(
            e,
            "gannet_cni_endpoints",
            "Pod endpoints registered by gannet-cni.",
            MetricType::Gauge,
            [(NONE, s.endpoints)],
        )?;
        if let Some(control) = &s.control {
            family(
                e,
                "gannet_control_watch_reconnects",
                "Times a watch of the control plane was opened again after it failed, by kind.",
                MetricType::Counter,
                control
                    .reconnects
                    .iter()
                    .map(|(kind, n)| ([("kind", kind.as_str())], *n)),
            )?;
            if let Some(at) = control.last_event {
                let mut metric = e.encode_descriptor(
                    "gannet_control_last_event_timestamp_seconds",
                    "When the last change (or list) arrived from the control plane, in seconds \
                     since the Unix epoch.",
                    None,
                    MetricType::Gauge,
                )?;
                ConstGauge::new(at).encode(metric.encode_family(&NONE)?)?;
            }
        }
        encode_traffic(e, &s.traffic)?;
        if let Some(np) = &s.nodeport {
            family(
                e,
                "gannet_nodeport_packets",
                "Packets the NodePort programs handled, by event: new_flow (first packet of a \
                 flow, balanced), forwarded, reply, no_backend, conntrack_failed (dropped), \
                 route_failed (dropped), denied (by loadBalancerSourceRanges, dropped), \
                 icmp_error (translated), xdp_tx (sent back out by XDP), dsr_in.",
                MetricType::Counter,
                [
                    ("new_flow", np.new_flows),
                    ("forwarded", np.forwarded),
                    ("reply", np.replies),
                    ("no_backend", np.no_backend),
                    ("conntrack_failed", np.conntrack_failed),
                    ("route_failed", np.route_failed),
                    ("denied", np.denied),
                    ("icmp_error", np.icmp_errors),
                    ("xdp_tx", np.xdp_tx),
                    ("dsr_in", np.dsr_in),
                ]
                .map(|(event, n)| ([("event", event)], n)),
            )?;
        }
        Ok(())
    }
}

fn encode_traffic(
    e: &mut DescriptorEncoder,
    traffic: &[EndpointTraffic],
) -> Result<(), std::fmt::Error> {
    let labels = |t: &EndpointTraffic, key: &'static str, value: &'static str| {
        [
            ("namespace", t.namespace.clone()),
            ("pod", t.pod.clone()),
            ("interface", t.interface.clone()),
            (key, value.to_owned()),
        ]
    };
    family(
        e,
        "gannet_endpoint_packets",
        "Packets of each pod on this node, by direction from the pod's point of view (rx: \
         delivered to it, tx: sent by it), as the pod programs count them.",
        MetricType::Counter,
        traffic.iter().flat_map(|t| {
            [
                (labels(t, "direction", "rx"), t.rx_packets),
                (labels(t, "direction", "tx"), t.tx_packets),
            ]
        }),
    )?;
    family(
        e,
        "gannet_endpoint_bytes",
        "Bytes of each pod on this node, by direction (as gannet_endpoint_packets).",
        MetricType::Counter,
        traffic.iter().flat_map(|t| {
            [
                (labels(t, "direction", "rx"), t.rx_bytes),
                (labels(t, "direction", "tx"), t.tx_bytes),
            ]
        }),
    )?;
    family(
        e,
        "gannet_endpoint_dropped_packets",
        "Packets a pod sent that the pod program dropped, by reason: source (not one of the \
         pod's addresses), neighbour (ARP or neighbour advertisement for an address not its own).",
        MetricType::Counter,
        traffic.iter().flat_map(|t| {
            [
                (labels(t, "reason", "source"), t.dropped_source),
                (labels(t, "reason", "neighbour"), t.dropped_neighbour),
            ]
        }),
    )
}

/// The readings of a scrape: what `plane` counts (its services and backends), with the eBPF
/// data plane's maps (`ebpf`) the maps' use and the kernel programs' counters, the registered
/// endpoints, and the control-plane watches (`watches`, when services come from one).
#[must_use]
pub fn readings(
    counts: Counts,
    ebpf: Option<(&BpfMaps, &PodFastPath)>,
    registry: &crate::endpoints::Registry,
    watches: Option<&WatchStats>,
) -> Snapshot {
    let records = registry.records();
    let mut snapshot = Snapshot {
        counts,
        endpoints: as_u64(records.len()),
        control: watches.map(|w| ControlReadings {
            reconnects: w
                .reconnects()
                .iter()
                .map(|(kind, n)| (kind.to_string(), *n))
                .collect(),
            last_event: w.last_event(),
        }),
        ..Snapshot::default()
    };
    let Some((maps, fast_path)) = ebpf else {
        return snapshot;
    };
    let capacity = maps.capacity();
    let (conntrack, conntrack_capacity) = fast_path.nodeport.swept_usage();
    let addresses: usize = records.values().map(|r| r.ips.len()).sum();
    snapshot.maps = [
        ("services", counts.frontends, capacity.services),
        ("backends", counts.backends, capacity.backends),
        ("slots", counts.slots, capacity.slots),
        // One table per external frontend; the outer map is sized like the service map.
        ("maglev", counts.tables, capacity.services),
        ("affinity", maps.affinity_len(), capacity.affinity),
        ("rev_nat", maps.rev_nat_len(), capacity.rev_nat),
        ("endpoints", addresses, capacity.endpoints),
        ("conntrack", conntrack, conntrack_capacity),
    ]
    .map(|(map, used, capacity)| (map, as_u64(used), u64::from(capacity)))
    .to_vec();
    snapshot.nodeport = fast_path.nodeport.stats().ok();
    snapshot.traffic = records
        .values()
        .map(|record| {
            let stats = fast_path.stats(record.host_if_index).unwrap_or_default();
            let drops = fast_path.drops(record.host_if_index);
            let pod = record.pod.as_deref().unwrap_or_default();
            let (namespace, pod) = pod.split_once('/').unwrap_or(("", pod));
            EndpointTraffic {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                interface: record.host_if_name.clone(),
                rx_packets: stats.rx_packets,
                rx_bytes: stats.rx_bytes,
                tx_packets: stats.tx_packets,
                tx_bytes: stats.tx_bytes,
                dropped_source: drops.source,
                dropped_neighbour: drops.neighbour,
            }
        })
        .collect();
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn names_follow_prometheus_conventions_and_values_show() {
        let (metrics, registry) = Metrics::new("ebpf");
        metrics.applied(true, Duration::from_millis(3));
        metrics.applied(false, Duration::from_millis(1));
        metrics.cni_request(Some("register"), true);
        metrics.cni_request(None, true);
        metrics.set_snapshot(Snapshot {
            maps: vec![("services", 2, 65_536)],
            counts: Counts {
                frontends: 2,
                backends: 3,
                ..Counts::default()
            },
            control: Some(ControlReadings {
                reconnects: vec![("Service".to_owned(), 1)],
                last_event: Some(1_700_000_000.5),
            }),
            endpoints: 1,
            traffic: vec![EndpointTraffic {
                namespace: "default".to_owned(),
                pod: "web-1".to_owned(),
                interface: "veth1".to_owned(),
                rx_packets: 7,
                ..EndpointTraffic::default()
            }],
            nodeport: Some(NodePortStats {
                forwarded: 9,
                ..NodePortStats::default()
            }),
        });
        let text = render(&registry);
        for line in [
            "gannet_agent_info{version=\"0.1.0\",dataplane=\"ebpf\"} 1",
            "gannet_dataplane_apply_duration_seconds_count{kind=\"full\"} 1",
            "gannet_dataplane_apply_duration_seconds_count{kind=\"incremental\"} 1",
            "gannet_cni_requests_total{operation=\"register\",result=\"ok\"} 1",
            "gannet_map_full_total{map=\"nodes\"} 0",
            "gannet_map_entries{map=\"services\"} 2",
            "gannet_map_capacity{map=\"services\"} 65536",
            "gannet_service_frontends 2",
            "gannet_service_backends 3",
            "gannet_cni_endpoints 1",
            "gannet_control_watch_reconnects_total{kind=\"Service\"} 1",
            "gannet_control_last_event_timestamp_seconds 1700000000.5",
            "gannet_endpoint_packets_total{namespace=\"default\",pod=\"web-1\",interface=\"veth1\",direction=\"rx\"} 7",
            "gannet_nodeport_packets_total{event=\"forwarded\"} 9",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "expected the line {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn map_labels_name_roles() {
        assert_eq!(map_label(gannet_common::map_names::SERVICES), "services");
        assert_eq!(map_label(gannet_common::map_names::CONNTRACK), "conntrack");
        assert_eq!(map_label("service slots"), "service_slots");
    }
}
