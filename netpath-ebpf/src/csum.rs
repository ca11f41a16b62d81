//! Owns in-place header rewrites with incremental checksum updates (RFC 1624, done by the
//! kernel's `bpf_l3_csum_replace`/`bpf_l4_csum_replace`): which checksum each field is part of,
//! which helper flags each protocol needs, and the store itself.
//!
//! The helpers also keep `skb->csum` right for CHECKSUM_COMPLETE packets and only touch the
//! pseudo-header part of a CHECKSUM_PARTIAL (offloaded) L4 checksum, so translated packets stay
//! valid whether or not the NIC or veth computes checksums. Values are passed exactly as they
//! sit in the packet (`from_ne_bytes` of the wire bytes), which is what the helpers expect.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netpath_common::{IPPROTO_TCP, IPPROTO_UDP};

use crate::parse::{IP_CHECK_OFF, IP_TTL_OFF};

/// A checksum or store helper failed (counted as `REWRITE_FAILED`).
pub struct RewriteFailed;

/// Size bits of the `flags` argument of `bpf_l4_csum_replace` (BPF_F_HDR_FIELD_MASK).
const FIELD_SIZE_2: u64 = 2;
const FIELD_SIZE_4: u64 = 4;

/// Extra L4 flags per protocol: a UDP checksum of 0 means "no checksum" and must stay 0, and a
/// computed 0 must be written as 0xffff; BPF_F_MARK_MANGLED_0 asks the kernel for both.
#[inline(always)]
fn l4_protocol_flags(protocol: u8) -> u64 {
    if protocol == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    }
}

/// Replaces the IPv4 address at `addr_off` (source or destination), updating the IP header
/// checksum and, for TCP and UDP, the L4 checksum whose pseudo-header covers the address. The
/// ICMP checksum does not cover the IP header.
#[inline(always)]
pub fn replace_ipv4_addr(
    ctx: &TcContext,
    protocol: u8,
    l4_csum_off: usize,
    addr_off: usize,
    old: [u8; 4],
    new: [u8; 4],
) -> Result<(), RewriteFailed> {
    let from = u32::from_ne_bytes(old) as u64;
    let to = u32::from_ne_bytes(new) as u64;
    if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP {
        let flags = BPF_F_PSEUDO_HDR as u64 | FIELD_SIZE_4 | l4_protocol_flags(protocol);
        ctx.l4_csum_replace(l4_csum_off, from, to, flags)
            .map_err(|_| RewriteFailed)?;
    }
    ctx.l3_csum_replace(IP_CHECK_OFF, from, to, FIELD_SIZE_4)
        .map_err(|_| RewriteFailed)?;
    ctx.store(addr_off, &new, 0).map_err(|_| RewriteFailed)
}

/// Replaces a 16-bit L4 field covered by the L4 checksum (TCP/UDP port, ICMP echo identifier).
#[inline(always)]
pub fn replace_l4_u16(
    ctx: &TcContext,
    protocol: u8,
    l4_csum_off: usize,
    field_off: usize,
    old: [u8; 2],
    new: [u8; 2],
) -> Result<(), RewriteFailed> {
    if old == new {
        return Ok(());
    }
    let from = u16::from_ne_bytes(old) as u64;
    let to = u16::from_ne_bytes(new) as u64;
    let flags = FIELD_SIZE_2 | l4_protocol_flags(protocol);
    ctx.l4_csum_replace(l4_csum_off, from, to, flags)
        .map_err(|_| RewriteFailed)?;
    ctx.store(field_off, &new, 0).map_err(|_| RewriteFailed)
}

/// Decrements the TTL (the caller made sure it is > 1). TTL and protocol share one 16-bit word
/// of the IP checksum, so the word is what gets replaced in the sum.
#[inline(always)]
pub fn decrement_ttl(ctx: &TcContext, ttl: u8, protocol: u8) -> Result<(), RewriteFailed> {
    let new_ttl = ttl - 1;
    let from = u16::from_ne_bytes([ttl, protocol]) as u64;
    let to = u16::from_ne_bytes([new_ttl, protocol]) as u64;
    ctx.l3_csum_replace(IP_CHECK_OFF, from, to, FIELD_SIZE_2)
        .map_err(|_| RewriteFailed)?;
    ctx.store(IP_TTL_OFF, &new_ttl, 0)
        .map_err(|_| RewriteFailed)
}

/// Writes destination and source MAC (the first 12 bytes of the frame; not checksummed).
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: [u8; 6], src: [u8; 6]) -> Result<(), RewriteFailed> {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&dst);
    macs[6..].copy_from_slice(&src);
    ctx.store(0, &macs, 0).map_err(|_| RewriteFailed)
}

/// Writes only the destination MAC.
#[inline(always)]
pub fn set_dst_mac(ctx: &TcContext, dst: [u8; 6]) -> Result<(), RewriteFailed> {
    ctx.store(0, &dst, 0).map_err(|_| RewriteFailed)
}
