//! Builds the eBPF object (crate `netpath-ebpf`) for bpfel-unknown-none and leaves it at
//! `$OUT_DIR/netpath`, where `datapath::object` embeds it.
//!
//! The eBPF build needs `-Z build-std=core` and so the std sources of Debian's `rustc-web`
//! (rustup's stable has no `rust-src` here); `cargo xtask` installs it and links it as the rustup
//! toolchain `debian`. `AYA_BUILD_SKIP=1` skips the eBPF build and embeds an empty object (for
//! quick unit tests of the control plane; loading then fails with a clear error).
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if matches!(env::var("AYA_BUILD_SKIP").as_deref(), Ok("1") | Ok("true")) {
        fs::write(out_dir.join("netpath"), b"")?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "netpath-ebpf")
        .ok_or_else(|| anyhow!("netpath-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .context("netpath-ebpf manifest has no parent")?;
    // The shared types change the object too.
    let common = root_dir.join("../netpath-common/src");
    println!("cargo:rerun-if-changed={common}");
    aya_build::build_ebpf(
        [Package {
            name: "netpath-ebpf",
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom("debian"),
    )
}
