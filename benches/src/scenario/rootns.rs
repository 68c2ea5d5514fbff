//! A snapshot of the root network namespace (links, addresses, nftables, forwarding and ARP/ND
//! sysctls), taken before and after a run, to show that the scenario changed nothing there; and
//! the check written to `results.json` ([`RootCheck`]).
//!
//! Read from the harness's main thread, which never leaves the namespace it started in.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use serde::Serialize;

/// Per-interface sysctls that a CNI plugin sets (in its own namespaces); none may change here.
const IPV4_KEYS: [&str; 4] = ["forwarding", "arp_notify", "proxy_arp", "route_localnet"];
/// The IPv6 ones.
const IPV6_KEYS: [&str; 4] = ["forwarding", "accept_dad", "accept_ra", "disable_ipv6"];

/// What is compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Link names (`ip -br link`, without `@peer`).
    pub links: Vec<String>,
    /// `name address…` per link (`ip -br addr`, without the state column).
    pub addresses: Vec<String>,
    /// `nft list ruleset`.
    pub nft_ruleset: String,
    /// `net.ipv4.ip_forward` and the per-interface keys above, by dotted name.
    pub sysctls: BTreeMap<String, String>,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The link names in `ip -br link` output.
#[must_use]
pub fn parse_links(text: &str) -> Vec<String> {
    let mut links: Vec<String> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect();
    links.sort();
    links
}

/// `name address…` per line of `ip -br addr` output (the state column dropped: it is not ours to
/// keep still).
#[must_use]
pub fn parse_addresses(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let name = name.split('@').next().unwrap_or(name);
            let _state = words.next();
            let mut addrs: Vec<&str> = words.collect();
            addrs.sort_unstable();
            Some(if addrs.is_empty() {
                name.to_owned()
            } else {
                format!("{name} {}", addrs.join(" "))
            })
        })
        .collect();
    lines.sort();
    lines
}

fn read_sysctls() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut read = |path: &Path| {
        if let Ok(value) = fs::read_to_string(path) {
            let key = path
                .strip_prefix("/proc/sys")
                .unwrap_or(path)
                .to_string_lossy()
                .replace('/', ".");
            out.insert(key, value.trim().to_owned());
        }
    };
    read(Path::new("/proc/sys/net/ipv4/ip_forward"));
    for (family, keys) in [("ipv4", &IPV4_KEYS), ("ipv6", &IPV6_KEYS)] {
        let dir = Path::new("/proc/sys/net").join(family).join("conf");
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            for key in keys {
                read(&entry.path().join(key));
            }
        }
    }
    out
}

/// Takes a snapshot of the calling thread's network namespace (call it from the main thread).
///
/// # Errors
/// If `ip` or `nft` cannot be run.
pub fn take() -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        links: parse_links(&run("ip", &["-br", "link"])?),
        addresses: parse_addresses(&run("ip", &["-br", "addr"])?),
        nft_ruleset: run("nft", &["list", "ruleset"])?,
        sysctls: read_sysctls(),
    })
}

/// Whether the calling thread runs in PID 1's network namespace (compared by the `net:[inode]`
/// links); `None` if PID 1's link cannot be read (in some sandboxes even root may not).
#[must_use]
pub fn in_init_netns() -> Option<bool> {
    let own = fs::read_link("/proc/thread-self/ns/net").ok()?;
    let init = fs::read_link("/proc/1/ns/net").ok()?;
    Some(own == init)
}

fn set_diff(what: &str, before: &[String], after: &[String], out: &mut Vec<String>) {
    for item in after.iter().filter(|i| !before.contains(i)) {
        out.push(format!("{what} appeared: {item}"));
    }
    for item in before.iter().filter(|i| !after.contains(i)) {
        out.push(format!("{what} disappeared: {item}"));
    }
}

/// Everything that differs between `before` and `after`, one line each (empty: nothing).
#[must_use]
pub fn differences(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    set_diff("link", &before.links, &after.links, &mut out);
    set_diff("address", &before.addresses, &after.addresses, &mut out);
    if before.nft_ruleset != after.nft_ruleset {
        let lines = |text: &str| text.lines().map(str::to_owned).collect::<Vec<_>>();
        set_diff(
            "nftables line",
            &lines(&before.nft_ruleset),
            &lines(&after.nft_ruleset),
            &mut out,
        );
        if !out.iter().any(|l| l.starts_with("nftables")) {
            out.push("nftables ruleset changed (order only)".to_owned());
        }
    }
    for (key, value) in &after.sysctls {
        match before.sysctls.get(key) {
            Some(old) if old == value => {}
            Some(old) => out.push(format!("sysctl {key} changed: {old} → {value}")),
            None => out.push(format!("sysctl {key} appeared: {value}")),
        }
    }
    for key in before.sysctls.keys() {
        if !after.sysctls.contains_key(key) {
            out.push(format!("sysctl {key} disappeared"));
        }
    }
    out
}

/// What the root network namespace looked like before and after the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RootCheck {
    /// The harness ran in PID 1's network namespace (the machine's own); `None`: PID 1's
    /// namespace could not be read.
    pub in_init_netns: Option<bool>,
    /// The links there before the run.
    pub links: Vec<String>,
    /// Lines of `nft list ruleset` before the run.
    pub nft_ruleset_lines: usize,
    /// How many forwarding/ARP/ND sysctls were compared.
    pub sysctls_compared: usize,
    /// Everything that differed after the run (empty: nothing).
    pub differences: Vec<String>,
}

impl RootCheck {
    /// The check of a run, from the snapshot `before` it and the namespace now.
    ///
    /// # Errors
    /// When the namespace cannot be read.
    pub fn after(before: &Snapshot) -> anyhow::Result<RootCheck> {
        let after = take().context("reading the root network namespace again")?;
        Ok(RootCheck {
            in_init_netns: in_init_netns(),
            links: before.links.clone(),
            nft_ruleset_lines: before.nft_ruleset.lines().count(),
            sysctls_compared: before.sysctls.len(),
            differences: differences(before, &after),
        })
    }

    /// The check in a sentence of `results.md`: `compared before and after the run (…):
    /// unchanged` or what changed.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "compared before and after the run ({} links, {} lines of `nft list ruleset`, {} \
             sysctls): {}",
            self.links.len(),
            self.nft_ruleset_lines,
            self.sysctls_compared,
            if self.differences.is_empty() {
                "unchanged".to_owned()
            } else {
                format!("**changed**: {}", self.differences.join("; "))
            }
        )
    }

    /// Fails if the namespace changed during the run.
    ///
    /// # Errors
    /// Naming every difference.
    pub fn unchanged(&self) -> anyhow::Result<()> {
        if !self.differences.is_empty() {
            bail!(
                "the root network namespace changed during the run:\n  {}",
                self.differences.join("\n  ")
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_reads_as_a_sentence_and_fails_on_a_change() {
        let mut check = RootCheck {
            in_init_netns: Some(true),
            links: vec!["eth0".into(), "lo".into()],
            nft_ruleset_lines: 12,
            sysctls_compared: 9,
            differences: Vec::new(),
        };
        assert_eq!(
            check.summary(),
            "compared before and after the run (2 links, 12 lines of `nft list ruleset`, 9 \
             sysctls): unchanged"
        );
        assert!(check.unchanged().is_ok());
        check.differences = vec!["link appeared: veth0".into(), "ip_forward 0 → 1".into()];
        assert!(
            check
                .summary()
                .ends_with(": **changed**: link appeared: veth0; ip_forward 0 → 1"),
            "{}",
            check.summary()
        );
        let err = check.unchanged().expect_err("a change fails the run");
        assert_eq!(
            err.to_string(),
            "the root network namespace changed during the run:\n  link appeared: veth0\n  \
             ip_forward 0 → 1"
        );
    }

    const LINKS: &str = "lo               UNKNOWN        00:00:00:00:00:00 <LOOPBACK,UP,LOWER_UP> \n\
                         eth0             UP             02:fc:00:00:00:01 <BROADCAST,MULTICAST,UP,LOWER_UP> \n";
    const ADDRS: &str = "lo               UNKNOWN        127.0.0.1/8 ::1/128 \n\
                         eth0             UP             10.0.0.2/24 fe80::1/64 \n\
                         ifb0             DOWN           \n";

    fn snapshot() -> Snapshot {
        let mut sysctls = BTreeMap::new();
        sysctls.insert("net.ipv4.ip_forward".to_owned(), "0".to_owned());
        Snapshot {
            links: parse_links(LINKS),
            addresses: parse_addresses(ADDRS),
            nft_ruleset: "table inet x {\n}\n".to_owned(),
            sysctls,
        }
    }

    #[test]
    fn parses_brief_output() {
        assert_eq!(parse_links(LINKS), ["eth0", "lo"]);
        assert_eq!(
            parse_links("veth1234@if2      UP   aa:bb:cc:dd:ee:ff <UP>\n"),
            ["veth1234"]
        );
        assert_eq!(
            parse_addresses(ADDRS),
            [
                "eth0 10.0.0.2/24 fe80::1/64",
                "ifb0",
                "lo 127.0.0.1/8 ::1/128"
            ]
        );
    }

    #[test]
    fn unchanged_means_no_differences() {
        assert!(differences(&snapshot(), &snapshot()).is_empty());
        // A link going down is not a difference (the state column is ignored).
        let mut after = snapshot();
        after.addresses = parse_addresses(&ADDRS.replace("UP  ", "DOWN"));
        assert!(differences(&snapshot(), &after).is_empty());
    }

    #[test]
    fn reports_what_appeared_or_changed() {
        let mut after = snapshot();
        after.links.push("cni0".to_owned());
        after.nft_ruleset = "table inet x {\n}\ntable ip nat {\n}\n".to_owned();
        after
            .sysctls
            .insert("net.ipv4.ip_forward".to_owned(), "1".to_owned());
        after
            .sysctls
            .insert("net.ipv6.conf.cni0.accept_ra".to_owned(), "0".to_owned());
        let diffs = differences(&snapshot(), &after);
        assert_eq!(
            diffs,
            [
                "link appeared: cni0",
                "nftables line appeared: table ip nat {",
                "sysctl net.ipv4.ip_forward changed: 0 → 1",
                "sysctl net.ipv6.conf.cni0.accept_ra appeared: 0",
            ],
            "{diffs:#?}"
        );
    }
}
