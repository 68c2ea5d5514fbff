//! The few bpf(2) and filesystem calls aya does not expose: reopening a pinned link, switching a
//! link to a new program atomically (`BPF_LINK_UPDATE`), reading which cgroup or interface a
//! link is attached to, updating and deleting many map elements in one call
//! (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`), mapping a map's memory, and telling
//! filesystems apart.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `bpffs` superblock magic.
pub(crate) const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// cgroup v2 superblock magic.
pub(crate) const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// `union bpf_attr` is 144 bytes on 6.x kernels; the kernel accepts a shorter, zero-tailed attr.
#[repr(C, align(8))]
struct BpfAttr([u8; 144]);

impl BpfAttr {
    fn new() -> Self {
        Self([0; 144])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable buffer of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("file descriptors are non-negative")
}

/// Opens a pinned bpffs object (here: a link).
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = BpfAttr::new();
    attr.put_u64(0, c_path.as_ptr() as u64);
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Atomically replaces the program of `link` with `prog`: no moment without a program.
pub(crate) fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = BpfAttr::new();
    attr.put_u32(0, fd_u32(link));
    attr.put_u32(4, fd_u32(prog));
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// A batch operation stopped at element `done` (the elements before it took effect, the ones
/// from it on did not) with `source`.
#[derive(Debug)]
pub(crate) struct BatchError {
    pub(crate) done: usize,
    pub(crate) source: io::Error,
}

/// `attr.batch` of `union bpf_attr` (include/uapi/linux/bpf.h): `in_batch` and `out_batch` (unused
/// by updates and deletes), `keys`, `values`, `count` (in: elements; out: elements processed),
/// `map_fd`, `elem_flags`, `flags`.
fn batch_attr(map: BorrowedFd<'_>, keys: u64, values: u64, count: usize) -> BpfAttr {
    let mut attr = BpfAttr::new();
    attr.put_u64(16, keys);
    attr.put_u64(24, values);
    attr.put_u32(
        32,
        u32::try_from(count).expect("a batch of at most u32::MAX elements"),
    );
    attr.put_u32(36, fd_u32(map));
    attr
}

fn batch(cmd: libc::c_long, attr: &mut BpfAttr, count: usize) -> Result<(), BatchError> {
    bpf(cmd, attr).map(drop).map_err(|source| {
        let done = u32::from_ne_bytes(attr.0[32..36].try_into().expect("4 bytes"));
        BatchError {
            // The kernel writes back how many it processed; never trust it beyond `count`.
            done: usize::try_from(done).map_or(count, |d| d.min(count)),
            source,
        }
    })
}

/// Sets `keys[i]` to `values[i]` in `map` with one `BPF_MAP_UPDATE_BATCH` (`BPF_ANY` each), in
/// order; it stops at the first element that fails. `K` and `V` must be exactly the map's key
/// and value (for a map of maps: the inner map's file descriptor as a `u32`).
///
/// Why: since Linux 6.8 (`generic_map_update_batch`) the kernel waits for an RCU grace period
/// once per batch, where `BPF_MAP_UPDATE_ELEM` on a map of maps waits once per element (about
/// 10 ms each, `maybe_wait_bpf_programs`); on older kernels a batch costs what the single
/// updates do.
pub(crate) fn map_update_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = batch_attr(
        map,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        keys.len(),
    );
    batch(BPF_MAP_UPDATE_BATCH, &mut attr, keys.len())
}

/// Deletes `keys` from `map` with one `BPF_MAP_DELETE_BATCH`, in order; it stops at the first
/// key that fails (a missing key fails with `ENOENT`). `K` must be exactly the map's key. One
/// RCU grace period for the batch, as [`map_update_batch`].
pub(crate) fn map_delete_batch<K: Copy>(map: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = batch_attr(map, keys.as_ptr() as u64, 0, keys.len());
    batch(BPF_MAP_DELETE_BATCH, &mut attr, keys.len())
}

/// A shared memory mapping of a `BPF_F_MMAPABLE` array's values, unmapped on drop.
pub(crate) struct MapMemory {
    ptr: std::ptr::NonNull<u64>,
    len: usize,
    writable: bool,
}

impl MapMemory {
    /// Maps the first `len` `u64` values of the array `map` (its value size must be 8), for
    /// reading, or for reading and writing.
    pub(crate) fn new(map: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Self> {
        let bytes = len.max(1) * 8;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a new shared mapping of the map's values (the kernel checks the length against
        // the map and the protection against the fd's access); unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u64>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { ptr, len, writable })
    }

    /// The values. The caller must be the only writer: gannet writes a table only before it is
    /// installed and never after, so what a program or another reader sees does not change.
    pub(crate) fn values(&self) -> &[u64] {
        // SAFETY: `len` page-aligned u64s mapped readable for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The values, to write (a mapping made writable).
    pub(crate) fn values_mut(&mut self) -> &mut [u64] {
        assert!(self.writable, "writing a read-only mapping");
        // SAFETY: as `values`; exclusive through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MapMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len.max(1) * 8) };
    }
}

/// What the kernel says about a cgroup link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupLinkInfo {
    pub(crate) prog_id: u32,
    pub(crate) cgroup_id: u64,
}

/// `struct bpf_link_info`: type, id, `prog_id`, then the per-type union (8-byte aligned); for
/// cgroup links the union starts with `cgroup_id`.
pub(crate) fn cgroup_link_info(link: BorrowedFd<'_>) -> io::Result<CgroupLinkInfo> {
    let mut info = [0u8; 96];
    let mut attr = BpfAttr::new();
    attr.put_u32(0, fd_u32(link));
    attr.put_u32(4, u32::try_from(info.len()).expect("small"));
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
    Ok(CgroupLinkInfo {
        prog_id: word(8),
        cgroup_id: u64::from_ne_bytes(info[16..24].try_into().expect("8 bytes")),
    })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` tells of a map (`struct bpf_map_info`: type, id, key size,
/// value size, max entries, flags).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapInfo {
    pub(crate) map_type: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) flags: u32,
}

/// The map `fd` refers to; `None` when `fd` is another kind of object (a program or a link
/// pinned where a map was expected: the kernel would describe it with another structure).
pub(crate) fn map_info(fd: BorrowedFd<'_>) -> io::Result<Option<MapInfo>> {
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if target.as_os_str() != "anon_inode:bpf-map" {
        return Ok(None);
    }
    let mut info = [0u8; 80];
    let mut attr = BpfAttr::new();
    attr.put_u32(0, fd_u32(fd));
    attr.put_u32(4, u32::try_from(info.len()).expect("small"));
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
    Ok(Some(MapInfo {
        map_type: word(0),
        key_size: word(8),
        value_size: word(12),
        flags: word(20),
    }))
}

/// The interface a tcx (or XDP) link is attached to (`bpf_link_info.tcx.ifindex`, at the start
/// of the per-type union); 0 once the interface is gone.
pub(crate) fn tcx_link_ifindex(link: BorrowedFd<'_>) -> io::Result<u32> {
    let mut info = [0u8; 96];
    let mut attr = BpfAttr::new();
    attr.put_u32(0, fd_u32(link));
    attr.put_u32(4, u32::try_from(info.len()).expect("small"));
    attr.put_u64(8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(u32::from_ne_bytes(
        info[16..20].try_into().expect("4 bytes"),
    ))
}

/// The interface an XDP link is attached to (`bpf_link_info.xdp.ifindex`: also at the start of
/// the per-type union).
pub(crate) fn xdp_link_ifindex(link: BorrowedFd<'_>) -> io::Result<u32> {
    tcx_link_ifindex(link)
}

/// The superblock magic of the filesystem holding `path`.
pub(crate) fn fs_magic(path: &Path) -> io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: all-zero is a valid statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and output buffer.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[expect(
        clippy::useless_conversion,
        reason = "f_type's width differs across libcs"
    )]
    Ok(i64::from(st.f_type))
}

/// A cgroup v2 directory's id (its inode number), as BPF reports it in link info.
pub(crate) fn cgroup_id(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(path)?.ino())
}

/// Mounts bpffs at `target`.
pub(crate) fn mount_bpffs(target: &Path) -> io::Result<()> {
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: valid C strings; no data argument.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An exclusive `flock` held until drop.
pub(crate) struct FileLock(OwnedFd);

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let fd = OwnedFd::from(file);
        // SAFETY: valid descriptor.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }
}

impl AsFd for FileLock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// ifindex and MAC of interface `name` in this process's network namespace (ioctl on a socket
/// of this namespace; `/sys/class/net` may show another namespace's devices).
pub(crate) fn link_info(name: &str) -> io::Result<(u32, [u8; 6])> {
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: we own the new descriptor.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid socket and ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &raw mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let ifindex = unsafe { req.ifr_ifru.ifru_ifindex };
    // SAFETY: valid socket and ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mac = [hw[0], hw[1], hw[2], hw[3], hw[4], hw[5]].map(|b| b as u8);
    Ok((u32::try_from(ifindex).map_err(io::Error::other)?, mac))
}

/// The name of interface `ifindex` in this process's network namespace.
pub(crate) fn ifname(ifindex: u32) -> io::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buffer of IF_NAMESIZE bytes as required.
    let ret = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ret.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: if_indextoname wrote a NUL-terminated string into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}
