//! gannet-control: the compact control plane.
#![expect(
    unused_crate_dependencies,
    reason = "the dependencies are the library's; this binary only calls into it"
)]

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use gannet_control::config::{Cli, Command, EXIT_USAGE, RunConfig, StoreConfig};
use gannet_control::store::{EmbeddedStore, EtcdStore, Store};
use gannet_control::{certs, logging, server};
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command.unwrap_or(Command::Run(Box::new(cli.run))) {
        Command::Certs(args) => {
            let hosts = args.hosts();
            match certs::generate(&args.out, &hosts, args.force) {
                Ok(written) => {
                    let mut out = std::io::stdout().lock();
                    for file in &written.files {
                        let _ = writeln!(out, "wrote {}", file.display());
                    }
                    let _ = writeln!(
                        out,
                        "server certificate for: {}\nserve with: gannet-control --listen 0.0.0.0:6443 --tls-dir {}",
                        hosts.join(", "),
                        args.out.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gannet-control certs: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => {
            logging::init(args.log_format, "info");
            let config = match args.validate() {
                Ok(config) => config,
                Err(e) => {
                    eprint!("gannet-control: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    error!(error = %e, "cannot start the runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = format!("{e:#}"), "gannet-control failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(config: RunConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Embedded { path } => {
            create_private_dir(&config.data_dir)
                .with_context(|| format!("--data-dir {}", config.data_dir.display()))?;
            Arc::new(EmbeddedStore::open(path)?)
        }
        StoreConfig::Etcd {
            endpoints,
            prefix,
            tls,
        } => {
            let store = EtcdStore::with_tls(endpoints, prefix, tls.as_ref())?;
            let revision = store
                .check()
                .await
                .with_context(|| format!("--etcd-endpoints {}", endpoints.join(",")))?;
            info!(
                endpoints = endpoints.join(","),
                prefix, revision, "connected to etcd"
            );
            Arc::new(store)
        }
    };
    let plane = server::start(store, config.options).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = terminate.recv() => info!("SIGTERM: shutting down"),
    }
    plane.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
