//! The programming measurement in `results.md`: its goal rows and its section (full sync,
//! incremental changes, latencies).

use std::fmt::Write as _;

use crate::results::Programming;
use crate::scenario::stats::{format_ms, latency_header, latency_row};

use crate::scenario::goal::verdict;

use super::{
    GOAL_CHANGE_P99_MS, GOAL_PROGRAMMING_SPEEDUP, GOAL_SERVICES, format_bytes, format_seconds,
    format_services, thousands,
};

/// The goal rows of the programming measurement (as rows of the goals table).
pub(super) fn programming_goals(out: &mut String, programming: Option<&Programming>) {
    let Some(p) = programming else {
        let _ = writeln!(
            out,
            "| gannet-nft programs {0} services × 10 endpoints ≥ {GOAL_PROGRAMMING_SPEEDUP:.0}× \
             faster than `nft -f` of kube-proxy's rules | – | not measured |\n\
             | gannet-nft: one endpoint change p99 < {GOAL_CHANGE_P99_MS:.0} ms | – | not \
             measured |",
            format_services(GOAL_SERVICES)
        );
        return;
    };
    let size = format!(
        "{} services × {} endpoints",
        format_services(p.services),
        p.endpoints_per_service
    );
    let (measured, met) = match p.speedup() {
        Some((speedup, lower_bound)) => (
            format!(
                "{}{speedup:.1}× (gannet-nft {}, `nft -f` {}{})",
                if lower_bound { "> " } else { "" },
                format_seconds(p.gannet_nft_seconds),
                if lower_bound { "killed after " } else { "" },
                format_seconds(p.kube_proxy_nft.seconds().map_or(0.0, |(s, _)| s)),
            ),
            Some(speedup >= GOAL_PROGRAMMING_SPEEDUP),
        ),
        None => ("–".to_owned(), None),
    };
    let _ = writeln!(
        out,
        "| gannet-nft programs {size} ≥ {GOAL_PROGRAMMING_SPEEDUP:.0}× faster than `nft -f` of \
         kube-proxy's rules | {measured} | {} |",
        verdict(met)
    );
    for (source, latency, made) in [
        (
            "through gannet-control",
            &p.control_change_latency,
            "gRPC Apply of the slice",
        ),
        (
            "through the manifest directory",
            &p.change_latency,
            "slice file renamed",
        ),
    ] {
        let (measured, met) = match latency {
            Some(latency) => (
                format!(
                    "{} ({} changes, {size})",
                    format_ms(latency.table.p99_ms),
                    latency.table.count
                ),
                Some(latency.table.p99_ms < GOAL_CHANGE_P99_MS),
            ),
            None => ("–".to_owned(), None),
        };
        let _ = writeln!(
            out,
            "| gannet-nft: one endpoint change p99 < {GOAL_CHANGE_P99_MS:.0} ms, {source} ({made} \
             → element in the table) | {measured} | {} |",
            verdict(met)
        );
    }
}

/// The section of the programming measurement.
pub(super) fn programming_section(out: &mut String, p: &Programming, sync_interval_ms: u64) {
    let _ = writeln!(
        out,
        "## Programming {} services × {} endpoints, and endpoint changes (gannet-nft)\n\n\
         | | time | |\n|---|---:|---|",
        format_services(p.services),
        p.endpoints_per_service
    );
    let _ = writeln!(
        out,
        "| gannet-nft: manifests written → gannetd logged every service programmed | {} | its \
         table then held {} frontends, {} of them with a backend in the last slot; manifests {} |",
        format_seconds(p.gannet_nft_seconds),
        thousands(p.table.services as f64),
        thousands(p.table.last_slot_addresses as f64),
        format_bytes(p.manifest_bytes)
    );
    if let Some(seconds) = p.control_sync_seconds {
        let _ = writeln!(
            out,
            "| gannet-nft watching gannet-control (which held the services): gannetd started → \
             every service programmed | {} | |",
            format_seconds(seconds)
        );
    }
    let nft = match &p.kube_proxy_nft {
        crate::control::report::PeerLoad::Done {
            seconds,
            user_seconds,
            system_seconds,
            input_bytes,
            ..
        } => format!(
            "| `nft -f` of kube-proxy's rules | {} | user {}, sys {}; rules {} |",
            format_seconds(*seconds),
            format_seconds(*user_seconds),
            format_seconds(*system_seconds),
            format_bytes(*input_bytes)
        ),
        crate::control::report::PeerLoad::TimedOut {
            timeout_seconds,
            input_bytes,
        } => format!(
            "| `nft -f` of kube-proxy's rules | > {} (killed) | rules {} |",
            format_seconds(*timeout_seconds),
            format_bytes(*input_bytes)
        ),
        crate::control::report::PeerLoad::Skipped => {
            "| `nft -f` of kube-proxy's rules | – | not run |".to_owned()
        }
    };
    let _ = writeln!(out, "{nft}");
    if let Some((speedup, lower_bound)) = p.speedup() {
        let _ = writeln!(
            out,
            "| `nft -f` ÷ gannet-nft | {}{speedup:.1}× | |",
            if lower_bound { "> " } else { "" }
        );
    }
    let _ = writeln!(
        out,
        "\nBoth into an empty node namespace of their own. gannet-nft: from writing the manifest \
         files (every Service, and every EndpointSlice) until gannetd's `services synced` line \
         (it scans the directory every {sync_interval_ms} ms); its table was then read back. \
         `nft -f`: the same services as kube-proxy's nftables mode programs them, wall-clock \
         time and CPU time.\n"
    );
    if p.change_latency.is_none() && p.control_change_latency.is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "Endpoint changes, one at a time: one endpoint address of one service's EndpointSlice \
         replaced by a fresh address, timed until `nft monitor` in the node namespace reported \
         the new element of the slot's address map (the kernel committed it). Through the \
         manifest directory: the slice's own file renamed into the directory, at a random moment \
         of gannetd's {sync_interval_ms} ms scan cycle; gannetd reads that file, joins again only \
         the Service it touches and programs the frontends that changed. Through \
         gannet-control: the changed slice applied with the gRPC Apply (as `gannetctl apply` \
         does) to a gannet-control holding the same services, watched by a fresh gannetd \
         (`--control`), which gets the change of one service.\n"
    );
    latency_header(out, "latency");
    if let Some(latency) = &p.control_change_latency {
        latency_row(
            out,
            "**gannet-control: Apply called → element in the table**",
            Some(&latency.table),
        );
        latency_row(
            out,
            "gannet-control: the Apply call alone",
            latency.call.as_ref(),
        );
        latency_row(
            out,
            "gannet-control: Apply called → `services synced` logged",
            Some(&latency.logged),
        );
    }
    if let Some(latency) = &p.change_latency {
        latency_row(
            out,
            "**manifest directory: slice renamed → element in the table**",
            Some(&latency.table),
        );
        latency_row(
            out,
            "manifest directory: slice renamed → gannetd reads it (its scan interval)",
            latency.noticed.as_ref(),
        );
        latency_row(
            out,
            "manifest directory: gannetd reads it → element in the table",
            latency.after_noticed.as_ref(),
        );
        latency_row(
            out,
            "manifest directory: slice renamed → `services synced` logged",
            Some(&latency.logged),
        );
    }
    out.push_str("\nPercentiles are nearest-rank: always a measured value.\n\n");
}
