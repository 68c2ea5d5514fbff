//! A two-instruction XDP program that passes every frame, attached to a veth of the simulated
//! underlay: a veth takes frames its peer's XDP program transmits (`XDP_TX`) only when it runs an
//! XDP program itself (the kernel then schedules it to receive them), as a NIC's link partner
//! always would. Loaded with raw `bpf()` calls (the test kit has no eBPF loader), detached when
//! the returned link is dropped.

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::Context as _;

use crate::Netns;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size passed; the kernel reads and
    // writes within it.
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
    let fd = i32::try_from(ret).map_err(std::io::Error::other)?;
    // SAFETY: the kernel returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn put(attr: &mut [u8; 128], offset: usize, bytes: &[u8]) {
    attr[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Attaches an `XDP_PASS` program to interface `ifname` of `netns` (native mode); the program
/// stays attached while the returned link lives.
///
/// # Errors
/// If the program cannot be loaded or attached.
pub(crate) fn attach(netns: &Netns, ifname: &str) -> anyhow::Result<OwnedFd> {
    let ifname = ifname.to_owned();
    netns.run(move || -> anyhow::Result<OwnedFd> {
        // r0 = XDP_PASS (2); exit.
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &BPF_PROG_TYPE_XDP.to_ne_bytes());
        put(&mut attr, 4, &2u32.to_ne_bytes());
        put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
        let prog = bpf(BPF_PROG_LOAD, &mut attr).context("loading an XDP_PASS program")?;
        let c_name = std::ffi::CString::new(ifname.clone())?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no interface {ifname}");
        let mut attr = [0u8; 128];
        let prog_fd = std::os::fd::AsRawFd::as_raw_fd(&prog);
        put(&mut attr, 0, &u32::try_from(prog_fd)?.to_ne_bytes());
        put(&mut attr, 4, &ifindex.to_ne_bytes());
        put(&mut attr, 8, &BPF_XDP.to_ne_bytes());
        bpf(BPF_LINK_CREATE, &mut attr).with_context(|| format!("attaching XDP_PASS to {ifname}"))
    })?
}
