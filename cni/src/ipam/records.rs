//! The files of a store: the lock (which also holds the round-robin hints), the address records
//! and the attachments' index, kept a superset of the records (see `ipam`'s documentation).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Allocation, IpamError, Store, io_err};
use crate::config::Attachment;
use crate::net;

const LOCK_FILE: &str = "lock";
pub(super) const INDEX_DIR: &str = "attachments";
pub(super) const INDEX_MARKER: &str = "index.v1";
/// Written by versions before the index; removed by the first `GC` after an upgrade.
const OLD_LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
pub(super) const TMP_PREFIX: &str = ".tmp-";
/// Bytes per round-robin hint slot in the lock file (an IPv6 address has at most 39 characters).
const HINT_SLOT: u64 = 48;
/// The longest file name (`NAME_MAX`).
const NAME_MAX: usize = 255;

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The store's lock, released on drop; its file also holds the round-robin hints.
pub(super) struct Lock {
    file: File,
}

impl Lock {
    /// The last address handed out from range set `set` (only a hint: anything unreadable is
    /// `None`).
    pub(super) fn hint(&self, set: usize) -> Option<IpAddr> {
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
    pub(super) fn set_hint(&self, set: usize, ip: IpAddr) {
        let mut slot = [b' '; HINT_SLOT as usize];
        let text = ip.to_string();
        slot[..text.len()].copy_from_slice(text.as_bytes());
        slot[HINT_SLOT as usize - 1] = b'\n';
        let _ = self.file.write_all_at(&slot, set as u64 * HINT_SLOT);
    }
}

pub(super) fn parse_record(text: &str) -> Option<Attachment> {
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(id), Some(ifname)) if !id.is_empty() && !ifname.is_empty() => Some(Attachment {
            container_id: id.to_owned(),
            ifname: ifname.to_owned(),
        }),
        _ => None,
    }
}

pub(super) fn record_text(attachment: &Attachment) -> String {
    format!("{}\n{}\n", attachment.container_id, attachment.ifname)
}

impl Store {
    pub(super) fn lock(&self) -> Result<Lock, IpamError> {
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
    pub(super) fn holder(&self, ip: IpAddr) -> Result<Option<Attachment>, IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(text) => Ok(parse_record(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "reading a record")(e)),
        }
    }

    /// The addresses held by `attachment`: from its index (each checked against its record), or
    /// by a scan when the attachment cannot be indexed.
    pub(super) fn held(&self, attachment: &Attachment) -> Result<Vec<IpAddr>, IpamError> {
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
    pub(super) fn write_index(
        &self,
        attachment: &Attachment,
        ips: &[IpAddr],
    ) -> Result<(), IpamError> {
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

    /// (parsed records, names of unparsable address files and temporary files)
    pub(super) fn scan(&self) -> Result<(Vec<Allocation>, Vec<PathBuf>), IpamError> {
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

    pub(super) fn write_tmp(&self, content: &str) -> Result<PathBuf, IpamError> {
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

    pub(super) fn remove_record(&self, ip: IpAddr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path, "removing a record")(e)),
        }
    }
}
