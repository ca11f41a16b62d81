//! Owns in-place header rewrites with incremental checksum updates (RFC 1624): a whole
//! translation (MACs, TTL, addresses, ports) written straight into the packet, the IPv4 header
//! checksum computed here, and the L4 checksum left to the kernel's `bpf_l4_csum_replace`.
//!
//! Why the split: the IPv4 header checksum is always complete, so it can be updated from the
//! changed words alone. The TCP/UDP checksum depends on the skb's checksum state, which a
//! program cannot read: for CHECKSUM_PARTIAL (a veth or an offloading NIC computes it later)
//! the field holds only the pseudo-header sum, so an address change must be folded in with the
//! opposite sign and a port change not at all; for CHECKSUM_COMPLETE `skb->csum` must follow
//! too. The helper knows the state and does all of that, given one ones'-complement difference
//! for the addresses (pseudo-header) and one for the ports: at most two helper calls per
//! packet, however many fields change.
//!
//! Writes go straight into the packet (direct packet access). The verifier then makes a cloned
//! skb's header private before the program runs (the same copy the first helper write, or the
//! kernel's forwarding path, would make), so no pointer here can see shared data. Every write
//! happens before the first checksum helper call, which invalidates packet pointers.
use aya_ebpf::{bindings::BPF_F_MARK_MANGLED_0, bindings::BPF_F_PSEUDO_HDR, programs::TcContext};
use netpath_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::parse::{
    IP_CHECK_OFF, IP_DST_OFF, IP_SRC_OFF, IP_TTL_OFF, Ipv4, L2_L3_FIXED_LEN, Transport,
};

/// A write or checksum helper failed (counted as `REWRITE_FAILED`).
pub struct RewriteFailed;

/// What a translation makes of one packet: the new addresses and ports (wire bytes) and, when
/// `set_macs`, the new MACs. Every translation is a routing hop, so the TTL drops by one (the
/// caller made sure it is above 1). For ICMP echo, `src_port` is the new identifier and
/// `dst_port` is ignored.
#[derive(Clone, Copy)]
pub struct Translation {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub set_macs: bool,
}

impl Translation {
    /// Starts a translation of this packet in place (per-CPU scratch memory: the callers'
    /// stacks are full): same addresses and ports, MACs left as they are.
    #[inline(always)]
    pub fn start(&mut self, ip: &Ipv4, l4: &Transport) {
        self.src = ip.src;
        self.dst = ip.dst;
        self.src_port = l4.src_port;
        self.dst_port = l4.dst_port;
        self.set_macs = false;
    }

    /// Also writes both MACs (e.g. the endpoint's and its gateway's, or a FIB result's).
    #[inline(always)]
    pub fn set_macs(&mut self, dst_mac: [u8; 6], src_mac: [u8; 6]) {
        self.dst_mac = dst_mac;
        self.src_mac = src_mac;
        self.set_macs = true;
    }

    /// The source becomes `addr:port` (ICMP echo: the identifier becomes `port`).
    #[inline(always)]
    pub fn set_source(&mut self, addr: [u8; 4], port: [u8; 2]) {
        self.src = addr;
        self.src_port = port;
    }

    /// The destination becomes `addr:port` (ICMP echo replies: the identifier becomes `port`).
    #[inline(always)]
    pub fn set_destination(&mut self, l4: &Transport, addr: [u8; 4], port: [u8; 2]) {
        self.dst = addr;
        if l4.protocol == IPPROTO_ICMP {
            self.src_port = port;
        } else {
            self.dst_port = port;
        }
    }
}

/// Adds the change of one 16-bit word (`old` -> `new`, as read from the packet) to a
/// ones'-complement sum (RFC 1624: ~m + m').
#[inline(always)]
fn add_word_change(sum: u32, old: u16, new: u16) -> u32 {
    sum + (!old) as u32 + new as u32
}

/// Folds a 32-bit sum of 16-bit words to 16 bits with end-around carry.
#[inline(always)]
fn fold16(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Folds a 64-bit accumulator to a 32-bit ones'-complement sum.
#[inline(always)]
fn fold32(mut acc: u64) -> u32 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc as u32
}

/// `bpf_l4_csum_replace` flags: field size 0 means "`to` is a checksum difference". UDP's
/// checksum 0 means "none" and must stay 0, and a computed 0 must be sent as 0xffff:
/// BPF_F_MARK_MANGLED_0 asks the kernel for both.
#[inline(always)]
fn l4_flags(protocol: u8, pseudo_header: bool) -> u64 {
    let mut flags = 0;
    if protocol == IPPROTO_UDP {
        flags |= BPF_F_MARK_MANGLED_0 as u64;
    }
    if pseudo_header {
        flags |= BPF_F_PSEUDO_HDR as u64;
    }
    flags
}

/// Applies `t` to the packet: MACs, TTL, addresses and IPv4 header checksum in the first
/// [`L2_L3_FIXED_LEN`] bytes (before any IP option), the ports (ICMP: identifier) in the L4
/// header, then the L4 checksum.
///
/// `data`/`data_end` are read once and both write windows checked up front: straight-line
/// stores, no loop, no context read after a helper call (the verifier only accepts context
/// loads at fixed offsets from the context pointer itself).
///
/// A BPF-to-BPF call of its own (not inlined): its working values then live in its own small
/// frame instead of widening the frames of its many callers, whose call chains must stay
/// within the 512-byte stack with every frame rounded up to 32 bytes (Linux 5.10 and later).
#[inline(never)]
pub fn translate(
    ctx: &TcContext,
    ip: &Ipv4,
    l4: &Transport,
    t: &Translation,
) -> Result<(), RewriteFailed> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    // The L4 window: 4 bytes of ports (TCP/UDP), or the identifier and sequence of ICMP echo
    // (only the first two change); `parse::transport` made sure the whole header is there.
    if data + L2_L3_FIXED_LEN > data_end || data + l4.src_port_off + 4 > data_end {
        return Err(RewriteFailed);
    }
    let head = data as *mut u8;
    let ports = (data + l4.src_port_off) as *mut u8;
    let icmp = l4.protocol == IPPROTO_ICMP;
    // ICMP echo has one "port", the identifier, in `src_port` (see `parse::Transport`).
    let new_dst_port = if icmp { l4.dst_port } else { t.dst_port };
    let old_ports = ports_word(l4.src_port, l4.dst_port);
    let new_ports = ports_word(t.src_port, new_dst_port);
    let (old_src, new_src) = (u32::from_ne_bytes(ip.src), u32::from_ne_bytes(t.src));
    let (old_dst, new_dst) = (u32::from_ne_bytes(ip.dst), u32::from_ne_bytes(t.dst));
    let new_ttl = ip.ttl.wrapping_sub(1);

    // SAFETY: both windows were checked against data_end above. Unaligned accesses: BPF
    // allows them to packet data on the architectures netpath runs on (no strict alignment).
    unsafe {
        if t.set_macs {
            write_mac(head, &t.dst_mac);
            write_mac(head.add(6), &t.src_mac);
        }
        let check = (head.add(IP_CHECK_OFF) as *const u16).read_unaligned();
        // TTL and protocol share one 16-bit word of the header.
        let ttl_word = (head.add(IP_TTL_OFF) as *const u16).read_unaligned();
        let new_ttl_word = u16::from_ne_bytes([new_ttl, ip.protocol]);
        let mut sum = (!check) as u32;
        sum = add_word_change(sum, ttl_word, new_ttl_word);
        sum = add_word_change(sum, old_src as u16, new_src as u16);
        sum = add_word_change(sum, (old_src >> 16) as u16, (new_src >> 16) as u16);
        sum = add_word_change(sum, old_dst as u16, new_dst as u16);
        sum = add_word_change(sum, (old_dst >> 16) as u16, (new_dst >> 16) as u16);
        (head.add(IP_TTL_OFF) as *mut u16).write_unaligned(new_ttl_word);
        (head.add(IP_CHECK_OFF) as *mut u16).write_unaligned(!fold16(sum));
        (head.add(IP_SRC_OFF) as *mut u32).write_unaligned(new_src);
        (head.add(IP_DST_OFF) as *mut u32).write_unaligned(new_dst);
        if old_ports != new_ports {
            if icmp {
                (ports as *mut u16).write_unaligned(new_ports as u16);
            } else {
                (ports as *mut u32).write_unaligned(new_ports);
            }
        }
    }

    // From here on the helpers may move packet data: no packet pointer is used below.
    if (old_src != new_src || old_dst != new_dst)
        && (l4.protocol == IPPROTO_TCP || l4.protocol == IPPROTO_UDP)
    {
        let diff = fold32((!old_src) as u64 + new_src as u64 + (!old_dst) as u64 + new_dst as u64);
        ctx.l4_csum_replace(l4.csum_off, 0, diff as u64, l4_flags(l4.protocol, true))
            .map_err(|_| RewriteFailed)?;
    }
    if old_ports != new_ports {
        let diff = fold32((!old_ports) as u64 + new_ports as u64);
        ctx.l4_csum_replace(l4.csum_off, 0, diff as u64, l4_flags(l4.protocol, false))
            .map_err(|_| RewriteFailed)?;
    }
    Ok(())
}

/// Both ports as the 32-bit word they form in a TCP/UDP header (ICMP echo: the identifier and
/// an unchanged zero half, which adds nothing to a checksum difference).
#[inline(always)]
fn ports_word(src: [u8; 2], dst: [u8; 2]) -> u32 {
    u32::from_ne_bytes([src[0], src[1], dst[0], dst[1]])
}

/// Writes only the destination MAC (delivery to another endpoint of the same network: no
/// routing hop, nothing checksummed changes).
#[inline(always)]
pub fn set_dst_mac(ctx: &TcContext, dst: [u8; 6]) -> Result<(), RewriteFailed> {
    let data = ctx.data();
    if data + 6 > ctx.data_end() {
        return Err(RewriteFailed);
    }
    // SAFETY: 6 writable bytes at `data` (checked above).
    unsafe { write_mac(data as *mut u8, &dst) };
    Ok(())
}

/// Stores a MAC as a 4-byte and a 2-byte word: an array store from memory LLVM cannot prove
/// apart from the packet would become a call to `memmove`, a subprogram of its own.
///
/// # Safety
/// `p` must point at 6 writable bytes.
#[inline(always)]
unsafe fn write_mac(p: *mut u8, mac: &[u8; 6]) {
    let high = u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let low = u16::from_ne_bytes([mac[4], mac[5]]);
    // SAFETY: the caller's contract.
    unsafe {
        (p as *mut u32).write_unaligned(high);
        (p.add(4) as *mut u16).write_unaligned(low);
    }
}
