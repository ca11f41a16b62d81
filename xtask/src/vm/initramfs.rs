//! Owns the guest's initramfs: a static busybox, the 9p and virtio modules the kernel needs to
//! mount this machine's root (decompressed: busybox's insmod cannot read `.ko.xz`), and two
//! scripts. `/init` mounts the host's `/` read-only over 9p, puts tmpfs on `/run` and `/tmp`
//! (bind-mounting back over them the directories named by `np.keep=` that lie there: the
//! kernel cache, the checkout and its target directory, so a checkout in /tmp works), bind-mounts
//! the kernel's module tree (from the cache) on `/lib/modules/<release>`, and
//! switch_roots into the host's root, where `/stage2` (PID 1 there, so the kernel's module
//! autoloading finds the host's `/sbin/modprobe`) mounts what netpath needs writable and runs the
//! command named by `np.cmd=` on the kernel command line, then prints `NETPATH-VM-RC=<status>`
//! and powers off.
//!
//! The archive is written here in the kernel's `newc` cpio format (uncompressed, ~3 MB); it
//! is rebuilt on every run (a fraction of a second), so the scripts never go stale in the cache.
use std::{fs, path::Path};

use anyhow::{Context as _, bail};

use super::kernel::Kernel;
use crate::cmd;

/// The static busybox of busybox-static: the initramfs' only program.
const BUSYBOX: &str = "/bin/busybox";

/// Modules that mount the host's root (their dependencies come from `modprobe --show-depends`;
/// on 6.12 and later virtio_pci is built in).
const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The guest's first stage (busybox sh as PID 1 in the initramfs).
const INIT: &str = r#"#!/bin/busybox sh
# netpath kernel-matrix VM, stage 1: mount this machine's root (9p, read-only) and switch to it.
/bin/busybox mkdir -p /proc /sys /dev /newroot; /bin/busybox --install -s /bin; export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "NETPATH-VM: insmod $m failed"; done
KDIR=$(sed -n 's/.* np.kdir=\([^ ]*\).*/\1/p' /proc/cmdline); KVER=$(uname -r)
# cache=loose: the guest keeps what it read from the host (which does not change while the VM
# runs); without it every exec reads its binary and libraries over 9p again, 3-7 times slower.
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose root /newroot; then
  echo "NETPATH-VM: cannot mount the host root over 9p"; echo "NETPATH-VM-RC=125"; poweroff -f
fi
mount -t proc proc /newroot/proc; mount -t sysfs sys /newroot/sys; mount -t devtmpfs dev /newroot/dev
# What the guest must read from under /tmp or /run (np.keep=, comma-separated) is set aside,
# the empty tmpfs mounted, then bind-mounted back at its own path.
KEEP=$(sed -n 's/.* np.keep=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
n=0; for d in $KEEP; do case $d in /tmp/*|/run/*) n=$((n+1)); mkdir -p /keep/$n; mount --bind /newroot$d /keep/$n;; esac; done
mount -t tmpfs -o mode=755 run /newroot/run; mount -t tmpfs -o mode=1777 tmp /newroot/tmp
n=0; for d in $KEEP; do case $d in /tmp/*|/run/*) n=$((n+1)); mkdir -p /newroot$d; mount --bind /keep/$n /newroot$d; umount /keep/$n;; esac; done
if ! mount -t tmpfs mods /newroot/lib/modules; then
  echo "NETPATH-VM: /lib/modules is missing on the host: run cargo xtask test --kernel again (its set-up creates it)"
  echo "NETPATH-VM-RC=125"; poweroff -f
fi
mkdir /newroot/lib/modules/$KVER
mount --bind /newroot$KDIR/lib/modules/$KVER /newroot/lib/modules/$KVER
cp /stage2 /newroot/run/np-stage2; exec switch_root /newroot /bin/busybox sh /run/np-stage2
"#;

/// The guest's second stage: PID 1 in the host's (read-only) root.
const STAGE2: &str = r#"# netpath kernel-matrix VM, stage 2: PID 1 in the host's root, read-only over 9p.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
mount -t bpf bpf /sys/fs/bpf; mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null; mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# netpath writes its state under /var/lib/netpath-*, and resolv.conf files under /etc/netns/*.
mount -t tmpfs -o mode=755 varlib /var/lib
mount -t tmpfs -o mode=755 etcnetns /etc/netns || echo "NETPATH-VM: /etc/netns is missing on the host: run cargo xtask test --kernel again (its set-up creates it)"
# Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
ulimit -l unlimited; ip link set lo up
CMD=$(sed -n 's/.* np.cmd=\([^ ]*\).*/\1/p' /proc/cmdline)
/bin/sh -c "$CMD" </dev/null; echo "NETPATH-VM-RC=$?"; sync; busybox poweroff -f
"#;

/// Writes `kernel.dir/initrd.cpio` and returns its size in bytes.
pub fn build(kernel: &Kernel) -> anyhow::Result<u64> {
    let busybox = fs::read(BUSYBOX).with_context(|| {
        format!("could not read {BUSYBOX}; install busybox-static (cargo xtask test --kernel does)")
    })?;
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "mods", "proc", "sys", "newroot"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("stage2", 0o755, STAGE2.as_bytes());
    let mut order = String::new();
    for path in root_module_files(kernel)? {
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("odd module path {}", path.display()))?;
        let (name, data) = match base.strip_suffix(".xz") {
            Some(name) => {
                let mut xz = std::process::Command::new("xz");
                xz.arg("-dc").arg(&path);
                (name, cmd::run_captured(&mut xz)?.stdout)
            }
            None => (
                base,
                fs::read(&path).with_context(|| format!("could not read {}", path.display()))?,
            ),
        };
        cpio.file(&format!("mods/{name}"), 0o644, &data);
        order.push_str(name);
        order.push('\n');
    }
    cpio.file("mods/order", 0o644, order.as_bytes());
    let bytes = cpio.finish();
    let out = kernel.dir.join("initrd.cpio");
    fs::write(&out, &bytes).with_context(|| format!("could not write {}", out.display()))?;
    Ok(bytes.len() as u64)
}

/// The module files (in load order, dependencies first) of [`ROOT_MODULES`] for `kernel`, as
/// `modprobe --show-depends` lists them for its module tree; built-in ones are skipped.
fn root_module_files(kernel: &Kernel) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for module in ROOT_MODULES {
        let mut show = std::process::Command::new("modprobe");
        show.arg("-d")
            .arg(&kernel.dir)
            .args(["-S", &kernel.release, "--show-depends", module]);
        let out = cmd::run_captured(&mut show).with_context(|| {
            format!(
                "module {module} not found in {}",
                kernel.modules().display()
            )
        })?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("insmod") {
                continue;
            }
            let Some(path) = words.next().map(std::path::PathBuf::from) else {
                continue;
            };
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }
    if files.is_empty() && !has_builtin_9p(&kernel.modules()) {
        bail!(
            "no 9p modules found for {} in {}",
            kernel.release,
            kernel.modules().display()
        );
    }
    Ok(files)
}

/// Whether 9p is built into the kernel (`modules.builtin` lists it).
fn has_builtin_9p(modules: &Path) -> bool {
    fs::read_to_string(modules.join("modules.builtin"))
        .is_ok_and(|text| text.lines().any(|l| l.ends_with("/9p.ko")))
}

/// A `newc` cpio archive being written (the format the kernel unpacks as initramfs).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 0, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 0, data);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, (major << 8) | minor, &[]);
    }

    /// `rdev` packs major (high) and minor (low byte) as the header wants them split.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170_000 == 0o040_000 { 2 } else { 1 },
            0, // mtime: fixed, so the archive is reproducible
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!x\n");
        c.char_device("dev/console", 5, 1);
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // First header: ino 1, mode 0100755, filesize 4, namesize 5 ("init" + NUL).
        let header = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(&header[6..14], "00000001");
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "00000004");
        assert_eq!(&header[94..102], "00000005");
        // 110-byte header + "init\0" padded to 116, then the data padded to 120.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..120], b"#!x\n");
        let console = std::str::from_utf8(&out[120..230]).unwrap();
        assert_eq!(&console[14..22], "00002180");
        assert_eq!(&console[78..86], "00000005");
        assert_eq!(&console[86..94], "00000001");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn the_scripts_print_the_marker_the_host_reads() {
        assert!(STAGE2.contains("echo \"NETPATH-VM-RC=$?\""));
        assert!(STAGE2.contains("/var/lib") && STAGE2.contains("/etc/netns"));
        assert!(INIT.starts_with("#!/bin/busybox sh\n"));
    }
}
