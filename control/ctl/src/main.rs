//! gannetctl: apply, get, watch and delete gannet-control's objects, and read pods' logs.

mod describe;
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
    /// Print a container's log (on the pod's node: the runtime's log files are read there).
    Logs(logs::LogsArgs),
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

/// The kinds a command line names.
const KINDS: &str = "service (svc), endpointslice (eps), pod (po), node (no), lease, several \
                     comma-separated, or all";

/// `svc,po` → Service, Pod; `all` → Service, Pod (as kubectl's `all`, of the kinds served).
fn parse_kinds(text: &str) -> Option<Vec<Kind>> {
    let mut kinds = Vec::new();
    for part in text.split(',') {
        if part.eq_ignore_ascii_case("all") {
            kinds.extend([Kind::Pod, Kind::Service]);
        } else {
            kinds.push(Kind::parse(part)?);
        }
    }
    kinds.dedup();
    Some(kinds)
}

/// A label selector, kubectl's equality-based form.
#[derive(Debug)]
struct Selector(Vec<Requirement>);

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim) {
            let requirement = if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some(key) = part.strip_prefix('!') {
                Requirement::Absent(key.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            let key = match &requirement {
                Requirement::Equals(key, _)
                | Requirement::NotEquals(key, _)
                | Requirement::Exists(key)
                | Requirement::Absent(key) => key,
            };
            if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == '=') {
                return Err(format!(
                    "{text:?}: {part:?} is not a requirement (key=value, key!=value, key or !key)"
                ));
            }
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    fn matches(&self, object: &Object) -> bool {
        let labels = object.metadata().labels.as_ref();
        let label = |key: &str| labels.and_then(|l| l.get(key));
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => label(key) == Some(value),
            Requirement::NotEquals(key, value) => label(key) != Some(value),
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::Absent(key) => label(key).is_none(),
        })
    }
}

/// What `gannetctl get` was asked.
struct Get<'a> {
    names: &'a [String],
    namespace: &'a str,
    all_namespaces: bool,
    selector: Option<&'a Selector>,
    output: Option<Output>,
}

impl Get<'_> {
    fn wanted(&self, object: &Object) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| n == object.name()))
            && self.selector.is_none_or(|s| s.matches(object))
    }

    /// The namespace to ask for (`None`: all), and whether the table shows namespaces.
    fn scope(&self, kind: Kind) -> (Option<&str>, bool) {
        let all = self.all_namespaces && kind.namespaced();
        let namespace = (!all)
            .then_some(self.namespace)
            .filter(|_| kind.namespaced());
        (namespace, all)
    }

    async fn print(
        &self,
        client: &mut Client,
        kinds: &[Kind],
        out: &mut impl Write,
    ) -> anyhow::Result<ExitCode> {
        let several = kinds.len() > 1;
        let mut found: Vec<(Kind, Vec<Object>)> = Vec::new();
        for &kind in kinds {
            let (namespace, _) = self.scope(kind);
            let objects = if self.names.len() == 1 && self.selector.is_none() {
                vec![
                    client
                        .get(kind, namespace.unwrap_or_default(), &self.names[0])
                        .await?,
                ]
            } else {
                let list = client.list(kind, namespace).await?;
                let objects: Vec<Object> =
                    list.items.into_iter().filter(|o| self.wanted(o)).collect();
                if let Some(missing) = self
                    .names
                    .iter()
                    .find(|n| !objects.iter().any(|o| o.name() == n.as_str()))
                {
                    bail!(
                        "{} not found",
                        gannet_api::object_label(kind, namespace.unwrap_or_default(), missing)
                    );
                }
                objects
            };
            found.push((kind, objects));
        }
        let single = self.names.len() == 1 && !several;
        match self.output {
            None | Some(Output::Wide) => {
                let wide = self.output == Some(Output::Wide);
                let mut printed = false;
                for (kind, objects) in &found {
                    if objects.is_empty() {
                        continue;
                    }
                    let (_, all) = self.scope(*kind);
                    let mut rows = vec![table::header(*kind, wide, all)];
                    rows.extend(objects.iter().map(|o| {
                        let mut row = table::row(o, wide, all);
                        if several {
                            let at = usize::from(all);
                            row[at] = format!("{}/{}", kind.name().to_ascii_lowercase(), row[at]);
                        }
                        row
                    }));
                    if printed {
                        writeln!(out)?;
                    }
                    write!(out, "{}", table::render(&rows))?;
                    printed = true;
                }
                if !printed {
                    let (namespace, _) = self.scope(kinds[0]);
                    match namespace {
                        Some(ns) => eprintln!("No resources found in {ns} namespace."),
                        None => eprintln!("No resources found"),
                    }
                }
            }
            Some(format) => {
                let objects: Vec<Object> =
                    found.into_iter().flat_map(|(_, objects)| objects).collect();
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
        Ok(ExitCode::SUCCESS)
    }

    async fn watch(
        &self,
        client: &mut Client,
        kind: Kind,
        out: &mut impl Write,
    ) -> anyhow::Result<ExitCode> {
        let (namespace, all) = self.scope(kind);
        let wide = self.output == Some(Output::Wide);
        let mut watcher = ListWatch::new(kind, namespace);
        let mut header_widths: Option<Vec<usize>> = None;
        loop {
            let change = tokio::select! {
                change = watcher.next(client) => change,
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
            let objects: Vec<Object> = objects.into_iter().filter(|o| self.wanted(o)).collect();
            match self.output {
                None | Some(Output::Wide) => {
                    let mut rows = Vec::new();
                    let header = table::header(kind, wide, all);
                    let batch: Vec<Vec<String>> =
                        objects.iter().map(|o| table::row(o, wide, all)).collect();
                    // The columns fit the header and the first list (as kubectl's), with room
                    // to spare for what comes later.
                    let widths = header_widths.get_or_insert_with(|| {
                        rows.push(header.clone());
                        (0..header.len())
                            .map(|i| {
                                batch
                                    .iter()
                                    .filter_map(|r| r.get(i))
                                    .chain(header.get(i))
                                    .map(|c| c.chars().count())
                                    .max()
                                    .unwrap_or(0)
                                    .max(12)
                            })
                            .collect()
                    });
                    rows.extend(batch);
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
                        write_object(out, object, format)?;
                    }
                }
            }
            out.flush()?;
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
