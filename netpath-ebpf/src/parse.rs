//! Owns bounds-checked reads of Ethernet, IPv4 and L4 headers.
//!
//! Parsers copy the fields they return out of the packet: no packet pointer outlives the
//! function that checked it. Writes (`csum::translate`) derive and check their own pointers,
//! so no pointer can go stale when a helper changes the packet, and callers that need more
//! fields simply parse again.
use aya_ebpf::programs::TcContext;
use netpath_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr, tcp::TcpHdr, udp::UdpHdr};

pub const ETH_HLEN: usize = EthHdr::LEN;
pub const ETH_P_IP: u16 = 0x0800;

/// Offsets of the IPv4 fields netpath rewrites (the header always starts right after Ethernet,
/// and these sit before any option).
pub const IP_TTL_OFF: usize = ETH_HLEN + 8;
pub const IP_CHECK_OFF: usize = ETH_HLEN + 10;
pub const IP_SRC_OFF: usize = ETH_HLEN + 12;
pub const IP_DST_OFF: usize = ETH_HLEN + 16;
/// Ethernet plus the fixed IPv4 header up to the destination address.
pub const L2_L3_FIXED_LEN: usize = IP_DST_OFF + 4;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

const IP_MF: u16 = 0x2000;
const IP_DF: u16 = 0x4000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// TCP flag bits as they sit in byte 13 of the header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The header could not be parsed: truncated, or fields that do not add up.
pub struct Malformed;

/// Makes sure the first `len` bytes of the packet are in the linear area that direct packet
/// access can see, pulling them in if the skb is non-linear (e.g. a NIC that leaves headers in
/// page fragments). Fails only when the packet is shorter than `len`.
#[inline(always)]
fn ensure_linear(ctx: &TcContext, len: usize) -> Result<(), Malformed> {
    if ctx.data() + len <= ctx.data_end() {
        return Ok(());
    }
    if (ctx.len() as usize) < len || ctx.pull_data(len as u32).is_err() {
        return Err(Malformed);
    }
    // bpf_skb_pull_data invalidated every packet pointer; callers re-read data/data_end.
    Ok(())
}

/// A pointer to a `T` at `offset`, checked against `data_end` (the check the verifier needs).
#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, Malformed> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Malformed);
    }
    Ok((start + offset) as *const T)
}

/// The Ethernet header fields netpath uses.
pub struct Ethernet {
    pub src: [u8; 6],
    /// Host byte order.
    pub ether_type: u16,
}

#[inline(always)]
pub fn ethernet(ctx: &TcContext) -> Result<Ethernet, Malformed> {
    ensure_linear(ctx, ETH_HLEN)?;
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    // SAFETY: `ptr_at` checked that the whole header is inside the packet.
    let (src, ether_type) = unsafe { ((*eth).src_addr, u16::from_be((*eth).ether_type)) };
    Ok(Ethernet { src, ether_type })
}

/// The IPv4 header fields netpath uses. `l4_off` honours IHL (options are skipped, not read).
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub protocol: u8,
    pub ttl: u8,
    pub tos: u8,
    /// MF set or a non-zero fragment offset: only the first fragment has an L4 header, and
    /// even that one cannot be translated alone.
    pub is_fragment: bool,
    /// A fragment with offset 0: the one that carries the L4 header.
    pub is_first_fragment: bool,
    pub dont_fragment: bool,
    /// Offset of the L4 header from the start of the frame.
    pub l4_off: usize,
}

/// Parses the IPv4 header after Ethernet. Rejects a version other than 4, IHL < 5, a header
/// (with options) beyond the packet, and a total length shorter than the header or longer than
/// the packet.
#[inline(always)]
pub fn ipv4(ctx: &TcContext) -> Result<Ipv4, Malformed> {
    ensure_linear(ctx, ETH_HLEN + Ipv4Hdr::LEN)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: `ptr_at` checked that the fixed 20-byte header is inside the packet.
    let vihl = unsafe { (*ip).vihl };
    if vihl >> 4 != 4 {
        return Err(Malformed);
    }
    let header_len = ((vihl & 0x0f) as usize) * 4;
    if header_len < Ipv4Hdr::LEN {
        return Err(Malformed);
    }
    // Options must be present too: L4 offsets are computed from IHL. Pulling them may move
    // the packet, so the header is found again afterwards and read only then.
    ensure_linear(ctx, ETH_HLEN + header_len)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: as above. Each address is read as one 32-bit word: byte by byte, the eight
    // bytes would each take a register or a stack slot of the callers' tight frames.
    let (h, src, dst) = unsafe {
        (
            *ip,
            (&raw const (*ip).src_addr as *const u32).read_unaligned(),
            (&raw const (*ip).dst_addr as *const u32).read_unaligned(),
        )
    };
    let tot_len = u16::from_be_bytes(h.tot_len) as usize;
    let available = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    // `tot_len` may be shorter than what follows Ethernet (minimum-size frames are padded).
    if tot_len < header_len || tot_len > available {
        return Err(Malformed);
    }
    let frags = u16::from_be_bytes(h.frags);
    Ok(Ipv4 {
        src: src.to_ne_bytes(),
        dst: dst.to_ne_bytes(),
        protocol: h.proto,
        ttl: h.ttl,
        tos: h.tos,
        is_fragment: frags & (IP_MF | IP_OFFSET_MASK) != 0,
        is_first_fragment: frags & IP_MF != 0 && frags & IP_OFFSET_MASK == 0,
        dont_fragment: frags & IP_DF != 0,
        l4_off: ETH_HLEN + header_len,
    })
}

/// The L4 fields NAT needs: the two "ports" (for ICMP echo: the identifier as the source port
/// and 0 as the destination port, the shape of [`netpath_common::FlowKey`]) and where they and
/// the checksum sit in the frame.
#[derive(Clone, Copy)]
pub struct Transport {
    pub protocol: u8,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// Offset of the field that holds `src_port` (ICMP: the identifier); TCP and UDP have the
    /// destination port right after it.
    pub src_port_off: usize,
    pub csum_off: usize,
    /// TCP flags byte; zero for other protocols.
    pub tcp_flags: u8,
    /// Length of the L4 header (TCP: data offset, options included; UDP and ICMP echo: 8).
    pub header_len: u8,
}

/// Why [`transport`] could not return ports.
pub enum TransportError {
    /// TCP/UDP/ICMP header truncated.
    Malformed,
    /// Not TCP, UDP, or ICMP of the expected echo type.
    Unsupported,
}

impl From<Malformed> for TransportError {
    fn from(_: Malformed) -> Self {
        TransportError::Malformed
    }
}

/// Parses the L4 header of a non-fragment. `echo_type` is the ICMP type that may be
/// translated in this direction (echo request going out, echo reply coming back).
#[inline(always)]
pub fn transport(ctx: &TcContext, ip: &Ipv4, echo_type: u8) -> Result<Transport, TransportError> {
    let off = ip.l4_off;
    match ip.protocol {
        IPPROTO_TCP => {
            ensure_linear(ctx, off + TcpHdr::LEN)?;
            let tcp = ptr_at::<TcpHdr>(ctx, off)?;
            // SAFETY: `ptr_at` checked that the 20-byte TCP header is inside the packet.
            let (src_port, dst_port) = unsafe { ((*tcp).source, (*tcp).dest) };
            let flags = ptr_at::<[u8; 14]>(ctx, off)?;
            // SAFETY: same check (14 < 20 bytes); byte 12 holds the data offset, byte 13 the
            // flags.
            let (data_offset, tcp_flags) = unsafe { ((*flags)[12], (*flags)[13]) };
            Ok(Transport {
                protocol: IPPROTO_TCP,
                src_port,
                dst_port,
                src_port_off: off,
                csum_off: off + 16,
                tcp_flags,
                header_len: (data_offset >> 4) * 4,
            })
        }
        IPPROTO_UDP => {
            ensure_linear(ctx, off + UdpHdr::LEN)?;
            let udp = ptr_at::<UdpHdr>(ctx, off)?;
            // SAFETY: `ptr_at` checked that the 8-byte UDP header is inside the packet.
            let (src_port, dst_port) = unsafe { ((*udp).src, (*udp).dst) };
            Ok(Transport {
                protocol: IPPROTO_UDP,
                src_port,
                dst_port,
                src_port_off: off,
                csum_off: off + 6,
                tcp_flags: 0,
                header_len: UdpHdr::LEN as u8,
            })
        }
        IPPROTO_ICMP => {
            ensure_linear(ctx, off + Icmpv4Hdr::LEN)?;
            let icmp = ptr_at::<Icmpv4Hdr>(ctx, off)?;
            // SAFETY: `ptr_at` checked that the 8-byte ICMP header is inside the packet.
            let (icmp_type, code, rest) = unsafe { ((*icmp).type_, (*icmp).code, (*icmp).data) };
            if icmp_type != echo_type || code != 0 {
                return Err(TransportError::Unsupported);
            }
            Ok(Transport {
                protocol: IPPROTO_ICMP,
                src_port: [rest[0], rest[1]],
                dst_port: [0, 0],
                src_port_off: off + 4,
                csum_off: off + 2,
                tcp_flags: 0,
                header_len: Icmpv4Hdr::LEN as u8,
            })
        }
        _ => Err(TransportError::Unsupported),
    }
}

// Byte-array comparisons through integers: `==` on arrays may become a `memcmp` call, which
// BPF does not have.

#[inline(always)]
pub fn eq_ipv4(a: [u8; 4], b: [u8; 4]) -> bool {
    u32::from_ne_bytes(a) == u32::from_ne_bytes(b)
}

#[inline(always)]
pub fn eq_port(a: [u8; 2], b: [u8; 2]) -> bool {
    u16::from_ne_bytes(a) == u16::from_ne_bytes(b)
}

#[inline(always)]
pub fn eq_mac(a: [u8; 6], b: [u8; 6]) -> bool {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]]) == u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        && u16::from_ne_bytes([a[4], a[5]]) == u16::from_ne_bytes([b[4], b[5]])
}

/// True for the all-zero MAC: a cache field not filled yet.
#[inline(always)]
pub fn is_zero_mac(a: [u8; 6]) -> bool {
    eq_mac(a, [0; 6])
}

/// Compares two 16-byte [`netpath_common::Addr`]s.
#[inline(always)]
pub fn eq_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a_lo, a_hi) = a.split_at(8);
    let (b_lo, b_hi) = b.split_at(8);
    let word = |s: &[u8]| u64::from_ne_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    word(a_lo) == word(b_lo) && word(a_hi) == word(b_hi)
}

/// The IPv4 address in bytes 0..4 of an [`netpath_common::Addr`], read as one 32-bit word
/// (byte by byte, each byte can take a register or a stack slot of its own).
#[inline(always)]
pub fn v4_of(addr: &[u8; 16]) -> [u8; 4] {
    // SAFETY: `addr` is 16 readable bytes; the read needs no alignment.
    unsafe { (addr.as_ptr() as *const u32).read_unaligned() }.to_ne_bytes()
}
