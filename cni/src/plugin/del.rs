//! `DEL`: the agent told, the pair retired, the addresses released, the pair reaped.

use tracing::{info, warn};

use crate::agent_api::RequestBody;
use crate::netlink::Netlink;
use crate::netns;
use crate::network::{self, PodNetns, Retired};
use crate::reaper;
use crate::spec::CniError;

use super::{Plugin, internal, ipam_error};

impl Plugin<'_> {
    pub(super) fn del(&self) -> Result<(), CniError> {
        let attachment = self.attachment();
        if let Err(e) = self.agent_call(RequestBody::Unregister {
            network: self.conf.name.clone(),
            container_id: attachment.container_id.clone(),
            if_name: attachment.ifname.clone(),
        }) {
            warn!(error = %e, "unregistering from the gannet agent failed; it will reconcile");
        }
        let mut host = Netlink::open().map_err(internal)?;
        let pod_ns = self
            .env
            .netns
            .as_ref()
            .map(|path| (path, netns::open(path)));
        let pod = match &pod_ns {
            None => PodNetns::Unknown,
            Some((path, Ok(file))) => PodNetns::Open(path, file),
            Some((_, Err(_))) => PodNetns::Gone,
        };
        // Out of service now (down, no routes, names free); deleted by a detached process.
        let retired =
            network::retire(&mut host, &self.conf.name, &attachment, pod).map_err(internal)?;
        drop(pod_ns);
        let released = self.release_for_del(&retired);
        // Even if the addresses could not be released: a retried DEL would not find the pair.
        if let Retired::Tombstone(name) = &retired {
            self.pause("before-reap");
            if let Err(e) = reaper::delete_links_detached(std::slice::from_ref(name)) {
                warn!(link = %name, error = %e, "cannot start the deletion process; deleting now");
                if let Ok(Some(link)) = host.link_by_name(name) {
                    host.delete_link(link.index).map_err(internal)?;
                }
            }
        }
        released
    }

    /// DEL's address release (built in or delegated).
    fn release_for_del(&self, retired: &Retired) -> Result<(), CniError> {
        if self.conf.builtin_ipam() {
            let released = self
                .store()
                .release(&self.attachment())
                .map_err(|e| ipam_error(&e))?;
            info!(link = %retired, released = released.iter().map(ToString::to_string).collect::<Vec<_>>().join(","), "deleted");
        } else {
            let delegate = self.delegate()?;
            let version = delegate.negotiate(self.version)?;
            delegate.call("DEL", self.raw, version)?;
            info!(link = %retired, "deleted");
        }
        Ok(())
    }
}
