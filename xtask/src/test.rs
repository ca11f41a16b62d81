//! Owns `cargo xtask test`: builds `netpath`, then runs every test of the workspace's default
//! members with nextest (per-test processes, the e2e group capped and time-limited by
//! `.config/nextest.toml`), or with `cargo test` where nextest is not installed; and
//! `cargo xtask test --kernel V` / `--kernels all`, which run the tests inside VMs booted on
//! other kernels (the kernel matrix, see [`crate::vm`]).
use std::process::ExitCode;

use anyhow::bail;

use crate::{TAG, Workspace, build, cmd, setup, vm};

/// `cargo xtask test --kernel V` (`kernel`) or `--kernels all` (`all`): sets up what the matrix
/// needs, then runs the test groups in a VM per kernel. `extra` are libtest arguments for every
/// test binary in the VMs (e.g. a test name filter).
pub fn on_kernels(
    ws: &Workspace,
    kernel: Option<&str>,
    all: bool,
    extra: &[String],
) -> anyhow::Result<ExitCode> {
    let series: Vec<&str> = match (kernel, all) {
        (Some(_), true) => bail!("give either --kernel VERSION or --kernels all, not both"),
        (Some(k), false) => vec![vm::kernel::spec(k)?.series],
        (None, _) => vm::kernel::KERNELS.iter().map(|k| k.series).collect(),
    };
    setup::setup(ws)?;
    setup::matrix_setup()?;
    vm::run(ws, &series, extra)
}

/// Runs the tests and returns their runner's exit code (non-zero when anything failed).
pub fn test(ws: &Workspace, extra: &[String]) -> anyhow::Result<ExitCode> {
    let bin = build::build(ws, false)?;
    let mut run = ws.cargo();
    if cmd::succeeds(ws.cargo().args(["nextest", "--version"])) {
        run.args(["nextest", "run"]);
    } else {
        println!(
            "{TAG}: cargo-nextest is not installed; running `cargo test` instead \
             (no per-test time limit: install cargo-nextest for that)"
        );
        run.arg("test");
    }
    run.args(extra).env("NETPATH_BIN", &bin);
    println!(
        "{TAG}: NETPATH_BIN={} {}",
        bin.display(),
        cmd::display_as(&run, "cargo")
    );
    let status = run
        .status()
        .map_err(|e| anyhow::anyhow!("could not start `{}`: {e}", cmd::display(&run)))?;
    if status.success() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{TAG}: tests failed ({}); the failures are listed above",
        cmd::describe(status)
    );
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .filter(|&c| c != 0)
            .unwrap_or(1),
    ))
}
