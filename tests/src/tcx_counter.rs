//! A packet counter attached with tcx *after* the programs already on an interface: it counts
//! every packet it sees and returns `TCX_NEXT`, so it changes nothing about the packet's fate.
//! A packet reaches it only when every program before it let the chain continue (`TCX_NEXT`);
//! `TC_ACT_OK`, a redirect or a drop end the chain first. Loaded with raw `bpf()` calls (the
//! test kit has no eBPF loader); detached when dropped.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use anyhow::Context as _;

use crate::Netns;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Which side of the interface the counter is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A counter attached to an interface; detached when dropped.
#[derive(Debug)]
pub struct TcxCounter {
    map: OwnedFd,
    _link: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size passed; the kernel reads and
    // writes within it, and the pointers in it are valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ret)
}

fn bpf_fd(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    let fd = i32::try_from(bpf(cmd, attr)?).map_err(std::io::Error::other)?;
    // SAFETY: the kernel returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn put(attr: &mut [u8; 128], offset: usize, bytes: &[u8]) {
    attr[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// One eBPF instruction: opcode, destination and source registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let [o0, o1] = off.to_le_bytes();
    let [i0, i1, i2, i3] = imm.to_le_bytes();
    [code, dst | (src << 4), o0, o1, i0, i1, i2, i3]
}

impl TcxCounter {
    /// Attaches a counter to `direction` of interface `ifindex` of `netns`, after the tcx
    /// programs already there.
    ///
    /// # Errors
    /// If the map or program cannot be created or the program cannot be attached.
    pub fn attach(netns: &Netns, ifindex: u32, direction: Direction) -> anyhow::Result<Self> {
        netns.run(move || Self::attach_here(ifindex, direction))?
    }

    fn attach_here(ifindex: u32, direction: Direction) -> anyhow::Result<Self> {
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &BPF_MAP_TYPE_ARRAY.to_ne_bytes());
        put(&mut attr, 4, &4u32.to_ne_bytes());
        put(&mut attr, 8, &8u32.to_ne_bytes());
        put(&mut attr, 12, &1u32.to_ne_bytes());
        let map = bpf_fd(BPF_MAP_CREATE, &mut attr).context("creating the counter's map")?;
        let map_fd = map.as_raw_fd();

        // *(u32 *)(r10 - 4) = 0; r1 = &map; r2 = r10 - 4; r0 = bpf_map_lookup_elem(r1, r2);
        // if r0 != 0 { lock *(u64 *)r0 += 1 }; r0 = TC_ACT_UNSPEC (TCX_NEXT); exit.
        let program: Vec<[u8; 8]> = vec![
            insn(0x62, 10, 0, -4, 0),
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
            insn(0, 0, 0, 0, 0),
            insn(0xbf, 2, 10, 0, 0),
            insn(0x07, 2, 0, 0, -4),
            insn(0x85, 0, 0, 0, 1),
            insn(0x15, 0, 0, 2, 0),
            insn(0xb7, 1, 0, 0, 1),
            insn(0xdb, 0, 1, 0, 0),
            insn(0xb7, 0, 0, 0, -1),
            insn(0x95, 0, 0, 0, 0),
        ];
        let insns: Vec<u8> = program.concat();
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
        put(&mut attr, 4, &u32::try_from(program.len())?.to_ne_bytes());
        put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
        let prog = bpf_fd(BPF_PROG_LOAD, &mut attr).context("loading the counter program")?;

        let attach_type = match direction {
            Direction::Ingress => BPF_TCX_INGRESS,
            Direction::Egress => BPF_TCX_EGRESS,
        };
        let mut attr = [0u8; 128];
        put(
            &mut attr,
            0,
            &u32::try_from(prog.as_raw_fd())?.to_ne_bytes(),
        );
        put(&mut attr, 4, &ifindex.to_ne_bytes());
        put(&mut attr, 8, &attach_type.to_ne_bytes());
        // No flags: appended after the programs already attached.
        let link = bpf_fd(BPF_LINK_CREATE, &mut attr)
            .with_context(|| format!("attaching the counter to ifindex {ifindex}"))?;
        Ok(Self { map, _link: link })
    }

    /// Packets counted so far.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn count(&self) -> anyhow::Result<u64> {
        let key = 0u32;
        let mut value = 0u64;
        let mut attr = [0u8; 128];
        put(
            &mut attr,
            0,
            &u32::try_from(self.map.as_raw_fd())?.to_ne_bytes(),
        );
        put(
            &mut attr,
            8,
            &(std::ptr::from_ref(&key) as u64).to_ne_bytes(),
        );
        put(
            &mut attr,
            16,
            &(std::ptr::from_mut(&mut value) as u64).to_ne_bytes(),
        );
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("reading the counter")?;
        // SAFETY: a valid u64 the kernel wrote through the pointer it was given.
        Ok(unsafe { std::ptr::read_volatile(&raw const value) })
    }
}
