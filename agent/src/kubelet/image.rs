//! `gannetd image import FILE`: an OCI image archive (a tar holding `oci-layout`, `index.json`
//! and `blobs/sha256/…`) into containerd's `k8s.io` namespace, where its CRI finds images,
//! through containerd's own content and images services (`containerd-client`'s bindings). There
//! is no registry to pull from: this is how a node gets its images.
//!
//! Every blob is written under a lease (so containerd's garbage collector leaves it alone until
//! the images exist) with the `containerd.io/gc.ref.content.*` labels that tie an index to its
//! manifests and a manifest to its config and layers, as `ctr import` does; then one image per
//! manifest of `index.json` that carries a name (`io.containerd.image.name` or
//! `org.opencontainers.image.ref.name`), normalised as the CRI looks names up
//! (`busybox` → `docker.io/library/busybox:latest`).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use containerd_client::services::v1::{
    CreateImageRequest, Image, Info, UpdateImageRequest, UpdateRequest, WriteAction,
    WriteContentRequest, content_client::ContentClient, images_client::ImagesClient,
    leases_client::LeasesClient,
};
use containerd_client::types::Descriptor;
use serde::Deserialize;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tracing::info;

use super::KubeletError;
use super::cri::{RuntimeEndpoint, channel};

/// The containerd namespace of the CRI's images and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How much of a blob one write request carries.
const CHUNK: usize = 1 << 20;
/// The largest manifest or index read to find its children.
const MAX_MANIFEST: usize = 4 << 20;

/// `gannetd image`.
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image archive (a tar with `index.json`, as `buildah push oci-archive:`,
    /// `skopeo copy oci-archive:` and Docker 25's `docker save` write) into the container
    /// runtime's `k8s.io` namespace, where the CRI and so gannetd's pods find it. Each manifest
    /// of `index.json` named by the annotation `io.containerd.image.name` or
    /// `org.opencontainers.image.ref.name` becomes an image of that name (normalised: `busybox`
    /// is `docker.io/library/busybox:latest`).
    Import {
        /// The OCI archive.
        file: PathBuf,
        /// The container runtime's socket (containerd): `unix:///run/containerd/containerd.sock`.
        #[arg(
            long,
            env = "GANNET_CONTAINER_RUNTIME",
            default_value = "unix:///run/containerd/containerd.sock",
            value_name = "ADDRESS"
        )]
        container_runtime: String,
    },
}

/// An OCI descriptor as `index.json` and manifests write them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The parts of an index or manifest that name children.
#[derive(Debug, Default, Deserialize)]
struct Children {
    #[serde(default)]
    manifests: Vec<OciDescriptor>,
    config: Option<OciDescriptor>,
    #[serde(default)]
    layers: Vec<OciDescriptor>,
}

/// Imports `file`; returns the names of the images created or updated.
///
/// # Errors
/// [`KubeletError::Archive`] naming the file and what is wrong with it;
/// [`KubeletError::Runtime`] when containerd refuses.
pub async fn import(endpoint: &str, file: &Path) -> Result<Vec<String>, KubeletError> {
    let endpoint: RuntimeEndpoint = endpoint.parse().map_err(|what| KubeletError::Runtime {
        endpoint: endpoint.to_owned(),
        what,
    })?;
    let bad = |what: String| KubeletError::Archive {
        file: file.display().to_string(),
        what,
    };
    let refused = |what: String| KubeletError::Runtime {
        endpoint: endpoint.to_string(),
        what,
    };
    let (index, blobs) = read_index(file).map_err(bad)?;
    let named: Vec<(String, &OciDescriptor)> = index
        .manifests
        .iter()
        .filter_map(|m| {
            m.annotations
                .get("io.containerd.image.name")
                .or_else(|| m.annotations.get("org.opencontainers.image.ref.name"))
                .map(|name| (normalize(name), m))
        })
        .collect();
    if named.is_empty() {
        return Err(bad(
            "index.json names no image (annotation io.containerd.image.name or \
             org.opencontainers.image.ref.name on a manifest)"
                .to_owned(),
        ));
    }
    for (_, manifest) in &named {
        if !blobs.contains(&manifest.digest) {
            return Err(bad(format!(
                "index.json: manifest {} is not in the archive",
                manifest.digest
            )));
        }
    }
    let channel = channel(endpoint.path())
        .await
        .map_err(|e| refused(format!("cannot connect: {}", gannet_api::chain(&e))))?;
    let mut leases = LeasesClient::new(channel.clone());
    // Unique per import: imports for gannet-control may run side by side.
    static IMPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let lease_id = format!(
        "gannetd-import-{}-{}",
        std::process::id(),
        IMPORTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let lease = leases
        .create(namespaced(
            containerd_client::services::v1::CreateRequest {
                id: lease_id.clone(),
                labels: HashMap::from([(
                    "containerd.io/gc.expire".to_owned(),
                    expiry_in_an_hour(),
                )]),
            },
            None,
        ))
        .await
        .map_err(|s| refused(format!("creating a lease: {}", s.message())))?
        .into_inner()
        .lease
        .map_or(lease_id, |l| l.id);
    let result = write_all(file, &channel, &lease, &named).await;
    let _ = leases
        .delete(namespaced(
            containerd_client::services::v1::DeleteRequest {
                id: lease,
                sync: false,
            },
            None,
        ))
        .await;
    result.map_err(|e| match e {
        Failure::Archive(what) => bad(what),
        Failure::Runtime(what) => refused(what),
    })
}

enum Failure {
    Archive(String),
    Runtime(String),
}

/// Writes every blob, then creates (or updates) the images.
async fn write_all(
    file: &Path,
    channel: &tonic::transport::Channel,
    lease: &str,
    named: &[(String, &OciDescriptor)],
) -> Result<Vec<String>, Failure> {
    let mut content = ContentClient::new(channel.clone());
    // The archive is read on a blocking thread (tar's reader is neither `Send` nor async), one
    // blob at a time handed over to be written.
    let (blobs, mut read) = tokio::sync::mpsc::channel(1);
    let path = file.to_owned();
    let reader = tokio::task::spawn_blocking(move || read_blobs(&path, &blobs));
    while let Some(blob) = read.recv().await {
        let (digest, data) = blob?;
        let labels = gc_labels(&data);
        write_blob(&mut content, lease, &digest, &data, labels)
            .await
            .map_err(Failure::Runtime)?;
    }
    drop(reader);
    let mut images = ImagesClient::new(channel.clone());
    let mut done = Vec::new();
    for (name, target) in named {
        let image = Image {
            name: name.clone(),
            labels: HashMap::new(),
            target: Some(Descriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let created = images
            .create(namespaced(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await;
        match created {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                images
                    .update(namespaced(
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        Some(lease),
                    ))
                    .await
                    .map_err(|s| {
                        Failure::Runtime(format!("updating image {name}: {}", s.message()))
                    })?;
            }
            Err(status) => {
                return Err(Failure::Runtime(format!(
                    "creating image {name}: {}",
                    status.message()
                )));
            }
        }
        info!(image = name, digest = target.digest, "image imported");
        done.push(name.clone());
    }
    Ok(done)
}

/// Sends each blob of the archive at `file` (its digest and bytes) to `blobs`, or the failure to
/// read it; stops when the receiver is gone.
fn read_blobs(file: &Path, blobs: &tokio::sync::mpsc::Sender<Result<(String, Vec<u8>), Failure>>) {
    let result = (|| {
        let mut archive = open(file).map_err(Failure::Archive)?;
        let entries = archive
            .entries()
            .map_err(|e| Failure::Archive(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Failure::Archive(format!("reading: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| Failure::Archive(format!("an entry's name: {e}")))?
                .into_owned();
            let Some(digest) = blob_digest(&path) else {
                continue;
            };
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| Failure::Archive(format!("{}: {e}", path.display())))?;
            if blobs.blocking_send(Ok((digest, data))).is_err() {
                break;
            }
        }
        Ok(())
    })();
    if let Err(failure) = result {
        let _ = blobs.blocking_send(Err(failure));
    }
}

/// One blob into the content store (verified by containerd against `digest`); a blob that is
/// already there gets the labels.
async fn write_blob(
    content: &mut ContentClient<tonic::transport::Channel>,
    lease: &str,
    digest: &str,
    data: &[u8],
    labels: HashMap<String, String>,
) -> Result<(), String> {
    let total = i64::try_from(data.len()).map_err(|_| format!("{digest}: too large"))?;
    let reference = format!("gannetd-import-{digest}");
    let mut requests = Vec::new();
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(CHUNK).collect()
    };
    let last = chunks.len() - 1;
    let mut offset = 0_i64;
    for (i, chunk) in chunks.into_iter().enumerate() {
        requests.push(WriteContentRequest {
            action: if i == last {
                WriteAction::Commit.into()
            } else {
                WriteAction::Write.into()
            },
            r#ref: reference.clone(),
            total,
            expected: digest.to_owned(),
            offset,
            data: chunk.to_vec(),
            labels: if i == last {
                labels.clone()
            } else {
                HashMap::new()
            },
        });
        offset += i64::try_from(chunk.len()).unwrap_or(0);
    }
    let stream = tokio_stream::iter(requests);
    match content.write(namespaced(stream, Some(lease))).await {
        Ok(response) => {
            let mut responses = response.into_inner();
            loop {
                match responses.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(status) if status.code() == tonic::Code::AlreadyExists => break,
                    Err(status) => {
                        return Err(format!("writing blob {digest}: {}", status.message()));
                    }
                }
            }
        }
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => return Err(format!("writing blob {digest}: {}", status.message())),
    }
    if labels.is_empty() {
        return Ok(());
    }
    let update = UpdateRequest {
        info: Some(Info {
            digest: digest.to_owned(),
            labels: labels.clone(),
            ..Info::default()
        }),
        update_mask: Some(prost_types_mask(&labels)),
    };
    content
        .update(namespaced(update, Some(lease)))
        .await
        .map(|_| ())
        .map_err(|s| format!("labelling blob {digest}: {}", s.message()))
}

/// The field mask that sets just these labels.
fn prost_types_mask(labels: &HashMap<String, String>) -> prost_types::FieldMask {
    prost_types::FieldMask {
        paths: labels.keys().map(|k| format!("labels.{k}")).collect(),
    }
}

/// The labels that keep a manifest's or index's children from containerd's garbage collector.
fn gc_labels(data: &[u8]) -> HashMap<String, String> {
    let mut labels = HashMap::new();
    if data.len() > MAX_MANIFEST || !data.starts_with(b"{") {
        return labels;
    }
    let Ok(children) = serde_json::from_slice::<Children>(data) else {
        return labels;
    };
    for (i, manifest) in children.manifests.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.m.{i}"),
            manifest.digest.clone(),
        );
    }
    if let Some(config) = &children.config {
        labels.insert(
            "containerd.io/gc.ref.content.config".to_owned(),
            config.digest.clone(),
        );
    }
    for (i, layer) in children.layers.iter().enumerate() {
        labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    labels
}

/// `request` in the CRI's namespace (and under `lease`).
fn namespaced<T>(request: T, lease: Option<&str>) -> Request<T> {
    let mut request = Request::new(request);
    request.metadata_mut().insert(
        "containerd-namespace",
        MetadataValue::from_static(CRI_NAMESPACE),
    );
    if let Some(lease) = lease
        && let Ok(value) = lease.parse()
    {
        request.metadata_mut().insert("containerd-lease", value);
    }
    request
}

fn expiry_in_an_hour() -> String {
    (super::status::now_timestamp() + k8s_openapi::jiff::SignedDuration::from_hours(1)).to_string()
}

fn open(file: &Path) -> Result<tar::Archive<File>, String> {
    File::open(file)
        .map(tar::Archive::new)
        .map_err(|e| format!("cannot open: {e}"))
}

/// `blobs/sha256/HEX` → `sha256:HEX`.
fn blob_digest(path: &Path) -> Option<String> {
    let text = path.to_str()?.trim_start_matches("./");
    let (algorithm, hex) = text.strip_prefix("blobs/")?.split_once('/')?;
    (!hex.is_empty() && !hex.contains('/')).then(|| format!("{algorithm}:{hex}"))
}

/// `index.json`, parsed, and the digests of the archive's blobs.
fn read_index(file: &Path) -> Result<(Children, std::collections::BTreeSet<String>), String> {
    let mut archive = open(file)?;
    let mut index = None;
    let mut blobs = std::collections::BTreeSet::new();
    for entry in archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        let path = entry
            .path()
            .map_err(|e| format!("an entry's name: {e}"))?
            .into_owned();
        if let Some(digest) = blob_digest(&path) {
            blobs.insert(digest);
        } else if path.to_str().map(|p| p.trim_start_matches("./")) == Some("index.json") {
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| format!("index.json: {e}"))?;
            let parsed: Children = serde_json::from_slice(&text)
                .map_err(|e| format!("index.json: not an OCI index: {e}"))?;
            index = Some(parsed);
        }
    }
    let index = index.ok_or_else(|| {
        "no index.json: not an OCI image archive (docker save's older format is not read)"
            .to_owned()
    })?;
    Ok((index, blobs))
}

/// A reference as the CRI (and docker) normalise it: a registry (`docker.io` when the first
/// component names none), `library/` for single-component docker.io names, `:latest` when
/// neither tag nor digest is given.
#[must_use]
pub fn normalize(name: &str) -> String {
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let has_domain = first.contains('.') || first.contains(':') || first == "localhost";
    let mut full = if has_domain {
        name.to_owned()
    } else if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else {
        format!("docker.io/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !last.contains('@') {
        full.push_str(":latest");
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_as_the_cri_looks_them_up() {
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("me/app", "docker.io/me/app:latest"),
            ("gannet.test/pause:1", "gannet.test/pause:1"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost/x@sha256:ab", "localhost/x@sha256:ab"),
        ] {
            assert_eq!(normalize(given), want, "{given}");
        }
    }

    #[test]
    fn manifests_keep_their_children() {
        let manifest =
            br#"{"schemaVersion":2,"config":{"mediaType":"c","digest":"sha256:c","size":1},
            "layers":[{"mediaType":"l","digest":"sha256:l0","size":2}]}"#;
        let labels = gc_labels(manifest);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], "sha256:c");
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], "sha256:l0");
        assert!(gc_labels(b"\x1f\x8b binary").is_empty());
    }

    #[test]
    fn blobs_are_found_by_path() {
        assert_eq!(
            blob_digest(Path::new("blobs/sha256/abc")).as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(
            blob_digest(Path::new("./blobs/sha256/abc")).as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(blob_digest(Path::new("index.json")), None);
        assert_eq!(blob_digest(Path::new("blobs/sha256/")), None);
    }
}
