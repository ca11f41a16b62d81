//! Owns running code inside a named network namespace for the demo: a fresh thread enters the
//! namespace with `setns(2)`, runs the closure and ends, so no thread is ever left in the wrong
//! namespace. Sockets keep the namespace they were created in, so they can leave the thread.
use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    time::{Duration, Instant},
};

/// How long a demo connection may take to connect, accept or answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `f` on a new thread that has entered the network namespace at `path`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open namespace {}: {e}", path.display()),
                )
            })?;
            // SAFETY: `ns` is an open namespace file for the whole call; setns only changes
            // this thread, which ends when the closure returns.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot enter namespace {}: {e}", path.display()),
                ));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// What one echo exchange showed.
pub struct EchoReport {
    /// The client's own address (inside its namespace).
    pub client: SocketAddr,
    /// The address the server saw the connection come from.
    pub seen_by_server: SocketAddr,
    /// What came back.
    pub echoed: Vec<u8>,
}

/// Listens on `bind` inside `server_ns`, connects from `client_ns`, sends `payload` and reads
/// the echo: one real TCP connection through whatever lies between the two namespaces.
pub fn tcp_echo_once(
    server_ns: &Path,
    bind: SocketAddrV4,
    client_ns: &Path,
    dial: SocketAddrV4,
    payload: &[u8],
) -> io::Result<EchoReport> {
    let listener = in_netns(server_ns, || TcpListener::bind(bind))??;
    listener.set_nonblocking(true)?;
    std::thread::scope(|s| {
        let server = s.spawn(|| serve_one(&listener, payload.len()));
        let client = in_netns(client_ns, || -> io::Result<(SocketAddr, Vec<u8>)> {
            let mut stream = TcpStream::connect_timeout(&dial.into(), TIMEOUT)?;
            stream.set_read_timeout(Some(TIMEOUT))?;
            stream.write_all(payload)?;
            let mut echoed = vec![0; payload.len()];
            stream.read_exact(&mut echoed)?;
            Ok((stream.local_addr()?, echoed))
        });
        let seen = server
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let (client, echoed) = client??;
        Ok(EchoReport {
            client,
            seen_by_server: seen?,
            echoed,
        })
    })
}

/// Accepts one connection (waiting at most [`TIMEOUT`]), echoes `len` bytes, returns the peer.
fn serve_one(listener: &TcpListener, len: usize) -> io::Result<SocketAddr> {
    let deadline = Instant::now() + TIMEOUT;
    let (mut stream, peer) = loop {
        match listener.accept() {
            Ok(conn) => break conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no connection arrived",
                ));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf)?;
    stream.write_all(&buf)?;
    Ok(peer)
}
