//! Owns the benchmark's own traffic: an accept-and-close TCP server with a connect-and-close
//! client loop (new connections per second), and a spinning echo server with a spinning
//! request/response client (round trips with no wake-up in them), each on its own thread pinned
//! to one CPU. Sockets are made inside the namespace they belong to (through
//! [`netns::in_netns`]); a listener keeps its namespace, so the server threads need none.
use std::{
    io::{self, Read as _, Write as _},
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

/// A server of this module: it serves on a thread pinned to one CPU until told to stop.
pub trait Serve: Sync {
    /// Serves on the calling thread, pinned to `cpu`, until [`Serve::stop`] (or `interrupted`).
    fn serve(&self, cpu: usize, interrupted: &AtomicBool) -> io::Result<()>;
    /// Makes [`Serve::serve`] return, within [`ACCEPT_POLL`].
    fn stop(&self);
    /// What the server is, for its errors.
    fn what(&self) -> &'static str;
}

/// A TCP listener inside an endpoint's namespace, with the flag that stops its accept loop.
struct Listener {
    socket: Socket,
    stop: AtomicBool,
}

impl Listener {
    /// Binds `addr` inside the namespace at `netns_path` and listens; `accept` returns every
    /// [`ACCEPT_POLL`] at the latest, so the loop can look at its stop flag.
    fn bind(netns_path: &Path, addr: SocketAddrV4) -> io::Result<Self> {
        let socket = netns::in_netns(netns_path, || -> io::Result<Socket> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::V4(addr).into())?;
            socket.listen(BACKLOG)?;
            Ok(socket)
        })??;
        // accept(2) honours SO_RCVTIMEO.
        socket.set_read_timeout(Some(ACCEPT_POLL))?;
        Ok(Self {
            socket,
            stop: AtomicBool::new(false),
        })
    }

    /// Accepts on the calling thread, pinned to `cpu`, until stopped (or `interrupted`),
    /// handing each connection to `serve_one` with the test that says the loop should end. A
    /// failed accept other than "nothing yet" ends the loop with its error.
    fn accept_loop(
        &self,
        cpu: usize,
        interrupted: &AtomicBool,
        mut serve_one: impl FnMut(Socket, &dyn Fn() -> bool),
    ) -> io::Result<()> {
        pin_to_cpu(cpu)?;
        let stopped = || self.stop.load(Ordering::Relaxed) || interrupted.load(Ordering::Relaxed);
        while !stopped() {
            match self.socket.accept() {
                Ok((conn, _)) => serve_one(conn, &stopped),
                Err(e) if accept_can_retry(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Whether an `accept` error only means "nothing yet" (or a connection that went away before it
/// was accepted): the server loop goes on.
fn accept_can_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            // A client that resets its connection before accept returns is not the server's
            // failure.
            | io::ErrorKind::ConnectionAborted
    )
}

/// A TCP listener inside an endpoint's namespace that accepts connections and closes them at
/// once, counting them.
pub struct AcceptServer {
    listener: Listener,
    /// Connections accepted so far.
    pub accepted: AtomicU64,
}

impl AcceptServer {
    /// Binds `addr` inside the namespace at `netns_path` and listens.
    pub fn bind(netns_path: &Path, addr: SocketAddrV4) -> io::Result<Self> {
        Ok(Self {
            listener: Listener::bind(netns_path, addr)?,
            accepted: AtomicU64::new(0),
        })
    }
}

impl Serve for AcceptServer {
    /// Accepts and closes connections.
    fn serve(&self, cpu: usize, interrupted: &AtomicBool) -> io::Result<()> {
        self.listener.accept_loop(cpu, interrupted, |conn, _| {
            drop(conn);
            self.accepted.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn stop(&self) {
        self.listener.stop();
    }

    fn what(&self) -> &'static str {
        "an accept-and-close server"
    }
}

/// A TCP echo server inside an endpoint's namespace that never sleeps while a client is
/// connected: it serves one connection at a time, polling its non-blocking socket in a loop on
/// its CPU and sending back what it reads. A request then reaches a running server, not one
/// that must be woken (on this kind of VM a wake-up of an idle CPU costs tens of
/// microseconds, more than the whole path), so the round trip is the sockets', the TCP stacks'
/// and the path's work alone. Between connections it waits in `accept` and uses no CPU.
pub struct SpinEchoServer {
    listener: Listener,
}

impl SpinEchoServer {
    /// Binds `addr` inside the namespace at `netns_path` and listens.
    pub fn bind(netns_path: &Path, addr: SocketAddrV4) -> io::Result<Self> {
        Ok(Self {
            listener: Listener::bind(netns_path, addr)?,
        })
    }
}

impl Serve for SpinEchoServer {
    /// Serves connections one after the other; a connection that fails ends only itself (its
    /// client sees its own error).
    fn serve(&self, cpu: usize, interrupted: &AtomicBool) -> io::Result<()> {
        self.listener
            .accept_loop(cpu, interrupted, |conn, stopped| {
                drop(echo_spinning(conn, stopped))
            })
    }

    fn stop(&self) {
        self.listener.stop();
    }

    fn what(&self) -> &'static str {
        "a spinning echo server"
    }
}

/// Echoes everything `conn` receives until the peer closes it (or `stopped`), polling without
/// ever blocking.
fn echo_spinning(conn: Socket, stopped: &dyn Fn() -> bool) -> io::Result<()> {
    conn.set_tcp_nodelay(true)?;
    conn.set_nonblocking(true)?;
    let mut conn = std::net::TcpStream::from(conn);
    let mut buf = [0u8; 4096];
    while !stopped() {
        match conn.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => write_spinning(&mut conn, &buf[..n], stopped)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `data` to a non-blocking stream, polling while its send buffer is full.
fn write_spinning(
    conn: &mut std::net::TcpStream,
    mut data: &[u8],
    stopped: &dyn Fn() -> bool,
) -> io::Result<()> {
    while !data.is_empty() && !stopped() {
        match conn.write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How long a spinning client waits for one reply before it gives up: far longer than any
/// round trip here, long enough for TCP to retransmit a lost segment (its minimum timeout is
/// 200 ms).
const REPLY_LIMIT: Duration = Duration::from_secs(2);

/// What one spinning request/response run did.
#[derive(Debug, Clone)]
pub struct SpinRun {
    /// Round trips completed in the measured time (after the warm-up).
    pub transactions: u64,
    pub elapsed: Duration,
    /// The median and 99th percentile round trip, send to whole reply (nearest rank).
    pub p50: Duration,
    pub p99: Duration,
}

impl SpinRun {
    /// Round trips per second.
    pub fn per_second(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64()
    }
}

/// From inside the namespace at `netns_path`, on a thread pinned to `cpu`: one TCP connection
/// (TCP_NODELAY) to a [`SpinEchoServer`] at `dial`, then `message_bytes`-byte requests, each
/// sent once the previous reply is back whole, for `warm_up` uncounted and then `duration`
/// counted. The client polls its non-blocking socket without sleeping, like the server, so no
/// round trip waits for a CPU to wake up.
pub fn spin_ping_pong(
    netns_path: &Path,
    cpu: usize,
    dial: SocketAddrV4,
    message_bytes: usize,
    times: (Duration, Duration),
    interrupted: &AtomicBool,
) -> io::Result<SpinRun> {
    netns::in_netns(netns_path, || {
        spin_ping_pong_here(cpu, dial, message_bytes, times, interrupted)
    })?
}

/// [`spin_ping_pong`] in the calling thread's namespace.
fn spin_ping_pong_here(
    cpu: usize,
    dial: SocketAddrV4,
    message_bytes: usize,
    (warm_up, duration): (Duration, Duration),
    interrupted: &AtomicBool,
) -> io::Result<SpinRun> {
    pin_to_cpu(cpu)?;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.connect_timeout(&SocketAddr::V4(dial).into(), CONNECT_TIMEOUT)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    let mut conn = std::net::TcpStream::from(socket);
    let request = vec![0x6eu8; message_bytes];
    let mut reply = vec![0u8; message_bytes];
    // Each round trip's time, from just before the request is written to the reply's last byte.
    let round_trip = |conn: &mut std::net::TcpStream, reply: &mut [u8]| -> io::Result<Duration> {
        let stopped = || interrupted.load(Ordering::Relaxed);
        let sent_at = Instant::now();
        write_spinning(conn, &request, &stopped)?;
        let mut got = 0;
        while got < reply.len() {
            match conn.read(&mut reply[got..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{dial} closed the connection mid-reply"),
                    ));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stopped() {
                        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
                    }
                    if sent_at.elapsed() > REPLY_LIMIT {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no reply from {dial} within {REPLY_LIMIT:?}"),
                        ));
                    }
                    std::hint::spin_loop();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent_at.elapsed())
    };
    let warm_start = Instant::now();
    while warm_start.elapsed() < warm_up {
        round_trip(&mut conn, &mut reply)?;
    }
    let (mut times, start) = (Vec::new(), Instant::now());
    while start.elapsed() < duration {
        times.push(round_trip(&mut conn, &mut reply)?);
    }
    let elapsed = start.elapsed();
    if reply != request {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{dial} answered with other bytes than it was sent"),
        ));
    }
    times.sort_unstable();
    Ok(SpinRun {
        transactions: times.len() as u64,
        elapsed,
        p50: nearest_rank(&times, 0.50),
        p99: nearest_rank(&times, 0.99),
    })
}

/// The `p` quantile (0 < p <= 1) of `sorted` by nearest rank: the smallest value with at least
/// that share of the values at or below it. Zero for no values.
fn nearest_rank(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
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
    fn spinning_client_and_echo_server_complete_round_trips_on_loopback() {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        socket.listen(1).unwrap();
        socket.set_read_timeout(Some(ACCEPT_POLL)).unwrap();
        let Some(SocketAddr::V4(addr)) = socket.local_addr().unwrap().as_socket() else {
            panic!("not an IPv4 listener");
        };
        let server = SpinEchoServer {
            listener: Listener {
                socket,
                stop: AtomicBool::new(false),
            },
        };
        let interrupted = AtomicBool::new(false);
        // Each side spins on a CPU of its own where there are two.
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let (server_cpu, client_cpu) = (0, usize::from(cpus > 1));
        let (run, served) = std::thread::scope(|s| {
            let serving = s.spawn(|| server.serve(server_cpu, &interrupted));
            let times = (Duration::from_millis(20), Duration::from_millis(200));
            let run = spin_ping_pong_here(client_cpu, addr, 64, times, &interrupted);
            server.stop();
            (run, serving.join().expect("the server thread"))
        });
        served.expect("the server ends cleanly once stopped");
        let run = run.expect("the round trips succeed");
        assert!(run.transactions > 0, "{run:?}");
        assert!(run.elapsed >= Duration::from_millis(200), "{run:?}");
        assert!(Duration::ZERO < run.p50 && run.p50 <= run.p99, "{run:?}");
    }

    #[test]
    fn quantiles_are_taken_by_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(nearest_rank(&sorted, 0.50), ms(50));
        assert_eq!(nearest_rank(&sorted, 0.99), ms(99));
        assert_eq!(nearest_rank(&sorted, 1.0), ms(100));
        assert_eq!(nearest_rank(&[ms(7)], 0.99), ms(7));
        assert_eq!(nearest_rank(&[ms(1), ms(2), ms(3)], 0.5), ms(2));
        assert_eq!(nearest_rank(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn spinning_client_reports_a_refused_connection() {
        // A listener that is never accepted from and then closed: its port refuses.
        let port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let times = (Duration::ZERO, Duration::from_millis(10));
        let e = spin_ping_pong_here(
            0,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            64,
            times,
            &AtomicBool::new(false),
        )
        .expect_err("nothing listens");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

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
