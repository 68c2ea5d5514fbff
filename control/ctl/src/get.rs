//! `gannetctl get`: kinds and label selectors as kubectl takes them, the listing (tables,
//! `-o wide/yaml/json`) and `--watch`.

use super::*;

pub(crate) const KINDS: &str = "service (svc), endpointslice (eps), pod (po), node (no), lease, several \
                     comma-separated, or all";

/// `svc,po` → Service, Pod; `all` → Service, Pod (as kubectl's `all`, of the kinds served).
/// The kinds a command line names.
pub(crate) fn parse_kinds(text: &str) -> Option<Vec<Kind>> {
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
pub(crate) struct Selector(Vec<Requirement>);

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    pub(crate) fn parse(text: &str) -> Result<Selector, String> {
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

    pub(crate) fn matches(&self, object: &Object) -> bool {
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
pub(crate) struct Get<'a> {
    pub(crate) names: &'a [String],
    pub(crate) namespace: &'a str,
    pub(crate) all_namespaces: bool,
    pub(crate) selector: Option<&'a Selector>,
    pub(crate) output: Option<Output>,
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

    pub(crate) async fn print(
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

    pub(crate) async fn watch(
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
