//! Reading manifests for `gannetctl apply`: files, directories or stdin; YAML or JSON; any number
//! of documents; Kubernetes objects of the four kinds gannet-control serves.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use gannet_api::{Kind, Object};
use gannet_k8s::{
    ClusterIp, FieldProblem, check_endpoint_slice_object, check_service_object, read_documents,
    typed_object,
};
use serde_json::Value;

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One object and where it was read.
#[derive(Debug)]
pub(crate) struct Located {
    pub(crate) file: String,
    pub(crate) document: usize,
    pub(crate) object: Object,
}

impl Located {
    /// `web.yaml: document 2`.
    pub(crate) fn place(&self) -> String {
        format!("{}: document {}", self.file, self.document)
    }
}

/// The files of `path`: itself, or the manifest files of a directory (sorted, not recursive), or
/// stdin for `-`.
fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path == Path::new("-") || path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|file| {
                let hidden = file
                    .file_name()
                    .is_none_or(|name| name.as_encoded_bytes().starts_with(b"."));
                let manifest = file
                    .extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e));
                !hidden && manifest && file.is_file()
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(format!(
                "{}: no .yaml, .yml or .json files in this directory",
                path.display()
            ));
        }
        return Ok(files);
    }
    Err(format!("{}: no such file or directory", path.display()))
}

fn kinds_served() -> String {
    Kind::ALL
        .iter()
        .map(|kind| format!("{} {}", kind.api_version(), kind.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn typed(kind: Kind, value: Value) -> Result<Object, FieldProblem> {
    Ok(match kind {
        Kind::Service => Object::Service(Box::new(typed_object(value)?)),
        Kind::EndpointSlice => Object::EndpointSlice(Box::new(typed_object(value)?)),
        Kind::Pod => Object::Pod(Box::new(typed_object(value)?)),
        Kind::Node => Object::Node(Box::new(typed_object(value)?)),
        Kind::Lease => Object::Lease(Box::new(typed_object(value)?)),
    })
}

/// Reads every object of `paths`; on any problem, every problem (each naming file, document,
/// object and field) and no objects.
pub(crate) fn read(paths: &[PathBuf]) -> Result<Vec<Located>, Vec<String>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let files = match files(path) {
            Ok(files) => files,
            Err(error) => {
                errors.push(error);
                continue;
            }
        };
        for file in files {
            let (name, text) = if file == Path::new("-") {
                let mut text = String::new();
                match std::io::stdin().read_to_string(&mut text) {
                    Ok(_) => ("<stdin>".to_owned(), text),
                    Err(error) => {
                        errors.push(format!("<stdin>: {error}"));
                        continue;
                    }
                }
            } else {
                match std::fs::read_to_string(&file) {
                    Ok(text) => (file.display().to_string(), text),
                    Err(error) => {
                        errors.push(format!("{}: {error}", file.display()));
                        continue;
                    }
                }
            };
            let documents = match read_documents(Path::new(&name), &text) {
                Ok(documents) => documents,
                Err(problems) => {
                    errors.extend(problems.iter().map(ToString::to_string));
                    continue;
                }
            };
            for document in documents {
                let at = format!("{name}: document {}", document.index);
                let field = |key: &str| {
                    document
                        .value
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let (api_version, kind_name) = (field("apiVersion"), field("kind"));
                let meta = document.value.get("metadata");
                let object_name = meta
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Some(kind) = Kind::from_type(&api_version, &kind_name) else {
                    let what = if kind_name.is_empty() || api_version.is_empty() {
                        "apiVersion and kind must be set".to_owned()
                    } else {
                        format!("kind {kind_name} ({api_version}) is not served by gannet-control")
                    };
                    errors.push(format!(
                        "{at}: {kind_name} {object_name}: {what}; it serves {}",
                        kinds_served()
                    ));
                    continue;
                };
                let label = gannet_api::object_label(
                    kind,
                    meta.and_then(|m| m.get("namespace"))
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    object_name,
                );
                let object = match typed(kind, document.value) {
                    Ok(object) => object,
                    Err(problem) => {
                        errors.push(format!("{at}: {label}: {problem}"));
                        continue;
                    }
                };
                let problems = match &object {
                    Object::Service(service) => check_service_object(service, ClusterIp::Allocated),
                    Object::EndpointSlice(slice) => check_endpoint_slice_object(slice),
                    Object::Pod(_) | Object::Node(_) | Object::Lease(_) => Vec::new(),
                };
                if problems.is_empty() {
                    objects.push(Located {
                        file: name.clone(),
                        document: document.index,
                        object,
                    });
                } else {
                    errors.extend(
                        problems
                            .iter()
                            .map(|problem| format!("{at}: {label}: {problem}")),
                    );
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}
