//! Program tests (needs root): the eBPF programs run on crafted Ethernet frames through
//! BPF_PROG_TEST_RUN, with their maps filled by hand. No traffic leaves: every test runs in a
//! thread that first moves into its own throwaway network namespace (`unshare(CLONE_NEWNET)`),
//! where it creates the veths, addresses, routes and neighbours the FIB lookups need; the
//! namespace disappears with the thread.
//!
//! Checks are byte by byte: addresses, ports, TTL, and every IP/TCP/UDP/ICMP checksum
//! recomputed from scratch by the small verifier at the end of this file.
mod common;

use std::os::fd::AsFd as _;

use aya::programs::SchedClassifier;
use common::*;
use netpath::datapath::testrun::{TestRunOutput, run_skb_program};
use netpath_common::{
    DatapathConfig, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, addr_v4, counter, ct_kind, ct_state,
    drop_reason, network_flags, program_name,
};

#[test]
fn checksum_verifier_knows_a_reference_header() {
    // RFC 1071-style worked example (a real IPv4 header with checksum 0xb861).
    let header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(checksum(&header), 0);
    let mut broken = header;
    broken[8] = 0x3f;
    assert_ne!(checksum(&broken), 0);
}

// ---------------------------------------------------------------------------------------------
// np_from_ep: local delivery, isolation, policy, anti-spoofing, parsing.

#[test]
fn same_network_is_redirected_to_the_peer_endpoint() {
    in_private_netns(|| {
        let lab = Lab::new();
        let frame = tcp_frame_from_a(B_IP, 40000, 8080, TCP_SYN);
        let out = lab.run_from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(lab.stat(counter::FORWARDED_LOCAL), 1);
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 0);
        assert_eq!(lab.total_drops(), 0);
        // Only the destination MAC changes; IP and TCP are untouched (no routing hop).
        assert_eq!(&out.data[0..6], &B_MAC);
        assert_eq!(&out.data[6..], &frame[6..]);
    });
}

#[test]
fn other_network_is_dropped_even_through_the_gateway_mac() {
    in_private_netns(|| {
        let lab = Lab::new();
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(C_IP, 40000, 80, TCP_SYN));
        lab.assert_dropped(&out, drop_reason::NETWORK_ISOLATION);
        assert_eq!(lab.stat(counter::FORWARDED_LOCAL), 0);
    });
}

#[test]
fn icc_disabled_drops_endpoint_to_endpoint() {
    in_private_netns(|| {
        let mut lab = Lab::new();
        lab.set_network_flags(
            NET1,
            network_flags::MASQUERADE | network_flags::ICC_DISABLED,
        );
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(B_IP, 40000, 80, TCP_SYN));
        lab.assert_dropped(&out, drop_reason::ICC_DISABLED);
    });
}

#[test]
fn internal_network_reaches_only_its_gateway() {
    in_private_netns(|| {
        let mut lab = Lab::new();
        lab.set_network_flags(NET1, network_flags::INTERNAL);
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(GW1, 40000, 53, TCP_SYN));
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 1);
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        lab.assert_dropped(&out, drop_reason::INTERNAL_NETWORK);
        assert!(lab.nat_entries().is_empty());
    });
}

#[test]
fn spoofed_source_mac_is_dropped() {
    in_private_netns(|| {
        let lab = Lab::new();
        let mut frame = tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN);
        frame[6..12].copy_from_slice(&B_MAC);
        let out = lab.run_from_ep(lab.ep_a, &frame);
        lab.assert_dropped(&out, drop_reason::SPOOFED_MAC);
    });
}

#[test]
fn spoofed_source_ip_is_dropped() {
    in_private_netns(|| {
        let lab = Lab::new();
        let spec = Ipv4Spec::new(B_IP, REMOTE, IPPROTO_TCP);
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 1, 80, TCP_SYN, b"")),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        lab.assert_dropped(&out, drop_reason::SPOOFED_IP);
    });
}

#[test]
fn unknown_veth_is_dropped() {
    in_private_netns(|| {
        let lab = Lab::new();
        let out = lab.run_from_ep(lab.stranger, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        lab.assert_dropped(&out, drop_reason::UNKNOWN_ENDPOINT);
    });
}

#[test]
fn arp_and_ipv6_go_to_the_bridge() {
    in_private_netns(|| {
        let lab = Lab::new();
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
        arp.extend_from_slice(&A_MAC);
        arp.extend_from_slice(&A_IP);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&GW1);
        let frame = ethernet([0xff; 6], A_MAC, ETH_P_ARP, &arp);
        let out = lab.run_from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame, "ARP must pass untouched");
        let ipv6 = ethernet([0x33, 0x33, 0, 0, 0, 1], A_MAC, 0x86dd, &[0x60; 40]);
        let out = lab.run_from_ep(lab.ep_a, &ipv6);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 2);
        assert_eq!(lab.total_drops(), 0);
    });
}

#[test]
fn malformed_frames_are_dropped_without_harm() {
    in_private_netns(|| {
        let lab = Lab::new();
        let good = tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN);

        // The kernel itself refuses test frames shorter than an Ethernet header, and IPv4
        // frames shorter than a 20-byte IP header, so those never reach the program here; the
        // parser's bounds checks are exercised by the cases below (IHL, lengths, L4 header).
        let prog: &SchedClassifier = lab
            .ebpf
            .program(program_name::FROM_ENDPOINT)
            .unwrap()
            .try_into()
            .unwrap();
        let fd = prog.fd().unwrap().as_fd();
        for len in [10, 14, 15, 26, 33] {
            let err = run_skb_program(fd, &good[..len], None).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{len}-byte frame");
        }
        assert_eq!(lab.total_drops(), 0);

        // A bare IPv4 header whose total length promises the TCP segment too.
        let out = lab.run_from_ep(lab.ep_a, &good[..34]);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 1);

        // Version 6 in an IPv4 frame.
        let mut bad = good.clone();
        bad[14] = 0x65;
        let out = lab.run_from_ep(lab.ep_a, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 2);

        // IHL 4 (< 5).
        let mut bad = good.clone();
        bad[14] = 0x44;
        let out = lab.run_from_ep(lab.ep_a, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 3);

        // IHL 15 (60 bytes) on a packet whose IP part is 45 bytes.
        let mut bad = good.clone();
        bad[14] = 0x4f;
        let out = lab.run_from_ep(lab.ep_a, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 4);

        // Total length beyond the packet.
        let mut bad = good.clone();
        bad[16..18].copy_from_slice(&1400u16.to_be_bytes());
        let out = lab.run_from_ep(lab.ep_a, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 5);

        // TCP header cut short on the masquerade path.
        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_TCP);
        let short_tcp = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &[0x9c, 0x40, 0, 80, 0, 0]),
        );
        let out = lab.run_from_ep(lab.ep_a, &short_tcp);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 6);

        assert_eq!(lab.total_drops(), 6);
        assert!(lab.nat_entries().is_empty());
    });
}

#[test]
fn fragments_are_not_masqueraded() {
    in_private_netns(|| {
        let lab = Lab::new();
        let mut spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_UDP);
        spec.frag = 0x2000; // MF, offset 0
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &udp(&spec, 5000, 53, b"x", true)),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        lab.assert_dropped(&out, drop_reason::FRAGMENT);
        spec.frag = 0x0010; // a later fragment
        let frame = ethernet(GW1_MAC, A_MAC, ETH_P_IP, &ipv4(&spec, &[0u8; 16]));
        let out = lab.run_from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::FRAGMENT), 2);
    });
}

#[test]
fn unsupported_protocols_are_not_masqueraded() {
    in_private_netns(|| {
        let lab = Lab::new();
        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_GRE);
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &[0, 0, 0x08, 0, 1, 2, 3, 4]),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        lab.assert_dropped(&out, drop_reason::UNSUPPORTED_PROTOCOL);
        // ICMP other than echo request (here: a timestamp request) cannot be masqueraded either.
        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_ICMP);
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &icmp_echo(13, 1, 1, &[0; 12])),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::UNSUPPORTED_PROTOCOL), 2);
    });
}

#[test]
fn ttl_one_goes_to_the_stack() {
    in_private_netns(|| {
        let lab = Lab::new();
        let mut spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_TCP);
        spec.ttl = 1;
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 40000, 80, TCP_SYN, b"")),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame);
        assert_eq!(lab.stat(counter::TTL_TO_STACK), 1);
        assert!(lab.nat_entries().is_empty());
    });
}

#[test]
fn network_without_masquerade_is_routed_by_the_stack() {
    in_private_netns(|| {
        let mut lab = Lab::new();
        lab.set_network_flags(NET1, 0);
        let frame = tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN);
        let out = lab.run_from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame);
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 1);
        assert!(lab.nat_entries().is_empty());
    });
}

// ---------------------------------------------------------------------------------------------
// Masquerade.

/// Asserts the outgoing translation of a packet from A: uplink source, TTL - 1, next-hop MACs.
fn assert_snat_frame(out: &TestRunOutput, dst: [u8; 4]) -> Parsed {
    assert_eq!(out.retval, TC_ACT_REDIRECT);
    let p = parse_and_verify(&out.data);
    assert_eq!(p.src, UPLINK_IP, "source is the uplink's address");
    assert_eq!(p.dst, dst, "destination unchanged");
    assert_eq!(p.ttl, 63, "TTL decremented");
    assert_eq!(p.eth_dst, NEXT_HOP_MAC, "next hop's MAC from the FIB");
    assert_eq!(p.eth_src, UPLINK_MAC, "uplink's MAC from the FIB");
    p
}

#[test]
fn tcp_is_masqueraded_and_the_mapping_recorded() {
    in_private_netns(|| {
        let lab = Lab::new();
        let frame = tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN);
        let out = lab.run_from_ep(lab.ep_a, &frame);
        let p = assert_snat_frame(&out, REMOTE);
        assert_eq!(p.protocol, IPPROTO_TCP);
        assert_eq!(p.sport, 40000, "an in-range source port is kept");
        assert_eq!(p.dport, 80);
        // Everything after the ports is as sent (sequence number, flags, payload).
        assert_eq!(&p.l4[4..16], &frame[34 + 4..34 + 16]);
        assert_eq!(&p.l4[20..], b"hello");
        assert_eq!(out.data.len(), frame.len());

        assert_eq!(lab.stat(counter::SNAT_OUT), 1);
        assert_eq!(lab.stat(counter::NAT_MAPPINGS_CREATED), 1);
        assert_eq!(lab.total_drops(), 0);

        let ct = lab
            .conntrack(&flow(A_IP, REMOTE, 40000, 80, IPPROTO_TCP))
            .expect("conntrack entry");
        assert_eq!(ct.nat_addr, addr_v4(UPLINK_IP));
        assert_eq!(ct.nat_port, 40000u16.to_be_bytes());
        assert_eq!(ct.kind, ct_kind::SNAT);
        assert_eq!(ct.state, 0);
        assert_eq!(ct.uplink_ifindex, lab.uplink);
        assert_eq!(ct.packets, 1);
        assert_eq!(ct.bytes, frame.len() as u64);
        assert_ne!(ct.last_seen_ns, 0);

        let nat = lab
            .nat(&flow(REMOTE, UPLINK_IP, 80, 40000, IPPROTO_TCP))
            .expect("NAT entry");
        assert_eq!(nat.orig_addr, addr_v4(A_IP));
        assert_eq!(nat.orig_port, 40000u16.to_be_bytes());
        assert_eq!(nat.endpoint_ifindex, lab.ep_a);
        assert_eq!(nat.packets, 0);
        assert_eq!(lab.nat_entries().len(), 1);
    });
}

#[test]
fn second_packet_reuses_the_mapping() {
    in_private_netns(|| {
        let lab = Lab::new();
        let first = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        let first = assert_snat_frame(&first, REMOTE);
        let fin = tcp_frame_from_a(REMOTE, 40000, 80, TCP_ACK | TCP_FIN);
        let second = lab.run_from_ep(lab.ep_a, &fin);
        let second = assert_snat_frame(&second, REMOTE);
        assert_eq!(second.sport, first.sport);
        assert_eq!(lab.stat(counter::NAT_MAPPINGS_CREATED), 1);
        assert_eq!(lab.stat(counter::SNAT_OUT), 2);
        let ct = lab
            .conntrack(&flow(A_IP, REMOTE, 40000, 80, IPPROTO_TCP))
            .unwrap();
        assert_eq!(ct.packets, 2);
        assert_eq!(ct.state & ct_state::TCP_FIN_SEEN, ct_state::TCP_FIN_SEEN);
        assert_eq!(lab.nat_entries().len(), 1);
    });
}

#[test]
fn tcp_with_ip_options_is_masqueraded() {
    in_private_netns(|| {
        let lab = Lab::new();
        let mut spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_TCP);
        // IHL 6: one 4-byte option word (NOP, NOP, NOP, EOL).
        spec.options = vec![1, 1, 1, 0];
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 41000, 443, TCP_SYN, b"opt")),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        let p = assert_snat_frame(&out, REMOTE);
        assert_eq!(p.ip_header.len(), 24);
        assert_eq!(&p.ip_header[20..], &[1, 1, 1, 0], "options kept");
        assert_eq!(
            (p.sport, p.dport),
            (41000, 443),
            "ports read after the options"
        );
        assert_eq!(&p.l4[20..], b"opt");
        assert!(
            lab.nat(&flow(REMOTE, UPLINK_IP, 443, 41000, IPPROTO_TCP))
                .is_some()
        );
    });
}

#[test]
fn udp_is_masqueraded_with_a_valid_checksum() {
    in_private_netns(|| {
        let lab = Lab::new();
        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_UDP);
        // Source port below the range: a port from the range is allocated.
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &udp(&spec, 5353, 53, b"query", true)),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        let p = assert_snat_frame(&out, REMOTE);
        assert_ne!(
            u16::from_be_bytes([p.l4[6], p.l4[7]]),
            0,
            "checksum present"
        );
        let range = DatapathConfig::DEFAULT.nat_port_min..=DatapathConfig::DEFAULT.nat_port_max;
        assert!(
            range.contains(&p.sport),
            "port {} in the NAT range",
            p.sport
        );
        assert_eq!(p.dport, 53);
        let ct = lab
            .conntrack(&flow(A_IP, REMOTE, 5353, 53, IPPROTO_UDP))
            .unwrap();
        assert_eq!(ct.nat_port, p.sport.to_be_bytes());
        let nat = lab
            .nat(&flow(REMOTE, UPLINK_IP, 53, p.sport, IPPROTO_UDP))
            .unwrap();
        assert_eq!(nat.orig_port, 5353u16.to_be_bytes());
    });
}

#[test]
fn udp_without_checksum_keeps_it_zero() {
    in_private_netns(|| {
        let lab = Lab::new();
        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_UDP);
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &udp(&spec, 5353, 53, b"query", false)),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        let p = assert_snat_frame(&out, REMOTE);
        assert_ne!(p.sport, 5353, "the port was translated");
        assert_eq!(&p.l4[6..8], &[0, 0], "UDP checksum 0 (none) stays 0");
    });
}

#[test]
fn icmp_echo_is_masqueraded_by_identifier() {
    in_private_netns(|| {
        let lab = Lab::new();
        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_ICMP);
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &icmp_echo(8, 0x1234, 7, b"ping")),
        );
        let out = lab.run_from_ep(lab.ep_a, &frame);
        let p = assert_snat_frame(&out, REMOTE);
        assert_eq!(p.sport, 8, "still an echo request");
        let id = p.dport;
        let range = DatapathConfig::DEFAULT.nat_port_min..=DatapathConfig::DEFAULT.nat_port_max;
        assert!(range.contains(&id), "identifier {id:#x} from the NAT range");
        assert_eq!(&p.l4[6..8], &7u16.to_be_bytes(), "sequence unchanged");
        let ct = lab
            .conntrack(&flow(A_IP, REMOTE, 0x1234, 0, IPPROTO_ICMP))
            .unwrap();
        assert_eq!(ct.nat_port, id.to_be_bytes());
        let nat = lab
            .nat(&flow(REMOTE, UPLINK_IP, id, 0, IPPROTO_ICMP))
            .unwrap();
        assert_eq!(nat.orig_port, 0x1234u16.to_be_bytes());

        // The reply comes back to the original identifier.
        let rspec = Ipv4Spec::new(REMOTE, UPLINK_IP, IPPROTO_ICMP);
        let reply = ethernet(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(&rspec, &icmp_echo(0, id, 7, b"ping")),
        );
        let out = lab.run_from_uplink(&reply);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let r = parse_and_verify(&out.data);
        assert_eq!(r.dst, A_IP);
        assert_eq!((r.sport, r.dport), (0, 0x1234));
        assert_eq!(r.ttl, 63);
        assert_eq!(lab.stat(counter::SNAT_REPLY_IN), 1);
    });
}

#[test]
fn unresolved_next_hop_uses_redirect_neigh() {
    in_private_netns(|| {
        let lab = Lab::new();
        let frame = tcp_frame_from_a(REMOTE_NO_NEIGH, 40000, 80, TCP_SYN);
        let out = lab.run_from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!(p.src, UPLINK_IP);
        assert_eq!(p.ttl, 63);
        // MACs are left to bpf_redirect_neigh.
        assert_eq!(&out.data[..12], &frame[..12]);
        assert_eq!(lab.stat(counter::SNAT_OUT), 1);
    });
}

#[test]
fn reply_on_the_uplink_is_translated_back_and_delivered() {
    in_private_netns(|| {
        let lab = Lab::new();
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        let nat_port = assert_snat_frame(&out, REMOTE).sport;

        let spec = Ipv4Spec::new(REMOTE, UPLINK_IP, IPPROTO_TCP);
        let reply = ethernet(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(
                &spec,
                &tcp(&spec, 80, nat_port, TCP_SYN | TCP_ACK, b"world"),
            ),
        );
        let out = lab.run_from_uplink(&reply);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!(p.src, REMOTE);
        assert_eq!(p.dst, A_IP, "destination restored");
        assert_eq!((p.sport, p.dport), (80, 40000), "port restored");
        assert_eq!(p.ttl, 63);
        assert_eq!(p.eth_src, GW1_MAC, "comes from the endpoint's gateway");
        assert_eq!(p.eth_dst, A_MAC);
        assert_eq!(&p.l4[20..], b"world");
        assert_eq!(lab.stat(counter::SNAT_REPLY_IN), 1);
        assert_eq!(lab.total_drops(), 0);
        let nat = lab
            .nat(&flow(REMOTE, UPLINK_IP, 80, nat_port, IPPROTO_TCP))
            .unwrap();
        assert_eq!(nat.packets, 1);
        assert_eq!(nat.bytes, reply.len() as u64);
        assert_ne!(nat.last_seen_ns, 0);

        // A packet for no mapping (another port) is the host's own: untouched.
        let stranger = ethernet(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(
                &spec,
                &tcp(&spec, 80, nat_port.wrapping_add(1), TCP_ACK, b""),
            ),
        );
        let out = lab.run_from_uplink(&stranger);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, stranger);
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 1);
    });
}

#[test]
fn uplink_passes_malformed_and_fragments_untouched() {
    in_private_netns(|| {
        let lab = Lab::new();
        let spec = Ipv4Spec::new(REMOTE, UPLINK_IP, IPPROTO_TCP);
        let good = ethernet(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 80, 40000, TCP_ACK, b"")),
        );
        let mut bad = good.clone();
        bad[14] = 0x43;
        let out = lab.run_from_uplink(&bad);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, bad);
        let mut frag_spec = spec.clone();
        frag_spec.frag = 0x2000;
        let frag = ethernet(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(&frag_spec, &tcp(&spec, 80, 40000, TCP_ACK, b"")),
        );
        let out = lab.run_from_uplink(&frag);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 2);
        assert_eq!(
            lab.total_drops(),
            0,
            "the uplink never drops what it does not translate"
        );
    });
}

#[test]
fn port_collision_picks_another_port() {
    in_private_netns(|| {
        let lab = Lab::new();
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        assert_eq!(assert_snat_frame(&out, REMOTE).sport, 40000);

        // B uses the same source port towards the same remote: 40000 is taken.
        let spec = Ipv4Spec::new(B_IP, REMOTE, IPPROTO_TCP);
        let frame = ethernet(
            GW1_MAC,
            B_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 40000, 80, TCP_SYN, b"")),
        );
        let out = lab.run_from_ep(lab.ep_b, &frame);
        let p = assert_snat_frame(&out, REMOTE);
        assert_ne!(p.sport, 40000);
        let range = DatapathConfig::DEFAULT.nat_port_min..=DatapathConfig::DEFAULT.nat_port_max;
        assert!(range.contains(&p.sport));
        assert_eq!(lab.stat(counter::NAT_MAPPINGS_CREATED), 2);
        let nat_b = lab
            .nat(&flow(REMOTE, UPLINK_IP, 80, p.sport, IPPROTO_TCP))
            .unwrap();
        assert_eq!(nat_b.orig_addr, addr_v4(B_IP));
        assert_eq!(nat_b.endpoint_ifindex, lab.ep_b);
        let nat_a = lab
            .nat(&flow(REMOTE, UPLINK_IP, 80, 40000, IPPROTO_TCP))
            .unwrap();
        assert_eq!(nat_a.orig_addr, addr_v4(A_IP), "A's mapping is untouched");
    });
}

#[test]
fn exhausted_port_range_drops_new_flows() {
    in_private_netns(|| {
        let mut lab = Lab::new();
        lab.set_config(DatapathConfig {
            nat_port_min: 40000,
            nat_port_max: 40000,
            ..DatapathConfig::DEFAULT
        });
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        assert_eq!(assert_snat_frame(&out, REMOTE).sport, 40000);
        let spec = Ipv4Spec::new(B_IP, REMOTE, IPPROTO_TCP);
        let frame = ethernet(
            GW1_MAC,
            B_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 40001, 80, TCP_SYN, b"")),
        );
        let out = lab.run_from_ep(lab.ep_b, &frame);
        lab.assert_dropped(&out, drop_reason::NAT_PORTS_EXHAUSTED);
        assert!(
            lab.conntrack(&flow(B_IP, REMOTE, 40001, 80, IPPROTO_TCP))
                .is_none()
        );
        assert_eq!(lab.nat_entries().len(), 1);
    });
}

#[test]
fn stale_mapping_is_taken_over() {
    in_private_netns(|| {
        let mut lab = Lab::new();
        // One port, and a 1-second TCP timeout so the first flow goes stale quickly.
        lab.set_config(DatapathConfig {
            nat_port_min: 40000,
            nat_port_max: 40000,
            tcp_established_timeout_s: 1,
            ..DatapathConfig::DEFAULT
        });
        let out = lab.run_from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        assert_snat_frame(&out, REMOTE);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let spec = Ipv4Spec::new(B_IP, REMOTE, IPPROTO_TCP);
        let frame = ethernet(
            GW1_MAC,
            B_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 40001, 80, TCP_SYN, b"")),
        );
        let out = lab.run_from_ep(lab.ep_b, &frame);
        assert_eq!(assert_snat_frame(&out, REMOTE).sport, 40000);
        let nat = lab
            .nat(&flow(REMOTE, UPLINK_IP, 80, 40000, IPPROTO_TCP))
            .unwrap();
        assert_eq!(nat.orig_addr, addr_v4(B_IP), "the mapping now belongs to B");
        assert!(
            lab.conntrack(&flow(A_IP, REMOTE, 40000, 80, IPPROTO_TCP))
                .is_none(),
            "A's stale conntrack entry is gone"
        );
    });
}
