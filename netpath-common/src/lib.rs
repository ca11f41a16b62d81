//! Owns the contract between netpath's eBPF programs and user space: map names, map keys and
//! values, counter and drop-reason numbers, flags.
//!
//! Rules for every type here (they are read by the kernel, by aya and by `bpftool map dump`):
//! `#[repr(C)]`, explicit padding fields, no `bool`/`Option`/enums, sizes asserted at compile
//! time. Addresses are 16-byte arrays with a family tag so IPv6 fits without a redesign; an IPv4
//! address sits in bytes 0..4 and the rest is zero. Ports and other wire fields are kept in
//! network byte order (`[u8; 2]`), so `bpftool` shows `[0, 80]` for port 80.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Map names (at most 15 bytes: the kernel's `BPF_OBJ_NAME_LEN` - 1). They are also the pin
/// file names under the instance's bpffs directory.
pub mod map_name {
    /// host-side veth ifindex -> [`super::EndpointEntry`]: who may send from that veth.
    pub const ENDPOINTS: &str = "NP_ENDPOINTS";
    /// endpoint address -> [`super::EndpointEntry`]: where to deliver a packet for that address.
    pub const EP_BY_ADDR: &str = "NP_EP_BY_ADDR";
    /// network id -> [`super::NetworkEntry`].
    pub const NETWORKS: &str = "NP_NETWORKS";
    /// uplink ifindex -> [`super::UplinkEntry`]: interfaces that masqueraded traffic leaves by.
    pub const UPLINKS: &str = "NP_UPLINKS";
    /// original-direction [`super::FlowKey`] -> [`super::ConntrackEntry`] (LRU).
    pub const CONNTRACK: &str = "NP_CT";
    /// reply-direction [`super::FlowKey`] as it arrives on the uplink -> [`super::NatEntry`] (LRU).
    pub const NAT: &str = "NP_NAT";
    /// per-CPU array of [`super::counter`] values.
    pub const STATS: &str = "NP_STATS";
    /// per-CPU array indexed by [`super::drop_reason`].
    pub const DROPS: &str = "NP_DROPS";
    /// one-element array holding [`super::DatapathConfig`].
    pub const CONFIG: &str = "NP_CONFIG";
    /// published (host address, port, protocol) -> [`super::PublishedPort`].
    pub const PORTS: &str = "NP_PORTS";
    /// [`super::AddrKey`] -> ifindex (`u32`): every IPv4 address of the served namespace's own
    /// interfaces. A port published on the wildcard address (0.0.0.0) is translated only for
    /// packets and sockets addressed to one of these (or to 127.0.0.0/8 for host sockets), so
    /// traffic merely passing through the host is never hijacked. User space keeps it equal to
    /// the namespace's addresses (`Datapath::sync_host_addrs`).
    pub const HOST_ADDRS: &str = "NP_HOST_ADDRS";
    /// Socket storage (`BPF_MAP_TYPE_SK_STORAGE`) -> [`super::SockNat`]: what a host socket
    /// translated by the cgroup programs originally dialled, so `getpeername` and `recvmsg`
    /// show it. Freed by the kernel with the socket.
    pub const SOCK_NAT: &str = "NP_SOCK_NAT";

    /// Every map, in the order `netpath status` lists them.
    pub const ALL: [&str; 12] = [
        ENDPOINTS, EP_BY_ADDR, NETWORKS, UPLINKS, CONNTRACK, NAT, STATS, DROPS, CONFIG, PORTS,
        HOST_ADDRS, SOCK_NAT,
    ];
}

/// Program (function) names; also their pin file names.
pub mod program_name {
    /// TC ingress of the host-side veth of every endpoint: traffic leaving a container.
    pub const FROM_ENDPOINT: &str = "np_from_ep";
    /// TC ingress of every uplink: replies to masqueraded flows and published ports (DNAT).
    pub const FROM_UPLINK: &str = "np_uplink";
    /// cgroup/connect4 on the cgroup v2 root: a host socket connecting (TCP, or UDP `connect`)
    /// to a published port is pointed at the endpoint instead.
    pub const SOCK_CONNECT4: &str = "np_connect4";
    /// cgroup/sendmsg4: the same for unconnected UDP sends.
    pub const SOCK_SENDMSG4: &str = "np_sendmsg4";
    /// cgroup/recvmsg4: UDP replies of a translated socket show the address the app sent to.
    pub const SOCK_RECVMSG4: &str = "np_recvmsg4";
    /// cgroup/getpeername4: a translated socket's peer is the address the app dialled.
    pub const SOCK_GETPEER4: &str = "np_getpeer4";

    /// The TC (sched_cls) programs.
    pub const TC: [&str; 2] = [FROM_ENDPOINT, FROM_UPLINK];
    /// The cgroup `sock_addr` programs, attached to the cgroup v2 root. They act only on sockets
    /// of the namespace whose cookie is in `NP_CONFIG` (`DatapathConfig::netns_cookie`).
    pub const CGROUP: [&str; 4] = [SOCK_CONNECT4, SOCK_SENDMSG4, SOCK_RECVMSG4, SOCK_GETPEER4];
    /// Every program, in the order `netpath status` lists them.
    pub const ALL: [&str; 6] = [
        FROM_ENDPOINT,
        FROM_UPLINK,
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEER4,
    ];

    /// Where a program hooks in, as `netpath status` shows it.
    pub fn hook(name: &str) -> &'static str {
        match name.as_bytes() {
            b"np_from_ep" => "endpoint veth ingress",
            b"np_uplink" => "uplink ingress",
            b"np_connect4" => "cgroup connect4",
            b"np_sendmsg4" => "cgroup sendmsg4",
            b"np_recvmsg4" => "cgroup recvmsg4",
            b"np_getpeer4" => "cgroup getpeername4",
            _ => "?",
        }
    }
}

/// Read-only globals of the eBPF object that user space sets when it loads it
/// (`EbpfLoader::override_global`); the loader freezes them, so the verifier sees constants.
pub mod global {
    /// `u8`: 1 when the kernel has `bpf_ktime_get_coarse_ns` (Linux >= 5.11); flow timestamps
    /// then come from the coarse monotonic clock, which reads no hardware clock.
    pub const COARSE_CLOCK: &str = "NP_COARSE_CLOCK";
}

/// Capacity of each map. Conntrack and NAT are LRU: when full, the least recently used flow is
/// evicted instead of new flows failing.
pub mod map_size {
    pub const ENDPOINTS: u32 = 4096;
    pub const EP_BY_ADDR: u32 = 4096;
    pub const NETWORKS: u32 = 1024;
    pub const UPLINKS: u32 = 64;
    pub const CONNTRACK: u32 = 65536;
    pub const NAT: u32 = 65536;
    pub const PORTS: u32 = 65536;
    pub const HOST_ADDRS: u32 = 1024;
}

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// An address of either family: IPv4 in bytes 0..4 (rest zero), IPv6 in all 16.
pub type Addr = [u8; 16];

/// Builds an [`Addr`] from IPv4 octets.
pub const fn addr_v4(octets: [u8; 4]) -> Addr {
    let mut a = [0u8; 16];
    a[0] = octets[0];
    a[1] = octets[1];
    a[2] = octets[2];
    a[3] = octets[3];
    a
}

/// Key of `NP_EP_BY_ADDR`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AddrKey {
    pub addr: Addr,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl AddrKey {
    pub const fn v4(octets: [u8; 4]) -> Self {
        Self {
            addr: addr_v4(octets),
            family: FAMILY_IPV4,
            _pad: [0; 3],
        }
    }
}

/// One endpoint attachment (one veth of one endpoint on one network). Value of `NP_ENDPOINTS`
/// (keyed by `host_ifindex`) and of `NP_EP_BY_ADDR` (keyed by `addr`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct EndpointEntry {
    /// The endpoint's address on this network; the only source address it may use.
    pub addr: Addr,
    /// The endpoint's MAC (its `eth0` inside the namespace); the only source MAC it may use.
    pub mac: [u8; 6],
    pub family: u8,
    /// Reserved for per-endpoint flags; zero today.
    pub flags: u8,
    /// Id of the network (key of `NP_NETWORKS`).
    pub network_id: u32,
    /// ifindex of the host-side veth: target of `bpf_redirect_peer` to deliver to this endpoint.
    pub host_ifindex: u32,
}

/// Value of `NP_NETWORKS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NetworkEntry {
    pub gateway: Addr,
    pub subnet: Addr,
    /// The bridge's MAC: the source MAC of packets netpath delivers into an endpoint from the
    /// outside, so the endpoint sees them come from its gateway.
    pub gateway_mac: [u8; 6],
    pub prefix_len: u8,
    pub family: u8,
    /// [`network_flags`] bits.
    pub flags: u32,
    pub bridge_ifindex: u32,
}

/// Bits of [`NetworkEntry::flags`].
pub mod network_flags {
    /// `--internal`: no traffic leaves the network except to its gateway.
    pub const INTERNAL: u32 = 1 << 0;
    /// `icc=false`: endpoints of this network may not reach each other.
    pub const ICC_DISABLED: u32 = 1 << 1;
    /// Masquerade traffic that leaves through an uplink (Docker's `ip-masquerade`, default on).
    pub const MASQUERADE: u32 = 1 << 2;
}

/// Value of `NP_UPLINKS` (keyed by the uplink's ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct UplinkEntry {
    /// Source address given to masqueraded traffic leaving through this uplink.
    pub addr: Addr,
    pub family: u8,
    pub _pad: u8,
    /// The uplink's MTU (0: unknown, as in entries of netpath versions before it was kept
    /// here). Flows whose cached route leaves by this uplink check their packets against it.
    pub mtu: u16,
    pub ifindex: u32,
}

/// A flow as it is on the wire: key of `NP_CT` and `NP_NAT`. For ICMP echo, `src_port` holds
/// the echo identifier and `dst_port` is zero (requests and replies then share one key shape).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowKey {
    pub src_addr: Addr,
    pub dst_addr: Addr,
    /// Network byte order.
    pub src_port: [u8; 2],
    /// Network byte order.
    pub dst_port: [u8; 2],
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of `NP_CT`, keyed by the flow as the endpoint sends it. For `SNAT` that is the
/// original direction (endpoint -> outside); for `DNAT` it is the endpoint's reply to a client
/// of a published port (endpoint:port -> client:port), and `nat_addr`/`nat_port` are the
/// published host address and port the reply must come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ConntrackEntry {
    /// The translated source address (the uplink's address for masquerade).
    pub nat_addr: Addr,
    /// The translated source port (or ICMP echo identifier), network byte order.
    pub nat_port: [u8; 2],
    /// [`ct_kind`] value.
    pub kind: u8,
    /// [`ct_state`] bits (TCP FIN/RST seen).
    pub state: u8,
    /// Uplink the flow leaves by.
    pub uplink_ifindex: u32,
    /// Datapath clock (CLOCK_MONOTONIC ns) of the last packet in the original direction.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Where the flow's translated packets go, as the last full lookup (FIB or endpoint) found
    /// it; all zero: not known yet. Entries written by netpath versions before this field end
    /// after `bytes`, and a migrated entry starts with a zero route.
    pub route: CachedRoute,
}

/// A flow's next hop, cached so that its packets skip the route lookup (`bpf_fib_lookup` is
/// the largest single cost of a translated packet). Taken only while younger than
/// [`ROUTE_RECHECK_NS`] and for packets that fit `mtu`; then a full lookup runs again and
/// refreshes it, so route, neighbour and MTU changes reach an established flow within that
/// time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct CachedRoute {
    /// Datapath clock of the lookup this came from.
    pub checked_ns: u64,
    /// Where the packet goes: an uplink (`bpf_redirect`), or with [`route_flags::PEER`] the
    /// host-side veth of an endpoint (`bpf_redirect_peer` into its namespace). 0: none.
    pub ifindex: u32,
    /// Largest IP packet the egress takes without segmentation offload (0 with `PEER`: an
    /// endpoint's veth is not checked, as on every delivery into an endpoint).
    pub mtu: u16,
    /// [`route_flags`] bits.
    pub flags: u8,
    pub _pad: u8,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub _pad2: [u8; 4],
}

/// How long a [`CachedRoute`] is used before the full lookup runs again.
pub const ROUTE_RECHECK_NS: u64 = 1_000_000_000;

/// Bits of [`CachedRoute::flags`].
pub mod route_flags {
    /// Delivery into an endpoint's namespace (a hairpin client) instead of out of an uplink.
    pub const PEER: u8 = 1 << 0;
}

/// Values of [`ConntrackEntry::kind`].
pub mod ct_kind {
    /// Source NAT of an endpoint's flow to the outside (masquerade).
    pub const SNAT: u8 = 1;
    /// Destination NAT of a published port.
    pub const DNAT: u8 = 2;
    /// `NP_NAT` only: the reply of an endpoint that reached its own published port (hairpin),
    /// whose source was translated to its gateway: restores the client (itself) as the
    /// destination. Keyed by the reply as the endpoint sends it (endpoint:port -> gateway:port).
    pub const HAIRPIN_SNAT: u8 = 3;
}

/// Bits of [`ConntrackEntry::state`].
pub mod ct_state {
    pub const TCP_FIN_SEEN: u8 = 1 << 0;
    pub const TCP_RST_SEEN: u8 = 1 << 1;
}

/// Value of `NP_NAT`, keyed by the reply as it arrives on the uplink
/// (remote -> nat_addr:nat_port): how to undo the translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct NatEntry {
    /// The endpoint's own address.
    pub orig_addr: Addr,
    /// The endpoint's own port (or ICMP echo identifier), network byte order.
    pub orig_port: [u8; 2],
    pub state: u8,
    /// [`ct_kind`] value: `SNAT` (0 in entries written before published ports existed) for
    /// the reply of a masqueraded flow, `DNAT` for a client's packet to a published port
    /// (keyed client -> host address:port as it arrives; `orig_*` is then the endpoint's
    /// address and port).
    pub kind: u8,
    /// Host-side veth of the endpoint: target of `bpf_redirect_peer`.
    pub endpoint_ifindex: u32,
    /// Datapath clock (CLOCK_MONOTONIC ns) of the last reply packet.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The endpoint's MAC and its gateway's (the bridge), copied from `NP_EP_BY_ADDR` and
    /// `NP_NETWORKS` when the flow started: what a packet delivered to the endpoint carries, so
    /// established packets need no lookup. All zero (entries of netpath versions before these
    /// fields, after a migration): looked up and filled by the next packet. Removing an
    /// endpoint removes its flows (`Maps::remove_endpoint`), so a cached delivery never
    /// outlives its endpoint.
    pub ep_mac: [u8; 6],
    pub gateway_mac: [u8; 6],
    pub _pad: [u8; 4],
}

/// Key of `NP_PORTS` (published ports). The datapath looks up the exact key (destination
/// address, port, protocol) first, then the wildcard key (`host_addr` all zero), which applies
/// only to destinations that are the host's own addresses (`NP_HOST_ADDRS`, the uplink's
/// address, a network's gateway, and for host sockets 127.0.0.0/8).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PortKey {
    /// Host address the port is published on; all zero = every address (0.0.0.0 / ::).
    pub host_addr: Addr,
    /// Network byte order.
    pub host_port: [u8; 2],
    pub protocol: u8,
    pub family: u8,
}

/// Value of `NP_PORTS`: where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PublishedPort {
    pub endpoint_addr: Addr,
    /// Network byte order.
    pub endpoint_port: [u8; 2],
    pub family: u8,
    /// [`port_flags`] bits.
    pub flags: u8,
    pub endpoint_ifindex: u32,
}

/// Bits of [`PublishedPort::flags`].
pub mod port_flags {
    /// Published on a loopback address (key `host_addr` in 127.0.0.0/8): reachable from the
    /// host's own sockets only (cgroup programs). The uplink never translates it: a packet
    /// from another machine for it is dropped as `HOST_ONLY_PORT`.
    pub const HOST_ONLY: u8 = 1 << 0;
    /// Not a translation but a guard: a packet arriving on an uplink addressed straight to an
    /// endpoint's own address and port (a LAN machine routing to the container subnet) is
    /// dropped as `HOST_ONLY_PORT`. The host's own sockets and other endpoints are not
    /// affected (the cgroup programs and `np_from_ep` ignore guard entries).
    ///
    /// Recipe for the control plane: while an endpoint port is published **only** on loopback
    /// addresses (every publish of (endpoint address, endpoint port, protocol) is HOST_ONLY),
    /// also insert
    /// `PortKey { host_addr: <endpoint address>, host_port: <endpoint port>, protocol, family }`
    /// -> `PublishedPort { endpoint_addr: <endpoint address>, endpoint_port: <endpoint port>,
    /// family, flags: GUARD | HOST_ONLY, endpoint_ifindex: <host-side veth> }`,
    /// and remove it with the last loopback publish of that port (or when the port is also
    /// published on a non-loopback address, like Docker, which then exposes it anyway).
    pub const GUARD: u8 = 1 << 1;
}

/// Value of `NP_SOCK_NAT` (socket storage): the translation the cgroup programs made for one
/// host socket. Addresses are IPv4 in network byte order as the `bpf_sock_addr` context holds
/// them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SockNat {
    /// What the application dialled (a host or loopback address) ...
    pub orig_addr: [u8; 4],
    /// ... and port, network byte order.
    pub orig_port: [u8; 2],
    pub _pad: [u8; 2],
    /// What it was translated to (the endpoint).
    pub endpoint_addr: [u8; 4],
    pub endpoint_port: [u8; 2],
    pub _pad2: [u8; 2],
}

/// Value of the one-element `NP_CONFIG` array: knobs user space sets for the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DatapathConfig {
    /// First and last source port masquerade may hand out (host byte order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Idle timeouts after which a NAT mapping may be reused by another flow.
    pub tcp_established_timeout_s: u32,
    pub tcp_closing_timeout_s: u32,
    pub udp_timeout_s: u32,
    pub icmp_timeout_s: u32,
    /// Non-zero once user space has written this entry; zero means "use the defaults below".
    pub initialized: u32,
    /// Cookie of the network namespace this instance serves (`SO_NETNS_COOKIE`, Linux >=
    /// 5.14). The cgroup programs run for every socket of the machine and act only on sockets
    /// of this namespace; 0 (unknown) makes them do nothing.
    pub netns_cookie: u64,
}

impl DatapathConfig {
    /// Defaults, documented in README: the port range of Linux's `ip_local_port_range`, and
    /// timeouts close to netfilter's (TCP established shortened from 5 days to 2 hours because
    /// the LRU map reclaims idle entries anyway).
    pub const DEFAULT: Self = Self {
        nat_port_min: 32768,
        nat_port_max: 60999,
        tcp_established_timeout_s: 7200,
        tcp_closing_timeout_s: 10,
        udp_timeout_s: 60,
        icmp_timeout_s: 30,
        initialized: 1,
        netns_cookie: 0,
    };
}

/// Indices of `NP_STATS`: what happened to packets that were not dropped.
pub mod counter {
    /// Delivered to another endpoint of the same network with `bpf_redirect_peer`.
    pub const FORWARDED_LOCAL: u32 = 0;
    /// Handed to the bridge and host stack (ARP, ND, gateway, host addresses, non-IP).
    pub const PASSED_TO_STACK: u32 = 1;
    /// Masqueraded and sent out of an uplink.
    pub const SNAT_OUT: u32 = 2;
    /// Reply of a masqueraded flow, translated back and delivered to the endpoint.
    pub const SNAT_REPLY_IN: u32 = 3;
    /// New masquerade mappings created.
    pub const NAT_MAPPINGS_CREATED: u32 = 4;
    /// Packets with TTL <= 1 handed to the stack so it can answer with ICMP time exceeded.
    pub const TTL_TO_STACK: u32 = 5;
    /// Published-port traffic translated to an endpoint (from an uplink or, hairpin, from an
    /// endpoint).
    pub const DNAT_IN: u32 = 6;
    /// An endpoint's reply on a published-port flow, translated back to the published address
    /// and port and sent to the client (out of an uplink, or into the client endpoint).
    pub const DNAT_REPLY_OUT: u32 = 7;
    /// New published-port flows an endpoint opened through a host address (hairpin); each of
    /// their packets also counts `DNAT_IN`.
    pub const HAIRPIN: u32 = 8;
    /// Host sockets pointed at an endpoint by `np_connect4`/`np_sendmsg4`.
    pub const SOCK_REWRITE: u32 = 9;
    /// Addresses a host socket sees (`getpeername`, `recvmsg`) turned back into the one it
    /// dialled.
    pub const SOCK_PEER_RESTORED: u32 = 10;
    /// Translated sockets whose original address could not be remembered (socket storage
    /// full or refused): they work, but `getpeername` shows the endpoint.
    pub const SOCK_STORAGE_FAILED: u32 = 11;
    pub const COUNT: u32 = 16;

    /// `netpath stats` names, indexed by counter number ("" = unused slot).
    pub const NAMES: [&str; COUNT as usize] = [
        "forwarded_local",
        "passed_to_stack",
        "snat_out",
        "snat_reply_in",
        "nat_mappings_created",
        "ttl_to_stack",
        "dnat_in",
        "dnat_reply_out",
        "hairpin",
        "sock_rewrite",
        "sock_peer_restored",
        "sock_storage_failed",
        "",
        "",
        "",
        "",
    ];
}

/// Indices of `NP_DROPS`: every drop has one reason, like Cilium's `DROP_*`.
pub mod drop_reason {
    /// Headers truncated, IHL < 5, or lengths that do not add up.
    pub const MALFORMED: u32 = 1;
    /// Packet from a veth netpath does not know (no `NP_ENDPOINTS` entry).
    pub const UNKNOWN_ENDPOINT: u32 = 2;
    /// Source MAC is not the endpoint's.
    pub const SPOOFED_MAC: u32 = 3;
    /// Source IP is not the endpoint's.
    pub const SPOOFED_IP: u32 = 4;
    /// Destination is an endpoint of another network.
    pub const NETWORK_ISOLATION: u32 = 5;
    /// Endpoint-to-endpoint traffic inside a network with `icc=false`.
    pub const ICC_DISABLED: u32 = 6;
    /// Traffic from an `--internal` network to anything but its gateway.
    pub const INTERNAL_NETWORK: u32 = 7;
    /// No free masquerade source port after the bounded number of tries.
    pub const NAT_PORTS_EXHAUSTED: u32 = 8;
    /// Protocol that masquerade cannot translate (not TCP, UDP or ICMP echo).
    pub const UNSUPPORTED_PROTOCOL: u32 = 9;
    /// IPv4 fragment on a path that needs the L4 header (masquerade): not reassembled.
    pub const FRAGMENT: u32 = 10;
    /// The FIB has no route out for a packet that must leave the host.
    pub const NO_ROUTE: u32 = 11;
    /// `bpf_redirect*` returned an error.
    pub const REDIRECT_FAILED: u32 = 12;
    /// A conntrack or NAT map update failed.
    pub const MAP_UPDATE_FAILED: u32 = 13;
    /// A checksum or store helper failed.
    pub const REWRITE_FAILED: u32 = 14;
    /// A packet from another machine for a port published on a loopback address: addressed to
    /// 127.0.0.0/8, to a loopback-published key, or to a guarded endpoint port
    /// ([`super::port_flags::GUARD`]).
    pub const HOST_ONLY_PORT: u32 = 15;
    /// The network the endpoint belongs to has no `NP_NETWORKS` entry.
    pub const UNKNOWN_NETWORK: u32 = 16;
    /// A reply of a masqueraded flow arrived with TTL <= 1: it cannot be forwarded to the
    /// endpoint, and handing it to the stack would let the host answer (TCP RST) for it.
    pub const TTL_EXCEEDED: u32 = 17;
    /// A masqueraded packet without DF is larger than the uplink's MTU: the stack would
    /// fragment it and send it out without translation, so it is dropped instead (packets
    /// with DF go to the stack, which answers "fragmentation needed").
    pub const MTU_EXCEEDED: u32 = 18;
    pub const COUNT: u32 = 20;

    /// `netpath stats` names, indexed by reason number ("" = unused slot).
    pub const NAMES: [&str; COUNT as usize] = [
        "",
        "malformed",
        "unknown_endpoint",
        "spoofed_mac",
        "spoofed_ip",
        "network_isolation",
        "icc_disabled",
        "internal_network",
        "nat_ports_exhausted",
        "unsupported_protocol",
        "fragment",
        "no_route",
        "redirect_failed",
        "map_update_failed",
        "rewrite_failed",
        "host_only_port",
        "unknown_network",
        "ttl_exceeded",
        "mtu_exceeded",
        "",
    ];
}

// The kernel and user space must agree on these sizes byte for byte.
const _: () = {
    assert!(size_of::<AddrKey>() == 20);
    assert!(size_of::<EndpointEntry>() == 32);
    assert!(size_of::<NetworkEntry>() == 48);
    assert!(size_of::<UplinkEntry>() == 24);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<ConntrackEntry>() == 80);
    assert!(size_of::<CachedRoute>() == 32);
    assert!(size_of::<NatEntry>() == 64);
    assert!(size_of::<PortKey>() == 20);
    assert!(size_of::<PublishedPort>() == 24);
    assert!(size_of::<DatapathConfig>() == 32);
    assert!(size_of::<SockNat>() == 16);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, `Pod` (no padding bytes, any bit pattern valid).
    unsafe impl aya::Pod for AddrKey {}
    unsafe impl aya::Pod for EndpointEntry {}
    unsafe impl aya::Pod for NetworkEntry {}
    unsafe impl aya::Pod for UplinkEntry {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for ConntrackEntry {}
    unsafe impl aya::Pod for CachedRoute {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for PublishedPort {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for SockNat {}
}
