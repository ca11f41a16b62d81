//! Owns the memory part of the benchmark (issue 6): what 500 published UDP ports cost, each side
//! in a fresh lab of its own. netpath: one `publish -f` of 500 UDP mappings in the netpath lab,
//! then the netpath processes left (there should be none) and their RSS, and, separately, the
//! kernel memory of the pinned BPF maps (`bytes_memlock` from `bpftool map show`). A userspace
//! proxy per port like docker-proxy: 500 `socat` processes in namespaces `npipt-mhost` (the
//! host) and `npipt-mctr` (the container), their count and summed VmRSS and Pss. Only the socat
//! processes this module started (and their forks) are ended, by PID.
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{
    Facts,
    lab::{ENDPOINT, INSTANCE, Lab, Stdout, check_interrupt, replay_line, run_steps},
    report::{Row, Verdict},
    row,
    scale_iptables::{Namespaces, enter_on_exec, ns_path},
    section,
};
use crate::{TAG, cmd, netns};

/// Published UDP ports on each side.
const PORTS: u16 = 500;
/// Host ports 21000..21499 -> the endpoint's ports 5000..5499.
const FIRST_HOST_PORT: u16 = 21000;
const FIRST_CTR_PORT: u16 = 5000;
/// Target of issue 6 for netpath's extra user-space memory.
const USER_MEMORY_TARGET_MIB: f64 = 5.0;
const HOST_NS: &str = "npipt-mhost";
const CTR_NS: &str = "npipt-mctr";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 1, 1);
const CTR_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 1, 2);
/// How long the proxies get to bind their ports.
const BIND_WAIT: Duration = Duration::from_secs(15);

/// What the memory part found.
pub struct Found {
    pub rows: Vec<Row>,
    pub facts: Facts,
    pub verdicts: Vec<Verdict>,
}

/// Both sides, netpath first; `bin` is the release netpath binary.
pub fn measure(bin: &Path, out_dir: &Path) -> anyhow::Result<Found> {
    let mut found = Found {
        rows: Vec::new(),
        facts: Facts::new(),
        verdicts: Vec::new(),
    };
    section(&format!(
        "7. Memory of {PORTS} published UDP ports: netpath (a fresh netpath lab)"
    ));
    netpath_side(bin, out_dir, &mut found)?;
    check_interrupt()?;
    section(&format!(
        "8. Memory of {PORTS} published UDP ports: one socat per port, like docker-proxy \
         (namespaces {HOST_NS}, {CTR_NS})"
    ));
    proxy_side(&mut found)?;
    Ok(found)
}

/// The `publish -f` file: `21000:web:5000/udp` …
fn mapping_file(out_dir: &Path) -> anyhow::Result<String> {
    let path = out_dir.join("mappings-udp-500.txt");
    let mut text = format!("# cargo xtask bench: {PORTS} UDP mappings -> {ENDPOINT}\n");
    for i in 0..PORTS {
        text.push_str(&format!(
            "{}:{ENDPOINT}:{}/udp\n",
            FIRST_HOST_PORT + i,
            FIRST_CTR_PORT + i
        ));
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.display().to_string())
}

fn netpath_side(bin: &Path, out_dir: &Path, found: &mut Found) -> anyhow::Result<()> {
    let file = mapping_file(out_dir)?;
    let mut lab = Lab::create(bin)?;
    let measured = (|| -> anyhow::Result<(usize, u64, MapMemlock)> {
        println!("$ {}", replay_line(&["publish", "-f", &file]));
        lab.netpath(&["publish", "-f", &file], Stdout::Discard)?;
        let listed = lab.netpath(&["port", ENDPOINT], Stdout::Keep)?;
        let udp = listed
            .stdout
            .lines()
            .filter(|l| l.contains("/udp ->"))
            .count();
        if udp != usize::from(PORTS) {
            bail!(
                "`publish -f` of {PORTS} UDP mappings returned, but `netpath port {ENDPOINT}` lists {udp}"
            );
        }
        let pids = pids_of_exe(lab.bin())?;
        let rss_kib = pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum();
        let maps =
            pinned_map_memlock(&Path::new("/sys/fs/bpf").join(format!("netpath-{INSTANCE}")))?;
        Ok((pids.len(), rss_kib, maps))
    })();
    println!("\n# Clean-up: netpath purge --force, the namespaces deleted");
    let clean = lab.teardown();
    let (processes, rss_kib, maps) = measured?;
    if !clean {
        bail!("the netpath memory part ran, but clean-up left something behind (see above)");
    }
    let memlock: u64 = maps.iter().map(|(_, b)| b).sum();
    let ports_map = maps
        .iter()
        .find(|(name, _)| name.starts_with("NP_PORTS"))
        .map(|(_, b)| *b);
    println!(
        "  netpath: {processes} processes left, {:.1} MiB RSS; pinned BPF maps {:.1} MiB memlock \
         ({} maps{})",
        rss_kib as f64 / 1024.0,
        memlock as f64 / 1048576.0,
        maps.len(),
        ports_map.map_or(String::new(), |b| format!(
            ", NP_PORTS {:.1} MiB",
            b as f64 / 1048576.0
        ))
    );
    found.rows.push(row(
        "mem_netpath_processes",
        format!("netpath: processes left running for {PORTS} UDP ports"),
        "processes",
        &[processes as f64],
        "processes running the netpath binary after `publish -f` returned",
    )?);
    found.rows.push(row(
        "mem_netpath_user_mib",
        format!("netpath: extra user-space memory for {PORTS} UDP ports"),
        "MiB",
        &[rss_kib as f64 / 1024.0],
        "sum of VmRSS of the netpath processes left",
    )?);
    found.rows.push(row(
        "mem_netpath_bpf_memlock_mib",
        "netpath: kernel memory of its pinned BPF maps (whole datapath)".into(),
        "MiB",
        &[memlock as f64 / 1048576.0],
        "kernel, not user-space: sum of bytes_memlock (`bpftool map show`); \
         preallocated at load, the same with 0 or 500 ports",
    )?);
    found.facts.push((
        "netpath_bpf_maps_memlock_bytes",
        "netpath's pinned BPF maps, bytes_memlock each".into(),
        json!(
            maps.iter()
                .map(|(n, b)| (n.clone(), json!(b)))
                .collect::<serde_json::Map<_, _>>()
        ),
    ));
    found.verdicts.push(Verdict {
        key: "udp500_no_extra_process",
        target: format!("netpath: 0 extra processes for {PORTS} published UDP ports"),
        measured: format!("{processes} processes"),
        met: processes == 0,
    });
    found.verdicts.push(Verdict {
        key: "udp500_user_memory_under_5mb",
        target: format!(
            "netpath: < {USER_MEMORY_TARGET_MIB} MB extra user-space memory for {PORTS} UDP ports"
        ),
        measured: format!("{:.1} MiB", rss_kib as f64 / 1024.0),
        met: (rss_kib as f64 / 1024.0) < USER_MEMORY_TARGET_MIB,
    });
    Ok(())
}

/// PIDs whose executable is `bin`.
fn pids_of_exe(bin: &Path) -> anyhow::Result<Vec<u32>> {
    let bin = bin
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", bin.display()))?;
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe == bin) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// A `KEY:  N kB` line of /proc/PID/status or smaps_rollup, in KiB; 0 when the process is gone.
fn proc_kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|text| parse_kib(&text, key))
        .unwrap_or(0)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    proc_kib(pid, "status", key)
}

fn parse_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (name, bytes_memlock) of BPF maps.
type MapMemlock = Vec<(String, u64)>;

/// (name, bytes_memlock) of every BPF map pinned under `dir`, from `bpftool -j map show pinned`.
fn pinned_map_memlock(dir: &Path) -> anyhow::Result<MapMemlock> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| {
            format!(
                "cannot list the pins in {}; is the datapath loaded?",
                d.display()
            )
        })? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.push(path);
            }
        }
    }
    let mut maps: Vec<(u64, String, u64)> = Vec::new();
    for file in files {
        let path = file.display().to_string();
        // Programs and links are pinned there too: `map show` refuses them.
        let Ok(out) = cmd::output(&mut cmd::command(
            "bpftool",
            &["-j", "map", "show", "pinned", &path],
        )) else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            continue;
        };
        if let (Some(id), Some(bytes)) = (v["id"].as_u64(), v["bytes_memlock"].as_u64()) {
            let name = v["name"].as_str().unwrap_or("?").to_string();
            if !maps.iter().any(|(i, _, _)| *i == id) {
                maps.push((id, name, bytes));
            }
        }
    }
    if maps.is_empty() {
        bail!(
            "no BPF map pinned under {} answered `bpftool map show pinned`; run `cargo xtask setup` (bpftool)",
            dir.display()
        );
    }
    maps.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(maps.into_iter().map(|(_, n, b)| (n, b)).collect())
}

/// The socat processes of the proxy side. Dropping it ends them (and any fork of theirs) by
/// PID and reaps them.
struct Proxies {
    children: Vec<Child>,
}

impl Proxies {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    fn stop(&mut self) {
        // Forks handling a datagram first, then the listeners themselves.
        for pid in self.pids() {
            for fork in children_of(pid) {
                // SAFETY: plain kill(2) of a process a socat this benchmark started forked.
                unsafe { libc::kill(fork as libc::pid_t, libc::SIGKILL) };
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The children of `pid` (all its threads), from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn proxy_side(found: &mut Found) -> anyhow::Result<()> {
    let mut namespaces = Namespaces::create(&[HOST_NS, CTR_NS])?;
    let measured = proxy_measure();
    println!("\n# Clean-up: the socat processes ended by PID, the namespaces deleted");
    let clean = namespaces.delete();
    let (processes, rss_kib, pss_kib, forwarded) = measured?;
    if !clean {
        bail!("the proxy memory part ran, but clean-up left a namespace behind (see above)");
    }
    found.rows.push(row(
        "mem_proxy_processes",
        format!("socat per port: processes for {PORTS} UDP ports"),
        "processes",
        &[processes as f64],
        "one `socat UDP4-RECVFROM:PORT,fork UDP4-SENDTO:CTR:PORT` per port, as Docker starts \
         one docker-proxy per published port and protocol",
    )?);
    found.rows.push(row(
        "mem_proxy_rss_mib",
        format!("socat per port: user-space memory for {PORTS} UDP ports (RSS)"),
        "MiB",
        &[rss_kib as f64 / 1024.0],
        "sum of VmRSS (/proc/PID/status); counts shared library pages once per process",
    )?);
    found.rows.push(row(
        "mem_proxy_pss_mib",
        format!("socat per port: user-space memory for {PORTS} UDP ports (PSS)"),
        "MiB",
        &[pss_kib as f64 / 1024.0],
        "sum of Pss (/proc/PID/smaps_rollup): shared pages split between the processes",
    )?);
    found.facts.push((
        "proxy_forwarded_a_datagram",
        "a datagram to the first proxied port reached the container through socat".into(),
        json!(forwarded),
    ));
    Ok(())
}

/// Starts the proxies, waits until all are bound, measures, checks one forwards, stops them.
fn proxy_measure() -> anyhow::Result<(usize, u64, u64, bool)> {
    let (host, ctr) = (
        format!("--net={}", ns_path(HOST_NS).display()),
        format!("--net={}", ns_path(CTR_NS).display()),
    );
    let (host_addr, ctr_addr) = (format!("{HOST_IP}/24"), format!("{CTR_IP}/24"));
    let steps: &[&[&str]] = &[
        &["nsenter", &host, "ip", "link", "set", "lo", "up"],
        &["nsenter", &ctr, "ip", "link", "set", "lo", "up"],
        &[
            "nsenter", &host, "ip", "link", "add", "vethmem0", "type", "veth", "peer", "name",
            "eth0", "netns", CTR_NS,
        ],
        &[
            "nsenter", &host, "ip", "addr", "add", &host_addr, "dev", "vethmem0",
        ],
        &["nsenter", &host, "ip", "link", "set", "vethmem0", "up"],
        &[
            "nsenter", &ctr, "ip", "addr", "add", &ctr_addr, "dev", "eth0",
        ],
        &["nsenter", &ctr, "ip", "link", "set", "eth0", "up"],
    ];
    run_steps(steps)?;
    println!(
        "$ nsenter {host} socat -T 1 UDP4-RECVFROM:PORT,fork UDP4-SENDTO:{CTR_IP}:CPORT &    \
         # {PORTS} of them, PORT {FIRST_HOST_PORT}..{}",
        FIRST_HOST_PORT + PORTS - 1
    );
    let mut proxies = Proxies {
        children: Vec::new(),
    };
    for i in 0..PORTS {
        check_interrupt()?;
        let listen = format!("UDP4-RECVFROM:{},fork", FIRST_HOST_PORT + i);
        let send = format!("UDP4-SENDTO:{CTR_IP}:{}", FIRST_CTR_PORT + i);
        let mut command = cmd::command("socat", &["-T", "1", &listen, &send]);
        enter_on_exec(&mut command, HOST_NS)?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().context(
            "could not start socat; run `cargo xtask setup` (it installs Debian's socat)",
        )?;
        proxies.children.push(child);
    }
    let deadline = Instant::now() + BIND_WAIT;
    loop {
        let bound = bound_udp_ports(&ns_path(HOST_NS))?;
        if bound >= usize::from(PORTS) {
            break;
        }
        for child in &mut proxies.children {
            if let Some(status) = child.try_wait()? {
                bail!("a socat proxy exited ({status}) before binding its port; try `socat -V`");
            }
        }
        if Instant::now() > deadline {
            bail!("only {bound} of {PORTS} socat proxies bound their port within {BIND_WAIT:?}");
        }
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let pids = proxies.pids();
    let alive = pids
        .iter()
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .count();
    let rss: u64 = pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum();
    let pss: u64 = pids
        .iter()
        .map(|p| proc_kib(*p, "smaps_rollup", "Pss:"))
        .sum();
    println!(
        "  socat: {alive} processes, {:.1} MiB summed VmRSS, {:.1} MiB summed Pss",
        rss as f64 / 1024.0,
        pss as f64 / 1024.0
    );
    let forwarded = forwards_one().unwrap_or_else(|e| {
        eprintln!("{TAG}: the proxy check failed: {e:#}");
        false
    });
    proxies.stop();
    Ok((alive, rss, pss, forwarded))
}

/// UDP sockets bound in the proxy port range in the namespace at `ns`.
fn bound_udp_ports(ns: &Path) -> anyhow::Result<usize> {
    let text = netns::in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/udp"))??;
    Ok(count_bound(
        &text,
        FIRST_HOST_PORT,
        FIRST_HOST_PORT + PORTS - 1,
    ))
}

/// Lines of /proc/net/udp whose local port lies in `first..=last`.
fn count_bound(text: &str, first: u16, last: u16) -> usize {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| local.split_once(':'))
        .filter_map(|(_, port)| u16::from_str_radix(port, 16).ok())
        .filter(|p| (first..=last).contains(p))
        .count()
}

/// Sends one datagram from the host namespace to the first proxied port and waits for it in
/// the container.
fn forwards_one() -> anyhow::Result<bool> {
    let receiver = netns::in_netns(&ns_path(CTR_NS), || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, FIRST_CTR_PORT))
    })??;
    receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
    let sender = netns::in_netns(&ns_path(HOST_NS), || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    })??;
    sender.send_to(
        b"through socat",
        SocketAddrV4::new(HOST_IP, FIRST_HOST_PORT),
    )?;
    let mut buf = [0u8; 64];
    Ok(matches!(receiver.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"through socat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_figures_are_read_by_key() {
        let status = "Name:\tsocat\nVmHWM:\t    2400 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_kib(status, "VmRSS:"), Some(2048));
        assert_eq!(parse_kib(status, "Pss:"), None);
        let udp = "  sl  local_address rem_address   st\n\
                   0: 00000000:5208 00000000:0000 07\n\
                   1: 00000000:53FB 00000000:0000 07\n\
                   2: 00000000:0035 00000000:0000 07\n";
        // 0x5208 = 21000, 0x53FB = 21499: both in range; 53 is not.
        assert_eq!(count_bound(udp, 21000, 21499), 2);
    }
}
