//! gannetctl: apply, get, watch and delete gannet-control's objects.

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
    /// List objects, or show one.
    Get {
        /// service (svc), endpointslice (eps), pod (po), node (no).
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short = 'o', long, value_enum)]
        output: Option<Output>,
        /// After listing, print changes as they happen.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Delete an object.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Pods: mark terminating and remove after this many seconds (0: at once).
        #[arg(long, default_value_t = 0)]
        grace_period: i64,
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
            name,
            namespace,
            all_namespaces,
            output,
            watch,
        } => {
            let Some(kind) = Kind::parse(kind) else {
                return Ok(usage(&format!(
                    "unknown kind {kind:?}: use service (svc), endpointslice (eps), pod (po) or node (no)"
                )));
            };
            let mut client = connect(&cli).await?;
            let all = *all_namespaces && kind.namespaced();
            let namespace = (!all)
                .then_some(namespace.as_str())
                .filter(|_| kind.namespaced());
            let wide = *output == Some(Output::Wide);
            if let Some(name) = name {
                let object = client
                    .get(kind, namespace.unwrap_or_default(), name)
                    .await?;
                print_objects(
                    &mut out,
                    std::slice::from_ref(&object),
                    *output,
                    kind,
                    all,
                    true,
                )?;
                if !*watch {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if !*watch {
                let list = client.list(kind, namespace).await?;
                if list.items.is_empty() && matches!(output, None | Some(Output::Wide)) {
                    match namespace {
                        Some(ns) => eprintln!("No resources found in {ns} namespace."),
                        None => eprintln!("No resources found"),
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                print_objects(&mut out, &list.items, *output, kind, all, false)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut watcher = ListWatch::new(kind, namespace);
            let mut header_widths: Option<Vec<usize>> = None;
            loop {
                let change = tokio::select! {
                    change = watcher.next(&mut client) => change,
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                };
                let objects: Vec<Object> = match change {
                    Ok(Change::Synced { objects, .. }) => objects.decode_all()?,
                    Ok(Change::Applied { object, .. } | Change::Deleted { object, .. }) => {
                        vec![object]
                    }
                    Err(error) if error.is_transient() => {
                        eprintln!("gannetctl: {error}; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                };
                let objects: Vec<Object> = objects
                    .into_iter()
                    .filter(|o| name.as_deref().is_none_or(|n| o.name() == n))
                    .collect();
                match output {
                    None | Some(Output::Wide) => {
                        let mut rows = Vec::new();
                        let header = table::header(kind, wide, all);
                        let widths = header_widths.get_or_insert_with(|| {
                            rows.push(header.clone());
                            header.iter().map(|h| h.len().max(12)).collect()
                        });
                        rows.extend(objects.iter().map(|o| table::row(o, wide, all)));
                        for row in rows {
                            let line: Vec<String> = row
                                .iter()
                                .enumerate()
                                .map(|(i, cell)| {
                                    format!(
                                        "{cell:<width$}",
                                        width = widths.get(i).copied().unwrap_or(0)
                                    )
                                })
                                .collect();
                            writeln!(out, "{}", line.join("   ").trim_end())?;
                        }
                    }
                    Some(format) => {
                        for object in &objects {
                            write_object(&mut out, object, *format)?;
                        }
                    }
                }
                out.flush()?;
            }
        }
        Command::Delete {
            kind,
            name,
            namespace,
            grace_period,
        } => {
            let Some(kind) = Kind::parse(kind) else {
                return Ok(usage(&format!(
                    "unknown kind {kind:?}: use service (svc), endpointslice (eps), pod (po) or node (no)"
                )));
            };
            let mut client = connect(&cli).await?;
            let options = DeleteOptions {
                resource_version: None,
                grace_period_seconds: (*grace_period > 0).then_some(*grace_period),
            };
            let object = client.delete(kind, namespace, name, &options).await?;
            writeln!(
                out,
                "{} \"{}\" deleted",
                kind.name().to_ascii_lowercase(),
                object.name()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn to_value(object: &Object) -> anyhow::Result<Value> {
    Ok(serde_json::from_slice(&object.to_json()?)?)
}

fn write_object(out: &mut impl Write, object: &Object, format: Output) -> anyhow::Result<()> {
    let value = to_value(object)?;
    match format {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?,
        _ => write!(out, "---\n{}", serde_yaml_ng::to_string(&value)?)?,
    }
    Ok(())
}

fn print_objects(
    out: &mut impl Write,
    objects: &[Object],
    output: Option<Output>,
    kind: Kind,
    all: bool,
    single: bool,
) -> anyhow::Result<()> {
    match output {
        None | Some(Output::Wide) => {
            let wide = output == Some(Output::Wide);
            let mut rows = vec![table::header(kind, wide, all)];
            rows.extend(objects.iter().map(|o| table::row(o, wide, all)));
            write!(out, "{}", table::render(&rows))?;
        }
        Some(format) => {
            let value = if single && objects.len() == 1 {
                to_value(&objects[0])?
            } else {
                let items = objects
                    .iter()
                    .map(to_value)
                    .collect::<anyhow::Result<Vec<_>>>()?;
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
            };
            match format {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?,
                _ => write!(out, "{}", serde_yaml_ng::to_string(&value)?)?,
            }
        }
    }
    Ok(())
}
