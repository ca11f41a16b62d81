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
//! The NAT entry is written before the conntrack entry and removed if that fails. Idle flows
//! (per-protocol timeouts of `NP_CONFIG`, shorter once TCP FIN/RST was seen) are looked up in
//! `NP_PORTS` again by their next packet; the LRU maps reclaim them.
use aya_ebpf::{
    bindings::{BPF_ANY, TC_ACT_REDIRECT},
    helpers::generated::bpf_ktime_get_ns,
    programs::TcContext,
};
use netpath_common::{
    AddrKey, ConntrackEntry, FlowKey, IPPROTO_TCP, IPPROTO_UDP, NatEntry, PortKey, counter,
    ct_kind, drop_reason,
};

use crate::{
    conntrack::{
        self, fill_addr_key_v4, fill_flow_key_v4, is_idle, next_tcp_state, touch_ct, touch_nat,
    },
    csum,
    fib::{self, Route},
    maps::{NP_CT, NP_DNAT_SCRATCH, NP_EP_BY_ADDR, NP_NAT, NP_NETWORKS, NP_UPLINKS},
    nat,
    parse::{
        self, ICMP_ECHO_REQUEST, IP_DST_OFF, IP_SRC_OFF, Ipv4, Transport, eq_ipv4, eq_port, v4_of,
    },
    ports::{self, Target},
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
    /// A hairpin packet ready for [`deliver_prepared`].
    prepared: Delivery,
    prepared_snat: bool,
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
#[inline(always)]
pub fn uplink_new_flow(ctx: &TcContext, ip: &Ipv4, l4: &Transport) -> i32 {
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
    match start_flow(ctx, s, ip, l4, &target, fib::skb_ifindex(ctx), false) {
        Ok((d, snat)) => deliver(ctx, ip, l4, &d, snat),
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
pub fn established(ctx: &TcContext, ip: &Ipv4, l4: &Transport, nat_entry: *mut NatEntry) -> i32 {
    let Some(s) = scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    match prepare_established(ctx, s, ip, l4, nat_entry) {
        Ok((d, snat)) => deliver(ctx, ip, l4, &d, snat),
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
) -> Result<(Delivery, bool), i32> {
    // SAFETY: a live map value; fields copied out.
    let (orig_addr, orig_port, endpoint_ifindex) = unsafe {
        (
            v4_of(&(*nat_entry).orig_addr),
            (*nat_entry).orig_port,
            (*nat_entry).endpoint_ifindex,
        )
    };
    let target = Target {
        endpoint_addr: orig_addr,
        endpoint_port: orig_port,
        endpoint_ifindex,
        flags: 0,
    };
    let d = resolve(s, &target).map_err(drop_packet)?;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    touch_nat(nat_entry, now, ctx.len() as u64, l4.protocol, l4.tcp_flags);
    // An endpoint talking to its own published port (see the module docs).
    let snat = eq_ipv4(ip.src, d.ep_addr);
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
/// client endpoint's veth); `hairpin` says the client is an endpoint.
#[inline(always)]
fn start_flow(
    ctx: &TcContext,
    s: *mut Scratch,
    ip: &Ipv4,
    l4: &Transport,
    target: &Target,
    client_ifindex: u32,
    hairpin: bool,
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
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };

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
    if NP_NAT.insert(&s.nat_key, &s.nat, BPF_ANY as u64).is_err() {
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
    if NP_CT.insert(&s.ct_key, &s.ct, BPF_ANY as u64).is_err() {
        let _ = NP_NAT.remove(&s.nat_key);
        return Err(drop_packet(drop_reason::MAP_UPDATE_FAILED));
    }
    if snat {
        // Replies come to gateway:cp; this restores the client (the endpoint itself).
        conntrack::set_v4(&mut s.nat.orig_addr, ip.src);
        s.nat.orig_port = l4.src_port;
        s.nat.kind = ct_kind::HAIRPIN_SNAT;
        s.nat.endpoint_ifindex = client_ifindex;
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

/// Translates the destination to the endpoint (and with `snat_to_gateway` the source to the
/// endpoint's gateway), decrements the TTL and delivers into the endpoint's namespace, which
/// sees the packet come from its gateway's MAC.
#[inline(always)]
fn deliver(ctx: &TcContext, ip: &Ipv4, l4: &Transport, d: &Delivery, snat_to_gateway: bool) -> i32 {
    if ip.ttl <= 1 {
        return drop_packet(drop_reason::TTL_EXCEEDED);
    }
    if nat::rewrite_destination(ctx, ip, l4, d.ep_addr, d.ep_port).is_err() {
        return drop_packet(drop_reason::REWRITE_FAILED);
    }
    if snat_to_gateway
        && csum::replace_ipv4_addr(ctx, l4.protocol, l4.csum_off, IP_SRC_OFF, ip.src, d.gateway)
            .is_err()
    {
        return drop_packet(drop_reason::REWRITE_FAILED);
    }
    if csum::set_macs(ctx, d.ep_mac, d.gateway_mac).is_err() {
        return drop_packet(drop_reason::REWRITE_FAILED);
    }
    if !fib::redirect_peer(ctx, d.ep_ifindex) {
        return drop_packet(drop_reason::REDIRECT_FAILED);
    }
    count(counter::DNAT_IN);
    TC_ACT_REDIRECT as i32
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
/// `route_out`, so none pushes the program past the 512-byte stack.
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

/// Returned by [`hairpin_from_endpoint`] when the packet is ready for [`deliver_prepared`].
pub const DELIVER: i32 = i32::MIN + 1;

/// `np_from_ep`, a TCP/UDP non-fragment that is not a published-port reply: a connection to a
/// published port through a host address (see [`hairpin`]) is recorded and prepared for
/// [`deliver_prepared`] (returns [`DELIVER`]), or dropped (returns the verdict); anything else
/// returns [`CONTINUE`]. Delivery is a separate call so that neither frame holds both.
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
        Some(Ok((d, snat))) => {
            // SAFETY: this CPU's scratch slot.
            unsafe {
                (*s).prepared = d;
                (*s).prepared_snat = snat;
            }
            DELIVER
        }
    }
}

/// Delivers the packet [`hairpin_from_endpoint`] prepared.
#[inline(never)]
pub fn deliver_prepared(skb: *mut aya_ebpf::bindings::__sk_buff, ip: &Ipv4) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(l4) = parse::transport(&ctx, ip, ICMP_ECHO_REQUEST) else {
        return drop_packet(drop_reason::MALFORMED);
    };
    let Some(s) = scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    // SAFETY: this CPU's scratch slot, filled by `hairpin_from_endpoint` in this run.
    let (d, snat) = unsafe { ((*s).prepared, (*s).prepared_snat) };
    deliver(&ctx, ip, &l4, &d, snat)
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
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    touch_ct(ct, now, ctx.len() as u64, l4.protocol, l4.tcp_flags);
    let mut client = ip.dst;
    let mut client_port = l4.dst_port;
    if eq_ipv4(ip.dst, gateway)
        // SAFETY: the key in scratch memory, unchanged since.
        && let Some(n) = NP_NAT.get_ptr(unsafe { &*key })
    {
        // SAFETY: a live map value; fields copied out.
        unsafe {
            if (*n).kind == ct_kind::HAIRPIN_SNAT {
                client = v4_of(&(*n).orig_addr);
                client_port = (*n).orig_port;
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
    ))
}

/// Rewrites a reply's source to the published `nat_addr:nat_port` (and its destination to
/// `client:client_port` if that differs) and sends it to the client: into its namespace if it
/// is an endpoint (hairpin), else out of the interface the FIB names.
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
        if rewrite_reply(ctx, ip, l4, nat_addr, nat_port, client, client_port).is_err()
            || csum::set_macs(ctx, dest_mac, dest_gateway_mac).is_err()
        {
            return drop_packet(drop_reason::REWRITE_FAILED);
        }
        if !fib::redirect_peer(ctx, dest_ifindex) {
            return drop_packet(drop_reason::REDIRECT_FAILED);
        }
        count(counter::DNAT_REPLY_OUT);
        return TC_ACT_REDIRECT as i32;
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
    if rewrite_reply(ctx, ip, l4, nat_addr, nat_port, client, client_port).is_err() {
        return drop_packet(drop_reason::REWRITE_FAILED);
    }
    if let Err(reason) = fib::send_along(ctx, &route, egress) {
        return drop_packet(reason);
    }
    count(counter::DNAT_REPLY_OUT);
    TC_ACT_REDIRECT as i32
}

/// Source to the published address and port (TTL decremented), destination to the client.
#[inline(always)]
fn rewrite_reply(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &Transport,
    nat_addr: [u8; 4],
    nat_port: [u8; 2],
    client: [u8; 4],
    client_port: [u8; 2],
) -> Result<(), csum::RewriteFailed> {
    nat::rewrite_source(ctx, ip, l4, nat_addr, nat_port)?;
    if !eq_ipv4(client, ip.dst) {
        csum::replace_ipv4_addr(ctx, l4.protocol, l4.csum_off, IP_DST_OFF, ip.dst, client)?;
    }
    if !eq_port(client_port, l4.dst_port) {
        csum::replace_l4_u16(
            ctx,
            l4.protocol,
            l4.csum_off,
            l4.dst_port_off,
            l4.dst_port,
            client_port,
        )?;
    }
    Ok(())
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
    if let Some(nat_entry) = NP_NAT.get_ptr_mut(unsafe { &*key }) {
        // SAFETY: a live map value; field read once.
        let kind = unsafe { (*nat_entry).kind };
        // SAFETY: helper without arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        if kind == ct_kind::DNAT && is_live(nat_entry, now, l4.protocol) {
            return Some(prepare_established(ctx, s, ip, l4, nat_entry));
        }
    }
    let target = match exact(s, ip.dst, l4) {
        Some(t) => t,
        None => wildcard(s, l4)?,
    };
    if target.host_only() {
        return None;
    }
    Some(start_flow(ctx, s, ip, l4, &target, client_ifindex, true))
}
