//! `ADD`: addresses, the veth pair and the pod's side, the agent told, the result.

use tracing::{info, warn};

use crate::agent_api::{self, Endpoint, RequestBody};
use crate::config::{Attachment, DEFAULT_MTU, parse_requests};
use crate::net::Cidr;
use crate::netlink::{Netlink, format_mac};
use crate::network::{self, PodSpec, gateway_for};
use crate::spec::{CniError, CniResult, Interface, IpConfig, Route, code};

use super::{Plugin, internal, ipam_error_for};

impl Plugin<'_> {
    pub(super) fn add(&self) -> Result<CniResult, CniError> {
        let attachment = self.attachment();
        let (netns_path, netns_file) = self.open_netns()?;
        if let Err(e) = self.agent_call(RequestBody::Status) {
            return Err(CniError::new(
                code::TRY_AGAIN_LATER,
                format!("the gannet agent is not ready: {e}"),
            ));
        }
        let requests = parse_requests(self.conf, self.env)?;
        if !requests.ips.is_empty() || requests.mac.is_some() {
            info!(
                ips = requests
                    .ips
                    .iter()
                    .map(|(ip, from)| format!("{ip} ({from})"))
                    .collect::<Vec<_>>()
                    .join(","),
                mac = requests
                    .mac
                    .as_ref()
                    .map(|(mac, from)| tracing::field::display(format!(
                        "{} ({from})",
                        format_mac(mac)
                    ))),
                "requested by the runtime"
            );
        }
        let mut host = Netlink::open().map_err(internal)?;
        // Addresses.
        let (ips, mtu) = if self.conf.builtin_ipam() {
            let pool = self.pool(true)?;
            let requested: Vec<std::net::IpAddr> = requests.ips.iter().map(|(ip, _)| *ip).collect();
            let ips = self
                .store()
                .allocate(&pool.ranges, &attachment, &requested)
                .map_err(|e| ipam_error_for(&e, &requests))?;
            (ips, pool.mtu)
        } else {
            let delegate = self.delegate()?;
            let version = delegate.negotiate(self.version)?;
            let out = delegate.call("ADD", self.raw, version)?.ok_or_else(|| {
                CniError::new(
                    code::INTERNAL,
                    format!("IPAM plugin {} returned no result", self.conf.ipam_type()),
                )
            })?;
            let result = CniResult::from_value(out).map_err(|e| {
                CniError::new(
                    code::DECODING_FAILURE,
                    format!("IPAM plugin {}: invalid result: {e}", self.conf.ipam_type()),
                )
            })?;
            let ips: Vec<Cidr> = result
                .ips
                .iter()
                .map(|ip| Cidr::host(ip.address.addr()))
                .collect();
            (ips, self.conf.mtu.unwrap_or(DEFAULT_MTU))
        };
        info!(
            ips = ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            "addresses reserved"
        );
        self.pause("after-ipam");
        let extra_routes = self.extra_routes();
        let spec = PodSpec {
            network: &self.conf.name,
            attachment: &attachment,
            netns_path: &netns_path,
            netns: &netns_file,
            ips: &ips,
            mtu,
            extra_routes: &extra_routes,
            pod_mac: requests.mac.as_ref().map(|(mac, _)| &mac[..]),
        };
        let links = match network::setup(&mut host, &spec) {
            Ok(links) => links,
            Err(e) => {
                self.release_addresses(&attachment);
                return Err(CniError::new(
                    code::INTERNAL,
                    format!("setting up the pod interface: {e}"),
                ));
            }
        };
        self.pause("after-veth");
        let endpoint = Endpoint {
            network: self.conf.name.clone(),
            container_id: attachment.container_id.clone(),
            if_name: attachment.ifname.clone(),
            netns: netns_path.clone(),
            ips: ips.clone(),
            mac: format_mac(&links.pod.mac),
            host_if_name: links.host.name.clone(),
            host_if_index: links.host.index,
            host_mac: format_mac(&links.host.mac),
            pod_namespace: self.env.pod_namespace().map(str::to_owned),
            pod_name: self.env.pod_name().map(str::to_owned),
        };
        if let Err(e) = self.agent_call(RequestBody::Register { endpoint }) {
            let _ = network::teardown(&mut host, &self.conf.name, &attachment);
            self.release_addresses(&attachment);
            // A refusal is the agent's answer to this request; anything else (no answer, a
            // garbled one) may pass.
            let code = match e {
                agent_api::AgentError::Refused(_) => code::AGENT_REFUSED,
                _ => code::TRY_AGAIN_LATER,
            };
            return Err(CniError::new(
                code,
                format!("registering the endpoint with the gannet agent: {e}"),
            ));
        }
        let mut ours = CniResult {
            cni_version: String::new(),
            interfaces: vec![
                Interface {
                    name: links.host.name.clone(),
                    mac: format_mac(&links.host.mac),
                    mtu: Some(mtu),
                    ..Interface::default()
                },
                Interface {
                    name: attachment.ifname.clone(),
                    mac: format_mac(&links.pod.mac),
                    sandbox: netns_path.display().to_string(),
                    mtu: Some(mtu),
                    ..Interface::default()
                },
            ],
            ips: ips
                .iter()
                .map(|ip| IpConfig {
                    version: None,
                    address: *ip,
                    gateway: Some(gateway_for(ip.addr())),
                    interface: Some(1),
                })
                .collect(),
            routes: Vec::new(),
            dns: self.conf.dns.clone().unwrap_or_default(),
        };
        let mut families: Vec<bool> = ips.iter().map(Cidr::is_ipv4).collect();
        families.dedup();
        for v4 in families {
            let gw = gateway_for(if v4 {
                "0.0.0.0".parse().expect("ip")
            } else {
                "::".parse().expect("ip")
            });
            let default = if v4 { "0.0.0.0/0" } else { "::/0" };
            for dst in std::iter::once(default.parse::<Cidr>().expect("cidr")).chain(
                extra_routes
                    .iter()
                    .filter(|r| r.is_ipv4() == v4)
                    .map(Cidr::truncated),
            ) {
                ours.routes.push(Route {
                    dst,
                    gw: Some(gw),
                    mtu: None,
                    advmss: None,
                    priority: None,
                    table: None,
                    scope: None,
                });
            }
        }
        let result = match &self.conf.prev_result {
            Some(prev) => {
                let mut merged = CniResult::from_value(prev.clone()).map_err(|e| {
                    CniError::new(
                        code::DECODING_FAILURE,
                        format!("network configuration: field `prevResult`: {e}"),
                    )
                })?;
                merged.append(ours);
                merged
            }
            None => ours,
        };
        info!(host_if = %links.host.name, "pod interface ready");
        Ok(result)
    }

    /// Best-effort release after a failed ADD.
    fn release_addresses(&self, attachment: &Attachment) {
        let outcome = if self.conf.builtin_ipam() {
            self.store()
                .release(attachment)
                .map(drop)
                .map_err(|e| e.to_string())
        } else {
            self.delegate()
                .and_then(|d| {
                    let version = d.negotiate(self.version)?;
                    d.call("DEL", self.raw, version).map(drop)
                })
                .map_err(|e| e.to_string())
        };
        if let Err(e) = outcome {
            warn!(error = %e, "releasing the addresses after a failed ADD");
        }
    }
}
