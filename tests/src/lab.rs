//! Owns [`Lab`]: one netpath instance serving a fresh "host" namespace, plus a "LAN machine"
//! namespace on the host's uplink, and the removal of all of it (and of whatever the instance
//! made) when the test ends, however it ends.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{
    bpffs_pin_dir, find_netpath_bin,
    netns::{Netns, delete_netns, nsenter, output},
    netpath_bin, unique_name,
};

/// Uplink of the host namespace (its default route leaves by it, so netpath masquerades to it).
pub const HOST_UPLINK_DEV: &str = "up0";
/// The LAN machine's end of the uplink veth.
pub const LAN_DEV: &str = "lan0";

/// A netpath "host" and a machine on its LAN, each a network namespace.
///
/// Layout: `up0` in the host namespace `<instance>h` is a veth to `lan0` in the LAN namespace
/// `<instance>l`; both sit on a /24 of 10.0.0.0/8 derived from the instance name (host `.1`, LAN
/// `.2`); the host's default route points at the LAN machine and it forwards IPv4. netpath runs
/// in the host namespace as instance `<instance>` via `nsenter`, so its endpoint namespaces are
/// `/run/netns/<instance>-<endpoint>` and its pins `/sys/fs/bpf/netpath-<instance>`.
///
/// Dropping the lab purges the instance, removes anything it left and deletes both namespaces,
/// also when the test panicked.
#[derive(Debug)]
pub struct Lab {
    /// netpath instance name (also the prefix of every namespace of this lab).
    pub instance: String,
    /// The namespace standing for the host; netpath serves it.
    pub host: Netns,
    /// The machine on the host's LAN.
    pub lan: Netns,
    /// Address of `up0`, the host's uplink: what masqueraded traffic comes from.
    pub host_uplink_ip: Ipv4Addr,
    /// Address of the LAN machine (`lan0`), the host's default gateway.
    pub lan_ip: Ipv4Addr,
}

impl Lab {
    /// Builds the host and LAN namespaces and their link. Nothing of netpath runs yet.
    ///
    /// # Panics
    /// When any step fails (message shows the command and its stderr); what was made is removed.
    pub fn new() -> Lab {
        let instance = fresh_instance_name();
        let (host_uplink_ip, lan_ip) = lab_addresses(&instance);
        // Each namespace is guarded from the moment it exists, so a later panic removes it.
        let host = Netns::new(&format!("{instance}h"));
        let lan = Netns::new(&format!("{instance}l"));
        let lab = Lab {
            instance,
            host,
            lan,
            host_uplink_ip,
            lan_ip,
        };
        let (up, lan_addr) = (format!("{host_uplink_ip}/24"), format!("{lan_ip}/24"));
        // Created inside the host namespace with the peer placed straight into the LAN one,
        // so no device ever appears in the machine's own namespace.
        lab.host.run_ok(&[
            "ip",
            "link",
            "add",
            HOST_UPLINK_DEV,
            "type",
            "veth",
            "peer",
            "name",
            LAN_DEV,
            "netns",
            &lab.lan.name,
        ]);
        lab.host
            .run_ok(&["ip", "addr", "add", &up, "dev", HOST_UPLINK_DEV]);
        lab.host
            .run_ok(&["ip", "link", "set", HOST_UPLINK_DEV, "up"]);
        lab.lan
            .run_ok(&["ip", "addr", "add", &lan_addr, "dev", LAN_DEV]);
        lab.lan.run_ok(&["ip", "link", "set", LAN_DEV, "up"]);
        lab.host
            .run_ok(&["ip", "route", "add", "default", "via", &lan_ip.to_string()]);
        lab.host
            .run_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        lab
    }

    /// `nsenter --net=<host> netpath --instance <instance> ARGS`, whatever its exit status.
    pub fn netpath(&self, args: &[&str]) -> Output {
        output(&mut self.netpath_command(args))
    }

    fn netpath_command(&self, args: &[&str]) -> Command {
        let mut cmd = nsenter(&self.host.path, &[]);
        cmd.arg(netpath_bin())
            .args(["--instance", &self.instance])
            .args(args);
        cmd
    }

    /// Runs netpath like [`Lab::netpath`], asserts it succeeded and returns its stdout.
    ///
    /// # Panics
    /// When it failed; the message shows the command, its stdout and stderr.
    #[track_caller]
    pub fn netpath_ok(&self, args: &[&str]) -> String {
        let out = self.netpath(args);
        assert!(
            out.status.success(),
            "{}",
            self.describe(args, "failed", &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs netpath like [`Lab::netpath`], asserts it failed and returns its stderr.
    ///
    /// # Panics
    /// When it succeeded; the message shows the command and its output.
    #[track_caller]
    pub fn netpath_err(&self, args: &[&str]) -> String {
        let out = self.netpath(args);
        assert!(
            !out.status.success(),
            "{}",
            self.describe(args, "succeeded but should have failed", &out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn describe(&self, args: &[&str], what: &str, out: &Output) -> String {
        format!(
            "`nsenter --net={} netpath --instance {} {}` {what} ({})\nstdout:\n{}\nstderr:\n{}",
            self.host.path.display(),
            self.instance,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The namespace netpath gives endpoint `name`: `/run/netns/<instance>-<name>`.
    pub fn endpoint_ns(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}-{name}", self.instance))
    }

    /// This instance's bpffs pin directory (`/sys/fs/bpf/netpath-<instance>`).
    pub fn pin_dir(&self) -> PathBuf {
        bpffs_pin_dir(&self.instance)
    }

    /// The resolv.conf netpath writes for endpoint `name`:
    /// `/etc/netns/<instance>-<name>/resolv.conf` (iproute2's per-namespace convention).
    pub fn resolv_conf(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/etc/netns/{}-{name}/resolv.conf", self.instance))
    }

    /// `netpath endpoint inspect NAME` as JSON.
    pub fn endpoint_json(&self, name: &str) -> serde_json::Value {
        let out = self.netpath_ok(&["endpoint", "inspect", name]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("endpoint inspect {name}: {e}: {out}"))
    }

    /// Address of endpoint `name` on its first network.
    pub fn ip_of(&self, name: &str) -> Ipv4Addr {
        let json = self.endpoint_json(name);
        json["attachments"][0]["ip"]
            .as_str()
            .expect("an address")
            .parse()
            .expect("IPv4")
    }

    /// Address of endpoint `name` on `network`.
    pub fn ip_on(&self, name: &str, network: &str) -> Ipv4Addr {
        let json = self.endpoint_json(name);
        let att = json["attachments"]
            .as_array()
            .expect("attachments")
            .iter()
            .find(|a| a["network"] == network)
            .unwrap_or_else(|| panic!("{name} is not on {network}: {json}"));
        att["ip"]
            .as_str()
            .expect("an address")
            .parse()
            .expect("IPv4")
    }

    /// Value of one counter or drop reason in `netpath stats`.
    pub fn stat(&self, counter: &str) -> u64 {
        let out = self.netpath_ok(&["stats"]);
        out.lines()
            .find_map(|l| {
                let mut parts = l.split_whitespace();
                (parts.next() == Some(counter)).then(|| parts.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no counter {counter} in:\n{out}"))
    }

    /// Everything outside the two lab namespaces that this instance may leave behind.
    fn instance_leftovers(&self) -> Vec<PathBuf> {
        let prefix = format!("{}-", self.instance);
        let mut paths = Vec::new();
        for dir in ["/run/netns", "/etc/netns"] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                paths.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                        .map(|e| e.path()),
                );
            }
        }
        paths.extend([
            self.pin_dir(),
            PathBuf::from(format!("/var/lib/netpath-{}", self.instance)),
            PathBuf::from(format!("/run/netpath-{}", self.instance)),
        ]);
        paths.retain(|p| p.exists());
        paths
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    /// Never panics (it may run while a test unwinds): failures are printed to stderr.
    fn drop(&mut self) {
        // 1. Let netpath remove what it knows about, if the instance ever ran. Tolerate a
        // missing binary (the harness's own tests run before netpath exists) and a failing
        // purge (the sweep below follows).
        let ran = [
            self.pin_dir(),
            PathBuf::from(format!("/var/lib/netpath-{}", self.instance)),
            PathBuf::from(format!("/run/netpath-{}", self.instance)),
        ]
        .iter()
        .any(|p| p.exists());
        if let Some(bin) = find_netpath_bin().filter(|_| ran) {
            let mut purge = nsenter(&self.host.path, &[]);
            purge
                .arg(bin)
                .args(["--instance", &self.instance, "purge", "--force"]);
            match purge.output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "netpath-tests: clean-up: `netpath --instance {} purge --force` failed: {}",
                    self.instance,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("netpath-tests: clean-up: cannot run netpath purge: {e}"),
            }
        }
        // 2. Sweep what is left: endpoint namespaces first, then files and directories.
        for path in self.instance_leftovers() {
            if path.starts_with("/run/netns") {
                delete_netns(&path.file_name().unwrap_or_default().to_string_lossy());
            } else if let Err(e) = remove(&path) {
                eprintln!(
                    "netpath-tests: clean-up: cannot remove {}: {e}",
                    path.display()
                );
            }
        }
        // 3. The host and LAN namespaces go when the `Netns` fields drop, after this.
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// A unique instance name none of whose namespaces or directories exist yet (a leftover of a
/// crashed run, or a process whose id shares its low 16 bits with ours, is skipped).
fn fresh_instance_name() -> String {
    for _ in 0..100 {
        let name = unique_name("t");
        let taken = [format!("/run/netns/{name}h"), format!("/run/netns/{name}l")]
            .iter()
            .map(PathBuf::from)
            .chain([
                bpffs_pin_dir(&name),
                PathBuf::from(format!("/var/lib/netpath-{name}")),
            ])
            .any(|p| p.exists());
        if !taken {
            return name;
        }
    }
    panic!(
        "no free lab name after 100 tries: remove leftover /run/netns/t* namespaces of crashed runs"
    );
}

/// The uplink /24 of a lab: 10.X.Y.0/24 with X in 1..=199 (never 10.0.0.0/24, and below the
/// 10.200+ subnets tests give their own networks), from a hash of the instance name.
/// Returns (host `.1`, LAN machine `.2`).
fn lab_addresses(instance: &str) -> (Ipv4Addr, Ipv4Addr) {
    let h = instance.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let x = 1 + (h % 199) as u8;
    let y = (h >> 32) as u8;
    (Ipv4Addr::new(10, x, y, 1), Ipv4Addr::new(10, x, y, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_addresses_stay_in_their_range() {
        for i in 0..2000 {
            let (host, lan) = lab_addresses(&format!("t{i:x}"));
            let [a, x, y, d] = host.octets();
            assert_eq!((a, d), (10, 1));
            assert!((1..=199).contains(&x), "{host}");
            assert_eq!(lan, Ipv4Addr::new(10, x, y, 2));
        }
        assert_ne!(lab_addresses("t00010a"), lab_addresses("t00010b"));
    }
}
