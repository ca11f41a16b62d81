//! Owns `np_uplink`, TC ingress of every uplink: replies of masqueraded flows are translated
//! back and delivered straight into the endpoint's namespace, packets for published ports are
//! translated to their endpoint (`dnat`); everything else goes to the host stack untouched.
//!
//! Choices for packets netpath does not translate on the uplink:
//! - Malformed IPv4 (bad IHL, truncated, lengths that do not add up) is passed to the stack
//!   unchanged and counted as `PASSED_TO_STACK`: the kernel validates and drops it itself, and
//!   an uplink carries the host's own traffic, which netpath must not police. `MALFORMED` is
//!   counted only by programs that actually drop.
//! - Fragments, even of a masqueraded flow, go to the stack: only the first carries ports, and
//!   netpath does not reassemble (outgoing fragments are dropped as `FRAGMENT` for the same
//!   reason, so a masqueraded flow only gets fragments back when a remote fragments a reply).
//!   A first fragment addressed to a published port is dropped as `FRAGMENT`.
use aya_ebpf::programs::TcContext;
use netpath_common::{counter, ct_kind, drop_reason};

use crate::{
    conntrack::{self, addr_key_v4, flow_key_v4, touch_nat},
    dnat,
    maps::{NP_EP_BY_ADDR, NP_NAT, NP_NETWORKS},
    parse::{self, ETH_P_IP, ICMP_ECHO_REPLY, TCP_ACK, TCP_SYN, is_zero_mac, v4_of},
    send,
    stats::{drop_packet, pass_to_stack},
};

pub fn handle(ctx: TcContext) -> i32 {
    let Ok(eth) = parse::ethernet(&ctx) else {
        return pass_to_stack();
    };
    if eth.ether_type != ETH_P_IP {
        return pass_to_stack();
    }
    let Ok(ip) = parse::ipv4(&ctx) else {
        return pass_to_stack();
    };
    if ip.is_fragment && !ip.is_first_fragment {
        return pass_to_stack();
    }
    let Ok(l4) = parse::transport(&ctx, &ip, ICMP_ECHO_REPLY) else {
        return pass_to_stack();
    };
    if ip.is_fragment {
        return dnat::uplink_fragment(&ctx, &ip, &l4);
    }
    let key = flow_key_v4(ip.src, ip.dst, l4.src_port, l4.dst_port, l4.protocol);
    let Some(nat_entry) = NP_NAT.get_ptr_mut(&key.0) else {
        return dnat::uplink_new_flow(&ctx, &ip, &l4, None);
    };
    // SAFETY: a live map value; field read once.
    let kind = unsafe { (*nat_entry).kind };
    let now = conntrack::now();
    if kind == ct_kind::DNAT {
        // A SYN (without ACK) is a new connection even on a reused source port: it goes
        // through NP_PORTS again, so an unpublished port stops it, and the flow's reply entry
        // (which another host port to the same endpoint port may have taken meanwhile: inside
        // the endpoint both flows look alike) is written anew; entries that would not change
        // but for their counters are renewed in place (`dnat::start_flow`).
        let new_connection = l4.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
        if !new_connection && dnat::is_live(nat_entry, now, l4.protocol) {
            return dnat::established(&ctx, &ip, &l4, nat_entry, now);
        }
        return dnat::uplink_new_flow(&ctx, &ip, &l4, Some(nat_entry));
    }
    if kind != ct_kind::SNAT && kind != 0 {
        // A hairpin entry (keyed by an endpoint's own address): never valid from outside.
        return pass_to_stack();
    }
    // SAFETY: a live map value; fields copied out.
    let (orig_addr, orig_port, endpoint_ifindex) = unsafe {
        (
            (*nat_entry).orig_addr,
            (*nat_entry).orig_port,
            (*nat_entry).endpoint_ifindex,
        )
    };

    // Where the endpoint's packets are delivered, cached in the entry when the mapping was
    // made. An entry without them (migrated from an older netpath) is completed from the
    // endpoint tables once; the endpoint must still sit on the veth the mapping was made for,
    // so a mapping left by a removed endpoint never delivers to a new one with its address.
    // SAFETY: a live map value; fields copied out.
    let (mut ep_mac, mut gateway_mac) = unsafe { ((*nat_entry).ep_mac, (*nat_entry).gateway_mac) };
    if is_zero_mac(ep_mac) {
        let Some(ep) = NP_EP_BY_ADDR.get_ptr(&addr_key_v4(v4_of(&orig_addr)).0) else {
            return drop_packet(drop_reason::UNKNOWN_ENDPOINT);
        };
        // SAFETY: a live map value; fields copied out.
        let (mac, ep_ifindex, network_id) =
            unsafe { ((*ep).mac, (*ep).host_ifindex, (*ep).network_id) };
        if ep_ifindex != endpoint_ifindex {
            return drop_packet(drop_reason::UNKNOWN_ENDPOINT);
        }
        let Some(net) = NP_NETWORKS.get_ptr(network_id) else {
            return drop_packet(drop_reason::UNKNOWN_NETWORK);
        };
        ep_mac = mac;
        // SAFETY: live map values; fields copied out and into the flow's entry.
        unsafe {
            gateway_mac = (*net).gateway_mac;
            (*nat_entry).ep_mac = ep_mac;
            (*nat_entry).gateway_mac = gateway_mac;
        }
    }

    if ip.ttl <= 1 {
        // Forwarding would need ICMP time exceeded; the stack would instead take the packet
        // as its own (it is addressed to the uplink) and might answer with a TCP reset.
        return drop_packet(drop_reason::TTL_EXCEEDED);
    }
    touch_nat(nat_entry, now, ctx.len() as u64, l4.protocol, l4.tcp_flags);

    // The endpoint sees the packet come from its gateway, as if the bridge had routed it.
    let Some(s) = dnat::scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    let t = unsafe { &mut (*s).translation };
    t.start(&ip, &l4);
    t.set_destination(&l4, v4_of(&orig_addr), orig_port);
    t.set_macs(ep_mac, gateway_mac);
    send::prepare(s, send::how::PEER, endpoint_ifindex, counter::SNAT_REPLY_IN);
    send::apply(&ctx, s, &ip, &l4)
}
