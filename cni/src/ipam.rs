//! The built-in IPAM: addresses from the node's pod subnet(s), kept in an on-disk store that is safe
//! against concurrent plugins and against a plugin killed at any instruction.
//!
//! Layout of a network's store directory:
//!
//! ```text
//! lock                   flock(2)ed exclusively for every operation
//! 10.244.1.5             one file per allocated address: "<container id>\n<ifname>\n"
//! last_reserved_ip.0     the last address handed out from range set 0 (round-robin start)
//! .tmp-<pid>-<n>         a record being written (removed by GC once its writer is gone)
//! ```
//!
//! An address file is written under a temporary name and then `link(2)`ed to the address's name,
//! which fails if the address is taken: an address file therefore either does not exist or is
//! complete, and two allocations of one address are impossible even without the lock. A plugin
//! killed after the link leaves an allocation that names its container, which the runtime's `DEL`
//! or `GC` (or a retried `ADD` of the same attachment, which reuses it) reclaims.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Attachment, RangeConf};
use crate::net::{self, Cidr};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const TMP_PREFIX: &str = ".tmp-";

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// IPAM failures.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of a range set is taken.
    #[error("no free address in range set {set} ({ranges}): {allocated} addresses allocated")]
    Exhausted {
        /// Index of the range set.
        set: usize,
        /// The set's ranges, for the message.
        ranges: String,
        /// How many addresses of the set are allocated.
        allocated: usize,
    },
    /// A filesystem operation failed.
    #[error("IPAM store {}: {what}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> IpamError {
    let path = path.to_path_buf();
    move |source| IpamError::Io { path, what, source }
}

/// One allocation record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: IpAddr,
    /// Owner.
    pub attachment: Attachment,
}

/// A network's address store (see the module documentation).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// The store's lock, released on drop.
struct Lock {
    _file: File,
}

impl Store {
    /// The store in `dir` (created on first use).
    #[must_use]
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    /// The store directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Lock, IpamError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir, "creating the directory"))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "opening the lock"))?;
        loop {
            // SAFETY: flock(2) on a descriptor `file` keeps open.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Lock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(&path, "locking")(err));
            }
        }
    }

    /// Every allocation record (records that cannot be parsed are skipped; see [`Store::gc`]).
    ///
    /// # Errors
    /// If the directory cannot be read.
    pub fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        self.scan().map(|(records, _)| records)
    }

    /// (parsed records, names of unparsable address files and temporary files)
    fn scan(&self) -> Result<(Vec<Allocation>, Vec<PathBuf>), IpamError> {
        let mut records = Vec::new();
        let mut junk = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io_err(&self.dir, "listing"))?;
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir, "listing"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                junk.push(entry.path());
                continue;
            }
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let text = match fs::read_to_string(entry.path()) {
                Ok(text) => text,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&entry.path(), "reading a record")(e)),
            };
            let mut lines = text.lines();
            match (lines.next(), lines.next()) {
                (Some(id), Some(ifname)) if !id.is_empty() && !ifname.is_empty() => {
                    records.push(Allocation {
                        ip,
                        attachment: Attachment {
                            container_id: id.to_owned(),
                            ifname: ifname.to_owned(),
                        },
                    });
                }
                // An empty record can only come from a crash of the machine (not of a plugin)
                // between the file's creation and its data reaching the disk.
                _ => junk.push(entry.path()),
            }
        }
        records.sort_by_key(|r| net::to_bits(r.ip));
        Ok((records, junk))
    }

    /// The addresses allocated to `attachment`.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn lookup(&self, attachment: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|r| &r.attachment == attachment)
            .map(|r| r.ip)
            .collect())
    }

    /// Allocates one address from each range set for `attachment`, or returns the ones it already
    /// holds (a retried `ADD`).
    ///
    /// # Errors
    /// [`IpamError::Exhausted`] if a set has no free address (nothing stays allocated then), or a
    /// filesystem error.
    pub fn allocate(
        &self,
        sets: &[Vec<RangeConf>],
        attachment: &Attachment,
    ) -> Result<Vec<Cidr>, IpamError> {
        let _lock = self.lock()?;
        let (records, _) = self.scan()?;
        let taken: HashSet<IpAddr> = records.iter().map(|r| r.ip).collect();
        let mut out = Vec::new();
        let mut created = Vec::new();
        for (index, set) in sets.iter().enumerate() {
            if let Some(existing) = records.iter().find(|r| {
                &r.attachment == attachment && set.iter().any(|range| range.subnet.contains(r.ip))
            }) {
                out.push(Cidr::host(existing.ip));
                continue;
            }
            match self.allocate_in_set(index, set, attachment, &taken) {
                Ok(ip) => {
                    created.push(ip);
                    out.push(Cidr::host(ip));
                }
                Err(e) => {
                    for ip in created {
                        let _ = fs::remove_file(self.dir.join(ip.to_string()));
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn allocate_in_set(
        &self,
        index: usize,
        set: &[RangeConf],
        attachment: &Attachment,
        taken: &HashSet<IpAddr>,
    ) -> Result<IpAddr, IpamError> {
        let last_path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{index}"));
        let last: Option<IpAddr> = fs::read_to_string(&last_path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let candidates = Candidates::new(set, last);
        let record = format!("{}\n{}\n", attachment.container_id, attachment.ifname);
        let tmp = self.write_tmp(&record)?;
        let result = (|| {
            for ip in candidates {
                if taken.contains(&ip) {
                    continue;
                }
                let path = self.dir.join(ip.to_string());
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(Some(ip)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&path, "creating a record")(e)),
                }
            }
            Ok(None)
        })();
        let _ = fs::remove_file(&tmp);
        let Some(ip) = result? else {
            return Err(IpamError::Exhausted {
                set: index,
                ranges: set
                    .iter()
                    .map(|r| r.subnet.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                allocated: taken
                    .iter()
                    .filter(|ip| set.iter().any(|r| r.subnet.contains(**ip)))
                    .count(),
            });
        };
        // Only a hint for where the next search starts: losing it is harmless.
        if let Ok(tmp) = self.write_tmp(&ip.to_string())
            && fs::rename(&tmp, &last_path).is_err()
        {
            let _ = fs::remove_file(&tmp);
        }
        Ok(ip)
    }

    fn write_tmp(&self, content: &str) -> Result<PathBuf, IpamError> {
        let path = self.dir.join(format!(
            "{TMP_PREFIX}{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path, "creating a temporary record"))?;
        file.write_all(content.as_bytes())
            .map_err(io_err(&path, "writing a temporary record"))?;
        Ok(path)
    }

    /// Releases every address of `attachment`; returns them (none is not an error).
    ///
    /// # Errors
    /// If the store cannot be read or a record cannot be removed.
    pub fn release(&self, attachment: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let (records, _) = self.scan()?;
        let mut released = Vec::new();
        for record in records.into_iter().filter(|r| &r.attachment == attachment) {
            self.remove_record(record.ip)?;
            released.push(record.ip);
        }
        Ok(released)
    }

    /// Releases every allocation whose attachment is not in `valid`, removes unparsable records and
    /// temporary files whose writer has exited; returns what was released.
    ///
    /// # Errors
    /// If the store cannot be read or a record cannot be removed.
    pub fn gc(&self, valid: &HashSet<Attachment>) -> Result<Vec<Allocation>, IpamError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let (records, junk) = self.scan()?;
        let mut released = Vec::new();
        for record in records {
            if !valid.contains(&record.attachment) {
                self.remove_record(record.ip)?;
                released.push(record);
            }
        }
        for path in junk {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let writer_alive = name
                .strip_prefix(TMP_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
                // SAFETY: kill(2) with signal 0 only checks whether the process exists.
                .is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
            if !writer_alive {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(released)
    }

    fn remove_record(&self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, "removing a record")(e)),
        }
    }
}

/// The usable addresses of a range set in allocation order: starting after `last` (if it lies in
/// the set), wrapping around, each address once. Skips the network address (for IPv6 the
/// subnet-router anycast address), the IPv4 broadcast address and gateways.
struct Candidates {
    /// (first, last, gateway) per range, as integers.
    ranges: Vec<(u128, u128, Option<u128>)>,
    v4: bool,
    /// Current range and the next value to yield from it.
    range: usize,
    next: u128,
    /// How many values are left in this lap.
    left: u128,
}

impl Candidates {
    fn new(set: &[RangeConf], last: Option<IpAddr>) -> Candidates {
        let v4 = set.first().is_none_or(|r| r.subnet.is_ipv4());
        let ranges: Vec<(u128, u128, Option<u128>)> = set
            .iter()
            .map(|r| {
                let network = net::to_bits(r.subnet.network());
                let broadcast = net::to_bits(r.subnet.last());
                let last_usable = if r.subnet.is_ipv4() {
                    broadcast - 1
                } else {
                    broadcast
                };
                let first = r
                    .range_start
                    .map_or(network + 1, |s| net::to_bits(s).max(network + 1));
                let last = r
                    .range_end
                    .map_or(last_usable, |e| net::to_bits(e).min(last_usable));
                (first, last, r.gateway.map(net::to_bits))
            })
            .filter(|&(first, last, _)| first <= last)
            .collect();
        let total = ranges
            .iter()
            .fold(0_u128, |sum, &(f, l, _)| sum.saturating_add(l - f + 1));
        let mut range = 0;
        let mut next = ranges.first().map_or(0, |r| r.0);
        if let Some(last) = last.filter(|l| l.is_ipv4() == v4) {
            let bits = net::to_bits(last);
            if let Some(index) = ranges.iter().position(|&(f, l, _)| (f..=l).contains(&bits)) {
                if bits < ranges[index].1 {
                    (range, next) = (index, bits + 1);
                } else {
                    range = (index + 1) % ranges.len();
                    next = ranges[range].0;
                }
            }
        }
        Candidates {
            ranges,
            v4,
            range,
            next,
            left: total,
        }
    }
}

impl Iterator for Candidates {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        while self.left > 0 {
            self.left -= 1;
            let (_, last, gateway) = self.ranges[self.range];
            let value = self.next;
            if value >= last {
                self.range = (self.range + 1) % self.ranges.len();
                self.next = self.ranges[self.range].0;
            } else {
                self.next = value + 1;
            }
            if Some(value) == gateway {
                continue;
            }
            let family = if self.v4 {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            };
            return Some(net::from_bits(family, value));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(subnet: &str) -> RangeConf {
        RangeConf {
            subnet: subnet.parse().expect("cidr"),
            range_start: None,
            range_end: None,
            gateway: None,
        }
    }

    fn att(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn candidates_skip_network_broadcast_and_gateway_and_wrap() {
        let mut r = range("10.0.0.0/29");
        r.gateway = Some("10.0.0.1".parse().expect("ip"));
        let all: Vec<String> = Candidates::new(&[r.clone()], None)
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(
            all,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        let from: Vec<String> = Candidates::new(&[r], Some("10.0.0.5".parse().expect("ip")))
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(
            from,
            ["10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
        );
        let v6: Vec<String> = Candidates::new(&[range("fd00::/126")], None)
            .map(|ip| ip.to_string())
            .collect();
        assert_eq!(v6, ["fd00::1", "fd00::2", "fd00::3"]);
        assert_eq!(
            Candidates::new(&[range("fd00::/64")], None)
                .next()
                .map(|i| i.to_string())
                .as_deref(),
            Some("fd00::1")
        );
    }

    #[test]
    fn allocate_reuse_release_exhaust_gc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("net"));
        let sets = vec![vec![range("10.0.0.0/30")], vec![range("fd00::/126")]];
        let a = store.allocate(&sets, &att("a")).expect("a");
        assert_eq!(
            a.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.1/32", "fd00::1/128"]
        );
        assert_eq!(
            store.allocate(&sets, &att("a")).expect("again"),
            a,
            "a retried ADD reuses"
        );
        let b = store.allocate(&sets, &att("b")).expect("b");
        assert_eq!(b[0].to_string(), "10.0.0.2/32");
        let err = store.allocate(&sets, &att("c")).expect_err("full");
        assert!(
            matches!(
                err,
                IpamError::Exhausted {
                    set: 0,
                    allocated: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            store.list().expect("list").len(),
            4,
            "a failed allocation leaves nothing"
        );
        assert_eq!(store.release(&att("a")).expect("release").len(), 2);
        assert!(store.release(&att("a")).expect("release twice").is_empty());
        let c = store.allocate(&sets, &att("c")).expect("c");
        assert_eq!(
            c[0].to_string(),
            "10.0.0.1/32",
            "wraps around to the freed address"
        );
        let valid: HashSet<Attachment> = [att("c")].into_iter().collect();
        let gone = store.gc(&valid).expect("gc");
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|r| r.attachment == att("b")));
        assert_eq!(store.lookup(&att("c")).expect("lookup").len(), 2);
    }
}
