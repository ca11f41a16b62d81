//! Program tests (needs root): the eBPF programs run on crafted Ethernet frames through
//! BPF_PROG_TEST_RUN, with their maps filled by hand. No traffic leaves: every test runs in a
//! thread that first moves into its own throwaway network namespace (`unshare(CLONE_NEWNET)`),
//! where it creates the veths, addresses, routes and neighbours the FIB lookups need; the
//! namespace disappears with the thread.
//!
//! Checks are byte by byte: addresses, ports, TTL, and every IP/TCP/UDP/ICMP checksum
//! recomputed from scratch by the small verifier at the end of this file.
use std::{ffi::CString, os::fd::AsFd as _, process::Command};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::SchedClassifier,
};
use netpath::datapath::testrun::{SkBuffCtx, TestRunOutput, run_skb_program};
use netpath_common::{
    AddrKey, ConntrackEntry, DatapathConfig, EndpointEntry, FAMILY_IPV4, FlowKey, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, NatEntry, NetworkEntry, UplinkEntry, addr_v4, counter, ct_kind,
    ct_state, drop_reason, map_name, network_flags, program_name,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const IPPROTO_GRE: u8 = 47;

// The lab: network 1 (172.17.0.0/16) with endpoints A and B, network 2 (172.18.0.0/16) with
// endpoint C, one uplink with 198.51.100.2/24 whose default gateway 198.51.100.1 has a
// permanent neighbour entry, and a remote host on the internet.
const NET1: u32 = 1;
const NET2: u32 = 2;
const GW1: [u8; 4] = [172, 17, 0, 1];
const GW1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const GW2: [u8; 4] = [172, 18, 0, 1];
const GW2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const A_IP: [u8; 4] = [172, 17, 0, 2];
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const B_IP: [u8; 4] = [172, 17, 0, 3];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const C_IP: [u8; 4] = [172, 18, 0, 2];
const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
const UPLINK_IP: [u8; 4] = [198, 51, 100, 2];
const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0f, 0x01];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0f, 0xfe];
const REMOTE: [u8; 4] = [203, 0, 113, 7];
/// Routed through a gateway that has no neighbour entry: `bpf_redirect_neigh` territory.
const REMOTE_NO_NEIGH: [u8; 4] = [192, 0, 2, 7];

// ---------------------------------------------------------------------------------------------
// The lab: a private namespace, the loaded programs and handles on their maps.

struct Lab {
    ebpf: Ebpf,
    ep_a: u32,
    ep_b: u32,
    ep_c: u32,
    /// A veth netpath knows nothing about.
    stranger: u32,
    uplink: u32,
}

/// Runs `test` in a new thread that lives in its own network namespace.
fn in_private_netns(test: impl FnOnce() + Send + 'static) {
    let handle = std::thread::spawn(move || {
        // SAFETY: plain syscall; it only changes this thread's network namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
        test();
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `ip ARGS` (in the calling thread's namespace: children inherit it).
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ifindex(name: &str) -> u32 {
    let c = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name}");
    index
}

fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Lab {
    /// Builds the lab in the current (private) namespace and loads the programs.
    fn new() -> Self {
        ip("link set lo up");
        for (host, peer) in [
            ("epa", "epa-p"),
            ("epb", "epb-p"),
            ("epc", "epc-p"),
            ("epx", "epx-p"),
        ] {
            ip(&format!("link add {host} type veth peer name {peer}"));
            ip(&format!("link set {host} up"));
            ip(&format!("link set {peer} up"));
        }
        ip(&format!(
            "link add up0 address {} type veth peer name up0-p",
            mac_str(UPLINK_MAC)
        ));
        ip("link set up0 up");
        ip("link set up0-p up");
        ip("addr add 198.51.100.2/24 dev up0");
        ip("route add default via 198.51.100.1 dev up0");
        ip("route add 192.0.2.0/24 via 198.51.100.9 dev up0");
        ip(&format!(
            "neigh replace 198.51.100.1 lladdr {} dev up0 nud permanent",
            mac_str(NEXT_HOP_MAC)
        ));
        // The FIB helper forwards only where forwarding is on (this namespace only).
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable ip_forward");

        let mut ebpf = EbpfLoader::new()
            .load(netpath::EBPF_OBJECT)
            .expect("load the eBPF object");
        for name in program_name::ALL {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program in object")
                .try_into()
                .unwrap();
            if let Err(e) = prog.load() {
                panic!("the verifier rejected {name}: {}", error_chain(&e));
            }
        }
        let mut lab = Lab {
            ebpf,
            ep_a: ifindex("epa"),
            ep_b: ifindex("epb"),
            ep_c: ifindex("epc"),
            stranger: ifindex("epx"),
            uplink: ifindex("up0"),
        };
        lab.add_network(
            NET1,
            GW1,
            [172, 17, 0, 0],
            GW1_MAC,
            network_flags::MASQUERADE,
        );
        lab.add_network(
            NET2,
            GW2,
            [172, 18, 0, 0],
            GW2_MAC,
            network_flags::MASQUERADE,
        );
        lab.add_endpoint(A_IP, A_MAC, NET1, lab.ep_a);
        lab.add_endpoint(B_IP, B_MAC, NET1, lab.ep_b);
        lab.add_endpoint(C_IP, C_MAC, NET2, lab.ep_c);
        let uplink = lab.uplink;
        let mut uplinks: HashMap<_, u32, UplinkEntry> =
            HashMap::try_from(lab.ebpf.map_mut(map_name::UPLINKS).unwrap()).unwrap();
        uplinks
            .insert(
                uplink,
                UplinkEntry {
                    addr: addr_v4(UPLINK_IP),
                    family: FAMILY_IPV4,
                    _pad: [0; 3],
                    ifindex: uplink,
                },
                0,
            )
            .unwrap();
        lab
    }

    fn add_network(
        &mut self,
        id: u32,
        gateway: [u8; 4],
        subnet: [u8; 4],
        mac: [u8; 6],
        flags: u32,
    ) {
        let mut networks: HashMap<_, u32, NetworkEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_name::NETWORKS).unwrap()).unwrap();
        let entry = NetworkEntry {
            gateway: addr_v4(gateway),
            subnet: addr_v4(subnet),
            gateway_mac: mac,
            prefix_len: 16,
            family: FAMILY_IPV4,
            flags,
            bridge_ifindex: 0,
        };
        networks.insert(id, entry, 0).unwrap();
    }

    fn set_network_flags(&mut self, id: u32, flags: u32) {
        let mut networks: HashMap<_, u32, NetworkEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_name::NETWORKS).unwrap()).unwrap();
        let mut entry = networks.get(&id, 0).unwrap();
        entry.flags = flags;
        networks.insert(id, entry, 0).unwrap();
    }

    fn add_endpoint(&mut self, addr: [u8; 4], mac: [u8; 6], network_id: u32, host_ifindex: u32) {
        let entry = EndpointEntry {
            addr: addr_v4(addr),
            mac,
            family: FAMILY_IPV4,
            flags: 0,
            network_id,
            host_ifindex,
        };
        let mut endpoints: HashMap<_, u32, EndpointEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_name::ENDPOINTS).unwrap()).unwrap();
        endpoints.insert(host_ifindex, entry, 0).unwrap();
        let mut by_addr: HashMap<_, AddrKey, EndpointEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_name::EP_BY_ADDR).unwrap()).unwrap();
        by_addr.insert(AddrKey::v4(addr), entry, 0).unwrap();
    }

    fn set_config(&mut self, config: DatapathConfig) {
        let mut array: Array<_, DatapathConfig> =
            Array::try_from(self.ebpf.map_mut(map_name::CONFIG).unwrap()).unwrap();
        array.set(0, config, 0).unwrap();
    }

    fn run(&self, program: &str, ifindex: u32, frame: &[u8]) -> TestRunOutput {
        let prog: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let fd = prog.fd().unwrap().as_fd();
        run_skb_program(fd, frame, Some(&SkBuffCtx::on_interface(ifindex)))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"))
    }

    /// Runs `np_from_ep` as if `frame` arrived on the host-side veth `ifindex`.
    fn from_ep(&self, ifindex: u32, frame: &[u8]) -> TestRunOutput {
        self.run(program_name::FROM_ENDPOINT, ifindex, frame)
    }

    /// Runs `np_uplink` as if `frame` arrived on the uplink.
    fn from_uplink(&self, frame: &[u8]) -> TestRunOutput {
        self.run(program_name::FROM_UPLINK, self.uplink, frame)
    }

    fn per_cpu_sum(&self, map: &str, index: u32) -> u64 {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map).unwrap()).unwrap();
        array.get(&index, 0).unwrap().iter().sum()
    }

    fn stat(&self, index: u32) -> u64 {
        self.per_cpu_sum(map_name::STATS, index)
    }

    fn drops(&self, reason: u32) -> u64 {
        self.per_cpu_sum(map_name::DROPS, reason)
    }

    fn total_drops(&self) -> u64 {
        (0..drop_reason::COUNT).map(|r| self.drops(r)).sum()
    }

    fn conntrack(&self, key: &FlowKey) -> Option<ConntrackEntry> {
        let map: HashMap<_, FlowKey, ConntrackEntry> =
            HashMap::try_from(self.ebpf.map(map_name::CONNTRACK).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    fn nat(&self, key: &FlowKey) -> Option<NatEntry> {
        let map: HashMap<_, FlowKey, NatEntry> =
            HashMap::try_from(self.ebpf.map(map_name::NAT).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    fn nat_entries(&self) -> Vec<(FlowKey, NatEntry)> {
        let map: HashMap<_, FlowKey, NatEntry> =
            HashMap::try_from(self.ebpf.map(map_name::NAT).unwrap()).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    /// Asserts that the packet was dropped for `reason` and for nothing else.
    fn assert_dropped(&self, out: &TestRunOutput, reason: u32) {
        assert_eq!(out.retval, TC_ACT_SHOT, "verdict");
        assert_eq!(
            self.drops(reason),
            1,
            "drop reason {}",
            drop_reason::NAMES[reason as usize]
        );
        assert_eq!(self.total_drops(), 1, "no other drop reason counted");
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn flow(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, protocol: u8) -> FlowKey {
    FlowKey {
        src_addr: addr_v4(src),
        dst_addr: addr_v4(dst),
        src_port: sport.to_be_bytes(),
        dst_port: dport.to_be_bytes(),
        protocol,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
}

// ---------------------------------------------------------------------------------------------
// Packet building.

#[derive(Clone)]
struct Ipv4Spec {
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    ttl: u8,
    /// Raw flags + fragment offset field.
    frag: u16,
    options: Vec<u8>,
}

impl Ipv4Spec {
    fn new(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        Self {
            src,
            dst,
            protocol,
            ttl: 64,
            frag: 0x4000,
            options: Vec::new(),
        }
    }
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet with a valid header checksum around `l4` (whose checksum the caller set).
fn ipv4(spec: &Ipv4Spec, l4: &[u8]) -> Vec<u8> {
    assert_eq!(spec.options.len() % 4, 0);
    let header_len = 20 + spec.options.len();
    let mut h = vec![0u8; header_len];
    h[0] = 0x40 | (header_len / 4) as u8;
    h[2..4].copy_from_slice(&((header_len + l4.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    h[6..8].copy_from_slice(&spec.frag.to_be_bytes());
    h[8] = spec.ttl;
    h[9] = spec.protocol;
    h[12..16].copy_from_slice(&spec.src);
    h[16..20].copy_from_slice(&spec.dst);
    h[20..].copy_from_slice(&spec.options);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

fn tcp(spec: &Ipv4Spec, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    let c = l4_checksum(spec.src, spec.dst, IPPROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn udp(spec: &Ipv4Spec, sport: u16, dport: u16, payload: &[u8], with_checksum: bool) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    if with_checksum {
        let mut c = l4_checksum(spec.src, spec.dst, IPPROTO_UDP, &u);
        if c == 0 {
            c = 0xffff;
        }
        u[6..8].copy_from_slice(&c.to_be_bytes());
    }
    u
}

fn icmp_echo(icmp_type: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut i = vec![icmp_type, 0, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&seq.to_be_bytes());
    i.extend_from_slice(payload);
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    i
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCP_FIN: u8 = 0x01;

/// A TCP frame from endpoint A (to the gateway's MAC, as a container sends it).
fn tcp_frame_from_a(dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let spec = Ipv4Spec::new(A_IP, dst, IPPROTO_TCP);
    ethernet(
        GW1_MAC,
        A_MAC,
        ETH_P_IP,
        &ipv4(&spec, &tcp(&spec, sport, dport, flags, b"hello")),
    )
}

// ---------------------------------------------------------------------------------------------
// Checksum verifier (RFC 1071), written independently of the datapath.

fn ones_complement_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn checksum(data: &[u8]) -> u16 {
    !fold(ones_complement_sum(data, 0))
}

fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    !fold(ones_complement_sum(
        segment,
        ones_complement_sum(&pseudo, 0),
    ))
}

/// A parsed view of an output frame, with every checksum verified.
#[derive(Debug)]
struct Parsed {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    protocol: u8,
    ip_header: Vec<u8>,
    /// TCP/UDP ports, or for ICMP (type, identifier).
    sport: u16,
    dport: u16,
    l4: Vec<u8>,
}

/// Parses an Ethernet/IPv4 frame and asserts that the IP checksum and the TCP/UDP/ICMP
/// checksum are valid (a UDP checksum of 0 is accepted as "none" and reported by `udp_csum`).
fn parse_and_verify(frame: &[u8]) -> Parsed {
    assert!(frame.len() >= 34, "frame too short: {}", frame.len());
    assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), ETH_P_IP);
    let ip = &frame[14..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    assert_eq!(checksum(&ip[..header_len]), 0, "IPv4 header checksum");
    let src: [u8; 4] = ip[12..16].try_into().unwrap();
    let dst: [u8; 4] = ip[16..20].try_into().unwrap();
    let l4 = &ip[header_len..total];
    let protocol = ip[9];
    let (sport, dport) = match protocol {
        IPPROTO_TCP => {
            assert_eq!(l4_checksum(src, dst, IPPROTO_TCP, l4), 0, "TCP checksum");
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        }
        IPPROTO_UDP => {
            if u16::from_be_bytes([l4[6], l4[7]]) != 0 {
                assert_eq!(l4_checksum(src, dst, IPPROTO_UDP, l4), 0, "UDP checksum");
            }
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        }
        IPPROTO_ICMP => {
            assert_eq!(checksum(l4), 0, "ICMP checksum");
            (u16::from(l4[0]), u16::from_be_bytes([l4[4], l4[5]]))
        }
        _ => (0, 0),
    };
    Parsed {
        eth_dst: frame[0..6].try_into().unwrap(),
        eth_src: frame[6..12].try_into().unwrap(),
        src,
        dst,
        ttl: ip[8],
        protocol,
        ip_header: ip[..header_len].to_vec(),
        sport,
        dport,
        l4: l4.to_vec(),
    }
}

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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(C_IP, 40000, 80, TCP_SYN));
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
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(B_IP, 40000, 80, TCP_SYN));
        lab.assert_dropped(&out, drop_reason::ICC_DISABLED);
    });
}

#[test]
fn internal_network_reaches_only_its_gateway() {
    in_private_netns(|| {
        let mut lab = Lab::new();
        lab.set_network_flags(NET1, network_flags::INTERNAL);
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(GW1, 40000, 53, TCP_SYN));
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(lab.stat(counter::PASSED_TO_STACK), 1);
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
        lab.assert_dropped(&out, drop_reason::SPOOFED_IP);
    });
}

#[test]
fn unknown_veth_is_dropped() {
    in_private_netns(|| {
        let lab = Lab::new();
        let out = lab.from_ep(lab.stranger, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
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
        let out = lab.from_ep(lab.ep_a, &frame);
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame, "ARP must pass untouched");
        let ipv6 = ethernet([0x33, 0x33, 0, 0, 0, 1], A_MAC, 0x86dd, &[0x60; 40]);
        let out = lab.from_ep(lab.ep_a, &ipv6);
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
        let out = lab.from_ep(lab.ep_a, &good[..34]);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 1);

        // Version 6 in an IPv4 frame.
        let mut bad = good.clone();
        bad[14] = 0x65;
        let out = lab.from_ep(lab.ep_a, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 2);

        // IHL 4 (< 5).
        let mut bad = good.clone();
        bad[14] = 0x44;
        let out = lab.from_ep(lab.ep_a, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 3);

        // IHL 15 (60 bytes) on a packet whose IP part is 45 bytes.
        let mut bad = good.clone();
        bad[14] = 0x4f;
        let out = lab.from_ep(lab.ep_a, &bad);
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(lab.drops(drop_reason::MALFORMED), 4);

        // Total length beyond the packet.
        let mut bad = good.clone();
        bad[16..18].copy_from_slice(&1400u16.to_be_bytes());
        let out = lab.from_ep(lab.ep_a, &bad);
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
        let out = lab.from_ep(lab.ep_a, &short_tcp);
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
        let out = lab.from_ep(lab.ep_a, &frame);
        lab.assert_dropped(&out, drop_reason::FRAGMENT);
        spec.frag = 0x0010; // a later fragment
        let frame = ethernet(GW1_MAC, A_MAC, ETH_P_IP, &ipv4(&spec, &[0u8; 16]));
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
        lab.assert_dropped(&out, drop_reason::UNSUPPORTED_PROTOCOL);
        // ICMP other than echo request (here: a timestamp request) cannot be masqueraded either.
        let spec = Ipv4Spec::new(A_IP, REMOTE, IPPROTO_ICMP);
        let frame = ethernet(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &ipv4(&spec, &icmp_echo(13, 1, 1, &[0; 12])),
        );
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let first = lab.from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        let first = assert_snat_frame(&first, REMOTE);
        let fin = tcp_frame_from_a(REMOTE, 40000, 80, TCP_ACK | TCP_FIN);
        let second = lab.from_ep(lab.ep_a, &fin);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_uplink(&reply);
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
        let out = lab.from_ep(lab.ep_a, &frame);
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
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
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
        let out = lab.from_uplink(&reply);
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
        let out = lab.from_uplink(&stranger);
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
        let out = lab.from_uplink(&bad);
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
        let out = lab.from_uplink(&frag);
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
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        assert_eq!(assert_snat_frame(&out, REMOTE).sport, 40000);

        // B uses the same source port towards the same remote: 40000 is taken.
        let spec = Ipv4Spec::new(B_IP, REMOTE, IPPROTO_TCP);
        let frame = ethernet(
            GW1_MAC,
            B_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 40000, 80, TCP_SYN, b"")),
        );
        let out = lab.from_ep(lab.ep_b, &frame);
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
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        assert_eq!(assert_snat_frame(&out, REMOTE).sport, 40000);
        let spec = Ipv4Spec::new(B_IP, REMOTE, IPPROTO_TCP);
        let frame = ethernet(
            GW1_MAC,
            B_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 40001, 80, TCP_SYN, b"")),
        );
        let out = lab.from_ep(lab.ep_b, &frame);
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
        let out = lab.from_ep(lab.ep_a, &tcp_frame_from_a(REMOTE, 40000, 80, TCP_SYN));
        assert_snat_frame(&out, REMOTE);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let spec = Ipv4Spec::new(B_IP, REMOTE, IPPROTO_TCP);
        let frame = ethernet(
            GW1_MAC,
            B_MAC,
            ETH_P_IP,
            &ipv4(&spec, &tcp(&spec, 40001, 80, TCP_SYN, b"")),
        );
        let out = lab.from_ep(lab.ep_b, &frame);
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
