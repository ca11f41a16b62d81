//! Owns `np_from_ep`, TC ingress of every endpoint's host-side veth (what a container sends):
//! anti-spoofing, replies of published-port flows and hairpin connections to published ports
//! (`dnat`), network isolation, same-network delivery, internal networks, and masquerade of
//! traffic that leaves through an uplink.
//!
//! Order matters: published-port replies come right after anti-spoofing (their client may sit
//! in another network, which Docker allows through the host's address); the
//! endpoint-to-endpoint checks come before the gateway check, so isolation cannot be bypassed
//! by addressing another network's endpoint through the gateway's MAC; hairpin connections
//! (addressed to a host address, never an endpoint's) are looked for only after those.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    programs::TcContext,
};
use netpath_common::{
    FAMILY_IPV4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, counter, drop_reason, network_flags,
};

use crate::{
    conntrack::{self, addr_key_v4, fill_flow_key_v4},
    csum, dnat,
    fib::{self, Route},
    maps::{NP_ENDPOINTS, NP_EP_BY_ADDR, NP_NETWORKS, NP_UPLINKS},
    nat::{self, Mapping, SnatRequest},
    parse::{self, ETH_P_IP, ICMP_ECHO_REQUEST, Ipv4, TransportError, eq_ipv4, eq_mac, v4_of},
    send,
    stats::{count, drop_packet, pass_to_stack},
};

pub fn handle(ctx: TcContext) -> i32 {
    let Ok(eth) = parse::ethernet(&ctx) else {
        return drop_packet(drop_reason::MALFORMED);
    };
    if eth.ether_type != ETH_P_IP {
        // ARP, IPv6 (with ND) and the rest: the bridge and the host handle them.
        return pass_to_stack();
    }
    let Ok(ip) = parse::ipv4(&ctx) else {
        return drop_packet(drop_reason::MALFORMED);
    };

    // Anti-spoofing: the veth a packet arrives on says who sent it.
    let Some(ep) = NP_ENDPOINTS.get_ptr(fib::skb_ifindex(&ctx)) else {
        return drop_packet(drop_reason::UNKNOWN_ENDPOINT);
    };
    // SAFETY: a live map value; the fields used below are copied out (not the whole entry:
    // the stack is 512 bytes).
    let ep = unsafe {
        Sender {
            mac: (*ep).mac,
            family: (*ep).family,
            addr: v4_of(&(*ep).addr),
            network_id: (*ep).network_id,
            host_ifindex: (*ep).host_ifindex,
        }
    };
    if !eq_mac(eth.src, ep.mac) {
        return drop_packet(drop_reason::SPOOFED_MAC);
    }
    if ep.family != FAMILY_IPV4 || !eq_ipv4(ip.src, ep.addr) {
        return drop_packet(drop_reason::SPOOFED_IP);
    }
    let Some(net) = NP_NETWORKS.get_ptr(ep.network_id) else {
        return drop_packet(drop_reason::UNKNOWN_NETWORK);
    };
    // SAFETY: a live map value; fields copied out.
    let net = unsafe {
        Network {
            flags: (*net).flags,
            gateway: v4_of(&(*net).gateway),
            subnet: v4_of(&(*net).subnet),
            prefix_len: (*net).prefix_len,
        }
    };

    // A reply of a published-port flow goes back to its client, wherever that is. Fragments
    // carry no ports past the first: they take the paths below (masquerade drops them).
    let has_ports = !ip.is_fragment && (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP);
    if has_ports {
        let verdict = dnat::reply_from_endpoint(ctx.skb.skb, &ip, net.gateway);
        if verdict != dnat::CONTINUE {
            return carry_out(ctx.skb.skb, &ip, verdict);
        }
    }

    // Another endpoint: same network is delivered directly, another network never.
    if let Some(dest) = NP_EP_BY_ADDR.get_ptr(&addr_key_v4(ip.dst).0) {
        // SAFETY: a live map value; fields copied out.
        let (dest_network, dest_mac, dest_ifindex) =
            unsafe { ((*dest).network_id, (*dest).mac, (*dest).host_ifindex) };
        if dest_network != ep.network_id {
            return drop_packet(drop_reason::NETWORK_ISOLATION);
        }
        if net.flags & network_flags::ICC_DISABLED != 0 {
            return drop_packet(drop_reason::ICC_DISABLED);
        }
        if csum::set_dst_mac(&ctx, dest_mac).is_err() {
            return drop_packet(drop_reason::REWRITE_FAILED);
        }
        if !fib::redirect_peer(&ctx, dest_ifindex) {
            return drop_packet(drop_reason::REDIRECT_FAILED);
        }
        count(counter::FORWARDED_LOCAL);
        return TC_ACT_REDIRECT as i32;
    }

    // A connection to a published port through one of the host's addresses (hairpin) goes
    // to its endpoint; an endpoint's address is never one of those, so endpoint-to-endpoint
    // packets skip this. Internal networks reach nothing but their gateway's own services.
    if has_ports && net.flags & network_flags::INTERNAL == 0 {
        let verdict = dnat::hairpin_from_endpoint(ctx.skb.skb, &ip, net.gateway, ep.host_ifindex);
        if verdict != dnat::CONTINUE {
            return carry_out(ctx.skb.skb, &ip, verdict);
        }
    }

    if eq_ipv4(ip.dst, net.gateway) {
        return pass_to_stack();
    }
    // Multicast and limited broadcast stay on the bridge (flooded to the network's ports,
    // never routed), as with Docker's bridge, internal networks included.
    if ip.dst[0] >= 224 {
        return pass_to_stack();
    }
    if net.flags & network_flags::INTERNAL != 0 {
        return drop_packet(drop_reason::INTERNAL_NETWORK);
    }
    if in_subnet(ip.dst, &net) {
        // Something else on the bridge (not a netpath endpoint) or the subnet broadcast.
        return pass_to_stack();
    }
    let verdict = route_out(ctx.skb.skb, &ep, &net, &ip);
    carry_out(ctx.skb.skb, &ip, verdict)
}

/// A deciding subprogram's verdict, with a prepared packet (`send::SEND`) sent.
#[inline(always)]
fn carry_out(skb: *mut aya_ebpf::bindings::__sk_buff, ip: &Ipv4, verdict: i32) -> i32 {
    if verdict == send::SEND {
        send::send_prepared(skb, ip)
    } else {
        verdict
    }
}

/// The sender's `NP_ENDPOINTS` entry, as far as this program uses it.
struct Sender {
    mac: [u8; 6],
    family: u8,
    addr: [u8; 4],
    network_id: u32,
    host_ifindex: u32,
}

/// The sender's `NP_NETWORKS` entry, as far as this program uses it.
struct Network {
    flags: u32,
    gateway: [u8; 4],
    subnet: [u8; 4],
    prefix_len: u8,
}

/// True when `addr` is inside the network's subnet.
#[inline(always)]
fn in_subnet(addr: [u8; 4], net: &Network) -> bool {
    let prefix = net.prefix_len as u32;
    if prefix == 0 {
        return true;
    }
    if prefix > 32 {
        return false;
    }
    let mask = u32::MAX << (32 - prefix);
    let subnet = u32::from_be_bytes(net.subnet);
    u32::from_be_bytes(addr) & mask == subnet & mask
}

/// Traffic for somewhere outside the network: the host stack, or masquerade out of an uplink.
///
/// Not inlined: its frame (FIB result, masquerade request) is then never on the same call
/// chain as the published-port subprograms, which keeps every chain within the 512-byte stack.
/// A packet to masquerade returns `send::SEND` with its translation prepared.
#[inline(never)]
fn route_out(
    skb: *mut aya_ebpf::bindings::__sk_buff,
    ep: &Sender,
    net: &Network,
    ip: &Ipv4,
) -> i32 {
    let ctx = &TcContext::new(skb);
    // Ports let the FIB apply port-based policy routing; fragments and other protocols look
    // up without them.
    let l4 = if ip.is_fragment {
        Err(TransportError::Unsupported)
    } else {
        parse::transport(ctx, ip, ICMP_ECHO_REQUEST)
    };
    let (fib_sport, fib_dport) = match &l4 {
        Ok(t) if t.protocol != IPPROTO_ICMP => (t.src_port, t.dst_port),
        _ => ([0, 0], [0, 0]),
    };
    // The request lives in published ports' per-CPU scratch memory (free by now: their
    // subprograms have returned) to keep this frame small.
    let Some(s) = dnat::scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let params = unsafe { &raw mut (*s).fib };
    let route = fib::lookup_v4_in(ctx, params, ip, ip.src, ip.dst, fib_sport, fib_dport);
    let egress = match route {
        Route::Forward { ifindex, .. }
        | Route::NoNeighbour { ifindex }
        | Route::FragNeeded { ifindex } => ifindex,
        Route::Stack => return pass_to_stack(),
        Route::Failed => return drop_packet(drop_reason::NO_ROUTE),
    };
    // The host itself and non-uplink interfaces are reachable from every network; the stack
    // routes those (and everything of networks without masquerade) as usual.
    let Some(uplink) = NP_UPLINKS.get_ptr(egress) else {
        return pass_to_stack();
    };
    if net.flags & network_flags::MASQUERADE == 0 {
        return pass_to_stack();
    }
    // SAFETY: a live map value; fields copied out.
    let (uplink_family, uplink_addr) = unsafe { ((*uplink).family, (*uplink).addr) };
    if uplink_family != FAMILY_IPV4 {
        return pass_to_stack();
    }
    if ip.ttl <= 1 {
        // The stack answers with ICMP time exceeded.
        count(counter::TTL_TO_STACK);
        return TC_ACT_OK as i32;
    }
    if let Route::FragNeeded { .. } = route {
        // With DF the stack answers "fragmentation needed" (path MTU discovery works); without
        // DF it would fragment and send the pieces out untranslated.
        if ip.dont_fragment {
            return pass_to_stack();
        }
        return drop_packet(drop_reason::MTU_EXCEEDED);
    }
    if ip.is_fragment {
        return drop_packet(drop_reason::FRAGMENT);
    }
    let l4 = match l4 {
        Ok(t) => t,
        Err(TransportError::Malformed) => return drop_packet(drop_reason::MALFORMED),
        Err(TransportError::Unsupported) => {
            return drop_packet(drop_reason::UNSUPPORTED_PROTOCOL);
        }
    };

    let Some(scratch) = nat::scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    // Field by field: a struct literal would be built on the stack first and copied.
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let req: &mut SnatRequest = unsafe { &mut (*scratch).req };
    fill_flow_key_v4(
        &mut req.orig,
        ip.src,
        ip.dst,
        l4.src_port,
        l4.dst_port,
        l4.protocol,
    );
    req.uplink_addr = uplink_addr;
    req.uplink_ifindex = egress;
    req.endpoint_ifindex = ep.host_ifindex;
    req.endpoint_mac = ep.mac;
    req.network_id = ep.network_id;
    req.now = conntrack::now();
    req.bytes = ctx.len() as u64;
    req.tcp_flags = l4.tcp_flags;
    let reason = nat::snat_mapping(scratch);
    if reason != 0 {
        return drop_packet(reason);
    }
    // SAFETY: as above; `snat_mapping` left the result there.
    let mapping: Mapping = unsafe { (*scratch).mapping };
    // SAFETY: as above (the published-port scratch slot, also free here).
    let t = unsafe { &mut (*s).translation };
    t.start(ip, &l4);
    t.set_source(v4_of(&mapping.addr), mapping.port);
    send::prepare_along(s, &route, egress, counter::SNAT_OUT)
}
