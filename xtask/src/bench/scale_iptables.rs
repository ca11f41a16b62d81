//! Owns the iptables half of the published-port scale benchmark (issue 6): in namespaces of its
//! own (`npipt-host` standing for a Docker host with no netpath, `npipt-lan` for a LAN client,
//! `npipt-ctr` for a container on the bridge `npipt0`), it installs N DNAT mappings laid out like
//! Docker 28 — one command at a time (K at the start and K on top of N-K, the total
//! extrapolated) and all at once with `iptables-restore --noflush` — and measures new TCP
//! connections/s to the first and the last mapping through iptables DNAT. It also owns
//! [`Namespaces`], the drop guard of any bench namespace set this module or `memory` makes.
use std::{
    fs::File,
    io::{self, Write as _},
    net::{Ipv4Addr, SocketAddrV4},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{
    CLIENT_CPU, Facts, Plan, SERVER_CPU, SERVER_PORT, WARM_UP, alternating_pairs, docker_rules,
    lab::{INTERRUPTED, check_interrupt, run_steps},
    report::{Row, Summary},
    row, section,
    traffic::{self, AcceptServer},
    while_serving,
};
use crate::{TAG, cmd};

/// Every namespace of this module starts with this (and no other part of netpath's tooling
/// uses it), so leftovers of an interrupted run are recognised and removed.
pub const PREFIX: &str = "npipt-";
const HOST_NS: &str = "npipt-host";
const LAN_NS: &str = "npipt-lan";
const CTR_NS: &str = "npipt-ctr";
/// Docker's `docker0`.
const BRIDGE: &str = "npipt0";
const UPLINK: &str = "up0";
const LAN_DEV: &str = "lan0";
const CTR_VETH: &str = "vethipt0";
/// A /24 apart from the netpath lab's (10.78.0.0/24) and the demo's (10.77.0.0/24).
const HOST_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
/// One LAN source address per mapping, as in the netpath part.
const LAN_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 79, 0, 2), Ipv4Addr::new(10, 79, 0, 3)];
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
const CTR_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const SUBNET: &str = "172.30.0.0/24";

/// Named network namespaces this benchmark made, deleted when dropped (error, panic, Ctrl-C:
/// the signal handler only sets a flag, so the unwinding path runs this).
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates `names` (each must start with [`PREFIX`]), deleting same-named leftovers of an
    /// earlier run first. On failure, what was made is deleted again.
    pub fn create(names: &[&str]) -> anyhow::Result<Self> {
        let mut made = Self { names: Vec::new() };
        for name in names {
            if !name.starts_with(PREFIX) {
                bail!("namespace {name} lacks the prefix {PREFIX}; this is a bug in the xtask");
            }
            if ns_path(name).exists() {
                println!("{TAG}: removing namespace {name}, left by an earlier benchmark");
                cmd::run_captured(&mut cmd::command("ip", &["netns", "del", name]))?;
            }
            check_interrupt()?;
            run_shown(&mut cmd::command("ip", &["netns", "add", name]))?;
            made.names.push(name.to_string());
        }
        Ok(made)
    }

    /// Deletes the namespaces (their devices and iptables rules go with them); returns whether
    /// all are gone.
    pub fn delete(&mut self) -> bool {
        let mut clean = true;
        for name in self.names.drain(..).rev() {
            let mut del = cmd::command("ip", &["netns", "del", &name]);
            if let Err(e) = cmd::run_captured(&mut del) {
                eprintln!("{TAG}: clean-up: {e:#}");
            }
            if ns_path(&name).exists() {
                eprintln!("{TAG}: clean-up could not remove /run/netns/{name}");
                clean = false;
            }
        }
        clean
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.delete();
    }
}

pub fn ns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn run_shown(command: &mut Command) -> anyhow::Result<()> {
    println!("$ {}", cmd::display(command));
    cmd::run_captured(command)?;
    Ok(())
}

/// Runs `program args` inside the namespace `ns` (setns between fork and exec, so no `nsenter`
/// is timed), with `stdin` fed when given; returns the wall time. Fails on a non-zero exit,
/// showing what the program said.
pub fn run_in_ns(
    ns: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<Duration> {
    check_interrupt()?;
    let mut command = cmd::command(program, args);
    let shown = format!(
        "nsenter --net={} {}",
        ns_path(ns).display(),
        cmd::display(&command)
    );
    enter_on_exec(&mut command, ns)?;
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{shown}`; is {program} installed?"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("cannot feed `{shown}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}); it said:\n{}",
            cmd::describe(out.status),
            cmd::tail(&String::from_utf8_lossy(&out.stderr), 25)
        );
    }
    Ok(wall)
}

/// Makes `command` enter the namespace `ns` between fork and exec.
pub fn enter_on_exec(command: &mut Command, ns: &str) -> anyhow::Result<()> {
    let path = ns_path(ns);
    let file =
        File::open(&path).with_context(|| format!("cannot open namespace {}", path.display()))?;
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which
    // is async-signal-safe; the file it uses moves into the closure, so it stays open.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// The lab: three namespaces joined by a veth pair and a bridge, no netpath anywhere.
struct IptLab {
    namespaces: Namespaces,
}

impl IptLab {
    fn create() -> anyhow::Result<Self> {
        let namespaces = Namespaces::create(&[HOST_NS, LAN_NS, CTR_NS])?;
        let (host, lan, ctr) = (
            format!("--net={}", ns_path(HOST_NS).display()),
            format!("--net={}", ns_path(LAN_NS).display()),
            format!("--net={}", ns_path(CTR_NS).display()),
        );
        let up = format!("{HOST_UPLINK_IP}/24");
        let (lan1, lan2) = (format!("{}/24", LAN_IPS[0]), format!("{}/24", LAN_IPS[1]));
        let (br, ctr_addr) = (format!("{BRIDGE_IP}/24"), format!("{CTR_IP}/24"));
        let (bridge_ip, lan_ip) = (BRIDGE_IP.to_string(), LAN_IPS[0].to_string());
        let steps: &[&[&str]] = &[
            &["nsenter", &host, "ip", "link", "set", "lo", "up"],
            &["nsenter", &lan, "ip", "link", "set", "lo", "up"],
            &["nsenter", &ctr, "ip", "link", "set", "lo", "up"],
            &[
                "nsenter", &host, "ip", "link", "add", UPLINK, "type", "veth", "peer", "name",
                LAN_DEV, "netns", LAN_NS,
            ],
            &["nsenter", &host, "ip", "addr", "add", &up, "dev", UPLINK],
            &["nsenter", &host, "ip", "link", "set", UPLINK, "up"],
            &[
                "nsenter", &host, "ip", "route", "add", "default", "via", &lan_ip,
            ],
            &["nsenter", &lan, "ip", "addr", "add", &lan1, "dev", LAN_DEV],
            &["nsenter", &lan, "ip", "addr", "add", &lan2, "dev", LAN_DEV],
            &["nsenter", &lan, "ip", "link", "set", LAN_DEV, "up"],
            &[
                "nsenter", &host, "ip", "link", "add", BRIDGE, "type", "bridge",
            ],
            &["nsenter", &host, "ip", "addr", "add", &br, "dev", BRIDGE],
            &["nsenter", &host, "ip", "link", "set", BRIDGE, "up"],
            &[
                "nsenter", &host, "ip", "link", "add", CTR_VETH, "type", "veth", "peer", "name",
                "eth0", "netns", CTR_NS,
            ],
            &[
                "nsenter", &host, "ip", "link", "set", CTR_VETH, "master", BRIDGE,
            ],
            &["nsenter", &host, "ip", "link", "set", CTR_VETH, "up"],
            &[
                "nsenter", &ctr, "ip", "addr", "add", &ctr_addr, "dev", "eth0",
            ],
            &["nsenter", &ctr, "ip", "link", "set", "eth0", "up"],
            &[
                "nsenter", &ctr, "ip", "route", "add", "default", "via", &bridge_ip,
            ],
            &["nsenter", &host, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ];
        run_steps(steps)?;
        Ok(Self { namespaces })
    }

    /// Empties the nat and filter tables and installs Docker 28's chains with no mapping.
    fn reset(&self) -> anyhow::Result<()> {
        run_in_ns(HOST_NS, "iptables-restore", &[], Some(&base_rules()))?;
        Ok(())
    }

    /// Installs `ports` with one `iptables-restore --noflush`; returns its wall time.
    fn restore(&self, ports: std::ops::Range<u32>) -> anyhow::Result<Duration> {
        run_in_ns(
            HOST_NS,
            "iptables-restore",
            &["--noflush"],
            Some(&mapping_rules(ports)),
        )
    }

    /// Installs `ports` one `iptables` command at a time (two per mapping); returns each
    /// command's wall time in ms.
    fn one_at_a_time(&self, ports: std::ops::Range<u32>) -> anyhow::Result<Vec<f64>> {
        let mut ms = Vec::new();
        for port in ports {
            for argv in mapping_commands(port) {
                let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                ms.push(run_in_ns(HOST_NS, "iptables", &args, None)?.as_secs_f64() * 1000.0);
            }
        }
        Ok(ms)
    }
}

/// Docker 28's chains on a host with one bridge network and no container yet (filter's
/// isolation chains reduced to the jumps a packet to a published port passes).
fn base_rules() -> String {
    docker_rules::iptables_rules(BRIDGE, SUBNET, None)
}

/// The two rules Docker adds for host port `port` -> the container's port 80: the DNAT in nat's
/// DOCKER chain and the accept in filter's.
fn mapping_commands(port: u32) -> [Vec<String>; 2] {
    let words = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    [
        words(format!("-t nat {}", dnat_rule(port))),
        words(format!("-t filter {}", accept_rule())),
    ]
}

fn dnat_rule(port: u32) -> String {
    format!(
        "-A DOCKER ! -i {BRIDGE} -p tcp -m tcp --dport {port} -j DNAT --to-destination {CTR_IP}:{SERVER_PORT}"
    )
}

fn accept_rule() -> String {
    format!(
        "-A DOCKER -d {CTR_IP}/32 ! -i {BRIDGE} -o {BRIDGE} -p tcp -m tcp --dport {SERVER_PORT} -j ACCEPT"
    )
}

/// `iptables-restore --noflush` input for `ports`, both tables.
fn mapping_rules(ports: std::ops::Range<u32>) -> String {
    let mut nat = String::from("*nat\n");
    let mut filter = String::from("*filter\n");
    for port in ports {
        nat.push_str(&dnat_rule(port));
        nat.push('\n');
        filter.push_str(&accept_rule());
        filter.push('\n');
    }
    format!("{nat}COMMIT\n{filter}COMMIT\n")
}

/// `iptables -V`, e.g. `iptables v1.8.9 (nf_tables)`.
fn backend() -> anyhow::Result<String> {
    let out = cmd::run_captured(&mut cmd::command("iptables", &["-V"]))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The iptables part of the scale benchmark, with the netpath part's N, K and repeats.
pub fn measure(plan: &Plan) -> anyhow::Result<(Vec<Row>, Facts)> {
    let version = backend().context(
        "iptables is not installed; run `cargo xtask setup` (it installs Debian's iptables)",
    )?;
    println!(
        "\n# Docker's path for comparison: {version}, in namespaces {HOST_NS} (a host with no \
         netpath), {LAN_NS} (LAN client), {CTR_NS} (container {CTR_IP} on bridge {BRIDGE})"
    );
    let mut lab = IptLab::create()?;
    let measured = measure_in(&lab, plan, &version);
    println!("\n# Clean-up: the {PREFIX}* namespaces deleted (their rules with them)");
    let clean = lab.namespaces.delete();
    let found = measured?;
    if !clean {
        bail!("the iptables part ran, but clean-up left a namespace behind (see above)");
    }
    Ok(found)
}

fn measure_in(lab: &IptLab, plan: &Plan, version: &str) -> anyhow::Result<(Vec<Row>, Facts)> {
    let (n, k, p0) = (plan.mappings, plan.singles, u32::from(plan.first_port));
    let mut rows = Vec::new();
    let mut facts = Facts::new();
    facts.push((
        "iptables_backend",
        "iptables used for Docker's path (`iptables -V`)".into(),
        json!(version),
    ));
    let shown = |s: String| format!("nsenter --net={} {s}", ns_path(HOST_NS).display());

    section(&format!(
        "4. iptables: {n} mappings with one `iptables-restore --noflush` ({} times)",
        plan.repeats
    ));
    println!(
        "$ {}",
        shown("iptables-restore < docker-28-chains.rules".into())
    );
    println!(
        "$ {}    # {} rules: per mapping a DNAT in nat DOCKER and an ACCEPT in filter DOCKER",
        shown("iptables-restore --noflush < mappings.rules".into()),
        2 * n
    );
    let mut restore_s = Vec::new();
    for repeat in 1..=plan.repeats {
        lab.reset()?;
        let took = lab.restore(p0..p0 + n)?.as_secs_f64();
        println!("  run {repeat}: iptables-restore --noflush {took:.3} s");
        restore_s.push(took);
    }
    rows.push(row(
        "iptables_restore_s",
        format!("iptables: {n} mappings with one `iptables-restore --noflush`"),
        "s",
        &restore_s,
        &format!("{} rules, wall time of the whole command", 2 * n),
    )?);

    section(&format!(
        "5. iptables: one command at a time, the first {k} mappings and the last {k} of {n} \
         ({} times each)",
        plan.repeats
    ));
    println!("$ {}", shown(format!("iptables -t nat {}", dnat_rule(p0))));
    println!(
        "$ {}",
        shown(format!("iptables -t filter {}", accept_rule()))
    );
    let (mut first_ms, mut last_ms) = (Vec::new(), Vec::new());
    for repeat in 1..=plan.repeats {
        lab.reset()?;
        let first = mean(&lab.one_at_a_time(p0..p0 + k)?);
        let last = if n > k {
            lab.reset()?;
            lab.restore(p0..p0 + n - k)?;
            Some(mean(&lab.one_at_a_time(p0 + n - k..p0 + n)?))
        } else {
            None
        };
        match last {
            Some(last) => {
                println!(
                    "  run {repeat}: first {k}: {first:.2} ms per command; last {k}: {last:.2} ms per command"
                );
                last_ms.push(last);
            }
            None => println!("  run {repeat}: {k} mappings: {first:.2} ms per command"),
        }
        first_ms.push(first);
    }
    rows.push(row(
        "iptables_single_first_ms",
        format!("iptables one command at a time, first {k} mappings (empty chains): per command"),
        "ms",
        &first_ms,
        "wall time of one `iptables` command; two per mapping",
    )?);
    if !last_ms.is_empty() {
        rows.push(row(
            "iptables_single_last_ms",
            format!(
                "iptables one command at a time, last {k} mappings ({} already installed): per command",
                n - k
            ),
            "ms",
            &last_ms,
            "wall time of one `iptables` command; two per mapping",
        )?);
    }
    let per_mapping: Vec<f64> = if last_ms.is_empty() {
        first_ms.iter().map(|f| 2.0 * f).collect()
    } else {
        first_ms.iter().zip(&last_ms).map(|(f, l)| f + l).collect()
    };
    rows.push(Row {
        key: "iptables_single_extrapolated_s",
        label: format!("iptables one command at a time: {n} mappings"),
        unit: "s",
        summary: Summary::of(&per_mapping)
            .context("no one-at-a-time samples")?
            .scaled(f64::from(n) / 1000.0),
        note: format!(
            "extrapolated, not measured: {n} x 2 commands x the mean of the first and last \
             {k}'s per-command time (cost assumed linear in the table size)"
        ),
    });

    lab.reset()?;
    lab.restore(p0..p0 + n)?;
    let (rates, rate_facts) = connection_rates(plan)?;
    rows.push(row(
        "iptables_conn_per_s_first",
        format!("iptables DNAT: new TCP connections/s to the first mapping (:{p0})"),
        "conn/s",
        &rates[0],
        "connect + close (RST), one client thread",
    )?);
    rows.push(row(
        "iptables_conn_per_s_last",
        format!(
            "iptables DNAT: new TCP connections/s to the last mapping (:{}, the {n}th)",
            plan.last_port()
        ),
        "conn/s",
        &rates[1],
        "connect + close (RST), one client thread; its SYN passes every earlier DNAT rule",
    )?);
    let ratios: Vec<f64> = rates[0].iter().zip(&rates[1]).map(|(f, l)| l / f).collect();
    rows.push(row(
        "iptables_conn_per_s_last_over_first",
        "iptables DNAT: last / first, per back-to-back pair".into(),
        "ratio",
        &ratios,
        "spread only",
    )?);
    facts.extend(rate_facts);
    Ok((rows, facts))
}

fn mean(samples: &[f64]) -> f64 {
    samples.iter().sum::<f64>() / samples.len().max(1) as f64
}

/// conn/s to the first and the last mapping in back-to-back pairs of alternating order, after
/// one warm-up loop each, as in the netpath part.
fn connection_rates(plan: &Plan) -> anyhow::Result<([Vec<f64>; 2], Facts)> {
    let first = SocketAddrV4::new(HOST_UPLINK_IP, plan.first_port);
    let last = SocketAddrV4::new(HOST_UPLINK_IP, plan.last_port());
    section(&format!(
        "6. iptables DNAT: new TCP connections/s from the LAN client to {first} and {last} \
         ({} s each, {} times; server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU})",
        plan.connect.as_secs_f64(),
        plan.repeats
    ));
    println!(
        "# an accept-and-close server on 0.0.0.0:{SERVER_PORT} in {}, a connect-and-close loop \
         in {}: {LAN_NS} -> {HOST_NS} (ip_forward, iptables DNAT) -> {BRIDGE} -> {CTR_NS}",
        ns_path(CTR_NS).display(),
        ns_path(LAN_NS).display()
    );
    let ctr = ns_path(CTR_NS);
    let lan = ns_path(LAN_NS);
    let server = AcceptServer::bind(&ctr, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT))
        .with_context(|| format!("cannot start the server in {}", ctr.display()))?;
    let run = |dial: SocketAddrV4, duration: Duration| -> anyhow::Result<traffic::ConnectRun> {
        let source = LAN_IPS[usize::from(dial == last)];
        let run = traffic::connect_loop(&lan, CLIENT_CPU, source, dial, duration, &INTERRUPTED)
            .with_context(|| format!("the client loop to {dial} failed"))?;
        check_interrupt()?;
        if run.connected == 0 {
            bail!(
                "no connection to {dial} got through iptables DNAT ({}); check the rules with \
                 `nsenter --net={} iptables-save`",
                run.first_error.as_deref().unwrap_or("no error either"),
                ns_path(HOST_NS).display()
            );
        }
        Ok(run)
    };
    let pairs = || -> anyhow::Result<([Vec<f64>; 2], u64, u64)> {
        for dial in [first, last] {
            run(dial, WARM_UP)?;
        }
        let (mut connected, mut failed) = (0, 0);
        let pairs = alternating_pairs(first, last, plan, &run, |r| {
            connected += r.connected;
            failed += r.failed;
        })?;
        let rates = [0, 1].map(|i| pairs.iter().map(|pair| pair[i]).collect());
        Ok((rates, connected, failed))
    };
    let (rates, connected, failed) = while_serving(&server, pairs)?;
    let facts = vec![(
        "iptables_measured_connections",
        "iptables DNAT: connections completed / connects failed (measured runs)".into(),
        json!({ "client_completed": connected, "failed": failed }),
    )];
    Ok((rates, facts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_docker_28() {
        assert_eq!(
            mapping_commands(20000)[0].join(" "),
            "-t nat -A DOCKER ! -i npipt0 -p tcp -m tcp --dport 20000 -j DNAT --to-destination 172.30.0.2:80"
        );
        assert_eq!(
            mapping_commands(20000)[1].join(" "),
            "-t filter -A DOCKER -d 172.30.0.2/32 ! -i npipt0 -o npipt0 -p tcp -m tcp --dport 80 -j ACCEPT"
        );
        let text = mapping_rules(20000..20003);
        assert_eq!(text.matches("-j DNAT").count(), 3);
        assert_eq!(text.matches("-j ACCEPT").count(), 3);
        assert!(
            text.starts_with("*nat\n") && text.ends_with("COMMIT\n"),
            "{text}"
        );
        assert!(text.contains("--dport 20002 -j DNAT"), "{text}");
        let base = base_rules();
        assert!(base.contains("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER"));
        assert!(base.contains(":FORWARD DROP"));
    }

    #[test]
    fn base_rules_are_pinned() {
        assert_eq!(
            base_rules(),
            include_str!("docker_rules/scale_iptables.rules")
        );
    }

    #[test]
    fn namespaces_need_the_prefix() {
        let err = Namespaces::create(&["npbench-host"])
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("lacks the prefix npipt-"), "{err}");
    }
}
