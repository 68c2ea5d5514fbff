//! Reading and writing pinned eBPF maps with `bpftool`, as the tests look at what gannetd pinned
//! without going through gannetd.
//!
//! Each helper runs `bpftool` on a pin of the test's own and panics with bpftool's stderr if it
//! fails, naming the command and the pin: a test that cannot read a map has nothing to check.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One entry of a map as `bpftool -j map dump` prints it: the key's and the value's bytes, in
/// the map's own layout (host order for integers, network order where the map says so).
pub type MapEntry = (Vec<u8>, Vec<u8>);

/// Every entry of the map pinned at `pin` (`bpftool -j map dump pinned PIN`); not for per-CPU
/// maps (see [`map_keys`]).
///
/// # Panics
/// If bpftool fails or prints something else than a list of entries with byte arrays.
#[must_use]
pub fn map_dump(pin: &Path) -> Vec<MapEntry> {
    dump_entries(pin)
        .iter()
        .map(|e| (bytes(&e["key"], pin), bytes(&e["value"], pin)))
        .collect()
}

/// The entries of `bpftool -j map dump pinned PIN`, as JSON objects.
fn dump_entries(pin: &Path) -> Vec<Value> {
    match run_json(&["-j", "map", "dump", "pinned"], pin) {
        Value::Array(entries) => entries,
        other => panic!("bpftool map dump {}: not a list: {other}", pin.display()),
    }
}

/// The keys of the map pinned at `pin`, also of a per-CPU map (whose dump has `values`, one per
/// CPU, where other maps have `value`).
///
/// # Panics
/// If bpftool fails or prints something else than a list of entries with byte arrays.
#[must_use]
pub fn map_keys(pin: &Path) -> Vec<Vec<u8>> {
    dump_entries(pin)
        .iter()
        .map(|e| bytes(&e["key"], pin))
        .collect()
}

/// `bpftool map update pinned PIN key … value …`: writes one entry of the map pinned at `pin`.
///
/// # Panics
/// If bpftool fails (no such map, a key or value of the wrong size, …).
pub fn map_update(pin: &Path, key: &[u8], value: &[u8]) {
    let hex = |b: &[u8]| b.iter().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>();
    let mut cmd = Command::new("bpftool");
    cmd.args(["map", "update", "pinned"])
        .arg(pin)
        .arg("key")
        .args(hex(key))
        .arg("value")
        .args(hex(value));
    run(cmd, "map update", pin);
}

/// What `bpftool -j map show pinned PIN` says about the map pinned at `pin` (its type, sizes,
/// flags, name, …).
///
/// # Panics
/// If bpftool fails or does not print JSON.
#[must_use]
pub fn map_show(pin: &Path) -> Value {
    run_json(&["-j", "map", "show", "pinned"], pin)
}

/// `bpftool map create PIN SPEC…` (for example `type hash key 4 value 512 entries 16 name N`):
/// a map of the test's own, pinned at `pin`.
///
/// # Panics
/// If bpftool fails.
pub fn map_create(pin: &Path, spec: &[&str]) {
    let mut cmd = Command::new("bpftool");
    cmd.args(["map", "create"]).arg(pin).args(spec);
    run(cmd, "map create", pin);
}

/// Runs `bpftool ARGS PIN` and parses what it prints.
fn run_json(args: &[&str], pin: &Path) -> Value {
    let mut cmd = Command::new("bpftool");
    cmd.args(args).arg(pin);
    let what = args
        .iter()
        .filter(|a| **a != "-j")
        .copied()
        .collect::<Vec<_>>();
    let stdout = run(cmd, &what.join(" "), pin);
    serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "bpftool {} {}: not JSON ({e}): {}",
            what.join(" "),
            pin.display(),
            String::from_utf8_lossy(&stdout)
        )
    })
}

/// Runs `cmd` and returns its stdout; `what` and `pin` name it in the panic.
fn run(mut cmd: Command, what: &str, pin: &Path) -> Vec<u8> {
    let output = cmd.output().expect("running bpftool");
    assert!(
        output.status.success(),
        "bpftool {what} {}: {}",
        pin.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Bytes as bpftool prints them in JSON: an array of `"0x.."` strings.
fn bytes(v: &Value, pin: &Path) -> Vec<u8> {
    v.as_array()
        .unwrap_or_else(|| {
            panic!(
                "bpftool map dump {}: not an array of bytes: {v}",
                pin.display()
            )
        })
        .iter()
        .map(|b| {
            b.as_str()
                .and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .unwrap_or_else(|| {
                    panic!("bpftool map dump {}: not a hex byte: {b}", pin.display())
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_read_from_bpftool_hex_strings() {
        let pin = Path::new("/sys/fs/bpf/test");
        let entry: Value =
            serde_json::from_str(r#"{"key":["0x01","0x00"],"value":["0xff"]}"#).expect("JSON");
        assert_eq!(bytes(&entry["key"], pin), [1, 0]);
        assert_eq!(bytes(&entry["value"], pin), [0xff]);
    }

    #[test]
    #[should_panic(expected = "not a hex byte")]
    fn a_byte_that_is_no_hex_string_panics() {
        let _ = bytes(&serde_json::json!(["0xzz"]), Path::new("/sys/fs/bpf/test"));
    }
}
