//! Owns carrying an instance's pinned maps over to a newer layout, so that upgrading netpath
//! keeps the flows (and every other entry) the running datapath holds.
//!
//! A map's layout is what the kernel fixed when the map was made: type, key size, value size.
//! netpath grows a value only by appending fields whose all-zero value means "not known yet"
//! (e.g. a flow's cached route), so an entry of the older layout, zero-extended, is a valid
//! entry of the newer one. When a pinned map's values are shorter than this netpath's object
//! declares (same type and key size), the upgrade
//! 1. moves the old pin aside (`NAME@old`) before loading, so the loader makes the map anew in
//!    the new layout and pins it under the usual name;
//! 2. copies every entry over, zero-extended, before the new programs are attached;
//! 3. once every attachment runs the new programs, copies again the entries the old programs
//!    created meanwhile (without overwriting newer ones), then removes the old pin.
//!
//! Any other difference (a different type or key size, a shrunk value, a changed per-CPU
//! value) cannot be carried over: the command stops before changing anything and says so.
//! If loading fails after step 1, the old pins are put back. A `NAME@old` left by an
//! interrupted upgrade is picked up again by the next one.
use std::{
    fs, io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use netpath_common::map_name;

use super::{DatapathError, Result, error_chain, syscall};

/// `enum bpf_map_type` values of the maps netpath can carry over (per-CPU maps are not:
/// their values are copied per CPU, and netpath's never grow).
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// A map's shape as the kernel reports it (or as the object declares it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values",
            self.map_type, self.key_size, self.value_size
        )
    }
}

/// What to do with one pinned map whose layout is `found` when this netpath declares
/// `expected`.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// Values grow; entries are copied, zero-extended.
    Grow,
    Refuse,
}

/// Decides how a pinned map of layout `found` is carried over to `expected`.
pub fn plan(found: Layout, expected: Layout) -> Plan {
    if found == expected {
        return Plan::Keep;
    }
    let copyable = matches!(
        found.map_type,
        BPF_MAP_TYPE_HASH | BPF_MAP_TYPE_LRU_HASH | BPF_MAP_TYPE_ARRAY
    );
    if copyable
        && found.map_type == expected.map_type
        && found.key_size == expected.key_size
        && found.value_size < expected.value_size
    {
        Plan::Grow
    } else {
        Plan::Refuse
    }
}

/// The layout of every map `object` (an eBPF ELF) declares, by name.
pub fn declared_layouts(object: &[u8]) -> Result<Vec<(String, Layout)>> {
    let obj = aya_obj::Object::parse(object).map_err(|e| DatapathError::BadPin {
        path: PathBuf::from("(embedded eBPF object)"),
        detail: format!("cannot read its map definitions: {}", error_chain(&e)),
    })?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, m)| {
            let layout = Layout {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
            };
            (name.clone(), layout)
        })
        .collect())
}

/// The layout of the map pinned at `path`.
pub fn pinned_layout(path: &Path) -> Result<Layout> {
    let info = MapInfo::from_pin(path).map_err(|e| DatapathError::BadPin {
        path: path.to_path_buf(),
        detail: error_chain(&e),
    })?;
    let map_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
    Ok(Layout {
        map_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
    })
}

fn aside(pin: &Path) -> PathBuf {
    let name = pin.file_name().unwrap_or_default().to_string_lossy();
    pin.with_file_name(format!("{name}@old"))
}

/// One map being carried over.
struct Moving {
    name: &'static str,
    pin: PathBuf,
    old_pin: PathBuf,
    /// Value size of the old map (its key size is the new one's).
    old_value_size: u32,
    /// True when this run moved the pin aside (an interrupted upgrade's `@old` is not put
    /// back on failure: the new map at `pin` is already in use).
    moved_by_us: bool,
}

/// The maps of one upgrade being carried over; see the module docs. Dropped before
/// [`Migration::finish`], it puts the old pins back.
pub struct Migration {
    moving: Vec<Moving>,
    done: bool,
}

impl Migration {
    /// Checks every pinned map of `pin_dir` against the layouts the object declares and moves
    /// aside those that grow. Refuses, changing nothing, if any map cannot be carried over.
    pub fn prepare(pin_dir: &Path, declared: &[(String, Layout)]) -> Result<Self> {
        let mut moving = Vec::new();
        for name in map_name::ALL {
            let Some((_, expected)) = declared.iter().find(|(n, _)| n == name) else {
                continue;
            };
            let pin = pin_dir.join(name);
            let old_pin = aside(&pin);
            if old_pin.exists() {
                if pin.exists() {
                    // An interrupted upgrade: finish carrying the old entries over.
                    let old = pinned_layout(&old_pin)?;
                    moving.push(Moving {
                        name,
                        pin,
                        old_pin,
                        old_value_size: old.value_size,
                        moved_by_us: false,
                    });
                    continue;
                }
                // Interrupted before the new map was made: the old one is the map.
                fs::rename(&old_pin, &pin).map_err(|e| io_error("rename", &old_pin, e))?;
            }
            if !pin.exists() {
                continue;
            }
            let found = pinned_layout(&pin)?;
            match plan(found, *expected) {
                Plan::Keep => {}
                Plan::Grow => moving.push(Moving {
                    name,
                    pin,
                    old_pin,
                    old_value_size: found.value_size,
                    moved_by_us: true,
                }),
                Plan::Refuse => {
                    return Err(DatapathError::BadPin {
                        path: pin,
                        detail: format!(
                            "map {name} was made by another netpath version ({found}) and cannot be carried over to this version's layout ({expected}); run the netpath that made it, or remove the instance with `netpath purge` (its flows are lost)"
                        ),
                    });
                }
            }
        }
        let mut migration = Migration {
            moving,
            done: false,
        };
        for m in migration.moving.iter_mut().filter(|m| m.moved_by_us) {
            if let Err(e) = fs::rename(&m.pin, &m.old_pin) {
                m.moved_by_us = false;
                return Err(io_error("rename", &m.pin, e));
            }
        }
        Ok(migration)
    }

    /// Names of the maps being carried over.
    pub fn map_names(&self) -> Vec<&'static str> {
        self.moving.iter().map(|m| m.name).collect()
    }

    /// Copies every entry of the old maps into the new ones (made and pinned by the loader),
    /// replacing what is there. Run before the new programs are attached.
    pub fn copy(&self) -> Result<()> {
        for m in &self.moving {
            self.copy_one(m, UpdateFlags::Any)?;
        }
        Ok(())
    }

    /// Copies the entries the old programs created since [`Migration::copy`] (never
    /// overwriting an entry the new programs already keep), then removes the old pins. Run
    /// once every attachment runs the new programs: from then on the new maps are the
    /// instance's whatever happens, so a failed copy here is only a warning (flows that began
    /// during the upgrade may have to reconnect).
    pub fn finish(mut self) -> Result<()> {
        self.done = true;
        for m in &self.moving {
            if let Err(e) = self.copy_one(m, UpdateFlags::NoExist) {
                eprintln!(
                    "netpath: warning: {}; flows that began during the upgrade may have to reconnect",
                    error_chain(&e)
                );
            }
            fs::remove_file(&m.old_pin).map_err(|e| io_error("remove", &m.old_pin, e))?;
        }
        Ok(())
    }

    fn copy_one(&self, m: &Moving, flags: UpdateFlags) -> Result<()> {
        let fail = |what: &str, e: io::Error| DatapathError::BadPin {
            path: m.old_pin.clone(),
            detail: format!("carrying {} over to the new layout: {what}: {e}", m.name),
        };
        let old = syscall::obj_get(&m.old_pin).map_err(|e| fail("open", e))?;
        let new = syscall::obj_get(&m.pin).map_err(|e| fail("open the new map", e))?;
        let new_layout = pinned_layout(&m.pin)?;
        let old_max_entries = MapInfo::from_pin(&m.old_pin)
            .map_err(|e| fail("read its size", io::Error::other(error_chain(&e))))?
            .max_entries();
        let copied = copy_entries(
            &old,
            &new,
            new_layout.key_size,
            old_max_entries,
            m.old_value_size,
            new_layout.value_size,
            flags,
        )
        .map_err(|e| fail("copy", e))?;
        log::info!(
            "carried {copied} entries of {} over to the new layout",
            m.name
        );
        Ok(())
    }
}

impl Drop for Migration {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Loading failed: the old maps go back under their names, as if nothing happened.
        for m in self.moving.iter().filter(|m| m.moved_by_us) {
            let _ = fs::remove_file(&m.pin);
            let _ = fs::rename(&m.old_pin, &m.pin);
        }
    }
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> DatapathError {
    DatapathError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `flags` of BPF_MAP_UPDATE_ELEM.
#[derive(Clone, Copy)]
pub enum UpdateFlags {
    Any = 0,
    NoExist = 1,
}

/// Copies every entry of map `from` (at most `max_entries` of them) into map `to`, each
/// value zero-extended (or cut) from `from_value_size` to `to_value_size` bytes. With
/// [`UpdateFlags::NoExist`], keys `to` already has are left alone. Returns how many entries
/// were written.
///
/// The walk takes each next key from the last one; when programs delete that key meanwhile,
/// the kernel starts again from the first. So the walk is bounded: a map that keeps changing
/// that fast is reported instead of walked forever.
pub fn copy_entries(
    from: &OwnedFd,
    to: &OwnedFd,
    key_size: u32,
    max_entries: u32,
    from_value_size: u32,
    to_value_size: u32,
    flags: UpdateFlags,
) -> io::Result<usize> {
    let mut key = vec![0u8; key_size as usize];
    let mut next = vec![0u8; key_size as usize];
    let mut value = vec![0u8; to_value_size.max(from_value_size) as usize];
    let mut copied = 0;
    let mut first = true;
    let most_steps = 4 * u64::from(max_entries) + 64;
    for _ in 0..most_steps {
        let prev = if first { None } else { Some(key.as_slice()) };
        match syscall::next_key(from, prev, &mut next) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(copied),
            Err(e) => return Err(e),
        }
        first = false;
        key.copy_from_slice(&next);
        value.fill(0);
        match syscall::lookup(from, &key, &mut value) {
            Ok(()) => {}
            // Evicted or deleted between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        match syscall::update(to, &key, &value[..to_value_size as usize], flags as u64) {
            Ok(()) => copied += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "entries kept changing while being copied ({most_steps} steps, {copied} copied)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT_OLD: Layout = Layout {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: 40,
        value_size: 48,
    };

    #[test]
    fn a_grown_value_is_carried_over_and_anything_else_refused() {
        let grown = Layout {
            value_size: 80,
            ..CT_OLD
        };
        assert_eq!(plan(CT_OLD, CT_OLD), Plan::Keep);
        assert_eq!(plan(CT_OLD, grown), Plan::Grow);
        assert_eq!(plan(grown, CT_OLD), Plan::Refuse, "values never shrink");
        let other_key = Layout {
            key_size: 20,
            ..grown
        };
        assert_eq!(plan(CT_OLD, other_key), Plan::Refuse);
        let other_type = Layout {
            map_type: BPF_MAP_TYPE_HASH,
            ..grown
        };
        assert_eq!(plan(CT_OLD, other_type), Plan::Refuse);
        let percpu = Layout {
            map_type: 6, // BPF_MAP_TYPE_PERCPU_ARRAY
            key_size: 4,
            value_size: 8,
        };
        let percpu_grown = Layout {
            value_size: 16,
            ..percpu
        };
        assert_eq!(
            plan(percpu, percpu_grown),
            Plan::Refuse,
            "per-CPU values are not copied"
        );
    }

    #[test]
    fn the_embedded_object_declares_every_pinned_map() {
        let declared = declared_layouts(crate::EBPF_OBJECT).unwrap();
        for name in map_name::ALL {
            assert!(declared.iter().any(|(n, _)| n == name), "{name} missing");
        }
        let ct = declared
            .iter()
            .find(|(n, _)| n == map_name::CONNTRACK)
            .unwrap()
            .1;
        assert_eq!(ct.key_size as usize, size_of::<netpath_common::FlowKey>());
        assert_eq!(
            ct.value_size as usize,
            size_of::<netpath_common::ConntrackEntry>()
        );
    }
}
