//! `gannetctl image import FILE... --node NAME...`: OCI archives into nodes' runtimes, sent through
//! gannet-control to each node's gannetd (its kubelet role imports them into containerd, as
//! `gannetd image import` does on the node itself).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use clap::Subcommand;
use gannet_api::{Client, IMAGE_CHUNK};

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCommand {
    /// Import OCI image archives (a tar with `index.json`, as `buildah push oci-archive:`,
    /// `skopeo copy oci-archive:` and Docker 25's `docker save` write) into the runtime of each
    /// node named, through gannet-control and the node's gannetd, as `gannetd image import` does
    /// there; the nodes' gannetd must run pods (--container-runtime).
    Import {
        /// The archives.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The node to import into; repeatable.
        #[arg(long = "node", required = true, value_name = "NAME")]
        nodes: Vec<String>,
    },
}

pub(crate) async fn image(
    client: &mut Client,
    command: &ImageCommand,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let ImageCommand::Import { files, nodes } = command;
    let mut failed = false;
    for file in files {
        for node in nodes {
            match import(client, file, node).await {
                Ok(images) => {
                    for image in images {
                        writeln!(out, "{node}: imported {image} ({})", file.display())?;
                    }
                }
                Err(error) => {
                    failed = true;
                    eprintln!("gannetctl: {node}: {}: {error:#}", file.display());
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Sends `path` to `node` in chunks read as they are sent.
async fn import(client: &mut Client, path: &Path, node: &str) -> anyhow::Result<Vec<String>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let read_error = Arc::new(Mutex::new(None));
    let chunks = Chunks {
        file,
        error: Arc::clone(&read_error),
    };
    let result = client
        .import_image(
            node,
            &path.display().to_string(),
            size,
            tokio_stream::iter(chunks),
        )
        .await;
    // A read error ends the upload short, which the node refuses: report the cause.
    if let Some(error) = read_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(error).with_context(|| format!("reading {}", path.display()));
    }
    Ok(result?)
}

struct Chunks {
    file: File,
    error: Arc<Mutex<Option<std::io::Error>>>,
}

impl Iterator for Chunks {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut chunk = Vec::with_capacity(IMAGE_CHUNK);
        match (&mut self.file)
            .take(IMAGE_CHUNK as u64)
            .read_to_end(&mut chunk)
        {
            Ok(0) => None,
            Ok(_) => Some(chunk),
            Err(error) => {
                *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                None
            }
        }
    }
}
