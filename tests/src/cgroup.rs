//! A cgroup v2 directory of our own, emptied and removed on drop.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::next_id;

/// Environment variable that overrides where the cgroup v2 hierarchy is mounted.
pub const CGROUP2_ENV: &str = "GANNET_TEST_CGROUP2";

/// How long drop waits for the killed processes to leave and for `rmdir` to succeed.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Where the cgroup v2 hierarchy is mounted: `$GANNET_TEST_CGROUP2` if set, else the first `cgroup2`
/// mount in `/proc/self/mountinfo` (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on
/// a hybrid one).
///
/// # Errors
/// If mountinfo cannot be read or lists no `cgroup2` mount.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(CGROUP2_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    cgroup2_mount_point(&mountinfo).with_context(|| {
        format!("no cgroup2 mount in /proc/self/mountinfo; set ${CGROUP2_ENV} to its mount point")
    })
}

/// The mount point of the first `cgroup2` file system in a mountinfo text.
fn cgroup2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS"
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount
            .split_whitespace()
            .nth(4)
            .map(|point| PathBuf::from(unescape_mountinfo(point)))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(byte) = escaped {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup v2 directory `<cgroup2 root>/gannet-test-<pid>-<n>`.
///
/// Drop kills everything in it (`cgroup.kill`, or `SIGKILL` to each member on kernels before 5.14),
/// waits up to about two seconds for `cgroup.procs` to empty and removes the directory.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates a fresh cgroup directly below the cgroup v2 root.
    ///
    /// # Errors
    /// If the cgroup v2 mount cannot be found or the directory cannot be created.
    pub fn new() -> anyhow::Result<Cgroup> {
        let root = cgroup2_root()?;
        let path = root.join(format!("gannet-test-{}-{}", std::process::id(), next_id()));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    /// The cgroup's directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's name (the last component of the path `/proc/PID/cgroup` shows for members).
    #[must_use]
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|name| name.to_str())
            .expect("cgroup names are ASCII")
    }

    /// The processes in this cgroup (`cgroup.procs`).
    ///
    /// # Errors
    /// If `cgroup.procs` cannot be read.
    pub fn procs(&self) -> anyhow::Result<Vec<i32>> {
        let procs = self.path.join("cgroup.procs");
        let text =
            fs::read_to_string(&procs).with_context(|| format!("reading {}", procs.display()))?;
        Ok(text
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect())
    }

    fn kill_all(&self) -> anyhow::Result<()> {
        match fs::write(self.path.join("cgroup.kill"), "1") {
            Ok(()) => {}
            // No cgroup.kill before Linux 5.14: signal the members one by one.
            Err(err) if err.kind() == ErrorKind::NotFound => {
                for pid in self.procs()? {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            Err(err) => return Err(err).context("writing cgroup.kill"),
        }
        let deadline = Instant::now() + DRAIN_WAIT;
        loop {
            let procs = self.procs()?;
            if procs.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("processes {procs:?} still in the cgroup after SIGKILL");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn remove(&self) -> anyhow::Result<()> {
        self.kill_all()?;
        let deadline = Instant::now() + DRAIN_WAIT;
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
                Err(err) if Instant::now() >= deadline => return Err(err).context("rmdir"),
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            eprintln!(
                "gannet-testkit: removing cgroup {}: {err:#}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_cgroup2_mount() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
42 31 0:39 / /mnt/second\\040cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount_point(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let escaped = "42 31 0:39 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_point(escaped),
            Some(PathBuf::from("/mnt/my cgroup"))
        );
        assert_eq!(
            cgroup2_mount_point("32 31 0:29 / /a rw - cgroup cgroup rw,cpu\n"),
            None
        );
    }
}
