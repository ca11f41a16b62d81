//! Owns the machine set-up every other command relies on: Debian packages, bpf-linker built
//! against LLVM 22, Debian's rustc linked as the rustup toolchain `debian`, bpffs mounted,
//! RLIMIT_MEMLOCK raised. Idempotent: it checks each piece and says which one it installs.
//! The steps are the toolchain recipe verified on Debian 12 with kernel 6.18.
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{TAG, Workspace, cmd};

/// Debian packages the build, the tests and the demo use.
///
/// `rustc-web`/`cargo-web`/`rust-web-src`: Debian's rustc 1.96 (LLVM 22) and std sources, which
/// build the eBPF object with `-Z build-std=core`; `llvm-22-dev`/`libpolly-22-dev`: what
/// bpf-linker links against, `libllvm22` what it loads at run time; the rest are the tools the
/// tests, the demo and a person debugging call.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libllvm22",
    "bpftool",
    "iproute2",
    "kmod",
    "iperf3",
    "sockperf",
    "tcpdump",
    "iputils-ping",
    "procps",
    "util-linux",
];

/// bpf-linker release to install; 0.13 is the newest, and the first with an `llvm-22` feature.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_SERIES: &str = "bpf-linker 0.13.";
/// Where Debian's LLVM 22 lives: without LLVM_PREFIX bpf-linker's build takes the
/// `llvm-config` in PATH, which is Debian's default LLVM 14.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Installed here (not ~/.cargo/bin) so it is in PATH with and without rustup's proxies.
const INSTALL_ROOT: &str = "/usr/local";

/// Name of the rustup toolchain that netpath/build.rs builds the eBPF object with.
const DEBIAN_TOOLCHAIN: &str = "debian";
const BPFFS: &str = "/sys/fs/bpf";

/// Checks every piece and installs or fixes what is missing, printing one line per piece it
/// acts on and one summary line at the end.
pub fn setup(ws: &Workspace) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "cargo xtask setup needs root: it installs Debian packages, bpf-linker into {INSTALL_ROOT} and \
             mounts bpffs. Run it as root (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask setup`)"
        );
    }
    debian_packages()?;
    bpf_linker(ws)?;
    let toolchain = debian_toolchain()?;
    bpffs()?;
    let memlock = raise_memlock();
    println!(
        "{TAG}: set-up complete: {} Debian packages, {}, {toolchain}, bpffs at {BPFFS}, {memlock}",
        DEBIAN_PACKAGES.len(),
        bpf_linker_version().unwrap_or_else(|| "bpf-linker".into()),
    );
    Ok(())
}

fn is_installed(package: &str) -> bool {
    // `${Status}` is "install ok installed" for an installed package; removed-but-configured
    // ones say "deinstall ok config-files", unknown ones make dpkg-query fail.
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .trim_end()
                    .ends_with(" installed")
        })
}

fn debian_packages() -> anyhow::Result<()> {
    install_missing(DEBIAN_PACKAGES, &[], "the Debian packages netpath needs")
}

/// Debian packages only the benchmark (`cargo xtask bench`: the comparison, and the scale
/// part's iptables and proxy-per-port rows) uses, installed on its first run and never by
/// `cargo xtask test`: `iptables` (Debian's default is its nf_tables
/// backend, what Docker 28 on Debian uses), `nftables` (`nft`), and `socat`, the userspace
/// proxy per port standing in for docker-proxy (which Debian ships only inside `docker.io`,
/// a whole Docker engine). iperf3 and sockperf are in [`DEBIAN_PACKAGES`].
pub const BENCH_PACKAGES: &[&str] = &["iptables", "nftables", "socat"];

/// What the comparison benchmark needs on top of [`setup`]: [`BENCH_PACKAGES`], installed with
/// one line saying so.
pub fn bench_setup() -> anyhow::Result<()> {
    install_missing(
        BENCH_PACKAGES,
        &["--no-install-recommends"],
        "the Debian packages the comparison benchmark needs",
    )
}

/// Installs those of `packages` that are not installed (apt-get update first), printing one
/// line naming them; `apt_args` go to `apt-get install` (e.g. `--no-install-recommends`).
fn install_missing(packages: &[&str], apt_args: &[&str], what: &str) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "{TAG}: installing Debian packages: {} (apt-get update, then apt-get install)…",
        missing.join(" ")
    );
    let mut update = cmd::command("apt-get", &["update"]);
    update.env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run_captured(&mut update).context("could not refresh the Debian package lists")?;
    let mut install = cmd::command(
        "apt-get",
        &["install", "-y", "-o", "DPkg::Lock::Timeout=900"],
    );
    install
        .args(apt_args)
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run_captured(&mut install).with_context(|| format!("could not install {what}"))?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get reported success but these packages are still not installed: {}; \
             try `apt-get install {}` by hand",
            still.join(" "),
            still.join(" ")
        );
    }
    Ok(())
}

/// Debian packages only the kernel matrix (`cargo xtask test --kernel V|--kernels all`) uses,
/// installed on its first use and never by plain `cargo xtask test`.
///
/// `qemu-system-x86`: boots the kernels (TCG); `busybox-static`: the initramfs' only program,
/// and the shell that runs the guest's second stage; `kmod`: `depmod -b` for the extracted
/// module trees, and `modprobe` inside the guest (the kernel calls the host's /sbin/modprobe);
/// `xz-utils`: `.ko.xz` modules are decompressed into the initramfs; `debian-archive-keyring`:
/// the keys of the other suites (bullseye-security, sid) the kernels come from.
pub const MATRIX_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "debian-archive-keyring",
];

/// Directories of the host that the guest mounts over: its root is this machine's root shared
/// read-only, so every mount point must exist here. `/lib/modules` holds the guest kernel's
/// modules (bind-mounted from the kernel cache), `/etc/netns` a tmpfs for the resolv.conf
/// files netpath writes for its namespaces (`ip netns` uses the same directory).
pub const MATRIX_MOUNT_POINTS: &[&str] = &["/lib/modules", "/etc/netns"];

/// What the kernel matrix needs on top of [`setup`]: [`MATRIX_PACKAGES`] (without their
/// recommendations, which would pull in a GUI) and [`MATRIX_MOUNT_POINTS`]. Prints one line
/// per thing it installs or creates.
pub fn matrix_setup() -> anyhow::Result<()> {
    install_missing(
        MATRIX_PACKAGES,
        &["--no-install-recommends"],
        "the Debian packages the kernel matrix needs",
    )?;
    for dir in MATRIX_MOUNT_POINTS {
        if std::path::Path::new(dir).is_dir() {
            continue;
        }
        println!(
            "{TAG}: creating {dir} (empty; the kernel-matrix VMs mount over it in their read-only view of this machine)"
        );
        std::fs::create_dir_all(dir).with_context(|| format!("could not create {dir}"))?;
    }
    println!(
        "{TAG}: kernel-matrix set-up complete: {}; mount points {}",
        MATRIX_PACKAGES.join(" "),
        MATRIX_MOUNT_POINTS.join(" ")
    );
    Ok(())
}

/// `bpf-linker --version` as printed ("bpf-linker 0.13.0"), if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn bpf_linker(ws: &Workspace) -> anyhow::Result<()> {
    let found = bpf_linker_version();
    if found
        .as_deref()
        .is_some_and(|v| v.starts_with(BPF_LINKER_SERIES))
    {
        return Ok(());
    }
    let instead = match &found {
        Some(v) => format!(", replacing {v}"),
        None => String::new(),
    };
    println!("{TAG}: installing bpf-linker {BPF_LINKER_VERSION} (about 1 minute){instead}…");
    let mut install = ws.cargo();
    install
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            "llvm-22",
            "--root",
            INSTALL_ROOT,
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX);
    cmd::run_captured(&mut install).context("could not build bpf-linker")?;
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => Ok(()),
        Some(v) => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION} into {INSTALL_ROOT}/bin, but `bpf-linker` in PATH is {v}: \
             put {INSTALL_ROOT}/bin first in PATH or remove the other one"
        ),
        None => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION} into {INSTALL_ROOT}/bin, but `bpf-linker --version` \
             does not run: add {INSTALL_ROOT}/bin to PATH (and keep libllvm22 installed)"
        ),
    }
}

/// Links Debian's rustc as the rustup toolchain `debian`; returns what the summary says.
fn debian_toolchain() -> anyhow::Result<String> {
    if !cmd::succeeds(&mut cmd::command("rustup", &["--version"])) {
        // aya-build then uses the cargo in PATH; that works when it is Debian's (recipe A).
        println!(
            "{TAG}: rustup is not in PATH: the eBPF object will be built by the cargo in PATH \
             (Debian's, with RUSTC_BOOTSTRAP=1)"
        );
        return Ok("no rustup".into());
    }
    if cmd::succeeds(&mut cmd::command(
        "rustup",
        &["run", DEBIAN_TOOLCHAIN, "rustc", "-V"],
    )) {
        return Ok(format!("rustup toolchain {DEBIAN_TOOLCHAIN}"));
    }
    println!(
        "{TAG}: linking Debian's rustc as rustup toolchain `{DEBIAN_TOOLCHAIN}` (rustup toolchain link {DEBIAN_TOOLCHAIN} /usr)…"
    );
    cmd::run_captured(&mut cmd::command(
        "rustup",
        &["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"],
    ))?;
    cmd::run_captured(&mut cmd::command(
        "rustup",
        &["run", DEBIAN_TOOLCHAIN, "rustc", "-V"],
    ))
    .context("the linked toolchain does not run; is rustc-web installed?")?;
    Ok(format!("rustup toolchain {DEBIAN_TOOLCHAIN}"))
}

/// Whether `mounts` (the text of /proc/self/mounts) has a bpf file system on `dir`.
fn has_bpffs(mounts: &str, dir: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _source = f.next();
        f.next() == Some(dir) && f.next() == Some("bpf")
    })
}

fn bpffs() -> anyhow::Result<()> {
    if has_bpffs(&cmd::read_to_string("/proc/self/mounts")?, BPFFS) {
        return Ok(());
    }
    println!("{TAG}: mounting bpffs at {BPFFS} (mount -t bpf bpf {BPFFS})…");
    cmd::run_captured(&mut cmd::command("mount", &["-t", "bpf", "bpf", BPFFS]))
        .context("netpath pins its maps and programs in bpffs")?;
    Ok(())
}

/// Raises RLIMIT_MEMLOCK to unlimited for this process and so for every command it starts.
/// Kernels since 5.11 charge BPF memory to the cgroup instead, so where raising is not allowed
/// (no CAP_SYS_RESOURCE, as in some containers) the soft limit goes up to the hard one and the
/// summary says so; that is not fatal.
fn raise_memlock() -> String {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct; no memory is handed to the kernel.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return "RLIMIT_MEMLOCK unlimited".into();
    }
    let why = std::io::Error::last_os_error();
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; setrlimit reads it.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) == 0
        }
    };
    let now = if !raised {
        "unchanged".to_string()
    } else if limit.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{} KiB", limit.rlim_cur / 1024)
    };
    format!("RLIMIT_MEMLOCK {now} (unlimited refused: {why}; kernels >= 5.11 do not need it)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpffs_only_on_its_directory() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(has_bpffs(mounts, "/sys/fs/bpf"));
        assert!(!has_bpffs(
            "sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n",
            "/sys/fs/bpf"
        ));
        assert!(!has_bpffs("bpf /mnt/bpf bpf rw 0 0\n", "/sys/fs/bpf"));
    }

    #[test]
    fn unknown_package_is_not_installed() {
        assert!(!is_installed("netpath-no-such-package"));
    }
}
