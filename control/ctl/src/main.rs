//! gannetctl: apply, get, watch and delete gannet-control's objects, read pods' logs, and import
//! images into nodes.

mod describe;
mod get;
mod image;
mod logs;
mod manifest;
mod table;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use gannet_api::{
    Change, Client, ClientError, Credentials, DeleteOptions, Kind, ListWatch, Object, SERVER_ENV,
    ServerAddr,
};
use serde_json::Value;

use crate::get::{Get, KINDS, Selector, parse_kinds};

// Used by the integration tests only.
#[cfg(test)]
use {gannet_control as _, gannet_testkit as _, tempfile as _};

/// `EX_USAGE` from sysexits.h.
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "gannetctl",
    version,
    about = "Command-line client of gannet-control"
)]
struct Cli {
    /// The control plane: `unix:PATH`, `https://HOST:PORT`, or `http://HOST:PORT` (an
    /// --insecure loopback server); the same flag and variable as gannetd's.
    #[arg(long, global = true, env = SERVER_ENV, default_value = gannet_api::DEFAULT_SERVER, value_name = "ADDRESS")]
    server: String,
    /// For https servers: the directory with `ca.pem` and `token` (`gannet-control certs`).
    #[arg(
        long,
        global = true,
        default_value = "/etc/gannet/pki",
        env = "GANNET_TLS_DIR",
        value_name = "DIR"
    )]
    tls_dir: PathBuf,
    /// The bearer token (instead of `token` in --tls-dir).
    #[arg(long, global = true, env = "GANNET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update objects from manifests (all or nothing).
    Apply {
        /// A file, a directory of .yaml/.yml/.json files, or - for stdin. Repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Check and allocate, but write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List objects, or show some.
    Get {
        /// service (svc), endpointslice (eps), pod (po), node (no), lease; several
        /// comma-separated (`svc,po`), or `all` (services and pods).
        kind: String,
        /// Only these objects.
        names: Vec<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only objects whose labels match: `key=value`, `key!=value`, `key`, `!key`,
        /// comma-separated (all must match).
        #[arg(short = 'l', long)]
        selector: Option<String>,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
        /// After listing, print changes as they happen (one kind).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show one object in detail, with what belongs to it (a Service's endpoints, a Node's
    /// heartbeat Lease).
    Describe {
        /// service (svc), endpointslice (eps), pod (po), node (no), lease.
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Print a container's log (the runtime's log file on the pod's node: read directly there,
    /// through gannet-control from elsewhere).
    Logs(logs::LogsArgs),
    /// Images on the nodes: `image import FILE --node NAME`.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Delete objects: by kind and names, or those of manifests (-f).
    Delete {
        /// A kind as `get` takes it (not with -f).
        kind: Option<String>,
        names: Vec<String>,
        /// The objects of these manifests (a file, a directory, or - for stdin). Repeatable.
        #[arg(short = 'f', long = "filename", conflicts_with = "kind")]
        files: Vec<PathBuf>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Only objects whose labels match (see `get -l`); with a kind and no names.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Pods: mark terminating and remove after this many seconds (0: at once).
        #[arg(long, default_value_t = 0)]
        grace_period: i64,
        /// An object that is not there is not an error.
        #[arg(long)]
        ignore_not_found: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Wide,
    Yaml,
    Json,
}

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANNET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gannetctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = cli.server.clone();
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gannetctl: {}", gannet_api::chain(e.as_ref()));
            if let Some(hint) = hint(&e, &server) {
                eprintln!("  {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What a person can do about `error`, when gannetctl knows.
fn hint(error: &anyhow::Error, server: &str) -> Option<String> {
    match error.downcast_ref::<ClientError>()? {
        ClientError::Connect { .. } | ClientError::Unavailable(_) => Some(format!(
            "is gannet-control running and listening on {server}? Point gannetctl at it with \
             --server or {SERVER_ENV}."
        )),
        ClientError::Unauthenticated(_) | ClientError::PermissionDenied(_) => Some(
            "check the token (`token` in --tls-dir, or GANNET_TOKEN) that `gannet-control certs` \
             wrote"
                .to_owned(),
        ),
        _ => None,
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("gannetctl: {message}");
    ExitCode::from(EXIT_USAGE)
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let server: ServerAddr = cli.server.parse()?;
    let mut credentials = Credentials::default();
    if let ServerAddr::Https { .. } = server {
        let ca = cli.tls_dir.join(gannet_api::pki::CA_CERT);
        credentials.ca_pem = Some(
            std::fs::read(&ca).with_context(|| format!("--tls-dir: reading {}", ca.display()))?,
        );
        credentials.token = match &cli.token {
            Some(token) => Some(token.clone()),
            None => {
                let path = cli.tls_dir.join(gannet_api::pki::TOKEN);
                Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| {
                            format!(
                                "--tls-dir: reading {} (or set GANNET_TOKEN)",
                                path.display()
                            )
                        })?
                        .trim()
                        .to_owned(),
                )
            }
        };
    }
    Ok(Client::connect(&server, &credentials).await?)
}

/// `service/web`, `endpointslice.discovery.k8s.io/web-ipv4`, as kubectl names objects.
fn resource_name(object: &Object) -> String {
    let kind = object.kind();
    let group = kind
        .api_version()
        .rsplit_once('/')
        .map(|(group, _)| format!(".{group}"))
        .unwrap_or_default();
    format!(
        "{}{group}/{}",
        kind.name().to_ascii_lowercase(),
        object.name()
    )
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Command::Apply { files, dry_run } => {
            let located = match manifest::read(files) {
                Ok(located) => located,
                Err(errors) => {
                    for error in &errors {
                        eprintln!("{error}");
                    }
                    eprintln!("gannetctl: {} problem(s); nothing applied", errors.len());
                    return Ok(ExitCode::FAILURE);
                }
            };
            if located.is_empty() {
                bail!(
                    "no objects in {}",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let mut client = connect(&cli).await?;
            let objects: Vec<Object> = located.iter().map(|l| l.object.clone()).collect();
            match client.apply(&objects, *dry_run).await {
                Ok(applied) => {
                    let suffix = if *dry_run { " (dry run)" } else { "" };
                    for (object, outcome) in &applied.objects {
                        writeln!(
                            out,
                            "{} {}{suffix}",
                            resource_name(object),
                            outcome.as_str()
                        )?;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(ClientError::Invalid(problems)) => {
                    for problem in &problems {
                        match located.get(problem.index) {
                            Some(at) => eprintln!("{}: {problem}", at.place()),
                            None => eprintln!("{problem}"),
                        }
                    }
                    eprintln!("gannetctl: {} problem(s); nothing applied", problems.len());
                    Ok(ExitCode::FAILURE)
                }
                Err(error) => Err(error.into()),
            }
        }
        Command::Get {
            kind,
            names,
            namespace,
            all_namespaces,
            selector,
            output,
            watch,
        } => {
            let Some(kinds) = parse_kinds(kind) else {
                return Ok(usage(&format!("unknown kind {kind:?}: use {KINDS}")));
            };
            let selector = match selector.as_deref().map(Selector::parse).transpose() {
                Ok(selector) => selector,
                Err(message) => return Ok(usage(&format!("-l {message}"))),
            };
            if *watch && kinds.len() > 1 {
                return Ok(usage("--watch takes one kind"));
            }
            if !names.is_empty() && kinds.len() > 1 {
                return Ok(usage("names go with one kind"));
            }
            let mut client = connect(&cli).await?;
            let get = Get {
                names,
                namespace,
                all_namespaces: *all_namespaces,
                selector: selector.as_ref(),
                output: *output,
            };
            if *watch {
                return get.watch(&mut client, kinds[0], &mut out).await;
            }
            get.print(&mut client, &kinds, &mut out).await
        }
        Command::Describe {
            kind,
            name,
            namespace,
        } => {
            let Some(kind) = Kind::parse(kind) else {
                return Ok(usage(&format!("unknown kind {kind:?}: use {KINDS}")));
            };
            let namespace = if kind.namespaced() {
                namespace.as_str()
            } else {
                ""
            };
            let mut client = connect(&cli).await?;
            let object = client.get(kind, namespace, name).await?;
            let related: Vec<Object> = match kind {
                Kind::Service => client
                    .list(Kind::EndpointSlice, Some(namespace))
                    .await?
                    .items
                    .into_iter()
                    .filter(|slice| {
                        slice
                            .metadata()
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("kubernetes.io/service-name"))
                            .is_some_and(|service| service == name)
                    })
                    .collect(),
                Kind::Node => client
                    .get(Kind::Lease, "kube-node-lease", name)
                    .await
                    .ok()
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            };
            write!(out, "{}", describe::describe(&object, &related))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs(args) => {
            let mut client = connect(&cli).await?;
            logs::logs(&mut client, args, &mut out).await
        }
        Command::Image(command) => {
            let mut client = connect(&cli).await?;
            image::image(&mut client, command, &mut out).await
        }
        Command::Delete {
            kind,
            names,
            files,
            namespace,
            selector,
            grace_period,
            ignore_not_found,
        } => {
            let options = DeleteOptions {
                resource_version: None,
                grace_period_seconds: (*grace_period > 0).then_some(*grace_period),
            };
            let targets: Vec<(Kind, String, String)> = if files.is_empty() {
                let Some(kind_text) = kind else {
                    return Ok(usage("delete: give a kind and names, or -f FILE"));
                };
                let Some(kind) = Kind::parse(kind_text) else {
                    return Ok(usage(&format!("unknown kind {kind_text:?}: use {KINDS}")));
                };
                let namespace = if kind.namespaced() {
                    namespace.clone()
                } else {
                    String::new()
                };
                match (names.is_empty(), selector) {
                    (false, None) => names
                        .iter()
                        .map(|name| (kind, namespace.clone(), name.clone()))
                        .collect(),
                    (true, Some(selector)) => {
                        let selector = match Selector::parse(selector) {
                            Ok(selector) => selector,
                            Err(message) => return Ok(usage(&format!("-l {message}"))),
                        };
                        let mut client = connect(&cli).await?;
                        let listed = client
                            .list(kind, kind.namespaced().then_some(namespace.as_str()))
                            .await?;
                        listed
                            .items
                            .iter()
                            .filter(|o| selector.matches(o))
                            .map(|o| (kind, o.namespace().to_owned(), o.name().to_owned()))
                            .collect()
                    }
                    (false, Some(_)) => return Ok(usage("delete: names or -l, not both")),
                    (true, None) => {
                        return Ok(usage(&format!(
                            "delete {kind_text}: name the objects (or -l SELECTOR)"
                        )));
                    }
                }
            } else {
                if !names.is_empty() {
                    return Ok(usage("delete -f takes no names"));
                }
                match manifest::read(files) {
                    Ok(located) => located
                        .iter()
                        .map(|l| {
                            (
                                l.object.kind(),
                                l.object.namespace().to_owned(),
                                l.object.name().to_owned(),
                            )
                        })
                        .collect(),
                    Err(errors) => {
                        for error in &errors {
                            eprintln!("{error}");
                        }
                        eprintln!("gannetctl: {} problem(s); nothing deleted", errors.len());
                        return Ok(ExitCode::FAILURE);
                    }
                }
            };
            let mut client = connect(&cli).await?;
            let mut failed = false;
            for (kind, namespace, name) in targets {
                match client.delete(kind, &namespace, &name, &options).await {
                    Ok(object) => writeln!(
                        out,
                        "{} \"{}\" deleted",
                        kind.name().to_ascii_lowercase(),
                        object.name()
                    )?,
                    Err(ClientError::NotFound(_)) if *ignore_not_found => {}
                    Err(error @ ClientError::NotFound(_)) => {
                        eprintln!("gannetctl: {}", gannet_api::chain(&error));
                        failed = true;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
