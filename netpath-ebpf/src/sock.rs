//! Owns the cgroup `sock_addr` programs: host sockets reach published ports without a proxy.
//! `connect4`/`sendmsg4` point a socket dialling a published (address, port) at the endpoint
//! and remember what it dialled in `NP_SOCK_NAT` (socket storage, freed with the socket);
//! `recvmsg4`/`getpeername4` show the dialled address instead of the endpoint's.
//!
//! They are attached to the cgroup v2 root, so they run for every socket of the machine: they
//! act only when the socket's network namespace is the one this instance serves
//! (`bpf_get_netns_cookie` equal to `DatapathConfig::netns_cookie`; 0 = unknown = never).
//! Lookups: the exact `NP_PORTS` key first (loopback-published entries match here, guards never
//! do), then the wildcard key for 127.0.0.0/8 and the host's own addresses. Every program
//! allows the operation (returns 1): translation never makes a syscall fail.
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_netns_cookie, programs::SockAddrContext,
};
use netpath_common::{AddrKey, IPPROTO_TCP, IPPROTO_UDP, PortKey, counter};

use crate::{
    maps::{NP_CONFIG, NP_SOCK_NAT},
    parse::{eq_ipv4, eq_port},
    ports,
    stats::count,
    zero::zeroed,
};

/// Let the syscall proceed.
const ALLOW: i32 = 1;

/// True when the socket lives in the namespace this instance serves.
#[inline(always)]
fn in_served_netns(ctx: &SockAddrContext) -> bool {
    let served = match NP_CONFIG.get_ptr(0) {
        // SAFETY: a valid array slot; field copied out.
        Some(cfg) => unsafe { (*cfg).netns_cookie },
        None => 0,
    };
    // SAFETY: the helper takes the program's context.
    served != 0 && served == unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// The socket's address as the context holds it: (address, port), both as wire bytes.
#[inline(always)]
fn user_addr(ctx: &SockAddrContext) -> ([u8; 4], [u8; 2]) {
    // SAFETY: the context pointer the program was called with; 4-byte reads of readable fields.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    // `user_ip4` and the low 16 bits of `user_port` hold network byte order.
    (ip.to_ne_bytes(), (port as u16).to_ne_bytes())
}

#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, addr: [u8; 4], port: [u8; 2]) {
    // SAFETY: writable fields in the connect4/sendmsg4/recvmsg4/getpeername4 hooks.
    unsafe {
        (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(addr);
        (*ctx.sock_addr).user_port = u16::from_ne_bytes(port) as u32;
    }
}

/// `connect4` and `sendmsg4`: a socket dialling a published port is pointed at the endpoint.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    if !in_served_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: 4-byte read of a readable context field.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    if protocol != IPPROTO_TCP as u32 && protocol != IPPROTO_UDP as u32 {
        return ALLOW;
    }
    let protocol = protocol as u8;
    let (dst, port) = user_addr(ctx);
    let mut port_key = zeroed::<PortKey>();
    let target = match ports::exact(&mut port_key.0, dst, port, protocol) {
        Some(t) if !t.is_guard() => t,
        _ => {
            let mut addr_key = zeroed::<AddrKey>();
            if !ports::is_loopback(dst) && !ports::is_host_addr(&mut addr_key.0, dst) {
                return ALLOW;
            }
            match ports::wildcard(&mut port_key.0, port, protocol) {
                Some(t) if !t.is_guard() => t,
                _ => return ALLOW,
            }
        }
    };
    // SAFETY: the context's socket; a zeroed entry is created if there is none.
    let saved = unsafe { NP_SOCK_NAT.get_or_insert_ptr_mut(ctx, None) };
    if saved.is_null() {
        count(counter::SOCK_STORAGE_FAILED);
    } else {
        // SAFETY: non-null socket storage of this socket.
        unsafe {
            (*saved).orig_addr = dst;
            (*saved).orig_port = port;
            (*saved).endpoint_addr = target.endpoint_addr;
            (*saved).endpoint_port = target.endpoint_port;
        }
    }
    set_user_addr(ctx, target.endpoint_addr, target.endpoint_port);
    count(counter::SOCK_REWRITE);
    ALLOW
}

/// `recvmsg4` and `getpeername4`: a translated socket sees the address it dialled.
#[inline(always)]
pub fn restore(ctx: &SockAddrContext) -> i32 {
    if !in_served_netns(ctx) {
        return ALLOW;
    }
    // SAFETY: the context's socket; no entry is created.
    let saved = unsafe { NP_SOCK_NAT.get_ptr_mut(ctx) };
    if saved.is_null() {
        return ALLOW;
    }
    // SAFETY: non-null socket storage of this socket; fields copied out.
    let (orig_addr, orig_port, ep_addr, ep_port) = unsafe {
        (
            (*saved).orig_addr,
            (*saved).orig_port,
            (*saved).endpoint_addr,
            (*saved).endpoint_port,
        )
    };
    let (addr, port) = user_addr(ctx);
    if eq_ipv4(addr, ep_addr) && eq_port(port, ep_port) {
        set_user_addr(ctx, orig_addr, orig_port);
        count(counter::SOCK_PEER_RESTORED);
    }
    ALLOW
}
