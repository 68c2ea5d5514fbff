//! Running the helper tools (`ip`, `sysctl`) and turning failures into errors that say what ran.

use std::ffi::OsStr;
use std::process::{Command, Output};

use anyhow::Context as _;

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(OsStr::to_string_lossy).map(|arg| {
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            format!("'{arg}'")
        } else {
            arg.into_owned()
        }
    }));
    words.join(" ")
}

/// Runs `cmd` to completion; a failure to start or a non-zero exit is an error naming the command
/// line, the exit status and the command's stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let line = describe(cmd);
    let output = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    check_status(&line, &output)?;
    Ok(output)
}

/// An error naming `line`, the exit status and stderr if `output` reports a failure.
pub(crate) fn check_status(line: &str, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    anyhow::bail!(
        "`{line}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )
}
