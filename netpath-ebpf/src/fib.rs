//! Owns route lookups (`bpf_fib_lookup`), the routes flows cache from them (`CachedRoute` in
//! their conntrack entry), and the redirects that send a packet out: to the peer of an
//! endpoint's veth, or out of an uplink to the next hop.
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, TC_ACT_REDIRECT, bpf_fib_lookup,
    },
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_type,
    },
    programs::TcContext,
};

use netpath_common::{CachedRoute, ROUTE_RECHECK_NS, route_flags};

use crate::{
    parse::{ETH_HLEN, Ipv4, Transport},
    zero::zero_in_place,
};

const AF_INET: u8 = 2;
/// `skb->pkt_type` of a packet addressed to this host (uapi `linux/if_packet.h`).
const PACKET_HOST: u32 = 0;

/// What the FIB says about a packet that is not for the endpoint's own network.
pub enum Route {
    /// Leaves by `ifindex` to a next hop whose MAC is known. `mtu`: the egress MTU where the
    /// kernel reports it (Linux >= 5.12), else 0.
    Forward {
        ifindex: u32,
        mtu: u16,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Leaves by `ifindex`, next hop not resolved yet: `bpf_redirect_neigh` resolves it.
    NoNeighbour { ifindex: u32 },
    /// Leaves by `ifindex` but is larger than its MTU (GSO packets excepted).
    FragNeeded { ifindex: u32 },
    /// Local destination, or no way out (unreachable, prohibited, blackhole, forwarding off):
    /// the stack delivers it or answers with ICMP; nothing leaves untranslated.
    Stack,
    /// The lookup itself failed.
    Failed,
}

/// The ifindex the packet arrived on.
#[inline(always)]
pub fn skb_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the program was called with.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Looks up the route of an IPv4 packet, with source and destination `src` -> `dst` (the
/// packet's own, or as they will be after a translation), as if it were forwarded from the
/// interface it arrived on. The request is built in `params` (per-CPU scratch memory: the
/// struct is 64 bytes and the callers' stacks are full). `tot_len` is left 0 on purpose: the kernel then checks the skb against the egress MTU
/// with `is_skb_forwardable`, which knows GSO packets (a container's TSO send is one big skb
/// whose IP total length exceeds the MTU but is segmented later).
#[inline(always)]
pub fn lookup_v4_in(
    ctx: &TcContext,
    params: *mut bpf_fib_lookup,
    ip: &Ipv4,
    src: [u8; 4],
    dst: [u8; 4],
    src_port: [u8; 2],
    dst_port: [u8; 2],
) -> Route {
    // SAFETY: `params` points at a live, exclusively used scratch slot.
    let params = unsafe { &mut *params };
    zero_in_place(params);
    params.family = AF_INET;
    params.l4_protocol = ip.protocol;
    params.sport = u16::from_ne_bytes(src_port);
    params.dport = u16::from_ne_bytes(dst_port);
    params.ifindex = skb_ifindex(ctx);
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(dst);
    // SAFETY: `params` is a valid, fully sized lookup struct.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc < 0 {
        return Route::Failed;
    }
    let ifindex = params.ifindex;
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Route::Forward {
            ifindex,
            // SAFETY: a plain u16 in the union; older kernels leave the 0 written above.
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
            smac: params.smac,
            dmac: params.dmac,
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => Route::NoNeighbour { ifindex },
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Route::FragNeeded { ifindex },
        BPF_FIB_LKUP_RET_NOT_FWDED
        | BPF_FIB_LKUP_RET_FWD_DISABLED
        | BPF_FIB_LKUP_RET_BLACKHOLE
        | BPF_FIB_LKUP_RET_UNREACHABLE
        | BPF_FIB_LKUP_RET_PROHIBIT => Route::Stack,
        // Lightweight tunnels and anything newer: the stack might send it out untranslated.
        _ => Route::Failed,
    }
}

/// True when a redirect helper accepted the redirect.
#[inline(always)]
fn redirected(rc: i64) -> bool {
    rc == TC_ACT_REDIRECT as i64
}

/// Delivers into the namespace on the other end of the veth `ifindex` (skipping the host
/// stack and the bridge). Linux >= 5.10.
///
/// The packet is first typed as addressed to that namespace (`PACKET_HOST`): it arrived on a
/// device whose MAC it does not carry (an endpoint's host-side veth sees the MACs of the
/// gateway and of other endpoints), so the kernel typed it `PACKET_OTHERHOST`. Linux 5.10
/// keeps that type across the peer redirect, and the namespace's IP layer then drops the
/// packet without a trace; 6.1 and later deliver it either way.
#[inline(always)]
pub fn redirect_peer(ctx: &TcContext, ifindex: u32) -> bool {
    // SAFETY: `skb` is the context pointer the program was called with. Most packets (those
    // that came in addressed to the uplink's MAC) are already PACKET_HOST: no helper call. The
    // helper refuses only types above PACKET_OTHERHOST (loopback, outgoing), which TC ingress
    // never sees; should it refuse anyway, the packet is not redirected (the caller counts
    // the drop).
    if unsafe { (*ctx.skb.skb).pkt_type } != PACKET_HOST
        && unsafe { bpf_skb_change_type(ctx.skb.skb, PACKET_HOST) } != 0
    {
        return false;
    }
    // SAFETY: helper taking plain integers.
    redirected(unsafe { bpf_redirect_peer(ifindex, 0) })
}

/// Sends out of `ifindex` as is (the caller has written both MACs).
#[inline(always)]
pub fn redirect(ifindex: u32) -> bool {
    // SAFETY: helper taking plain integers.
    redirected(unsafe { bpf_redirect(ifindex, 0) })
}

/// Sends out of `ifindex`, letting the kernel resolve the next hop's MAC (and fill both MACs).
/// Linux 5.10 has the two-argument form (ifindex, flags); passing NULL/0 for the `params`/
/// `plen` arguments added in 5.11 keeps the call valid on both.
#[inline(always)]
pub fn redirect_neigh(ifindex: u32) -> bool {
    // SAFETY: NULL params (use the route's next hop) with plen 0.
    redirected(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) })
}

impl Route {
    /// The next hop's MACs (destination, source) when the FIB resolved them: the translation
    /// writes them; otherwise `bpf_redirect_neigh` fills both (see `send::prepare_along`).
    #[inline(always)]
    pub fn macs(&self) -> Option<([u8; 6], [u8; 6])> {
        match self {
            Route::Forward { smac, dmac, .. } => Some((*dmac, *smac)),
            _ => None,
        }
    }
}

/// True when a flow's cached route may carry this packet: it is known, younger than
/// `ROUTE_RECHECK_NS`, and the packet fits the egress MTU (a segmentation-offload packet by
/// the size of the segments it will be cut into, as the kernel's own forwarding check does).
#[inline(always)]
pub fn cached_route_usable(
    ctx: &TcContext,
    route: *const CachedRoute,
    now: u64,
    ip: &Ipv4,
    l4: &Transport,
) -> bool {
    // SAFETY: `route` points into a live map value; fields copied out.
    let (ifindex, checked, mtu, flags) = unsafe {
        (
            (*route).ifindex,
            (*route).checked_ns,
            (*route).mtu,
            (*route).flags,
        )
    };
    if ifindex == 0 || now.saturating_sub(checked) > ROUTE_RECHECK_NS {
        return false;
    }
    if flags & route_flags::PEER != 0 {
        return true;
    }
    // SAFETY: `skb` is the context pointer the program was called with.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size } as usize;
    let ip_len = if gso_size == 0 {
        (ctx.len() as usize).saturating_sub(ETH_HLEN)
    } else {
        ip.l4_off - ETH_HLEN + l4.header_len as usize + gso_size
    };
    mtu != 0 && ip_len <= mtu as usize
}

/// Records where a flow's packets went after a full lookup. `mtu` 0 on a route out of an
/// uplink means "unknown": the route is not cached (every packet then takes the full lookup).
#[inline(always)]
pub fn cache_route(
    route: *mut CachedRoute,
    now: u64,
    ifindex: u32,
    mtu: u16,
    flags: u8,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
) {
    let usable = flags & route_flags::PEER != 0 || mtu != 0;
    // SAFETY: `route` points into a live map value; concurrent writers only race on a cache
    // that the next full lookup rewrites anyway. `ifindex` goes last: it marks the entry valid.
    unsafe {
        (*route).checked_ns = now;
        (*route).mtu = mtu;
        (*route).flags = flags;
        (*route).dst_mac = dst_mac;
        (*route).src_mac = src_mac;
        (*route).ifindex = if usable { ifindex } else { 0 };
    }
}
