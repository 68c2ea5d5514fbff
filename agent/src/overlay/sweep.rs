//! The sweep after a start: what gannetd owns in the kernel that no node needs any more is
//! removed once the first complete node list is programmed (routes of [`ROUTE_PROTOCOL`],
//! permanent neighbours and forwarding entries of the device, node-map entries).

use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{Entry, Overlay, ROUTE_PROTOCOL};

impl Overlay {
    /// Removes what gannetd owns in the kernel that no node needs: routes of
    /// [`ROUTE_PROTOCOL`], permanent neighbours and forwarding entries of the VXLAN device.
    pub(super) fn sweep(&mut self) {
        let wanted: Vec<&Entry> = self
            .programmed
            .values()
            .flat_map(|p| &p.plan.entries)
            .collect();
        let mut removed = 0;
        for ipv4 in [true, false] {
            let routes = match self.netlink.routes(ipv4) {
                Ok(routes) => routes,
                Err(error) => {
                    warn!(%error, "cannot list routes to remove stale ones");
                    continue;
                }
            };
            for route in routes.into_iter().filter(|r| r.protocol == ROUTE_PROTOCOL) {
                if self.is_cluster_route(&route) {
                    // Owned by `set_cluster`, not by any node.
                    continue;
                }
                let dst = IpNet::new(route.dst.addr(), route.dst.prefix()).ok();
                let needed = wanted
                    .iter()
                    .any(|e| matches!(e, Entry::Route { dst: d, .. } if Some(*d) == dst));
                if !needed {
                    match self.netlink.delete_route(route.dst, ROUTE_PROTOCOL) {
                        Ok(_) => removed += 1,
                        Err(error) => {
                            warn!(route = %route.dst, %error, "cannot remove a stale route");
                        }
                    }
                }
            }
        }
        if let Some(maps) = &mut self.tunnel {
            match maps.list() {
                Ok(entries) => {
                    for (cidr, _) in entries {
                        let needed = wanted
                            .iter()
                            .any(|e| matches!(e, Entry::Node { cidr: c, .. } if *c == cidr));
                        if !needed {
                            match maps.remove(cidr) {
                                Ok(_) => removed += 1,
                                Err(error) => {
                                    warn!(%cidr, %error, "cannot remove a stale node-map entry");
                                }
                            }
                        }
                    }
                }
                Err(error) => warn!(%error, "cannot list the node map"),
            }
        }
        if let Some(vtep) = self.vtep {
            match self.netlink.neighbours(vtep.index) {
                Ok(neighbours) => {
                    for n in neighbours.into_iter().filter(|n| n.permanent) {
                        let needed = wanted
                            .iter()
                            .any(|e| matches!(e, Entry::Neighbour { ip, .. } if *ip == n.ip));
                        if !needed && self.netlink.delete_neighbour(vtep.index, n.ip).is_ok() {
                            removed += 1;
                        }
                    }
                }
                Err(error) => warn!(%error, "cannot list the VXLAN device's neighbours"),
            }
            match self.netlink.fdb(vtep.index) {
                Ok(entries) => {
                    debug!(
                        entries = entries.len(),
                        "forwarding entries of the VXLAN device"
                    );
                    for f in entries {
                        let (Some(dst), Ok(mac)) = (f.dst, <[u8; 6]>::try_from(f.mac.as_slice()))
                        else {
                            continue;
                        };
                        if mac == [0; 6] {
                            continue;
                        }
                        if wanted.contains(&&Entry::Fdb { mac, dst }) {
                            continue;
                        }
                        match self.netlink.delete_fdb(vtep.index, &mac, dst) {
                            Ok(_) => removed += 1,
                            Err(error) => {
                                warn!(%error, "cannot remove a stale forwarding entry");
                            }
                        }
                    }
                }
                Err(error) => warn!(%error, "cannot list the VXLAN device's forwarding entries"),
            }
        }
        if removed > 0 {
            info!(removed, "removed overlay entries no node needs any more");
        }
    }
}
