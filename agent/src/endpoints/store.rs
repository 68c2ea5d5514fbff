//! `endpoints.json`: written atomically and durably; when it is empty or corrupt, the registry
//! is rebuilt from the pod veths gannet-cni made (their alias names the attachment) and the
//! addresses the fast path (or the host's routes) hold for them.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use gannet_cni::{agent_api, network as cni_net};
use tracing::error;

use super::Record;
use crate::datapath::pods::PodFastPath;

/// What reading the file gave.
pub(super) enum Read {
    /// The records it holds.
    Records(BTreeMap<String, Record>),
    /// No file (a first start, or removed by hand).
    Absent,
    /// An empty or unparsable file; the reason.
    Corrupt(String),
}

pub(super) fn read(path: &Path) -> io::Result<Read> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::Absent),
        Err(e) => return Err(e),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Read::Corrupt("the file is empty".to_owned()));
    }
    Ok(match serde_json::from_slice(&bytes) {
        Ok(records) => Read::Records(records),
        Err(e) => Read::Corrupt(e.to_string()),
    })
}

/// Writes `records` to `path` so that a crash leaves either the old or the new file: a
/// temporary file, synced, renamed over `path`, and the directory synced.
pub(super) fn write(path: &Path, records: &BTreeMap<String, Record>) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(records).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

/// Moves a corrupt registry aside (`endpoints.json.corrupt`, for whoever investigates) and
/// says where it went.
pub(super) fn set_aside(path: &Path) -> String {
    let aside = path.with_extension("json.corrupt");
    match fs::rename(path, &aside) {
        Ok(()) => aside.display().to_string(),
        Err(e) => {
            error!(file = %path.display(), error = %e, "cannot move the corrupt endpoint registry aside");
            path.display().to_string()
        }
    }
}

/// The endpoints on this node's pod veths: every host interface named and aliased by
/// gannet-cni for an attachment, with the addresses the fast path holds for it (eBPF) or the
/// host routes pointing at it (nftables). The pod names are not known.
pub(super) fn rebuild(fast_path: Option<&PodFastPath>) -> io::Result<BTreeMap<String, Record>> {
    let mut netlink = gannet_cni::netlink::Netlink::open().map_err(io::Error::other)?;
    let links = netlink.links().map_err(io::Error::other)?;
    let pinned = fast_path.map(PodFastPath::endpoints);
    let mut routes = Vec::new();
    if pinned.is_none() {
        for v4 in [true, false] {
            routes.extend(netlink.routes(v4).map_err(io::Error::other)?);
        }
    }
    let mut records = BTreeMap::new();
    for link in links {
        let Some((network, attachment)) = link.alias.as_deref().and_then(cni_net::parse_alias)
        else {
            continue;
        };
        if link.kind.as_deref() != Some("veth")
            || link.name != cni_net::host_if_name(&network, &attachment)
        {
            continue;
        }
        let ips: Vec<IpAddr> = match &pinned {
            Some(pinned) => pinned
                .get(&link.index)
                .into_iter()
                .flatten()
                .map(|addr| {
                    let v6 = Ipv6Addr::from(*addr);
                    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
                })
                .collect(),
            None => routes
                .iter()
                .filter(|r| {
                    r.oif == Some(link.index)
                        && r.gw.is_none()
                        && r.dst.prefix() == if r.dst.addr().is_ipv4() { 32 } else { 128 }
                })
                .map(|r| r.dst.addr())
                .collect(),
        };
        if ips.is_empty() {
            // Never registered (or its registration failed): not an endpoint.
            continue;
        }
        let key = agent_api::attachment_key(&network, &attachment.container_id, &attachment.ifname);
        records.insert(
            key,
            Record {
                host_if_name: link.name,
                host_if_index: link.index,
                ips,
                pod: None,
            },
        );
    }
    Ok(records)
}
