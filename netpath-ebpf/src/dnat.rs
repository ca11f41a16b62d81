//! Owns published ports in the TC programs (destination NAT): starting a flow to a published
//! port (from an uplink, or from an endpoint through a host address: hairpin), translating the
//! client's later packets, and turning the endpoint's replies back into packets from the
//! published address and port.
//!
//! State of one flow, client C:cp -> published H:hp -> endpoint E:ep:
//! - `NP_NAT[C:cp -> H:hp]` (kind `DNAT`): the client's packets as they arrive -> E:ep. Looked
//!   up by `np_uplink` (next to masquerade replies, same key shape) and by `np_from_ep` for
//!   hairpin clients. Flows keep working after the port is unpublished until they go idle.
//! - `NP_CT[E:ep -> C:cp]` (kind `DNAT`): the endpoint's replies as it sends them -> H:hp.
//!   Looked up by `np_from_ep` before isolation, so a client in another network gets its
//!   replies (Docker lets any network reach a published port through the host).
//!
//! The client's source address is kept (the server sees who connects), except for an
//! endpoint connecting to its own published port: its kernel would drop a packet from its own
//! address, so the source becomes its network's gateway (Docker's hairpin MASQUERADE), port
//! kept, and a third entry `NP_NAT[E:ep -> gateway:cp]` (kind `HAIRPIN_SNAT`) restores the
//! client on replies. Replies of every hairpin flow pass `np_from_ep` of the server, so no
//! other client needs a source translation.
//!
//! The NAT entry is written before the conntrack entry and removed if that fails. A client
//! reusing its source port toward the same endpoint renews both entries in place instead
//! ([`renew_nat`]): the LRU maps' free-list work was most of a new connection's cost. Idle flows
//! (per-protocol timeouts of `NP_CONFIG`, shorter once TCP FIN/RST was seen) are looked up in
//! `NP_PORTS` again by their next packet; the LRU maps reclaim them.
use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};
use netpath_common::{
    AddrKey, ConntrackEntry, FlowKey, IPPROTO_TCP, IPPROTO_UDP, NatEntry, PortKey, counter,
    ct_kind, drop_reason, route_flags,
};

use crate::{
    conntrack::{
        self, fill_addr_key_v4, fill_flow_key_v4, is_idle, next_tcp_state, touch_ct, touch_nat,
    },
    csum,
    fib::{self, Route},
    maps::{NP_CT, NP_DNAT_SCRATCH, NP_EP_BY_ADDR, NP_NAT, NP_NETWORKS, NP_UPLINKS},
    parse::{
        self, ICMP_ECHO_REQUEST, Ipv4, Transport, eq_addr, eq_ipv4, eq_mac, eq_port, is_zero_mac,
        v4_of,
    },
    ports::{self, Target},
    send,
    stats::{count, drop_packet, pass_to_stack},
    zero::zero_in_place,
};

/// Per-CPU working memory (`NP_DNAT_SCRATCH`): lookup keys, the entries of a new flow and the
/// FIB request. `np_from_ep`'s own frame plus masquerade's leave these subprograms too little
/// of the 512-byte stack for them.
pub struct Scratch {
    key: FlowKey,
    port_key: PortKey,
    addr_key: AddrKey,
    nat_key: FlowKey,
    ct_key: FlowKey,
    nat: NatEntry,
    ct: ConntrackEntry,
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// The rewrite of the packet at hand (see `csum::translate`) ...
    pub translation: csum::Translation,
    /// ... and its way out (see `send`).
    pub send: send::Prepared,
}

/// This CPU's scratch area (a one-slot per-CPU array: only a verifier formality can make it
/// missing). Used through the raw pointer: one program run at a time per CPU.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    NP_DNAT_SCRATCH.get_ptr_mut(0)
}

/// The flow key of a packet, built in scratch memory.
#[inline(always)]
fn packet_key(s: *mut Scratch, ip: &Ipv4, l4: &Transport) -> *mut FlowKey {
    // SAFETY: this CPU's scratch slot.
    let key = unsafe { &mut (*s).key };
    fill_flow_key_v4(key, ip.src, ip.dst, l4.src_port, l4.dst_port, l4.protocol);
    key
}

#[inline(always)]
fn exact(s: *mut Scratch, addr: [u8; 4], l4: &Transport) -> Option<Target> {
    // SAFETY: this CPU's scratch slot.
    ports::exact(
        unsafe { &mut (*s).port_key },
        addr,
        l4.dst_port,
        l4.protocol,
    )
}

#[inline(always)]
fn wildcard(s: *mut Scratch, l4: &Transport) -> Option<Target> {
    // SAFETY: this CPU's scratch slot.
    ports::wildcard(unsafe { &mut (*s).port_key }, l4.dst_port, l4.protocol)
}

#[inline(always)]
fn is_host_addr(s: *mut Scratch, addr: [u8; 4]) -> bool {
    // SAFETY: this CPU's scratch slot.
    ports::is_host_addr(unsafe { &mut (*s).addr_key }, addr)
}

/// `NP_EP_BY_ADDR` entry of `addr`.
#[inline(always)]
fn endpoint_by_addr(
    s: *mut Scratch,
    addr: [u8; 4],
) -> Option<*const netpath_common::EndpointEntry> {
    // SAFETY: this CPU's scratch slot.
    let key = unsafe { &mut (*s).addr_key };
    fill_addr_key_v4(key, addr);
    NP_EP_BY_ADDR.get_ptr(&*key)
}

#[inline(always)]
fn is_tcp_or_udp(protocol: u8) -> bool {
    protocol == IPPROTO_TCP || protocol == IPPROTO_UDP
}

// ---------------------------------------------------------------------------------------------
// np_uplink

/// `np_uplink`, a packet that is not the reply of a masqueraded flow: a new flow to a published
/// port is translated and delivered; anything else goes to the stack.
///
/// Host-only entries (loopback publishes, guards) never match here: a packet for one, or any
/// packet to 127.0.0.0/8 on a published port, is dropped as `HOST_ONLY_PORT`. A wildcard entry
/// applies only to the uplink's address and the host's other addresses.
///
/// `previous`: the `NP_NAT` entry the packet's key already has (a client reusing its source
/// port), renewed in place where it can be (see [`renew_nat`]).
#[inline(always)]
pub fn uplink_new_flow(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &Transport,
    previous: Option<*mut NatEntry>,
) -> i32 {
    if !is_tcp_or_udp(l4.protocol) {
        return pass_to_stack();
    }
    let Some(s) = scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    let target = match exact(s, ip.dst, l4) {
        Some(t) => t,
        None => {
            let Some(t) = wildcard(s, l4) else {
                return pass_to_stack();
            };
            if ports::is_loopback(ip.dst) {
                return drop_packet(drop_reason::HOST_ONLY_PORT);
            }
            if !is_uplink_addr(ctx, ip.dst) && !is_host_addr(s, ip.dst) {
                // Passing through the host (routed): not ours to translate.
                return pass_to_stack();
            }
            t
        }
    };
    if target.host_only() || ports::is_loopback(ip.dst) {
        return drop_packet(drop_reason::HOST_ONLY_PORT);
    }
    match start_flow(
        ctx,
        s,
        ip,
        l4,
        &target,
        fib::skb_ifindex(ctx),
        false,
        previous,
    ) {
        Ok((d, snat)) => deliver(ctx, s, ip, l4, &d, snat),
        Err(verdict) => verdict,
    }
}

/// `np_uplink`, a fragment. Only the first one carries ports, and netpath does not reassemble:
/// a first fragment for a published port is dropped as `FRAGMENT` (the client's stack sees
/// the loss and, for TCP, the MSS keeps segments unfragmented anyway); other fragments go to
/// the stack, which cannot reassemble them without the first and discards them.
#[inline(always)]
pub fn uplink_fragment(ctx: &TcContext, ip: &Ipv4, l4: &Transport) -> i32 {
    if !is_tcp_or_udp(l4.protocol) {
        return pass_to_stack();
    }
    let Some(s) = scratch() else {
        return pass_to_stack();
    };
    let published = exact(s, ip.dst, l4).is_some()
        || (wildcard(s, l4).is_some()
            && (ports::is_loopback(ip.dst)
                || is_uplink_addr(ctx, ip.dst)
                || is_host_addr(s, ip.dst)));
    if published {
        return drop_packet(drop_reason::FRAGMENT);
    }
    pass_to_stack()
}

/// The MTU user space recorded for uplink `ifindex` (0: not an uplink, or not recorded).
#[inline(always)]
fn uplink_mtu(ifindex: u32) -> u16 {
    match NP_UPLINKS.get_ptr(ifindex) {
        // SAFETY: a live map value; field copied out.
        Some(u) => unsafe { (*u).mtu },
        None => 0,
    }
}

/// True when `addr` is the address of the uplink the packet arrived on.
#[inline(always)]
fn is_uplink_addr(ctx: &TcContext, addr: [u8; 4]) -> bool {
    match NP_UPLINKS.get_ptr(fib::skb_ifindex(ctx)) {
        // SAFETY: a live map value; field copied out.
        Some(u) => eq_ipv4(v4_of(unsafe { &(*u).addr }), addr),
        None => false,
    }
}

/// `np_uplink` or hairpin: a client's packet whose `NP_NAT` entry has kind `DNAT`. A flow idle
/// past its timeout is looked up in `NP_PORTS` again (the port may be unpublished or point
/// elsewhere by now); a live one is delivered to its endpoint.
#[inline(always)]
pub fn is_live(nat_entry: *const NatEntry, now: u64, protocol: u8) -> bool {
    let cfg = conntrack::config();
    // SAFETY: a live map value; fields copied out.
    let (state, last_seen) = unsafe { ((*nat_entry).state, (*nat_entry).last_seen_ns) };
    !is_idle(now, last_seen, conntrack::timeout_ns(&cfg, protocol, state))
}

/// A client's packet of an established published-port flow.
#[inline(always)]
pub fn established(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &Transport,
    nat_entry: *mut NatEntry,
    now: u64,
) -> i32 {
    let Some(s) = scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    match prepare_established(ctx, s, ip, l4, nat_entry, now) {
        Ok((d, snat)) => deliver(ctx, s, ip, l4, &d, snat),
        Err(verdict) => verdict,
    }
}

/// [`established`] up to the delivery: the endpoint, and whether the source must become its
/// gateway; `Err` holds the verdict of a drop.
#[inline(always)]
fn prepare_established(
    ctx: &TcContext,
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    nat_entry: *mut NatEntry,
    now: u64,
) -> Result<(Delivery, bool), i32> {
    // SAFETY: a live map value; fields copied out.
    let (orig_addr, orig_port, endpoint_ifindex) = unsafe {
        (
            v4_of(&(*nat_entry).orig_addr),
            (*nat_entry).orig_port,
            (*nat_entry).endpoint_ifindex,
        )
    };
    // An endpoint talking to its own published port (see the module docs): its source
    // becomes the gateway's address, which only the network entry has.
    let snat = eq_ipv4(ip.src, orig_addr);
    // SAFETY: a live map value; fields copied out.
    let (ep_mac, gateway_mac) = unsafe { ((*nat_entry).ep_mac, (*nat_entry).gateway_mac) };
    let d = if !snat && !is_zero_mac(ep_mac) {
        Delivery {
            ep_addr: orig_addr,
            ep_port: orig_port,
            ep_ifindex: endpoint_ifindex,
            ep_mac,
            gateway: [0; 4],
            gateway_mac,
        }
    } else {
        let target = Target {
            endpoint_addr: orig_addr,
            endpoint_port: orig_port,
            endpoint_ifindex,
            flags: 0,
        };
        let d = resolve(s, &target).map_err(drop_packet)?;
        // SAFETY: as above; a flow from before the cache existed (a migrated entry) fills it.
        unsafe {
            (*nat_entry).ep_mac = d.ep_mac;
            (*nat_entry).gateway_mac = d.gateway_mac;
        }
        d
    };
    touch_nat(nat_entry, now, ctx.len() as u64, l4.protocol, l4.tcp_flags);
    Ok((d, snat))
}

// ---------------------------------------------------------------------------------------------
// Shared by both programs: starting a flow and delivering into the endpoint.

/// The endpoint a published-port packet goes to, as far as delivery needs it.
#[derive(Clone, Copy)]
pub struct Delivery {
    ep_addr: [u8; 4],
    ep_port: [u8; 2],
    ep_ifindex: u32,
    ep_mac: [u8; 6],
    gateway: [u8; 4],
    gateway_mac: [u8; 6],
}

/// Finds the target endpoint; it must still sit on the veth the port (or flow) was made for, so
/// a stale entry never delivers to a new endpoint that reuses the address.
#[inline(always)]
fn resolve(s: *mut Scratch, target: &Target) -> Result<Delivery, u32> {
    let Some(ep) = endpoint_by_addr(s, target.endpoint_addr) else {
        return Err(drop_reason::UNKNOWN_ENDPOINT);
    };
    // SAFETY: a live map value; fields copied out.
    let (ep_mac, ep_ifindex, network_id) =
        unsafe { ((*ep).mac, (*ep).host_ifindex, (*ep).network_id) };
    if ep_ifindex != target.endpoint_ifindex {
        return Err(drop_reason::UNKNOWN_ENDPOINT);
    }
    let Some(net) = NP_NETWORKS.get_ptr(network_id) else {
        return Err(drop_reason::UNKNOWN_NETWORK);
    };
    // SAFETY: a live map value; fields copied out.
    let (gateway, gateway_mac) = unsafe { (v4_of(&(*net).gateway), (*net).gateway_mac) };
    Ok(Delivery {
        ep_addr: target.endpoint_addr,
        ep_port: target.endpoint_port,
        ep_ifindex,
        ep_mac,
        gateway,
        gateway_mac,
    })
}

/// Records a new published-port flow; returns how to deliver its first packet (or the verdict
/// of a drop). `client_ifindex` is the interface the client's packets arrive on (uplink, or the
/// client endpoint's veth); `hairpin` says the client is an endpoint; `previous` is the
/// `NP_NAT` entry the packet's key already has, if any.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn start_flow(
    ctx: &TcContext,
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    target: &Target,
    client_ifindex: u32,
    hairpin: bool,
    previous: Option<*mut NatEntry>,
) -> Result<(Delivery, bool), i32> {
    let d = resolve(s, target).map_err(drop_packet)?;
    if ip.ttl <= 1 {
        // Forwarding would need ICMP time exceeded; the stack would take the packet as its own.
        return Err(drop_packet(drop_reason::TTL_EXCEEDED));
    }
    let snat = hairpin && eq_ipv4(ip.src, d.ep_addr);
    // Where the endpoint's replies go: the client, or (self-hairpin) its gateway.
    let reply_dst = if snat { d.gateway } else { ip.src };
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let s = unsafe { &mut *s };
    let now = conntrack::now();

    fill_flow_key_v4(
        &mut s.nat_key,
        ip.src,
        ip.dst,
        l4.src_port,
        l4.dst_port,
        l4.protocol,
    );
    zero_in_place(&mut s.nat);
    conntrack::set_v4(&mut s.nat.orig_addr, d.ep_addr);
    s.nat.orig_port = d.ep_port;
    s.nat.state = next_tcp_state(0, l4.protocol, l4.tcp_flags);
    s.nat.kind = ct_kind::DNAT;
    s.nat.endpoint_ifindex = d.ep_ifindex;
    s.nat.last_seen_ns = now;
    s.nat.packets = 1;
    s.nat.bytes = ctx.len() as u64;
    s.nat.ep_mac = d.ep_mac;
    s.nat.gateway_mac = d.gateway_mac;
    let renewed = previous.is_some_and(|live| renew_nat(live, &s.nat));
    if !renewed && NP_NAT.insert(&s.nat_key, &s.nat, BPF_ANY as u64).is_err() {
        return Err(drop_packet(drop_reason::MAP_UPDATE_FAILED));
    }

    fill_flow_key_v4(
        &mut s.ct_key,
        d.ep_addr,
        reply_dst,
        d.ep_port,
        l4.src_port,
        l4.protocol,
    );
    zero_in_place(&mut s.ct);
    conntrack::set_v4(&mut s.ct.nat_addr, ip.dst);
    s.ct.nat_port = l4.dst_port;
    s.ct.kind = ct_kind::DNAT;
    s.ct.uplink_ifindex = client_ifindex;
    s.ct.last_seen_ns = now;
    // A renewed client entry usually has its reply entry too (same client port, same
    // endpoint port): renewed the same way.
    let ct_renewed = renewed
        && NP_CT
            .get_ptr_mut(&s.ct_key)
            .is_some_and(|live| renew_ct(live, &s.ct));
    if !ct_renewed && NP_CT.insert(&s.ct_key, &s.ct, BPF_ANY as u64).is_err() {
        let _ = NP_NAT.remove(&s.nat_key);
        return Err(drop_packet(drop_reason::MAP_UPDATE_FAILED));
    }
    if snat {
        // Replies come to gateway:cp; this restores the client (the endpoint itself).
        conntrack::set_v4(&mut s.nat.orig_addr, ip.src);
        s.nat.orig_port = l4.src_port;
        s.nat.kind = ct_kind::HAIRPIN_SNAT;
        s.nat.endpoint_ifindex = client_ifindex;
        // Restores the client only; nothing is delivered through this entry.
        s.nat.ep_mac = [0; 6];
        s.nat.gateway_mac = [0; 6];
        if NP_NAT.insert(&s.ct_key, &s.nat, BPF_ANY as u64).is_err() {
            let _ = NP_CT.remove(&s.ct_key);
            let _ = NP_NAT.remove(&s.nat_key);
            return Err(drop_packet(drop_reason::MAP_UPDATE_FAILED));
        }
    }
    if hairpin {
        count(counter::HAIRPIN);
    }
    Ok((d, snat))
}

/// A client reusing its source port toward the same published port (a connect loop, a UDP
/// client sending again after its flow idled) starts its new flow in the old flow's `NP_NAT`
/// entry: rewritten in place, not replaced. A map update would take a fresh element from the
/// LRU map's free list and give back the old one, the largest part of a new connection's
/// program time. Only when the live entry already delivers exactly where `fresh` does, so a
/// packet of the old flow that another CPU handles meanwhile can read at worst mixed
/// counters (as with any concurrent packet), never a mixed destination. Returns false, having
/// changed nothing, when the entry differs in more than its bookkeeping.
#[inline(always)]
fn renew_nat(live: *mut NatEntry, fresh: &NatEntry) -> bool {
    // SAFETY: a live map value; fields compared, then the bookkeeping fields written.
    unsafe {
        let same_delivery = (*live).kind == fresh.kind
            && eq_addr(&(*live).orig_addr, &fresh.orig_addr)
            && eq_port((*live).orig_port, fresh.orig_port)
            && (*live).endpoint_ifindex == fresh.endpoint_ifindex
            && eq_mac((*live).ep_mac, fresh.ep_mac)
            && eq_mac((*live).gateway_mac, fresh.gateway_mac);
        if !same_delivery {
            return false;
        }
        (*live).state = fresh.state;
        (*live).last_seen_ns = fresh.last_seen_ns;
        (*live).packets = fresh.packets;
        (*live).bytes = fresh.bytes;
    }
    true
}

/// [`renew_nat`] for the flow's reply entry (`NP_CT`): renewed in place when it already
/// translates to the same published address and port and answers on the same interface. Its
/// cached route stays: it is for the same client and is rechecked on its own clock.
#[inline(always)]
fn renew_ct(live: *mut ConntrackEntry, fresh: &ConntrackEntry) -> bool {
    // SAFETY: as in `renew_nat`.
    unsafe {
        let same_translation = (*live).kind == fresh.kind
            && eq_addr(&(*live).nat_addr, &fresh.nat_addr)
            && eq_port((*live).nat_port, fresh.nat_port)
            && (*live).uplink_ifindex == fresh.uplink_ifindex;
        if !same_translation {
            return false;
        }
        (*live).state = fresh.state;
        (*live).last_seen_ns = fresh.last_seen_ns;
        (*live).packets = fresh.packets;
        (*live).bytes = fresh.bytes;
    }
    true
}

/// Prepares delivery into the endpoint's namespace (see `send`): the destination becomes the
/// endpoint (and with `snat_to_gateway` the source its gateway), the TTL drops by one, and the
/// endpoint sees the packet come from its gateway's MAC. Returns `send::SEND`, or the verdict
/// of a drop.
#[inline(always)]
fn prepare_delivery(
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    d: &Delivery,
    snat_to_gateway: bool,
) -> i32 {
    if ip.ttl <= 1 {
        return drop_packet(drop_reason::TTL_EXCEEDED);
    }
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let t = unsafe { &mut (*s).translation };
    t.start(ip, l4);
    t.set_destination(l4, d.ep_addr, d.ep_port);
    t.set_macs(d.ep_mac, d.gateway_mac);
    if snat_to_gateway {
        t.src = d.gateway;
    }
    send::prepare(s, send::how::PEER, d.ep_ifindex, counter::DNAT_IN)
}

/// `np_uplink`: delivers a client's packet into the endpoint (see [`prepare_delivery`]).
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    d: &Delivery,
    snat_to_gateway: bool,
) -> i32 {
    let verdict = prepare_delivery(s, ip, l4, d, snat_to_gateway);
    if verdict != send::SEND {
        return verdict;
    }
    send::apply(ctx, s, ip, l4)
}

// ---------------------------------------------------------------------------------------------
// np_from_ep

/// Returned by [`reply_from_endpoint`] and [`hairpin_from_endpoint`] when the packet is not
/// theirs.
pub const CONTINUE: i32 = i32::MIN;

/// `np_from_ep`, a TCP/UDP non-fragment after anti-spoofing: a reply of a published-port flow
/// goes back to its client (see [`reply`]); anything else returns [`CONTINUE`].
///
/// Not inlined, and neither is [`hairpin_from_endpoint`]: each is a BPF-to-BPF call with its
/// own stack frame, never on the same call chain as the other or as masquerade's
/// `route_out`, so none pushes the program past the 512-byte stack. A reply to send returns
/// `send::SEND` with its translation prepared.
#[inline(never)]
pub fn reply_from_endpoint(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    ip: &Ipv4,
    gateway: [u8; 4],
) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(l4) = parse::transport(&ctx, ip, ICMP_ECHO_REQUEST) else {
        return CONTINUE;
    };
    let Some(s) = scratch() else {
        return CONTINUE;
    };
    reply(&ctx, s, ip, &l4, gateway).unwrap_or(CONTINUE)
}

/// `np_from_ep`, a TCP/UDP non-fragment that is not a published-port reply: a connection to a
/// published port through a host address (see [`hairpin`]) is recorded and prepared for
/// `send::send_prepared` (returns `send::SEND`), or dropped (returns the verdict); anything
/// else returns [`CONTINUE`].
#[inline(never)]
pub fn hairpin_from_endpoint(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    ip: &Ipv4,
    gateway: [u8; 4],
    client_ifindex: u32,
) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(l4) = parse::transport(&ctx, ip, ICMP_ECHO_REQUEST) else {
        return CONTINUE;
    };
    let Some(s) = scratch() else {
        return CONTINUE;
    };
    match hairpin(&ctx, s, ip, &l4, gateway, client_ifindex) {
        None => CONTINUE,
        Some(Err(verdict)) => verdict,
        Some(Ok((d, snat))) => prepare_delivery(s, ip, &l4, &d, snat),
    }
}

/// `np_from_ep`: the endpoint's reply on a published-port flow (`NP_CT` kind `DNAT`), sent
/// back from the published address and port. `None`: not such a reply.
#[inline(always)]
fn reply(
    ctx: &TcContext,
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    gateway: [u8; 4],
) -> Option<i32> {
    let key = packet_key(s, ip, l4);
    // SAFETY: the key in scratch memory, just written.
    let ct = NP_CT.get_ptr_mut(unsafe { &*key })?;
    // SAFETY: a live map value; fields copied out.
    let (kind, nat_addr, nat_port) =
        unsafe { ((*ct).kind, v4_of(&(*ct).nat_addr), (*ct).nat_port) };
    if kind != ct_kind::DNAT {
        return None;
    }
    let now = conntrack::now();
    touch_ct(ct, now, ctx.len() as u64, l4.protocol, l4.tcp_flags);
    // SAFETY: the route cache inside the live entry.
    let route = unsafe { &raw mut (*ct).route };
    if ip.ttl > 1 && fib::cached_route_usable(ctx, route, now, ip, l4) {
        // SAFETY: as above; fields copied out.
        let (dmac, smac, ifindex, flags) = unsafe {
            (
                (*route).dst_mac,
                (*route).src_mac,
                (*route).ifindex,
                (*route).flags,
            )
        };
        let t = reply_translation(s, ip, l4, nat_addr, nat_port, ip.dst, l4.dst_port);
        t.set_macs(dmac, smac);
        let how = if flags & route_flags::PEER != 0 {
            send::how::PEER
        } else {
            send::how::REDIRECT
        };
        return Some(send::prepare(s, how, ifindex, counter::DNAT_REPLY_OUT));
    }
    let mut client = ip.dst;
    let mut client_port = l4.dst_port;
    // The reply of an endpoint that reached its own published port goes to itself: never
    // cached (its destination differs from the packet's), so `route` is passed as null.
    let mut cache = route;
    if eq_ipv4(ip.dst, gateway)
        // SAFETY: the key in scratch memory, unchanged since.
        && let Some(n) = NP_NAT.get_ptr(unsafe { &*key })
    {
        // SAFETY: a live map value; fields copied out.
        unsafe {
            if (*n).kind == ct_kind::HAIRPIN_SNAT {
                client = v4_of(&(*n).orig_addr);
                client_port = (*n).orig_port;
                cache = core::ptr::null_mut();
            }
        }
    }
    Some(send_reply(
        ctx,
        s,
        ip,
        l4,
        nat_addr,
        nat_port,
        client,
        client_port,
        cache,
        now,
    ))
}

/// Prepares a reply (see `send`): its source becomes the published `nat_addr:nat_port` (and
/// its destination `client:client_port` if that differs), and it goes to the client: into its
/// namespace if it is an endpoint (hairpin), else out of the interface the FIB names. The way
/// it goes is recorded in `cache` (the flow's cached route; null: not cached). Returns
/// `send::SEND`, or the verdict of a drop or of passing the packet to the stack.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send_reply(
    ctx: &TcContext,
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    nat_addr: [u8; 4],
    nat_port: [u8; 2],
    client: [u8; 4],
    client_port: [u8; 2],
    cache: *mut netpath_common::CachedRoute,
    now: u64,
) -> i32 {
    if ip.ttl <= 1 {
        return drop_packet(drop_reason::TTL_EXCEEDED);
    }
    if let Some(dest) = endpoint_by_addr(s, client) {
        // SAFETY: a live map value; fields copied out.
        let (dest_mac, dest_ifindex, dest_network) =
            unsafe { ((*dest).mac, (*dest).host_ifindex, (*dest).network_id) };
        let Some(net) = NP_NETWORKS.get_ptr(dest_network) else {
            return drop_packet(drop_reason::UNKNOWN_NETWORK);
        };
        // SAFETY: a live map value; field copied out.
        let dest_gateway_mac = unsafe { (*net).gateway_mac };
        let t = reply_translation(s, ip, l4, nat_addr, nat_port, client, client_port);
        t.set_macs(dest_mac, dest_gateway_mac);
        if !cache.is_null() {
            let peer = route_flags::PEER;
            fib::cache_route(
                cache,
                now,
                dest_ifindex,
                0,
                peer,
                dest_mac,
                dest_gateway_mac,
            );
        }
        return send::prepare(s, send::how::PEER, dest_ifindex, counter::DNAT_REPLY_OUT);
    }

    // Route the packet as it will be after translation.
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let params = unsafe { &raw mut (*s).fib };
    let route = fib::lookup_v4_in(ctx, params, ip, nat_addr, client, nat_port, client_port);
    let egress = match route {
        Route::Forward { ifindex, .. } | Route::NoNeighbour { ifindex } => ifindex,
        // With DF the stack answers "fragmentation needed" to the endpoint (path MTU
        // discovery works); without it, it would fragment the packet untranslated.
        Route::FragNeeded { .. } if ip.dont_fragment => return pass_to_stack(),
        Route::FragNeeded { .. } => return drop_packet(drop_reason::MTU_EXCEEDED),
        Route::Stack => return pass_to_stack(),
        Route::Failed => return drop_packet(drop_reason::NO_ROUTE),
    };
    reply_translation(s, ip, l4, nat_addr, nat_port, client, client_port);
    if let Route::Forward {
        mtu, smac, dmac, ..
    } = route
        && !cache.is_null()
    {
        let mtu = if mtu != 0 { mtu } else { uplink_mtu(egress) };
        fib::cache_route(cache, now, egress, mtu, 0, dmac, smac);
    }
    send::prepare_along(s, &route, egress, counter::DNAT_REPLY_OUT)
}

/// Starts the reply's translation in scratch memory: source to the published address and
/// port, destination to the client.
#[inline(always)]
fn reply_translation(
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    nat_addr: [u8; 4],
    nat_port: [u8; 2],
    client: [u8; 4],
    client_port: [u8; 2],
) -> &'static mut csum::Translation {
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let t = unsafe { &mut (*s).translation };
    t.start(ip, l4);
    t.set_source(nat_addr, nat_port);
    t.dst = client;
    t.dst_port = client_port;
    t
}

/// `np_from_ep`: an endpoint's packet to a published port through one of the host's addresses
/// (hairpin): its own gateway, the uplink's or any other address of the host. `None`: not one.
#[inline(always)]
fn hairpin(
    ctx: &TcContext,
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    gateway: [u8; 4],
    client_ifindex: u32,
) -> Option<Result<(Delivery, bool), i32>> {
    if !eq_ipv4(ip.dst, gateway) && !is_host_addr(s, ip.dst) {
        return None;
    }
    let key = packet_key(s, ip, l4);
    // SAFETY: the key in scratch memory, just written.
    let previous = NP_NAT.get_ptr_mut(unsafe { &*key });
    if let Some(nat_entry) = previous {
        // SAFETY: a live map value; field read once.
        let kind = unsafe { (*nat_entry).kind };
        let now = conntrack::now();
        if kind == ct_kind::DNAT && is_live(nat_entry, now, l4.protocol) {
            return Some(prepare_established(ctx, s, ip, l4, nat_entry, now));
        }
    }
    let target = match exact(s, ip.dst, l4) {
        Some(t) => t,
        None => wildcard(s, l4)?,
    };
    if target.host_only() {
        return None;
    }
    Some(start_flow(
        ctx,
        s,
        ip,
        l4,
        &target,
        client_ifindex,
        true,
        previous,
    ))
}
