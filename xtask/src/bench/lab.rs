//! Owns the benchmark's lab: a namespace standing for the host (netpath instance `bench`, uplink
//! 10.78.0.1/24), one for a LAN client (10.78.0.2 and .3) joined to it by a veth pair, one endpoint,
//! and running timed `netpath` commands in the host namespace. [`Lab::teardown`] removes all of
//! it; `Drop` does too, so every exit path (error, panic, Ctrl-C) cleans up.
use std::{
    fs::File,
    io::{self, Read as _},
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{TAG, cmd};

/// The namespace standing for the host; netpath serves it.
pub const HOST_NS: &str = "npbench-host";
/// The namespace standing for a machine on the host's LAN.
pub const LAN_NS: &str = "npbench-lan";
/// The netpath instance: its own pins, state and namespace names, apart from the demo's
/// (`demo`) and the tests'.
pub const INSTANCE: &str = "bench";
/// The one endpoint; its server listens on port 80.
pub const ENDPOINT: &str = "web";
const UPLINK: &str = "up0";
const LAN_DEV: &str = "lan0";
/// A /24 that neither the demo (10.77.0.0/24) nor the tests use.
pub const HOST_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The LAN client's addresses: connections to the first mapping come from the first, those to
/// the last mapping from the second. With one address, a client port reused for the other
/// mapping within the conntrack timeout meets netpath's stale reverse entry of the earlier flow
/// (both flows are `client:port -> web:80` inside the endpoint): a datapath bug reported with
/// the benchmark, which would otherwise show up as connect timeouts here.
pub const LAN_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 78, 0, 2), Ipv4Addr::new(10, 78, 0, 3)];

/// Set by SIGINT/SIGTERM: the benchmark stops at the next step or loop turn and cleans up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into [`INTERRUPTED`]. A running child gets Ctrl-C from the terminal
/// itself (same process group) and dies; the benchmark then notices the flag and cleans up.
pub fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Fails once SIGINT or SIGTERM has arrived.
pub fn check_interrupt() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted (Ctrl-C or SIGTERM)");
    }
    Ok(())
}

/// What a `netpath` command cost, measured from outside it.
#[derive(Debug)]
pub struct NetpathRun {
    /// From spawn to exit, as a user's shell would see it.
    pub wall: Duration,
    /// Peak resident set of the process (`ru_maxrss` from wait4, i.e. its VmHWM), in KiB.
    pub max_rss_kib: u64,
    /// What it printed, when asked for.
    pub stdout: String,
}

/// Whether a `netpath` command's stdout is wanted; a batch of 10,000 prints 10,000 lines, which
/// the timed runs send to /dev/null rather than through a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    Keep,
    Discard,
}

/// The benchmark's namespaces and netpath instance.
pub struct Lab {
    bin: PathBuf,
    torn_down: bool,
}

impl Lab {
    /// Builds the lab from scratch (removing what an earlier run left first), with netpath's
    /// datapath loaded and the endpoint created. On failure everything made so far is removed.
    pub fn create(bin: &Path) -> anyhow::Result<Self> {
        let mut lab = Self {
            bin: bin.to_path_buf(),
            torn_down: false,
        };
        if leftovers_exist() {
            println!("{TAG}: removing what an earlier benchmark left behind");
            if !lab.teardown() {
                bail!("could not remove what an earlier benchmark left behind (see above)");
            }
            lab.torn_down = false;
        }
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> anyhow::Result<()> {
        let host = format!("--net=/run/netns/{HOST_NS}");
        let lan = format!("--net=/run/netns/{LAN_NS}");
        let up = format!("{HOST_UPLINK_IP}/24");
        let lan_addr = format!("{}/24", LAN_IPS[0]);
        let lan_addr2 = format!("{}/24", LAN_IPS[1]);
        let lan_ip = LAN_IPS[0].to_string();
        let steps: &[&[&str]] = &[
            &["ip", "netns", "add", HOST_NS],
            &["ip", "netns", "add", LAN_NS],
            &["nsenter", &host, "ip", "link", "set", "lo", "up"],
            &[
                "nsenter", &host, "ip", "link", "add", UPLINK, "type", "veth", "peer", "name",
                LAN_DEV, "netns", LAN_NS,
            ],
            &["nsenter", &host, "ip", "addr", "add", &up, "dev", UPLINK],
            &["nsenter", &host, "ip", "link", "set", UPLINK, "up"],
            &[
                "nsenter", &host, "ip", "route", "add", "default", "via", &lan_ip,
            ],
            &["nsenter", &host, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            &["nsenter", &lan, "ip", "link", "set", "lo", "up"],
            &[
                "nsenter", &lan, "ip", "addr", "add", &lan_addr, "dev", LAN_DEV,
            ],
            &[
                "nsenter", &lan, "ip", "addr", "add", &lan_addr2, "dev", LAN_DEV,
            ],
            &["nsenter", &lan, "ip", "link", "set", LAN_DEV, "up"],
        ];
        run_steps(steps)?;
        println!("$ {}", replay_line(&["endpoint", "create", ENDPOINT]));
        self.netpath(&["endpoint", "create", ENDPOINT], Stdout::Discard)?;
        Ok(())
    }

    /// The host namespace's path.
    pub fn host_ns(&self) -> PathBuf {
        Path::new("/run/netns").join(HOST_NS)
    }

    /// The LAN client's namespace path.
    pub fn lan_ns(&self) -> PathBuf {
        Path::new("/run/netns").join(LAN_NS)
    }

    /// The namespace netpath made for the endpoint.
    pub fn endpoint_ns(&self) -> PathBuf {
        endpoint_ns()
    }

    /// The netpath binary the lab runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Runs `netpath --instance bench ARGS` in the host namespace and measures it. The child
    /// enters the namespace itself (setns between fork and exec), so no `nsenter` process is
    /// timed or measured: the figures are netpath's own, as on a real host. Fails on a non-zero
    /// exit, showing what netpath said.
    pub fn netpath(&self, args: &[&str], stdout: Stdout) -> anyhow::Result<NetpathRun> {
        check_interrupt()?;
        let ns_path = self.host_ns();
        let ns = File::open(&ns_path)
            .with_context(|| format!("cannot open namespace {}", ns_path.display()))?;
        let ns_fd = ns.as_raw_fd();
        let mut command = Command::new(&self.bin);
        command
            .args(["--instance", INSTANCE])
            .args(args)
            .stdin(Stdio::null())
            .stdout(match stdout {
                Stdout::Keep => Stdio::piped(),
                Stdout::Discard => Stdio::null(),
            })
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe; `ns` stays open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let shown = replay_line(args);
        let start = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        drop(ns);
        let pid = child.id() as libc::pid_t;
        let out_pipe = child.stdout.take();
        let mut err_pipe = child
            .stderr
            .take()
            .context("netpath's stderr was not piped")?;
        let (out, err, waited) = std::thread::scope(|s| {
            let out = s.spawn(move || -> io::Result<Vec<u8>> {
                let mut buf = Vec::new();
                if let Some(mut pipe) = out_pipe {
                    pipe.read_to_end(&mut buf)?;
                }
                Ok(buf)
            });
            let mut err = Vec::new();
            let err_read = err_pipe.read_to_end(&mut err).map(|_| err);
            let waited = wait4(pid);
            let out = out
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (out, err_read, waited)
        });
        let wall = start.elapsed();
        let (status, max_rss_kib) = waited.with_context(|| format!("waiting for `{shown}`"))?;
        check_interrupt()?;
        let stdout = String::from_utf8_lossy(&out.with_context(|| format!("reading `{shown}`"))?)
            .into_owned();
        let stderr = String::from_utf8_lossy(&err.with_context(|| format!("reading `{shown}`"))?)
            .into_owned();
        if !status.success() {
            let said = if stderr.trim().is_empty() {
                &stdout
            } else {
                &stderr
            };
            bail!(
                "`{shown}` failed ({}); it said:\n{}",
                cmd::describe(status),
                cmd::tail(said, 25)
            );
        }
        Ok(NetpathRun {
            wall,
            max_rss_kib,
            stdout,
        })
    }

    /// Removes everything the benchmark may have made; returns whether everything is gone.
    /// Safe to call when nothing or only part exists.
    pub fn teardown(&mut self) -> bool {
        self.torn_down = true;
        if self.host_ns().exists() && self.bin.exists() {
            // netpath runs only inside the lab's host namespace, never in the machine's own.
            let mut purge = Command::new("nsenter");
            purge
                .arg(format!("--net=/run/netns/{HOST_NS}"))
                .arg(&self.bin)
                .args(["--instance", INSTANCE, "purge", "--force"]);
            cmd::report_cleanup(&mut purge);
        }
        for path in instance_paths()
            .into_iter()
            .chain(lab_namespaces())
            .filter(|p| p.exists())
        {
            cmd::remove_leftover(&path);
        }
        cmd::all_removed(instance_paths().into_iter().chain(lab_namespaces()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.torn_down {
            self.teardown();
        }
    }
}

/// Runs each command of `steps` (program and arguments), showing it as a shell line first and
/// stopping at the first failure or a Ctrl-C: how the bench labs build their namespaces.
pub fn run_steps(steps: &[&[&str]]) -> anyhow::Result<()> {
    for argv in steps {
        check_interrupt()?;
        let (program, args) = argv.split_first().context("empty command")?;
        let mut command = cmd::command(program, args);
        println!("$ {}", cmd::display(&command));
        cmd::run_captured(&mut command)?;
    }
    Ok(())
}

/// The command a reader types to replay a netpath step of the benchmark.
pub fn replay_line(args: &[&str]) -> String {
    format!(
        "nsenter --net=/run/netns/{HOST_NS} netpath --instance {INSTANCE} {}",
        args.join(" ")
    )
}

/// Waits for child `pid` and returns its exit status and peak RSS in KiB (Linux's ru_maxrss).
fn wait4(pid: libc::pid_t) -> io::Result<(std::process::ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt as _;
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes; `pid` is our unreaped child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            let rss = u64::try_from(usage.ru_maxrss).unwrap_or(0);
            return Ok((std::process::ExitStatus::from_raw(status), rss));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How many processes run the netpath binary `bin` right now (netpath is no daemon: after a
/// command returns, none should).
pub fn netpath_processes(bin: &Path) -> anyhow::Result<usize> {
    let bin = bin
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", bin.display()))?;
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes that end while we look, or kernel threads, have no readable exe.
        if std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == bin) {
            count += 1;
        }
    }
    Ok(count)
}

fn endpoint_ns() -> PathBuf {
    PathBuf::from(format!("/run/netns/{INSTANCE}-{ENDPOINT}"))
}

/// What instance `bench` may leave: the endpoint's namespace and resolv.conf dir, pins, state,
/// run dir.
fn instance_paths() -> Vec<PathBuf> {
    vec![
        endpoint_ns(),
        PathBuf::from(format!("/etc/netns/{INSTANCE}-{ENDPOINT}")),
        PathBuf::from(format!("/sys/fs/bpf/netpath-{INSTANCE}")),
        PathBuf::from(format!("/var/lib/netpath-{INSTANCE}")),
        PathBuf::from(format!("/run/netpath-{INSTANCE}")),
    ]
}

fn lab_namespaces() -> Vec<PathBuf> {
    [HOST_NS, LAN_NS]
        .iter()
        .map(|n| Path::new("/run/netns").join(n))
        .collect()
}

fn leftovers_exist() -> bool {
    instance_paths()
        .iter()
        .chain(&lab_namespaces())
        .any(|p| p.exists())
}
