//! Owns network namespaces: creating and removing named ones under `/run/netns` (the iproute2
//! convention, so `ip netns` sees them) and running code inside one.
//!
//! Code runs in another namespace on a fresh thread that enters it with `setns` and ends when the
//! work is done, so no thread ever goes back to a pool in the wrong namespace (a panic included).
use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use thiserror::Error;

const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error(
        "network namespace {0} already exists; remove it with `ip netns del` or pick another name"
    )]
    Exists(PathBuf),
    #[error("network namespace {0} does not exist")]
    Missing(PathBuf),
    #[error("{what} ({path}): {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the worker thread for namespace {0} panicked")]
    Panicked(PathBuf),
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).expect("paths have no NUL")
}

fn check(rc: libc::c_int, what: &'static str, path: &Path) -> Result<(), NetnsError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(NetnsError::Io {
            what,
            path: path.into(),
            source: io::Error::last_os_error(),
        })
    }
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so namespace bind mounts made
/// here propagate to every mount namespace.
fn prepare_netns_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(|source| NetnsError::Io {
        what: "create",
        path: dir.into(),
        source,
    })?;
    let d = cstr(dir);
    // SAFETY: valid C strings; null fstype/data are allowed for MS_SHARED/MS_BIND.
    unsafe {
        if libc::mount(
            std::ptr::null(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        ) == 0
        {
            return Ok(());
        }
        // Not a mount point yet: bind it onto itself, then make it shared.
        check(
            libc::mount(
                d.as_ptr(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ),
            "bind-mount",
            dir,
        )?;
        check(
            libc::mount(
                std::ptr::null(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            ),
            "make shared",
            dir,
        )
    }
}

/// Creates `/run/netns/NAME` holding a new, empty network namespace (loopback down, as
/// `ip netns add` leaves it).
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    prepare_netns_dir()?;
    let path = Path::new(NETNS_DIR).join(name);
    match File::options().write(true).create_new(true).open(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(NetnsError::Exists(path)),
        Err(source) => {
            return Err(NetnsError::Io {
                what: "create",
                path,
                source,
            });
        }
    }
    let target = path.clone();
    let result = std::thread::spawn(move || -> Result<(), NetnsError> {
        // SAFETY: unshare affects only this thread, which ends right after.
        check(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            "unshare",
            &target,
        )?;
        let src = CString::new("/proc/thread-self/ns/net").expect("literal");
        let dst = cstr(&target);
        // SAFETY: valid C strings.
        check(
            unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            },
            "bind-mount namespace",
            &target,
        )
    })
    .join()
    .map_err(|_| NetnsError::Panicked(path.clone()))?;
    if let Err(e) = result {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Unmounts and removes a namespace created by [`create`]. The kernel frees the namespace (and
/// the veth ends in it) once nothing else holds it. Missing is not an error.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    if !path.exists() {
        return Ok(());
    }
    let p = cstr(path);
    // SAFETY: valid C string.
    let rc = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (a stale file left by a crash): just remove it.
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetnsError::Io {
                what: "unmount",
                path: path.into(),
                source: err,
            });
        }
    }
    fs::remove_file(path).map_err(|source| NetnsError::Io {
        what: "remove",
        path: path.into(),
        source,
    })
}

/// True when `path` is a network namespace (a bind mount of an nsfs file).
pub fn exists(path: &Path) -> bool {
    // An nsfs file opens and setns-able; a plain leftover file is not. Checking the filesystem
    // magic is enough: NSFS_MAGIC = 0x6e736673.
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    unsafe { libc::fstatfs(f.as_raw_fd(), &mut st) == 0 && st.f_type as i64 == 0x6e73_6673 }
}

/// Runs `f` on a fresh thread inside the network namespace at `path`, returning its result.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetnsError::Missing(path.into()),
        _ => NetnsError::Io {
            what: "open",
            path: path.into(),
            source,
        },
    })?;
    let p = path.to_path_buf();
    std::thread::spawn(move || -> Result<T, NetnsError> {
        // SAFETY: valid fd; affects only this thread, which ends after `f`.
        check(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            "enter",
            &p,
        )?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(path.into()))?
}
