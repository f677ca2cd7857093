//! Accepted connections: plaintext, or TLS-terminated with the installed
//! identity, each tagged with who is at the other end.
//!
//! Handshakes run concurrently (a slow or silent peer never holds up the
//! next accept), each within [`HANDSHAKE_TIMEOUT`], at most
//! [`HANDSHAKES_IN_FLIGHT_MAX`] at once; a failed handshake is logged,
//! counted against its peer's address ([`super::limit`]) and dropped,
//! never handed to the server. A connection from an address over the
//! limit is closed at once, before any handshake work.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::limit::{HANDSHAKE_FAILURE_BACKOFF, HANDSHAKE_FAILURES_MAX, Limiter, Verdict};
use super::{Peer, role_of};

/// How long a peer has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections between accept and the server at once (handshaking, or
/// handshaken and waiting to be taken); further connections wait in the
/// kernel's accept queue.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Connections ready for the server but not yet taken by it.
pub const ACCEPTED_QUEUE_MAX: usize = 64;
/// How long accepting pauses after the listener fails (out of file
/// descriptors), rather than spinning.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// TLS handshakes that failed (a bad or missing certificate, not TLS at
/// all, no handshake within [`HANDSHAKE_TIMEOUT`]).
static HANDSHAKE_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Connections closed at once because their address failed too often.
static HANDSHAKES_REFUSED: AtomicU64 = AtomicU64::new(0);

/// This process's failed handshakes and the connections the rate limit
/// closed unhandshaken: `(failed, refused)`.
pub fn handshake_failures() -> (u64, u64) {
    (
        HANDSHAKE_FAILURES.load(Relaxed),
        HANDSHAKES_REFUSED.load(Relaxed),
    )
}

/// What a request learns of its connection (in its extensions).
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    pub remote: Option<SocketAddr>,
    pub peer: Peer,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection, ready for HTTP/2.
pub struct Conn {
    io: Io,
    info: ConnectInfo,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

impl Conn {
    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.info.peer
    }
}

/// Accepted connections of `listener` (Nagle off: small responses must not
/// wait for the peer's delayed ACK), for `serve_with_incoming`: TLS with
/// the identity installed now ([`super::install`]), or plaintext when
/// there is none. Ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = io::Result<Conn>> + Send + 'static {
    let (ready, taken) = mpsc::channel(ACCEPTED_QUEUE_MAX);
    tokio::spawn(accept_loop(listener, ready));
    ReceiverStream::new(taken)
}

/// The failure table of one listener; held for a lookup or an update,
/// never across an await.
fn lock(limiter: &Mutex<Limiter>) -> std::sync::MutexGuard<'_, Limiter> {
    limiter
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn accept_loop(listener: TcpListener, ready: mpsc::Sender<io::Result<Conn>>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    let limiter = Arc::new(Mutex::new(Limiter::new()));
    loop {
        let permit = tokio::select! {
            () = ready.closed() => return,
            permit = handshakes.clone().acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let identity = super::current();
        if identity.is_some()
            && lock(&limiter).check(remote.ip(), Instant::now()) == Verdict::Refuse
        {
            HANDSHAKES_REFUSED.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        }
        let ready = ready.clone();
        let limiter = limiter.clone();
        tokio::spawn(async move {
            let conn = match handshake(stream, remote, identity.as_deref()).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::info!(%remote, error = %e, "refused a connection");
                    if identity.is_some() {
                        HANDSHAKE_FAILURES.fetch_add(1, Relaxed);
                        if lock(&limiter).failed(remote.ip(), Instant::now()) {
                            tracing::warn!(
                                peer = %remote.ip(),
                                "{HANDSHAKE_FAILURES_MAX} failed TLS handshakes from this \
                                 address: closing its connections for {HANDSHAKE_FAILURE_BACKOFF:?}"
                            );
                        }
                    }
                    return;
                }
            };
            // The server may be gone; the connection goes with it. The
            // permit is held until the server has the connection, so that
            // handshaken connections waiting for it are bounded too.
            let _ = ready.send(Ok(conn)).await;
            drop(permit);
        });
    }
}

/// Terminates TLS on one accepted connection with `identity` (plaintext
/// without one) and learns the peer's role.
pub(crate) async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    identity: Option<&super::Identity>,
) -> io::Result<Conn> {
    stream.set_nodelay(true)?;
    let Some(identity) = identity else {
        return Ok(Conn {
            io: Io::Plain(stream),
            info: ConnectInfo {
                remote: Some(remote),
                peer: Peer::Plaintext,
            },
        });
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config());
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
    let peer = match tls.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => match role_of(leaf) {
            Ok(role) => Peer::Verified(role),
            Err(why) => Peer::NoRole(why),
        },
        // The verifier requires a certificate: unreachable, but refused
        // rather than assumed.
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "TLS handshake ended without a client certificate",
            ));
        }
    };
    Ok(Conn {
        io: Io::Tls(Box::new(tls)),
        info: ConnectInfo {
            remote: Some(remote),
            peer,
        },
    })
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
