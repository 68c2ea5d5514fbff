//! A directory of manifest files, re-read when it changes.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::ManifestError;
use crate::join::{Located, join};
use crate::model::DesiredState;
use crate::node::ClusterNode;
use crate::parse::{Document, Object, parse_file};

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The manifests of a directory, as of the last [`ManifestDir::scan`] that saw a change.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// By path, so in file-name order.
    files: BTreeMap<PathBuf, FileState>,
    scanned: bool,
}

/// The result of a scan that found a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOutcome {
    /// The whole desired state: the objects of every file that parsed, and the last good objects of
    /// every file that does not parse any more.
    pub state: DesiredState,
    /// Every error in effect after this scan, in file-name order: those of files that do not parse,
    /// and conflicts between files. A consumer replaces its previous list with this one.
    pub errors: Vec<ManifestError>,
    /// The `v1 Node`s of the directory, by name (for the overlay).
    pub nodes: BTreeMap<String, ClusterNode>,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// The objects of the last version of the file that parsed (none if it never did).
    good: Vec<Document>,
    /// The errors of the current version; empty when it parsed.
    errors: Vec<ManifestError>,
}

/// What tells that a file changed without reading it. The inode catches an atomic rename over the
/// file, as Kubernetes does for `ConfigMap` volumes (whose files are symlinks, followed here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

impl Stamp {
    fn of(metadata: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            #[cfg(unix)]
            inode: (metadata.dev(), metadata.ino()),
            #[cfg(unix)]
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

impl ManifestDir {
    /// Watches `dir`; nothing is read until the first [`scan`](Self::scan).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            scanned: false,
        }
    }

    /// Re-reads the directory (files ending .yaml/.yml/.json, not hidden, not recursive) when
    /// anything changed since the last scan (names, sizes, mtimes: cheap to call every 200 ms). A
    /// file that fails to parse keeps its last good contents in effect (so the last good state
    /// keeps serving) and its errors are returned.
    ///
    /// Returns `None` when nothing changed since the last scan; the first scan always returns an
    /// outcome. Only changed files are read again. A file that cannot be read is reported like one
    /// that does not parse. An error listing the directory itself is returned as is, and the next
    /// scan starts over from the same point.
    pub fn scan(&mut self) -> io::Result<Option<ScanOutcome>> {
        let listing = self.list()?;
        let unchanged = listing.len() == self.files.len()
            && listing
                .iter()
                .zip(&self.files)
                .all(|((path, stamp), (known, file))| path == known && *stamp == file.stamp);
        if self.scanned && unchanged {
            return Ok(None);
        }
        self.scanned = true;

        self.files.retain(|path, _| {
            let kept = listing.contains_key(path);
            if !kept {
                tracing::debug!(file = %path.display(), "manifest file removed");
            }
            kept
        });
        for (path, stamp) in listing {
            if self
                .files
                .get(&path)
                .is_some_and(|file| file.stamp == stamp)
            {
                continue;
            }
            tracing::debug!(file = %path.display(), "reading manifest file");
            let parsed = read(&path);
            let file = self.files.entry(path).or_insert_with(|| FileState {
                stamp,
                good: Vec::new(),
                errors: Vec::new(),
            });
            file.stamp = stamp;
            match parsed {
                Ok(documents) => {
                    file.good = documents;
                    file.errors.clear();
                }
                Err(errors) => file.errors = errors,
            }
        }
        Ok(Some(self.outcome()))
    }

    /// The manifest files of the directory and their stamps, by path.
    fn list(&self) -> io::Result<BTreeMap<PathBuf, Stamp>> {
        let mut listing = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !is_manifest_name(&path) {
                continue;
            }
            let metadata = match fs::metadata(&path) {
                Ok(metadata) => metadata,
                // Removed since listed, or a dangling symlink: not a file now.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            if metadata.is_file() {
                listing.insert(path, Stamp::of(&metadata));
            }
        }
        Ok(listing)
    }

    fn outcome(&self) -> ScanOutcome {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut errors = Vec::new();
        let mut nodes = BTreeMap::new();
        for (path, file) in &self.files {
            errors.extend_from_slice(&file.errors);
            for document in &file.good {
                match &document.object {
                    Object::Service(service) => services.push(Located {
                        file: path,
                        document: document.index,
                        object: &**service,
                    }),
                    Object::EndpointSlice(slice) => slices.push(Located {
                        file: path,
                        document: document.index,
                        object: &**slice,
                    }),
                    Object::Node(node) => {
                        if nodes.insert(node.name.clone(), (**node).clone()).is_some() {
                            errors.push(ManifestError {
                                file: path.clone(),
                                document: document.index,
                                object: Some(format!("Node {}", node.name)),
                                field: Some("metadata.name".to_owned()),
                                message: "another file of the directory has a Node of this name; this one is used".to_owned(),
                            });
                        }
                    }
                    Object::Ignored { .. } => {}
                }
            }
        }
        let (state, conflicts) = join(services, slices);
        errors.extend(conflicts);
        // Stable: each file's errors keep their document order.
        errors.sort_by(|a, b| a.file.cmp(&b.file));
        ScanOutcome {
            state,
            errors,
            nodes,
        }
    }
}

fn is_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .is_none_or(|name| name.as_encoded_bytes().starts_with(b"."));
    let manifest = path
        .extension()
        .and_then(|extension| extension.to_str())
        .is_some_and(|extension| EXTENSIONS.contains(&extension));
    !hidden && manifest
}

/// Reads and parses one file; a file that cannot be read yields one error for the whole file.
fn read(path: &Path) -> Result<Vec<Document>, Vec<ManifestError>> {
    let whole_file = |message: String| {
        vec![ManifestError {
            file: path.to_owned(),
            document: 0,
            object: None,
            field: None,
            message,
        }]
    };
    let bytes = fs::read(path).map_err(|error| whole_file(format!("cannot read: {error}")))?;
    let text =
        String::from_utf8(bytes).map_err(|error| whole_file(format!("not UTF-8: {error}")))?;
    parse_file(path, &text)
}
