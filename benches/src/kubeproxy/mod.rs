//! The rules kube-proxy programs for a set of `ClusterIP` services, in its nftables mode and its
//! iptables mode, generated the way kube-proxy (`pkg/proxy/nftables`, `pkg/proxy/iptables`)
//! generates them: the same tables, chains, hooks, priorities, chain names (same hashes), masquerade
//! marks and conntrack checks; for `NodePort` services (`externalTrafficPolicy: Cluster`) also what
//! kube-proxy adds for the node port (iptables: the `KUBE-NODEPORTS` rule and the `KUBE-EXT-…`
//! chain; nftables: the `service-nodeports` element and the `external-…` chain). What it would add
//! for `LoadBalancer` and external IPs, or `externalTrafficPolicy: Local`, is left out, because the
//! benchmarks have none; the chains that exist regardless (and sit on the path of every forwarded
//! packet) are kept.

pub mod iptables;
pub mod nft;

use sha2::{Digest as _, Sha256};

/// kube-proxy's masquerade mark (`--iptables-masquerade-bit` 14).
pub const MASQUERADE_MARK: u32 = 0x4000;

/// The first `len` characters of the standard base32 encoding of SHA-256(`input`), as kube-proxy
/// names its chains.
fn hash_prefix(input: &str, len: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(len);
    let mut bits = 0_u32;
    let mut acc = 0_u32;
    for &byte in &digest {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
            if out.len() == len {
                return out;
            }
        }
        acc &= (1 << bits) - 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::process::Command;
    use std::time::Duration;

    use gannet_testkit::{Netns, run_in};

    use super::*;
    use crate::services::bench_services;

    /// A `ClusterIP` service and a `NodePort` service, so both kinds' rules are checked.
    fn two_services() -> Vec<crate::services::Service> {
        let backends = [
            Ipv4Addr::new(10, 244, 0, 11),
            Ipv4Addr::new(10, 244, 0, 12),
            Ipv4Addr::new(10, 244, 0, 13),
        ];
        let mut services = bench_services(2, &backends).expect("services");
        services[1].node_port = Some(30_001);
        services
    }

    fn is_root() -> bool {
        // SAFETY: geteuid(2) has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Feeds `input` to `program args... FILE` inside a throw-away network namespace and panics
    /// with the tool's complaint if it rejects it.
    fn accepted_in_throwaway_netns(program: &str, args: &[&str], input: &str, suffix: &str) {
        let netns = Netns::new("rules").expect("creating a throw-away netns");
        let file = std::env::temp_dir().join(format!(
            "gannet-bench-test-{}-{}.{suffix}",
            std::process::id(),
            netns.name()
        ));
        std::fs::write(&file, input).expect("writing the rules");
        let mut cmd = Command::new(program);
        cmd.args(args).arg(&file);
        let output = run_in(cmd, Some(&netns), None, Duration::from_secs(60));
        let _ = std::fs::remove_file(&file);
        let output = output.unwrap_or_else(|err| panic!("running {program}: {err:#}"));
        assert!(
            output.status.success(),
            "{program} {args:?} rejected the generated rules ({}):\n{}\n--- input ---\n{input}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn nft_accepts_the_generated_ruleset() {
        if !is_root() {
            eprintln!("skipped: `nft -c` in a network namespace needs root");
            return;
        }
        accepted_in_throwaway_netns("nft", &["-c", "-f"], &nft::ruleset(&two_services()), "nft");
    }

    #[test]
    fn iptables_restore_accepts_the_generated_rules() {
        if !is_root() {
            eprintln!("skipped: `iptables-restore --test` in a network namespace needs root");
            return;
        }
        accepted_in_throwaway_netns(
            "iptables-restore",
            &["--test", "--noflush"],
            &iptables::restore_input(&two_services()),
            "iptables",
        );
    }

    #[test]
    fn hashes_match_kube_proxys_chain_names() {
        // From kube-proxy's own tests: ns1/svc1 port p80 with endpoint 10.180.0.1:80.
        assert_eq!(hash_prefix("ns1/svc1/tcp/p80", 8), "ULMVA6XW");
        assert_eq!(
            hash_prefix("ns1/svc1/tcp/p80__10.180.0.1/80", 8),
            "5OJB2KTY"
        );
        assert_eq!(hash_prefix("ns1/svc1:p80tcp", 16), "XPGD46QRK7WJZT7O");
        assert_eq!(
            hash_prefix("ns1/svc1:p80tcp10.180.0.1:80", 16),
            "SXIVWICOYRO3J4NJ"
        );
    }
}
