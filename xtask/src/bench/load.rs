//! Owns the load generators of the comparison benchmark (`compare.rs`): the iperf3 and sockperf
//! servers as guarded child processes ([`Daemon`]: its own process group, ended by that id on
//! drop), one-shot clients with a time limit ([`run_client`]), and the parsers of what iperf3
//! (`-J`) and sockperf (`ping-pong --full-rtt`) print. The parsers are tested on output captured
//! from the real tools (`testdata/`).
use std::{
    fs::File,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::lab::INTERRUPTED;
use crate::{TAG, cmd};

/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(1);

/// How a program is started in a namespace: `nsenter --net=NS [taskset -c CPU] PROGRAM ARGS`.
/// nsenter and taskset exec into the program, so the child's PID is the program's.
fn in_namespace(ns: &Path, cpu: Option<usize>, program: &str, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command.arg(format!("--net={}", ns.display()));
    if let Some(cpu) = cpu {
        command.args(["taskset", "-c", &cpu.to_string()]);
    }
    command.arg(program).args(args);
    command
}

/// A long-running process the benchmark started (a server or a proxy), in a process group of
/// its own so that the children it forks (socat's per-connection copies) end with it. Dropping
/// it ends the whole group by its id, SIGTERM then SIGKILL, and reaps the leader.
pub struct Daemon {
    name: String,
    shown: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts `program args` in namespace `ns` (pinned to `cpu` when given), its stdout and
    /// stderr going to `log`. Fails if it exits within the first 200 ms (a port in use, a bad
    /// argument), showing the end of its log.
    pub fn start(
        name: &str,
        ns: &Path,
        cpu: Option<usize>,
        program: &str,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut command = in_namespace(ns, cpu, program, args);
        let shown = cmd::display(&command);
        println!("$ {shown} &");
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot reuse {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group: Ctrl-C at the terminal does not reach it (the guard ends it), and
            // killing the group reaches every process it forked.
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("could not start `{shown}` (is {program} installed?)"))?;
        let mut daemon = Self {
            name: name.to_string(),
            shown,
            child: Some(child),
            log: log.to_path_buf(),
        };
        std::thread::sleep(Duration::from_millis(200));
        if let Some(status) = daemon.try_wait()? {
            let said = strip_ansi(&std::fs::read_to_string(&daemon.log).unwrap_or_default());
            bail!(
                "`{}` exited at once ({}); it said:\n{}",
                daemon.shown,
                cmd::describe(status),
                cmd::tail(&said, 15)
            );
        }
        Ok(daemon)
    }

    fn try_wait(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("cannot check on `{}`", self.shown)),
            None => Ok(None),
        }
    }

    /// Fails if the daemon is no longer running (e.g. the server crashed mid-run).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.try_wait()? {
            let said = strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default());
            bail!(
                "{} (`{}`) stopped ({}); it said:\n{}",
                self.name,
                self.shown,
                cmd::describe(status),
                cmd::tail(&said, 15)
            );
        }
        Ok(())
    }

    /// How many processes of the daemon's group are at work (running or in uninterruptible
    /// sleep): e.g. per-connection copies a proxy forked that have not finished yet.
    pub fn busy_processes(&self) -> usize {
        let Some(pgid) = self
            .child
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
        else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .flatten()
            .filter(|entry| {
                std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
                    stat_state_and_group(&stat)
                        .is_some_and(|(state, group)| group == pgid && matches!(state, 'R' | 'D'))
                })
            })
            .count()
    }

    /// Ends the process group and reaps the leader; returns whether it is gone.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
            return false;
        };
        // SAFETY: kill(2) with the negative id of the process group this benchmark made for
        // the child (process_group(0) made the child its leader); no other process is in it
        // unless the child put it there.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + TERM_GRACE;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    // SAFETY: as above.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = child.wait();
                    break;
                }
            }
        }
        // Forked children that ignored SIGTERM while the leader exited.
        // SAFETY: as above; ESRCH when the group is empty, which is the expected case.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        // Wait (briefly) until no process of the group runs any more, so none outlives the lab.
        // Orphaned children are reaped by init, which may take its time: a zombie has ended.
        let deadline = Instant::now() + TERM_GRACE;
        while group_has_live_process(pgid) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.stop() {
            eprintln!(
                "{TAG}: clean-up: could not end {} (`{}`)",
                self.name, self.shown
            );
        }
    }
}

/// Whether a process of group `pgid` is still running (zombies do not count).
fn group_has_live_process(pgid: libc::pid_t) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        stat_state_and_group(&stat).is_some_and(|(state, group)| group == pgid && state != 'Z')
    })
}

/// The state letter and process group of a /proc/PID/stat line ("PID (COMM) S PPID PGRP …",
/// where COMM may hold spaces and parentheses).
fn stat_state_and_group(stat: &str) -> Option<(char, libc::pid_t)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

/// What a client printed.
#[derive(Debug)]
pub struct ClientOutput {
    pub stdout: String,
    pub stderr: String,
    pub shown: String,
}

/// Runs `program args` in namespace `ns` pinned to `cpu`, waiting at most `limit`; on the limit
/// or Ctrl-C the client is killed (by its PID) and an error returned. A non-zero exit is an
/// error showing what it said; iperf3 and sockperf also exit 0 on some failures, which their
/// parsers catch.
pub fn run_client(
    ns: &Path,
    cpu: usize,
    program: &str,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<ClientOutput> {
    let mut command = in_namespace(ns, Some(cpu), program, args);
    let shown = cmd::display(&command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{shown}` (is {program} installed?)"))?;
    let mut out_pipe = child.stdout.take().context("stdout was not piped")?;
    let mut err_pipe = child.stderr.take().context("stderr was not piped")?;
    let (stdout, stderr, status) = std::thread::scope(|s| {
        let out = s.spawn(move || {
            let mut buf = Vec::new();
            let _ = out_pipe.read_to_end(&mut buf);
            buf
        });
        let err = s.spawn(move || {
            let mut buf = Vec::new();
            let _ = err_pipe.read_to_end(&mut buf);
            buf
        });
        let status = wait_limited(&mut child, limit, &shown);
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        (out, err, status)
    });
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let status = status?;
    if !status.success() {
        let said = if stderr.trim().is_empty() {
            &stdout
        } else {
            &stderr
        };
        bail!(
            "`{shown}` failed ({}); it said:\n{}",
            cmd::describe(status),
            cmd::tail(&strip_ansi(said), 15)
        );
    }
    Ok(ClientOutput {
        stdout,
        stderr,
        shown,
    })
}

/// Waits for `child` until `limit`, killing it (by its PID) on the limit or on Ctrl-C.
fn wait_limited(
    child: &mut Child,
    limit: Duration,
    shown: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("cannot wait for `{shown}`"))?
        {
            return Ok(status);
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if interrupted || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            if interrupted {
                bail!("interrupted (Ctrl-C or SIGTERM)");
            }
            bail!(
                "`{shown}` did not finish within {} s and was killed: the path probably drops \
                 its packets (see the lab's counters), or the server is stuck",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON iperf3 `-J` printed, or its error.
fn iperf3_json(text: &str) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| {
        format!(
            "iperf3 printed something that is not JSON:\n{}",
            cmd::tail(text, 10)
        )
    })?;
    if let Some(error) = value["error"].as_str() {
        bail!("iperf3 reported: {error}");
    }
    Ok(value)
}

/// TCP stream throughput in bit/s as the receiver counted it (`end.sum_received`).
pub fn parse_iperf3_tcp(text: &str) -> anyhow::Result<f64> {
    let value = iperf3_json(text)?;
    let received = &value["end"]["sum_received"];
    received["bits_per_second"]
        .as_f64()
        .filter(|bps| *bps > 0.0)
        .context("iperf3's JSON has no end.sum_received.bits_per_second above 0")
}

/// What an iperf3 UDP test counted at the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpResult {
    /// Datagrams the client sent.
    pub sent: u64,
    /// Datagrams the server read (sent less those it found missing).
    pub received: u64,
    /// The server's measured interval.
    pub seconds: f64,
}

impl UdpResult {
    /// Datagrams per second the server received.
    pub fn received_per_second(&self) -> f64 {
        self.received as f64 / self.seconds
    }
}

/// Parses an iperf3 `-u -J` client's output: the server's own view (`end.sum_received`,
/// whose `packets` is the highest sequence number it saw and `lost_packets` the gaps).
pub fn parse_iperf3_udp(text: &str) -> anyhow::Result<UdpResult> {
    let value = iperf3_json(text)?;
    let end = &value["end"];
    let received = &end["sum_received"];
    let sent = end["sum_sent"]["packets"].as_u64();
    let (packets, lost, seconds) = (
        received["packets"].as_u64(),
        received["lost_packets"].as_u64(),
        received["seconds"].as_f64(),
    );
    match (sent, packets, lost, seconds) {
        (Some(sent), Some(packets), Some(lost), Some(seconds)) if seconds > 0.0 => Ok(UdpResult {
            sent,
            received: packets.saturating_sub(lost),
            seconds,
        }),
        _ => bail!(
            "iperf3's JSON lacks end.sum_sent.packets or end.sum_received.{{packets, \
             lost_packets, seconds}} (iperf3 3.12 or newer prints them)"
        ),
    }
}

/// What one sockperf ping-pong run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingPong {
    /// Round trips per second over the measured (post-warm-up) duration.
    pub per_second: f64,
    /// Round-trip time percentiles, microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub round_trips: u64,
}

/// Parses `sockperf ping-pong --full-rtt`: the `[Valid Duration]` line gives the rate, the
/// `percentile` lines the round-trip times. sockperf colours some lines and exits 0 when it
/// cannot connect, so a missing line is an error that shows its `ERROR` line.
pub fn parse_sockperf_pingpong(text: &str) -> anyhow::Result<PingPong> {
    let plain = strip_ansi(text);
    let failure = || {
        let reason = plain
            .lines()
            .find(|l| l.contains("ERROR"))
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        anyhow::anyhow!(
            "sockperf printed no result{reason}\n{}",
            cmd::tail(&plain, 10)
        )
    };
    let valid = plain
        .lines()
        .find(|l| l.contains("[Valid Duration]"))
        .ok_or_else(failure)?;
    let run_seconds = field(valid, "RunTime=")
        .and_then(|v| v.trim_end_matches("sec").parse::<f64>().ok())
        .ok_or_else(failure)?;
    let received = field(valid, "ReceivedMessages=")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(failure)?;
    if run_seconds <= 0.0 || received == 0 {
        bail!(
            "sockperf measured no round trip ({received} in {run_seconds} s):\n{}",
            cmd::tail(&plain, 10)
        );
    }
    let percentile = |which: &str| -> anyhow::Result<f64> {
        plain
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(&format!("percentile {which} ="))?;
                rest.trim().parse::<f64>().ok()
            })
            .with_context(|| format!("sockperf printed no percentile {which}"))
    };
    Ok(PingPong {
        per_second: received as f64 / run_seconds,
        p50_us: percentile("50.000")?,
        p99_us: percentile("99.000")?,
        round_trips: received,
    })
}

/// The value after `key` up to the next `;` or whitespace.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (_, rest) = line.split_once(key)?;
    rest.split([';', ' ']).next().map(str::trim)
}

/// `text` without ANSI escape sequences (ESC `[` … final letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from iperf3 3.12 and sockperf 3.7 (Debian 12) between two namespaces.
    const IPERF3_TCP: &str = include_str!("testdata/iperf3-tcp.json");
    const IPERF3_UDP: &str = include_str!("testdata/iperf3-udp64.json");
    const IPERF3_REFUSED: &str = include_str!("testdata/iperf3-refused.json");
    const SOCKPERF_PP: &str = include_str!("testdata/sockperf-pp-tcp.txt");
    const SOCKPERF_REFUSED: &str = include_str!("testdata/sockperf-refused.txt");

    #[test]
    fn iperf3_tcp_takes_the_receivers_rate() {
        let bps = parse_iperf3_tcp(IPERF3_TCP).expect("parses");
        assert!((bps - 7_538_914_446.831_793).abs() < 1.0, "{bps}");
    }

    #[test]
    fn iperf3_udp_counts_what_the_server_received() {
        let udp = parse_iperf3_udp(IPERF3_UDP).expect("parses");
        assert_eq!(udp.sent, 66680);
        // 66677 by sequence number, 34327 of them missing: 2,070,400 bytes of 64.
        assert_eq!(udp.received, 66677 - 34327);
        assert_eq!(udp.received * 64, 2_070_400);
        assert!((udp.seconds - 1.065185).abs() < 1e-9);
        assert!((udp.received_per_second() - 30370.7).abs() < 1.0);
    }

    #[test]
    fn iperf3_errors_are_reported() {
        let e = parse_iperf3_tcp(IPERF3_REFUSED).unwrap_err().to_string();
        assert!(e.contains("Connection refused"), "{e}");
        let e = parse_iperf3_udp(IPERF3_REFUSED).unwrap_err().to_string();
        assert!(e.contains("unable to connect"), "{e}");
        let e = parse_iperf3_tcp("iperf3: error").unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
        // A UDP figure missing from a TCP result.
        assert!(parse_iperf3_udp(IPERF3_TCP).is_err());
    }

    #[test]
    fn sockperf_pingpong_gives_rate_and_percentiles() {
        let pp = parse_sockperf_pingpong(SOCKPERF_PP).expect("parses");
        assert_eq!(pp.round_trips, 6060);
        assert!((pp.per_second - 6060.0 / 0.560).abs() < 1e-6, "{pp:?}");
        assert_eq!(pp.p50_us, 31.075);
        assert_eq!(pp.p99_us, 2966.984);
    }

    #[test]
    fn sockperf_failure_shows_its_error_line() {
        let e = parse_sockperf_pingpong(SOCKPERF_REFUSED)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Connection refused"), "{e}");
        assert!(!e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn proc_stat_gives_state_and_group() {
        let stat = "8256 (socat (x) y) Z 1 28442 28442 0 -1 4194564 0 0";
        assert_eq!(stat_state_and_group(stat), Some(('Z', 28442)));
        assert_eq!(stat_state_and_group("garbage"), None);
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(strip_ansi("a\u{1b}[2;35mb\u{1b}[0mc"), "abc");
    }
}
