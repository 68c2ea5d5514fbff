//! The built-in IPAM: addresses from the node's pod subnet(s), kept in an on-disk store that is safe
//! against concurrent plugins and against a plugin killed at any instruction.
//!
//! Layout of a network's store directory:
//!
//! ```text
//! lock                   flock(2)ed exclusively for every operation; also holds the round-robin
//!                        hints (the last address handed out per range set, fixed-size slots)
//! 10.244.1.5             one file per allocated address: "<container id>\n<ifname>\n"
//! attachments/<id>:<if>  the attachment's index: "<container id>\n<ifname>\n<address>\n..."
//! index.v1               marker: every record of an indexable attachment is in its index
//! .tmp-<pid>-<n>         a record being written (removed by GC once its writer is gone)
//! ```
//!
//! An address file is written under a temporary name and then `link(2)`ed to the address's name,
//! which fails if the address is taken: an address file therefore either does not exist or is
//! complete, and two allocations of one address are impossible even without the lock. A plugin
//! killed after the link leaves an allocation that names its container, which the runtime's `DEL`
//! or `GC` (or a retried `ADD` of the same attachment, which reuses it) reclaims.
//!
//! The address records are the truth; the index only makes lookups by attachment O(1) instead of
//! a scan of every record. It is kept a superset of the truth: an `ADD` writes the attachment's
//! index (atomically: temporary file and `rename(2)`) *before* it links a new record, and a `DEL`
//! removes the records before the index. An address listed in an index counts only if its record
//! names that attachment, so a plugin killed between the two steps leaves a harmless stale entry,
//! never a record the index does not know about. A store written by an older version is indexed
//! once (one scan) on first use, then `index.v1` is created. Attachments whose index name would
//! not fit a file name (container ids over ~240 bytes) are served by scanning.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::{Attachment, RangeConf};
use crate::net::{self, Cidr};

mod candidates;
mod records;
#[cfg(test)]
mod tests;

use candidates::{Candidates, usable_in};
use records::{INDEX_DIR, Lock, TMP_PREFIX, parse_record, record_text};

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
    /// A requested address lies in no range of any range set (or is a network, broadcast or
    /// gateway address, or outside `rangeStart`..`rangeEnd`).
    #[error("requested address {ip} is not inside any configured range ({ranges})")]
    OutOfRange {
        /// The address.
        ip: IpAddr,
        /// Every configured range, for the message.
        ranges: String,
    },
    /// Two requested addresses fall into one range set.
    #[error(
        "requested addresses {first} and {second} both fall into range set {set}; one address per range set"
    )]
    TwoInOneSet {
        /// The range set.
        set: usize,
        /// The first.
        first: IpAddr,
        /// The second.
        second: IpAddr,
    },
    /// A requested address is allocated to another attachment, or the attachment already holds
    /// another address of that range set.
    #[error("requested address {ip} is already allocated to {holder}")]
    InUse {
        /// The address.
        ip: IpAddr,
        /// Who holds it (`<container id>/<ifname>`).
        holder: String,
    },
    /// The attachment already holds another address of the requested address's range set (an
    /// `ADD` retried with another request).
    #[error("requested address {ip}: {holder} already holds {held} from the same range set")]
    AlreadyHolds {
        /// The requested address.
        ip: IpAddr,
        /// The address held.
        held: IpAddr,
        /// The attachment (`<container id>/<ifname>`).
        holder: String,
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

fn describe(attachment: &Attachment) -> String {
    format!("{}/{}", attachment.container_id, attachment.ifname)
}

/// Every range of `sets`, for messages.
fn all_ranges(sets: &[Vec<RangeConf>]) -> String {
    sets.iter()
        .flatten()
        .map(|r| r.subnet.to_string())
        .collect::<Vec<_>>()
        .join(", ")
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

    /// Every allocation record (records that cannot be parsed are skipped; see [`Store::gc`]).
    ///
    /// # Errors
    /// If the directory cannot be read.
    pub fn list(&self) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        self.scan().map(|(records, _)| records)
    }

    /// The addresses allocated to `attachment`.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn lookup(&self, attachment: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock()?;
        let mut held = self.held(attachment)?;
        held.sort_by_key(|ip| net::to_bits(*ip));
        Ok(held)
    }

    /// Allocates one address from each range set for `attachment`, or returns the ones it already
    /// holds (a retried `ADD`). A `requested` address is taken in the range set it falls into
    /// (it must lie in one of the set's ranges, not be a gateway, and be free or already held by
    /// `attachment`); sets without a requested address get the next free one.
    ///
    /// # Errors
    /// [`IpamError::Exhausted`] if a set has no free address, [`IpamError::OutOfRange`],
    /// [`IpamError::TwoInOneSet`] or [`IpamError::InUse`] for a requested address (nothing stays
    /// allocated then), or a filesystem error.
    pub fn allocate(
        &self,
        sets: &[Vec<RangeConf>],
        attachment: &Attachment,
        requested: &[IpAddr],
    ) -> Result<Vec<Cidr>, IpamError> {
        // Which set each requested address belongs to, checked before touching the store.
        let mut wanted: Vec<Option<IpAddr>> = vec![None; sets.len()];
        for &ip in requested {
            let Some(index) = sets.iter().position(|set| usable_in(set, ip)) else {
                return Err(IpamError::OutOfRange {
                    ip,
                    ranges: all_ranges(sets),
                });
            };
            if let Some(first) = wanted[index]
                && first != ip
            {
                return Err(IpamError::TwoInOneSet {
                    set: index,
                    first,
                    second: ip,
                });
            }
            wanted[index] = Some(ip);
        }
        let lock = self.lock()?;
        let held = self.held(attachment)?;
        let mut out = Vec::new();
        // (set, address) still to be linked.
        let mut new: Vec<(usize, IpAddr)> = Vec::new();
        for (index, set) in sets.iter().enumerate() {
            let mine = held
                .iter()
                .copied()
                .find(|ip| set.iter().any(|range| range.subnet.contains(*ip)));
            match (mine, wanted[index]) {
                (Some(ip), None) => out.push(ip),
                (Some(ip), Some(want)) if ip == want => out.push(ip),
                (Some(ip), Some(want)) => {
                    return Err(IpamError::AlreadyHolds {
                        ip: want,
                        held: ip,
                        holder: describe(attachment),
                    });
                }
                (None, Some(want)) => {
                    if let Some(holder) = self.holder(want)? {
                        return Err(IpamError::InUse {
                            ip: want,
                            holder: describe(&holder),
                        });
                    }
                    new.push((index, want));
                    out.push(want);
                }
                (None, None) => {
                    let ip = self.next_free(index, set, &lock, &new)?;
                    new.push((index, ip));
                    out.push(ip);
                }
            }
        }
        if new.is_empty() {
            return Ok(out.into_iter().map(Cidr::host).collect());
        }
        // The index first: a crash after it leaves only stale entries (see the module docs).
        let mut listed = held.clone();
        listed.extend(new.iter().map(|(_, ip)| *ip));
        self.write_index(attachment, &listed)?;
        let record = record_text(attachment);
        let tmp = self.write_tmp(&record)?;
        let mut linked = Vec::new();
        let result = (|| {
            for &(index, ip) in &new {
                let path = self.dir.join(ip.to_string());
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => {
                        linked.push(ip);
                        if !requested.contains(&ip) {
                            lock.set_hint(index, ip);
                        }
                    }
                    // Only a writer that bypassed the lock can get here between our check and
                    // the link; the link still guarantees that nothing is handed out twice.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(IpamError::InUse {
                            ip,
                            holder: "a concurrent writer".to_owned(),
                        });
                    }
                    Err(e) => return Err(io_err(&path, "creating a record")(e)),
                }
            }
            Ok(())
        })();
        let _ = fs::remove_file(&tmp);
        if let Err(e) = result {
            for ip in linked {
                let _ = self.remove_record(ip);
            }
            let _ = self.write_index(attachment, &held);
            return Err(e);
        }
        Ok(out.into_iter().map(Cidr::host).collect())
    }

    /// The next free address of `set` after the round-robin hint, not in `pending`.
    fn next_free(
        &self,
        index: usize,
        set: &[RangeConf],
        lock: &Lock,
        pending: &[(usize, IpAddr)],
    ) -> Result<IpAddr, IpamError> {
        for ip in Candidates::new(set, lock.hint(index)) {
            if pending.iter().any(|(_, p)| *p == ip) {
                continue;
            }
            let path = self.dir.join(ip.to_string());
            match fs::symlink_metadata(&path) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ip),
                Err(e) => return Err(io_err(&path, "checking a record")(e)),
            }
        }
        let (records, _) = self.scan()?;
        Err(IpamError::Exhausted {
            set: index,
            ranges: set
                .iter()
                .map(|r| r.subnet.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            allocated: records
                .iter()
                .filter(|r| set.iter().any(|range| range.subnet.contains(r.ip)))
                .count(),
        })
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
        let held = self.held(attachment)?;
        for ip in &held {
            self.remove_record(*ip)?;
        }
        // The records first, then the index (see the module docs).
        self.write_index(attachment, &[])?;
        Ok(held)
    }

    /// Releases every allocation whose attachment is not in `valid`, removes unparsable records,
    /// temporary files whose writer has exited and index entries without records; returns what
    /// was released.
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
        let mut kept: BTreeMap<Attachment, Vec<IpAddr>> = BTreeMap::new();
        for record in records {
            if valid.contains(&record.attachment) {
                kept.entry(record.attachment).or_default().push(record.ip);
            } else {
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
        // The index becomes exactly the records again.
        let index_dir = self.dir.join(INDEX_DIR);
        if let Ok(entries) = fs::read_dir(&index_dir) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let attachment = fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| parse_record(&t));
                let current = attachment.as_ref().and_then(|a| kept.get(a));
                if current.is_none() {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        for (attachment, ips) in &kept {
            self.write_index(attachment, ips)?;
        }
        Ok(released)
    }
}
