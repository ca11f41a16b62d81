//! Owns the traffic tests send and receive: ICMP echo through `ping`, and TCP/UDP echo servers
//! and clients on real sockets created inside a namespace (see [`in_netns`]). Every call has a
//! time limit, every server stops when dropped.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::{in_netns, nsenter, output};

/// Time limit of one client exchange (connect, send, receive).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Whether one ICMP echo from namespace `ns_path` to `addr` is answered within 2 s
/// (`nsenter --net=PATH ping -c 1 -W 2 ADDR`).
pub fn ping(ns_path: &Path, addr: &str) -> bool {
    output(&mut nsenter(ns_path, &["ping", "-c", "1", "-W", "2", addr]))
        .status
        .success()
}

/// Peer addresses a server saw, shared with its threads.
type Peers = Arc<Mutex<Vec<SocketAddr>>>;

fn snapshot(peers: &Peers) -> Vec<SocketAddr> {
    peers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn record(peers: &Peers, peer: SocketAddr) {
    peers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(peer);
}

/// A TCP server inside a namespace that echoes every byte of every connection back, and
/// records the peer address of each connection it accepted. Stops (and closes its connections)
/// when dropped.
pub struct TcpEchoServer {
    addr: SocketAddrV4,
    peers: Peers,
    stop: Arc<AtomicBool>,
    accept_loop: Option<JoinHandle<()>>,
}

impl TcpEchoServer {
    /// Listens on `bind` inside the namespace at `ns_path`; it is listening when this returns.
    ///
    /// # Panics
    /// When the address cannot be bound there (e.g. it is not assigned in that namespace).
    pub fn start(ns_path: &Path, bind: SocketAddrV4) -> TcpEchoServer {
        let listener = in_netns(ns_path, || TcpListener::bind(bind)).unwrap_or_else(|e| {
            panic!(
                "TCP echo server: cannot listen on {bind} in {}: {e}",
                ns_path.display()
            )
        });
        listener
            .set_nonblocking(true)
            .expect("set_nonblocking on a fresh listener");
        let peers = Peers::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accept_loop = {
            let (peers, stop) = (peers.clone(), stop.clone());
            std::thread::spawn(move || accept_loop(listener, peers, stop))
        };
        TcpEchoServer {
            addr: bind,
            peers,
            stop,
            accept_loop: Some(accept_loop),
        }
    }

    /// Peer address of every connection accepted so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        snapshot(&self.peers)
    }

    /// Peers once at least `n` connections were accepted, waiting up to 2 s: the accept loop
    /// polls, so a connection the client already closed may not be counted yet.
    pub fn wait_for_peers(&self, n: usize) -> Vec<SocketAddr> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let peers = self.peers();
            if peers.len() >= n || std::time::Instant::now() > deadline {
                return peers;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

fn accept_loop(listener: TcpListener, peers: Peers, stop: Arc<AtomicBool>) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                record(&peers, peer);
                let stop = stop.clone();
                connections.push(std::thread::spawn(move || echo_connection(stream, &stop)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) => {
                eprintln!("netpath-tests: TCP echo server: accept failed: {e}");
                std::thread::sleep(POLL);
            }
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

/// Echoes until the peer closes, an error, or the server stops.
fn echo_connection(mut stream: TcpStream, stop: &AtomicBool) {
    if stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(POLL)))
        .is_err()
    {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

impl Drop for TcpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept_loop.take() {
            let _ = t.join();
        }
    }
}

/// Connects from namespace `ns_path` to `dst`, sends `payload`, reads as many bytes back and
/// returns them with the client's local address. Every step has a 2 s limit.
pub fn tcp_echo(
    ns_path: &Path,
    dst: SocketAddrV4,
    payload: &[u8],
) -> io::Result<(Vec<u8>, SocketAddr)> {
    let mut stream = in_netns(ns_path, || {
        TcpStream::connect_timeout(&dst.into(), CLIENT_TIMEOUT)
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.write_all(payload)?;
    let mut echoed = vec![0u8; payload.len()];
    stream.read_exact(&mut echoed)?;
    Ok((echoed, stream.local_addr()?))
}

/// A long-lived TCP connection from namespace `ns_path` to `dst` (2 s to connect). The socket
/// stays in that namespace, so the stream can be used from any thread.
///
/// # Panics
/// When the connection cannot be made.
pub fn connect_in(ns_path: &Path, dst: SocketAddrV4) -> TcpStream {
    in_netns(ns_path, || {
        TcpStream::connect_timeout(&dst.into(), CLIENT_TIMEOUT)
    })
    .unwrap_or_else(|e| panic!("cannot connect from {} to {dst}: {e}", ns_path.display()))
}

/// A UDP server inside a namespace that sends every datagram back to its sender and records
/// the sender of each datagram. Stops when dropped.
pub struct UdpEchoServer {
    addr: SocketAddrV4,
    peers: Peers,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoServer {
    /// Binds `bind` inside the namespace at `ns_path`; it is receiving when this returns.
    ///
    /// # Panics
    /// When the address cannot be bound there.
    pub fn start(ns_path: &Path, bind: SocketAddrV4) -> UdpEchoServer {
        let socket = in_netns(ns_path, || UdpSocket::bind(bind)).unwrap_or_else(|e| {
            panic!(
                "UDP echo server: cannot bind {bind} in {}: {e}",
                ns_path.display()
            )
        });
        socket
            .set_read_timeout(Some(POLL))
            .expect("set_read_timeout on a fresh socket");
        let peers = Peers::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peers, stop) = (peers.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            record(&peers, peer);
                            if let Err(e) = socket.send_to(&buf[..n], peer) {
                                eprintln!(
                                    "netpath-tests: UDP echo server: reply to {peer} failed: {e}"
                                );
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => {
                            eprintln!("netpath-tests: UDP echo server: receive failed: {e}");
                            std::thread::sleep(POLL);
                        }
                    }
                }
            })
        };
        UdpEchoServer {
            addr: bind,
            peers,
            stop,
            thread: Some(thread),
        }
    }

    /// Sender of every datagram received so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        snapshot(&self.peers)
    }

    /// The address it is bound to.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl Drop for UdpEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends one datagram from namespace `ns_path` to `dst` and returns the answer (2 s limit; one
/// try, so a lost datagram is a failure).
pub fn udp_echo(ns_path: &Path, dst: SocketAddrV4, payload: &[u8]) -> io::Result<Vec<u8>> {
    let socket = in_netns(ns_path, || UdpSocket::bind("0.0.0.0:0"))?;
    socket.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    socket.connect(dst)?;
    socket.send(payload)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}
