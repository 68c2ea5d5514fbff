//! `GC`: addresses and leftover links of attachments no longer valid.

use std::collections::HashSet;

use tracing::{info, warn};

use crate::agent_api::RequestBody;
use crate::config::Attachment;
use crate::netlink::Netlink;
use crate::network::{self, host_if_name};
use crate::spec::{CniError, CniVersion};

use super::{Plugin, internal, ipam_error};

impl Plugin<'_> {
    pub(super) fn gc(&self) -> Result<(), CniError> {
        let Some(valid) = self.conf.gc_attachments() else {
            warn!("GC without cni.dev/valid-attachments: nothing is removed");
            return Ok(());
        };
        let valid: HashSet<Attachment> = valid.iter().cloned().collect();
        let mut host = Netlink::open().map_err(internal)?;
        // Retired pairs whose deleting process died (or has not finished yet).
        for link in network::tombstones(&mut host, &self.conf.name).map_err(internal)? {
            info!(link = %link.name, "GC: removing a retired interface");
            host.delete_link(link.index).map_err(internal)?;
        }
        let mut stale: Vec<(crate::netlink::Link, Attachment)> =
            network::host_interfaces(&mut host, &self.conf.name).map_err(internal)?;
        if self.conf.builtin_ipam() {
            // An ADD killed between creating the pair and labelling it left a link without alias;
            // its name follows from the attachment its address record names.
            for record in self.store().list().map_err(|e| ipam_error(&e))? {
                if valid.contains(&record.attachment)
                    || stale.iter().any(|(_, a)| a == &record.attachment)
                {
                    continue;
                }
                let name = host_if_name(&self.conf.name, &record.attachment);
                if let Some(link) = host.link_by_name(&name).map_err(internal)? {
                    stale.push((link, record.attachment));
                }
            }
        }
        for (link, attachment) in stale {
            if valid.contains(&attachment) {
                continue;
            }
            info!(link = %link.name, container = %attachment.container_id, ifname = %attachment.ifname, "GC: removing a stale interface");
            host.delete_link(link.index).map_err(internal)?;
            if let Err(e) = self.agent_call(RequestBody::Unregister {
                network: self.conf.name.clone(),
                container_id: attachment.container_id.clone(),
                if_name: attachment.ifname.clone(),
            }) {
                warn!(error = %e, "GC: unregistering from the gannet agent failed");
            }
        }
        if self.conf.builtin_ipam() {
            let released = self.store().gc(&valid).map_err(|e| ipam_error(&e))?;
            for r in released {
                info!(ip = %r.ip, container = %r.attachment.container_id, ifname = %r.attachment.ifname, "GC: released");
            }
        } else {
            let delegate = self.delegate()?;
            let version = delegate.negotiate(self.version)?;
            if version >= CniVersion::V1_1_0 {
                delegate.call("GC", self.raw, version)?;
            } else {
                info!(plugin = %self.conf.ipam_type(), "the IPAM plugin predates GC; skipped");
            }
        }
        Ok(())
    }
}
