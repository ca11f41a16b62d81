//! Owns named network namespaces for tests: [`Netns`] creates one under `/run/netns` and
//! deletes it on drop; [`in_netns`] runs code inside any namespace on a short-lived thread.
use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// A named network namespace (`ip netns add NAME`) with loopback up, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Name under `/run/netns`.
    pub name: String,
    /// `/run/netns/NAME`, what `nsenter --net=` and [`in_netns`] take.
    pub path: PathBuf,
}

impl Netns {
    /// Creates the namespace `name` and brings its loopback up.
    ///
    /// # Panics
    /// When `ip netns add` or `ip link set lo up` fails (e.g. the name is taken or the caller is
    /// not root); the message shows their stderr. A namespace made before the panic is deleted.
    pub fn new(name: &str) -> Netns {
        let out = output(Command::new("ip").args(["netns", "add", name]));
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed (tests need root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let ns = Netns {
            name: name.to_string(),
            path: Path::new("/run/netns").join(name),
        };
        ns.run_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `cmd` inside the namespace (`nsenter --net=PATH cmd…`) and returns its output,
    /// whatever its exit status.
    ///
    /// # Panics
    /// When `cmd` is empty or `nsenter` cannot be started.
    pub fn run(&self, cmd: &[&str]) -> Output {
        assert!(!cmd.is_empty(), "Netns::run: empty command");
        output(&mut nsenter(&self.path, cmd))
    }

    /// Like [`Netns::run`], and asserts that the command succeeded.
    ///
    /// # Panics
    /// When it failed; the message shows the command, its stdout and its stderr.
    #[track_caller]
    pub fn run_ok(&self, cmd: &[&str]) -> Output {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "in namespace {}: `{}` failed ({})\nstdout:\n{}\nstderr:\n{}",
            self.name,
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A test may have deleted it on purpose (e.g. a host namespace that goes away).
        if self.path.exists() {
            delete_netns(&self.name);
        }
    }
}

/// `ip netns del NAME`; a failure is printed, never a panic (this runs in `Drop`).
pub(crate) fn delete_netns(name: &str) {
    match Command::new("ip").args(["netns", "del", name]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "netpath-tests: clean-up: `ip netns del {name}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("netpath-tests: clean-up: cannot run `ip netns del {name}`: {e}"),
    }
}

/// `nsenter --net=PATH cmd…`, not yet run.
pub(crate) fn nsenter(path: &Path, cmd: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", path.display())).args(cmd);
    c
}

/// Runs a command, panicking with its name if it cannot be started at all.
pub(crate) fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? `cargo xtask setup` installs it)")
    })
}

/// Runs `f` on a fresh thread that has entered the network namespace at `path` and returns its
/// result. The thread ends afterwards, so no thread is ever left in the wrong namespace; sockets
/// made by `f` stay in that namespace wherever they are used later.
///
/// # Panics
/// When the namespace cannot be opened or entered, and when `f` panics (the panic is passed on).
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(path)
                .unwrap_or_else(|e| panic!("cannot open namespace {}: {e}", path.display()));
            // SAFETY: `ns` is an open namespace file for the whole call; setns changes only this
            // thread, which ends when `f` returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "cannot enter namespace {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `cmd` inside the namespace at `path` (`nsenter --net=PATH cmd…`), asserts it succeeded,
/// and returns its stdout.
pub fn ns_output(path: &Path, cmd: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "in {}: {cmd:?} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of the links in the namespace at `path`, as `ip -o link` lists them.
pub fn ns_links(path: &Path) -> Vec<String> {
    ns_output(path, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Runs `ip ARGS` in the calling thread's network namespace (children inherit it) and asserts
/// it succeeded.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name without NUL");
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}
