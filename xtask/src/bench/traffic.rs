//! Owns the benchmark's traffic: an accept-and-close TCP server and a connect-and-close client
//! loop, each on its own thread pinned to one CPU. Sockets are made inside the namespace they
//! belong to (through [`netns::in_netns`]); a listener keeps its namespace, so the server thread
//! itself needs none.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::netns;

/// Listen backlog of the server: deep enough that a burst of handshakes never overflows it
/// while the server thread is descheduled (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// How long the server's `accept` blocks before it looks at its stop flag again.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// A connect that takes longer has lost a packet (a handshake here takes tens of microseconds;
/// a lost SYN is only retransmitted after 1 s): it is given up and counted as a failure, so one
/// lost packet costs a loop 0.2 s rather than a whole second of a 1 s measurement.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET only writes inside `set`, and ignores CPU numbers past its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot pin a thread to CPU {cpu}: {e}"),
        ));
    }
    Ok(())
}

/// A TCP listener inside an endpoint's namespace that accepts connections and closes them at
/// once, counting them.
pub struct AcceptServer {
    listener: Socket,
    /// Connections accepted so far.
    pub accepted: AtomicU64,
    /// Set to make [`AcceptServer::serve`] return within [`ACCEPT_POLL`].
    pub stop: AtomicBool,
}

impl AcceptServer {
    /// Binds `addr` inside the namespace at `netns_path` and listens.
    pub fn bind(netns_path: &Path, addr: SocketAddrV4) -> io::Result<Self> {
        let listener = netns::in_netns(netns_path, || -> io::Result<Socket> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::V4(addr).into())?;
            socket.listen(BACKLOG)?;
            Ok(socket)
        })??;
        // accept(2) honours SO_RCVTIMEO: the loop wakes up to look at `stop`.
        listener.set_read_timeout(Some(ACCEPT_POLL))?;
        Ok(Self {
            listener,
            accepted: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Accepts and closes connections on a thread pinned to `cpu` until `stop` is set (or
    /// `interrupted` is). A failed accept other than the poll timeout ends the server.
    pub fn serve(&self, cpu: usize, interrupted: &AtomicBool) -> io::Result<()> {
        pin_to_cpu(cpu)?;
        while !self.stop.load(Ordering::Relaxed) && !interrupted.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    drop(conn);
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                            // The client resets each connection; one reset before accept
                            // returns is not the server's failure.
                            | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What one connect loop did.
#[derive(Debug, Clone)]
pub struct ConnectRun {
    /// Connections that completed their handshake.
    pub connected: u64,
    /// Connects that failed or timed out.
    pub failed: u64,
    /// Why the first failed connect failed.
    pub first_error: Option<String>,
    /// How long the loop ran.
    pub elapsed: Duration,
}

impl ConnectRun {
    /// Completed connections per second.
    pub fn per_second(&self) -> f64 {
        self.connected as f64 / self.elapsed.as_secs_f64()
    }
}

/// From inside the namespace at `netns_path`, on a thread pinned to `cpu`, connects from address
/// `source` (kernel-picked port) to `dial` and closes at once, as fast as it can, for `duration`
/// (or until `interrupted`). Each socket closes with SO_LINGER 0 (a reset): no TIME_WAIT, so the
/// client's ports never run out.
pub fn connect_loop(
    netns_path: &Path,
    cpu: usize,
    source: Ipv4Addr,
    dial: SocketAddrV4,
    duration: Duration,
    interrupted: &AtomicBool,
) -> io::Result<ConnectRun> {
    netns::in_netns(netns_path, || -> io::Result<ConnectRun> {
        pin_to_cpu(cpu)?;
        let target = SocketAddr::V4(dial).into();
        let local = SocketAddr::V4(SocketAddrV4::new(source, 0)).into();
        let (mut connected, mut failed, mut first_error) = (0, 0, None);
        let start = Instant::now();
        while start.elapsed() < duration && !interrupted.load(Ordering::Relaxed) {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_linger(Some(Duration::ZERO))?;
            // The port is picked at connect time, as for an unbound socket (bind alone would
            // reserve one through the slower bind path).
            bind_address_no_port(&socket)?;
            socket.bind(&local)?;
            // connect(2) honours SO_SNDTIMEO on a blocking socket.
            socket.set_write_timeout(Some(CONNECT_TIMEOUT))?;
            match socket.connect(&target) {
                Ok(()) => connected += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| {
                        // The client port helps find the flow in a capture or the maps.
                        match socket.local_addr().ok().and_then(|a| a.as_socket()) {
                            Some(local) => format!("from {local}: {e}"),
                            None => e.to_string(),
                        }
                    });
                }
            }
        }
        Ok(ConnectRun {
            connected,
            failed,
            first_error,
            elapsed: start.elapsed(),
        })
    })?
}

/// Sets IP_BIND_ADDRESS_NO_PORT, which socket2 does not offer.
fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// TcpExt ListenDrops of the namespace at `netns_path`: connection requests its listeners
/// dropped (a full accept queue), which would make the server, not the path, the limit.
pub fn listen_drops(netns_path: &Path) -> io::Result<u64> {
    // /proc/thread-self/net is this thread's namespace; /proc/self/net would be the main
    // thread's.
    let text = netns::in_netns(netns_path, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat")
    })??;
    parse_netstat(&text, "TcpExt", "ListenDrops").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "no TcpExt ListenDrops in /proc/net/netstat",
        )
    })
}

/// One counter of /proc/net/netstat, where each group is a line of names followed by a line of
/// values, both starting with `GROUP:`.
fn parse_netstat(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_counter_is_found_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 3 7\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 1\n";
        assert_eq!(parse_netstat(text, "TcpExt", "ListenDrops"), Some(7));
        assert_eq!(parse_netstat(text, "IpExt", "InNoRoutes"), Some(1));
        assert_eq!(parse_netstat(text, "TcpExt", "Missing"), None);
    }
}
