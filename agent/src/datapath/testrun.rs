//! The pod object's packet programs run through `BPF_PROG_TEST_RUN` against the pinned maps of a
//! running gannetd, for measurements (`gannet-testrun`): a second copy of the programs is loaded
//! with gannetd's maps (services, Maglev tables, conntrack, endpoints, settings), attached
//! nowhere, so a frame run through it meets exactly the state gannetd programmed, and the FIB of
//! the network namespace the caller runs in. Nothing new is pinned: loading fails (and removes what
//! it would have added) when `--bpf-root` is not a gannetd's.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::{
    Ebpf,
    maps::{HashMap, IterableMap as _, MapData, PerCpuArray},
    programs::{Program, ProgramError, TestRun as _, TestRunOptions},
};
use gannet_common::{
    CtEntry, CtKey, NP_STAT_CT_FAILED, NP_STAT_DENIED, NP_STAT_DSR_IN, NP_STAT_FIB_FAILED,
    NP_STAT_FORWARD, NP_STAT_ICMP_ERRORS, NP_STAT_NEW_FLOWS, NP_STAT_NO_BACKEND, NP_STAT_REPLIES,
    NP_STAT_XDP_TX, NP_STATS, map_names,
};

use super::{
    DataPathError, nodeport,
    pods::{POD_OBJECT, pinned_loader},
};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error(
        "{0} has no pinned {conntrack}: not the --bpf-root of a running gannetd",
        conntrack = map_names::CONNTRACK
    )]
    NotAgentRoot(PathBuf),
    #[error(
        "loading the pod object would have pinned new maps ({0:?}): not a gannetd's --bpf-root; removed them again"
    )]
    NewPins(Vec<String>),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    DataPath(#[from] DataPathError),
    #[error("no program {0} in the pod object")]
    NoProgram(String),
    #[error("program {name}: a {kind} program, not tc or XDP")]
    UnsupportedKind { name: String, kind: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: String,
        #[source]
        source: ProgramError,
    },
}

/// The hook a packet program runs at; it decides the context a test run is given and what its
/// return value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// tc (tcx ingress): `struct __sk_buff`, `TC_ACT_*`.
    Tc,
    /// XDP: `struct xdp_md`, `XDP_*`.
    Xdp,
}

impl Hook {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::Xdp => "xdp",
        }
    }

    /// The name of a verdict (`TC_ACT_REDIRECT`, `XDP_PASS`, …), or its number.
    #[must_use]
    pub fn verdict_name(self, verdict: u32) -> String {
        let known = match (self, verdict) {
            (Hook::Tc, 0) => "TC_ACT_OK",
            (Hook::Tc, 2) => "TC_ACT_SHOT",
            (Hook::Tc, 7) => "TC_ACT_REDIRECT",
            (Hook::Tc, u32::MAX) => "TC_ACT_UNSPEC",
            (Hook::Xdp, 0) => "XDP_ABORTED",
            (Hook::Xdp, 1) => "XDP_DROP",
            (Hook::Xdp, 2) => "XDP_PASS",
            (Hook::Xdp, 3) => "XDP_TX",
            (Hook::Xdp, 4) => "XDP_REDIRECT",
            _ => return verdict.to_string(),
        };
        known.to_owned()
    }

    /// The context of a run of a `len`-byte frame arriving on `ifindex`: the device the kernel
    /// gives the packet (what the program's FIB lookups start from). Only the fields the kernel
    /// lets a test run set are set; everything after them is left out (read as zero).
    fn context(self, ifindex: u32, len: usize) -> Vec<u8> {
        let mut ctx = Vec::new();
        match self {
            Hook::Tc => {
                // struct __sk_buff up to `ifindex`: len, pkt_type, mark, queue_mapping,
                // protocol, vlan_present, vlan_tci, vlan_proto, priority (all zero), then
                // ingress_ifindex and ifindex.
                ctx.resize(36, 0);
                ctx.extend_from_slice(&ifindex.to_ne_bytes());
                ctx.extend_from_slice(&ifindex.to_ne_bytes());
            }
            Hook::Xdp => {
                // struct xdp_md: data, data_end (the frame's length), data_meta,
                // ingress_ifindex, rx_queue_index, egress_ifindex.
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                for field in [0, len, 0, ifindex, 0, 0] {
                    ctx.extend_from_slice(&u32::to_ne_bytes(field));
                }
            }
        }
        ctx
    }
}

/// One test run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The program's return value (of the last repetition).
    pub verdict: u32,
    /// The kernel's time per repetition (`BPF_PROG_TEST_RUN`'s `duration`).
    pub duration: Duration,
    /// The frame as the program left it.
    pub output: Vec<u8>,
}

/// The packet programs of the pod object, loaded with a running gannetd's maps.
pub struct PacketPrograms {
    ebpf: Ebpf,
    bpf_root: PathBuf,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    stats: PerCpuArray<MapData, u64>,
}

/// What the NodePort program of a running gannetd has done, read from its pins (cheap, unlike
/// `gannetd status`, which reads every Maglev table).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodePortState {
    /// The interfaces `gannet_nodeport` is attached to.
    pub interfaces: Vec<String>,
    /// The interfaces `gannet_nodeport_xdp` is attached to (native XDP).
    pub xdp_interfaces: Vec<String>,
    /// Its counters, summed over CPUs, by name (`NP_STAT_*`; a counter without a name here as
    /// `counter_<index>`).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Conntrack entries (two per flow) and the map's capacity.
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
}

/// The name of counter `index`.
fn counter_name(index: u32) -> String {
    let known = match index {
        NP_STAT_NEW_FLOWS => "new_flows",
        NP_STAT_FORWARD => "forwarded",
        NP_STAT_REPLIES => "replies",
        NP_STAT_NO_BACKEND => "no_backend",
        NP_STAT_CT_FAILED => "conntrack_failed",
        NP_STAT_FIB_FAILED => "route_failed",
        NP_STAT_DENIED => "denied",
        NP_STAT_ICMP_ERRORS => "icmp_errors",
        NP_STAT_XDP_TX => "xdp_tx",
        NP_STAT_DSR_IN => "dsr_in",
        other => return format!("counter_{other}"),
    };
    known.to_owned()
}

fn names_in(dir: &Path) -> Result<BTreeSet<String>, TestRunError> {
    let entries = fs::read_dir(dir).map_err(|e| TestRunError::Io(dir.to_owned(), e))?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect())
}

impl PacketPrograms {
    /// Loads the pod object with the maps pinned under `bpf_root` (gannetd's `--bpf-root`), and
    /// the programs `names` of it.
    ///
    /// # Errors
    /// When `bpf_root` holds no gannetd's maps, the object or a program cannot be loaded, or a
    /// program is neither tc nor XDP.
    pub fn load(bpf_root: &Path, names: &[&str]) -> Result<Self, TestRunError> {
        let maps_dir = bpf_root.join("maps");
        if !maps_dir.join(map_names::CONNTRACK).exists() {
            return Err(TestRunError::NotAgentRoot(bpf_root.to_owned()));
        }
        let before = names_in(&maps_dir)?;
        let loaded = pinned_loader(&maps_dir).load(POD_OBJECT);
        let added: Vec<String> = names_in(&maps_dir)?.difference(&before).cloned().collect();
        if !added.is_empty() {
            for name in &added {
                let _ = fs::remove_file(maps_dir.join(name));
            }
            return Err(TestRunError::NewPins(added));
        }
        let mut ebpf = loaded.map_err(DataPathError::from)?;
        for &name in names {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| TestRunError::NoProgram(name.to_owned()))?;
            let err = |source| TestRunError::Program {
                name: name.to_owned(),
                source,
            };
            match program {
                Program::SchedClassifier(p) => p.load().map_err(err)?,
                Program::Xdp(p) => p.load().map_err(err)?,
                other => {
                    return Err(TestRunError::UnsupportedKind {
                        name: name.to_owned(),
                        kind: kind(other),
                    });
                }
            }
        }
        let map_err = |name| move |source| DataPathError::Map { name, source };
        let conntrack = HashMap::try_from(
            ebpf.take_map(map_names::CONNTRACK)
                .ok_or(DataPathError::MissingMap(map_names::CONNTRACK))?,
        )
        .map_err(map_err(map_names::CONNTRACK))?;
        let stats = PerCpuArray::try_from(
            ebpf.take_map(map_names::NODEPORT_STATS)
                .ok_or(DataPathError::MissingMap(map_names::NODEPORT_STATS))?,
        )
        .map_err(map_err(map_names::NODEPORT_STATS))?;
        Ok(Self {
            ebpf,
            bpf_root: bpf_root.to_owned(),
            conntrack,
            stats,
        })
    }

    /// What the NodePort program has done so far (every loaded copy counts in the same maps).
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn nodeport_state(&self) -> Result<NodePortState, TestRunError> {
        let map_err = |name| move |source| DataPathError::Map { name, source };
        let mut counters = std::collections::BTreeMap::new();
        for index in 0..NP_STATS {
            let per_cpu = self
                .stats
                .get(&index, 0)
                .map_err(map_err(map_names::NODEPORT_STATS))?;
            counters.insert(counter_name(index), per_cpu.iter().sum());
        }
        let conntrack_capacity = self
            .conntrack
            .map()
            .info()
            .map_err(map_err(map_names::CONNTRACK))?
            .max_entries();
        Ok(NodePortState {
            interfaces: nodeport::attached(&self.bpf_root).into_keys().collect(),
            xdp_interfaces: nodeport::attached_xdp(&self.bpf_root).into_keys().collect(),
            counters,
            conntrack_entries: self.conntrack.keys().filter(Result::is_ok).count(),
            conntrack_capacity,
        })
    }

    /// The hook of program `name` (loaded by [`load`](Self::load)).
    #[must_use]
    pub fn hook(&self, name: &str) -> Option<Hook> {
        match self.ebpf.program(name)? {
            Program::SchedClassifier(_) => Some(Hook::Tc),
            Program::Xdp(_) => Some(Hook::Xdp),
            _ => None,
        }
    }

    /// Runs `frame` through program `name` `repeat` times (the kernel runs the repetitions on
    /// the same packet: a program that rewrites it sees its own output from the second on), as
    /// if it arrived on `ifindex`.
    ///
    /// # Errors
    /// When the program is not loaded or the kernel refuses the run.
    pub fn run(
        &self,
        name: &str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<Run, TestRunError> {
        let err = |source| TestRunError::Program {
            name: name.to_owned(),
            source,
        };
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| TestRunError::NoProgram(name.to_owned()))?;
        let hook = self
            .hook(name)
            .ok_or_else(|| TestRunError::UnsupportedKind {
                name: name.to_owned(),
                kind: kind(program),
            })?;
        let ctx = hook.context(ifindex, frame.len());
        // Room for whatever a program may push in front (an encapsulation).
        let mut output = vec![0u8; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::default()
        };
        let result = match program {
            Program::SchedClassifier(p) => p.test_run(options),
            Program::Xdp(p) => p.test_run(options),
            _ => unreachable!("hook() accepted it"),
        }
        .map_err(err)?;
        output.truncate(result.data_size_out as usize);
        Ok(Run {
            verdict: result.return_value,
            duration: result.duration,
            output,
        })
    }

    /// The conntrack entry under `key`, if any.
    #[must_use]
    pub fn conntrack_entry(&self, key: &CtKey) -> Option<CtEntry> {
        self.conntrack.get(key, 0).ok()
    }

    /// Removes the conntrack entry under `key` (a missing one is fine).
    pub fn forget(&mut self, key: &CtKey) {
        let _ = self.conntrack.remove(key);
    }
}

fn kind(program: &Program) -> &'static str {
    match program {
        Program::SchedClassifier(_) => "tc",
        Program::Xdp(_) => "XDP",
        Program::CgroupSockAddr(_) => "cgroup sock_addr",
        _ => "other",
    }
}

/// The index and MAC address of interface `name` in the caller's network namespace.
///
/// # Errors
/// When there is no such interface.
pub fn interface(name: &str) -> Result<(u32, [u8; 6]), TestRunError> {
    sys::link_info(name)
        .map_err(|e| TestRunError::Io(PathBuf::from(format!("interface {name}")), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_set_the_device_and_nothing_else() {
        let tc = Hook::Tc.context(7, 100);
        assert_eq!(tc.len(), 44, "__sk_buff up to and including ifindex");
        assert!(tc[..36].iter().all(|b| *b == 0));
        assert_eq!(tc[36..40], 7u32.to_ne_bytes(), "ingress_ifindex");
        assert_eq!(tc[40..44], 7u32.to_ne_bytes(), "ifindex");
        let xdp = Hook::Xdp.context(7, 100);
        assert_eq!(xdp.len(), 24);
        assert_eq!(
            xdp[4..8],
            100u32.to_ne_bytes(),
            "data_end is the frame's length"
        );
        assert_eq!(xdp[12..16], 7u32.to_ne_bytes(), "ingress_ifindex");
        assert_eq!(Hook::Tc.verdict_name(u32::MAX), "TC_ACT_UNSPEC");
        assert_eq!(Hook::Xdp.verdict_name(3), "XDP_TX");
        assert_eq!(Hook::Tc.verdict_name(5), "5");
        assert_eq!(counter_name(NP_STAT_FIB_FAILED), "route_failed");
        assert_eq!(counter_name(NP_STAT_XDP_TX), "xdp_tx");
        assert_eq!(counter_name(99), "counter_99");
    }
}
