//! `EndpointSlices`: address type, endpoints, ports.

use super::service::{check_port_number, check_protocol};
use super::*;

/// An `EndpointSlice` that can feed backends.
#[derive(Debug)]
pub(crate) struct ValidSlice {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The Service named by the `kubernetes.io/service-name` label.
    pub(crate) service_name: String,
    pub(crate) family: Family,
    pub(crate) ports: Vec<ValidSlicePort>,
    /// The endpoints that can take traffic, ready or serving and terminating, in slice order.
    pub(crate) endpoints: Vec<ValidEndpoint>,
}

/// An endpoint that can take traffic: ready, or (only used when no endpoint is ready) serving and
/// terminating. Endpoints that are neither are not kept.
#[derive(Debug)]
pub(crate) struct ValidEndpoint {
    /// The first address.
    pub(crate) ip: IpAddr,
    /// `false`: serving and terminating.
    pub(crate) ready: bool,
    /// `nodeName`, when set.
    pub(crate) node_name: Option<String>,
}

#[derive(Debug)]
pub(crate) struct ValidSlicePort {
    /// `""` when unnamed.
    pub(crate) name: String,
    /// `None`: the slice does not say, so the port cannot carry traffic for gannet.
    pub(crate) port: Option<u16>,
    pub(crate) protocol: Protocol,
}

/// Checks an `EndpointSlice` as the API server would, for the fields gannet uses.
pub(crate) fn check_slice(slice: &EndpointSlice) -> Result<Checked<ValidSlice>, Vec<FieldError>> {
    let mut errors = Vec::new();

    let family = match slice.address_type.as_str() {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        "FQDN" => {
            return Ok(Checked::Skip(
                "addressType FQDN: gannet balances to IP addresses only",
            ));
        }
        other => {
            errors.push(FieldError::at(
                "addressType",
                format!("{other:?} is not IPv4, IPv6 or FQDN"),
            ));
            None
        }
    };

    let name = non_empty(slice.metadata.name.as_deref());
    if name.is_none() {
        errors.push(FieldError::at("metadata.name", "must be set"));
    }
    let service_name = non_empty(
        slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL))
            .map(String::as_str),
    );
    if service_name.is_none() {
        errors.push(FieldError::at(
            format!("metadata.labels[{SERVICE_NAME_LABEL:?}]"),
            "must be set to the name of the Service this slice belongs to",
        ));
    }

    let endpoints = family
        .map(|family| check_endpoints(slice, family, &mut errors))
        .unwrap_or_default();
    let ports = check_slice_ports(slice, &mut errors);

    match (family, errors.is_empty()) {
        (Some(family), true) => Ok(Checked::Serve(ValidSlice {
            namespace: namespace_or_default(slice.metadata.namespace.as_deref()).to_owned(),
            name: name.unwrap_or_default().to_owned(),
            service_name: service_name.unwrap_or_default().to_owned(),
            family,
            ports,
            endpoints,
        })),
        _ => Err(errors),
    }
}

/// Checks every address and returns the endpoints that can take traffic, each by its first
/// address. Addresses of one endpoint are fungible, and like kube-proxy gannet uses only the first
/// (kubernetes/kubernetes#106267).
pub(super) fn check_endpoints(
    slice: &EndpointSlice,
    family: Family,
    errors: &mut Vec<FieldError>,
) -> Vec<ValidEndpoint> {
    let mut usable = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        if endpoint.addresses.is_empty() {
            errors.push(FieldError::at(
                format!("endpoints[{i}].addresses"),
                "at least one address is required",
            ));
        }
        let mut first = None;
        for (j, text) in endpoint.addresses.iter().enumerate() {
            match text.parse::<IpAddr>() {
                Ok(ip) if Family::of(ip) == family => {
                    first.get_or_insert(ip);
                }
                _ => errors.push(FieldError::at(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "{text:?} is not an {} address (addressType {})",
                        family.name(),
                        family.name()
                    ),
                )),
            }
        }
        // Kubernetes: "ready: nil should be interpreted as true", serving "nil should be
        // interpreted as ... the same as ready", terminating "nil should be interpreted as false".
        let conditions = endpoint.conditions.as_ref();
        let ready = conditions
            .and_then(|conditions| conditions.ready)
            .unwrap_or(true);
        let serving = conditions
            .and_then(|conditions| conditions.serving)
            .unwrap_or(ready);
        let terminating = conditions
            .and_then(|conditions| conditions.terminating)
            .unwrap_or(false);
        if (ready || (serving && terminating))
            && let Some(ip) = first
        {
            usable.push(ValidEndpoint {
                ip,
                ready,
                node_name: non_empty(endpoint.node_name.as_deref()).map(str::to_owned),
            });
        }
    }
    usable
}

pub(super) fn check_slice_ports(
    slice: &EndpointSlice,
    errors: &mut Vec<FieldError>,
) -> Vec<ValidSlicePort> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut valid = Vec::with_capacity(ports.len());
    for (k, port) in ports.iter().enumerate() {
        let field = format!("ports[{k}]");
        // Unset means "all ports" to some consumers; gannet cannot send traffic to such a port.
        let mut number_valid = true;
        let number = port.port.and_then(|number| {
            let checked = check_port_number(number, &format!("{field}.port"), errors);
            number_valid = checked.is_some();
            checked
        });
        let protocol = check_protocol(
            port.protocol.as_deref(),
            &format!("{field}.protocol"),
            errors,
        );
        let Some(protocol) = protocol.filter(|_| number_valid) else {
            continue;
        };
        let name = non_empty(port.name.as_deref()).unwrap_or_default();
        match names.entry(name) {
            Entry::Occupied(first) => errors.push(FieldError::at(
                format!("{field}.name"),
                format!("duplicate port name {name:?} (also ports[{}])", first.get()),
            )),
            Entry::Vacant(slot) => {
                slot.insert(k);
                valid.push(ValidSlicePort {
                    name: name.to_owned(),
                    port: number,
                    protocol,
                });
            }
        }
    }
    valid
}
