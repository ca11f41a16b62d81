//! Owns booting one kernel under QEMU and reading its console: software emulation (TCG; this
//! machine's `/dev/kvm` cannot run stock kernels), one virtual CPU at the lowest CPU priority
//! (`nice -n 19`) so it never competes with other work on the two cores, this machine's root
//! shared read-only over 9p, the serial console on QEMU's stdout. Every console line goes to
//! the VM's log file and through [`Report::line`]; marker lines are echoed as progress.
use std::{
    fs,
    io::{BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{guest::Report, kernel::Kernel};
use crate::TAG;

/// Guest memory: netns, veths and BPF maps of the end-to-end tests fit with room to spare.
const MEMORY_MB: &str = "2048";

/// How the boot ended, besides what the console said.
pub struct Boot {
    pub report: Report,
    /// Wall time from starting QEMU to its exit.
    pub elapsed: Duration,
    /// True when QEMU was killed at the time limit.
    pub timed_out: bool,
}

/// Directories the guest covers with its own empty tmpfs. A directory the guest reads from
/// under `/tmp` or `/run` is bind-mounted back over it (`np.keep=`); under these it cannot be.
const HIDDEN_IN_GUEST: &[&str] = &["/var/lib", "/etc/netns", "/lib/modules"];

/// Boots `kernel` with `initrd` and runs the guest script `script` (an absolute path without
/// spaces on this machine's root); writes the console to `log`; kills QEMU after `limit`.
/// The directories in `workspace` (the checkout and its target directory: the script, the
/// binaries the guest runs and the paths they were built with) stay visible in the guest
/// wherever they are, `/tmp` included.
pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    script: &Path,
    workspace: &[&Path],
    log: &Path,
    limit: Duration,
) -> anyhow::Result<Boot> {
    let mut keep = vec![kernel.dir.as_path()];
    keep.extend_from_slice(workspace);
    for p in keep.iter().chain([&script]) {
        let text = p.to_string_lossy();
        if text.contains(char::is_whitespace) || text.contains(',') {
            bail!(
                "{} contains white space or a comma, which the kernel command line cannot \
                 carry; move the checkout or set NETPATH_CACHE_DIR to a plain path",
                p.display()
            );
        }
        if let Some(hidden) = HIDDEN_IN_GUEST.iter().find(|h| p.starts_with(h)) {
            bail!(
                "{} is under {hidden}, which the test VM covers with a tmpfs of its own; move \
                 the checkout (or NETPATH_CACHE_DIR) elsewhere",
                p.display()
            );
        }
    }
    let append = format!(
        "console=ttyS0 panic=-1 loglevel=4 np.kdir={} np.cmd={} np.keep={}",
        kernel.dir.display(),
        script.display(),
        keep.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut qemu = Command::new("nice");
    qemu.args(["-n", "19", "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", MEMORY_MB])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-virtfs",
            "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-append")
        .arg(&append)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut file =
        fs::File::create(log).with_context(|| format!("could not create {}", log.display()))?;
    let _ = writeln!(file, "# {}", crate::cmd::display(&qemu));
    let started = Instant::now();
    let mut child = qemu.spawn().context(
        "could not start qemu-system-x86_64 (package qemu-system-x86; cargo xtask test --kernel installs it)",
    )?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu's stdout was not piped")?;
    let stderr = child.stderr.take().context("qemu's stderr was not piped")?;
    let tx_err = tx.clone();
    std::thread::spawn(move || forward_lines(BufReader::new(stdout), &tx));
    std::thread::spawn(move || {
        forward_lines(BufReader::new(stderr), &tx_err);
    });
    let series = kernel.series;
    let mut report = Report::default();
    let mut timed_out = false;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let _ = writeln!(file, "{line}");
                report.line(&line);
                progress(series, &line, started.elapsed());
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if started.elapsed() < limit {
                    continue;
                }
                timed_out = true;
                println!(
                    "{TAG}: [{series}] no end after {} s: killing QEMU (pid {})",
                    limit.as_secs(),
                    child.id()
                );
                let _ = writeln!(file, "# killed by cargo xtask after {} s", limit.as_secs());
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("could not wait for QEMU (pid {})", child.id()))?;
    // After a kill the readers see EOF; take what they still had.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        let _ = writeln!(file, "{line}");
        report.line(&line);
    }
    let _ = writeln!(file, "# qemu: {}", crate::cmd::describe(status));
    Ok(Boot {
        report,
        elapsed: started.elapsed(),
        timed_out,
    })
}

/// Sends each line (without `\r` and terminal escape sequences) until EOF.
fn forward_lines(reader: impl std::io::BufRead, tx: &mpsc::Sender<String>) {
    for line in reader.split(b'\n') {
        let Ok(bytes) = line else { break };
        if tx.send(clean(&String::from_utf8_lossy(&bytes))).is_err() {
            break;
        }
    }
}

/// Removes carriage returns and ANSI escape sequences (SeaBIOS writes some).
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Echoes the lines that show progress: markers, failures, panics.
fn progress(series: &str, line: &str, at: Duration) {
    let show = line.contains("NETPATH-")
        || line.contains("... FAILED")
        || line.contains("Kernel panic")
        || line.starts_with("status| attach mode")
        || line.contains("warning: the kernel refused");
    if show {
        // A marker can follow boot noise on the same console line: show it from its start.
        let from = line.find("NETPATH-").unwrap_or(0);
        println!(
            "{TAG}: [{series} +{:>4} s] {}",
            at.as_secs(),
            line[from..].trim()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_lose_escapes_and_carriage_returns() {
        assert_eq!(clean("\u{1b}[2J\u{1b}[01;01HSeaBIOS\r"), "SeaBIOS");
        assert_eq!(clean("NETPATH-VM-RC=0\r"), "NETPATH-VM-RC=0");
    }
}
