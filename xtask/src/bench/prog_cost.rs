//! Owns the benchmark's measurement of netpath's own programs: the kernel's BPF run-time
//! statistics (`BPF_ENABLE_STATS`, on only while the returned descriptor is open, so nothing
//! stays switched on if the benchmark dies) around one extra run, read from the programs'
//! pins with `bpftool prog show --json`. It says how much of a round trip is netpath's
//! programs, i.e. how much a faster datapath could still win. It runs after the measured
//! rounds, never during them: the statistics add two clock reads to every program run.
use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// `bpf(2)` command and statistics type (uapi/linux/bpf.h), Linux >= 5.8.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// One program's runs and time during the measured run.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

/// The kernel's run-time statistics, collected while this descriptor is open.
struct RunTimeStats(#[allow(dead_code)] OwnedFd);

impl RunTimeStats {
    fn enable() -> anyhow::Result<Self> {
        // union bpf_attr for BPF_ENABLE_STATS is `struct { __u32 type; }`; the kernel wants
        // the rest of what it reads zeroed, so pass a zeroed 8-byte attribute.
        let mut attr = [0u32; 2];
        attr[0] = BPF_STATS_RUN_TIME;
        // SAFETY: `attr` is valid for the size passed; the call only reads it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!(
                "BPF_ENABLE_STATS failed ({}; Linux >= 5.8 has it)",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the kernel just returned this descriptor to us alone.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// Runs `during` with run-time statistics on and returns, for each program pinned as
/// `<pins>/prog_<name>`, how often it ran meanwhile and its mean time per run.
pub fn measure(
    pins: &Path,
    programs: &[&str],
    during: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<ProgramCost>> {
    let snapshot = || {
        programs
            .iter()
            .map(|name| counters(pins, name))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let stats = RunTimeStats::enable()?;
    let before = snapshot()?;
    during()?;
    let after = snapshot()?;
    drop(stats);
    Ok(programs
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(name, (b, a))| {
            let runs = a.0.saturating_sub(b.0);
            let ns = a.1.saturating_sub(b.1);
            ProgramCost {
                name: (*name).to_string(),
                runs,
                ns_per_run: if runs == 0 {
                    0.0
                } else {
                    ns as f64 / runs as f64
                },
            }
        })
        .collect())
}

/// (run count, total run time in ns) of the program pinned as `<pins>/prog_<name>`.
fn counters(pins: &Path, name: &str) -> anyhow::Result<(u64, u64)> {
    let pin = pins.join(format!("prog_{name}"));
    let pin_arg = pin.display().to_string();
    let out = cmd::run_captured(&mut cmd::command(
        "bpftool",
        &["prog", "show", "pinned", &pin_arg, "--json"],
    ))?;
    parse_counters(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("bpftool's view of {}", pin.display()))
}

/// Reads `run_cnt` and `run_time_ns` from `bpftool prog show --json`; bpftool leaves both out
/// while a program has never run with statistics on.
fn parse_counters(json: &str) -> anyhow::Result<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    if v.get("id").is_none() {
        bail!("no program in {json:?}");
    }
    let field = |key: &str| v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok((field("run_cnt"), field("run_time_ns")))
}

/// One line for the report: each program's time per run and its run count.
pub fn describe(costs: &[ProgramCost]) -> String {
    costs
        .iter()
        .map(|c| {
            format!(
                "{} {:.0} ns per run ({} runs)",
                c.name, c.ns_per_run, c.runs
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// All the programs' time in a run, in nanoseconds.
pub fn total_ns(costs: &[ProgramCost]) -> f64 {
    costs.iter().map(|c| c.runs as f64 * c.ns_per_run).sum()
}

/// The programs' time per request/response transaction of a run in which every packet ran one
/// of them: two packets (the request, the reply) per transaction. `None` if nothing ran.
pub fn per_transaction_ns(costs: &[ProgramCost]) -> Option<f64> {
    let runs: u64 = costs.iter().map(|c| c.runs).sum();
    (runs >= 2).then(|| total_ns(costs) / (runs as f64 / 2.0))
}

/// The programs' time per connection, in nanoseconds, of a connect loop that made
/// `connections`. `None` if it made none.
pub fn per_connection_ns(costs: &[ProgramCost], connections: u64) -> Option<f64> {
    (connections > 0).then(|| total_ns(costs) / connections as f64)
}

/// [`per_connection_ns`] for the report, with the program runs per connection.
pub fn per_connection(costs: &[ProgramCost], connections: u64) -> String {
    let Some(ns) = per_connection_ns(costs, connections) else {
        return "no connection was made".into();
    };
    let runs: u64 = costs.iter().map(|c| c.runs).sum();
    format!(
        "{:.2} µs of programs per connection ({:.1} runs each, {connections} connections)",
        ns / 1000.0,
        runs as f64 / connections as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_sums_every_program() {
        let costs = [
            ProgramCost {
                name: "np_uplink".into(),
                runs: 300,
                ns_per_run: 1000.0,
            },
            ProgramCost {
                name: "np_from_ep".into(),
                runs: 100,
                ns_per_run: 500.0,
            },
        ];
        assert_eq!(
            per_connection(&costs, 100),
            "3.50 µs of programs per connection (4.0 runs each, 100 connections)"
        );
        assert_eq!(per_connection(&costs, 0), "no connection was made");
    }

    #[test]
    fn per_transaction_counts_two_packets_each() {
        let costs = [
            ProgramCost {
                name: "np_uplink".into(),
                runs: 1000,
                ns_per_run: 300.0,
            },
            ProgramCost {
                name: "np_from_ep".into(),
                runs: 1000,
                ns_per_run: 500.0,
            },
        ];
        // 1,000 transactions, each one run of both programs.
        assert_eq!(per_transaction_ns(&costs), Some(800.0));
        assert_eq!(per_transaction_ns(&[]), None);
    }

    #[test]
    fn counters_come_from_bpftool_json() {
        let shown =
            r#"{"id":42,"type":"sched_cls","name":"np_uplink","run_time_ns":7690,"run_cnt":10}"#;
        assert_eq!(parse_counters(shown).expect("parsed"), (10, 7690));
        // Never run with statistics on: bpftool prints neither field.
        assert_eq!(
            parse_counters(r#"{"id":42,"name":"np_uplink"}"#).expect("parsed"),
            (0, 0)
        );
        assert!(parse_counters(r#"{"error":"bad pin"}"#).is_err());
        assert!(parse_counters("Error: bad").is_err());
    }

    #[test]
    fn description_names_each_program() {
        let costs = [
            ProgramCost {
                name: "np_uplink".into(),
                runs: 155_053,
                ns_per_run: 769.4,
            },
            ProgramCost {
                name: "np_from_ep".into(),
                runs: 155_050,
                ns_per_run: 1099.0,
            },
        ];
        assert_eq!(
            describe(&costs),
            "np_uplink 769 ns per run (155053 runs), np_from_ep 1099 ns per run (155050 runs)"
        );
    }
}
