//! Owns the few BPF syscalls netpath makes itself, where aya has no public call: opening and
//! pinning objects by path, and map entries as plain bytes (aya's typed maps check the value
//! size against a Rust type, which an older map layout no longer has; see `migrate`). Public
//! for the tests, which make maps of an older layout.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_MAP_GET_NEXT_KEY: i64 = 4;
const BPF_OBJ_PIN: i64 = 6;
const BPF_OBJ_GET: i64 = 7;

/// `union bpf_attr` for BPF_OBJ_PIN and BPF_OBJ_GET.
#[repr(C)]
struct PathAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

/// `union bpf_attr` for BPF_MAP_CREATE (the fields before the name; the rest zero).
#[repr(C)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn bpf<T>(cmd: i64, attr: &T) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialised attribute struct of `cmd`'s kind, and every
    // pointer in it outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Opens the object (map, program or link) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = path_cstring(path)?;
    let attr = PathAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object `fd` at `path` (in bpffs).
pub fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = path_cstring(path)?;
    let attr = PathAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &attr).map(|_| ())
}

fn elem(fd: &OwnedFd, key: Option<&[u8]>, value: *const u8, flags: u64) -> ElemAttr {
    ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| k.as_ptr() as u64),
        value_or_next_key: value as u64,
        flags,
    }
}

/// The key after `prev` (the first key with `None`) into `next`; ENOENT after the last.
pub fn next_key(fd: &OwnedFd, prev: Option<&[u8]>, next: &mut [u8]) -> io::Result<()> {
    bpf(BPF_MAP_GET_NEXT_KEY, &elem(fd, prev, next.as_mut_ptr(), 0)).map(|_| ())
}

/// The value of `key` into `value` (which must hold the map's value size).
pub fn lookup(fd: &OwnedFd, key: &[u8], value: &mut [u8]) -> io::Result<()> {
    bpf(
        BPF_MAP_LOOKUP_ELEM,
        &elem(fd, Some(key), value.as_mut_ptr(), 0),
    )
    .map(|_| ())
}

/// Writes `key` -> `value` (exactly the map's value size); `flags` as BPF_MAP_UPDATE_ELEM
/// takes them (0 any, 1 only a new key).
pub fn update(fd: &OwnedFd, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    bpf(
        BPF_MAP_UPDATE_ELEM,
        &elem(fd, Some(key), value.as_ptr(), flags),
    )
    .map(|_| ())
}

/// Makes a map without BTF (the tests' stand-in for an older netpath's map).
pub fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> io::Result<OwnedFd> {
    let attr = CreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    let fd = bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
