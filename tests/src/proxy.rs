//! A fault-injecting TCP proxy on loopback, for partitions between real
//! processes without root or network namespaces.
//!
//! A [`Proxy`] listens on `127.0.0.1:0` and forwards each accepted
//! connection to its *upstream* (settable: a restarted process may listen
//! on a new port). Its [`Mode`] says what happens to traffic:
//!
//! - [`Mode::Pass`]: bytes go through unchanged;
//! - [`Mode::Partition`]: every open connection is cut and new ones are
//!   accepted and closed at once (the peer sees a reset or EOF);
//! - [`Mode::BlackHole`]: bytes in one [`Direction`] are read and thrown
//!   away, the other direction passes (the sender sees no error, only
//!   silence: timeouts and keep-alives must notice);
//! - [`Mode::Delay`]: every chunk is written that much later.
//!
//! # What it never does
//!
//! - Talk to anything but loopback: the upstream must be a loopback address
//!   (asserted), and it binds only `127.0.0.1`.
//! - Buffer without bound: each direction of a connection holds at most
//!   [`CHUNKS_INFLIGHT_MAX`] chunks of [`CHUNK_BYTES_MAX`]; a slow receiver
//!   slows the sender (TCP backpressure), it never grows memory.
//! - Outlive its owner: dropping the [`Proxy`] aborts its accept loop and
//!   every connection task.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Bytes read from a socket at once.
pub const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks read but not yet written, per direction of a connection.
pub const CHUNKS_INFLIGHT_MAX: usize = 64;
/// Deadline of connecting to the upstream.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Open connections per proxy; more are closed at once.
pub const CONNECTIONS_MAX: usize = 256;
/// Longest delay a [`Mode::Delay`] may ask for.
pub const DELAY_MAX: Duration = Duration::from_secs(5);

/// Which way bytes flow through a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From whoever dialed the proxy to the upstream (requests).
    ToUpstream,
    /// From the upstream back to the dialer (answers).
    FromUpstream,
}

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward unchanged.
    Pass,
    /// Cut open connections, refuse new ones.
    Partition,
    /// Drop the bytes flowing one way; the other way passes.
    BlackHole(Direction),
    /// Write every chunk this much later (at most [`DELAY_MAX`]).
    Delay(Duration),
}

/// A running proxy. Dropping it stops everything it started.
pub struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream())
            .field("mode", &self.mode())
            .finish()
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` on `127.0.0.1:0`, in [`Mode::Pass`].
    /// Must be called inside a tokio runtime, which runs its tasks.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Proxy> {
        assert!(
            upstream.ip().is_loopback(),
            "the proxy only forwards to loopback, not {upstream}"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let upstream = Arc::new(Mutex::new(upstream));
        let (mode, modes) = watch::channel(Mode::Pass);
        let accept = tokio::spawn(accept_loop(listener, upstream.clone(), modes));
        Ok(Proxy {
            addr,
            upstream,
            mode,
            accept,
        })
    }

    /// Where the proxy listens: give this address to the dialing side.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go.
    pub fn upstream(&self) -> SocketAddr {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends new connections to `upstream` (open ones stay where they are).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        assert!(upstream.ip().is_loopback(), "loopback only: {upstream}");
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches the mode; open connections obey at once.
    pub fn set_mode(&self, mode: Mode) {
        if let Mode::Delay(d) = mode {
            assert!(d <= DELAY_MAX, "delay {d:?} over DELAY_MAX");
        }
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it
        // drops them, which aborts them too.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Arc<Mutex<SocketAddr>>,
    modes: watch::Receiver<Mode>,
) {
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connection tasks so the set stays bounded.
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if *modes.borrow() == Mode::Partition || connections.len() >= CONNECTIONS_MAX {
            drop(client);
            continue;
        }
        let target = *upstream.lock().unwrap_or_else(|p| p.into_inner());
        connections.spawn(connection(client, target, modes.clone()));
    }
}

/// One proxied connection: two pumps and a watcher of the mode; the first
/// to finish (EOF, error, partition) ends the whole connection.
async fn connection(client: TcpStream, target: SocketAddr, mut modes: watch::Receiver<Mode>) {
    let upstream =
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            _ => return, // dropping `client` tells the dialer
        };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let (to_tx, to_rx) = mpsc::channel(CHUNKS_INFLIGHT_MAX);
    let (from_tx, from_rx) = mpsc::channel(CHUNKS_INFLIGHT_MAX);
    tokio::select! {
        () = read_side(client_read, to_tx, modes.clone(), Direction::ToUpstream) => {}
        () = write_side(upstream_write, to_rx) => {}
        () = read_side(upstream_read, from_tx, modes.clone(), Direction::FromUpstream) => {}
        () = write_side(client_write, from_rx) => {}
        () = async {
            while modes.changed().await.is_ok() {
                if *modes.borrow() == Mode::Partition {
                    return;
                }
            }
        } => {}
    }
}

/// Reads chunks and hands them to the writer with the time they are due,
/// or drops them while the mode black-holes this direction.
async fn read_side(
    mut from: tokio::net::tcp::OwnedReadHalf,
    to: mpsc::Sender<(Instant, Vec<u8>)>,
    modes: watch::Receiver<Mode>,
    direction: Direction,
) {
    let mut buf = vec![0u8; CHUNK_BYTES_MAX];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mode = *modes.borrow();
        let due = match mode {
            Mode::Pass => Instant::now(),
            Mode::Delay(d) => Instant::now() + d,
            Mode::BlackHole(d) if d == direction => continue,
            Mode::BlackHole(_) => Instant::now(),
            Mode::Partition => return,
        };
        if to.send((due, buf[..n].to_vec())).await.is_err() {
            return;
        }
    }
}

async fn write_side(
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut chunks: mpsc::Receiver<(Instant, Vec<u8>)>,
) {
    while let Some((due, chunk)) = chunks.recv().await {
        tokio::time::sleep_until(due).await;
        if to.write_all(&chunk).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    /// A connection through the proxy echoes in pass mode, is cut by a
    /// partition, cannot be reopened while it lasts, goes silent one way in
    /// a black hole, and answers late under delay.
    #[tokio::test]
    async fn each_mode_does_what_it_says() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        let short = Duration::from_millis(300);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut s, short).await.unwrap(), b"ping");

        proxy.set_mode(Mode::BlackHole(Direction::FromUpstream));
        assert_eq!(roundtrip(&mut s, short).await, None, "answers vanish");
        proxy.set_mode(Mode::Pass);

        proxy.set_mode(Mode::Delay(Duration::from_millis(200)));
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        assert!(
            roundtrip(&mut fresh, Duration::from_secs(5))
                .await
                .is_some()
        );
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "both ways delayed"
        );

        proxy.set_mode(Mode::Partition);
        let mut buf = [0u8; 4];
        let cut = tokio::time::timeout(short, fresh.read(&mut buf)).await;
        assert!(
            matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
            "open connection cut: {cut:?}"
        );
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut refused, short).await, None);

        proxy.set_mode(Mode::Pass);
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(roundtrip(&mut again, short).await.unwrap(), b"ping");
    }

    /// A new upstream takes new connections; dropping the proxy closes its
    /// port and its connections.
    #[tokio::test]
    async fn follows_a_moved_upstream_and_stops_on_drop() {
        let proxy = Proxy::start(echo().await).await.unwrap();
        proxy.set_upstream(echo().await);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(roundtrip(&mut s, Duration::from_secs(1)).await.is_some());
        let addr = proxy.addr();
        drop(proxy);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 4];
        let cut = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
        assert!(matches!(cut, Ok(Ok(0)) | Ok(Err(_))), "{cut:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "port closed");
    }
}
