//! Owns the BPF map definitions. Names, key and value types come from `netpath-common`; every
//! map is a BTF map so `bpftool map dump` prints field names.
use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, SkStorage},
    macros::btf_map,
};
use netpath_common::{
    AddrKey, ConntrackEntry, DatapathConfig, EndpointEntry, FlowKey, NatEntry, NetworkEntry,
    PortKey, PublishedPort, SockNat, UplinkEntry, counter, drop_reason, map_size,
};

#[btf_map]
pub static NP_ENDPOINTS: HashMap<u32, EndpointEntry, { map_size::ENDPOINTS as usize }> =
    HashMap::new();
#[btf_map]
pub static NP_EP_BY_ADDR: HashMap<AddrKey, EndpointEntry, { map_size::EP_BY_ADDR as usize }> =
    HashMap::new();
#[btf_map]
pub static NP_NETWORKS: HashMap<u32, NetworkEntry, { map_size::NETWORKS as usize }> =
    HashMap::new();
#[btf_map]
pub static NP_UPLINKS: HashMap<u32, UplinkEntry, { map_size::UPLINKS as usize }> = HashMap::new();
#[btf_map]
pub static NP_CT: LruHashMap<FlowKey, ConntrackEntry, { map_size::CONNTRACK as usize }> =
    LruHashMap::new();
#[btf_map]
pub static NP_NAT: LruHashMap<FlowKey, NatEntry, { map_size::NAT as usize }> = LruHashMap::new();
#[btf_map]
pub static NP_STATS: PerCpuArray<u64, { counter::COUNT as usize }> = PerCpuArray::new();
#[btf_map]
pub static NP_DROPS: PerCpuArray<u64, { drop_reason::COUNT as usize }> = PerCpuArray::new();
#[btf_map]
pub static NP_CONFIG: Array<DatapathConfig, 1> = Array::new();
#[btf_map]
pub static NP_PORTS: HashMap<PortKey, PublishedPort, { map_size::PORTS as usize }> = HashMap::new();

/// Per-CPU working memory of masquerade (keys and entries too big for the 512-byte stack).
/// Internal to the programs: not part of the user-space contract, never pinned.
#[btf_map]
pub static NP_SCRATCH: PerCpuArray<crate::nat::Scratch, 1> = PerCpuArray::new();
#[btf_map]
pub static NP_HOST_ADDRS: HashMap<AddrKey, u32, { map_size::HOST_ADDRS as usize }> = HashMap::new();
#[btf_map]
pub static NP_SOCK_NAT: SkStorage<SockNat> = SkStorage::new();

/// Per-CPU working memory of published-port flows (internal, never pinned).
#[btf_map]
pub static NP_DNAT_SCRATCH: PerCpuArray<crate::dnat::Scratch, 1> = PerCpuArray::new();
