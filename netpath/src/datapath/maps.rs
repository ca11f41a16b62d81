//! Owns reading and writing the pinned BPF maps from user space, in the types of
//! `netpath-common`. Every write the control plane makes to the datapath goes through here.
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use netpath_common::{
    AddrKey, ConntrackEntry, DatapathConfig, EndpointEntry, FlowKey, NatEntry, NetworkEntry,
    PortKey, PublishedPort, UplinkEntry, counter, drop_reason, map_name,
};

use super::{DatapathError, Result};

fn open(dir: &Path, name: &str) -> Result<Map> {
    let md = MapData::from_pin(dir.join(name)).map_err(|e| DatapathError::Map(name.into(), e))?;
    Map::from_map_data(md).map_err(|e| DatapathError::Map(name.into(), e))
}

fn hash<K: aya::Pod, V: aya::Pod>(dir: &Path, name: &str) -> Result<HashMap<MapData, K, V>> {
    HashMap::try_from(open(dir, name)?).map_err(|e| DatapathError::Map(name.into(), e))
}

/// Counters as (name, value) pairs.
pub type Counters = Vec<(&'static str, u64)>;

fn map_err(name: &str) -> impl FnOnce(MapError) -> DatapathError {
    let name = name.to_string();
    move |e| DatapathError::Map(name, e)
}

/// True when a map error only says the key was not there.
fn is_missing_key(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

/// Handles to an instance's pinned maps.
pub struct Maps {
    endpoints: HashMap<MapData, u32, EndpointEntry>,
    ep_by_addr: HashMap<MapData, AddrKey, EndpointEntry>,
    networks: HashMap<MapData, u32, NetworkEntry>,
    uplinks: HashMap<MapData, u32, UplinkEntry>,
    conntrack: HashMap<MapData, FlowKey, ConntrackEntry>,
    nat: HashMap<MapData, FlowKey, NatEntry>,
    ports: HashMap<MapData, PortKey, PublishedPort>,
    config: Array<MapData, DatapathConfig>,
    dir: std::path::PathBuf,
}

impl Maps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let config = open(pin_dir, map_name::CONFIG)?;
        Ok(Self {
            endpoints: hash(pin_dir, map_name::ENDPOINTS)?,
            ep_by_addr: hash(pin_dir, map_name::EP_BY_ADDR)?,
            networks: hash(pin_dir, map_name::NETWORKS)?,
            uplinks: hash(pin_dir, map_name::UPLINKS)?,
            conntrack: hash(pin_dir, map_name::CONNTRACK)?,
            nat: hash(pin_dir, map_name::NAT)?,
            ports: hash(pin_dir, map_name::PORTS)?,
            config: Array::try_from(config).map_err(map_err(map_name::CONFIG))?,
            dir: pin_dir.to_path_buf(),
        })
    }

    /// Installs an endpoint attachment: the address entry first, so a packet from the new veth
    /// never finds its sender known but its address unknown.
    pub fn put_endpoint(&mut self, entry: &EndpointEntry) -> Result<()> {
        let key = AddrKey {
            addr: entry.addr,
            family: entry.family,
            _pad: [0; 3],
        };
        self.ep_by_addr
            .insert(key, entry, 0)
            .map_err(map_err(map_name::EP_BY_ADDR))?;
        self.endpoints
            .insert(entry.host_ifindex, entry, 0)
            .map_err(map_err(map_name::ENDPOINTS))
    }

    /// Removes an endpoint attachment and every conntrack/NAT entry of its address, so a later
    /// endpoint given the same address starts clean.
    pub fn remove_endpoint(&mut self, host_ifindex: u32, addr: AddrKey) -> Result<()> {
        ignore_missing(self.endpoints.remove(&host_ifindex))
            .map_err(map_err(map_name::ENDPOINTS))?;
        ignore_missing(self.ep_by_addr.remove(&addr)).map_err(map_err(map_name::EP_BY_ADDR))?;
        self.flush_flows_of(addr.addr)
    }

    pub fn endpoint_by_ifindex(&self, ifindex: u32) -> Option<EndpointEntry> {
        self.endpoints.get(&ifindex, 0).ok()
    }

    pub fn endpoint_entries(&self) -> Vec<(u32, EndpointEntry)> {
        self.endpoints.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn addr_entries(&self) -> Vec<(AddrKey, EndpointEntry)> {
        self.ep_by_addr.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn put_network(&mut self, id: u32, entry: &NetworkEntry) -> Result<()> {
        self.networks
            .insert(id, entry, 0)
            .map_err(map_err(map_name::NETWORKS))
    }

    pub fn remove_network(&mut self, id: u32) -> Result<()> {
        ignore_missing(self.networks.remove(&id)).map_err(map_err(map_name::NETWORKS))
    }

    pub fn network_ids(&self) -> Vec<u32> {
        self.networks.keys().filter_map(|r| r.ok()).collect()
    }

    /// Makes the uplink table exactly `uplinks`.
    pub fn set_uplinks(&mut self, uplinks: &[UplinkEntry]) -> Result<()> {
        for u in uplinks {
            self.uplinks
                .insert(u.ifindex, u, 0)
                .map_err(map_err(map_name::UPLINKS))?;
        }
        let stale: Vec<u32> = self
            .uplinks
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !uplinks.iter().any(|u| u.ifindex == *k))
            .collect();
        for k in stale {
            ignore_missing(self.uplinks.remove(&k)).map_err(map_err(map_name::UPLINKS))?;
        }
        Ok(())
    }

    pub fn uplink_entries(&self) -> Vec<UplinkEntry> {
        self.uplinks
            .iter()
            .filter_map(|r| r.ok())
            .map(|(_, v)| v)
            .collect()
    }

    pub fn set_config(&mut self, config: &DatapathConfig) -> Result<()> {
        self.config
            .set(0, config, 0)
            .map_err(map_err(map_name::CONFIG))
    }

    /// Publishes one host port: new connections to `key` go to `value` from now on.
    pub fn put_port(&mut self, key: &PortKey, value: &PublishedPort) -> Result<()> {
        self.ports
            .insert(key, value, 0)
            .map_err(map_err(map_name::PORTS))
    }

    /// Unpublishes one host port (absent is fine). Only new connections are affected: flows
    /// already translated keep their conntrack entries until they go idle.
    pub fn remove_port(&mut self, key: &PortKey) -> Result<()> {
        ignore_missing(self.ports.remove(key)).map_err(map_err(map_name::PORTS))
    }

    pub fn port_entries(&self) -> Vec<(PortKey, PublishedPort)> {
        self.ports.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn conntrack_entries(&self) -> Vec<(FlowKey, ConntrackEntry)> {
        self.conntrack.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn nat_entries(&self) -> Vec<(FlowKey, NatEntry)> {
        self.nat.iter().filter_map(|r| r.ok()).collect()
    }

    /// Deletes conntrack and NAT entries whose endpoint side is `addr`.
    fn flush_flows_of(&mut self, addr: [u8; 16]) -> Result<()> {
        let ct: Vec<FlowKey> = self
            .conntrack
            .keys()
            .filter_map(|k| k.ok())
            // Its own flows, and flows whose reply goes to it (a hairpin client): their cached
            // next hop is its veth.
            .filter(|k| k.src_addr == addr || k.dst_addr == addr)
            .collect();
        for k in ct {
            ignore_missing(self.conntrack.remove(&k)).map_err(map_err(map_name::CONNTRACK))?;
        }
        let nat: Vec<FlowKey> = self
            .nat
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| v.orig_addr == addr)
            .map(|(k, _)| k)
            .collect();
        for k in nat {
            ignore_missing(self.nat.remove(&k)).map_err(map_err(map_name::NAT))?;
        }
        Ok(())
    }

    /// Number of entries of every map, for `status`: (name, entries, capacity).
    pub fn fill_levels(&self) -> Vec<(&'static str, usize, u32)> {
        let count = |name: &'static str| -> (&'static str, usize, u32) {
            let Ok(md) = MapData::from_pin(self.dir.join(name)) else {
                return (name, 0, 0);
            };
            let max = md.info().map(|i| i.max_entries()).unwrap_or(0);
            let n = match Map::from_map_data(md) {
                Ok(m @ (Map::HashMap(_) | Map::LruHashMap(_))) => count_keys(&m),
                Ok(_) => max as usize,
                Err(_) => 0,
            };
            (name, n, max)
        };
        map_name::ALL.iter().map(|n| count(n)).collect()
    }

    /// Sums of the per-CPU counters: (outcome counters, drop reasons), each (name, value),
    /// skipping unused slots.
    pub fn counters(&self) -> Result<(Counters, Counters)> {
        let read = |name: &str, names: &[&'static str]| -> Result<Counters> {
            let arr: PerCpuArray<MapData, u64> =
                PerCpuArray::try_from(open(&self.dir, name)?).map_err(map_err(name))?;
            let mut out = Vec::new();
            for (i, label) in names.iter().enumerate() {
                if label.is_empty() {
                    continue;
                }
                let values = arr.get(&(i as u32), 0).map_err(map_err(name))?;
                out.push((*label, values.iter().sum()));
            }
            Ok(out)
        };
        Ok((
            read(map_name::STATS, &counter::NAMES)?,
            read(map_name::DROPS, &drop_reason::NAMES)?,
        ))
    }
}

fn count_keys(map: &Map) -> usize {
    // Key size differs per map; walk keys with BPF_MAP_GET_NEXT_KEY on raw bytes.
    let md = match map {
        Map::HashMap(md) | Map::LruHashMap(md) => md,
        _ => return 0,
    };
    let Ok(info) = md.info() else { return 0 };
    let key_size = info.key_size() as usize;
    let fd = {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        md.fd().as_fd().as_raw_fd()
    };
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    let mut n = 0usize;
    loop {
        // union bpf_attr for BPF_MAP_GET_NEXT_KEY: { u32 map_fd; u32 pad; u64 key; u64 next_key }
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            next_key: u64,
        }
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // SAFETY: BPF_MAP_GET_NEXT_KEY (4) with valid buffers of the map's key size.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 4, &attr, std::mem::size_of::<Attr>()) };
        if rc != 0 {
            break;
        }
        n += 1;
        first = false;
        key.copy_from_slice(&next);
    }
    n
}

fn ignore_missing(r: std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    match r {
        Err(e) if is_missing_key(&e) => Ok(()),
        other => other,
    }
}
