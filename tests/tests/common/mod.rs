//! Shared by the program tests (`programs.rs`, `programs_ports.rs`): a private network
//! namespace with the programs loaded and their maps filled by hand, crafted frames, and a
//! checksum verifier written independently of the datapath.
#![allow(dead_code)]

use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray},
    programs::SchedClassifier,
};
use netpath::datapath::{
    error_chain,
    testrun::{SkBuffCtx, TestRunOutput, run_skb_program},
};
use netpath_common::{
    AddrKey, ConntrackEntry, DatapathConfig, EndpointEntry, FAMILY_IPV4, FlowKey, IPPROTO_ICMP,
    IPPROTO_TCP, IPPROTO_UDP, NatEntry, NetworkEntry, UplinkEntry, addr_v4, drop_reason, map_name,
    network_flags, program_name,
};

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_GRE: u8 = 47;

// The lab: network 1 (172.17.0.0/16) with endpoints A and B, network 2 (172.18.0.0/16) with
// endpoint C, one uplink with 198.51.100.2/24 whose default gateway 198.51.100.1 has a
// permanent neighbour entry, and a remote host on the internet.
pub const NET1: u32 = 1;
pub const NET2: u32 = 2;
pub const GW1: [u8; 4] = [172, 17, 0, 1];
pub const GW1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const GW2: [u8; 4] = [172, 18, 0, 1];
pub const GW2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
pub const A_IP: [u8; 4] = [172, 17, 0, 2];
pub const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const B_IP: [u8; 4] = [172, 17, 0, 3];
pub const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const C_IP: [u8; 4] = [172, 18, 0, 2];
pub const C_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const UPLINK_IP: [u8; 4] = [198, 51, 100, 2];
pub const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0f, 0x01];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0f, 0xfe];
pub const REMOTE: [u8; 4] = [203, 0, 113, 7];
/// Routed through a gateway that has no neighbour entry: `bpf_redirect_neigh` territory.
pub const REMOTE_NO_NEIGH: [u8; 4] = [192, 0, 2, 7];

// ---------------------------------------------------------------------------------------------
// The lab: a private namespace, the loaded programs and handles on their maps.

pub struct Lab {
    pub ebpf: Ebpf,
    pub ep_a: u32,
    pub ep_b: u32,
    pub ep_c: u32,
    /// A veth netpath knows nothing about.
    pub stranger: u32,
    pub uplink: u32,
}

/// Runs `test` in a new thread that lives in its own network namespace.
pub fn in_private_netns(test: impl FnOnce() + Send + 'static) {
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

/// Runs `ip ARGS`, the arguments as one space-separated string (in the calling thread's
/// namespace: children inherit it).
pub fn ip(args: &str) {
    netpath_tests::ip(&args.split_whitespace().collect::<Vec<_>>());
}

pub use netpath_tests::ifindex;

pub fn mac_str(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Lab {
    /// Builds the lab in the current (private) namespace and loads the programs.
    pub fn new() -> Self {
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
        for name in program_name::TC {
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
                    _pad: 0,
                    mtu: 1500,
                    ifindex: uplink,
                },
                0,
            )
            .unwrap();
        lab
    }

    pub fn add_network(
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

    pub fn set_network_flags(&mut self, id: u32, flags: u32) {
        let mut networks: HashMap<_, u32, NetworkEntry> =
            HashMap::try_from(self.ebpf.map_mut(map_name::NETWORKS).unwrap()).unwrap();
        let mut entry = networks.get(&id, 0).unwrap();
        entry.flags = flags;
        networks.insert(id, entry, 0).unwrap();
    }

    pub fn add_endpoint(
        &mut self,
        addr: [u8; 4],
        mac: [u8; 6],
        network_id: u32,
        host_ifindex: u32,
    ) {
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

    pub fn set_config(&mut self, config: DatapathConfig) {
        let mut array: Array<_, DatapathConfig> =
            Array::try_from(self.ebpf.map_mut(map_name::CONFIG).unwrap()).unwrap();
        array.set(0, config, 0).unwrap();
    }

    pub fn run(&self, program: &str, ifindex: u32, frame: &[u8]) -> TestRunOutput {
        let prog: &SchedClassifier = self.ebpf.program(program).unwrap().try_into().unwrap();
        let fd = prog.fd().unwrap().as_fd();
        run_skb_program(fd, frame, Some(&SkBuffCtx::on_interface(ifindex)))
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e}"))
    }

    /// Runs `np_from_ep` as if `frame` arrived on the host-side veth `ifindex`.
    pub fn run_from_ep(&self, ifindex: u32, frame: &[u8]) -> TestRunOutput {
        self.run(program_name::FROM_ENDPOINT, ifindex, frame)
    }

    /// Runs `np_uplink` as if `frame` arrived on the uplink.
    pub fn run_from_uplink(&self, frame: &[u8]) -> TestRunOutput {
        self.run(program_name::FROM_UPLINK, self.uplink, frame)
    }

    pub fn per_cpu_sum(&self, map: &str, index: u32) -> u64 {
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map).unwrap()).unwrap();
        array.get(&index, 0).unwrap().iter().sum()
    }

    pub fn stat(&self, index: u32) -> u64 {
        self.per_cpu_sum(map_name::STATS, index)
    }

    pub fn drops(&self, reason: u32) -> u64 {
        self.per_cpu_sum(map_name::DROPS, reason)
    }

    pub fn total_drops(&self) -> u64 {
        (0..drop_reason::COUNT).map(|r| self.drops(r)).sum()
    }

    pub fn conntrack(&self, key: &FlowKey) -> Option<ConntrackEntry> {
        let map: HashMap<_, FlowKey, ConntrackEntry> =
            HashMap::try_from(self.ebpf.map(map_name::CONNTRACK).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    pub fn nat(&self, key: &FlowKey) -> Option<NatEntry> {
        let map: HashMap<_, FlowKey, NatEntry> =
            HashMap::try_from(self.ebpf.map(map_name::NAT).unwrap()).unwrap();
        map.get(key, 0).ok()
    }

    pub fn nat_entries(&self) -> Vec<(FlowKey, NatEntry)> {
        let map: HashMap<_, FlowKey, NatEntry> =
            HashMap::try_from(self.ebpf.map(map_name::NAT).unwrap()).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    /// Asserts that the packet was dropped for `reason` and for nothing else.
    pub fn assert_dropped(&self, out: &TestRunOutput, reason: u32) {
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

pub fn flow(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, protocol: u8) -> FlowKey {
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
pub struct Ipv4Spec {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ttl: u8,
    /// Raw flags + fragment offset field.
    pub frag: u16,
    pub options: Vec<u8>,
}

impl Ipv4Spec {
    pub fn new(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
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

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet with a valid header checksum around `l4` (whose checksum the caller set).
pub fn ipv4(spec: &Ipv4Spec, l4: &[u8]) -> Vec<u8> {
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

pub fn tcp(spec: &Ipv4Spec, sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
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

pub fn udp(
    spec: &Ipv4Spec,
    sport: u16,
    dport: u16,
    payload: &[u8],
    with_checksum: bool,
) -> Vec<u8> {
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

pub fn icmp_echo(icmp_type: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut i = vec![icmp_type, 0, 0, 0];
    i.extend_from_slice(&id.to_be_bytes());
    i.extend_from_slice(&seq.to_be_bytes());
    i.extend_from_slice(payload);
    let c = checksum(&i);
    i[2..4].copy_from_slice(&c.to_be_bytes());
    i
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// A TCP frame from endpoint A (to the gateway's MAC, as a container sends it).
pub fn tcp_frame_from_a(dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
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

pub fn ones_complement_sum(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn checksum(data: &[u8]) -> u16 {
    !fold(ones_complement_sum(data, 0))
}

pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], protocol: u8, segment: &[u8]) -> u16 {
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
pub struct Parsed {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
    pub protocol: u8,
    pub ip_header: Vec<u8>,
    /// TCP/UDP ports, or for ICMP (type, identifier).
    pub sport: u16,
    pub dport: u16,
    pub l4: Vec<u8>,
}

/// Parses an Ethernet/IPv4 frame and asserts that the IP checksum and the TCP/UDP/ICMP
/// checksum are valid (a UDP checksum of 0 is accepted as "none" and reported by `udp_csum`).
pub fn parse_and_verify(frame: &[u8]) -> Parsed {
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
