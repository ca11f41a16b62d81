//! Owns what makes one netpath instance distinct from another on the same machine: its name,
//! its state, run and pin directories, and the prefixes of the names it gives namespaces and
//! devices. An instance serves the network namespace it runs in.
use std::path::PathBuf;

use thiserror::Error;

/// Name of the instance used when neither `--instance` nor `NETPATH_INSTANCE` is given.
pub const DEFAULT_INSTANCE: &str = "default";
/// Longest instance name: it becomes part of namespace names and of `/run/netns` paths.
const MAX_NAME_LEN: usize = 12;

#[derive(Debug, Error)]
pub enum InstanceError {
    #[error(
        "invalid instance name {0:?}: use 1-{MAX_NAME_LEN} characters from a-z, 0-9, starting with a letter"
    )]
    InvalidName(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    name: String,
}

impl Instance {
    pub fn new(name: &str) -> Result<Self, InstanceError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return Err(InstanceError::InvalidName(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_INSTANCE
    }

    /// `netpath` for the default instance, `netpath-NAME` otherwise.
    fn dir_name(&self) -> String {
        if self.is_default() {
            "netpath".into()
        } else {
            format!("netpath-{}", self.name)
        }
    }

    /// The embedded store and nothing else lives here.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib").join(self.dir_name())
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir().join("state.redb")
    }

    /// Lock file and other per-boot files.
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from("/run").join(self.dir_name())
    }

    /// bpffs directory holding this instance's pinned maps, programs and links.
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(self.dir_name())
    }

    /// netpath's records about its pins (loaded version, attach mode, netlink filters): bpffs
    /// itself holds only BPF objects.
    pub fn datapath_meta_dir(&self) -> PathBuf {
        self.run_dir().join("datapath")
    }

    /// Default host config file (daemon.json-like).
    pub fn config_path(&self) -> PathBuf {
        PathBuf::from("/etc")
            .join(self.dir_name())
            .join("config.json")
    }

    /// Name under `/run/netns` of the namespace netpath creates for endpoint `endpoint`.
    pub fn netns_name(&self, endpoint: &str) -> String {
        if self.is_default() {
            endpoint.to_string()
        } else {
            format!("{}-{endpoint}", self.name)
        }
    }

    pub fn netns_path(&self, endpoint: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.netns_name(endpoint))
    }

    /// `/etc/netns/<netns name>/resolv.conf`: iproute2's convention, bind-mounted over
    /// `/etc/resolv.conf` by `ip netns exec`.
    pub fn resolv_conf_path(&self, endpoint: &str) -> PathBuf {
        PathBuf::from("/etc/netns")
            .join(self.netns_name(endpoint))
            .join("resolv.conf")
    }
}

/// Host-side veth of an endpoint attachment: `npv` + 8 hex digits of a hash of the endpoint and
/// network names (11 bytes, under the kernel's 15). Deterministic, so reconcile can find the
/// device of a record that was written just before a crash.
pub fn host_veth_name(endpoint: &str, network: &str) -> String {
    format!("npv{:08x}", fnv1a(&[endpoint, "\0", network]) as u32)
}

/// Temporary name of the container side of a veth while it is still in the host namespace:
/// the host side's name with `npp` for `npv`/`npa`.
pub fn peer_veth_name(host_veth: &str) -> String {
    format!("npp{}", host_veth.get(3..).unwrap_or(host_veth))
}

/// Host-side veth of a `netpath attach` (pipework) attachment.
pub fn attach_veth_name(netns: &str, bridge: &str) -> String {
    format!("npa{:08x}", fnv1a(&[netns, "\0", bridge]) as u32)
}

/// Bridge device of a user network: `np-` + 8 hex digits (like Docker's `br-<id>`).
pub fn bridge_name(network: &str) -> String {
    format!("np-{:08x}", fnv1a(&[network]) as u32)
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parts.iter().flat_map(|p| p.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["default", "a", "t1f2b3", "abcdefghijkl"] {
            assert!(Instance::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "A", "a-b", "abcdefghijklm", "a b", "a/b"] {
            assert!(Instance::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_instance_uses_plain_paths() {
        let i = Instance::new(DEFAULT_INSTANCE).unwrap();
        assert_eq!(i.pin_dir(), PathBuf::from("/sys/fs/bpf/netpath"));
        assert_eq!(i.netns_path("web"), PathBuf::from("/run/netns/web"));
        assert_eq!(i.store_path(), PathBuf::from("/var/lib/netpath/state.redb"));
        let t = Instance::new("t1").unwrap();
        assert_eq!(t.pin_dir(), PathBuf::from("/sys/fs/bpf/netpath-t1"));
        assert_eq!(t.netns_path("web"), PathBuf::from("/run/netns/t1-web"));
        assert_eq!(
            t.resolv_conf_path("web"),
            PathBuf::from("/etc/netns/t1-web/resolv.conf")
        );
    }

    #[test]
    fn device_names_fit_and_differ() {
        let a = host_veth_name("web", "bridge");
        let b = host_veth_name("web", "backend");
        assert_ne!(a, b);
        assert_eq!(a, host_veth_name("web", "bridge"));
        for n in [
            a,
            b,
            peer_veth_name(&host_veth_name("web", "bridge")),
            bridge_name("backend"),
        ] {
            assert!(n.len() <= 15, "{n}");
        }
    }
}
