//! Checks the maps pinned under `--bpf-root` before anything adopts them.
//!
//! aya's loader uses a map pinned at a map's path as it is: it does not compare it with the
//! object's declaration, and the verifier checks a program's accesses only against the sizes of
//! the map it is given. A pinned map of another type or layout (left by a gannetd of another
//! version, or put there by something else) would then be used by the programs and written by
//! the agent with this build's keys and values: lookups that never match, values read half or
//! beyond their end. So before either object is loaded, every map that gannetd pins is looked up
//! at its pin path and, if there is one, its type, key size, value size and flags are compared
//! with this build's object; a difference refuses the start with the map's name, what differs,
//! and `gannetd cleanup` as the way out. Nothing is created or changed before that.
//!
//! Not compared: the capacity (`max_entries`: a pinned map keeps its own, with a warning, see
//! `take_map`), and the inner map of the Maglev map of maps (an older layout is replaced on
//! purpose, see `nodeport::retire_incompatible_maglev`).

use std::{fmt::Write as _, os::fd::AsFd as _, path::Path};

use gannet_common::map_names;

use super::{DataPathError, pods::POD_OBJECT, sock::SOCK_OBJECT};
use crate::sys;

/// How a map is declared in an object, or what a pinned map is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) map_type: u32,
    pub(crate) key_size: u32,
    pub(crate) value_size: u32,
    pub(crate) flags: u32,
}

/// The maps gannetd pins from `object`: those it declares pinned by name, and `explicit` (BTF
/// maps, pinned by path), with their declared layout.
fn pinned_maps(
    object: &[u8],
    what: &'static str,
    explicit: &[&str],
) -> Result<Vec<(String, Layout)>, DataPathError> {
    let object = aya_obj::Object::parse(object).map_err(|e| {
        DataPathError::Bpffs(format!("parsing the {what} object's map declarations: {e}"))
    })?;
    let mut maps: Vec<(String, Layout)> = object
        .maps
        .iter()
        .filter(|(name, map)| {
            map.pinning() == aya_obj::maps::PinningType::ByName || explicit.contains(&name.as_str())
        })
        .map(|(name, map)| {
            (
                name.clone(),
                Layout {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    flags: map.map_flags(),
                },
            )
        })
        .collect();
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(maps)
}

/// Checks every map pinned under `<bpf_root>/maps` that this build would adopt (those of the
/// socket load balancer's and the pod object). A missing pin is fine (it will be created).
///
/// # Errors
/// [`DataPathError::IncompatiblePin`] for the first map that differs (or a pin that is not a
/// map); an I/O error reading a pin other than its absence.
pub fn check_pinned_maps(bpf_root: &Path) -> Result<(), DataPathError> {
    let maps_dir = bpf_root.join("maps");
    if !maps_dir.exists() {
        return Ok(());
    }
    for (object, what, explicit) in [
        (
            SOCK_OBJECT,
            "socket load balancer",
            &[map_names::SOCK_REV_NAT, map_names::SOCK_UDP][..],
        ),
        (POD_OBJECT, "pod", &[map_names::MAGLEV][..]),
    ] {
        for (name, expected) in pinned_maps(object, what, explicit)? {
            check(bpf_root, &maps_dir.join(&name), &name, expected)?;
        }
    }
    Ok(())
}

fn check(bpf_root: &Path, pin: &Path, name: &str, expected: Layout) -> Result<(), DataPathError> {
    let fd = match sys::obj_get(pin) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(source) => {
            return Err(DataPathError::Io {
                path: pin.to_owned(),
                source,
            });
        }
    };
    let found = match sys::map_info(fd.as_fd()) {
        Ok(Some(info)) => Layout {
            map_type: info.map_type,
            key_size: info.key_size,
            value_size: info.value_size,
            flags: info.flags,
        },
        Ok(None) => {
            return Err(incompatible(
                bpf_root,
                pin,
                name,
                "it is not a map".to_owned(),
            ));
        }
        Err(source) => {
            return Err(DataPathError::Io {
                path: pin.to_owned(),
                source,
            });
        }
    };
    match differences(expected, found) {
        None => Ok(()),
        Some(what) => Err(incompatible(bpf_root, pin, name, what)),
    }
}

fn incompatible(bpf_root: &Path, pin: &Path, name: &str, differences: String) -> DataPathError {
    DataPathError::IncompatiblePin {
        name: name.to_owned(),
        pin: pin.to_owned(),
        differences,
        bpf_root: bpf_root.to_owned(),
    }
}

/// What differs between the declared and the pinned layout, as a message; `None` if nothing.
pub(crate) fn differences(expected: Layout, found: Layout) -> Option<String> {
    let mut out = String::new();
    let mut note = |field: &str, want: String, have: String| {
        if want != have {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = write!(out, "{field} {have} where this gannetd needs {want}");
        }
    };
    note(
        "type",
        type_name(expected.map_type),
        type_name(found.map_type),
    );
    note(
        "key size",
        expected.key_size.to_string(),
        found.key_size.to_string(),
    );
    note(
        "value size",
        expected.value_size.to_string(),
        found.value_size.to_string(),
    );
    note(
        "flags",
        format!("{:#x}", expected.flags),
        format!("{:#x}", found.flags),
    );
    (!out.is_empty()).then_some(out)
}

/// `BPF_MAP_TYPE_*` names of the types gannet uses; others by number.
fn type_name(map_type: u32) -> String {
    let name = match map_type {
        1 => "hash",
        2 => "array",
        5 => "percpu_hash",
        6 => "percpu_array",
        9 => "lru_hash",
        11 => "lpm_trie",
        13 => "hash_of_maps",
        24 => "sk_storage",
        other => return format!("type {other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_map_of_both_objects_is_known_with_its_layout() {
        let sock = pinned_maps(
            SOCK_OBJECT,
            "sock",
            &[map_names::SOCK_REV_NAT, map_names::SOCK_UDP],
        )
        .expect("parses");
        let names: Vec<&str> = sock.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            map_names::SERVICES,
            map_names::SLOTS,
            map_names::BACKENDS,
            map_names::REV_NAT,
            map_names::AFFINITY,
            map_names::SOCK_REV_NAT,
            map_names::SOCK_UDP,
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        let services = sock
            .iter()
            .find(|(n, _)| n == map_names::SERVICES)
            .expect("found")
            .1;
        assert_eq!(
            services,
            Layout {
                map_type: 1,
                key_size: u32::try_from(size_of::<gannet_common::ServiceKey>()).expect("small"),
                value_size: u32::try_from(size_of::<gannet_common::ServiceValue>()).expect("small"),
                flags: 1, // BPF_F_NO_PREALLOC
            }
        );
        let pod = pinned_maps(POD_OBJECT, "pod", &[map_names::MAGLEV]).expect("parses");
        let names: Vec<&str> = pod.iter().map(|(n, _)| n.as_str()).collect();
        for name in [
            map_names::ENDPOINTS,
            map_names::CONNTRACK,
            map_names::MAGLEV,
            map_names::NODES,
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    #[test]
    fn differences_name_each_field() {
        let want = Layout {
            map_type: 1,
            key_size: 8,
            value_size: 16,
            flags: 1,
        };
        assert_eq!(differences(want, want), None);
        let have = Layout {
            value_size: 8,
            map_type: 9,
            ..want
        };
        assert_eq!(
            differences(want, have).as_deref(),
            Some(
                "type lru_hash where this gannetd needs hash, value size 8 where this gannetd \
                 needs 16"
            )
        );
    }
}
