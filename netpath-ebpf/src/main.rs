//! netpath's eBPF programs: one small entry function per hook; the parsing, conntrack, NAT and
//! checksum logic they share lives in plain modules.
#![no_std]
#![no_main]

mod conntrack;
mod csum;
mod fib;
mod from_endpoint;
mod from_uplink;
mod maps;
mod nat;
mod parse;
mod stats;
mod zero;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// TC ingress of an endpoint's host-side veth: what the container sends.
#[classifier]
pub fn np_from_ep(ctx: TcContext) -> i32 {
    from_endpoint::handle(ctx)
}

/// TC ingress of an uplink: replies to masqueraded flows (published ports next).
#[classifier]
pub fn np_uplink(ctx: TcContext) -> i32 {
    from_uplink::handle(ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
