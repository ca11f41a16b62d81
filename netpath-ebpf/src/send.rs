//! Owns carrying out a translated packet: the deciding code writes the packet's
//! [`csum::Translation`] and its way out ([`Prepared`]) into per-CPU scratch memory, and
//! [`apply`] rewrites the packet and redirects it.
//!
//! Why the split: in `np_from_ep` the deciding subprograms (published-port replies, hairpin,
//! masquerade) have large frames, and `csum::translate` is a subprogram of its own. Called from
//! inside them, it would sit third on a call chain that must fit 512 bytes with every frame
//! rounded up to 32 (Linux 5.10). So they return [`SEND`] instead, and the program's entry
//! function calls [`send_prepared`]: at most two frames above the entry's, each small.
use aya_ebpf::{bindings::TC_ACT_REDIRECT, programs::TcContext};
use netpath_common::drop_reason;

use crate::{
    csum, dnat,
    fib::{self, Route},
    parse::{self, ICMP_ECHO_REQUEST, Ipv4, Transport},
    stats::{count, drop_packet},
};

/// Returned by a deciding subprogram of `np_from_ep` when the packet is ready for
/// [`send_prepared`].
pub const SEND: i32 = i32::MIN + 1;

/// How a prepared packet leaves ([`Prepared::how`]).
pub mod how {
    /// `bpf_redirect_peer` into the namespace of the endpoint behind host-side veth `ifindex`.
    pub const PEER: u8 = 0;
    /// `bpf_redirect` out of `ifindex`: the translation wrote both MACs.
    pub const REDIRECT: u8 = 1;
    /// `bpf_redirect_neigh` out of `ifindex`: the kernel resolves the next hop's MAC.
    pub const NEIGH: u8 = 2;
}

/// A packet's way out, next to its translation in scratch memory.
#[derive(Clone, Copy)]
pub struct Prepared {
    pub ifindex: u32,
    /// The `NP_STATS` counter a successful send counts.
    pub counter: u32,
    /// One of [`how`].
    pub how: u8,
}

/// Records the way out of the packet whose translation the caller wrote into `s`; returns
/// [`SEND`].
#[inline(always)]
pub fn prepare(s: *mut dnat::Scratch, how: u8, ifindex: u32, counter: u32) -> i32 {
    // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
    unsafe {
        (*s).send = Prepared {
            ifindex,
            counter,
            how,
        };
    }
    SEND
}

/// Records the way out along a FIB result for the packet whose translation the caller wrote
/// into `s`: with the next hop's MACs known, the translation writes them and the packet is
/// redirected as is; otherwise `bpf_redirect_neigh` resolves them. Returns [`SEND`].
#[inline(always)]
pub fn prepare_along(s: *mut dnat::Scratch, route: &Route, egress: u32, counter: u32) -> i32 {
    match route.macs() {
        Some((dmac, smac)) => {
            // SAFETY: this CPU's scratch slot, used by nothing else while the program runs.
            unsafe { (*s).translation.set_macs(dmac, smac) };
            prepare(s, how::REDIRECT, egress, counter)
        }
        None => prepare(s, how::NEIGH, egress, counter),
    }
}

/// Rewrites the packet as prepared in `s` and sends it the prepared way; counts the prepared
/// counter, or the drop.
#[inline(always)]
pub fn apply(ctx: &TcContext, s: *mut dnat::Scratch, ip: &Ipv4, l4: &Transport) -> i32 {
    // SAFETY: this CPU's scratch slot, filled by the deciding code in this run.
    let (t, send) = unsafe { (&(*s).translation, (*s).send) };
    if csum::translate(ctx, ip, l4, t).is_err() {
        return drop_packet(drop_reason::REWRITE_FAILED);
    }
    let sent = match send.how {
        how::PEER => fib::redirect_peer(ctx, send.ifindex),
        how::REDIRECT => fib::redirect(send.ifindex),
        _ => fib::redirect_neigh(send.ifindex),
    };
    if !sent {
        return drop_packet(drop_reason::REDIRECT_FAILED);
    }
    count(send.counter);
    TC_ACT_REDIRECT as i32
}

/// `np_from_ep`: carries out the packet a deciding subprogram prepared (it returned [`SEND`]).
#[inline(never)]
pub fn send_prepared(skb: *mut aya_ebpf::bindings::__sk_buff, ip: &Ipv4) -> i32 {
    let ctx = TcContext::new(skb);
    let Ok(l4) = parse::transport(&ctx, ip, ICMP_ECHO_REQUEST) else {
        return drop_packet(drop_reason::MALFORMED);
    };
    let Some(s) = dnat::scratch() else {
        return drop_packet(drop_reason::MAP_UPDATE_FAILED);
    };
    apply(&ctx, s, ip, &l4)
}
