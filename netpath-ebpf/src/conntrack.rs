//! Owns flow keys, the datapath configuration (timeouts, port range) and the bookkeeping on
//! conntrack (`NP_CT`) and NAT (`NP_NAT`) entries: per-packet counters, TCP close state and
//! idle timeouts.
//!
//! Expiry never deletes anything: both maps are LRU, so the kernel reclaims old flows when they
//! fill up. A timeout only decides when a NAT mapping is idle enough to be handed to another
//! flow (see `nat::allocate`).
use netpath_common::{
    AddrKey, ConntrackEntry, DatapathConfig, FAMILY_IPV4, FlowKey, IPPROTO_ICMP, IPPROTO_TCP,
    NatEntry, ct_state,
};

use aya_ebpf::helpers::generated::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};

use crate::{
    maps::NP_CONFIG,
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    zero::{Aligned, zero_in_place, zeroed},
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// 1 when the kernel has `bpf_ktime_get_coarse_ns` (Linux >= 5.11), set by user space when it
/// loads the object (`netpath_common::global::COARSE_CLOCK`). It lives in read-only data that
/// the loader freezes, so the verifier knows its value and never looks at the other branch of
/// [`now`]: a 5.10 kernel does not see the helper it lacks.
#[unsafe(no_mangle)]
static NP_COARSE_CLOCK: u8 = 0;

/// The datapath's clock for flow timestamps (`last_seen_ns`): CLOCK_MONOTONIC in
/// nanoseconds. The coarse variant (tick resolution, far below any timeout) reads no hardware
/// clock: on a virtual machine `rdtsc` can cost more than a hash lookup. Read once per packet.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: reading a static; the helpers take no arguments.
    unsafe {
        if core::ptr::read_volatile(&NP_COARSE_CLOCK) != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// The configuration user space wrote to `NP_CONFIG[0]`, or the defaults while it has not
/// (entry missing or `initialized == 0`). A port range with `min == 0` or `min > max` is
/// unusable and replaced by the default range.
#[inline(always)]
pub fn config() -> DatapathConfig {
    let mut cfg = match NP_CONFIG.get_ptr(0) {
        // SAFETY: a valid array slot; copied out at once.
        Some(p) => unsafe { *p },
        None => DatapathConfig::DEFAULT,
    };
    if cfg.initialized == 0 {
        cfg = DatapathConfig::DEFAULT;
    }
    if cfg.nat_port_min == 0 || cfg.nat_port_min > cfg.nat_port_max {
        cfg.nat_port_min = DatapathConfig::DEFAULT.nat_port_min;
        cfg.nat_port_max = DatapathConfig::DEFAULT.nat_port_max;
    }
    cfg
}

/// Idle timeout of a flow of `protocol` whose state bits are `state`.
#[inline(always)]
pub fn timeout_ns(cfg: &DatapathConfig, protocol: u8, state: u8) -> u64 {
    let seconds = match protocol {
        IPPROTO_TCP if state & (ct_state::TCP_FIN_SEEN | ct_state::TCP_RST_SEEN) != 0 => {
            cfg.tcp_closing_timeout_s
        }
        IPPROTO_TCP => cfg.tcp_established_timeout_s,
        IPPROTO_ICMP => cfg.icmp_timeout_s,
        _ => cfg.udp_timeout_s,
    };
    seconds as u64 * NS_PER_SEC
}

/// True when nothing was seen for longer than the timeout. `last_seen_ns` may be slightly ahead
/// of `now` when another CPU wrote it, hence the saturating subtraction.
#[inline(always)]
pub fn is_idle(now: u64, last_seen_ns: u64, timeout_ns: u64) -> bool {
    now.saturating_sub(last_seen_ns) > timeout_ns
}

/// Copies IPv4 octets into bytes 0..4 of an [`netpath_common::Addr`] (the rest stays zero).
#[inline(always)]
pub fn set_v4(addr: &mut [u8; 16], octets: [u8; 4]) {
    addr[0] = octets[0];
    addr[1] = octets[1];
    addr[2] = octets[2];
    addr[3] = octets[3];
}

/// An IPv4 flow key (ICMP echo: `src_port` = identifier, `dst_port` = 0).
#[inline(always)]
pub fn flow_key_v4(
    src: [u8; 4],
    dst: [u8; 4],
    src_port: [u8; 2],
    dst_port: [u8; 2],
    protocol: u8,
) -> Aligned<FlowKey> {
    let mut key = zeroed::<FlowKey>();
    set_v4(&mut key.0.src_addr, src);
    set_v4(&mut key.0.dst_addr, dst);
    key.0.src_port = src_port;
    key.0.dst_port = dst_port;
    key.0.protocol = protocol;
    key.0.family = FAMILY_IPV4;
    key
}

/// [`flow_key_v4`] written in place (into per-CPU scratch memory, sparing the stack).
#[inline(always)]
pub fn fill_flow_key_v4(
    key: &mut FlowKey,
    src: [u8; 4],
    dst: [u8; 4],
    src_port: [u8; 2],
    dst_port: [u8; 2],
    protocol: u8,
) {
    zero_in_place(key);
    set_v4(&mut key.src_addr, src);
    set_v4(&mut key.dst_addr, dst);
    key.src_port = src_port;
    key.dst_port = dst_port;
    key.protocol = protocol;
    key.family = FAMILY_IPV4;
}

/// [`addr_key_v4`] written in place.
#[inline(always)]
pub fn fill_addr_key_v4(key: &mut AddrKey, addr: [u8; 4]) {
    zero_in_place(key);
    set_v4(&mut key.addr, addr);
    key.family = FAMILY_IPV4;
}

/// The `NP_EP_BY_ADDR` key of an IPv4 address.
#[inline(always)]
pub fn addr_key_v4(addr: [u8; 4]) -> Aligned<AddrKey> {
    let mut key = zeroed::<AddrKey>();
    set_v4(&mut key.0.addr, addr);
    key.0.family = FAMILY_IPV4;
    key
}

/// The key under which the reply of `orig`, translated to `nat_addr:nat_port`, arrives on the
/// uplink: remote -> nat_addr:nat_port. ICMP keeps its one-port shape: the reply carries the
/// translated identifier.
#[inline(always)]
pub fn reply_key(orig: &FlowKey, nat_addr: &[u8; 16], nat_port: [u8; 2]) -> Aligned<FlowKey> {
    let mut key = zeroed::<FlowKey>();
    key.0.src_addr = orig.dst_addr;
    key.0.dst_addr = *nat_addr;
    if orig.protocol == IPPROTO_ICMP {
        key.0.src_port = nat_port;
    } else {
        key.0.src_port = orig.dst_port;
        key.0.dst_port = nat_port;
    }
    key.0.protocol = orig.protocol;
    key.0.family = orig.family;
    key
}

/// The original-direction key of the flow whose NAT entry restores `orig_addr:orig_port` and
/// is stored under `reply`.
#[inline(always)]
pub fn orig_key_of(reply: &FlowKey, orig_addr: &[u8; 16], orig_port: [u8; 2]) -> Aligned<FlowKey> {
    let mut key = zeroed::<FlowKey>();
    key.0.src_addr = *orig_addr;
    key.0.dst_addr = reply.src_addr;
    key.0.src_port = orig_port;
    if reply.protocol != IPPROTO_ICMP {
        key.0.dst_port = reply.src_port;
    }
    key.0.protocol = reply.protocol;
    key.0.family = reply.family;
    key
}

/// New state bits after a packet with `tcp_flags`: a SYN without ACK starts the connection
/// over (the 5-tuple is being reused), FIN and RST mark it as closing.
#[inline(always)]
pub fn next_tcp_state(state: u8, protocol: u8, tcp_flags: u8) -> u8 {
    if protocol != IPPROTO_TCP {
        return state;
    }
    let mut state = state;
    if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        state = 0;
    }
    if tcp_flags & TCP_FIN != 0 {
        state |= ct_state::TCP_FIN_SEEN;
    }
    if tcp_flags & TCP_RST != 0 {
        state |= ct_state::TCP_RST_SEEN;
    }
    state
}

/// Adds to a per-flow counter. A plain add, not an atomic one: Rust's BPF target has no
/// atomic read-modify-write yet (`atomic_cas: false` hides `fetch_add`), and the packets of one
/// flow are normally handled on one CPU (RSS / the sender's CPU), so a rare race costs at most
/// a lost count in a statistic.
#[inline(always)]
fn add(counter: *mut u64, value: u64) {
    // SAFETY: `counter` points into a live map value.
    unsafe { *counter += value };
}

/// Records a packet of the original direction on a conntrack entry.
#[inline(always)]
pub fn touch_ct(ct: *mut ConntrackEntry, now: u64, bytes: u64, protocol: u8, tcp_flags: u8) {
    // SAFETY: `ct` comes from a successful map lookup; concurrent writers only race on
    // last-writer-wins fields.
    unsafe {
        (*ct).last_seen_ns = now;
        (*ct).state = next_tcp_state((*ct).state, protocol, tcp_flags);
        add(&raw mut (*ct).packets, 1);
        add(&raw mut (*ct).bytes, bytes);
    }
}

/// Records a reply packet on a NAT entry.
#[inline(always)]
pub fn touch_nat(nat: *mut NatEntry, now: u64, bytes: u64, protocol: u8, tcp_flags: u8) {
    // SAFETY: as in `touch_ct`.
    unsafe {
        (*nat).last_seen_ns = now;
        (*nat).state = next_tcp_state((*nat).state, protocol, tcp_flags);
        add(&raw mut (*nat).packets, 1);
        add(&raw mut (*nat).bytes, bytes);
    }
}
