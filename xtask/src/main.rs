//! `cargo xtask`: the one entry point that sets up a fresh machine, builds netpath, runs its
//! tests and shows the demo. `cargo xtask run` and `cargo xtask test` are all a new machine
//! needs; every other step (packages, bpf-linker, toolchain link, bpffs) happens on the way.
mod build;
mod cmd;
mod netns;
mod run;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Prefix of every line the xtask prints itself, so its lines stand out from cargo's.
pub const TAG: &str = "netpath-xtask";

/// Exit code of commands that exist in the CLI but whose work is tracked in another issue.
const NOT_IMPLEMENTED: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Set up, build, test and demo netpath")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and running netpath needs (Debian packages, bpf-linker, the
    /// `debian` rustup toolchain link, bpffs). Idempotent; the other commands run it first.
    Setup,
    /// Set up, then build the `netpath` binary.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run every test of the workspace (nextest when installed).
    Test {
        /// Run the tests in a VM booted with this kernel version (not implemented yet).
        #[arg(long, value_name = "VERSION")]
        kernel: Option<String>,
        /// Run the tests on every kernel of the matrix (not implemented yet).
        #[arg(long, value_name = "all", value_parser = ["all"])]
        kernels: Option<String>,
        /// Passed on to `cargo nextest run` (or `cargo test`), e.g. a test name filter.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Set up, build, then run `netpath ARGS`; without ARGS, show the end-to-end demo.
    Run {
        /// Arguments for `netpath`; leave out for the demo.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmarks (not implemented yet).
    Bench,
}

/// Where the workspace is and which cargo to call back.
pub struct Workspace {
    /// Directory holding the workspace `Cargo.toml`.
    pub root: PathBuf,
    /// The cargo that runs this xtask (`$CARGO`), so nested builds use the same toolchain.
    pub cargo: PathBuf,
}

impl Workspace {
    fn locate() -> anyhow::Result<Self> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .context("the xtask crate has no parent directory; is it still inside the workspace?")?
            .to_path_buf();
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("cargo"));
        Ok(Self { root, cargo })
    }

    /// A `cargo` command that runs in the workspace root.
    pub fn cargo(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.cargo);
        cmd.current_dir(&self.root);
        cmd
    }

    /// The target directory cargo builds into (honours `CARGO_TARGET_DIR` and cargo config).
    pub fn target_dir(&self) -> anyhow::Result<PathBuf> {
        let mut cmd = self.cargo();
        cmd.args(["metadata", "--format-version", "1", "--no-deps"]);
        let out = cmd::run_captured(&mut cmd)?;
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("`cargo metadata` printed something that is not JSON")?;
        let dir = meta["target_directory"]
            .as_str()
            .context("`cargo metadata` printed no target_directory")?;
        Ok(PathBuf::from(dir))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{TAG}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let ws = Workspace::locate()?;
    match cli.command {
        Command::Setup => {
            setup::setup(&ws)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { release } => {
            setup::setup(&ws)?;
            let bin = build::build(&ws, release)?;
            println!("{TAG}: built {}", bin.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            kernel,
            kernels,
            extra,
        } => {
            if kernel.is_some() || kernels.is_some() {
                eprintln!("{TAG}: not implemented yet: kernel matrix is tracked in its own issue");
                return Ok(ExitCode::from(NOT_IMPLEMENTED));
            }
            require_root("cargo xtask test")?;
            setup::setup(&ws)?;
            test::test(&ws, &extra)
        }
        Command::Run { args } => {
            setup::setup(&ws)?;
            let bin = build::build(&ws, false)?;
            if args.is_empty() {
                require_root("the demo")?;
                run::demo(&bin)
            } else {
                run::exec_netpath(&bin, &args)
            }
        }
        Command::Bench => {
            eprintln!("{TAG}: not implemented yet: tracked in its own issue");
            Ok(ExitCode::from(NOT_IMPLEMENTED))
        }
    }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Refuses to go on without root, saying why root is needed.
pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root: it creates network namespaces and loads eBPF programs. Run it as root \
             (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask …`)"
        );
    }
    Ok(())
}
