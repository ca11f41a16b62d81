//! Owns `cargo xtask run`: with arguments it runs `netpath ARGS`; without, the demo: a "host"
//! namespace with an uplink to a "LAN machine" namespace, two endpoints on the default network,
//! real traffic between them and out through masquerade, the counters and the conntrack map,
//! then a clean-up that also runs on failure and Ctrl-C. Every step is printed as the command
//! that replays it, followed by its real output.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddrV4},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    TAG, cmd,
    netns::{self, EchoReport},
};

const HOST_NS: &str = "npdemo-host";
const LAN_NS: &str = "npdemo-lan";
const INSTANCE: &str = "demo";
const UPLINK: &str = "up0";
const LAN_DEV: &str = "lan0";
const HOST_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const LAN_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const ENDPOINTS: [&str; 2] = ["web", "db"];

/// Set by SIGINT/SIGTERM: the demo stops at the next step and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Replaces this process with `netpath ARGS`, so its exit code is ours.
pub fn exec_netpath(bin: &Path, args: &[String]) -> anyhow::Result<ExitCode> {
    let err = Command::new(bin).args(args).exec();
    Err(anyhow!("could not run {}: {err}", bin.display()))
}

/// Runs the demo; any failure is printed with the failing command's output, after clean-up.
pub fn demo(bin: &Path) -> anyhow::Result<ExitCode> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut lab = DemoLab {
        bin: bin.to_path_buf(),
        torn_down: false,
    };
    if lab.leftovers_exist() {
        println!("{TAG}: removing what an earlier demo left behind");
        lab.teardown(false);
    }
    lab.torn_down = false;
    let result = steps(&mut lab);
    if let Err(e) = &result {
        // The failure first, then the clean-up: the reader sees what went wrong where it happened.
        eprintln!("\n{TAG}: error: {e:#}");
        println!("{TAG}: the demo stopped; cleaning up");
    }
    // Clean-up runs here on success and failure alike (and from Drop on a panic).
    let teardown_ok = lab.teardown(result.is_ok());
    if result.is_err() {
        return Ok(ExitCode::FAILURE);
    }
    if !teardown_ok {
        bail!("the demo ran, but clean-up left something behind (see the messages above)");
    }
    println!("\nnetpath demo: done; everything it made is gone.");
    Ok(ExitCode::SUCCESS)
}

fn steps(lab: &mut DemoLab) -> anyhow::Result<()> {
    println!("netpath demo: Docker-style bridge networking on an eBPF datapath.");
    println!("Each step shows the command that replays it, then its output.");

    section("A namespace standing for the host, and a machine on its LAN");
    lab.shell(&["ip", "netns", "add", HOST_NS])?;
    lab.shell(&["ip", "netns", "add", LAN_NS])?;
    let host = |args: &[&str]| {
        [
            &["nsenter", &format!("--net=/run/netns/{HOST_NS}")][..],
            args,
        ]
        .concat()
        .join(" ")
    };
    let lan = |args: &[&str]| {
        [
            &["nsenter", &format!("--net=/run/netns/{LAN_NS}")][..],
            args,
        ]
        .concat()
        .join(" ")
    };
    let up = format!("{HOST_UPLINK_IP}/24");
    let lan_addr = format!("{LAN_IP}/24");
    let lan_ip = LAN_IP.to_string();
    for line in [
        host(&["ip", "link", "set", "lo", "up"]),
        host(&[
            "ip", "link", "add", UPLINK, "type", "veth", "peer", "name", LAN_DEV, "netns", LAN_NS,
        ]),
        host(&["ip", "addr", "add", &up, "dev", UPLINK]),
        host(&["ip", "link", "set", UPLINK, "up"]),
        host(&["ip", "route", "add", "default", "via", &lan_ip]),
        host(&["sysctl", "-w", "net.ipv4.ip_forward=1"]),
        lan(&["ip", "link", "set", "lo", "up"]),
        lan(&["ip", "addr", "add", &lan_addr, "dev", LAN_DEV]),
        lan(&["ip", "link", "set", LAN_DEV, "up"]),
    ] {
        lab.shell(&line.split(' ').collect::<Vec<_>>())?;
    }

    section("Two endpoints on the default network `bridge` (172.17.0.0/16 on np0)");
    lab.netpath(&["endpoint", "create", "web"])?;
    lab.netpath(&["endpoint", "create", "db"])?;
    lab.netpath(&["endpoint", "ls"])?;
    lab.netpath(&["network", "inspect", "bridge"])?;
    let web_ip = lab.endpoint_ip("web")?;
    let db_ip = lab.endpoint_ip("db")?;
    let (web_ns, db_ns) = (endpoint_ns("web"), endpoint_ns("db"));

    section("Endpoint to endpoint: ICMP, then TCP (an echo server in db, a client in web)");
    lab.shell(&[
        "nsenter",
        &format!("--net={}", web_ns.display()),
        "ping",
        "-c",
        "3",
        &db_ip.to_string(),
    ])?;
    let to_db = SocketAddrV4::new(db_ip, 7000);
    let report = lab.echo(&db_ns, to_db, &web_ns, b"hello db, this is web")?;
    if report.seen_by_server.ip() != IpAddr::V4(web_ip) {
        bail!(
            "db saw the connection come from {}, not from web's address {web_ip}",
            report.seen_by_server
        );
    }

    section("Out to the LAN: the endpoint's address is masqueraded as the host's uplink address");
    lab.shell(&[
        "nsenter",
        &format!("--net={}", web_ns.display()),
        "ping",
        "-c",
        "3",
        &lan_ip,
    ])?;
    let lan_ns = PathBuf::from(format!("/run/netns/{LAN_NS}"));
    let report = lab.echo(
        &lan_ns,
        SocketAddrV4::new(LAN_IP, 8080),
        &web_ns,
        b"hello LAN, this is web",
    )?;
    if report.seen_by_server.ip() != IpAddr::V4(HOST_UPLINK_IP) {
        bail!(
            "the LAN machine saw the connection come from {}, not from the host's uplink address \
             {HOST_UPLINK_IP}: masquerade did not happen",
            report.seen_by_server
        );
    }
    println!(
        "# the LAN machine saw {} (the host), not web's own {}: masqueraded",
        report.seen_by_server, report.client
    );

    section("A published port: web's port 80 on the host's port 8080, no proxy process");
    lab.netpath(&["publish", "8080:web:80"])?;
    lab.netpath(&["port", "web"])?;
    let web_server = SocketAddrV4::new(web_ip, 80);
    let report = lab.echo_via(
        &web_ns,
        web_server,
        &lan_ns,
        SocketAddrV4::new(HOST_UPLINK_IP, 8080),
        b"hello web, this is the LAN",
    )?;
    if report.seen_by_server.ip() != IpAddr::V4(LAN_IP) {
        bail!(
            "web saw the connection come from {}, not from the LAN machine {LAN_IP}",
            report.seen_by_server
        );
    }
    println!(
        "# web saw the LAN machine's own address {}: no proxy in between",
        report.seen_by_server
    );
    let host_ns = PathBuf::from(format!("/run/netns/{HOST_NS}"));
    lab.echo_via(
        &web_ns,
        web_server,
        &host_ns,
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080),
        b"hello web, this is the host",
    )?;
    println!(
        "# a host process reached it on 127.0.0.1:8080: translated at connect() by a cgroup program"
    );

    section("What the datapath did");
    lab.netpath(&["stats"])?;
    lab.netpath(&["status"])?;
    let ct = format!("/sys/fs/bpf/netpath-{INSTANCE}/NP_CT");
    lab.shell(&["bpftool", "map", "dump", "pinned", &ct])?;

    section("Clean-up");
    let mut rm = vec!["endpoint", "rm"];
    rm.extend(ENDPOINTS);
    lab.netpath(&rm)?;
    lab.netpath(&["purge", "--force"])?;
    lab.shell(&["ip", "netns", "del", HOST_NS])?;
    lab.shell(&["ip", "netns", "del", LAN_NS])?;
    Ok(())
}

fn section(title: &str) {
    println!("\n# {title}");
}

/// The namespace netpath gives endpoint `name` of instance `demo`.
fn endpoint_ns(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{INSTANCE}-{name}"))
}

/// The demo's namespaces and netpath instance; [`DemoLab::teardown`] removes all of it, and
/// `Drop` does so too if a panic skips the normal path.
struct DemoLab {
    bin: PathBuf,
    torn_down: bool,
}

impl DemoLab {
    /// Echoes `$ COMMAND`, runs it and prints its output; fails with its output shown.
    fn shell(&self, argv: &[&str]) -> anyhow::Result<String> {
        self.check_interrupt()?;
        let (program, args) = argv.split_first().context("empty command")?;
        println!("$ {}", argv.join(" "));
        let mut command = cmd::command(program, args);
        self.show(&mut command)
    }

    /// Runs `netpath --instance demo ARGS` in the host namespace, echoed as a reader would
    /// type it.
    fn netpath(&self, args: &[&str]) -> anyhow::Result<String> {
        self.check_interrupt()?;
        println!(
            "$ nsenter --net=/run/netns/{HOST_NS} netpath --instance {INSTANCE} {}",
            args.join(" ")
        );
        self.show(&mut self.netpath_command(args))
    }

    fn netpath_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{HOST_NS}"))
            .arg(&self.bin)
            .args(["--instance", INSTANCE])
            .args(args);
        command
    }

    fn show(&self, command: &mut Command) -> anyhow::Result<String> {
        let out = cmd::output(command)?;
        // Ctrl-C reaches the running command too; say so rather than "killed by signal 2".
        self.check_interrupt()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        if !out.status.success() {
            return Err(cmd::failure(command, out.status, &out));
        }
        // Warnings on stderr are part of what the step shows.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        Ok(stdout)
    }

    fn check_interrupt(&self) -> anyhow::Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted (Ctrl-C or SIGTERM)");
        }
        Ok(())
    }

    /// The address of `name` on its first network, from `netpath endpoint inspect`.
    fn endpoint_ip(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        let json = self.netpath(&["endpoint", "inspect", name])?;
        let value: serde_json::Value = serde_json::from_str(&json)
            .with_context(|| format!("`netpath endpoint inspect {name}` did not print JSON"))?;
        // One object, or a list of them (inspect takes several names).
        let endpoint = if value.is_array() { &value[0] } else { &value };
        let ip = endpoint["attachments"][0]["ip"].as_str().with_context(|| {
            format!("`netpath endpoint inspect {name}` shows no attachments[0].ip")
        })?;
        ip.parse()
            .with_context(|| format!("endpoint {name} has address {ip:?}, not an IPv4 address"))
    }

    /// One TCP echo exchange from `client_ns` to a server on `server` in `server_ns`, printed.
    fn echo(
        &self,
        server_ns: &Path,
        server: SocketAddrV4,
        client_ns: &Path,
        payload: &[u8],
    ) -> anyhow::Result<EchoReport> {
        self.echo_via(server_ns, server, client_ns, server, payload)
    }

    /// Like [`Self::echo`], but the client dials `dial` (a published port) instead.
    fn echo_via(
        &self,
        server_ns: &Path,
        server: SocketAddrV4,
        client_ns: &Path,
        dial: SocketAddrV4,
        payload: &[u8],
    ) -> anyhow::Result<EchoReport> {
        self.check_interrupt()?;
        println!(
            "# TCP (Rust sockets): an echo server on {server} in {}, a client in {} dialling {dial}",
            server_ns.display(),
            client_ns.display()
        );
        let report = netns::tcp_echo_once(server_ns, server, client_ns, dial, payload)
            .with_context(|| format!("TCP echo from {} to {dial} failed", client_ns.display()))?;
        if report.echoed != payload {
            bail!(
                "sent {:?} to {server} but got back {:?}",
                show_bytes(payload),
                show_bytes(&report.echoed)
            );
        }
        println!(
            "client {} -> {dial}: sent {:?}",
            report.client,
            show_bytes(payload)
        );
        println!(
            "server {server} accepted a connection from {}",
            report.seen_by_server
        );
        println!(
            "client {} <- {dial}: got back {:?}",
            report.client,
            show_bytes(&report.echoed)
        );
        Ok(report)
    }

    /// Whether anything with the demo's names exists (namespaces or instance directories).
    fn leftovers_exist(&self) -> bool {
        instance_paths()
            .iter()
            .chain(&lab_namespaces())
            .any(|p| p.exists())
    }

    /// Removes everything the demo may have made; `echo` prints the steps (the normal path).
    /// Returns whether everything is gone. Safe to call when nothing or only part exists.
    fn teardown(&mut self, echo: bool) -> bool {
        self.torn_down = true;
        let host_ns = Path::new("/run/netns").join(HOST_NS);
        if host_ns.exists() && self.bin.exists() {
            // netpath runs only inside the demo's host namespace, never in the machine's own.
            let mut purge = self.netpath_command(&["purge", "--force"]);
            cmd::report_cleanup(&mut purge);
        }
        for path in instance_paths().into_iter().filter(|p| p.exists()) {
            cmd::remove_leftover(&path);
        }
        for path in lab_namespaces().into_iter().filter(|p| p.exists()) {
            let mut del = cmd::netns_del(&path);
            if echo {
                println!("$ {}", cmd::display(&del));
            }
            cmd::report_cleanup(&mut del);
        }
        cmd::all_removed(instance_paths().into_iter().chain(lab_namespaces()))
    }
}

impl Drop for DemoLab {
    fn drop(&mut self) {
        if !self.torn_down {
            self.teardown(false);
        }
    }
}

/// What instance `demo` may leave: endpoint namespaces, resolv.conf dirs, pins, state, run dir.
fn instance_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = ENDPOINTS.iter().map(|e| endpoint_ns(e)).collect();
    paths.extend(
        ENDPOINTS
            .iter()
            .map(|e| PathBuf::from(format!("/etc/netns/{INSTANCE}-{e}"))),
    );
    paths.extend([
        PathBuf::from(format!("/sys/fs/bpf/netpath-{INSTANCE}")),
        PathBuf::from(format!("/var/lib/netpath-{INSTANCE}")),
        PathBuf::from(format!("/run/netpath-{INSTANCE}")),
    ]);
    paths
}

fn lab_namespaces() -> Vec<PathBuf> {
    [HOST_NS, LAN_NS]
        .iter()
        .map(|n| Path::new("/run/netns").join(n))
        .collect()
}

/// Bytes as text when they are text (the demo sends text).
fn show_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
