//! Owns the eBPF side as user space sees it: loading the embedded object once per instance,
//! pinning its maps, programs and links under the instance's bpffs directory, adopting what is
//! pinned on every later run, and attaching programs to interfaces.
//!
//! Pins are what keep traffic flowing while no netpath process runs: maps (conntrack, NAT,
//! endpoints) and programs live in bpffs, tcx links are pinned, and netlink (clsact) filters
//! stay on their interface until removed. A new run compares the object's hash with the one
//! recorded at load time: equal means adopt; different means upgrade (load the new programs
//! against the same pinned maps, then swap each attachment to them).
//!
//! bpffs holds only BPF objects, so what netpath records about them (the loaded version, the
//! attach mode, which interfaces have netlink filters) lives in a plain directory beside it,
//! under the instance's run dir.
//!
//! The cgroup `sock_addr` programs (host sockets to published ports) are attached to the
//! cgroup v2 root as bpf_links (always multi-attach), one link per program pinned as
//! `links/<program>@cgroup`; an upgrade moves those links too. They act only in the namespace
//! whose cookie is in `NP_CONFIG` (see [`netns_cookie`]).
pub mod maps;
pub mod migrate;
pub mod syscall;
pub mod testrun;

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType,
        cgroup_sock_addr::CgroupSockAddrAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use netpath_common::{AddrKey, global, map_name, program_name};
use thiserror::Error;

use crate::{EBPF_OBJECT, sys};

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(
        "this netpath binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error(
        "this kernel is Linux {have}; netpath needs Linux >= {need} for {feature}. Upgrade the kernel"
    )]
    KernelTooOld {
        have: String,
        need: &'static str,
        feature: &'static str,
    },
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(
        "Linux {kernel} refused program {name}: {source}. netpath's programs are verified on \
         Linux 5.10, 6.1, 6.12 and 7.2 (`cargo xtask test --kernels all`); on another kernel, \
         report this message with the verifier's output"
    )]
    Refused {
        name: &'static str,
        kernel: String,
        source: aya::programs::ProgramError,
    },
    #[error("the kernel rejected program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach {program} to {interface}: {detail}")]
    Attach {
        program: &'static str,
        interface: String,
        detail: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("pinned map {0}: {1}")]
    Map(String, aya::maps::MapError),
    #[error("pinned object {path} is not usable ({detail}); run `netpath purge` to start over")]
    BadPin { path: PathBuf, detail: String },
}

pub type Result<T> = std::result::Result<T, DatapathError>;

/// How TC programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx bpf_links (Linux >= 6.6): pinned, atomically replaceable.
    Tcx,
    /// netlink `clsact` filters (older kernels): they stay on the interface without a process.
    Netlink,
}

impl AttachMode {
    /// tcx where the kernel has it; `NETPATH_ATTACH=netlink|tcx` overrides (tests use it to
    /// exercise the netlink path on new kernels).
    pub fn detect() -> Self {
        match std::env::var("NETPATH_ATTACH").as_deref() {
            Ok("netlink") => return Self::Netlink,
            Ok("tcx") => return Self::Tcx,
            _ => {}
        }
        if sys::kernel_version() >= (6, 6) {
            Self::Tcx
        } else {
            Self::Netlink
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink clsact",
        }
    }
}

/// The first kernel with `bpf_ktime_get_coarse_ns` (see `global::COARSE_CLOCK`).
const COARSE_CLOCK_KERNEL: (u32, u32) = (5, 11);

/// The oldest kernel netpath's programs verify and run on, and why: checked before loading so
/// the user reads the feature and the version instead of a verifier log.
const MIN_KERNEL: (u32, u32) = (5, 10);

fn require_kernel_features() -> Result<()> {
    let have = sys::kernel_version();
    if have < MIN_KERNEL {
        return Err(DatapathError::KernelTooOld {
            have: format!("{}.{}", have.0, have.1),
            need: "5.10",
            feature: "bpf_redirect_peer and bpf_redirect_neigh (TC programs that deliver straight into a namespace)",
        });
    }
    Ok(())
}

/// The attach mode chosen when the instance's datapath was first loaded: every later run keeps
/// using it, so attachments of one instance never mix modes.
fn pinned_mode(meta_dir: &Path) -> Option<AttachMode> {
    match fs::read_to_string(meta_dir.join("mode")).ok()?.trim() {
        "tcx" => Some(AttachMode::Tcx),
        "netlink clsact" => Some(AttachMode::Netlink),
        _ => None,
    }
}

/// Fixed netlink filter priority for netpath's programs, so they can be found and replaced.
const NETLINK_PRIORITY: u16 = 0x4e50; // "NP"

/// An instance's loaded datapath.
pub struct Datapath {
    pin_dir: PathBuf,
    meta_dir: PathBuf,
    mode: AttachMode,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DatapathError {
    let path = path.to_path_buf();
    move |source| DatapathError::Io { what, path, source }
}

/// Hash of the embedded object: identifies the program version that is pinned.
pub fn object_version() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in EBPF_OBJECT {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Datapath {
    /// Loads the datapath of the instance whose bpffs directory is `pin_dir`, or adopts it if
    /// the same version is already pinned there.
    /// `meta_dir` is a plain directory for netpath's own records about the pins.
    pub fn open(pin_dir: &Path, meta_dir: &Path) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        require_kernel_features()?;
        fs::create_dir_all(pin_dir.join("links")).map_err(io_err("create", pin_dir))?;
        fs::create_dir_all(meta_dir.join("netlink")).map_err(io_err("create", meta_dir))?;
        let mode_file = meta_dir.join("mode");
        let mode = match pinned_mode(meta_dir) {
            Some(m) => m,
            None => {
                let m = AttachMode::detect();
                fs::write(&mode_file, m.as_str()).map_err(io_err("write", &mode_file))?;
                m
            }
        };
        let dp = Self {
            pin_dir: pin_dir.to_path_buf(),
            meta_dir: meta_dir.to_path_buf(),
            mode,
        };
        let version_file = meta_dir.join("version");
        let pinned = fs::read_to_string(&version_file).unwrap_or_default();
        // The cgroup programs are optional (see `load_and_pin`); the TC ones are the datapath.
        let all_programs_pinned = program_name::TC.iter().all(|p| dp.program_pin(p).exists());
        if pinned.trim() == object_version() && all_programs_pinned {
            return Ok(dp);
        }
        // Maps an older netpath pinned in a smaller layout are carried over (see `migrate`).
        let declared = migrate::declared_layouts(EBPF_OBJECT)?;
        let migration = migrate::Migration::prepare(pin_dir, &declared)?;
        dp.load_and_pin()?;
        migration.copy()?;
        if !pinned.is_empty() {
            dp.swap_attachments_to_new_programs()?;
        }
        let carried = migration.map_names();
        migration.finish()?;
        if !carried.is_empty() {
            eprintln!(
                "netpath: carried maps {} over to this version's layout",
                carried.join(", ")
            );
        }
        fs::write(&version_file, object_version()).map_err(io_err("write", &version_file))?;
        Ok(dp)
    }

    /// Only reads what is pinned, loading nothing (for `stats`/`status`); None if nothing is.
    pub fn adopt_existing(pin_dir: &Path, meta_dir: &Path) -> Option<Self> {
        let mode = pinned_mode(meta_dir)?;
        let loaded = meta_dir.join("version").exists() && pin_dir.exists();
        loaded.then(|| Self {
            pin_dir: pin_dir.to_path_buf(),
            meta_dir: meta_dir.to_path_buf(),
            mode,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn pinned_version(&self) -> Option<String> {
        fs::read_to_string(self.meta_dir.join("version"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.pin_dir.join(name)
    }

    fn program_pin(&self, name: &str) -> PathBuf {
        self.pin_dir.join(format!("prog_{name}"))
    }

    /// bpffs refuses names with a dot, hence `@`: `links/<program>@<interface>`.
    fn link_pin(&self, interface: &str, program: &str) -> PathBuf {
        self.pin_dir
            .join("links")
            .join(format!("{program}@{interface}"))
    }

    fn load_and_pin(&self) -> Result<()> {
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = map_name::ALL
            .iter()
            .map(|m| (*m, self.map_pin(m)))
            .collect();
        for (name, path) in &paths {
            // Reuses the pinned map if there is one (so conntrack survives reloads), else
            // creates and pins it.
            loader.map_pin_path(name, path.as_path());
        }
        let coarse_clock = u8::from(sys::kernel_version() >= COARSE_CLOCK_KERNEL);
        loader.override_global(global::COARSE_CLOCK, &coarse_clock, true);
        let mut ebpf: Ebpf = loader.load(EBPF_OBJECT)?;
        let missing = |name: &str| DatapathError::BadPin {
            path: self.program_pin(name),
            detail: format!("program {name} missing from the object"),
        };
        for name in program_name::TC {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(name))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load().map_err(|source| DatapathError::Refused {
                name,
                kernel: sys::kernel_release(),
                source,
            })?;
            self.pin_program(name, |path| prog.pin(path))?;
        }
        for name in program_name::CGROUP {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| missing(name))?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            // Host-local access to published ports is the only thing these serve: a kernel
            // that refuses them (older than the helpers they use) keeps the rest working.
            if let Err(e) = prog.load() {
                eprintln!(
                    "netpath: warning: the kernel refused {name} ({}); host processes cannot reach published ports",
                    error_chain(&e)
                );
                let _ = fs::remove_file(self.program_pin(name));
                continue;
            }
            self.pin_program(name, |path| prog.pin(path))?;
        }
        Ok(())
    }

    /// Pins a loaded program at `prog_<name>`: first under a temporary name, then rename(2)
    /// replaces the old pin atomically; the old program stays alive as long as links use it.
    fn pin_program(
        &self,
        name: &str,
        pin: impl FnOnce(&Path) -> std::result::Result<(), aya::pin::PinError>,
    ) -> Result<()> {
        let path = self.program_pin(name);
        let tmp = path.with_file_name(format!("prog_{name}@new"));
        let _ = fs::remove_file(&tmp);
        pin(&tmp).map_err(|e| DatapathError::BadPin {
            path: tmp.clone(),
            detail: error_chain(&e),
        })?;
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))
    }

    /// An fd of the pinned program `name`, whatever its type.
    fn program_fd(&self, name: &'static str) -> Result<std::os::fd::OwnedFd> {
        let path = self.program_pin(name);
        syscall::obj_get(&path).map_err(|e| DatapathError::BadPin {
            path,
            detail: e.to_string(),
        })
    }

    fn program(&self, name: &'static str) -> Result<SchedClassifier> {
        SchedClassifier::from_pin(self.program_pin(name))
            .map_err(|source| DatapathError::Program { name, source })
    }

    /// After an upgrade: points every pinned tcx link at the new program (atomic
    /// BPF_LINK_UPDATE) and re-attaches netlink filters.
    fn swap_attachments_to_new_programs(&self) -> Result<()> {
        for (interface, program) in self.pinned_links()? {
            let Some(name) = program_name::ALL.iter().copied().find(|p| *p == program) else {
                continue;
            };
            if program_name::CGROUP.contains(&name) && !self.program_pin(name).exists() {
                // The new object's program did not load here: drop the old attachment.
                let _ = fs::remove_file(self.link_pin(&interface, name));
                continue;
            }
            // tcx and cgroup links alike.
            let prog = self.program_fd(name)?;
            let link_path = self.link_pin(&interface, name);
            let link = syscall::obj_get(&link_path).map_err(|e| DatapathError::BadPin {
                path: link_path.clone(),
                detail: e.to_string(),
            })?;
            // struct { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd; }
            let attr: [u32; 4] = [
                link.as_raw_fd() as u32,
                prog.as_fd().as_raw_fd() as u32,
                0,
                0,
            ];
            // SAFETY: BPF_LINK_UPDATE (29) with a correctly sized, initialised attr.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    29,
                    attr.as_ptr(),
                    std::mem::size_of_val(&attr),
                )
            };
            if rc != 0 {
                return Err(DatapathError::Attach {
                    program: name,
                    interface,
                    detail: format!("link update: {}", io::Error::last_os_error()),
                });
            }
        }
        if self.mode == AttachMode::Netlink {
            // Netlink filters have no link to update: attaching again with the same priority
            // and handle replaces the filter in place.
            for (interface, program) in self.netlink_attachments()? {
                if let Some(name) = program_name::ALL.iter().copied().find(|p| *p == program) {
                    self.attach_ingress(&interface, name)?;
                }
            }
        }
        Ok(())
    }

    /// (interface, program) of every pinned tcx link.
    fn pinned_links(&self) -> Result<Vec<(String, String)>> {
        let dir = self.pin_dir.join("links");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let file = entry.file_name().to_string_lossy().to_string();
            // `<program>@<interface>`; `<program>@new@<interface>` is a pin being replaced.
            if let Some((prog, iface)) = file.split_once('@')
                && !iface.starts_with("new@")
            {
                out.push((iface.to_string(), prog.to_string()));
            }
        }
        Ok(out)
    }

    /// (interface, program) of netlink attachments, recorded as `netlink/<if>.<prog>` markers
    /// (netlink filters have no bpffs object to pin).
    fn netlink_attachments(&self) -> Result<Vec<(String, String)>> {
        let dir = self.meta_dir.join("netlink");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let entry = entry.map_err(io_err("read", &dir))?;
            let file = entry.file_name().to_string_lossy().to_string();
            if let Some((iface, prog)) = file.split_once('.') {
                out.push((iface.to_string(), prog.to_string()));
            }
        }
        Ok(out)
    }

    fn netlink_marker(&self, interface: &str, program: &str) -> PathBuf {
        self.meta_dir
            .join("netlink")
            .join(format!("{interface}.{program}"))
    }

    /// Attaches `program` to the TC ingress of `interface` (in this namespace). Safe to
    /// repeat: with tcx the new link is attached before the pin of the old one is replaced, so
    /// the interface is never without the program.
    pub fn attach_ingress(&self, interface: &str, program: &'static str) -> Result<()> {
        let attach_err = |detail: String| DatapathError::Attach {
            program,
            interface: interface.to_string(),
            detail,
        };
        let mut prog = self.program(program)?;
        match self.mode {
            AttachMode::Tcx => {
                let pin = self.link_pin(interface, program);
                let id = prog
                    .attach_with_options(
                        interface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(|e| attach_err(error_chain(&e)))?;
                let link: FdLink = prog
                    .take_link(id)
                    .map_err(|e| attach_err(error_chain(&e)))?
                    .try_into()
                    .map_err(|e: aya::programs::links::LinkError| attach_err(e.to_string()))?;
                self.pin_replacing(link, &pin, interface, program)
                    .map_err(|e| attach_err(format!("pin link: {e}")))?;
            }
            AttachMode::Netlink => {
                if let Err(e) = tc::qdisc_add_clsact(interface) {
                    let exists = matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
                    if !exists {
                        return Err(attach_err(format!("add clsact qdisc: {e}")));
                    }
                }
                let options = NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: tc::TcHandle::new(0, 1),
                    ..Default::default()
                };
                // Replace whatever netpath filter is there (same priority and handle).
                let _ = tc::qdisc_detach_program(interface, TcAttachType::Ingress, program);
                let id = prog
                    .attach_with_options(
                        interface,
                        TcAttachType::Ingress,
                        TcAttachOptions::Netlink(options),
                    )
                    .map_err(|e| attach_err(error_chain(&e)))?;
                // Keep the filter after this process exits: take the link and never drop it.
                let link = prog
                    .take_link(id)
                    .map_err(|e| attach_err(error_chain(&e)))?;
                std::mem::forget(link);
                // The marker holds the ifindex, so a filter on a since-deleted device of the
                // same name is not taken for a live one.
                let marker = self.netlink_marker(interface, program);
                let ifindex = ifindex_of(interface).unwrap_or(0);
                fs::write(&marker, ifindex.to_string()).map_err(io_err("write", &marker))?;
            }
        }
        Ok(())
    }

    /// Pins a freshly attached `link` at `pin`, replacing whatever link was pinned there: it is
    /// pinned beside it first and renamed over it, and dropping the old pin's last reference
    /// detaches the old link, so the hook is never without a program.
    fn pin_replacing(
        &self,
        link: FdLink,
        pin: &Path,
        target: &str,
        program: &str,
    ) -> std::result::Result<(), String> {
        let tmp = self.link_pin(target, &format!("{program}@new"));
        let _ = fs::remove_file(&tmp);
        link.pin(&tmp).map_err(|e| error_chain(&e))?;
        fs::rename(&tmp, pin)
            .map_err(|e| format!("rename {} to {}: {e}", tmp.display(), pin.display()))
    }

    /// Detaches `program` from `interface`'s ingress; nothing attached is not an error.
    pub fn detach_ingress(&self, interface: &str, program: &'static str) -> Result<()> {
        let pin = self.link_pin(interface, program);
        if pin.exists() {
            // Removing the last reference to a tcx link detaches it.
            if let Ok(link) = PinnedLink::from_pin(&pin)
                && let Ok(fd_link) = link.unpin()
            {
                drop(fd_link);
            }
            let _ = fs::remove_file(&pin);
        }
        let marker = self.netlink_marker(interface, program);
        if marker.exists() {
            let _ = tc::qdisc_detach_program(interface, TcAttachType::Ingress, program);
            let _ = fs::remove_file(&marker);
        }
        Ok(())
    }

    /// True when `program` is attached to the device `interface` as it is now (`ifindex`): a
    /// pin or marker left from a deleted device of the same name does not count.
    pub fn is_attached(&self, interface: &str, ifindex: u32, program: &str) -> bool {
        let pin = self.link_pin(interface, program);
        if pin.exists() {
            return tcx_link_ifindex(&pin) == Some(ifindex);
        }
        fs::read_to_string(self.netlink_marker(interface, program))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            == Some(ifindex)
    }

    /// Interfaces that have `program` attached, as recorded in the pin directory.
    pub fn attached_interfaces(&self, program: &str) -> Result<Vec<String>> {
        let mut all = self.pinned_links()?;
        all.extend(self.netlink_attachments()?);
        let mut out: Vec<String> = all
            .into_iter()
            .filter(|(_, p)| p == program)
            .map(|(i, _)| i)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Attaches every cgroup program to the cgroup v2 root (`cgroup2_mount`), unless its
    /// pinned link exists already (an upgrade moves existing links to the new programs).
    /// As bpf_links, which the kernel always attaches in multi mode: other instances' programs
    /// and anyone else's stay attached beside them.
    pub fn attach_cgroup_programs(&self) -> Result<()> {
        let root = sys::cgroup2_mount().ok_or_else(|| DatapathError::Attach {
            program: program_name::SOCK_CONNECT4,
            interface: CGROUP_LINK.into(),
            detail: "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)".into(),
        })?;
        for (name, attach_type) in cgroup_programs() {
            let pin = self.link_pin(CGROUP_LINK, name);
            if pin.exists() || !self.program_pin(name).exists() {
                continue;
            }
            let attach_err = |detail: String| DatapathError::Attach {
                program: name,
                interface: format!("cgroup {}", root.display()),
                detail,
            };
            let cgroup = fs::File::open(&root).map_err(io_err("open", &root))?;
            let mut prog = CgroupSockAddr::from_pin(self.program_pin(name), attach_type)
                .map_err(|source| DatapathError::Program { name, source })?;
            // A cgroup bpf_link (what aya makes on Linux >= 5.7) always runs beside the other
            // programs of the cgroup, as with BPF_F_ALLOW_MULTI; BPF_LINK_CREATE refuses any
            // flag for cgroups (EINVAL), so the mode must be `Single` (flags 0) here.
            let id = prog
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| attach_err(error_chain(&e)))?;
            // Linux >= 5.7 makes this a bpf_link, which can be pinned and updated.
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| attach_err(error_chain(&e)))?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| attach_err(e.to_string()))?;
            self.pin_replacing(link, &pin, CGROUP_LINK, name)
                .map_err(|e| attach_err(format!("pin link: {e}")))?;
        }
        Ok(())
    }

    /// Detaches every cgroup program of this instance (removing the pin drops the last
    /// reference to the link). Nothing attached is not an error.
    pub fn detach_all_cgroup(&self) -> Result<()> {
        for name in program_name::CGROUP {
            let pin = self.link_pin(CGROUP_LINK, name);
            if pin.exists() {
                if let Ok(link) = PinnedLink::from_pin(&pin)
                    && let Ok(fd_link) = link.unpin()
                {
                    drop(fd_link);
                }
                let _ = fs::remove_file(&pin);
            }
        }
        Ok(())
    }

    /// Makes `NP_HOST_ADDRS` exactly `addrs` (the served namespace's own IPv4 addresses with
    /// their interface index): the wildcard published ports apply to these.
    pub fn sync_host_addrs(&self, addrs: &[(u32, [u8; 4])]) -> Result<()> {
        let name = map_name::HOST_ADDRS;
        let map_err = |e| DatapathError::Map(name.into(), e);
        let md = MapData::from_pin(self.map_pin(name)).map_err(map_err)?;
        let mut map: BpfHashMap<MapData, AddrKey, u32> =
            BpfHashMap::try_from(aya::maps::Map::HashMap(md)).map_err(map_err)?;
        let wanted: Vec<AddrKey> = addrs.iter().map(|(_, a)| AddrKey::v4(*a)).collect();
        let stale: Vec<AddrKey> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale {
            let _ = map.remove(&k);
        }
        for ((ifindex, _), key) in addrs.iter().zip(&wanted) {
            if map.get(key, 0).ok() != Some(*ifindex) {
                map.insert(key, ifindex, 0).map_err(map_err)?;
            }
        }
        Ok(())
    }

    /// Program ids of the pinned programs, for `status`.
    pub fn program_ids(&self) -> Vec<(&'static str, Option<u32>)> {
        program_name::ALL
            .iter()
            .map(|name| {
                let id = SchedClassifier::from_pin(self.program_pin(name))
                    .ok()
                    .and_then(|p| p.info().ok())
                    .map(|i| i.id());
                (*name, id)
            })
            .collect()
    }
}

/// The "interface" part of a cgroup program's link pin: `links/<program>@cgroup`.
const CGROUP_LINK: &str = "cgroup";

/// The cgroup programs and their attach types.
fn cgroup_programs() -> [(&'static str, CgroupSockAddrAttachType); 4] {
    [
        (
            program_name::SOCK_CONNECT4,
            CgroupSockAddrAttachType::Connect4,
        ),
        (
            program_name::SOCK_SENDMSG4,
            CgroupSockAddrAttachType::UDPSendMsg4,
        ),
        (
            program_name::SOCK_RECVMSG4,
            CgroupSockAddrAttachType::UDPRecvMsg4,
        ),
        (
            program_name::SOCK_GETPEER4,
            CgroupSockAddrAttachType::GetPeerName4,
        ),
    ]
}

/// Cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux >= 5.14), or 0
/// when the kernel cannot tell. The cgroup programs compare it with the cookie of every socket
/// they see; with 0 they do nothing, so host-local access to published ports needs 5.14+.
pub fn netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return 0;
    }
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    // SAFETY: closing the fd opened above.
    unsafe { libc::close(fd) };
    if rc != 0 || len as usize != size_of::<u64>() {
        return 0;
    }
    cookie
}

fn ifindex_of(interface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(interface).ok()?;
    // SAFETY: valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The device a pinned tcx link is attached to (0 once that device is gone), read with
/// BPF_OBJ_GET_INFO_BY_FD: aya exposes no ifindex for links.
fn tcx_link_ifindex(pin: &Path) -> Option<u32> {
    const BPF_LINK_TYPE_TCX: u32 = 11;
    let fd = syscall::obj_get(pin).ok()?;
    // struct bpf_link_info: u32 type, id, prog_id; pad; union at 16 (tcx: u32 ifindex, attach_type).
    let mut info = [0u64; 8];
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD (15) with a buffer of the stated length.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 15, &attr, std::mem::size_of::<Attr>()) };
    let link_type = info[0] as u32;
    (rc == 0 && link_type == BPF_LINK_TYPE_TCX).then_some(info[2] as u32)
}

/// An error and each of its sources, joined with ": " (aya's errors keep the kernel's reason,
/// e.g. the verifier log, in a source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_program_names_the_kernel_and_the_tested_ones() {
        let e = DatapathError::Refused {
            name: "np_from_ep",
            kernel: "5.4.0-200-generic".into(),
            source: aya::programs::ProgramError::NotLoaded,
        };
        let text = e.to_string();
        assert!(
            text.starts_with("Linux 5.4.0-200-generic refused program np_from_ep: "),
            "{text}"
        );
        assert!(
            text.contains("verified on Linux 5.10, 6.1, 6.12 and 7.2"),
            "{text}"
        );
    }

    #[test]
    fn kernel_release_reads_like_uname() {
        let release = sys::kernel_release();
        assert_ne!(
            release, "unknown",
            "/proc/sys/kernel/osrelease is readable here"
        );
        assert_eq!(
            sys::kernel_version().0,
            release.split('.').next().unwrap().parse::<u32>().unwrap()
        );
    }
}
