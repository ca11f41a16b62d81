//! Owns the kernel-version matrix: `cargo xtask test --kernel V` and `--kernels all` boot
//! Debian's kernels under QEMU and run netpath's tests inside, on the kernel under test.
//!
//! The flow, per run: build `netpath` and the test binaries of `netpath-tests` on this machine
//! (in the workspace's target directory); then for each kernel fetch it once into the cache
//! ([`kernel`]), write a fresh initramfs ([`initramfs`]) and the guest's test script
//! ([`guest`]), boot it ([`qemu`]) and read the results from its console. The guest sees this
//! machine's root read-only, so the binaries run there unchanged. Each VM's console is kept in
//! `target/vm/<series>.log`; the end is a table kernel × test group.
//!
//! Test groups (see [`GROUPS`]), in this order: `load` (every program of the eBPF object loads and verifies,
//! the datapath loads, pins and attaches: `tests/tests/kernel_load.rs`), `programs`
//! (BPF_PROG_TEST_RUN on crafted packets: `programs`, `programs_ports`), `e2e` (namespaces,
//! veths, real traffic, restarts and upgrades: `e2e_bridge`, `e2e_ports`, `e2e_lifecycle`).
//! When `load` fails on a kernel, the other groups are skipped there (each of their tests
//! loads the programs, so they could only fail, slowly). Environment knobs: `NETPATH_VM_GROUPS`
//! (comma-separated group names to run), `NETPATH_VM_TEST_TIMEOUT` (seconds per test binary,
//! default 1200), `NETPATH_KERNEL_REFRESH=1` (look for newer kernel packages),
//! `NETPATH_CACHE_DIR` (instead of `~/.cache/netpath`).
mod guest;
mod initramfs;
pub mod kernel;
mod qemu;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use guest::{GroupRun, Outcome, Report, TestRun};

use crate::{TAG, Workspace, build, cmd};

/// A test group of the matrix: test binaries of `netpath-tests` and the libtest arguments each
/// gets inside the VM.
pub struct Group {
    pub name: &'static str,
    pub what: &'static str,
    pub tests: &'static [(&'static str, &'static [&'static str])],
}

/// The groups, in the order they run in each VM. Under TCG everything runs 10-20 times slower
/// than on this machine; these are chosen so all four kernels fit one CI run.
pub const GROUPS: &[Group] = &[
    Group {
        name: "load",
        what: "every eBPF program loads and verifies; the datapath loads, pins and attaches",
        tests: &[("kernel_load", &["--nocapture"])],
    },
    Group {
        name: "programs",
        what: "BPF_PROG_TEST_RUN of the TC programs on crafted packets",
        tests: &[("programs", &[]), ("programs_ports", &[])],
    },
    Group {
        name: "e2e",
        what: "end to end: namespaces, veths, bridges, published ports, real TCP/UDP/ICMP traffic, restarts",
        tests: &[
            ("e2e_bridge", &[]),
            ("e2e_ports", &[]),
            ("e2e_lifecycle", &[]),
        ],
    },
];

/// Seconds a test binary may take inside the VM before it is killed.
const DEFAULT_TEST_TIMEOUT_S: u64 = 1200;

/// Result of one kernel's VM.
struct KernelResult {
    series: &'static str,
    release: String,
    boot: Option<qemu::Boot>,
    /// Why the kernel could not be booted at all (download, initramfs, QEMU start).
    error: Option<String>,
    log: PathBuf,
}

/// Runs the matrix on `series` (each one of [`kernel::KERNELS`]); `extra` are libtest
/// arguments given to every test binary (e.g. a test name filter). Returns failure when any
/// group failed or any VM did not finish.
pub fn run(ws: &Workspace, series: &[&str], extra: &[String]) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let specs = series
        .iter()
        .map(|s| kernel::spec(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let groups = selected_groups()?;
    let netpath = build::build(ws, false)?;
    let binaries = build_test_binaries(ws)?;
    let group_runs = group_runs(&groups, &binaries, extra)?;
    let timeout_s = env_u64("NETPATH_VM_TEST_TIMEOUT")?.unwrap_or(DEFAULT_TEST_TIMEOUT_S);
    let n_binaries: u64 = group_runs.iter().map(|g| g.tests.len() as u64).sum();
    let limit = Duration::from_secs(timeout_s * n_binaries + 300);
    let out_dir = ws.target_dir()?.join("vm");
    fs::create_dir_all(&out_dir)
        .with_context(|| format!("could not create {}", out_dir.display()))?;
    println!(
        "{TAG}: kernel matrix: {} × groups {} ({} test binaries per kernel, {timeout_s} s limit each); logs in {}",
        specs.iter().map(|s| s.series).collect::<Vec<_>>().join(" "),
        groups.iter().map(|g| g.name).collect::<Vec<_>>().join(" "),
        n_binaries,
        out_dir.display()
    );
    let script_text = guest::script(&netpath, &group_runs, timeout_s);
    // What the guest must see of this checkout: its root and (when outside it) its target dir.
    let target_dir = ws.target_dir()?;
    let mut workspace = vec![ws.root.as_path()];
    if !target_dir.starts_with(&ws.root) {
        workspace.push(&target_dir);
    }
    let mut results = Vec::new();
    for spec in &specs {
        let log = out_dir.join(format!("{}.log", spec.series));
        let mut result = KernelResult {
            series: spec.series,
            release: String::new(),
            boot: None,
            error: None,
            log: log.clone(),
        };
        match run_kernel(spec, &out_dir, &script_text, &workspace, &log, limit) {
            Ok((release, boot)) => {
                result.release = release;
                result.boot = Some(boot);
            }
            Err(e) => {
                eprintln!("{TAG}: [{}] error: {e:#}", spec.series);
                result.error = Some(format!("{e:#}"));
            }
        }
        results.push(result);
    }
    let (table, ok) = table(&results, &groups);
    println!("\n{table}");
    println!(
        "{TAG}: kernel matrix finished in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The closing line a CI log reader takes as the run's count: every test of every group on
    // every kernel, a kernel that did not boot or report counting as one failure. One word
    // before the counts, so the line reads as the plain "N passed, N failed" closing line.
    let (passed, failed) = totals(&results);
    println!("matrix: {passed} passed, {failed} failed");
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{TAG}: kernel matrix FAILED: see the table above and the VM logs in {}",
            out_dir.display()
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Prepares and boots one kernel; returns its release and what the console said.
fn run_kernel(
    spec: &kernel::KernelSpec,
    out_dir: &Path,
    script_text: &str,
    workspace: &[&Path],
    log: &Path,
    limit: Duration,
) -> anyhow::Result<(String, qemu::Boot)> {
    let k = kernel::ensure(spec)?;
    let size = initramfs::build(&k)?;
    let initrd = k.dir.join("initrd.cpio");
    let script = out_dir.join(format!("{}.sh", spec.series));
    fs::write(&script, script_text)
        .with_context(|| format!("could not write {}", script.display()))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("could not make {} executable", script.display()))?;
    println!(
        "{TAG}: [{}] initramfs {} ({:.1} MB); booting {} under QEMU (TCG, 1 vCPU, nice 19); console in {}…",
        spec.series,
        initrd.display(),
        size as f64 / 1e6,
        k.release,
        log.display()
    );
    let boot = qemu::boot(&k, &initrd, &script, workspace, log, limit)?;
    println!(
        "{TAG}: [{}] VM finished after {:.0} s{}",
        spec.series,
        boot.elapsed.as_secs_f64(),
        match boot.report.vm_rc {
            Some(rc) => format!(" (guest status {rc})"),
            None => " WITHOUT the end marker NETPATH-VM-RC (crash, panic or time limit)".into(),
        }
    );
    Ok((k.release, boot))
}

/// Tests passed and failed over the whole matrix, from the groups' counts. A kernel that did
/// not boot, or stopped before reporting a group, adds one failure so the total never reads
/// as clean.
fn totals(results: &[KernelResult]) -> (u64, u64) {
    let (mut passed, mut failed) = (0, 0);
    for r in results {
        match &r.boot {
            Some(b) if !b.report.groups.is_empty() => {
                for (_, o) in &b.report.groups {
                    passed += o.passed;
                    failed += o.failed;
                    // A group that exited non-zero without a failed test crashed or timed out.
                    if o.rc != 0 && o.failed == 0 && !o.skipped {
                        failed += 1;
                    }
                }
                if b.report.vm_rc.is_none() {
                    failed += 1;
                }
            }
            _ => failed += 1,
        }
    }
    (passed, failed)
}

/// `NETPATH_VM_GROUPS` (comma-separated) or every group.
fn selected_groups() -> anyhow::Result<Vec<&'static Group>> {
    let Ok(wanted) = std::env::var("NETPATH_VM_GROUPS") else {
        return Ok(GROUPS.iter().collect());
    };
    wanted
        .split(',')
        .filter(|w| !w.trim().is_empty())
        .map(|w| {
            GROUPS.iter().find(|g| g.name == w.trim()).with_context(|| {
                format!(
                    "NETPATH_VM_GROUPS names {w:?}; the groups are {}",
                    GROUPS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

fn env_u64(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a number of seconds")),
        Err(_) => Ok(None),
    }
}

/// Builds the integration-test binaries of `netpath-tests` (`cargo test --no-run`) and returns
/// test target name → executable.
fn build_test_binaries(ws: &Workspace) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut build = ws.cargo();
    build.args([
        "test",
        "--no-run",
        "-p",
        "netpath-tests",
        "--message-format=json-render-diagnostics",
    ]);
    let shown = cmd::display_as(&build, "cargo");
    println!("{TAG}: {shown}");
    let out = build
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}); its output is above",
            cmd::describe(out.status)
        );
    }
    let mut binaries = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if msg["reason"] == "compiler-artifact"
            && is_test
            && let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            binaries.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(binaries)
}

fn group_runs(
    groups: &[&'static Group],
    binaries: &BTreeMap<String, PathBuf>,
    extra: &[String],
) -> anyhow::Result<Vec<GroupRun>> {
    groups
        .iter()
        .map(|g| {
            let tests = g
                .tests
                .iter()
                .map(|(name, args)| {
                    let path = binaries.get(*name).with_context(|| {
                        format!(
                            "cargo built no test binary `{name}` for group {}; is tests/tests/{name}.rs still there?",
                            g.name
                        )
                    })?;
                    Ok(TestRun {
                        name,
                        path: path.to_string_lossy().into_owned(),
                        args: args
                            .iter()
                            .map(|a| a.to_string())
                            .chain(extra.iter().cloned())
                            .collect(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(GroupRun {
                name: g.name,
                tests,
            })
        })
        .collect()
}

/// One table cell: `ok 12 (34 s)`, `FAIL 10/12 (34 s)` or why there is no result.
fn cell(report: Option<&Report>, group: &str) -> (String, bool) {
    let Some(o) = report.and_then(|r| r.group(group)) else {
        return ("no result".into(), false);
    };
    let Outcome {
        skipped,
        rc,
        passed,
        failed,
        secs,
    } = *o;
    if skipped {
        return ("skipped (load failed)".into(), false);
    }
    if rc == 0 && failed == 0 {
        (format!("ok {passed} ({secs} s)"), true)
    } else {
        (
            format!("FAIL {passed}/{} rc {rc} ({secs} s)", passed + failed),
            false,
        )
    }
}

/// The result table and whether everything passed.
fn table(results: &[KernelResult], groups: &[&Group]) -> (String, bool) {
    let mut header = vec!["kernel".to_string(), "release".into(), "attach mode".into()];
    header.extend(groups.iter().map(|g| g.name.to_string()));
    header.push("VM time".into());
    let mut rows = vec![header];
    let mut all_ok = true;
    let mut notes = String::new();
    for r in results {
        let report = r.boot.as_ref().map(|b| &b.report);
        let mut row = vec![
            r.series.to_string(),
            report
                .and_then(|rep| rep.release.clone())
                .unwrap_or_else(|| r.release.clone()),
            report
                .and_then(|rep| rep.attach_mode.clone())
                .unwrap_or_else(|| "?".into()),
        ];
        for g in groups {
            let (text, ok) = cell(report, g.name);
            all_ok &= ok;
            row.push(text);
        }
        row.push(match &r.boot {
            Some(b) => format!("{} s", b.elapsed.as_secs()),
            None => "-".into(),
        });
        rows.push(row);
        if let Some(e) = &r.error {
            all_ok = false;
            let _ = writeln!(notes, "  {}: not booted: {e}", r.series);
        }
        if let Some(b) = &r.boot {
            let rep = &b.report;
            if rep.vm_rc.is_none() {
                all_ok = false;
                let why = if b.timed_out {
                    "killed at the time limit"
                } else if let Some(p) = &rep.panic {
                    p.as_str()
                } else {
                    "the guest stopped before its end marker"
                };
                let _ = writeln!(notes, "  {}: no NETPATH-VM-RC: {why}", r.series);
            } else if rep.vm_rc != Some(0) {
                all_ok = false;
            }
            if rep.groups.is_empty() {
                let text = fs::read_to_string(&r.log).unwrap_or_default();
                let _ = writeln!(
                    notes,
                    "  {}: no test group finished; end of the console:\n{}",
                    r.series,
                    cmd::tail(&text, 8)
                );
            }
            if !rep.failed_tests.is_empty() {
                let _ = writeln!(
                    notes,
                    "  {}: failed: {}",
                    r.series,
                    rep.failed_tests.join(", ")
                );
            }
            for (group, test, o) in &rep.tests {
                if o.rc != 0 && o.failed == 0 && !o.skipped {
                    let _ = writeln!(
                        notes,
                        "  {}: {group}/{test} exited with {} without a failed test (crash or time limit)",
                        r.series, o.rc
                    );
                }
            }
        }
        let _ = writeln!(notes, "  {}: console log {}", r.series, r.log.display());
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    for g in groups {
        let _ = writeln!(out, "  group {}: {}", g.name, g.what);
    }
    out.push_str(&notes);
    (out.trim_end().to_string(), all_ok)
}
