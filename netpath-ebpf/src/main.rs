//! netpath's eBPF programs: one small entry function per hook; the parsing, conntrack, NAT and
//! checksum logic they share lives in plain modules.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod dnat;
mod fib;
mod from_endpoint;
mod from_uplink;
mod maps;
mod nat;
mod parse;
mod ports;
mod send;
mod sock;
mod stats;
mod zero;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// TC ingress of an endpoint's host-side veth: what the container sends.
#[classifier]
pub fn np_from_ep(ctx: TcContext) -> i32 {
    from_endpoint::handle(ctx)
}

/// TC ingress of an uplink: replies to masqueraded flows, published ports.
#[classifier]
pub fn np_uplink(ctx: TcContext) -> i32 {
    from_uplink::handle(ctx)
}

/// A host socket connecting to a published port is pointed at the endpoint.
#[cgroup_sock_addr(connect4)]
pub fn np_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// The same for unconnected UDP sends.
#[cgroup_sock_addr(sendmsg4)]
pub fn np_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

/// UDP replies to a translated socket come from the address it sent to.
#[cgroup_sock_addr(recvmsg4)]
pub fn np_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx)
}

/// A translated socket's peer is the address it dialled.
#[cgroup_sock_addr(getpeername4)]
pub fn np_getpeer4(ctx: SockAddrContext) -> i32 {
    sock::restore(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
