//! Test harness for netpath's end-to-end tests: real network namespaces, a netpath instance per
//! test running in a namespace that stands for the host, and real TCP/UDP/ICMP traffic.
//!
//! Rules every helper keeps: traffic goes only to addresses inside namespaces the test made;
//! every name is unique per test ([`unique_name`]); everything is removed by `Drop` guards on
//! every exit path, panics included; nothing is attached to the machine's own interfaces; netpath
//! runs under `nsenter --net=…` (never `ip netns exec`, whose private mount namespace hides
//! bpffs and the `/run/netns` bind mounts netpath makes).
mod lab;
mod netns;
mod traffic;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

pub use lab::Lab;
pub use netns::{Netns, ifindex, in_netns, ip, ns_links, ns_output};
pub use traffic::{TcpEchoServer, UdpEchoServer, connect_in, ping, tcp_echo, udp_echo};

/// Longest name [`unique_name`] returns; short enough that `<name>h`, `<name>-<endpoint>` and
/// netpath's instance names (at most 12 characters) all fit.
pub const UNIQUE_NAME_LEN: usize = 8;

/// The `netpath` binary the tests run: `$NETPATH_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/debug/netpath`.
///
/// # Panics
/// When the binary does not exist, with a message saying how to build it.
pub fn netpath_bin() -> PathBuf {
    find_netpath_bin().unwrap_or_else(|| {
        panic!(
            "the netpath binary was not found at {} (set NETPATH_BIN or build it): run the tests with \
             `cargo xtask test`, which builds it and sets NETPATH_BIN",
            netpath_bin_path().display()
        )
    })
}

/// Where [`netpath_bin`] looks, whether or not the file exists.
fn netpath_bin_path() -> PathBuf {
    match std::env::var_os("NETPATH_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netpath"),
    }
}

/// The netpath binary if it exists; for clean-up paths, which must never panic.
pub(crate) fn find_netpath_bin() -> Option<PathBuf> {
    let path = netpath_bin_path();
    path.is_file().then_some(path)
}

/// A name unique per process and call, at most [`UNIQUE_NAME_LEN`] characters of `[a-z0-9]`:
/// `tag` (its first one or two characters), 4 hex digits of the process id, then a base-36
/// counter filling the rest. The process id keeps parallel test processes (nextest runs one
/// per test) apart; `Lab::new` also skips a name whose namespaces already exist.
///
/// # Panics
/// When `tag` does not start with a lowercase letter or holds characters outside `[a-z0-9]`.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    assert!(
        tag.starts_with(|c: char| c.is_ascii_lowercase())
            && tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "unique_name: tag {tag:?} must start with a-z and hold only a-z, 0-9"
    );
    let tag = &tag[..tag.len().min(2)];
    let pid = std::process::id() & 0xffff;
    let digits = UNIQUE_NAME_LEN - tag.len() - 4;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) % 36u32.pow(digits as u32);
    format!("{tag}{pid:04x}{}", base36(n, digits))
}

/// `n` in base 36, zero-padded to `width` digits.
fn base36(mut n: u32, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(digits).expect("base-36 digits are ASCII")
}

/// bpffs directory holding the pins of netpath instance `instance`.
pub fn bpffs_pin_dir(instance: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/netpath-{instance}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_pads_and_wraps() {
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(35, 3), "00z");
        assert_eq!(base36(36 * 36 + 1, 3), "101");
    }

    #[test]
    fn long_tags_are_cut_to_keep_the_length() {
        let n = unique_name("abc");
        assert!(n.starts_with("ab") && n.len() == UNIQUE_NAME_LEN, "{n}");
    }
}
