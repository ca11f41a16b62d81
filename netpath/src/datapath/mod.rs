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
pub mod maps;
pub mod testrun;

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use netpath_common::{map_name, program_name};
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
        let all_programs_pinned = program_name::ALL.iter().all(|p| dp.program_pin(p).exists());
        if pinned.trim() == object_version() && all_programs_pinned {
            return Ok(dp);
        }
        dp.load_and_pin()?;
        if !pinned.is_empty() {
            dp.swap_attachments_to_new_programs()?;
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
        let mut ebpf: Ebpf = loader.load(EBPF_OBJECT)?;
        for name in program_name::ALL {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| DatapathError::BadPin {
                    path: self.program_pin(name),
                    detail: format!("program {name} missing from the object"),
                })?
                .try_into()
                .map_err(|source| DatapathError::Program { name, source })?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
            let pin = self.program_pin(name);
            let tmp = pin.with_file_name(format!("prog_{name}@new"));
            let _ = fs::remove_file(&tmp);
            prog.pin(&tmp).map_err(|e| DatapathError::BadPin {
                path: tmp.clone(),
                detail: error_chain(&e),
            })?;
            // rename(2) replaces the old pin atomically; the old program stays alive as long
            // as links still use it.
            fs::rename(&tmp, &pin).map_err(io_err("rename", &pin))?;
        }
        Ok(())
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
            let prog = self.program(name)?;
            let link_path = self.link_pin(&interface, name);
            let link = bpf_obj_get(&link_path).map_err(|e| DatapathError::BadPin {
                path: link_path.clone(),
                detail: e.to_string(),
            })?;
            // struct { u32 link_fd; u32 new_prog_fd; u32 flags; u32 old_prog_fd; }
            let attr: [u32; 4] = [
                link.as_raw_fd() as u32,
                prog.fd()
                    .map_err(|source| DatapathError::Program { name, source })?
                    .as_fd()
                    .as_raw_fd() as u32,
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
            if let Some((prog, iface)) = file.split_once('@') {
                if !iface.starts_with("new@") {
                    out.push((iface.to_string(), prog.to_string()));
                }
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
                let tmp = self.link_pin(interface, &format!("{program}@new"));
                let _ = fs::remove_file(&tmp);
                link.pin(&tmp)
                    .map_err(|e| attach_err(format!("pin link: {}", error_chain(&e))))?;
                // Replacing the pin drops the last reference to an older link, detaching it.
                fs::rename(&tmp, &pin).map_err(io_err("rename", &pin))?;
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
                let marker = self.netlink_marker(interface, program);
                fs::write(&marker, b"").map_err(io_err("write", &marker))?;
            }
        }
        Ok(())
    }

    /// Detaches `program` from `interface`'s ingress; nothing attached is not an error.
    pub fn detach_ingress(&self, interface: &str, program: &'static str) -> Result<()> {
        let pin = self.link_pin(interface, program);
        if pin.exists() {
            // Removing the last reference to a tcx link detaches it.
            if let Ok(link) = PinnedLink::from_pin(&pin) {
                if let Ok(fd_link) = link.unpin() {
                    drop(fd_link);
                }
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

/// Opens a pinned BPF object (BPF_OBJ_GET); aya has no public fd accessor for links.
fn bpf_obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // struct { u64 pathname; u32 bpf_fd; u32 file_flags; }
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: BPF_OBJ_GET (7) with a valid NUL-terminated path.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, &attr, std::mem::size_of::<Attr>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
