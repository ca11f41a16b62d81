//! Program tests of published ports (needs root): DNAT on `np_uplink`, the reverse translation
//! and hairpin on `np_from_ep`, host-only entries and guards, through BPF_PROG_TEST_RUN on
//! crafted frames in a private namespace (see `common`). Every output frame is checked byte by
//! byte, with every checksum recomputed from scratch.
//!
//! The cgroup socket programs cannot be test-run; the end-to-end tests cover them.
mod common;

use aya::maps::HashMap;
use common::*;
use netpath::datapath::testrun::TestRunOutput;
use netpath_common::{
    AddrKey, FAMILY_IPV4, IPPROTO_TCP, IPPROTO_UDP, PortKey, PublishedPort, addr_v4, counter,
    ct_kind, ct_state, drop_reason, map_name, port_flags,
};

/// A host address that is not the uplink's (on a spare veth in the test namespace; this
/// kernel has no dummy devices).
const OTHER_HOST_ADDR: [u8; 4] = [100, 64, 0, 1];
/// Routed through the host, not one of its addresses.
const TRANSIT: [u8; 4] = [192, 0, 2, 50];
const LOOPBACK: [u8; 4] = [127, 0, 0, 1];
const WILDCARD: [u8; 4] = [0, 0, 0, 0];
const CLIENT_PORT: u16 = 51000;

fn new_lab() -> Lab {
    let lab = Lab::new();
    ip("link add dum0 type veth peer name dum0-p");
    ip("addr add 100.64.0.1/32 dev dum0");
    ip("link set dum0 up");
    ip("link set dum0-p up");
    lab
}

fn port_key(host: [u8; 4], port: u16, protocol: u8) -> PortKey {
    PortKey {
        host_addr: addr_v4(host),
        host_port: port.to_be_bytes(),
        protocol,
        family: FAMILY_IPV4,
    }
}

/// `NP_PORTS[host:port/protocol] = endpoint:endpoint_port` (what the control plane writes).
fn publish(
    lab: &mut Lab,
    host: [u8; 4],
    port: u16,
    protocol: u8,
    endpoint: ([u8; 4], u16, u32),
    flags: u8,
) {
    let mut ports: HashMap<_, PortKey, PublishedPort> =
        HashMap::try_from(lab.ebpf.map_mut(map_name::PORTS).unwrap()).unwrap();
    let value = PublishedPort {
        endpoint_addr: addr_v4(endpoint.0),
        endpoint_port: endpoint.1.to_be_bytes(),
        family: FAMILY_IPV4,
        flags,
        endpoint_ifindex: endpoint.2,
    };
    ports
        .insert(port_key(host, port, protocol), value, 0)
        .unwrap();
}

fn unpublish(lab: &mut Lab, host: [u8; 4], port: u16, protocol: u8) {
    let mut ports: HashMap<_, PortKey, PublishedPort> =
        HashMap::try_from(lab.ebpf.map_mut(map_name::PORTS).unwrap()).unwrap();
    ports.remove(&port_key(host, port, protocol)).unwrap();
}

/// What user space keeps in `NP_HOST_ADDRS`: the namespace's own addresses.
fn add_host_addr(lab: &mut Lab, addr: [u8; 4], ifindex: u32) {
    let mut map: HashMap<_, AddrKey, u32> =
        HashMap::try_from(lab.ebpf.map_mut(map_name::HOST_ADDRS).unwrap()).unwrap();
    map.insert(AddrKey::v4(addr), ifindex, 0).unwrap();
}

fn host_addrs(lab: &mut Lab) {
    let uplink = lab.uplink;
    add_host_addr(lab, UPLINK_IP, uplink);
    add_host_addr(lab, OTHER_HOST_ADDR, ifindex("dum0"));
}

/// A's port 80 (TCP) published on every host address as 8080, and A's port 53 (UDP) on the
/// uplink's address as 5353.
fn publish_a(lab: &mut Lab) {
    let a = (A_IP, 80, lab.ep_a);
    publish(lab, WILDCARD, 8080, IPPROTO_TCP, a, 0);
    let a = (A_IP, 53, lab.ep_a);
    publish(lab, UPLINK_IP, 5353, IPPROTO_UDP, a, 0);
}

/// A lab with the host's addresses known and A's ports published ([`publish_a`]).
fn published_lab() -> Lab {
    let mut lab = new_lab();
    host_addrs(&mut lab);
    publish_a(&mut lab);
    lab
}

fn tcp_from_lan(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let spec = Ipv4Spec::new(src, dst, IPPROTO_TCP);
    ethernet(
        UPLINK_MAC,
        NEXT_HOP_MAC,
        ETH_P_IP,
        &ipv4(&spec, &tcp(&spec, sport, dport, flags, b"GET /")),
    )
}

fn udp_from_lan(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let spec = Ipv4Spec::new(REMOTE, dst, IPPROTO_UDP);
    ethernet(
        UPLINK_MAC,
        NEXT_HOP_MAC,
        ETH_P_IP,
        &ipv4(&spec, &udp(&spec, CLIENT_PORT, dport, b"query", true)),
    )
}

/// A TCP frame an endpoint sends (to its gateway's MAC).
fn tcp_from(
    src: ([u8; 4], [u8; 6], [u8; 6]),
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let (ip_src, mac, gw_mac) = src;
    let spec = Ipv4Spec::new(ip_src, dst, IPPROTO_TCP);
    ethernet(
        gw_mac,
        mac,
        ETH_P_IP,
        &ipv4(&spec, &tcp(&spec, sport, dport, flags, b"reply")),
    )
}

const A: ([u8; 4], [u8; 6], [u8; 6]) = (A_IP, A_MAC, GW1_MAC);
const B: ([u8; 4], [u8; 6], [u8; 6]) = (B_IP, B_MAC, GW1_MAC);
const C: ([u8; 4], [u8; 6], [u8; 6]) = (C_IP, C_MAC, GW2_MAC);

/// Asserts a frame delivered into endpoint A: translated to A:80, checksums valid.
fn assert_into_a(out: &TestRunOutput, src: [u8; 4], sport: u16) -> Parsed {
    assert_eq!(out.retval, TC_ACT_REDIRECT, "verdict");
    let p = parse_and_verify(&out.data);
    assert_eq!(
        (p.dst, p.dport),
        (A_IP, 80),
        "destination translated to the endpoint"
    );
    assert_eq!((p.src, p.sport), (src, sport), "source");
    assert_eq!(p.ttl, 63);
    assert_eq!(p.eth_dst, A_MAC);
    assert_eq!(p.eth_src, GW1_MAC, "comes from the endpoint's gateway");
    p
}

// ---------------------------------------------------------------------------------------------
// np_uplink: DNAT

#[test]
fn tcp_to_a_wildcard_port_is_translated_and_recorded() {
    in_private_netns(|| {
        let lab = published_lab();
        let frame = tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, TCP_SYN);
        let out = lab.run_from_uplink(&frame);
        let p = assert_into_a(&out, REMOTE, CLIENT_PORT);
        assert_eq!(
            &p.l4[4..16],
            &frame[34 + 4..34 + 16],
            "seq/ack/flags untouched"
        );
        assert_eq!(&p.l4[20..], b"GET /");
        assert_eq!(lab.stat(counter::DNAT_IN), 1);
        assert_eq!(lab.total_drops(), 0);

        let nat = lab
            .nat(&flow(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, IPPROTO_TCP))
            .expect("NAT entry of the client's direction");
        assert_eq!(nat.kind, ct_kind::DNAT);
        assert_eq!(
            (nat.orig_addr, nat.orig_port),
            (addr_v4(A_IP), 80u16.to_be_bytes())
        );
        assert_eq!(nat.endpoint_ifindex, lab.ep_a);
        assert_eq!(nat.packets, 1);
        let ct = lab
            .conntrack(&flow(A_IP, REMOTE, 80, CLIENT_PORT, IPPROTO_TCP))
            .expect("conntrack entry of the endpoint's replies");
        assert_eq!(ct.kind, ct_kind::DNAT);
        assert_eq!(
            (ct.nat_addr, ct.nat_port),
            (addr_v4(UPLINK_IP), 8080u16.to_be_bytes())
        );
        assert_eq!(ct.uplink_ifindex, lab.uplink);

        // The endpoint's reply leaves from the published address and port, to the next hop.
        let reply = tcp_from(A, REMOTE, 80, CLIENT_PORT, TCP_SYN | TCP_ACK);
        let out = lab.run_from_ep(lab.ep_a, &reply);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!(
            (p.src, p.sport),
            (UPLINK_IP, 8080),
            "source translated back"
        );
        assert_eq!((p.dst, p.dport), (REMOTE, CLIENT_PORT));
        assert_eq!(p.ttl, 63);
        assert_eq!((p.eth_dst, p.eth_src), (NEXT_HOP_MAC, UPLINK_MAC));
        assert_eq!(&p.l4[20..], b"reply");
        assert_eq!(lab.stat(counter::DNAT_REPLY_OUT), 1);
        assert_eq!(lab.stat(counter::SNAT_OUT), 0, "not masqueraded");
        assert_eq!(
            lab.conntrack(&flow(A_IP, REMOTE, 80, CLIENT_PORT, IPPROTO_TCP))
                .unwrap()
                .packets,
            1
        );
        assert_eq!(lab.total_drops(), 0);
    });
}

#[test]
fn udp_to_an_exact_key_is_translated_with_valid_checksums() {
    in_private_netns(|| {
        let lab = published_lab();
        let out = lab.run_from_uplink(&udp_from_lan(UPLINK_IP, 5353));
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!((p.dst, p.dport), (A_IP, 53));
        assert_eq!((p.src, p.sport), (REMOTE, CLIENT_PORT));
        assert_ne!(
            u16::from_be_bytes([p.l4[6], p.l4[7]]),
            0,
            "UDP checksum kept"
        );
        assert_eq!(&p.l4[8..], b"query");

        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_UDP);
        let reply = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &udp(&spec, 53, CLIENT_PORT, b"answer", true)),
        );
        let out = lab.run_from_ep(lab.ep_a, &reply);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!((p.src, p.sport), (UPLINK_IP, 5353));
        assert_eq!((p.dst, p.dport), (REMOTE, CLIENT_PORT));
        assert_eq!(&p.l4[8..], b"answer");
        assert_eq!(lab.stat(counter::DNAT_IN), 1);
        assert_eq!(lab.stat(counter::DNAT_REPLY_OUT), 1);

        // 5353 is published on the uplink's address only, not on the host's other addresses.
        let frame = udp_from_lan(OTHER_HOST_ADDR, 5353);
        let out = lab.run_from_uplink(&frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame);
        assert_eq!(lab.total_drops(), 0);
    });
}

#[test]
fn tcp_with_ip_options_is_translated() {
    in_private_netns(|| {
        let lab = published_lab();
        let mut spec = Ipv4Spec::new(REMOTE, UPLINK_IP, IPPROTO_TCP);
        spec.options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL: IHL 6
        let frame = ethernet(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, CLIENT_PORT, 8080, TCP_SYN, b"opt")),
        );
        let out = lab.run_from_uplink(&frame);
        let p = assert_into_a(&out, REMOTE, CLIENT_PORT);
        assert_eq!(p.ip_header.len(), 24, "options kept");
        assert_eq!(&p.ip_header[20..], &[0x01, 0x01, 0x01, 0x00]);
        assert_eq!(&p.l4[20..], b"opt");
    });
}

#[test]
fn established_flow_outlives_unpublish_but_new_flows_do_not() {
    in_private_netns(|| {
        let mut lab = published_lab();
        let out = lab.run_from_uplink(&tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, TCP_SYN));
        assert_into_a(&out, REMOTE, CLIENT_PORT);
        unpublish(&mut lab, WILDCARD, 8080, IPPROTO_TCP);
        let out = lab.run_from_uplink(&tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, TCP_ACK));
        assert_into_a(&out, REMOTE, CLIENT_PORT);
        let nat = lab
            .nat(&flow(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, IPPROTO_TCP))
            .unwrap();
        assert_eq!(nat.packets, 2);
        let frame = tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT + 1, 8080, TCP_SYN);
        let out = lab.run_from_uplink(&frame);
        assert_eq!(
            out.retval, TC_ACT_OK,
            "a new flow after unpublish is the host's"
        );
        assert_eq!(out.data, frame);
        assert_eq!(lab.stat(counter::DNAT_IN), 2);
    });
}

#[test]
fn unpublished_port_and_transit_traffic_pass_untouched() {
    in_private_netns(|| {
        let lab = published_lab();
        for frame in [
            tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 9999, TCP_SYN),
            // Published port number, but the host is only a router for this destination.
            tcp_from_lan(REMOTE, TRANSIT, CLIENT_PORT, 8080, TCP_SYN),
            // UDP 8080 is not published (TCP is).
            udp_from_lan(UPLINK_IP, 8080),
        ] {
            let out = lab.run_from_uplink(&frame);
            assert_eq!(out.retval, TC_ACT_OK);
            assert_eq!(out.data, frame, "untouched");
        }
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 3);
        assert_eq!(lab.stat(counter::DNAT_IN), 0);
        assert_eq!(lab.total_drops(), 0);
        // The wildcard applies to every address of the host, not just the uplink's.
        let out = lab.run_from_uplink(&tcp_from_lan(
            REMOTE,
            OTHER_HOST_ADDR,
            CLIENT_PORT,
            8080,
            TCP_SYN,
        ));
        assert_into_a(&out, REMOTE, CLIENT_PORT);
    });
}

#[test]
fn host_only_entries_never_match_from_the_uplink() {
    in_private_netns(|| {
        let mut lab = new_lab();
        host_addrs(&mut lab);
        let a = (A_IP, 5432, lab.ep_a);
        publish(
            &mut lab,
            LOOPBACK,
            5432,
            IPPROTO_TCP,
            a,
            port_flags::HOST_ONLY,
        );
        // The guard the control plane adds while 5432 is published on loopback only.
        publish(
            &mut lab,
            A_IP,
            5432,
            IPPROTO_TCP,
            a,
            port_flags::GUARD | port_flags::HOST_ONLY,
        );
        // To the uplink's address: not published there, the host's own business.
        let frame = tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 5432, TCP_SYN);
        let out = lab.run_from_uplink(&frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame);
        // To 127.0.0.1 from another machine.
        let out = lab.run_from_uplink(&tcp_from_lan(REMOTE, LOOPBACK, CLIENT_PORT, 5432, TCP_SYN));
        lab.assert_dropped(&out, drop_reason::HOST_ONLY_PORT);
        // Straight to the endpoint's address (a LAN machine routing to the container subnet).
        let out = lab.run_from_uplink(&tcp_from_lan(REMOTE, A_IP, CLIENT_PORT, 5432, TCP_SYN));
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::HOST_ONLY_PORT), 2);
        // Another port of the endpoint is routed as usual.
        let frame = tcp_from_lan(REMOTE, A_IP, CLIENT_PORT, 80, TCP_SYN);
        let out = lab.run_from_uplink(&frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame);
        // 127.0.0.0/8 on a wildcard-published port is refused too.
        publish_a(&mut lab);
        let out = lab.run_from_uplink(&tcp_from_lan(
            REMOTE,
            [127, 0, 0, 9],
            CLIENT_PORT,
            8080,
            TCP_SYN,
        ));
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::HOST_ONLY_PORT), 3);
        assert_eq!(lab.stat(counter::DNAT_IN), 0);
        assert_eq!(lab.total_drops(), 3);
    });
}

#[test]
fn first_fragment_for_a_published_port_is_dropped() {
    in_private_netns(|| {
        let lab = published_lab();
        let mut spec = Ipv4Spec::new(REMOTE, UPLINK_IP, IPPROTO_UDP);
        spec.frag = 0x2000; // MF, offset 0
        let l4 = udp(&spec, CLIENT_PORT, 5353, b"big", true);
        let frame = ethernet(UPLINK_MAC, NEXT_HOP_MAC, ETH_P_IP, &ipv4(&spec, &l4));
        let out = lab.run_from_uplink(&frame);
        lab.assert_dropped(&out, drop_reason::FRAGMENT);
        spec.frag = 0x0001; // a later fragment: no ports, the stack's
        let frame = ethernet(
            UPLINK_MAC,
            NEXT_HOP_MAC,
            ETH_P_IP,
            &ipv4(&spec, b"tail...."),
        );
        let out = lab.run_from_uplink(&frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame);
    });
}

// ---------------------------------------------------------------------------------------------
// np_from_ep: hairpin

#[test]
fn hairpin_from_a_neighbour_keeps_its_source() {
    in_private_netns(|| {
        let lab = published_lab();
        let out = lab.run_from_ep(lab.ep_b, &tcp_from(B, UPLINK_IP, 40000, 8080, TCP_SYN));
        assert_into_a(&out, B_IP, 40000);
        assert_eq!(lab.stat(counter::HAIRPIN), 1);
        assert_eq!(lab.stat(counter::DNAT_IN), 1);
        let nat = lab
            .nat(&flow(B_IP, UPLINK_IP, 40000, 8080, IPPROTO_TCP))
            .unwrap();
        assert_eq!((nat.kind, nat.endpoint_ifindex), (ct_kind::DNAT, lab.ep_a));

        let out = lab.run_from_ep(lab.ep_a, &tcp_from(A, B_IP, 80, 40000, TCP_SYN | TCP_ACK));
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!(
            (p.src, p.sport),
            (UPLINK_IP, 8080),
            "B sees the address it dialled"
        );
        assert_eq!((p.dst, p.dport), (B_IP, 40000));
        assert_eq!((p.eth_dst, p.eth_src), (B_MAC, GW1_MAC));
        assert_eq!(p.ttl, 63);
        assert_eq!(lab.stat(counter::DNAT_REPLY_OUT), 1);
        assert_eq!(lab.stat(counter::FORWARDED_LOCAL), 0);

        // The next packet of the flow uses the recorded entry.
        let out = lab.run_from_ep(lab.ep_b, &tcp_from(B, UPLINK_IP, 40000, 8080, TCP_ACK));
        assert_into_a(&out, B_IP, 40000);
        assert_eq!(lab.stat(counter::HAIRPIN), 1);
        assert_eq!(lab.stat(counter::DNAT_IN), 2);
        assert_eq!(lab.total_drops(), 0);
    });
}

#[test]
fn hairpin_from_another_network_is_allowed_like_docker() {
    in_private_netns(|| {
        let lab = published_lab();
        // Through the host's other address, from network 2.
        let out = lab.run_from_ep(
            lab.ep_c,
            &tcp_from(C, OTHER_HOST_ADDR, 40000, 8080, TCP_SYN),
        );
        assert_into_a(&out, C_IP, 40000);
        let out = lab.run_from_ep(lab.ep_a, &tcp_from(A, C_IP, 80, 40000, TCP_SYN | TCP_ACK));
        assert_eq!(out.retval, TC_ACT_REDIRECT, "the reply is not isolated");
        let p = parse_and_verify(&out.data);
        assert_eq!((p.src, p.sport), (OTHER_HOST_ADDR, 8080));
        assert_eq!((p.dst, p.dport), (C_IP, 40000));
        assert_eq!((p.eth_dst, p.eth_src), (C_MAC, GW2_MAC));
        // Without a published-port flow, A -> C stays isolated.
        let out = lab.run_from_ep(lab.ep_a, &tcp_from(A, C_IP, 81, 40000, TCP_ACK));
        lab.assert_dropped(&out, drop_reason::NETWORK_ISOLATION);
    });
}

#[test]
fn hairpin_to_itself_is_translated_through_the_gateway() {
    in_private_netns(|| {
        let mut lab = new_lab();
        publish_a(&mut lab);
        // A dials its own gateway's address on the published port (no host table needed).
        let out = lab.run_from_ep(lab.ep_a, &tcp_from(A, GW1, 40000, 8080, TCP_SYN));
        let p = assert_into_a(&out, GW1, 40000);
        assert_eq!(&p.l4[20..], b"reply");
        let hairpin_nat = lab
            .nat(&flow(A_IP, GW1, 80, 40000, IPPROTO_TCP))
            .expect("entry restoring the client on replies");
        assert_eq!(hairpin_nat.kind, ct_kind::HAIRPIN_SNAT);
        assert_eq!(hairpin_nat.orig_addr, addr_v4(A_IP));

        // A's server answers the gateway; A's client gets it from GW1:8080.
        let out = lab.run_from_ep(lab.ep_a, &tcp_from(A, GW1, 80, 40000, TCP_SYN | TCP_ACK));
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!((p.src, p.sport), (GW1, 8080));
        assert_eq!((p.dst, p.dport), (A_IP, 40000));
        assert_eq!((p.eth_dst, p.eth_src), (A_MAC, GW1_MAC));

        // Second packet of the client: source translated again.
        let out = lab.run_from_ep(lab.ep_a, &tcp_from(A, GW1, 40000, 8080, TCP_ACK));
        assert_into_a(&out, GW1, 40000);
        assert_eq!(lab.stat(counter::HAIRPIN), 1);
        assert_eq!(lab.stat(counter::DNAT_IN), 2);
        assert_eq!(lab.stat(counter::DNAT_REPLY_OUT), 1);
        assert_eq!(lab.total_drops(), 0);
    });
}

#[test]
fn endpoint_traffic_to_unpublished_host_ports_goes_to_the_stack() {
    in_private_netns(|| {
        let lab = published_lab();
        let frame = tcp_from(B, GW1, 40000, 22, TCP_SYN);
        let out = lab.run_from_ep(lab.ep_b, &frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame);
        // The masquerade path is unchanged for published port numbers on other hosts.
        let out = lab.run_from_ep(lab.ep_b, &tcp_from(B, REMOTE, 40000, 8080, TCP_SYN));
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        assert_eq!(parse_and_verify(&out.data).src, UPLINK_IP);
        assert_eq!(lab.stat(counter::SNAT_OUT), 1);
        assert_eq!(lab.stat(counter::HAIRPIN), 0);
    });
}

#[test]
fn a_new_syn_restarts_a_flow_whose_reply_entry_another_host_port_took() {
    // Two host ports lead to the same endpoint port, and a client reuses its source port:
    // inside the endpoint both flows are `client:cp -> A:80`, so they share one reply entry.
    in_private_netns(|| {
        let mut lab = published_lab();
        let a = (A_IP, 80, lab.ep_a);
        publish(&mut lab, WILDCARD, 8099, IPPROTO_TCP, a, 0);
        for port in [8080u16, 8099, 8080] {
            let out =
                lab.run_from_uplink(&tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, port, TCP_SYN));
            assert_into_a(&out, REMOTE, CLIENT_PORT);
            let reply = tcp_from(A, REMOTE, 80, CLIENT_PORT, TCP_SYN | TCP_ACK);
            let out = lab.run_from_ep(lab.ep_a, &reply);
            assert_eq!(out.retval, TC_ACT_REDIRECT);
            let p = parse_and_verify(&out.data);
            assert_eq!(
                (p.src, p.sport),
                (UPLINK_IP, port),
                "the reply must come from the port the client dialled"
            );
        }
    });
}

#[test]
fn a_reused_source_port_renews_its_flow_in_place_until_the_port_leads_elsewhere() {
    // A client reusing its source port toward the same published port (a connect loop) starts
    // its new connection in the old flow's entries, rewritten in place: the reply entry keeps
    // the route its replies cached. Once the port leads to another endpoint, the new
    // connection gets entries of its own.
    in_private_netns(|| {
        let mut lab = published_lab();
        let client_key = flow(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, IPPROTO_TCP);
        let reply_key = flow(A_IP, REMOTE, 80, CLIENT_PORT, IPPROTO_TCP);
        let from_client = |flags| tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, flags);
        let syn_ack = tcp_from(A, REMOTE, 80, CLIENT_PORT, TCP_SYN | TCP_ACK);

        assert_into_a(
            &lab.run_from_uplink(&from_client(TCP_SYN)),
            REMOTE,
            CLIENT_PORT,
        );
        assert_eq!(lab.run_from_ep(lab.ep_a, &syn_ack).retval, TC_ACT_REDIRECT);
        assert_into_a(
            &lab.run_from_uplink(&from_client(TCP_ACK)),
            REMOTE,
            CLIENT_PORT,
        );
        let rst = from_client(TCP_RST | TCP_ACK);
        assert_into_a(&lab.run_from_uplink(&rst), REMOTE, CLIENT_PORT);
        let nat = lab.nat(&client_key).expect("client entry");
        assert_eq!(nat.packets, 3);
        assert_ne!(nat.state & ct_state::TCP_RST_SEEN, 0);
        let first = lab.conntrack(&reply_key).expect("reply entry");
        assert_eq!(
            first.route.ifindex, lab.uplink,
            "the reply cached its way out"
        );
        assert_eq!(first.packets, 1);

        // The same source port, a new connection to the same port.
        assert_into_a(
            &lab.run_from_uplink(&from_client(TCP_SYN)),
            REMOTE,
            CLIENT_PORT,
        );
        let nat = lab.nat(&client_key).expect("client entry");
        assert_eq!(
            (nat.packets, nat.state),
            (1, 0),
            "the bookkeeping starts over"
        );
        assert_eq!(nat.orig_addr, addr_v4(A_IP));
        let renewed = lab.conntrack(&reply_key).expect("reply entry");
        assert_eq!((renewed.packets, renewed.state), (0, 0));
        assert_eq!(
            renewed.route, first.route,
            "renewed in place: the cached route stays"
        );
        let out = lab.run_from_ep(lab.ep_a, &syn_ack);
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!((p.src, p.sport), (UPLINK_IP, 8080));
        assert_eq!((p.dst, p.dport), (REMOTE, CLIENT_PORT));

        // The port now leads to B: the next connection is B's, in entries of its own.
        let b = (B_IP, 80, lab.ep_b);
        publish(&mut lab, WILDCARD, 8080, IPPROTO_TCP, b, 0);
        let out = lab.run_from_uplink(&from_client(TCP_SYN));
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let p = parse_and_verify(&out.data);
        assert_eq!((p.dst, p.dport, p.eth_dst), (B_IP, 80, B_MAC));
        let nat = lab.nat(&client_key).expect("client entry");
        assert_eq!(
            (nat.orig_addr, nat.endpoint_ifindex, nat.ep_mac),
            (addr_v4(B_IP), lab.ep_b, B_MAC)
        );
        let b_reply = lab
            .conntrack(&flow(B_IP, REMOTE, 80, CLIENT_PORT, IPPROTO_TCP))
            .expect("B's reply entry");
        assert_eq!(b_reply.route.ifindex, 0, "a new entry has no route yet");
        assert_eq!(lab.total_drops(), 0);
    });
}

#[test]
fn a_new_syn_after_unpublish_is_not_translated_even_on_a_reused_source_port() {
    in_private_netns(|| {
        let mut lab = published_lab();
        let out = lab.run_from_uplink(&tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, TCP_SYN));
        assert_into_a(&out, REMOTE, CLIENT_PORT);
        unpublish(&mut lab, WILDCARD, 8080, IPPROTO_TCP);
        let frame = tcp_from_lan(REMOTE, UPLINK_IP, CLIENT_PORT, 8080, TCP_SYN);
        let out = lab.run_from_uplink(&frame);
        assert_eq!(
            out.retval, TC_ACT_OK,
            "a new connection after unpublish is the host's"
        );
        assert_eq!(out.data, frame);
    });
}
