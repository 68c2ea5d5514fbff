//! One gannetd per node: what an agent owns, it holds an exclusive `flock` on for its whole life
//! (its `--bpf-root` and its `--state-dir`, the directories themselves), and `gannetd cleanup`
//! takes the same locks before it removes anything. A process that finds a directory locked is
//! told who holds it (pid and command line, from `/proc/locks`).
//!
//! The lock is on the directory's inode, so it needs no file of its own (bpffs holds only pins)
//! and goes away with the process, however it ends.

use std::{
    fmt, fs, io,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

/// The process that holds a lock, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line (arguments joined by spaces), when readable.
    pub cmdline: Option<String>,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(cmdline) = &self.cmdline {
            write!(f, " ({cmdline})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "{flag} {}: in use by {}",
        path.display(),
        holder.as_ref().map_or_else(|| "another process (not visible in /proc/locks)".to_owned(), ToString::to_string)
    )]
    Held {
        flag: &'static str,
        path: PathBuf,
        holder: Option<Holder>,
    },
    #[error("{flag} {}: {source}", path.display())]
    Io {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An exclusive `flock` on a directory, held until drop.
#[derive(Debug)]
pub struct DirLock {
    dir: OwnedFd,
    path: PathBuf,
}

impl DirLock {
    /// Locks the existing directory `path` (named by `flag` in errors) without waiting.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder when another process has it locked;
    /// [`LockError::Io`] when it cannot be opened.
    pub fn acquire(path: &Path, flag: &'static str) -> Result<DirLock, LockError> {
        let io_err = |source| LockError::Io {
            flag,
            path: path.to_owned(),
            source,
        };
        // A directory removed and made again between open and flock (a cleanup finishing)
        // would leave us holding a lock on the old one: check, and take the new one.
        for _ in 0..3 {
            let dir: OwnedFd = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(path)
                .map_err(io_err)?
                .into();
            // SAFETY: a valid descriptor we own.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                    return Err(io_err(error));
                }
                let meta = fs::File::from(dir).metadata().map_err(io_err)?;
                return Err(LockError::Held {
                    flag,
                    path: path.to_owned(),
                    holder: holder(meta.dev(), meta.ino()),
                });
            }
            let lock = DirLock {
                dir,
                path: path.to_owned(),
            };
            if lock.is_current() {
                return Ok(lock);
            }
        }
        Err(io_err(io::Error::other(
            "the directory keeps being replaced while it is locked",
        )))
    }

    /// The locked directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the directory that is locked (not removed, not replaced).
    #[must_use]
    pub fn is_current(&self) -> bool {
        let Ok(locked) = fstat(&self.dir) else {
            return false;
        };
        fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == locked)
    }
}

/// The locks one gannetd holds for its whole life: its `--bpf-root` and its `--state-dir`,
/// taken in that order (by `gannetd cleanup` too).
#[derive(Debug)]
pub struct AgentLocks {
    pub bpf_root: Option<DirLock>,
    pub state_dir: Option<DirLock>,
    /// The directories taking the locks created (parents first).
    created: Vec<PathBuf>,
}

impl AgentLocks {
    /// For `gannetd run`: creates the directories that are missing (the bpf root only when
    /// `bpf_root` is given) and locks them. When a lock is refused, the directories this call
    /// created are removed again.
    ///
    /// # Errors
    /// When a directory is locked by another process (naming it) or cannot be created.
    pub fn take(bpf_root: Option<&Path>, state_dir: &Path) -> Result<AgentLocks, LockError> {
        let mut locks = AgentLocks {
            bpf_root: None,
            state_dir: None,
            created: Vec::new(),
        };
        let result = (|| {
            if let Some(bpf_root) = bpf_root {
                locks.create(bpf_root, "--bpf-root")?;
                locks.bpf_root = Some(DirLock::acquire(bpf_root, "--bpf-root")?);
            }
            locks.create(state_dir, "--state-dir")?;
            locks.state_dir = Some(DirLock::acquire(state_dir, "--state-dir")?);
            Ok(())
        })();
        match result {
            Ok(()) => Ok(locks),
            Err(e) => {
                locks.remove_created();
                Err(e)
            }
        }
    }

    /// For `gannetd cleanup`: locks those of the directories that exist.
    ///
    /// # Errors
    /// When a directory is locked by another process (naming it) or cannot be opened.
    pub fn take_existing(bpf_root: &Path, state_dir: &Path) -> Result<AgentLocks, LockError> {
        let lock = |path: &Path, flag| {
            if path.is_dir() {
                DirLock::acquire(path, flag).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(AgentLocks {
            bpf_root: lock(bpf_root, "--bpf-root")?,
            state_dir: lock(state_dir, "--state-dir")?,
            created: Vec::new(),
        })
    }

    /// The directories [`take`](Self::take) created, parents first.
    #[must_use]
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }

    /// Removes the directories [`take`](Self::take) created, as far as they are empty.
    pub fn remove_created(&mut self) {
        for dir in self.created.drain(..).rev() {
            let _ = fs::remove_dir(&dir);
        }
    }

    /// Creates `path` and its missing parents, remembering each directory it made.
    fn create(&mut self, path: &Path, flag: &'static str) -> Result<(), LockError> {
        let mut missing = Vec::new();
        let mut probe = path;
        while !probe.exists() {
            missing.push(probe.to_owned());
            match probe.parent() {
                Some(parent) => probe = parent,
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            match fs::create_dir(&dir) {
                Ok(()) => self.created.push(dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(LockError::Io {
                        flag,
                        path: dir,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

fn fstat(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let file = fs::File::from(fd.try_clone()?);
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// `major` and `minor` of a device number (the kernel's `new_encode_dev`, as glibc and musl
/// decode it).
fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The process holding a `flock` on the inode `ino` of device `dev`, from `/proc/locks`.
fn holder(dev: u64, ino: u64) -> Option<Holder> {
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let pid = flock_holder(&locks, dev, ino)?;
    Some(Holder {
        pid,
        cmdline: cmdline(pid),
    })
}

/// Finds the pid of the `FLOCK` entry for `dev`/`ino` in the text of `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF`; major and minor in hex; waiters, marked
/// `->`, are skipped).
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = major_minor(dev);
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = fields.get(5)?.split(':');
        let matches = u64::from_str_radix(id.next()?, 16).ok()? == major
            && u64::from_str_radix(id.next()?, 16).ok()? == minor
            && id.next()?.parse::<u64>().ok()? == ino;
        let pid = fields.get(4)?.parse::<u32>().ok()?;
        (matches && pid > 0).then_some(pid)
    })
}

/// The command line of `pid`, arguments joined by spaces.
fn cmdline(pid: u32) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = bytes
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// Removes what a start that failed had created, so that the next start begins from nothing
/// (and does not claim to adopt a data plane that never served): the bpf root with every pin and
/// link in it when it held no pin before this start, the state directory when this start
/// created it. A start that adopted an earlier gannetd's data plane leaves that in place.
/// Disarmed by [`started`](Self::started) once gannetd is ready.
#[derive(Debug)]
pub struct StartGuard {
    /// The bpf root, when this start found no pin in it.
    fresh_bpf_root: Option<PathBuf>,
    /// The state directory, when this start created it.
    created_state_dir: Option<PathBuf>,
    armed: bool,
}

impl StartGuard {
    /// Looks at what `locks` found and created; call right after taking them, before anything
    /// is loaded.
    #[must_use]
    pub fn new(locks: &AgentLocks) -> StartGuard {
        let fresh_bpf_root = locks
            .bpf_root
            .as_ref()
            .map(DirLock::path)
            .filter(|root| !holds_pins(root))
            .map(Path::to_owned);
        let created_state_dir = locks
            .state_dir
            .as_ref()
            .map(DirLock::path)
            .filter(|dir| locks.created().iter().any(|c| c == dir))
            .map(Path::to_owned);
        StartGuard {
            fresh_bpf_root,
            created_state_dir,
            armed: true,
        }
    }

    /// gannetd started: from now on what it created is its data plane, kept across restarts.
    pub fn started(&mut self) {
        self.armed = false;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(root) = &self.fresh_bpf_root {
            match crate::datapath::cleanup(root) {
                Ok(removed) => tracing::warn!(
                    bpf_root = %root.display(),
                    removed = removed.len(),
                    "start failed: removed the pins and links it had created"
                ),
                Err(error) => tracing::error!(
                    bpf_root = %root.display(),
                    %error,
                    "start failed, and removing the pins it had created failed too"
                ),
            }
        }
        if let Some(dir) = &self.created_state_dir
            && let Err(error) = fs::remove_dir_all(dir)
        {
            tracing::error!(
                state_dir = %dir.display(),
                %error,
                "start failed, and removing the state directory it had created failed too"
            );
        }
    }
}

/// Whether `dir` holds anything but directories (pins and links, on bpffs).
fn holds_pins(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            entry
                .file_type()
                .map_or(true, |t| !t.is_dir() || holds_pins(&entry.path()))
        })
    })
}

/// What a running gannetd pinned or bound at start, to notice when it disappears underneath it
/// (someone removed the pins by hand, or an older `gannetd cleanup` that took no lock): each path
/// with the inode it had.
#[derive(Debug, Default)]
pub struct Watched {
    entries: Vec<(PathBuf, u64, u64)>,
}

impl Watched {
    /// Watches `path` as it is now; a path that does not exist is not watched.
    pub fn add(&mut self, path: &Path) {
        if let Ok(meta) = fs::symlink_metadata(path) {
            self.entries.push((path.to_owned(), meta.dev(), meta.ino()));
        }
    }

    /// Watches every entry directly in `dir` as it is now.
    pub fn add_entries(&mut self, dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                self.add(&path);
            }
        }
    }

    /// How many paths are watched.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is watched.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first watched path that is gone or is now another file, with what happened to it.
    #[must_use]
    pub fn check(&self) -> Option<(PathBuf, &'static str)> {
        self.entries
            .iter()
            .find_map(|(path, dev, ino)| match fs::symlink_metadata(path) {
                Ok(meta) if (meta.dev(), meta.ino()) == (*dev, *ino) => None,
                Ok(_) => Some((path.clone(), "replaced by another file")),
                Err(_) => Some((path.clone(), "removed")),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_flock_holder_of_an_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 11 00:1a:42 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 22 00:1b:42 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 33 00:1a:42 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 44 00:1a:42 0 EOF\n";
        // 00:1a: major 0, minor 0x1a.
        assert_eq!(flock_holder(locks, 0x1a, 42), Some(44));
        assert_eq!(flock_holder(locks, 0x1b, 42), Some(22));
        assert_eq!(flock_holder(locks, 0x1a, 43), None);
    }

    #[test]
    fn device_numbers_split_as_the_kernel_encodes_them() {
        // makedev(259, 3) and makedev(8, 1), as glibc encodes them.
        assert_eq!(major_minor(0x1_0303), (259, 3));
        assert_eq!(major_minor(0x801), (8, 1));
    }

    #[test]
    fn a_second_lock_is_refused_naming_this_process() {
        let dir = std::env::temp_dir().join(format!("gannet-lock-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating the test directory");
        let first = DirLock::acquire(&dir, "--state-dir").expect("first lock");
        // flock locks belong to the open file: a second open in this process conflicts too.
        let second = DirLock::acquire(&dir, "--state-dir").expect_err("second lock must fail");
        let message = second.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "the refusal must name this process: {message}"
        );
        assert!(first.is_current(), "the locked directory is still there");
        drop(first);
        let again = DirLock::acquire(&dir, "--state-dir").expect("free again after drop");
        fs::remove_dir(&dir).expect("removing the test directory");
        assert!(
            !again.is_current(),
            "a removed directory is no longer current"
        );
    }

    #[test]
    fn watched_paths_report_removal_and_replacement() {
        let dir = std::env::temp_dir().join(format!("gannet-watch-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating the test directory");
        fs::write(dir.join("a"), "a").expect("writing a");
        fs::write(dir.join("b"), "b").expect("writing b");
        let mut watched = Watched::default();
        watched.add_entries(&dir);
        assert_eq!(watched.len(), 2);
        assert_eq!(watched.check(), None);
        fs::write(dir.join("b.new"), "b").expect("writing b.new");
        fs::rename(dir.join("b.new"), dir.join("b")).expect("replacing b");
        assert_eq!(
            watched.check(),
            Some((dir.join("b"), "replaced by another file"))
        );
        fs::remove_file(dir.join("a")).expect("removing a");
        assert_eq!(watched.check(), Some((dir.join("a"), "removed")));
        fs::remove_dir_all(&dir).expect("removing the test directory");
    }
}
