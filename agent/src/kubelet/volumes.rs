//! A pod's volumes on the node and its containers' mounts of them (`volumeMounts`, as CRI
//! `Mount`s the runtime bind-mounts):
//!
//! - `emptyDir`: a directory of the pod in `--state-dir` (`pods/UID/volumes/NAME`, mode 0777 as
//!   the kubelet makes it), shared by its containers, kept across container restarts and removed
//!   with the pod. `medium: Memory` is not supported yet (the container waits, saying so);
//! - `hostPath`: a path of the node, checked (or created) as its `type` says;
//! - `downwardAPI`: files of the pod's fields (`metadata.labels` and `metadata.annotations` whole,
//!   as `key="value"` lines, or one value as for environment variables) and of a container's
//!   resources, written (each through a temporary file) in the volume's directory whenever a
//!   container mounting it is created; not updated while the containers run.
//!
//! A mount's `readOnly`, `subPath` (a relative path without `..`, created in an `emptyDir`) and
//! `mountPropagation` are honoured. Any other volume type, or a mount of a volume the pod does not
//! have, leaves the container waiting with `CreateContainerConfigError` naming it.

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeSource, Pod, Volume};

use super::env::Sources;

/// The directory of the pods' volumes below `--state-dir`.
pub const DIR: &str = "pods";

/// The directory of `uid`'s volumes in `pods_dir` (`--state-dir`/[`DIR`]).
#[must_use]
pub fn pod_dir(pods_dir: &Path, uid: &str) -> PathBuf {
    pods_dir.join(uid)
}

/// The mounts of `container`, with the pod's `emptyDir` volumes made; `Err` says why the
/// container cannot be created (for `CreateContainerConfigError`).
///
/// # Errors
/// A message naming the volume, the mount or the path.
pub fn mounts(
    pods_dir: &Path,
    uid: &str,
    pod: &Pod,
    container: &Container,
    sources: &Sources,
) -> Result<Vec<cri::Mount>, String> {
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| {
                format!(
                    "volumeMount {:?} of container {:?}: the pod has no volume of that name",
                    mount.name, container.name
                )
            })?;
        let source = source(pods_dir, uid, volume, pod, sources)?;
        let host_path = match mount.sub_path.as_deref().filter(|p| !p.is_empty()) {
            None => source,
            Some(sub) => {
                let relative = Path::new(sub);
                if relative.is_absolute()
                    || relative
                        .components()
                        .any(|c| !matches!(c, Component::Normal(_)))
                {
                    return Err(format!(
                        "volumeMount {:?} of container {:?}: subPath {sub:?} must be a relative \
                         path without '..'",
                        mount.name, container.name
                    ));
                }
                let path = source.join(relative);
                if volume.empty_dir.is_some() || volume.downward_api.is_some() {
                    make_dir(&path, 0o777)?;
                } else if !path.exists() {
                    return Err(format!(
                        "volume {:?}: subPath {} does not exist",
                        volume.name,
                        path.display()
                    ));
                }
                path
            }
        };
        let propagation = match mount.mount_propagation.as_deref() {
            None | Some("None") => cri::MountPropagation::PropagationPrivate,
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
            Some(other) => {
                return Err(format!(
                    "volumeMount {:?}: mountPropagation {other:?} is not None, HostToContainer \
                     or Bidirectional",
                    mount.name
                ));
            }
        };
        mounts.push(cri::Mount {
            container_path: mount.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: mount.read_only.unwrap_or(false),
            propagation: propagation.into(),
            ..cri::Mount::default()
        });
    }
    Ok(mounts)
}

/// Where `volume` is on the node, made or checked.
fn source(
    pods_dir: &Path,
    uid: &str,
    volume: &Volume,
    pod: &Pod,
    sources: &Sources,
) -> Result<PathBuf, String> {
    if let Some(downward) = &volume.downward_api {
        let path = pod_dir(pods_dir, uid)
            .join("volumes")
            .join(component(&volume.name)?);
        make_dir(&path, 0o755)?;
        write_downward(&path, &volume.name, downward, pod, sources)?;
        return Ok(path);
    }
    if let Some(empty) = &volume.empty_dir {
        if empty.medium.as_deref().is_some_and(|m| !m.is_empty()) {
            return Err(format!(
                "volume {:?}: emptyDir medium {:?} is not supported yet (only the node's disk)",
                volume.name,
                empty.medium.as_deref().unwrap_or_default()
            ));
        }
        let path = pod_dir(pods_dir, uid)
            .join("volumes")
            .join(component(&volume.name)?);
        make_dir(&path, 0o777)?;
        return Ok(path);
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        if !path.is_absolute() {
            return Err(format!(
                "volume {:?}: hostPath {:?} is not absolute",
                volume.name, host.path
            ));
        }
        check_host_path(&volume.name, &path, host.type_.as_deref().unwrap_or(""))?;
        return Ok(path);
    }
    let kind = [
        (volume.config_map.is_some(), "configMap"),
        (volume.secret.is_some(), "secret"),
        (volume.projected.is_some(), "projected"),
        (
            volume.persistent_volume_claim.is_some(),
            "persistentVolumeClaim",
        ),
    ]
    .into_iter()
    .find_map(|(set, kind)| set.then_some(kind))
    .unwrap_or("this kind of");
    Err(format!(
        "volume {:?}: {kind} volumes are not supported (gannetd mounts emptyDir, hostPath and \
         downwardAPI)",
        volume.name
    ))
}

/// The files of a `downwardAPI` volume in `dir`.
fn write_downward(
    dir: &Path,
    volume: &str,
    source: &DownwardAPIVolumeSource,
    pod: &Pod,
    sources: &Sources,
) -> Result<(), String> {
    let default_mode = source.default_mode.unwrap_or(0o644);
    for item in source.items.iter().flatten() {
        let relative = Path::new(&item.path);
        if item.path.is_empty()
            || relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(format!(
                "volume {volume:?}: item path {:?} must be a relative path without '..'",
                item.path
            ));
        }
        let value = if let Some(field) = &item.field_ref {
            let map = |m: Option<&std::collections::BTreeMap<String, String>>| {
                m.into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={v:?}\n"))
                    .collect::<String>()
            };
            match field.field_path.as_str() {
                "metadata.labels" => map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => map(pod.metadata.annotations.as_ref()),
                path => super::env::field_value(pod, path, sources)
                    .map_err(|e| format!("volume {volume:?}: item {:?}: {path}: {e}", item.path))?,
            }
        } else if let Some(resource) = &item.resource_field_ref {
            let name = resource.container_name.as_deref().unwrap_or_default();
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| c.name == name))
                .ok_or_else(|| {
                    format!(
                        "volume {volume:?}: item {:?}: containerName {name:?} is not a container \
                         of the pod",
                        item.path
                    )
                })?;
            super::env::resource_value(
                container,
                &resource.resource,
                resource.divisor.as_ref().map(|d| d.0.as_str()),
                sources,
            )
            .map_err(|e| format!("volume {volume:?}: item {:?}: {e}", item.path))?
        } else {
            return Err(format!(
                "volume {volume:?}: item {:?} has neither fieldRef nor resourceFieldRef",
                item.path
            ));
        };
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            make_dir(parent, 0o755)?;
        }
        let temp = path.with_extension("gannet-tmp");
        let mode = u32::try_from(item.mode.unwrap_or(default_mode)).unwrap_or(0o644) & 0o777;
        fs::write(&temp, value)
            .and_then(|()| fs::set_permissions(&temp, fs::Permissions::from_mode(mode)))
            .and_then(|()| fs::rename(&temp, &path))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A volume name as a directory name.
fn component(name: &str) -> Result<&str, String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(format!("volume name {name:?} is not a name"));
    }
    Ok(name)
}

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|e| format!("making {}: {e}", path.display()))
}

/// `hostPath.type`'s checks, as the kubelet makes them.
fn check_host_path(volume: &str, path: &Path, type_: &str) -> Result<(), String> {
    let wrong = |what: &str| {
        Err(format!(
            "volume {volume:?}: hostPath {} is not {what} (type {type_})",
            path.display()
        ))
    };
    let meta = fs::metadata(path);
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => match meta {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => wrong("a directory"),
            Err(_) => make_dir(path, 0o755),
        },
        "FileOrCreate" => match meta {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => wrong("a file"),
            Err(_) => {
                if let Some(parent) = path.parent() {
                    make_dir(parent, 0o755)?;
                }
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map(drop)
                    .map_err(|e| format!("creating {}: {e}", path.display()))
            }
        },
        "Directory" if meta.as_ref().is_ok_and(fs::Metadata::is_dir) => Ok(()),
        "Directory" => wrong("a directory"),
        "File" if meta.as_ref().is_ok_and(fs::Metadata::is_file) => Ok(()),
        "File" => wrong("a file"),
        "Socket" if meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => wrong("a socket"),
        "CharDevice" if meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => Ok(()),
        "CharDevice" => wrong("a character device"),
        "BlockDevice" if meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => Ok(()),
        "BlockDevice" => wrong("a block device"),
        other => Err(format!(
            "volume {volume:?}: hostPath type {other:?} is not one of DirectoryOrCreate, \
             Directory, FileOrCreate, File, Socket, CharDevice, BlockDevice"
        )),
    }
}

/// Removes `uid`'s volumes (its `emptyDir`s) once its containers are gone.
pub fn remove(pods_dir: &Path, uid: &str) {
    let dir = pod_dir(pods_dir, uid);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "removing a pod's volumes"),
    }
}

/// The pod uids that have a volume directory in `pods_dir`.
#[must_use]
pub fn on_disk(pods_dir: &Path) -> Vec<String> {
    fs::read_dir(pods_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: &str) -> Pod {
        serde_json::from_str(&format!(
            r#"{{"metadata": {{"name": "p"}}, "spec": {spec}}}"#
        ))
        .expect("a pod")
    }

    fn sources() -> Sources {
        Sources {
            pod_ips: vec!["10.244.0.9".to_owned()],
            node_millicpu: 2000,
            node_memory: 8 << 30,
        }
    }

    #[test]
    fn downward_api_files_hold_the_pods_fields_and_resources() {
        let root = tempfile::tempdir().unwrap();
        let mut p = pod(r#"{"volumes": [{"name": "info", "downwardAPI": {"items": [
                 {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                 {"path": "sub/name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 384},
                 {"path": "mem", "resourceFieldRef": {"containerName": "a",
                   "resource": "limits.memory", "divisor": "1Mi"}}]}}],
               "containers": [{"name": "a", "resources": {"limits": {"memory": "64Mi"}},
                 "volumeMounts": [{"name": "info", "mountPath": "/info"}]}]}"#);
        p.metadata.labels = Some(
            [("app", "web"), ("tier", "front \"end\"")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        let container = &p.spec.as_ref().unwrap().containers[0];
        let mounts = mounts(root.path(), "u", &p, container, &sources()).unwrap();
        let dir = root.path().join("u/volumes/info");
        assert_eq!(mounts[0].host_path, dir.display().to_string());
        assert_eq!(
            fs::read_to_string(dir.join("labels")).unwrap(),
            "app=\"web\"\ntier=\"front \\\"end\\\"\"\n"
        );
        assert_eq!(fs::read_to_string(dir.join("sub/name")).unwrap(), "p");
        assert_eq!(
            fs::metadata(dir.join("sub/name"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(fs::read_to_string(dir.join("mem")).unwrap(), "64");
    }

    #[test]
    fn empty_dirs_are_made_and_mounted_with_their_options() {
        let root = tempfile::tempdir().unwrap();
        let host = root.path().join("host-data");
        let pods = root.path().join("pods");
        let p = pod(&format!(
            r#"{{"volumes": [{{"name": "scratch", "emptyDir": {{}}}},
                 {{"name": "data", "hostPath": {{"path": "{}", "type": "DirectoryOrCreate"}}}}],
               "containers": [{{"name": "a", "volumeMounts": [
                 {{"name": "scratch", "mountPath": "/scratch", "subPath": "a/b"}},
                 {{"name": "data", "mountPath": "/data", "readOnly": true,
                   "mountPropagation": "HostToContainer"}}]}}]}}"#,
            host.display()
        ));
        let container = &p.spec.as_ref().unwrap().containers[0];
        let mounts = mounts(pods.as_path(), "u1", &p, container, &sources()).unwrap();
        let scratch = pods.as_path().join("u1/volumes/scratch/a/b");
        assert!(scratch.is_dir());
        assert_eq!(
            fs::metadata(pods.as_path().join("u1/volumes/scratch"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o777
        );
        assert_eq!(mounts[0].host_path, scratch.display().to_string());
        assert_eq!(mounts[0].container_path, "/scratch");
        assert!(!mounts[0].readonly);
        assert!(host.is_dir(), "DirectoryOrCreate made it");
        assert!(mounts[1].readonly);
        assert_eq!(
            mounts[1].propagation,
            i32::from(cri::MountPropagation::PropagationHostToContainer)
        );
        assert_eq!(on_disk(pods.as_path()), ["u1"]);
        remove(pods.as_path(), "u1");
        assert!(on_disk(pods.as_path()).is_empty());
    }

    #[test]
    fn what_cannot_be_mounted_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                r#"[{"name": "v", "secret": {"secretName": "s"}}]"#,
                r#"[{"name": "v", "mountPath": "/v"}]"#,
                "secret volumes are not supported",
            ),
            (
                r#"[{"name": "v", "emptyDir": {"medium": "Memory"}}]"#,
                r#"[{"name": "v", "mountPath": "/v"}]"#,
                "medium \"Memory\"",
            ),
            (
                r#"[{"name": "v", "emptyDir": {}}]"#,
                r#"[{"name": "w", "mountPath": "/v"}]"#,
                "no volume of that name",
            ),
            (
                r#"[{"name": "v", "emptyDir": {}}]"#,
                r#"[{"name": "v", "mountPath": "/v", "subPath": "../x"}]"#,
                "without '..'",
            ),
            (
                r#"[{"name": "v", "hostPath": {"path": "/nonexistent/gannet", "type": "Directory"}}]"#,
                r#"[{"name": "v", "mountPath": "/v"}]"#,
                "is not a directory",
            ),
            (
                r#"[{"name": "v", "hostPath": {"path": "/proc/self/status", "type": "Socket"}}]"#,
                r#"[{"name": "v", "mountPath": "/v"}]"#,
                "is not a socket",
            ),
        ];
        for (volumes, mounts_of, expected) in cases {
            let p = pod(&format!(
                r#"{{"volumes": {volumes}, "containers": [{{"name": "a", "volumeMounts": {mounts_of}}}]}}"#
            ));
            let error = mounts(
                dir.path(),
                "u",
                &p,
                &p.spec.as_ref().unwrap().containers[0],
                &sources(),
            )
            .expect_err(expected);
            assert!(error.contains(expected), "{error} (expected {expected:?})");
        }
    }
}
