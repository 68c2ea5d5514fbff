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
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Attachment, RangeConf};
use crate::net::{self, Cidr};

const LOCK_FILE: &str = "lock";
const INDEX_DIR: &str = "attachments";
const INDEX_MARKER: &str = "index.v1";
/// Written by versions before the index; removed by the first `GC` after an upgrade.
const OLD_LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const TMP_PREFIX: &str = ".tmp-";
/// Bytes per round-robin hint slot in the lock file (an IPv6 address has at most 39 characters).
const HINT_SLOT: u64 = 48;
/// The longest file name (`NAME_MAX`).
const NAME_MAX: usize = 255;

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

/// The store's lock, released on drop; its file also holds the round-robin hints.
struct Lock {
    file: File,
}

impl Lock {
    /// The last address handed out from range set `set` (only a hint: anything unreadable is
    /// `None`).
    fn hint(&self, set: usize) -> Option<IpAddr> {
        let mut slot = [0_u8; HINT_SLOT as usize];
        let n = self.file.read_at(&mut slot, set as u64 * HINT_SLOT).ok()?;
        std::str::from_utf8(&slot[..n])
            .ok()?
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .parse()
            .ok()
    }

    /// Records `ip` as the last address handed out from `set`; a lost or torn write only moves
    /// where the next search starts.
    fn set_hint(&self, set: usize, ip: IpAddr) {
        let mut slot = [b' '; HINT_SLOT as usize];
        let text = ip.to_string();
        slot[..text.len()].copy_from_slice(text.as_bytes());
        slot[HINT_SLOT as usize - 1] = b'\n';
        let _ = self.file.write_all_at(&slot, set as u64 * HINT_SLOT);
    }
}

fn parse_record(text: &str) -> Option<Attachment> {
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(id), Some(ifname)) if !id.is_empty() && !ifname.is_empty() => Some(Attachment {
            container_id: id.to_owned(),
            ifname: ifname.to_owned(),
        }),
        _ => None,
    }
}

fn record_text(attachment: &Attachment) -> String {
    format!("{}\n{}\n", attachment.container_id, attachment.ifname)
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

    fn lock(&self) -> Result<Lock, IpamError> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir, "creating the directory"))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "opening the lock"))?;
        loop {
            // SAFETY: flock(2) on a descriptor `file` keeps open.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                let lock = Lock { file };
                self.ensure_indexed()?;
                return Ok(lock);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(&path, "locking")(err));
            }
        }
    }

    /// Under the lock: indexes a store written before the index existed (once).
    fn ensure_indexed(&self) -> Result<(), IpamError> {
        let marker = self.dir.join(INDEX_MARKER);
        if marker.exists() {
            return Ok(());
        }
        let (records, _) = self.scan()?;
        let mut by_attachment: BTreeMap<&Attachment, Vec<IpAddr>> = BTreeMap::new();
        for record in &records {
            by_attachment
                .entry(&record.attachment)
                .or_default()
                .push(record.ip);
        }
        for (attachment, ips) in by_attachment {
            self.write_index(attachment, &ips)?;
        }
        File::create(&marker).map_err(io_err(&marker, "creating the index marker"))?;
        Ok(())
    }

    /// The index file of `attachment`, if its name fits.
    fn index_path(&self, attachment: &Attachment) -> Option<PathBuf> {
        let name = format!("{}:{}", attachment.container_id, attachment.ifname);
        (name.len() <= NAME_MAX).then(|| self.dir.join(INDEX_DIR).join(name))
    }

    /// The attachment that record `ip` names, if the record exists and is complete.
    fn holder(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(text) => Ok(parse_record(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "reading a record")(e)),
        }
    }

    /// The addresses held by `attachment`: from its index (each checked against its record), or
    /// by a scan when the attachment cannot be indexed.
    fn held(&self, attachment: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
        let Some(path) = self.index_path(attachment) else {
            let (records, _) = self.scan()?;
            return Ok(records
                .into_iter()
                .filter(|r| &r.attachment == attachment)
                .map(|r| r.ip)
                .collect());
        };
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path, "reading an index")(e)),
        };
        let mut held = Vec::new();
        for ip in text
            .lines()
            .skip(2)
            .filter_map(|l| l.parse::<IpAddr>().ok())
        {
            if self.holder(ip)?.as_ref() == Some(attachment) && !held.contains(&ip) {
                held.push(ip);
            }
        }
        Ok(held)
    }

    /// Replaces the index of `attachment` (atomically) with `ips`; an empty list removes it.
    fn write_index(&self, attachment: &Attachment, ips: &[IpAddr]) -> Result<(), IpamError> {
        let Some(path) = self.index_path(attachment) else {
            return Ok(());
        };
        if ips.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(&path, "removing an index")(e)),
            };
        }
        let mut text = record_text(attachment);
        for ip in ips {
            text.push_str(&ip.to_string());
            text.push('\n');
        }
        let tmp = self.write_tmp(&text)?;
        let rename = fs::rename(&tmp, &path);
        let rename = match rename {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let dir = self.dir.join(INDEX_DIR);
                fs::create_dir_all(&dir).map_err(io_err(&dir, "creating the index directory"))?;
                fs::rename(&tmp, &path)
            }
            other => other,
        };
        rename.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(&path, "writing an index")(e)
        })
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
            if name.starts_with(TMP_PREFIX) || name.starts_with(OLD_LAST_RESERVED_PREFIX) {
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
            match parse_record(&text) {
                Some(attachment) => records.push(Allocation { ip, attachment }),
                // An empty record can only come from a crash of the machine (not of a plugin)
                // between the file's creation and its data reaching the disk.
                None => junk.push(entry.path()),
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

    fn remove_record(&self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, "removing a record")(e)),
        }
    }
}

/// Whether `ip` is an address [`Candidates`] could hand out from `set`.
fn usable_in(set: &[RangeConf], ip: IpAddr) -> bool {
    let bits = net::to_bits(ip);
    set.iter().any(|r| {
        r.subnet.contains(ip)
            && r.gateway != Some(ip)
            && bounds(r).is_some_and(|(first, last)| (first..=last).contains(&bits))
    })
}

/// The first and last usable address of a range, as integers.
fn bounds(r: &RangeConf) -> Option<(u128, u128)> {
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
    (first <= last).then_some((first, last))
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
            .filter_map(|r| {
                bounds(r).map(|(first, last)| (first, last, r.gateway.map(net::to_bits)))
            })
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
        let a = store.allocate(&sets, &att("a"), &[]).expect("a");
        assert_eq!(
            a.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.1/32", "fd00::1/128"]
        );
        assert_eq!(
            store.allocate(&sets, &att("a"), &[]).expect("again"),
            a,
            "a retried ADD reuses"
        );
        let b = store.allocate(&sets, &att("b"), &[]).expect("b");
        assert_eq!(b[0].to_string(), "10.0.0.2/32");
        let err = store.allocate(&sets, &att("c"), &[]).expect_err("full");
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
        let c = store.allocate(&sets, &att("c"), &[]).expect("c");
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

    #[test]
    fn requested_addresses_and_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().join("net"));
        let mut v4 = range("10.0.0.0/24");
        v4.range_start = Some("10.0.0.10".parse().expect("ip"));
        v4.gateway = Some("10.0.0.20".parse().expect("ip"));
        let sets = vec![vec![v4], vec![range("fd00::/120")]];
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let got = store
            .allocate(&sets, &att("a"), &[ip("10.0.0.50")])
            .expect("requested v4, dynamic v6");
        assert_eq!(
            got.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.0.0.50/32", "fd00::1/128"]
        );
        assert_eq!(
            store
                .allocate(&sets, &att("a"), &[ip("10.0.0.50")])
                .expect("retried"),
            got
        );
        for (bad, what) in [
            ("10.0.0.5", "before rangeStart"),
            ("10.0.0.20", "the gateway"),
            ("10.0.0.255", "broadcast"),
            ("10.1.0.1", "outside"),
        ] {
            let err = store
                .allocate(&sets, &att("b"), &[ip(bad)])
                .expect_err(what);
            assert!(
                matches!(err, IpamError::OutOfRange { ip: i, .. } if i == ip(bad)),
                "{what}: {err}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = store
            .allocate(&sets, &att("b"), &[ip("10.0.0.50")])
            .expect_err("taken");
        assert!(err.to_string().contains("a/eth0"), "{err}");
        let err = store
            .allocate(&sets, &att("a"), &[ip("10.0.0.51")])
            .expect_err("another request for a");
        assert!(matches!(err, IpamError::AlreadyHolds { .. }), "{err}");
        let err = store
            .allocate(&sets, &att("b"), &[ip("10.0.0.60"), ip("10.0.0.61")])
            .expect_err("two in one set");
        assert!(
            matches!(err, IpamError::TwoInOneSet { set: 0, .. }),
            "{err}"
        );
        assert_eq!(
            store.list().expect("list").len(),
            2,
            "failures left nothing"
        );
        let b = store
            .allocate(&sets, &att("b"), &[ip("fd00::77")])
            .expect("requested v6");
        assert_eq!(b[1].to_string(), "fd00::77/128");
        assert_eq!(
            b[0].to_string(),
            "10.0.0.10/32",
            "rangeStart, the first dynamic"
        );

        // The index agrees with the records; a stale index entry (a crash between writing the
        // index and linking the record) counts for nothing.
        let index = store.dir().join(INDEX_DIR).join("a:eth0");
        let text = fs::read_to_string(&index).expect("index of a");
        assert!(
            text.contains("10.0.0.50") && text.contains("fd00::1"),
            "{text}"
        );
        fs::write(&index, format!("{text}10.0.0.99\n")).expect("stale entry");
        assert_eq!(
            store.lookup(&att("a")).expect("lookup"),
            [ip("10.0.0.50"), ip("fd00::1")]
        );
        assert_eq!(store.release(&att("a")).expect("release").len(), 2);
        assert!(!index.exists(), "the index goes with the records");
        assert_eq!(store.lookup(&att("b")).expect("lookup b").len(), 2);

        // A store without the index (an older version's) is indexed on first use.
        fs::remove_dir_all(store.dir().join(INDEX_DIR)).expect("drop the index");
        fs::remove_file(store.dir().join(INDEX_MARKER)).expect("drop the marker");
        assert_eq!(store.release(&att("b")).expect("release b").len(), 2);
        assert!(store.list().expect("list").is_empty());
    }
}
