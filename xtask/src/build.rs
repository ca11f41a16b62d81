//! Owns building the `netpath` binary (which builds and embeds the eBPF object through
//! netpath/build.rs). Only `-p netpath`: `--workspace` would build the eBPF crate for the host.
use std::path::PathBuf;

use anyhow::bail;

use crate::{TAG, Workspace, cmd};

/// Builds `netpath` (debug or release) and returns the absolute path of the binary.
pub fn build(ws: &Workspace, release: bool) -> anyhow::Result<PathBuf> {
    let mut build = ws.cargo();
    build.args(["build", "-p", "netpath"]);
    if release {
        build.arg("--release");
    }
    let shown = cmd::display_as(&build, "cargo");
    println!("{TAG}: {shown}");
    cmd::run_streamed(&mut build, &shown)?;
    let bin = ws
        .target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("netpath");
    if !bin.is_file() {
        bail!(
            "cargo built netpath but {} does not exist; is the binary still named `netpath`?",
            bin.display()
        );
    }
    Ok(bin)
}
