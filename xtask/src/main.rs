//! `cargo xtask`: the one entry point that sets up a fresh machine, builds netpath, runs its
//! tests and shows the demo. `cargo xtask run` and `cargo xtask test` are all a new machine
//! needs; every other step (packages, bpf-linker, toolchain link, bpffs) happens on the way.
//! `cargo xtask bench` measures netpath; it is never part of `cargo xtask test`.
mod bench;
mod build;
mod cmd;
mod netns;
mod run;
mod setup;
mod test;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Prefix of every line the xtask prints itself, so its lines stand out from cargo's.
pub const TAG: &str = "netpath-xtask";

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
        /// Run the test groups in a VM booted with this kernel version (5.10, 6.1, 6.12, 7.2).
        #[arg(long, value_name = "VERSION")]
        kernel: Option<String>,
        /// Run the test groups on every kernel of the matrix, one VM after the other.
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
    /// Benchmark netpath: the published-port scale benchmark, then the side-by-side comparison
    /// with the Linux paths it replaces (issues 5 and 6).
    ///
    /// Scale part. Sets up, builds netpath in release, then, in namespaces it creates and removes on every
    /// exit path (npbench-host running instance `bench`, npbench-lan as a LAN client on
    /// 10.78.0.0/24, one endpoint `web` with an accept-and-close server on port 80), measures,
    /// each repeated (median, min, max):
    /// the wall time of one `netpath publish -f` with N mappings (host ports 20000.. -> web:80)
    /// and of one `unpublish -f`; `netpath publish` one mapping at a time, the first K and the
    /// last K of N (K = 200, quick 50), extrapolated to N; new TCP connections per second from
    /// the LAN client to the first and to the N-th mapping (server on CPU 0, client on CPU 1);
    /// the peak RSS of the `publish -f` process, and that no netpath process stays running.
    /// Then, in namespaces npipt-*: the same N as iptables DNAT rules laid out like Docker 28
    /// (one `iptables` command at a time, K first and K last, extrapolated; and one
    /// `iptables-restore --noflush`) with connections/s to its first and last mapping; and
    /// 500 published UDP ports, netpath (processes, RSS, BPF map memlock) against one socat
    /// per port (processes, summed VmRSS and Pss).
    /// Writes target/bench/scale.md and scale.json (scale-quick.* for --quick), prints the table
    /// and one verdict per target. About 2 minutes after the build; --quick well under one.
    ///
    /// Comparison part. Installs iptables, nftables and socat if missing, then builds five
    /// labs side by side, each in namespaces of its own (npcmp-<path>-host, npcmp-<path>-lan
    /// as the LAN client in 10.201.N.0/24, containers npcmp-<path>-ctr1/-ctr2 on
    /// 172.17.0.0/16), and measures them interleaved (per round, per metric, every path once,
    /// the order rotated each round), then removes them: netpath
    /// (instance `cmp`), plain routing with no NAT (the lower bound), iptables DNAT laid out
    /// like Docker 28 (br_netfilter on where the kernel has it), the same in native nftables,
    /// and a userspace proxy per port (socat). Each repeated (median, min, max), servers on
    /// CPU 0, clients on CPU 1: TCP stream (iperf3), TCP request/response rate and p50/p99
    /// (sockperf), new TCP connections/s, UDP 64-byte packets/s received; container to
    /// container request/response, netpath vs a plain bridge; both request/response tests
    /// again with the client on CPU 0 (a diagnostic without a target); then netpath's
    /// programs' time per packet. Writes target/bench/compare.md, .json and .svg
    /// (compare-quick.* for --quick); prints the ratios netpath/routed, netpath/iptables,
    /// netpath/nftables and the targets last. About 9 minutes; --quick 4.
    #[command(verbatim_doc_comment)]
    Bench {
        /// Smaller and shorter: N = 2000, 3 repeats, 1 s connect loops, K = 50; the comparison
        /// with 1-2 s runs.
        #[arg(long)]
        quick: bool,
        /// Run only one part: `scale` or `compare` (default: both, scale first).
        #[arg(long, value_name = "PART", value_parser = ["scale", "compare"])]
        only: Option<String>,
        /// N, the number of mappings (default 10000; with --quick 2000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535))]
        scale: Option<u32>,
        /// How many times each measurement is repeated (default 5; with --quick 3).
        #[arg(long, value_name = "R", value_parser = clap::value_parser!(u16).range(1..=50))]
        repeats: Option<u16>,
    },
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
            require_root("cargo xtask test")?;
            if kernel.is_some() || kernels.is_some() {
                return test::on_kernels(&ws, kernel.as_deref(), kernels.is_some(), &extra);
            }
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
        Command::Bench {
            quick,
            only,
            scale,
            repeats,
        } => {
            require_root("cargo xtask bench")?;
            setup::setup(&ws)?;
            let only = match only.as_deref() {
                Some("scale") => Some(bench::Part::Scale),
                Some("compare") => Some(bench::Part::Compare),
                _ => None,
            };
            // Both parts need them: the scale part runs iptables and socat too.
            setup::bench_setup()?;
            bench::bench(
                &ws,
                bench::Options {
                    quick,
                    scale,
                    repeats: repeats.map(usize::from),
                    only,
                },
            )
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
