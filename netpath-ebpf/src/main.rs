//! netpath's eBPF programs: one small entry function per hook; the parsing, conntrack, NAT and
//! checksum logic they share lives in plain modules.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

#[classifier]
pub fn np_from_ep(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[classifier]
pub fn np_uplink(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
