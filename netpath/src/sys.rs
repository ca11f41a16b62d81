//! Owns the checks and set-up netpath needs from the machine before it touches anything:
//! root, bpffs, the mount namespace it runs in, the kernel version, sysctls, the per-instance
//! lock.
use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SysError {
    #[error(
        "netpath must run as root (it creates namespaces, devices and BPF programs); try: sudo netpath …"
    )]
    NotRoot,
    #[error(
        "netpath is running in a private mount namespace (as `ip netns exec` gives its command): the namespaces and BPF pins it makes there would vanish with it. Run it with `nsenter --net=/run/netns/HOST netpath …` instead"
    )]
    PrivateMountNamespace,
    #[error("cannot mount bpffs at {path}: {source}; mount it with `mount -t bpf bpf {path}`")]
    MountBpffs { path: String, source: io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(
        "another netpath command of instance {instance} is still running (lock {path}); wait for it to finish"
    )]
    Busy { instance: String, path: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SysError {
    let what = what.into();
    move |source| SysError::Io { what, source }
}

pub fn require_root() -> Result<(), SysError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        Err(SysError::NotRoot)
    } else {
        Ok(())
    }
}

/// Refuses to run where pins and `/run/netns` bind mounts would not outlive the command: a
/// mount namespace of its own, which is what `ip netns exec` gives its command (it unshares the
/// mount namespace and then execs, so its caller is still in the machine's). Compared with the
/// parent process, and with PID 1 where that is readable.
pub fn require_shared_mount_namespace() -> Result<(), SysError> {
    let mine = fs::metadata("/proc/self/ns/mnt")
        .map_err(io_err("read /proc/self/ns/mnt"))?
        .ino();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    for other in [
        format!("/proc/{parent}/ns/mnt"),
        "/proc/1/ns/mnt".to_string(),
    ] {
        // Unreadable (e.g. PID 1 in a sandbox): nothing to compare against.
        if let Ok(m) = fs::metadata(&other)
            && m.ino() != mine
        {
            return Err(SysError::PrivateMountNamespace);
        }
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there (a fresh machine has none).
pub fn ensure_bpffs() -> Result<(), SysError> {
    let path = "/sys/fs/bpf";
    if is_mount_point_of_type(path, "bpf").map_err(io_err("read /proc/self/mountinfo"))? {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(|source| SysError::MountBpffs {
        path: path.into(),
        source,
    })?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, target, fstype) = (c("bpf"), c(path), c("bpf"));
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(SysError::MountBpffs {
            path: path.into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn is_mount_point_of_type(path: &str, fstype: &str) -> io::Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-");
        matches!(sep, Some(s) if fields.get(4) == Some(&path) && fields.get(s + 1) == Some(&fstype))
    }))
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` or, on hybrid layouts, `/sys/fs/cgroup/unified`),
/// read from mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
    })
}

/// The kernel's full release string, e.g. `6.1.0-56-amd64` (`uname -r`), or `unknown`.
pub fn kernel_release() -> String {
    match fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(release) if !release.trim().is_empty() => release.trim().to_string(),
        _ => "unknown".to_string(),
    }
}

/// Kernel release as (major, minor), e.g. (6, 1).
pub fn kernel_version() -> (u32, u32) {
    let release = kernel_release();
    let mut parts = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Writes a sysctl of the current network namespace (`/proc/sys/net/...` resolves to the netns
/// of the writing task).
pub fn write_sysctl(key: &str, value: &str) -> Result<(), SysError> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(&path, value).map_err(io_err(format!("set sysctl {key}={value}")))
}

/// Inode of the network namespace this process is in: what an instance records to refuse
/// serving two namespaces with one state.
pub fn current_netns_id() -> Result<u64, SysError> {
    Ok(fs::metadata("/proc/self/ns/net")
        .map_err(io_err("read /proc/self/ns/net"))?
        .ino())
}

/// Where the network namespace with inode `id` can still be entered: a name under
/// `/run/netns` (preferred), else `/proc/PID/ns/net` of a process in it; `None` when neither
/// holds it (it is gone, or only a bind mount elsewhere keeps it).
pub fn find_netns(id: u64) -> Option<PathBuf> {
    // Every namespace file lives on the one nsfs: match its device too, so a plain file in
    // /run/netns with the same inode number is not taken for the namespace.
    let nsfs = fs::metadata("/proc/self/ns/net").ok()?.dev();
    let is_it = |path: &Path| fs::metadata(path).is_ok_and(|m| m.dev() == nsfs && m.ino() == id);
    let named = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path());
    let held = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|entry| entry.path().join("ns/net"));
    named.chain(held).find(|path| is_it(path))
}

/// An exclusive per-instance lock, held for the whole command so two netpath commands never
/// interleave their changes. Released when dropped (or when the process dies).
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    pub fn acquire(run_dir: &Path, instance: &str) -> Result<Self, SysError> {
        fs::create_dir_all(run_dir).map_err(io_err(format!("create {}", run_dir.display())))?;
        let path = run_dir.join("lock");
        let file = File::create(&path).map_err(io_err(format!("open {}", path.display())))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // SAFETY: fd is a valid open file descriptor owned by `file`.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { _file: file });
            }
            if std::time::Instant::now() > deadline {
                return Err(SysError::Busy {
                    instance: instance.into(),
                    path: path.display().to_string(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Test hook for crash safety: when `NETPATH_CRASH_AT` names this point, the process aborts on
/// the spot (no destructors, no rollback: what `kill -9` there would leave). Reconcile must
/// then converge store and kernel on the next run.
pub fn crash_point(name: &str) {
    if std::env::var("NETPATH_CRASH_AT").as_deref() == Ok(name) {
        eprintln!("netpath: NETPATH_CRASH_AT={name}: aborting here");
        std::process::abort();
    }
}
