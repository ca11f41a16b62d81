//! Owns what runs inside the VM and what it reports: the shell script the guest's second stage
//! runs (`np.cmd=`), and the parsing of the marker lines it prints on the console.
//!
//! The script runs the prebuilt test binaries of this machine (seen through the read-only 9p
//! root) one at a time, each with `--test-threads=1` under a time limit, with `NETPATH_BIN`
//! set. After each binary it prints
//! `NETPATH-TEST group=G test=T rc=N passed=P failed=F secs=S`, after each group
//! `NETPATH-GROUP G rc=N passed=P failed=F secs=S` (counts from libtest's `test result:` line;
//! a binary that printed none, e.g. one killed by its time limit, has `rc` non-zero), and once
//! `NETPATH-ATTACH mode=…` from `netpath status` after a datapath load in a namespace of its
//! own. The second stage ends with `NETPATH-VM-RC=N`: QEMU exits 0 even when the guest panics,
//! so only that line says the run finished.
use std::{fmt::Write as _, path::Path};

/// One test binary of a group, with the libtest arguments it gets (filters, `--skip`, …).
#[derive(Clone, Debug)]
pub struct TestRun {
    /// The test target's name (`tests/tests/<name>.rs`).
    pub name: &'static str,
    /// Absolute path of the binary on the host (the same path in the guest).
    pub path: String,
    /// libtest arguments after `--test-threads=1`.
    pub args: Vec<String>,
}

/// A named group of test binaries: one row part of the result table.
#[derive(Clone, Debug)]
pub struct GroupRun {
    pub name: &'static str,
    pub tests: Vec<TestRun>,
}

/// The group whose failure skips the others (they all load the programs it checks).
pub const LOAD_GROUP: &str = "load";

/// Single-quotes `word` for sh.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The script the guest runs: the status probe, then every group in order.
/// `per_test_timeout_s` limits each binary (`timeout -k 10`).
pub fn script(netpath_bin: &Path, groups: &[GroupRun], per_test_timeout_s: u64) -> String {
    let mut s = String::new();
    let bin = sh_quote(&netpath_bin.to_string_lossy());
    let _ = write!(
        s,
        r#"#!/bin/sh
# Written by `cargo xtask test --kernel`: runs in the kernel-matrix VM (dash from the host root).
export NETPATH_BIN={bin} RUST_BACKTRACE=1
cd /tmp
echo "NETPATH-KERNEL release=$(uname -r)"

# Which attach mode netpath picks here: load its datapath in a namespace of its own, read
# `netpath status`, and remove everything again.
ip netns add npvmst
nsenter --net=/run/netns/npvmst "$NETPATH_BIN" --instance npvmst network create npvmprobe --subnet 10.254.254.0/24 >/tmp/np-probe.out 2>&1
nsenter --net=/run/netns/npvmst "$NETPATH_BIN" --instance npvmst status >>/tmp/np-probe.out 2>&1
sed 's/^/status| /' /tmp/np-probe.out
mode=$(sed -n 's/^attach mode: *//p' /tmp/np-probe.out | head -n 1)
echo "NETPATH-ATTACH mode=${{mode:-unknown}}"
nsenter --net=/run/netns/npvmst "$NETPATH_BIN" --instance npvmst purge --force >/dev/null 2>&1
ip netns del npvmst

total_rc=0
run_test() {{
  g=$1; n=$2; b=$3; shift 3
  s0=$(date +%s)
  {{ timeout -k 10 {per_test_timeout_s} "$b" --test-threads=1 "$@"; echo $? >/tmp/np-rc; }} 2>&1 | tee /tmp/np-out
  rc=$(cat /tmp/np-rc); s1=$(date +%s)
  set -- $(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' /tmp/np-out | tail -n 1)
  if [ -z "$1" ]; then
    echo "NETPATH-VM: $n printed no libtest summary (rc=$rc; 124 = killed by its {per_test_timeout_s} s limit)"
    [ "$rc" = 0 ] && rc=1
  fi
  p=${{1:-0}}; f=${{2:-0}}
  echo "NETPATH-TEST group=$g test=$n rc=$rc passed=$p failed=$f secs=$((s1 - s0))"
  gp=$((gp + p)); gf=$((gf + f))
  [ "$rc" = 0 ] || grc=$rc
}}
"#
    );
    s.push_str("load_rc=0\n");
    for group in groups {
        let _ = writeln!(s, "\n# group {}", group.name);
        if group.name != LOAD_GROUP {
            // Every test of the other groups loads the programs: with a program the kernel
            // refuses they could only fail, slowly (each load is a full verification).
            let _ = writeln!(
                s,
                "if [ \"$load_rc\" != 0 ]; then echo \"NETPATH-GROUP {} rc=skip passed=0 failed=0 secs=0\"; else",
                group.name
            );
        }
        let _ = writeln!(s, "gp=0; gf=0; grc=0; g0=$(date +%s)");
        for t in &group.tests {
            let args: Vec<String> = t.args.iter().map(|a| sh_quote(a)).collect();
            let _ = writeln!(
                s,
                "run_test {} {} {} {}",
                group.name,
                t.name,
                sh_quote(&t.path),
                args.join(" ")
            );
        }
        let _ = writeln!(
            s,
            "echo \"NETPATH-GROUP {} rc=$grc passed=$gp failed=$gf secs=$(($(date +%s) - g0))\"",
            group.name
        );
        let _ = writeln!(s, "[ \"$grc\" = 0 ] || total_rc=1");
        if group.name == LOAD_GROUP {
            s.push_str("load_rc=$grc\n");
        } else {
            s.push_str("fi\n");
        }
    }
    s.push_str(
        r#"
if [ "$total_rc" != 0 ]; then
  echo "NETPATH-DMESG-BEGIN (last 100 kernel messages, for verifier and feature errors)"
  dmesg | tail -n 100
  echo "NETPATH-DMESG-END"
fi
exit $total_rc
"#,
    );
    s
}

/// One `NETPATH-GROUP` or `NETPATH-TEST` line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The group did not run (`rc=skip`: the load group failed).
    pub skipped: bool,
    pub rc: i64,
    pub passed: u64,
    pub failed: u64,
    pub secs: u64,
}

/// What the console of one VM said.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// `uname -r` in the guest (proves the kernel booted).
    pub release: Option<String>,
    /// `netpath status`'s attach mode.
    pub attach_mode: Option<String>,
    /// Group name → outcome, in the order they finished.
    pub groups: Vec<(String, Outcome)>,
    /// (group, test binary) → outcome.
    pub tests: Vec<(String, String, Outcome)>,
    /// Names of the tests libtest reported as FAILED.
    pub failed_tests: Vec<String>,
    /// The guest's final status, if it got that far.
    pub vm_rc: Option<i64>,
    /// A kernel panic or oops line, if the console shows one.
    pub panic: Option<String>,
}

/// `key=value` fields of a marker line.
fn kv<'a>(words: impl Iterator<Item = &'a str>) -> impl Iterator<Item = (&'a str, &'a str)> {
    words.filter_map(|w| w.split_once('='))
}

fn outcome<'a>(words: impl Iterator<Item = &'a str>) -> Outcome {
    let mut o = Outcome::default();
    for (k, v) in kv(words) {
        match k {
            "rc" if v == "skip" => {
                o.skipped = true;
                o.rc = -1;
            }
            "rc" => o.rc = v.parse().unwrap_or(-1),
            "passed" => o.passed = v.parse().unwrap_or(0),
            "failed" => o.failed = v.parse().unwrap_or(0),
            "secs" => o.secs = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    o
}

impl Report {
    /// Takes in one console line (markers may follow kernel messages on the same line).
    pub fn line(&mut self, line: &str) {
        if let Some(i) = line.find("NETPATH-GROUP ") {
            let mut w = line[i + 14..].split_whitespace();
            if let Some(name) = w.next() {
                self.groups.push((name.to_string(), outcome(w)));
            }
        } else if let Some(i) = line.find("NETPATH-TEST ") {
            let w: Vec<&str> = line[i + 13..].split_whitespace().collect();
            let field = |key: &str| {
                kv(w.iter().copied())
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default()
            };
            self.tests
                .push((field("group"), field("test"), outcome(w.iter().copied())));
        } else if let Some(i) = line.find("NETPATH-ATTACH mode=") {
            self.attach_mode = Some(line[i + 20..].trim().to_string());
        } else if let Some(i) = line.find("NETPATH-KERNEL release=") {
            self.release = Some(line[i + 23..].trim().to_string());
        } else if let Some(i) = line.find("NETPATH-VM-RC=") {
            self.vm_rc = line[i + 14..].trim().parse().ok();
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|r| r.strip_suffix(" ... FAILED"))
        {
            self.failed_tests.push(name.to_string());
        } else if self.panic.is_none()
            && (line.contains("Kernel panic") || line.contains("BUG:") || line.contains("Oops:"))
        {
            self.panic = Some(line.trim().to_string());
        }
    }

    /// The outcome of group `name`, if the guest got to its end.
    pub fn group(&self, name: &str) -> Option<&Outcome> {
        self.groups.iter().find(|(g, _)| g == name).map(|(_, o)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_parsed_even_after_kernel_noise() {
        let mut r = Report::default();
        for line in [
            "NETPATH-KERNEL release=6.1.0-56-amd64",
            "NETPATH-ATTACH mode=netlink clsact",
            "test published_udp ... FAILED",
            "NETPATH-TEST group=e2e test=e2e_ports rc=101 passed=10 failed=1 secs=300",
            "[   12.3] veth0: renamed NETPATH-GROUP e2e rc=101 passed=10 failed=1 secs=301",
            "NETPATH-GROUP programs rc=skip passed=0 failed=0 secs=0",
            "NETPATH-VM-RC=1",
        ] {
            r.line(line);
        }
        assert_eq!(r.release.as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(r.attach_mode.as_deref(), Some("netlink clsact"));
        assert_eq!(r.failed_tests, ["published_udp"]);
        assert_eq!(
            r.group("e2e"),
            Some(&Outcome {
                skipped: false,
                rc: 101,
                passed: 10,
                failed: 1,
                secs: 301
            })
        );
        assert_eq!(r.tests[0].1, "e2e_ports");
        assert_eq!(r.vm_rc, Some(1));
        assert!(r.group("load").is_none());
        assert!(r.group("programs").is_some_and(|o| o.skipped && o.rc != 0));
    }

    #[test]
    fn script_runs_each_binary_with_one_thread_and_reports_each_group() {
        let groups = vec![GroupRun {
            name: "load",
            tests: vec![TestRun {
                name: "kernel_load",
                path: "/w/target/debug/deps/kernel_load-1".into(),
                args: vec!["--skip".into(), "it's".into()],
            }],
        }];
        let s = script(Path::new("/w/target/debug/netpath"), &groups, 600);
        assert!(s.contains("export NETPATH_BIN='/w/target/debug/netpath'"));
        assert!(s.contains(
            "run_test load kernel_load '/w/target/debug/deps/kernel_load-1' '--skip' 'it'\\''s'"
        ));
        assert!(s.contains("timeout -k 10 600 \"$b\" --test-threads=1 \"$@\""));
        assert!(s.contains("echo \"NETPATH-GROUP load rc=$grc"));
        assert!(s.contains("load_rc=$grc"));
    }
}
