//! Owns masquerade (source NAT): finding or allocating the mapping of a flow, keeping the
//! conntrack (`NP_CT`) and reverse NAT (`NP_NAT`) entries consistent. The packets themselves
//! are rewritten by `csum::translate`.
//!
//! The NAT entry is written first (it is the one that can collide), the conntrack entry
//! second; if the second write fails the first is removed, so a reply key never points at a
//! flow that has no conntrack entry because of us.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_get_prandom_u32,
};
use netpath_common::{ConntrackEntry, FlowKey, NatEntry, counter, ct_kind, ct_state, drop_reason};

use crate::{
    conntrack::{self, is_idle, orig_key_of, reply_key, timeout_ns, touch_ct},
    maps::{NP_CT, NP_NAT, NP_NETWORKS, NP_SCRATCH},
    parse::{eq_addr, eq_port, v4_of},
    stats::count,
    zero::zeroed,
};

/// Candidate ports tried for a new mapping before giving up with `NAT_PORTS_EXHAUSTED`.
const PORT_TRIES: u32 = 16;
/// Of those, how many may take over a stale mapping (see `try_port`).
const TAKEOVER_TRIES: u32 = 4;

/// `-EEXIST`: the key is taken (BPF_NOEXIST).
const EEXIST: i32 = -17;

/// A translated source: the uplink address and the port (or ICMP identifier) given to a flow.
#[derive(Clone, Copy)]
pub struct Mapping {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
}

/// What the caller knows about the packet being masqueraded.
pub struct SnatRequest {
    /// The flow in its original direction (endpoint -> remote).
    pub orig: FlowKey,
    /// Address of the uplink the packet leaves by.
    pub uplink_addr: [u8; 16],
    pub uplink_ifindex: u32,
    /// Host-side veth of the endpoint: where replies are delivered ...
    pub endpoint_ifindex: u32,
    /// ... with the endpoint's MAC and its network's gateway MAC (`NP_NETWORKS`).
    pub endpoint_mac: [u8; 6],
    pub network_id: u32,
    pub now: u64,
    pub bytes: u64,
    pub tcp_flags: u8,
}

/// Per-CPU working memory of masquerade (`NP_SCRATCH`): the request, the result and the keys
/// and entries built on the way. The BPF stack is 512 bytes for the whole call chain, and these
/// are ~300 bytes together.
pub struct Scratch {
    pub req: SnatRequest,
    pub mapping: Mapping,
    reply: FlowKey,
    old_orig: FlowKey,
    nat: NatEntry,
    ct: ConntrackEntry,
}

/// The scratch area of this CPU (a one-slot per-CPU array: only a verifier formality can make
/// it missing).
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    NP_SCRATCH.get_ptr_mut(0)
}

/// Finds the mapping of `s.req`'s flow, the existing one if it is still intact, else a new
/// one, and leaves it in `s.mapping`. Returns 0, or the drop reason.
///
/// Inlined into its one caller (`np_from_ep`'s `route_out`) rather than a BPF-to-BPF call of
/// its own: the verifiers of 5.10 and 6.1 round every frame of a call chain up to 32 bytes, and
/// `np_from_ep` -> `route_out` -> `snat_mapping` came to 544 of the 512 bytes allowed there
/// ("combined stack size of 3 calls is 544"; 6.12 and later accepted it). Merged, the chain
/// is 192 + 288 bytes (`cargo xtask test --kernel 5.10` checks it).
#[inline(always)]
pub fn snat_mapping(s: *mut Scratch) -> u32 {
    // SAFETY: `s` is this CPU's scratch slot; nothing else uses it while the program runs.
    let s = unsafe { &mut *s };
    if let Some(ct) = NP_CT.get_ptr_mut(&s.req.orig) {
        // SAFETY: a live map value; fields copied out. `copy_nonoverlapping` (a memcpy the
        // BPF backend expands inline), not an assignment, which LLVM turns into a call to
        // `memmove`: one more subprogram frame on this call chain (see above).
        unsafe {
            core::ptr::copy_nonoverlapping(&raw const (*ct).nat_addr, &raw mut s.mapping.addr, 1);
            s.mapping.port = (*ct).nat_port;
        }
        if eq_addr(&s.mapping.addr, &s.req.uplink_addr) && reverse_entry_is_ours(s) {
            touch_ct(
                ct,
                s.req.now,
                s.req.bytes,
                s.req.orig.protocol,
                s.req.tcp_flags,
            );
            return 0;
        }
        // The uplink changed or the port was handed to another flow: start over.
    }

    let cfg = conntrack::config();
    // Both timeouts of this protocol, so the candidate loop does not branch on protocol.
    let timeouts = Timeouts {
        open: timeout_ns(&cfg, s.req.orig.protocol, 0),
        closing: timeout_ns(&cfg, s.req.orig.protocol, ct_state::TCP_FIN_SEEN),
    };
    // `config()` guarantees 0 < min <= max <= 65535, so the range is never 0; `checked_rem`
    // only keeps a panic path (which the verifier would reject) out of the program.
    let min = cfg.nat_port_min as u32;
    let range = cfg.nat_port_max as u32 - min + 1;
    let own = u16::from_be_bytes(s.req.orig.src_port) as u32;
    // The first candidate is the endpoint's own port when the range allows (ports stay
    // recognisable, like Linux), else a hash of the flow; later candidates are random, which
    // spreads flows over the range instead of piling them up behind a busy port.
    let first = if own >= min && own - min < range {
        own - min
    } else {
        flow_hash(&s.req.orig).checked_rem(range).unwrap_or(0)
    };
    let mut result = drop_reason::NAT_PORTS_EXHAUSTED;
    for i in 0..PORT_TRIES {
        let offset = if i == 0 {
            first
        } else {
            // SAFETY: helper without arguments.
            let random = unsafe { bpf_get_prandom_u32() };
            random.checked_rem(range).unwrap_or(0)
        };
        let port = ((min + offset) as u16).to_be_bytes();
        // Stale mappings are looked at for the first few candidates only: each look costs
        // several map lookups (and verifier time); a range so full that the free-port tries
        // fail as well is exhausted for practical purposes.
        match try_port(s, port, &timeouts, i < TAKEOVER_TRIES) {
            PortTry::Taken => {}
            PortTry::Won => {
                s.mapping.port = port;
                result = 0;
                break;
            }
            PortTry::MapError => return drop_reason::MAP_UPDATE_FAILED,
        }
    }
    if result != 0 {
        return result;
    }
    s.mapping.addr = s.req.uplink_addr;

    s.ct = zeroed::<ConntrackEntry>().0;
    s.ct.nat_addr = s.mapping.addr;
    s.ct.nat_port = s.mapping.port;
    s.ct.kind = ct_kind::SNAT;
    s.ct.state = conntrack::next_tcp_state(0, s.req.orig.protocol, s.req.tcp_flags);
    s.ct.uplink_ifindex = s.req.uplink_ifindex;
    s.ct.last_seen_ns = s.req.now;
    s.ct.packets = 1;
    s.ct.bytes = s.req.bytes;
    if NP_CT.insert(&s.req.orig, &s.ct, BPF_ANY as u64).is_err() {
        s.reply = reply_key(&s.req.orig, &s.mapping.addr, s.mapping.port).0;
        let _ = NP_NAT.remove(&s.reply);
        return drop_reason::MAP_UPDATE_FAILED;
    }
    count(counter::NAT_MAPPINGS_CREATED);
    0
}

/// Idle timeouts (ns) of the flow's protocol.
struct Timeouts {
    open: u64,
    closing: u64,
}

impl Timeouts {
    #[inline(always)]
    fn for_state(&self, state: u8) -> u64 {
        if state & (ct_state::TCP_FIN_SEEN | ct_state::TCP_RST_SEEN) != 0 {
            self.closing
        } else {
            self.open
        }
    }
}

/// Writes the NAT entry this flow would have, fresh, to `s.nat`.
#[inline(always)]
fn fill_nat_entry(s: &mut Scratch) {
    s.nat = zeroed::<NatEntry>().0;
    s.nat.orig_addr = s.req.orig.src_addr;
    s.nat.orig_port = s.req.orig.src_port;
    s.nat.kind = ct_kind::SNAT;
    s.nat.endpoint_ifindex = s.req.endpoint_ifindex;
    s.nat.ep_mac = s.req.endpoint_mac;
    // Missing network (only while it is being removed): the uplink program completes the
    // entry from the endpoint tables on the first reply, or drops it.
    if let Some(net) = NP_NETWORKS.get_ptr(s.req.network_id) {
        // SAFETY: a live map value; field copied out.
        s.nat.gateway_mac = unsafe { (*net).gateway_mac };
    } else {
        s.nat.ep_mac = [0; 6];
    }
    s.nat.last_seen_ns = s.req.now;
}

/// True when the reply entry of a conntrack hit still leads back to this flow. The NAT map is
/// LRU and may have evicted it: then it is written again (if the port is still free).
#[inline(always)]
fn reverse_entry_is_ours(s: &mut Scratch) -> bool {
    s.reply = reply_key(&s.req.orig, &s.mapping.addr, s.mapping.port).0;
    match NP_NAT.get_ptr(&s.reply) {
        // SAFETY: a live map value; fields read once.
        Some(nat) => unsafe { is_same_flow(&(*nat).orig_addr, (*nat).orig_port, &s.req.orig) },
        None => {
            fill_nat_entry(s);
            NP_NAT.insert(&s.reply, &s.nat, BPF_NOEXIST as u64).is_ok()
        }
    }
}

/// A NAT entry belongs to `orig` when it restores `orig`'s source (the remote and protocol are
/// part of the reply key already).
#[inline(always)]
fn is_same_flow(orig_addr: &[u8; 16], orig_port: [u8; 2], orig: &FlowKey) -> bool {
    eq_addr(orig_addr, &orig.src_addr) && eq_port(orig_port, orig.src_port)
}

/// Outcome of trying one candidate port.
enum PortTry {
    /// The NAT entry is written: the port is this flow's.
    Won,
    /// Another live flow has it.
    Taken,
    /// The map refused the update for another reason than a collision.
    MapError,
}

/// Tries to give `port` to the flow by writing its NAT entry with BPF_NOEXIST. With
/// `may_take_over`, a taken reply key may still be given to this flow when the mapping is its
/// own (its conntrack entry was evicted) or when it is stale: the NAT entry is idle past its
/// timeout and the conntrack entry it belongs to is idle too (or gone, or points elsewhere).
/// The stale flow's conntrack entry is removed so that, should it wake up, it gets a new
/// mapping instead of sharing this one.
#[inline(always)]
fn try_port(s: &mut Scratch, port: [u8; 2], timeouts: &Timeouts, may_take_over: bool) -> PortTry {
    s.reply = reply_key(&s.req.orig, &s.req.uplink_addr, port).0;
    fill_nat_entry(s);
    match NP_NAT.insert(&s.reply, &s.nat, BPF_NOEXIST as u64) {
        Ok(()) => return PortTry::Won,
        Err(EEXIST) => {}
        Err(_) => return PortTry::MapError,
    }
    if !may_take_over {
        return PortTry::Taken;
    }
    let Some(existing) = NP_NAT.get_ptr(&s.reply) else {
        // Evicted or removed since the failed insert: one more try.
        return won_if(NP_NAT.insert(&s.reply, &s.nat, BPF_NOEXIST as u64).is_ok());
    };
    // SAFETY: a live map value; fields copied out.
    let (orig_addr, orig_port, state, last_seen) = unsafe {
        (
            (*existing).orig_addr,
            (*existing).orig_port,
            (*existing).state,
            (*existing).last_seen_ns,
        )
    };
    if !is_same_flow(&orig_addr, orig_port, &s.req.orig) {
        if !is_idle(s.req.now, last_seen, timeouts.for_state(state)) {
            return PortTry::Taken;
        }
        s.old_orig = orig_key_of(&s.reply, &orig_addr, orig_port).0;
        if let Some(ct) = NP_CT.get_ptr(&s.old_orig) {
            // SAFETY: a live map value; fields copied out.
            let (nat_addr, nat_port, state, last_seen) = unsafe {
                (
                    (*ct).nat_addr,
                    (*ct).nat_port,
                    (*ct).state,
                    (*ct).last_seen_ns,
                )
            };
            if eq_addr(&nat_addr, &s.req.uplink_addr) && eq_port(nat_port, port) {
                if !is_idle(s.req.now, last_seen, timeouts.for_state(state)) {
                    return PortTry::Taken;
                }
                let _ = NP_CT.remove(&s.old_orig);
            }
        }
    }
    won_if(NP_NAT.insert(&s.reply, &s.nat, BPF_ANY as u64).is_ok())
}

#[inline(always)]
fn won_if(ok: bool) -> PortTry {
    if ok { PortTry::Won } else { PortTry::Taken }
}

/// A well-mixed 32-bit hash of the flow (murmur3's finaliser over its words), for the first
/// candidate port of flows whose own port is outside the range.
#[inline(always)]
fn flow_hash(k: &FlowKey) -> u32 {
    let src = u32::from_ne_bytes(v4_of(&k.src_addr));
    let dst = u32::from_ne_bytes(v4_of(&k.dst_addr));
    let ports = u32::from_ne_bytes([k.src_port[0], k.src_port[1], k.dst_port[0], k.dst_port[1]]);
    let mut h = src.wrapping_mul(0x9e37_79b1) ^ dst.rotate_left(13) ^ ports.rotate_left(7);
    h ^= k.protocol as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
