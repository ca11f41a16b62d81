//! Owns running a loaded program once on a crafted packet (BPF_PROG_TEST_RUN), for the program
//! tests: aya 0.14 has no API for it, so this wraps the raw `bpf(2)` command safely.
//!
//! For TC programs the kernel builds an skb from `data` (which must start with an Ethernet
//! header and be at least 14 bytes), runs the program once, and returns its verdict and the
//! packet as the program left it. Redirect helpers only record their target; nothing is sent.
//! The skb's device is the one named by [`SkBuffCtx::ifindex`] in the calling thread's network
//! namespace (loopback when 0), so run tests in a private namespace.
use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Room for programs that grow the packet.
const DATA_OUT_HEADROOM: usize = 256;

/// The `test` member of `union bpf_attr` (kernel 5.10+ layout, zero tail).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The user-visible `struct __sk_buff` (uapi `linux/bpf.h`), as BPF_PROG_TEST_RUN takes it in
/// `ctx_in`. The kernel accepts only a few fields (mark, priority, ifindex, ingress_ifindex,
/// cb, tstamp, wire_len, gso_segs, gso_size, hwtstamp) and rejects a non-zero value anywhere
/// else.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SkBuffCtx {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub hash: u32,
    pub tc_classid: u32,
    pub data: u32,
    pub data_end: u32,
    pub napi_id: u32,
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub data_meta: u32,
    pub flow_keys: u64,
    pub tstamp: u64,
    pub wire_len: u32,
    pub gso_segs: u32,
    pub sk: u64,
    pub gso_size: u32,
    pub tstamp_type: u8,
    pub _pad: [u8; 3],
    pub hwtstamp: u64,
}

const _: () = assert!(size_of::<SkBuffCtx>() == 192);

impl SkBuffCtx {
    /// A context whose skb arrives on `ifindex` (as TC ingress of that interface sees it):
    /// only `ifindex`, the field the programs read. `ingress_ifindex` stays 0: Linux 5.10
    /// refuses a non-zero one with EINVAL (later kernels accept it).
    pub fn on_interface(ifindex: u32) -> Self {
        Self {
            ifindex,
            ..Default::default()
        }
    }
}

/// What one run returned.
#[derive(Clone, Debug)]
pub struct TestRunOutput {
    /// The program's return value (for TC: the verdict, e.g. 0 = TC_ACT_OK, 2 = TC_ACT_SHOT,
    /// 7 = TC_ACT_REDIRECT).
    pub retval: u32,
    /// The packet after the program ran.
    pub data: Vec<u8>,
    /// Run time reported by the kernel, in nanoseconds.
    pub duration_ns: u32,
}

/// Runs the program `prog_fd` once on `data`, with `ctx` as its `__sk_buff` if given.
///
/// # Errors
/// The syscall's error: e.g. `EINVAL` for a frame shorter than 14 bytes or a context with
/// fields the kernel does not accept, `ENODEV` when `ctx.ifindex` names no interface of the
/// calling thread's namespace.
pub fn run_skb_program(
    prog_fd: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&SkBuffCtx>,
) -> io::Result<TestRunOutput> {
    let mut out = vec![0u8; data.len() + DATA_OUT_HEADROOM];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd.as_raw_fd() as u32,
        data_size_in: u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too large"))?,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    if let Some(ctx) = ctx {
        attr.ctx_size_in = size_of::<SkBuffCtx>() as u32;
        attr.ctx_in = std::ptr::from_ref(ctx) as u64;
    }
    // SAFETY: BPF_PROG_TEST_RUN with a zero-initialised attr whose pointers reference live
    // buffers of the sizes given (`data` and `ctx` are only read, `out` is written at most
    // `data_size_out` bytes); all outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::from_mut(&mut attr),
            size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate((attr.data_size_out as usize).min(out.len()));
    Ok(TestRunOutput {
        retval: attr.retval,
        data: out,
        duration_ns: attr.duration,
    })
}
