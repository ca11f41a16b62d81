//! Owns running external commands: showing them as a shell line, capturing or streaming their
//! output, and turning a failure into an error that names the command and shows the end of
//! what it printed; and clean-up steps that report, not fail (a command, removing a leftover
//! namespace or directory, listing what is still there).
use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context as _, anyhow};

use crate::TAG;

/// How many lines of a failed command's output an error shows.
const TAIL_LINES: usize = 25;

/// The command as one shell-like line (arguments with spaces or quotes are single-quoted).
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![quote(&cmd.get_program().to_string_lossy())];
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// Like [`display`], with `program` shown instead of the real program path (e.g. `cargo`
/// instead of the toolchain's full path).
pub fn display_as(cmd: &Command, program: &str) -> String {
    let mut parts = vec![program.to_string()];
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs the command with its output captured; a command that cannot be started is an error,
/// a non-zero exit is not (the caller looks at `status`).
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))
}

/// Runs the command with its output captured and fails unless it exits with 0; the error
/// shows the last lines of its stderr (or stdout when stderr is empty).
pub fn run_captured(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(failure(cmd, out.status, &out));
    }
    Ok(out)
}

/// Runs the command with the terminal as its stdout and stderr, so its progress shows as it
/// happens; fails unless it exits with 0.
/// `shown` is how the error names the command (e.g. `cargo build -p netpath`).
pub fn run_streamed(cmd: &mut Command, shown: &str) -> anyhow::Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .map_err(|e| spawn_error(cmd, e))?;
    if !status.success() {
        return Err(anyhow!(
            "`{shown}` failed ({}); its output is above",
            describe(status)
        ));
    }
    Ok(())
}

/// Whether the command runs and exits with 0 (its output is discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a clean-up command; a failure is reported but does not stop the clean-up.
pub fn report_cleanup(command: &mut Command) {
    match output(command) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("{TAG}: clean-up: {:#}", failure(command, out.status, &out)),
        Err(e) => eprintln!("{TAG}: clean-up: {e:#}"),
    }
}

/// The `ip netns` command that deletes the named namespace at `/run/netns/NAME`.
pub fn netns_del(ns_path: &Path) -> Command {
    let name = ns_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    command("ip", &["netns", "del", &name])
}

/// Removes a leftover: a namespace under `/run/netns` with `ip netns del`, anything else (pins,
/// state and run directories) as a directory tree. Failures are reported, not returned.
pub fn remove_leftover(path: &Path) {
    if path.starts_with("/run/netns") {
        report_cleanup(&mut netns_del(path));
    } else if let Err(e) = std::fs::remove_dir_all(path) {
        eprintln!("{TAG}: clean-up: could not remove {}: {e}", path.display());
    }
}

/// True when none of `paths` exists any more; otherwise names those that do.
pub fn all_removed(paths: impl IntoIterator<Item = PathBuf>) -> bool {
    let left: Vec<String> = paths
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !left.is_empty() {
        eprintln!("{TAG}: clean-up could not remove: {}", left.join(", "));
    }
    left.is_empty()
}

/// The error for a command that ran and failed.
pub fn failure(cmd: &Command, status: ExitStatus, out: &Output) -> anyhow::Error {
    let (name, text) = if out.stderr.iter().all(u8::is_ascii_whitespace) {
        ("stdout", &out.stdout)
    } else {
        ("stderr", &out.stderr)
    };
    anyhow!(
        "`{}` failed ({}); end of its {name}:\n{}",
        display(cmd),
        describe(status),
        tail(&String::from_utf8_lossy(text), TAIL_LINES)
    )
}

fn spawn_error(cmd: &Command, e: io::Error) -> anyhow::Error {
    let hint = if e.kind() == io::ErrorKind::NotFound {
        " (not installed or not in PATH)"
    } else {
        ""
    };
    anyhow::Error::new(e).context(format!("could not start `{}`{hint}", display(cmd)))
}

/// "exit status 3" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The last `n` lines of `text`, each indented, with a note when lines were left out.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let skipped = lines.len().saturating_sub(n);
    let mut out = String::new();
    if skipped > 0 {
        out.push_str(&format!("    [… {skipped} earlier lines]\n"));
    }
    for line in &lines[skipped..] {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    if lines.is_empty() {
        out.push_str("    (it printed nothing)\n");
    }
    out.trim_end().to_string()
}

/// Shorthand for `Command::new(program).args(args)`.
pub fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Adds the path to an error about reading a file the xtask needed.
pub fn read_to_string(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("could not read {path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let cmd = command(
            "nsenter",
            &["--net=/run/netns/x", "sh", "-c", "echo 'hi there'"],
        );
        assert_eq!(
            display(&cmd),
            r#"nsenter --net=/run/netns/x sh -c 'echo '\''hi there'\'''"#
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text, 3);
        assert!(t.starts_with("    [… 27 earlier lines]"), "{t}");
        assert!(t.ends_with("    line 30"), "{t}");
        assert_eq!(tail("", 3), "    (it printed nothing)");
    }

    #[test]
    fn failed_command_error_names_it_and_shows_stderr() {
        let mut cmd = command("sh", &["-c", "echo out; echo oops >&2; exit 3"]);
        let err = run_captured(&mut cmd).unwrap_err().to_string();
        assert!(err.contains("exit status 3"), "{err}");
        assert!(err.contains("oops") && !err.contains("out\n"), "{err}");
        let err = run_captured(&mut command("/nonexistent/tool", &[])).unwrap_err();
        assert!(format!("{err:#}").contains("not installed"), "{err:#}");
    }
}
