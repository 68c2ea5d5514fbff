//! A directory of manifest files, re-read when it changes.
//!
//! A change of a few files is joined for the Services those files touch only, and reported as the
//! frontends that changed, so one endpoint change among 10 000 Services costs about as much as
//! among ten. Whenever that could differ from joining everything (two objects claiming the same
//! name, frontend, node port or address, which the whole directory's file order decides), the
//! whole directory is joined again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::ManifestError;
use crate::join::{Claims, Located, ServiceKey, add_service, join_checked};
use crate::model::{DesiredState, Frontend, ServicePort};
use crate::node::ClusterNode;
use crate::parse::{Document, Object, parse_file};
use crate::validate::{Checked, ValidService, ValidSlice, check_service, check_slice};

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// The manifests of a directory, as of the last [`ManifestDir::scan`] that saw a change.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    /// By path, so in file-name order.
    files: BTreeMap<PathBuf, FileState>,
    scanned: bool,
    /// The join of the last scan that saw a change.
    joined: Option<Joined>,
    names: Names,
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

/// The result of [`ManifestDir::scan_changes`]: a [`ScanOutcome`] whose state is borrowed, with
/// the frontends that changed.
#[derive(Debug)]
pub struct Scan<'a> {
    /// As [`ScanOutcome::state`].
    pub state: &'a DesiredState,
    /// The frontends whose [`ServicePort`] changed since the previous scan that saw a change,
    /// with their new value (`None`: gone), when the scan could tell them from the changed files
    /// alone; `None` after the first scan and after any scan that joined the whole directory.
    pub changes: Option<BTreeMap<Frontend, Option<ServicePort>>>,
    /// As [`ScanOutcome::errors`].
    pub errors: Vec<ManifestError>,
    /// As [`ScanOutcome::nodes`].
    pub nodes: BTreeMap<String, ClusterNode>,
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    /// The objects of the last version of the file that parsed, checked when it was read (none if
    /// it never did), with their document's position.
    good: Vec<(usize, Item)>,
    /// The positions in `good` of each Service's objects: its definition and its slices.
    by_service: HashMap<ServiceKey, Vec<usize>>,
    /// The errors of the current version; empty when it parsed.
    errors: Vec<ManifestError>,
}

impl FileState {
    /// Takes `items` as the file's objects; returns the old ones.
    fn replace(&mut self, items: Vec<(usize, Item)>) -> Vec<(usize, Item)> {
        self.by_service.clear();
        for (position, (_, item)) in items.iter().enumerate() {
            if let Some((namespace, name)) = item.service() {
                self.by_service
                    .entry((namespace.to_owned(), name.to_owned()))
                    .or_default()
                    .push(position);
            }
        }
        std::mem::replace(&mut self.good, items)
    }
}

/// How many objects of the directory bear each name; a name borne twice is a conflict that only
/// a whole join, in file order, resolves.
#[derive(Debug, Default)]
struct Names {
    services: HashMap<ServiceKey, u32>,
    slices: HashMap<ServiceKey, u32>,
    /// Names borne more than once.
    duplicates: usize,
}

impl Names {
    /// Counts `items` in (`add`) or out, and adds the Services they belong to to `touched`.
    fn count(&mut self, items: &[(usize, Item)], add: bool, touched: &mut HashSet<ServiceKey>) {
        for (_, item) in items {
            let (counts, name) = match item {
                Item::Service(service) => (&mut self.services, (&service.namespace, &service.name)),
                Item::Slice(slice) => (&mut self.slices, (&slice.namespace, &slice.name)),
                Item::Node(_) => continue,
            };
            if let Some((namespace, name)) = item.service() {
                touched.insert((namespace.to_owned(), name.to_owned()));
            }
            let key = (name.0.clone(), name.1.clone());
            if add {
                let count = counts.entry(key).or_default();
                *count += 1;
                if *count == 2 {
                    self.duplicates += 1;
                }
            } else if let Some(count) = counts.get_mut(&key) {
                *count -= 1;
                match *count {
                    0 => {
                        counts.remove(&key);
                    }
                    1 => self.duplicates -= 1,
                    _ => {}
                }
            }
        }
    }
}

/// What the join and the overlay use of a document.
#[derive(Debug)]
enum Item {
    Service(ValidService),
    Slice(ValidSlice),
    Node(ClusterNode),
}

impl Item {
    /// The Service this object belongs to, if it is part of one.
    fn service(&self) -> Option<(&str, &str)> {
        match self {
            Self::Service(service) => Some((&service.namespace, &service.name)),
            Self::Slice(slice) => Some((&slice.namespace, &slice.service_name)),
            Self::Node(_) => None,
        }
    }
}

/// The desired state of the whole directory and what its Services hold.
#[derive(Debug)]
struct Joined {
    state: DesiredState,
    claims: Claims,
    /// The frontends of each Service in `state`.
    frontends: HashMap<ServiceKey, Vec<Frontend>>,
    /// The errors of objects left out because another one came first in file order: while there
    /// are any, every change is joined whole (only the whole directory knows that order).
    conflicts: Vec<ManifestError>,
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
            joined: None,
            names: Names::default(),
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
        Ok(self.scan_changes()?.map(|scan| ScanOutcome {
            state: scan.state.clone(),
            errors: scan.errors,
            nodes: scan.nodes,
        }))
    }

    /// [`scan`](Self::scan) for a consumer that keeps what it programmed: the state is lent, not
    /// copied, and comes with the frontends that changed when the changed files alone tell them.
    ///
    /// # Errors
    /// As [`scan`](Self::scan).
    pub fn scan_changes(&mut self) -> io::Result<Option<Scan<'_>>> {
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

        // The Services the changed files touch, before and after the change.
        let mut touched: HashSet<ServiceKey> = HashSet::new();
        let names = &mut self.names;
        self.files.retain(|path, file| {
            let kept = listing.contains_key(path);
            if !kept {
                tracing::debug!(file = %path.display(), "manifest file removed");
                names.count(&file.good, false, &mut touched);
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
                by_service: HashMap::new(),
                errors: Vec::new(),
            });
            file.stamp = stamp;
            match parsed {
                Ok(documents) => {
                    let old = file.replace(items(documents));
                    self.names.count(&old, false, &mut touched);
                    self.names.count(&file.good, true, &mut touched);
                    file.errors.clear();
                }
                Err(errors) => file.errors = errors,
            }
        }

        let Self {
            files,
            joined,
            names,
            ..
        } = self;
        let changes = match joined {
            Some(joined) if joined.conflicts.is_empty() && names.duplicates == 0 => {
                join_touched(files, joined, &touched)
            }
            _ => None,
        };
        if changes.is_none() {
            *joined = Some(join_all(files));
        }
        let joined = joined.as_ref().expect("joined above");

        let mut errors = Vec::new();
        let mut nodes = BTreeMap::new();
        for (path, file) in files.iter() {
            errors.extend_from_slice(&file.errors);
            for (document, item) in &file.good {
                if let Item::Node(node) = item
                    && nodes.insert(node.name.clone(), node.clone()).is_some()
                {
                    errors.push(ManifestError {
                        file: path.clone(),
                        document: *document,
                        object: Some(format!("Node {}", node.name)),
                        field: Some("metadata.name".to_owned()),
                        message: "another file of the directory has a Node of this name; this one is used".to_owned(),
                    });
                }
            }
        }
        errors.extend_from_slice(&joined.conflicts);
        // Stable: each file's errors keep their order.
        errors.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(Some(Scan {
            state: &joined.state,
            changes,
            errors,
            nodes,
        }))
    }

    /// Makes the next scan that sees a change join the whole directory.
    #[cfg(test)]
    pub(crate) fn forget_join(&mut self) {
        self.joined = None;
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
}

/// The objects of a file that parsed, as the join and the overlay use them. [`parse_file`] has
/// checked every Service and `EndpointSlice` already (a file with one it refuses does not parse),
/// so checking again only sorts out the ones gannet has nothing to do for.
fn items(documents: Vec<Document>) -> Vec<(usize, Item)> {
    let mut items = Vec::with_capacity(documents.len());
    for Document { index, object } in documents {
        let item = match object {
            Object::Service(service) => match check_service(&service) {
                Ok(Checked::Serve(service)) => Item::Service(service),
                Ok(Checked::Skip(reason)) => {
                    tracing::debug!(document = index, reason, "Service not balanced");
                    continue;
                }
                Err(_) => continue,
            },
            Object::EndpointSlice(slice) => match check_slice(&slice) {
                Ok(Checked::Serve(slice)) => Item::Slice(slice),
                Ok(Checked::Skip(reason)) => {
                    tracing::debug!(document = index, reason, "EndpointSlice not used");
                    continue;
                }
                Err(_) => continue,
            },
            Object::Node(node) => Item::Node(*node),
            Object::Ignored { .. } => continue,
        };
        items.push((index, item));
    }
    items
}

/// Joins every object of the directory.
fn join_all(files: &BTreeMap<PathBuf, FileState>) -> Joined {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (path, file) in files {
        for (document, item) in &file.good {
            let located = Located {
                file: path,
                document: *document,
                object: &(),
            };
            match item {
                Item::Service(service) => services.push((located, service)),
                Item::Slice(slice) => slices.push((located, slice)),
                Item::Node(_) => {}
            }
        }
    }
    let (state, claims, conflicts) = join_checked(services, slices);
    let mut frontends: HashMap<ServiceKey, Vec<Frontend>> = HashMap::new();
    for (frontend, port) in &state.services {
        frontends
            .entry((port.namespace.clone(), port.name.clone()))
            .or_default()
            .push(*frontend);
    }
    Joined {
        state,
        claims,
        frontends,
        conflicts,
    }
}

/// Joins again the `touched` Services of a directory whose last join had no conflicts and where
/// no name is borne twice, and returns the frontends that changed; `None` when a whole join is
/// needed (a frontend, node port or address claimed twice), after which `joined` is only fit to be
/// replaced.
fn join_touched(
    files: &BTreeMap<PathBuf, FileState>,
    joined: &mut Joined,
    touched: &HashSet<ServiceKey>,
) -> Option<BTreeMap<Frontend, Option<ServicePort>>> {
    // Out with the touched Services' frontends and claims...
    let mut old = BTreeMap::new();
    for key in touched {
        for frontend in joined.frontends.remove(key).unwrap_or_default() {
            if let Some(port) = joined.state.services.remove(&frontend) {
                old.insert(frontend, port);
            }
        }
        joined.claims.release(key);
    }
    // ... and in with them as the files define them now, with their slices in file order.
    let mut changes: BTreeMap<Frontend, Option<ServicePort>> = BTreeMap::new();
    for key in touched {
        let mut service = None;
        let mut slices = Vec::new();
        for file in files.values() {
            for &position in file.by_service.get(key).into_iter().flatten() {
                match &file.good[position].1 {
                    Item::Service(definition) => service = Some(definition),
                    Item::Slice(slice) => slices.push(slice),
                    Item::Node(_) => {}
                }
            }
        }
        let Some(service) = service else { continue };
        let added = add_service(&mut joined.state, &mut joined.claims, service, &slices).ok()?;
        for frontend in &added {
            let port = &joined.state.services[frontend];
            if old.get(frontend) != Some(port) {
                changes.insert(*frontend, Some(port.clone()));
            }
        }
        joined.frontends.insert(key.clone(), added);
    }
    for frontend in old.into_keys() {
        if !joined.state.services.contains_key(&frontend) {
            changes.insert(frontend, None);
        }
    }
    tracing::debug!(
        services = touched.len(),
        changed = changes.len(),
        "manifest change joined for the Services it touches"
    );
    Some(changes)
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
