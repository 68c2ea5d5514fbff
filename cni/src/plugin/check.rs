//! `CHECK`: the pod's interface, addresses and routes against `prevResult`, and the agent's
//! registration.

use std::path::Path;

use crate::agent_api::{self, RequestBody};
use crate::config::Attachment;
use crate::net::Cidr;
use crate::netlink::Netlink;
use crate::network::{self, Expected, host_if_name};
use crate::spec::{CniError, CniResult, CniVersion, code};

use super::{Plugin, internal, ipam_error};

impl Plugin<'_> {
    pub(super) fn check(&self) -> Result<(), CniError> {
        let attachment = self.attachment();
        let prev = self.conf.prev_result.clone().ok_or_else(|| {
            CniError::new(
                code::INVALID_NETWORK_CONFIG,
                "network configuration: CHECK needs `prevResult`",
            )
        })?;
        let result = CniResult::from_value(prev).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("network configuration: field `prevResult`: {e}"),
            )
        })?;
        let netns_path = self.env.netns.clone().unwrap_or_default();
        let mismatch = |diffs: Vec<String>| {
            CniError::new(
                code::CHECK_MISMATCH,
                format!(
                    "CHECK found {} difference(s): {}",
                    diffs.len(),
                    diffs.join("; ")
                ),
            )
        };
        let Some(pod_index) = result
            .interfaces
            .iter()
            .position(|i| i.name == attachment.ifname && Path::new(&i.sandbox) == netns_path)
        else {
            return Err(mismatch(vec![format!(
                "prevResult has no interface {} in sandbox {}",
                attachment.ifname,
                netns_path.display()
            )]));
        };
        let host_name = host_if_name(&self.conf.name, &attachment);
        let host_mac = result
            .interfaces
            .iter()
            .find(|i| i.name == host_name && i.sandbox.is_empty())
            .map(|i| i.mac.clone())
            .unwrap_or_default();
        let ips: Vec<Cidr> = result
            .ips
            .iter()
            .filter(|ip| ip.interface == Some(pod_index))
            .map(|ip| Cidr::host(ip.address.addr()))
            .collect();
        let (netns_path, netns_file) = match self.open_netns() {
            Ok(ns) => ns,
            Err(e) => return Err(mismatch(vec![e.msg])),
        };
        let extra_routes = self.extra_routes();
        let mut host = Netlink::open().map_err(internal)?;
        let mut diffs = network::check(
            &mut host,
            &Expected {
                network: &self.conf.name,
                attachment: &attachment,
                netns_path: &netns_path,
                netns: &netns_file,
                pod_mac: &result.interfaces[pod_index].mac,
                host_mac: &host_mac,
                ips: &ips,
                extra_routes: &extra_routes,
            },
        )
        .map_err(internal)?;
        self.check_agent(&mut host, &attachment, &host_name, &mut diffs)?;
        if self.conf.builtin_ipam() {
            let mut allocated: Vec<String> = self
                .store()
                .lookup(&attachment)
                .map_err(|e| ipam_error(&e))?
                .iter()
                .map(ToString::to_string)
                .collect();
            let mut expected: Vec<String> = ips.iter().map(|ip| ip.addr().to_string()).collect();
            allocated.sort();
            expected.sort();
            if allocated != expected {
                diffs.push(format!(
                    "the IPAM store holds [{}] for {}/{}, the result says [{}]",
                    allocated.join(", "),
                    attachment.container_id,
                    attachment.ifname,
                    expected.join(", ")
                ));
            }
        } else {
            let delegate = self.delegate()?;
            let version = delegate.negotiate(self.version)?;
            if version >= CniVersion::V0_4_0
                && let Err(e) = delegate.call("CHECK", self.raw, version)
            {
                diffs.push(e.to_string());
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(mismatch(diffs))
        }
    }

    /// `CHECK`'s question to the agent (when the configuration names its socket): does it still
    /// know this attachment, on the host interface that is there now? A refusal is a
    /// difference; an agent that does not answer fails `CHECK` with code 11 (try again later).
    fn check_agent(
        &self,
        host: &mut Netlink,
        attachment: &Attachment,
        host_name: &str,
        diffs: &mut Vec<String>,
    ) -> Result<(), CniError> {
        if self.conf.agent_socket.is_none() {
            return Ok(());
        }
        // Without the host interface there is nothing to ask about: `network::check` says so.
        let Some(link) = host.link_by_name(host_name).map_err(internal)? else {
            return Ok(());
        };
        match self.agent_call(RequestBody::Check {
            network: self.conf.name.clone(),
            container_id: attachment.container_id.clone(),
            if_name: attachment.ifname.clone(),
            host_if_name: host_name.to_owned(),
            host_if_index: link.index,
        }) {
            Ok(()) => Ok(()),
            Err(agent_api::AgentError::Refused(reason)) => {
                diffs.push(format!("the gannet agent: {reason}"));
                Ok(())
            }
            Err(e) => Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("asking the gannet agent about the endpoint: {e}"),
            )),
        }
    }
}
