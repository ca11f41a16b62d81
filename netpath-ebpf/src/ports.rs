//! Owns looking up published ports (`NP_PORTS`) and deciding whether a destination is one of
//! the host's own addresses, for the TC programs and the cgroup socket programs alike.
//!
//! Lookup order: the exact key (destination address, port, protocol), then the wildcard key
//! (address all zero). The wildcard applies only to the host's own addresses: a packet or
//! socket to any other address on a published port number is somebody else's traffic.
//!
//! Keys are built in a buffer the caller provides: per-CPU scratch memory in the TC programs,
//! whose stacks are full, a stack value in the small cgroup programs.
use netpath_common::{AddrKey, FAMILY_IPV4, PortKey, port_flags};

use crate::{
    conntrack::{fill_addr_key_v4, set_v4},
    maps::{NP_HOST_ADDRS, NP_PORTS},
    parse::v4_of,
    zero::zero_in_place,
};

/// Where a published port leads, copied out of its `NP_PORTS` entry.
#[derive(Clone, Copy)]
pub struct Target {
    pub endpoint_addr: [u8; 4],
    /// Network byte order.
    pub endpoint_port: [u8; 2],
    pub endpoint_ifindex: u32,
    /// [`port_flags`] bits.
    pub flags: u8,
}

impl Target {
    /// Reachable only from the host's own sockets (loopback publish or guard entry).
    #[inline(always)]
    pub fn host_only(&self) -> bool {
        self.flags & (port_flags::HOST_ONLY | port_flags::GUARD) != 0
    }

    #[inline(always)]
    pub fn is_guard(&self) -> bool {
        self.flags & port_flags::GUARD != 0
    }
}

#[inline(always)]
fn get(key: &mut PortKey, addr: [u8; 4], port: [u8; 2], protocol: u8) -> Option<Target> {
    zero_in_place(key);
    set_v4(&mut key.host_addr, addr);
    key.host_port = port;
    key.protocol = protocol;
    key.family = FAMILY_IPV4;
    let p = NP_PORTS.get_ptr(&*key)?;
    // SAFETY: a live map value; fields copied out.
    unsafe {
        if (*p).family != FAMILY_IPV4 {
            return None;
        }
        Some(Target {
            endpoint_addr: v4_of(&(*p).endpoint_addr),
            endpoint_port: (*p).endpoint_port,
            endpoint_ifindex: (*p).endpoint_ifindex,
            flags: (*p).flags,
        })
    }
}

/// The entry published on exactly `addr`.
#[inline(always)]
pub fn exact(key: &mut PortKey, addr: [u8; 4], port: [u8; 2], protocol: u8) -> Option<Target> {
    get(key, addr, port, protocol)
}

/// The entry published on every address (0.0.0.0).
#[inline(always)]
pub fn wildcard(key: &mut PortKey, port: [u8; 2], protocol: u8) -> Option<Target> {
    get(key, [0; 4], port, protocol)
}

/// 127.0.0.0/8.
#[inline(always)]
pub fn is_loopback(addr: [u8; 4]) -> bool {
    addr[0] == 127
}

/// One of the served namespace's own interface addresses (`NP_HOST_ADDRS`).
#[inline(always)]
pub fn is_host_addr(key: &mut AddrKey, addr: [u8; 4]) -> bool {
    fill_addr_key_v4(key, addr);
    NP_HOST_ADDRS.get_ptr(&*key).is_some()
}
