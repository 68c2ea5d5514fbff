//! What every object shares: names (DNS labels and subdomains, RFC 1035 Service names), the
//! namespace, and labels (also a Service's selector), with the port name rules beside them.

use gannet_api::Kind;
use gannet_k8s::FieldProblem;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::problem;

/// RFC 1123 label: at most 63 lowercase alphanumerics or `-`, starting and ending alphanumeric.
pub(super) fn is_dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub(super) fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

/// RFC 1035 label (Service names): a DNS label that starts with a letter.
fn is_dns1035_label(text: &str) -> bool {
    is_dns_label(text) && text.starts_with(|c: char| c.is_ascii_lowercase())
}

/// `IANA_SVC_NAME`: at most 15 lowercase alphanumerics or `-`, with a letter, no `--`, not
/// starting or ending with `-`.
pub(super) fn is_port_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 15
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.bytes().any(|b| b.is_ascii_lowercase())
        && !text.contains("--")
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// A label value: at most 63 alphanumerics, `-`, `_` or `.`, starting and ending alphanumeric.
fn is_label_value(text: &str) -> bool {
    text.is_empty()
        || (text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name like a label value.
pub(super) fn is_label_key(text: &str) -> bool {
    let (prefix, name) = match text.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

pub(super) fn validate_labels(
    labels: Option<&std::collections::BTreeMap<String, String>>,
    field: &str,
    problems: &mut Vec<FieldProblem>,
) {
    for (key, value) in labels.into_iter().flatten() {
        if !is_label_key(key) {
            problems.push(problem(
                format!("{field}[{key:?}]"),
                "is not a valid label key (a DNS subdomain prefix and '/', then at most 63 \
                 alphanumerics, '-', '_' or '.')",
            ));
        }
        if !is_label_value(value) {
            problems.push(problem(
                format!("{field}[{key:?}]"),
                format!(
                    "{value:?} is not a valid label value (at most 63 alphanumerics, '-', '_' or \
                     '.', starting and ending alphanumeric)"
                ),
            ));
        }
    }
}

pub(super) fn validate_meta(kind: Kind, meta: &ObjectMeta) -> Vec<FieldProblem> {
    let mut problems = Vec::new();
    match meta.name.as_deref().filter(|name| !name.is_empty()) {
        None => problems.push(problem("metadata.name", "must be set")),
        Some(name) if kind == Kind::Service && !is_dns1035_label(name) => problems.push(problem(
            "metadata.name",
            format!(
                "{name:?} is not a valid Service name: at most 63 lowercase letters, digits or \
                 '-', starting with a letter"
            ),
        )),
        Some(name) if !is_dns_subdomain(name) => problems.push(problem(
            "metadata.name",
            format!(
                "{name:?} is not a valid name: lowercase letters, digits, '-' and '.', at most 253"
            ),
        )),
        Some(_) => {}
    }
    if kind.namespaced()
        && let Some(namespace) = meta.namespace.as_deref().filter(|ns| !ns.is_empty())
        && !is_dns_label(namespace)
    {
        problems.push(problem(
            "metadata.namespace",
            format!("{namespace:?} is not a valid namespace: at most 63 lowercase letters, digits or '-'"),
        ));
    }
    validate_labels(meta.labels.as_ref(), "metadata.labels", &mut problems);
    problems
}
