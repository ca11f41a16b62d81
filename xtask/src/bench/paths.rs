//! Owns the labs of the comparison benchmark (`compare.rs`): for each path it compares, the
//! same topology — a LAN client namespace joined by a veth to a host namespace, and two
//! container namespaces on a bridge of the host — with that path's forwarding set up: netpath
//! (its CLI, instance `cmp`), Docker 28's iptables rules, the same in native nftables, a
//! userspace proxy per port (socat, like docker-proxy), or plain routing. The labs stand side
//! by side, each in namespaces of its own ([`Names`]: `npcmp-<path>-host`, `-lan`, `-ctr1`,
//! `-ctr2`, LAN 10.201.N.0/24), so the comparison can measure them in turns. The servers the
//! measurements talk to (iperf3, sockperf, and the benchmark's own accept and echo servers of
//! `traffic.rs`) listen in each lab's first container.
//! [`Lab::teardown`] removes one lab; `Drop` does too, so every exit path (error, panic,
//! Ctrl-C) cleans up; [`remove_leftovers`] removes what an earlier run left, old names too.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, bail};

use super::{docker_rules, lab::check_interrupt, load::Daemon};
use crate::{TAG, cmd};

/// The namespaces of the one-lab-at-a-time layout of earlier versions, removed if left over.
const LEGACY_NAMESPACES: [&str; 4] = ["npcmp-host", "npcmp-lan", "npcmp-ctr1", "npcmp-ctr2"];
/// netpath's instance: its own pins (/sys/fs/bpf/netpath-cmp), state and names.
pub const INSTANCE: &str = "cmp";
/// netpath's names for the two containers (they adopt the netpath lab's container namespaces).
const ENDPOINTS: [&str; 2] = ["c1", "c2"];
const UPLINK: &str = "up0";
const LAN_DEV: &str = "lan0";
/// The bridge of the Linux paths (netpath makes its own, `np0`), and the host ends of the
/// containers' veths.
const BRIDGE: &str = "npcmpbr0";
const CONTAINER_VETHS: [&str; 2] = ["npcmpv1", "npcmpv2"];
/// Docker's default bridge network, for every path (netpath's `bridge` network is the same;
/// each lab's is inside its own host namespace).
const SUBNET: &str = "172.17.0.0/16";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
pub const CONTAINER_IPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(172, 17, 0, 2), Ipv4Addr::new(172, 17, 0, 3)];

/// Whether the common set-up commands were shown already (for the first lab, and for the
/// first lab with a Linux bridge); later labs say they repeat them.
static TOPOLOGY_SHOWN: AtomicBool = AtomicBool::new(false);
static BRIDGE_SHOWN: AtomicBool = AtomicBool::new(false);

/// TCP or UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A port of the first container and the host port that publishes it.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub proto: Proto,
    pub container_port: u16,
    pub host_port: u16,
}

/// The accept-and-close server of the connection-rate loop.
pub const CONNECT: Service = Service {
    proto: Proto::Tcp,
    container_port: 80,
    host_port: 8080,
};
/// iperf3's server: TCP for its control connection and the stream test, UDP for the UDP test.
pub const IPERF_TCP: Service = Service {
    proto: Proto::Tcp,
    container_port: 5201,
    host_port: 15201,
};
pub const IPERF_UDP: Service = Service {
    proto: Proto::Udp,
    container_port: 5201,
    host_port: 15201,
};
/// sockperf's TCP ping-pong server.
pub const SOCKPERF: Service = Service {
    proto: Proto::Tcp,
    container_port: 11111,
    host_port: 21111,
};
/// The spinning echo server of the no-wake-up request/response (`traffic::SpinEchoServer`).
pub const SPIN_ECHO: Service = Service {
    proto: Proto::Tcp,
    container_port: 7007,
    host_port: 17007,
};
const SERVICES: [Service; 5] = [CONNECT, IPERF_TCP, IPERF_UDP, SOCKPERF, SPIN_ECHO];

/// The paths the benchmark compares, in the order it runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathKind {
    Netpath,
    Routed,
    Iptables,
    Nftables,
    Proxy,
}

impl PathKind {
    pub const ALL: [PathKind; 5] = [
        PathKind::Netpath,
        PathKind::Routed,
        PathKind::Iptables,
        PathKind::Nftables,
        PathKind::Proxy,
    ];

    /// Stable key for the JSON.
    pub fn key(self) -> &'static str {
        match self {
            PathKind::Netpath => "netpath",
            PathKind::Routed => "routed",
            PathKind::Iptables => "iptables_dnat",
            PathKind::Nftables => "nftables_dnat",
            PathKind::Proxy => "userspace_proxy",
        }
    }

    /// Short column title.
    pub fn title(self) -> &'static str {
        match self {
            PathKind::Netpath => "netpath",
            PathKind::Routed => "routed (no NAT)",
            PathKind::Iptables => "iptables DNAT",
            PathKind::Nftables => "nftables DNAT",
            PathKind::Proxy => "userspace proxy",
        }
    }

    /// What the path is, one line.
    pub fn description(self) -> &'static str {
        match self {
            PathKind::Netpath => {
                "netpath's eBPF datapath: published ports and endpoints made with the netpath CLI"
            }
            PathKind::Routed => {
                "plain routing, no NAT and no netfilter rules: the LAN client routes the container \
                 subnet via the host and dials the container's own address (the lower bound)"
            }
            PathKind::Iptables => {
                "iptables DNAT laid out like Docker 28 with --userland-proxy=false (hairpin NAT), \
                 one iptables-restore"
            }
            PathKind::Nftables => {
                "native nftables, one `nft -f`: prerouting/output dnat through a map, postrouting \
                 masquerade, forward accept"
            }
            PathKind::Proxy => {
                "a userspace proxy process per published port (socat, fork per connection), no \
                 NAT rules, like docker-proxy"
            }
        }
    }

    /// The path in its lab's namespace names.
    pub fn short(self) -> &'static str {
        match self {
            PathKind::Netpath => "netpath",
            PathKind::Routed => "routed",
            PathKind::Iptables => "ipt",
            PathKind::Nftables => "nft",
            PathKind::Proxy => "proxy",
        }
    }

    /// Whether the LAN client dials the host's published ports (all but the routed path).
    pub fn publishes(self) -> bool {
        self != PathKind::Routed
    }
}

/// Facts about the machine's tools that every lab needs, found once.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `iptables -V`, e.g. "iptables v1.8.9 (nf_tables)".
    pub iptables_version: String,
    /// `nft -v`.
    pub nft_version: String,
    /// The userspace proxy's program and version line.
    pub proxy: String,
}

/// One lab's namespaces and LAN addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The namespace standing for the host.
    pub host: String,
    /// The namespace standing for a machine on the host's LAN: the client of every measurement.
    pub lan: String,
    /// The two containers: the first runs the servers, the second is the container-to-container
    /// client.
    pub ctr: [String; 2],
    /// The host's uplink and the LAN client, in a /24 of the lab's own, 10.201.N.0/24 (the demo
    /// uses 10.77.0.0/24, the scale benchmark 10.78 and 10.79, the integration tests
    /// 10.1-199.x.0/24).
    pub host_uplink_ip: Ipv4Addr,
    pub lan_ip: Ipv4Addr,
}

impl Names {
    /// `kind`'s lab: `npcmp-<path>-host` and so on, LAN 10.201.N.0/24 with N its place in
    /// [`PathKind::ALL`], counted from 1.
    pub fn of(kind: PathKind) -> Self {
        let n = PathKind::ALL.iter().position(|&k| k == kind).unwrap_or(0) as u8 + 1;
        let ns = |role: &str| format!("npcmp-{}-{role}", kind.short());
        Self {
            host: ns("host"),
            lan: ns("lan"),
            ctr: [ns("ctr1"), ns("ctr2")],
            host_uplink_ip: Ipv4Addr::new(10, 201, n, 1),
            lan_ip: Ipv4Addr::new(10, 201, n, 2),
        }
    }

    /// The four namespaces of the old layout (one lab at a time), as a lab's to remove.
    fn legacy() -> Self {
        let [host, lan, ctr1, ctr2] = LEGACY_NAMESPACES.map(String::from);
        Self {
            host,
            lan,
            ctr: [ctr1, ctr2],
            host_uplink_ip: Ipv4Addr::new(10, 201, 0, 1),
            lan_ip: Ipv4Addr::new(10, 201, 0, 2),
        }
    }

    pub fn namespaces(&self) -> [&str; 4] {
        [&self.host, &self.lan, &self.ctr[0], &self.ctr[1]]
    }
}

/// One path's lab: namespaces, links, rules or netpath instance, servers and proxies.
pub struct Lab {
    pub kind: PathKind,
    pub names: Names,
    bin: PathBuf,
    files: PathBuf,
    daemons: Vec<Daemon>,
    /// Whether the host namespace's bridge traffic went through iptables (br_netfilter).
    pub br_netfilter: BrNetfilter,
    torn_down: bool,
}

/// br_netfilter in the lab's host namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrNetfilter {
    On,
    Off,
    /// The kernel has no br_netfilter loaded (the benchmark does not load it: that would
    /// change every bridge of the machine).
    Unavailable,
}

impl BrNetfilter {
    pub fn describe(self) -> &'static str {
        match self {
            BrNetfilter::On => "on (net.bridge.bridge-nf-call-iptables=1)",
            BrNetfilter::Off => "off (net.bridge.bridge-nf-call-iptables=0)",
            BrNetfilter::Unavailable => {
                "not available (br_netfilter is not loaded in this kernel; the benchmark does not \
                 load it, since that would change every bridge on the machine)"
            }
        }
    }
}

impl Lab {
    /// Builds `kind`'s lab and starts its servers; `files` is where rule files and server logs
    /// go. Call [`remove_leftovers`] first. On failure everything made so far is removed.
    pub fn create(kind: PathKind, bin: &Path, files: &Path) -> anyhow::Result<Self> {
        let mut lab = Self::shell(kind, Names::of(kind), bin, files);
        if lab.leftovers_exist() {
            bail!(
                "the {} lab's namespaces or netpath files exist already: another comparison may be \
                 running; if not, run `ip netns list` and delete the npcmp-* namespaces",
                kind.title()
            );
        }
        lab.build()?;
        Ok(lab)
    }

    /// A lab value with nothing built yet (to build, or to tear down what is left).
    fn shell(kind: PathKind, names: Names, bin: &Path, files: &Path) -> Self {
        Self {
            kind,
            names,
            bin: bin.to_path_buf(),
            files: files.to_path_buf(),
            daemons: Vec::new(),
            br_netfilter: BrNetfilter::Unavailable,
            torn_down: false,
        }
    }

    /// Whether any of this lab's namespaces (or, for netpath, its instance's files) exist.
    fn leftovers_exist(&self) -> bool {
        (self.kind == PathKind::Netpath && netpath_paths().iter().any(|p| p.exists()))
            || self
                .names
                .namespaces()
                .iter()
                .any(|ns| ns_path(ns).exists())
    }

    fn build(&mut self) -> anyhow::Result<()> {
        self.common()?;
        match self.kind {
            PathKind::Netpath => self.netpath_setup()?,
            PathKind::Routed => {
                run(&[
                    "ip",
                    "-n",
                    &self.names.lan,
                    "route",
                    "add",
                    SUBNET,
                    "via",
                    &self.names.host_uplink_ip.to_string(),
                ])?;
            }
            PathKind::Iptables => self.iptables_setup()?,
            PathKind::Nftables => self.nftables_setup()?,
            PathKind::Proxy => self.proxy_setup()?,
        }
        self.start_servers()
    }

    /// Namespaces, the uplink veth, forwarding, and (for the Linux paths) the bridge and the
    /// containers' veths.
    fn common(&mut self) -> anyhow::Result<()> {
        let names = self.names.clone();
        let (host_ns, lan_ns) = (names.host.as_str(), names.lan.as_str());
        let host = format!("--net={}", ns_path(host_ns).display());
        let up = format!("{}/24", names.host_uplink_ip);
        let lan = format!("{}/24", names.lan_ip);
        let lan_ip = names.lan_ip.to_string();
        // The first lab shows every command; later ones say they repeat it.
        let show = !TOPOLOGY_SHOWN.swap(true, Ordering::Relaxed);
        if !show {
            println!(
                "# namespaces {host_ns}, {lan_ns}, {}, {}, uplink veth {UPLINK}-{LAN_DEV} \
                 ({lan}), forwarding: as the commands shown for the first lab",
                names.ctr[0], names.ctr[1]
            );
        }
        let run = |argv: &[&str]| step(argv, show);
        for ns in names.namespaces() {
            run(&["ip", "netns", "add", ns])?;
            run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        run(&[
            "ip", "-n", host_ns, "link", "add", UPLINK, "type", "veth", "peer", "name", LAN_DEV,
            "netns", lan_ns,
        ])?;
        run(&["ip", "-n", host_ns, "addr", "add", &up, "dev", UPLINK])?;
        run(&["ip", "-n", host_ns, "link", "set", UPLINK, "up"])?;
        run(&[
            "ip", "-n", host_ns, "route", "add", "default", "via", &lan_ip,
        ])?;
        run(&["ip", "-n", lan_ns, "addr", "add", &lan, "dev", LAN_DEV])?;
        run(&["ip", "-n", lan_ns, "link", "set", LAN_DEV, "up"])?;
        run(&["nsenter", &host, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        // br_netfilter's switch is per namespace and on by default in a new one; only the
        // iptables path (Docker's) keeps it on.
        if bridge_nf_available(host_ns)? {
            let on = self.kind == PathKind::Iptables;
            // Always shown: it differs between the labs.
            sysctl(
                host_ns,
                &format!("net.bridge.bridge-nf-call-iptables={}", u8::from(on)),
            )?;
            self.br_netfilter = if on {
                BrNetfilter::On
            } else {
                BrNetfilter::Off
            };
        }
        if self.kind == PathKind::Netpath {
            return Ok(());
        }
        let gateway = format!("{GATEWAY}/16");
        let show = !BRIDGE_SHOWN.swap(true, Ordering::Relaxed);
        if !show {
            println!(
                "# bridge {BRIDGE} {GATEWAY}/16, veths {} and {} to the containers' eth0 \
                 ({}, {}): the commands shown for the first Linux lab",
                CONTAINER_VETHS[0], CONTAINER_VETHS[1], CONTAINER_IPS[0], CONTAINER_IPS[1]
            );
        }
        let run = |argv: &[&str]| step(argv, show);
        run(&["ip", "-n", host_ns, "link", "add", BRIDGE, "type", "bridge"])?;
        run(&["ip", "-n", host_ns, "addr", "add", &gateway, "dev", BRIDGE])?;
        run(&["ip", "-n", host_ns, "link", "set", BRIDGE, "up"])?;
        for ((ns, veth), ip) in names.ctr.iter().zip(CONTAINER_VETHS).zip(CONTAINER_IPS) {
            let addr = format!("{ip}/16");
            run(&[
                "ip", "-n", host_ns, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            run(&["ip", "-n", host_ns, "link", "set", veth, "master", BRIDGE])?;
            run(&["ip", "-n", host_ns, "link", "set", veth, "up"])?;
            run(&["ip", "-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
            run(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &GATEWAY.to_string(),
            ])?;
        }
        Ok(())
    }

    fn netpath_setup(&mut self) -> anyhow::Result<()> {
        for ((name, ns), ip) in ENDPOINTS.iter().zip(&self.names.ctr).zip(CONTAINER_IPS) {
            let ns = ns_path(ns).display().to_string();
            self.netpath(&[
                "endpoint",
                "create",
                name,
                "--netns",
                &ns,
                "--ip",
                &ip.to_string(),
            ])?;
        }
        let mappings: Vec<String> = SERVICES
            .iter()
            .map(|s| {
                let suffix = if s.proto == Proto::Udp { "/udp" } else { "" };
                format!(
                    "{}:{}:{}{suffix}",
                    s.host_port, ENDPOINTS[0], s.container_port
                )
            })
            .collect();
        let mut args = vec!["publish"];
        args.extend(mappings.iter().map(String::as_str));
        self.netpath(&args)?;
        Ok(())
    }

    fn iptables_setup(&mut self) -> anyhow::Result<()> {
        let rules = self.files.join("iptables.rules");
        std::fs::write(&rules, docker_iptables_rules())
            .with_context(|| format!("cannot write {}", rules.display()))?;
        self.docker_bridge_settings()?;
        run(&[
            "nsenter",
            &format!("--net={}", ns_path(&self.names.host).display()),
            "iptables-restore",
            &rules.display().to_string(),
        ])
        .with_context(|| format!("the iptables rules in {} were refused", rules.display()))?;
        Ok(())
    }

    fn nftables_setup(&mut self) -> anyhow::Result<()> {
        let rules = self.files.join("nftables.nft");
        std::fs::write(&rules, nftables_ruleset())
            .with_context(|| format!("cannot write {}", rules.display()))?;
        self.docker_bridge_settings()?;
        run(&[
            "nsenter",
            &format!("--net={}", ns_path(&self.names.host).display()),
            "nft",
            "-f",
            &rules.display().to_string(),
        ])
        .with_context(|| format!("the nftables ruleset in {} was refused", rules.display()))?;
        Ok(())
    }

    /// What Docker sets for `--userland-proxy=false`: hairpin on the bridge ports (a
    /// container can reach its own published port) and route_localnet on the bridge.
    fn docker_bridge_settings(&mut self) -> anyhow::Result<()> {
        for veth in CONTAINER_VETHS {
            run(&[
                "ip",
                "-n",
                &self.names.host,
                "link",
                "set",
                veth,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ])?;
        }
        sysctl(
            &self.names.host,
            &format!("net.ipv4.conf.{BRIDGE}.route_localnet=1"),
        )
    }

    fn proxy_setup(&mut self) -> anyhow::Result<()> {
        for service in SERVICES {
            let target = format!("{}:{}", CONTAINER_IPS[0], service.container_port);
            let (from, to) = match service.proto {
                // Like docker-proxy (Go): a listen backlog of somaxconn's size, TCP_NODELAY.
                Proto::Tcp => (
                    format!(
                        "TCP4-LISTEN:{},fork,reuseaddr,backlog=4096,nodelay",
                        service.host_port
                    ),
                    format!("TCP4:{target},nodelay"),
                ),
                Proto::Udp => (
                    format!("UDP4-LISTEN:{},fork,reuseaddr", service.host_port),
                    format!("UDP4:{target}"),
                ),
            };
            let mut args = vec![];
            if service.proto == Proto::Udp {
                // A UDP "connection" (one forked copy per client) ends after 10 s idle.
                args.extend(["-T", "10"]);
            }
            args.extend([from.as_str(), to.as_str()]);
            let name = format!("proxy-{}-{}", service.proto.name(), service.host_port);
            let log = self.files.join(format!("{name}.log"));
            self.daemons.push(Daemon::start(
                &name,
                &ns_path(&self.names.host),
                None,
                "socat",
                &args,
                &log,
            )?);
        }
        Ok(())
    }

    /// iperf3 and sockperf servers in the first container, pinned to `super::SERVER_CPU`.
    fn start_servers(&mut self) -> anyhow::Result<()> {
        let ctr = ns_path(&self.names.ctr[0]);
        let cpu = super::compare::SERVER_CPU;
        let iperf_port = IPERF_TCP.container_port.to_string();
        let sockperf_port = SOCKPERF.container_port.to_string();
        let cpu_arg = cpu.to_string();
        let servers: [(&str, &str, Vec<&str>); 2] = [
            (
                "iperf3-server",
                "iperf3",
                vec!["-s", "-p", &iperf_port, "-A", &cpu_arg],
            ),
            (
                "sockperf-server",
                "sockperf",
                vec!["server", "--tcp", "-i", "0.0.0.0", "-p", &sockperf_port],
            ),
        ];
        for (name, program, args) in servers {
            let log = self.files.join(format!("{}-{name}.log", self.kind.key()));
            self.daemons
                .push(Daemon::start(name, &ctr, Some(cpu), program, &args, &log)?);
        }
        Ok(())
    }

    /// Fails if a server or proxy stopped.
    pub fn check_daemons(&mut self) -> anyhow::Result<()> {
        for daemon in &mut self.daemons {
            daemon.check_running()?;
        }
        Ok(())
    }

    /// Waits (at most `limit`) until none of the lab's servers and proxies has a process at
    /// work, so that work left from one measurement (a proxy's forked copies finishing) does
    /// not run during the next path's; returns how long it waited.
    pub fn settle(&self, limit: std::time::Duration) -> std::time::Duration {
        let started = std::time::Instant::now();
        let mut quiet = 0;
        while quiet < 3 && started.elapsed() < limit {
            if self.daemons.iter().all(|d| d.busy_processes() == 0) {
                quiet += 1;
            } else {
                quiet = 0;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        started.elapsed()
    }

    /// Where the LAN client dials `service`: the host's published port, or on the routed path
    /// the container itself.
    pub fn lan_target(&self, service: Service) -> SocketAddrV4 {
        if self.kind.publishes() {
            SocketAddrV4::new(self.names.host_uplink_ip, service.host_port)
        } else {
            SocketAddrV4::new(CONTAINER_IPS[0], service.container_port)
        }
    }

    /// Runs `netpath --instance cmp ARGS` in the host namespace; fails on a non-zero exit.
    pub fn netpath(&self, args: &[&str]) -> anyhow::Result<String> {
        check_interrupt()?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", ns_path(&self.names.host).display()))
            .arg(&self.bin)
            .args(["--instance", INSTANCE])
            .args(args);
        println!("$ {}", replay_line(args));
        let out = cmd::run_captured(&mut command)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Removes everything the lab may have made (its servers and proxies by their process
    /// group, netpath's instance for the netpath lab, its namespaces); returns whether
    /// everything is gone. Safe to call when nothing or only part exists.
    pub fn teardown(&mut self) -> bool {
        self.torn_down = true;
        let mut clean = true;
        for mut daemon in self.daemons.drain(..) {
            clean &= daemon.stop();
        }
        let netpath = self.kind == PathKind::Netpath;
        if netpath
            && ns_path(&self.names.host).exists()
            && self.bin.exists()
            && netpath_paths().iter().any(|p| p.exists())
        {
            // netpath runs only inside the lab's host namespace, never in the machine's own.
            let mut purge = Command::new("nsenter");
            purge
                .arg(format!("--net={}", ns_path(&self.names.host).display()))
                .arg(&self.bin)
                .args(["--instance", INSTANCE, "purge", "--force"]);
            cmd::report_cleanup(&mut purge);
        }
        for path in netpath_paths()
            .into_iter()
            .filter(|p| netpath && p.exists())
        {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                eprintln!("{TAG}: clean-up: could not remove {}: {e}", path.display());
            }
        }
        for ns in self.names.namespaces() {
            if ns_path(ns).exists() {
                cmd::report_cleanup(&mut cmd::command("ip", &["netns", "del", ns]));
            }
        }
        let gone = cmd::all_removed(
            netpath_paths()
                .into_iter()
                .filter(|_| netpath)
                .chain(self.names.namespaces().into_iter().map(ns_path)),
        );
        clean && gone
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.torn_down {
            self.teardown();
        }
    }
}

/// The command a reader types to replay a netpath step.
pub fn replay_line(args: &[&str]) -> String {
    format!(
        "nsenter --net=/run/netns/{} netpath --instance {INSTANCE} {}",
        Names::of(PathKind::Netpath).host,
        args.join(" ")
    )
}

/// Finds the tools' versions; fails saying what to install when one is missing.
pub fn tools() -> anyhow::Result<Tools> {
    let version = |program: &str, arg: &str, package: &str| -> anyhow::Result<String> {
        let out = cmd::run_captured(&mut cmd::command(program, &[arg])).with_context(|| {
            format!("the comparison needs `{program}`: install the Debian package `{package}`")
        })?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        Ok(text.lines().next().unwrap_or("").trim().to_string())
    };
    Ok(Tools {
        iptables_version: version("iptables", "-V", "iptables")?,
        nft_version: version("nft", "-v", "nftables")?,
        proxy: format!(
            "socat ({}); no docker-proxy: Debian ships it only inside docker.io, which would \
             install and start a whole Docker engine",
            socat_version()?
        ),
    })
}

/// "socat version 1.7.4.4 on …" from `socat -V`, whose first line is its authors.
fn socat_version() -> anyhow::Result<String> {
    let out = cmd::run_captured(&mut cmd::command("socat", &["-V"]))
        .context("the comparison needs `socat`: install the Debian package `socat`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.starts_with("socat version"))
        .unwrap_or("socat, version unknown")
        .trim()
        .to_string())
}

/// Docker 28's iptables rules for one bridge network (`npcmpbr0`, 172.17.0.0/16) with the
/// first container's ports published, `--userland-proxy=false`.
pub fn docker_iptables_rules() -> String {
    let ctr = CONTAINER_IPS[0];
    let mut raw = String::new();
    let mut nat = String::new();
    let mut filter = String::new();
    for ip in CONTAINER_IPS {
        // Docker 28 drops packets for a container's address that do not come from its bridge.
        let _ = writeln!(raw, "-A PREROUTING -d {ip}/32 ! -i {BRIDGE} -j DROP");
    }
    for s in SERVICES {
        let p = s.proto.name();
        let (host_port, port) = (s.host_port, s.container_port);
        let _ = writeln!(
            nat,
            "-A POSTROUTING -s {ctr}/32 -d {ctr}/32 -p {p} -m {p} --dport {port} -j MASQUERADE"
        );
        let _ = writeln!(
            nat,
            "-A DOCKER -p {p} -m {p} --dport {host_port} -j DNAT --to-destination {ctr}:{port}"
        );
        let _ = writeln!(
            filter,
            "-A DOCKER -d {ctr}/32 ! -i {BRIDGE} -o {BRIDGE} -p {p} -m {p} --dport {port} -j ACCEPT"
        );
    }
    let published = docker_rules::Published { raw, nat, filter };
    format!(
        "# Docker 28 (iptables, --userland-proxy=false) for bridge {BRIDGE} {SUBNET}, written by cargo xtask bench\n{}",
        docker_rules::iptables_rules(BRIDGE, SUBNET, Some(&published))
    )
}

/// The same forwarding in native nftables: one table, the published ports in one map.
pub fn nftables_ruleset() -> String {
    let ctr = CONTAINER_IPS[0];
    let elements: Vec<String> = SERVICES
        .iter()
        .map(|s| {
            format!(
                "{} . {} : {ctr} . {}",
                s.proto.name(),
                s.host_port,
                s.container_port
            )
        })
        .collect();
    format!(
        "# native nftables for bridge {BRIDGE} {SUBNET}, written by cargo xtask bench
table ip npcmp {{
    map published {{
        type inet_proto . inet_service : ipv4_addr . inet_service
        elements = {{ {} }}
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local dnat ip to meta l4proto . th dport map @published
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        fib daddr type local dnat ip to meta l4proto . th dport map @published
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SUBNET} oifname != \"{BRIDGE}\" masquerade
        oifname \"{BRIDGE}\" fib saddr type local masquerade
        oifname \"{BRIDGE}\" ct status dnat ip saddr {SUBNET} masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        oifname \"{BRIDGE}\" ct status dnat accept
        iifname \"{BRIDGE}\" accept
    }}
}}
",
        elements.join(", ")
    )
}

/// /run/netns/NAME.
pub fn ns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Every namespace a comparison run makes, in all labs.
#[cfg(test)]
fn lab_namespaces() -> Vec<String> {
    PathKind::ALL
        .iter()
        .flat_map(|&kind| Names::of(kind).namespaces().map(String::from))
        .collect()
}

/// Removes what an earlier comparison run left behind (a killed run cannot clean up): every
/// lab's namespaces, netpath instance `cmp`, and the namespaces of the old one-lab layout.
/// Servers and proxies die with their run's process group; nothing else is looked for.
pub fn remove_leftovers(bin: &Path, files: &Path) -> anyhow::Result<()> {
    let mut shells: Vec<Lab> = PathKind::ALL
        .iter()
        .map(|&kind| Lab::shell(kind, Names::of(kind), bin, files))
        .collect();
    // The old layout's netpath lab ran in its host namespace: purge from there.
    shells.push(Lab::shell(PathKind::Netpath, Names::legacy(), bin, files));
    let mut clean = true;
    for mut shell in shells {
        if shell.leftovers_exist() {
            println!(
                "{TAG}: removing what an earlier comparison run left behind: {}",
                shell.names.namespaces().join(", ")
            );
            clean &= shell.teardown();
        } else {
            shell.torn_down = true;
        }
    }
    if !clean {
        bail!(
            "could not remove what an earlier comparison run left behind (see above); delete \
             the npcmp-* namespaces with `ip netns del` and run `netpath --instance {INSTANCE} \
             purge --force`, then try again"
        );
    }
    Ok(())
}

/// Where netpath instance `cmp` pins its programs and maps.
pub fn netpath_pins() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/netpath-{INSTANCE}"))
}

/// What netpath instance `cmp` may leave: pins, state, run dir, config dir, and the
/// namespaces and resolv.conf dirs it names after its endpoints.
fn netpath_paths() -> Vec<PathBuf> {
    let mut paths = vec![
        netpath_pins(),
        PathBuf::from(format!("/var/lib/netpath-{INSTANCE}")),
        PathBuf::from(format!("/run/netpath-{INSTANCE}")),
    ];
    let ctr = Names::of(PathKind::Netpath).ctr;
    let legacy = Names::legacy().ctr;
    for name in ENDPOINTS
        .iter()
        .copied()
        .chain(ctr.iter().chain(&legacy).map(String::as_str))
    {
        paths.push(PathBuf::from(format!("/etc/netns/{name}")));
        paths.push(PathBuf::from(format!("/etc/netns/{INSTANCE}-{name}")));
    }
    paths
}

/// Whether the kernel has br_netfilter (its sysctls exist in the host namespace).
fn bridge_nf_available(host_ns: &str) -> anyhow::Result<bool> {
    // /proc/sys/net follows the reader's namespace: look from inside the host namespace.
    let host = ns_path(host_ns);
    let mut probe = cmd::command(
        "nsenter",
        &[
            &format!("--net={}", host.display()),
            "test",
            "-e",
            "/proc/sys/net/bridge/bridge-nf-call-iptables",
        ],
    );
    Ok(cmd::succeeds(&mut probe))
}

/// Runs a set-up command, shown as its shell line; fails on a non-zero exit.
fn run(argv: &[&str]) -> anyhow::Result<()> {
    step(argv, true)
}

/// Runs a set-up command, shown as its shell line when `show`; fails on a non-zero exit.
fn step(argv: &[&str], show: bool) -> anyhow::Result<()> {
    check_interrupt()?;
    let (program, args) = argv.split_first().context("empty command")?;
    let mut command = cmd::command(program, args);
    if show {
        println!("$ {}", cmd::display(&command));
    }
    cmd::run_captured(&mut command)?;
    Ok(())
}

fn sysctl(ns: &str, setting: &str) -> anyhow::Result<()> {
    run(&[
        "nsenter",
        &format!("--net={}", ns_path(ns).display()),
        "sysctl",
        "-qw",
        setting,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_rules_follow_dockers_layout() {
        let rules = docker_iptables_rules();
        for line in [
            "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
            "-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER",
            "-A POSTROUTING -s 172.17.0.0/16 ! -o npcmpbr0 -j MASQUERADE",
            "-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
            "-A DOCKER -p udp -m udp --dport 15201 -j DNAT --to-destination 172.17.0.2:5201",
            "-A DOCKER-CT -o npcmpbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "-A DOCKER -d 172.17.0.2/32 ! -i npcmpbr0 -o npcmpbr0 -p tcp -m tcp --dport 11111 -j ACCEPT",
            ":FORWARD DROP [0:0]",
        ] {
            assert!(
                rules.lines().any(|l| l == line),
                "missing {line:?} in\n{rules}"
            );
        }
        assert_eq!(rules.matches("COMMIT").count(), 3);
    }

    #[test]
    fn iptables_rules_are_pinned() {
        assert_eq!(
            docker_iptables_rules(),
            include_str!("docker_rules/paths.rules")
        );
    }

    #[test]
    fn nftables_map_holds_every_published_port() {
        let ruleset = nftables_ruleset();
        assert!(
            ruleset.contains(
                "tcp . 8080 : 172.17.0.2 . 80, tcp . 15201 : 172.17.0.2 . 5201, \
                              udp . 15201 : 172.17.0.2 . 5201, tcp . 21111 : 172.17.0.2 . 11111, \
                              tcp . 17007 : 172.17.0.2 . 7007"
            ),
            "{ruleset}"
        );
    }

    #[test]
    fn every_namespace_is_prefixed_and_each_lab_has_its_own() {
        let all = lab_namespaces();
        for ns in &all {
            assert!(ns.starts_with("npcmp-"), "{ns}");
        }
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4 * PathKind::ALL.len());
        let ipt = Names::of(PathKind::Iptables);
        assert_eq!(ipt.host, "npcmp-ipt-host");
        assert_eq!(ipt.lan_ip, Ipv4Addr::new(10, 201, 3, 2));
        let lans: std::collections::HashSet<_> =
            PathKind::ALL.iter().map(|&k| Names::of(k).lan_ip).collect();
        assert_eq!(lans.len(), PathKind::ALL.len());
    }
}
