//! Owns the kernels of the matrix: which Debian package each one comes from, and a cache of
//! each one ready to boot under `~/.cache/netpath/kernels/<release>/` (outside the checkout, so a
//! fresh clone reuses it): `vmlinuz`, `config`, and `lib/modules/<release>` pruned and indexed by
//! `depmod`, plus `netpath-kernel.txt`, written last, naming the package and its version.
//!
//! Packages are fetched with a scratch apt configuration per suite (under
//! `~/.cache/netpath/apt/<suite>/`) pointing at the mirror this machine's own apt sources use;
//! the machine's apt sources and state are never changed. A run whose kernel is cached asks
//! no mirror anything; `NETPATH_KERNEL_REFRESH=1` looks for a newer package of the same series.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::{TAG, cmd};

/// One kernel series of the matrix and where Debian ships it.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// What the user types after `--kernel`: major.minor.
    pub series: &'static str,
    /// Archive path on the mirror (`debian` or `debian-security`).
    archive: &'static str,
    /// The suite whose newest `linux-image-<series>…-amd64` package is taken.
    suite: &'static str,
}

/// The matrix: the Debian kernels netpath is tested on (see shared notes "kernel-matrix").
/// 7.2 comes from sid and will leave it when sid moves on; then this table needs the next one.
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        series: "5.10",
        archive: "debian-security",
        suite: "bullseye-security",
    },
    KernelSpec {
        series: "6.1",
        archive: "debian-security",
        suite: "bookworm-security",
    },
    KernelSpec {
        series: "6.12",
        archive: "debian-security",
        suite: "bookworm-security",
    },
    KernelSpec {
        series: "7.2",
        archive: "debian",
        suite: "sid",
    },
];

/// The matrix entry for `series` ("6.1"), or an error listing the ones there are.
pub fn spec(series: &str) -> anyhow::Result<KernelSpec> {
    KERNELS
        .iter()
        .copied()
        .find(|k| k.series == series)
        .with_context(|| {
            format!(
                "kernel {series:?} is not in the matrix; choose one of {} (or --kernels all)",
                KERNELS
                    .iter()
                    .map(|k| k.series)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Directories under which these directories live: `~/.cache/netpath` (or
/// `$XDG_CACHE_HOME/netpath`; `NETPATH_CACHE_DIR` overrides).
pub fn cache_root() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NETPATH_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("netpath"));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty()).context(
        "neither HOME nor NETPATH_CACHE_DIR is set: set one to say where kernels are cached",
    )?;
    Ok(PathBuf::from(home).join(".cache/netpath"))
}

/// Name of the file written last into a kernel's cache directory: its presence means complete.
const STAMP: &str = "netpath-kernel.txt";

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub series: &'static str,
    /// `uname -r` of the kernel, e.g. `6.12.117+deb12-amd64`.
    pub release: String,
    /// The package it came from and its version, e.g. `linux-image-6.1.0-56-amd64 6.1.192-2`.
    pub package: String,
    /// `~/.cache/netpath/kernels/<release>`: holds `vmlinuz` and `lib/modules/<release>`.
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    pub fn modules(&self) -> PathBuf {
        self.dir.join("lib/modules").join(&self.release)
    }
}

/// The cached kernel of `spec`'s series, downloading and preparing it when none is cached
/// (or, with `NETPATH_KERNEL_REFRESH=1`, when the suite has a newer package).
pub fn ensure(spec: &KernelSpec) -> anyhow::Result<Kernel> {
    let root = cache_root()?;
    let kernels = root.join("kernels");
    let refresh = std::env::var("NETPATH_KERNEL_REFRESH").is_ok_and(|v| v == "1");
    if !refresh && let Some(k) = cached(&kernels, spec.series)? {
        println!(
            "{TAG}: [{}] kernel {} from cache ({}, {})",
            spec.series,
            k.release,
            k.package,
            k.dir.display()
        );
        return Ok(k);
    }
    let apt = ScratchApt::new(&root, spec)?;
    let (image, version) = apt.newest_image(spec)?;
    let release = release_of(&image, spec)?;
    let dir = kernels.join(&release);
    let package = format!("{image} {version}");
    if let Some(k) = read_stamp(&dir, spec.series)?
        && k.package == package
    {
        println!(
            "{TAG}: [{}] kernel {release} from cache ({package}, newest in {})",
            spec.series, spec.suite
        );
        return Ok(k);
    }
    prepare(&apt, spec, &image, &version, &release, &dir)?;
    read_stamp(&dir, spec.series)?
        .with_context(|| format!("{} was prepared but has no {STAMP}", dir.display()))
}

/// The newest complete cached kernel of `series`, by modification time of its stamp.
fn cached(kernels: &Path, series: &'static str) -> anyhow::Result<Option<Kernel>> {
    let Ok(entries) = fs::read_dir(kernels) else {
        return Ok(None);
    };
    let mut best: Option<(std::time::SystemTime, Kernel)> = None;
    for entry in entries {
        let entry = entry.with_context(|| format!("could not list {}", kernels.display()))?;
        let Some(k) = read_stamp(&entry.path(), series)? else {
            continue;
        };
        let when = fs::metadata(entry.path().join(STAMP))
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _)| when > *t) {
            best = Some((when, k));
        }
    }
    Ok(best.map(|(_, k)| k))
}

/// The kernel described by `dir/netpath-kernel.txt` if it is complete and of `series`.
fn read_stamp(dir: &Path, series: &'static str) -> anyhow::Result<Option<Kernel>> {
    let path = dir.join(STAMP);
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(None);
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
    };
    let (Some(s), Some(release), Some(package)) =
        (field("series:"), field("release:"), field("package:"))
    else {
        bail!(
            "{} is damaged (no series/release/package line): remove {} and run again",
            path.display(),
            dir.display()
        );
    };
    if s != series {
        return Ok(None);
    }
    let k = Kernel {
        series,
        release,
        package,
        dir: dir.to_path_buf(),
    };
    if !k.vmlinuz().is_file() || !k.modules().join("modules.dep").is_file() {
        bail!(
            "the cached kernel in {} is incomplete (vmlinuz or modules.dep missing): remove that directory and run again",
            dir.display()
        );
    }
    Ok(Some(k))
}

/// `linux-image-6.12.117+deb12-amd64` → `6.12.117+deb12-amd64` (its `uname -r`).
fn release_of(image: &str, spec: &KernelSpec) -> anyhow::Result<String> {
    image
        .strip_prefix("linux-image-")
        .filter(|r| is_release_of(r, spec.series))
        .map(str::to_string)
        .with_context(|| {
            format!(
                "package {image} does not look like a {} kernel image",
                spec.series
            )
        })
}

/// Whether `release` is a full release string of `series` (`6.1.0-56-amd64` for 6.1, not
/// `6.12.117+deb12-amd64`, not the meta package's `6.1-amd64`, not a debug or cloud flavour).
fn is_release_of(release: &str, series: &str) -> bool {
    let Some(rest) = release
        .strip_prefix(series)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_digit())
        && release.ends_with("-amd64")
        && !release.ends_with("-cloud-amd64")
        && !release.ends_with("-rt-amd64")
}

/// An apt configuration of its own for one suite: lists and downloads under the cache, the
/// mirror of this machine's sources, the keys of debian-archive-keyring.
struct ScratchApt {
    dir: PathBuf,
    options: Vec<String>,
}

/// Keys of every Debian suite, bullseye to sid (debian-archive-keyring).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl ScratchApt {
    /// Writes the sources.list and runs `apt-get update` for `spec`'s suite.
    fn new(root: &Path, spec: &KernelSpec) -> anyhow::Result<Self> {
        let dir = root.join("apt").join(spec.suite);
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("could not create {}", dir.join(sub).display()))?;
        }
        let mirror = mirror()?;
        let sources = dir.join("sources.list");
        let line = format!(
            "deb [signed-by={KEYRING}] {mirror}/{} {} main\n",
            spec.archive, spec.suite
        );
        fs::write(&sources, &line)
            .with_context(|| format!("could not write {}", sources.display()))?;
        let options = [
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "APT::Architectures::=amd64".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        let apt = Self { dir, options };
        println!(
            "{TAG}: [{}] apt-get update of {} {} (scratch apt config in {}; the machine's sources are untouched)…",
            spec.series,
            spec.archive,
            spec.suite,
            apt.dir.display()
        );
        let mut update = apt.command("apt-get", &["update"]);
        cmd::run_captured(&mut update).with_context(|| {
            format!(
                "could not read the package lists of {} from {mirror}; is the mirror reachable?",
                spec.suite
            )
        })?;
        Ok(apt)
    }

    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.args(&self.options).args(args);
        c
    }

    /// The newest `linux-image-<series>.…-amd64` of the suite and its version.
    fn newest_image(&self, spec: &KernelSpec) -> anyhow::Result<(String, String)> {
        let prefix = format!("linux-image-{}.", spec.series);
        let out = cmd::run_captured(&mut self.command("apt-cache", &["pkgnames", &prefix]))?;
        let mut best: Option<(String, String)> = None;
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(release) = name.strip_prefix("linux-image-") else {
                continue;
            };
            if !is_release_of(release, spec.series) {
                continue;
            }
            let Some(version) = self.version_of(name)? else {
                continue;
            };
            let newer = match &best {
                None => true,
                Some((_, v)) => cmd::succeeds(&mut cmd::command(
                    "dpkg",
                    &["--compare-versions", &version, "gt", v],
                )),
            };
            if newer {
                best = Some((name.to_string(), version));
            }
        }
        best.with_context(|| {
            format!(
                "{} has no linux-image-{}.*-amd64 package any more; update KERNELS in xtask/src/vm/kernel.rs \
                 (or keep using a cached one: run without NETPATH_KERNEL_REFRESH)",
                spec.suite, spec.series
            )
        })
    }

    /// The version of `package` in the suite (None for a name without a version there).
    fn version_of(&self, package: &str) -> anyhow::Result<Option<String>> {
        let fields = self.show(package)?;
        Ok(field(&fields, "Version"))
    }

    /// `apt-cache show --no-all-versions PACKAGE` (the candidate's fields).
    fn show(&self, package: &str) -> anyhow::Result<String> {
        let out = cmd::run_captured(
            &mut self.command("apt-cache", &["show", "--no-all-versions", package]),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The .debs holding `image`'s files: the image itself, plus the `linux-binary-*` and
    /// `linux-modules-*` packages it depends on where Debian splits them (7.2 on): there the
    /// image package is an empty stub.
    fn packages_of(&self, image: &str, release: &str) -> anyhow::Result<Vec<String>> {
        let fields = self.show(image)?;
        let depends = field(&fields, "Depends").unwrap_or_default();
        let mut packages = vec![image.to_string()];
        for dep in depends.split(',') {
            let name = dep.split_whitespace().next().unwrap_or("");
            let split = ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|p| name.strip_prefix(p) == Some(release));
            if split {
                packages.push(name.to_string());
            }
        }
        Ok(packages)
    }

    /// Downloads `packages` into `dir` and returns the paths of the .debs.
    fn download(&self, packages: &[String], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut dl = self.command("apt-get", &["download"]);
        dl.args(packages).current_dir(dir);
        cmd::run_captured(&mut dl).context("could not download the kernel packages")?;
        let mut debs = Vec::new();
        for entry in
            fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?
        {
            let path = entry
                .with_context(|| format!("could not list {}", dir.display()))?
                .path();
            if path.extension().is_some_and(|e| e == "deb") {
                debs.push(path);
            }
        }
        if debs.len() != packages.len() {
            bail!(
                "apt-get download of {} left {} .deb files in {}",
                packages.join(" "),
                debs.len(),
                dir.display()
            );
        }
        Ok(debs)
    }
}

/// The value of `name:` in apt-cache's RFC 822-style output.
fn field(text: &str, name: &str) -> Option<String> {
    let key = format!("{name}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&key).map(|v| v.trim().to_string()))
}

/// `http://host` of the Debian mirror this machine's apt uses (from
/// /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list), so the kernels come from the
/// same place as every other package.
fn mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| fs::read_to_string(p).ok()));
    }
    texts.extend(fs::read_to_string("/etc/apt/sources.list").ok());
    texts.iter().find_map(|t| mirror_in(t)).context(
        "found no Debian mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list \
             (looked for a URI ending in /debian)",
    )
}

/// The scheme and host of the first `…/debian` URI in a deb822 `.sources` or one-line
/// sources.list text.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .find_map(|word| {
            let uri = word.trim_end_matches('/');
            let (scheme, rest) = uri.split_once("://")?;
            let base = rest.strip_suffix("/debian")?;
            matches!(scheme, "http" | "https").then(|| format!("{scheme}://{base}"))
        })
}

/// Downloads, extracts, prunes and indexes the kernel into `dir`, then writes the stamp.
fn prepare(
    apt: &ScratchApt,
    spec: &KernelSpec,
    image: &str,
    version: &str,
    release: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    let work = dir.with_file_name(format!(".work-{release}"));
    let _ = fs::remove_dir_all(&work);
    let _ = fs::remove_dir_all(dir);
    let debs_dir = work.join("debs");
    let tree = work.join("tree");
    for d in [&debs_dir, &tree] {
        fs::create_dir_all(d).with_context(|| format!("could not create {}", d.display()))?;
    }
    let packages = apt.packages_of(image, release)?;
    println!(
        "{TAG}: [{}] downloading {} ({version}) from {}…",
        spec.series,
        packages.join(" "),
        spec.suite
    );
    let started = std::time::Instant::now();
    let debs = apt.download(&packages, &debs_dir)?;
    let size: u64 = debs
        .iter()
        .filter_map(|d| fs::metadata(d).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{TAG}: [{}] downloaded {:.1} MB in {:.1} s; extracting, pruning modules, depmod…",
        spec.series,
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    for deb in &debs {
        let mut x = std::process::Command::new("dpkg-deb");
        x.arg("-x").arg(deb).arg(&tree);
        cmd::run_captured(&mut x)?;
    }
    // 5.10–6.12 ship /boot/vmlinuz-R and /lib/modules/R; 7.2 keeps everything, vmlinuz and
    // config included, under /usr/lib/modules/R.
    let modules = [
        tree.join("lib/modules").join(release),
        tree.join("usr/lib/modules").join(release),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .with_context(|| format!("{} holds no lib/modules/{release}", packages.join(" ")))?;
    fs::create_dir_all(dir.join("lib/modules"))
        .with_context(|| format!("could not create {}", dir.display()))?;
    for (name, boot) in [("vmlinuz", true), ("config", false)] {
        let from = [
            tree.join("boot").join(format!("{name}-{release}")),
            modules.join(name),
        ]
        .into_iter()
        .find(|p| p.is_file());
        match from {
            Some(from) => {
                fs::copy(&from, dir.join(name)).with_context(|| {
                    format!("could not copy {} into {}", from.display(), dir.display())
                })?;
            }
            None if boot => bail!("{} holds no vmlinuz for {release}", packages.join(" ")),
            None => {}
        }
    }
    for f in ["vmlinuz", "config", "System.map"] {
        let _ = fs::remove_file(modules.join(f));
    }
    let target = dir.join("lib/modules").join(release);
    fs::rename(&modules, &target).with_context(|| {
        format!(
            "could not move {} to {}",
            modules.display(),
            target.display()
        )
    })?;
    prune(&target);
    let mut depmod = std::process::Command::new("depmod");
    depmod.arg("-b").arg(dir).arg(release);
    cmd::run_captured(&mut depmod).context("depmod could not index the kernel's modules")?;
    let stamp = format!(
        "series: {}\nrelease: {release}\npackage: {image} {version}\nsuite: {}\n",
        spec.series, spec.suite
    );
    fs::write(dir.join(STAMP), stamp)
        .with_context(|| format!("could not write {}", dir.join(STAMP).display()))?;
    let _ = fs::remove_dir_all(&work);
    println!(
        "{TAG}: [{}] kernel {release} cached in {} ({:.0} s)",
        spec.series,
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Module directories no test VM loads from (about half of each tree): sound, graphics,
/// media, storage and NIC drivers. Networking (veth, bridge, netfilter, sch_ingress …), 9p and
/// virtio stay.
const PRUNED: &[&str] = &[
    "kernel/sound",
    "kernel/drivers/gpu",
    "kernel/drivers/media",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/scsi",
    "kernel/drivers/usb",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
];

fn prune(modules: &Path) {
    for dir in PRUNED {
        let _ = fs::remove_dir_all(modules.join(dir));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names_of_a_series_only() {
        assert!(is_release_of("6.1.0-56-amd64", "6.1"));
        assert!(!is_release_of("6.12.117+deb12-amd64", "6.1"));
        assert!(is_release_of("6.12.117+deb12-amd64", "6.12"));
        assert!(!is_release_of("6.1-amd64", "6.1"));
        assert!(!is_release_of("6.1.0-56-amd64-unsigned", "6.1"));
        assert!(!is_release_of("6.1.0-56-cloud-amd64", "6.1"));
        assert!(!is_release_of("6.1.0-56-rt-amd64", "6.1"));
        assert!(is_release_of("5.10.0-46-amd64", "5.10"));
        assert!(is_release_of("7.2.13+deb14-amd64", "7.2"));
    }

    #[test]
    fn mirror_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/2025\n\
                      URIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        assert_eq!(mirror_in(deb822).as_deref(), Some("http://deb.debian.org"));
        let line = "deb https://mirror.example/debian/ bookworm main\n";
        assert_eq!(mirror_in(line).as_deref(), Some("https://mirror.example"));
        assert_eq!(
            mirror_in("deb http://x/debian-security bookworm-security main"),
            None
        );
    }

    #[test]
    fn every_matrix_kernel_is_found_by_its_series() {
        for k in KERNELS {
            assert_eq!(spec(k.series).unwrap().series, k.series);
        }
        let err = spec("4.19").unwrap_err().to_string();
        assert!(err.contains("5.10, 6.1, 6.12, 7.2"), "{err}");
    }
}
