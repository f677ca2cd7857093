//! How Trellis processes dial and accept gRPC connections.
//!
//! Every channel in the project is made through [`lazy`] or [`connect`].
//! Outside a simulation they are exactly tonic's `connect_lazy` and
//! `connect` over real TCP. Built with the `sim` feature and called from
//! inside a turmoil simulation (the deterministic simulator in `sim/`), they
//! dial turmoil's simulated TCP instead, and [`sim::incoming`] accepts on
//! it. The choice is made at run time, so a binary that links the feature
//! (features unify across a workspace build) still uses real sockets.
//!
//! Turmoil's TCP has no retransmission or connection timeout of its own: a
//! peer behind a partition is noticed only through HTTP/2 keep-alives and
//! per-call deadlines, which every long-lived channel sets anyway.
//!
//! With a TLS identity installed ([`tls::install`], the `--tls-*` flags),
//! every channel made here speaks mutual TLS, and [`tls::accept::incoming`]
//! terminates TLS for servers (see [`tls`]). URIs keep the `http://`
//! scheme: the TLS is ours, below tonic.

pub mod tls;

use tonic::transport::{Channel, Endpoint};

/// An error with its sources, `: `-separated: a failed dial's cause (a
/// refused TLS handshake, say) is in its sources, not in tonic's
/// "transport error". A source that repeats its parent's text is shown
/// once.
pub fn error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut last = text.clone();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !last.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        last = next;
        source = s.source();
    }
    text
}

/// A gRPC status's message with its sources (where a failed connection's
/// cause is: tonic's message alone says "transport error").
pub fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = status.message().to_string();
    if let Some(source) = status.source() {
        let cause = error_text(source);
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// A channel that connects on first use (and reconnects after failures).
pub fn lazy(endpoint: Endpoint) -> Channel {
    #[cfg(feature = "sim")]
    if turmoil::in_simulation() {
        return endpoint.connect_with_connector_lazy(sim::connector());
    }
    match tls::current() {
        Some(identity) => {
            endpoint.connect_with_connector_lazy(tls::dial::connector(identity.client_config()))
        }
        None => endpoint.connect_lazy(),
    }
}

/// A channel connected now: fails if the peer cannot be reached within the
/// endpoint's connect timeout.
pub async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    #[cfg(feature = "sim")]
    if turmoil::in_simulation() {
        return endpoint.connect_with_connector(sim::connector()).await;
    }
    match tls::current() {
        Some(identity) => {
            endpoint
                .connect_with_connector(tls::dial::connector(identity.client_config()))
                .await
        }
        None => endpoint.connect().await,
    }
}

/// Turmoil's simulated TCP, shaped for tonic.
#[cfg(feature = "sim")]
pub mod sim {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tonic::transport::Uri;
    use tonic::transport::server::{Connected, TcpConnectInfo};

    impl Connected for Link {
        type ConnectInfo = TcpConnectInfo;

        fn connect_info(&self) -> TcpConnectInfo {
            TcpConnectInfo {
                local_addr: Some(self.local),
                remote_addr: Some(self.peer),
            }
        }
    }

    /// Accepted connections of `listener` (as [`Link`]s, which obey the
    /// one-way cuts of [`cut_oneway`]), for `serve_with_incoming`. Ends
    /// when accepting fails (the host is going away).
    pub fn incoming(
        listener: turmoil::net::TcpListener,
    ) -> impl futures::Stream<Item = io::Result<Link>> + Send + 'static {
        futures::stream::unfold(listener, |listener| async move {
            let accepted = match listener.accept().await {
                Ok((stream, _)) => Link::new(stream),
                Err(e) => Err(e),
            };
            Some((accepted, listener))
        })
    }

    /// Dials `host:port` of the URI on the simulated network, through a
    /// [`Link`] that obeys the one-way cuts of [`cut_oneway`].
    pub(crate) fn connector() -> impl tower::Service<
        Uri,
        Response = TokioIo<Link>,
        Error = io::Error,
        Future = impl std::future::Future<Output = io::Result<TokioIo<Link>>> + Send,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|uri: Uri| async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
            })?;
            let port = uri.port_u16().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no port in {uri}"))
            })?;
            let link =
                Link::new(turmoil::net::TcpStream::connect((host.to_string(), port)).await?)?;
            let (local, peer) = (link.local.ip(), link.peer.ip());
            // A handshake needs both directions: while either is cut the
            // dial waits (until the endpoint's connect timeout, when it has
            // one). Turmoil's own handshake has happened by then, so the
            // peer may see a connection that carries nothing yet.
            cuts::open(&[(local, peer), (peer, local)]).await;
            Ok(TokioIo::new(link))
        })
    }

    /// Cuts the simulated network from host `from` to host `to` in that
    /// direction only (turmoil's own hold is two-way, and its one-way
    /// partition drops bytes of live streams, which TCP would resend):
    /// bytes `from` sends are held, not lost, until [`heal_oneway`], while
    /// `to`'s bytes still reach `from`. New connections between the two
    /// wait, as a handshake needs both ways.
    ///
    /// It acts at both ends of each connection made through this crate
    /// (every channel and every server in the project), each holding what
    /// it would send or receive across a cut, its close included (see
    /// [`Link`]). Cuts belong
    /// to the thread the simulation runs on; call [`heal_all_oneway`]
    /// between runs.
    pub fn cut_oneway(from: std::net::IpAddr, to: std::net::IpAddr) {
        cuts::with(|c| {
            c.pairs.insert((from, to));
        });
    }

    /// Ends the cut from `from` to `to`; held bytes flow again.
    pub fn heal_oneway(from: std::net::IpAddr, to: std::net::IpAddr) {
        cuts::heal(|c| {
            c.pairs.remove(&(from, to));
        });
    }

    /// How many times a read, write or dial was held by a one-way cut on
    /// this thread since [`heal_all_oneway`] (each poll that found its way
    /// cut counts): proof that cuts met traffic.
    pub fn one_way_holds() -> u64 {
        cuts::with(|c| c.holds)
    }

    /// Ends every one-way cut of this thread (and zeroes
    /// [`one_way_holds`]).
    pub fn heal_all_oneway() {
        cuts::heal(|c| {
            c.pairs.clear();
            c.holds = 0;
        });
    }

    mod cuts {
        use std::cell::RefCell;
        use std::collections::BTreeSet;
        use std::net::IpAddr;
        use std::task::{Context, Poll, Waker};

        #[derive(Default)]
        pub(super) struct Cuts {
            /// (from, to): bytes from `from` to `to` are held.
            pub(super) pairs: BTreeSet<(IpAddr, IpAddr)>,
            /// Tasks to wake when a cut heals, each once.
            pub(super) waiting: Vec<Waker>,
            /// Polls held so far.
            pub(super) holds: u64,
        }

        thread_local! {
            static CUTS: RefCell<Cuts> = RefCell::default();
        }

        pub(super) fn with<T>(f: impl FnOnce(&mut Cuts) -> T) -> T {
            CUTS.with(|c| f(&mut c.borrow_mut()))
        }

        /// Applies `change` (which removes cuts), then wakes every task
        /// waiting on a cut: each looks again.
        pub(super) fn heal(change: impl FnOnce(&mut Cuts)) {
            let waiting = with(|c| {
                change(c);
                std::mem::take(&mut c.waiting)
            });
            waiting.into_iter().for_each(Waker::wake);
        }

        /// Whether `from` to `to` is cut now (no hold is counted).
        pub(super) fn is_cut(from: IpAddr, to: IpAddr) -> bool {
            with(|c| c.pairs.contains(&(from, to)))
        }

        /// Waits until none of `ways` (from, to) is cut.
        pub(super) async fn open(ways: &[(IpAddr, IpAddr)]) {
            std::future::poll_fn(|cx| {
                if ways.iter().any(|&(from, to)| blocked(from, to, cx)) {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await
        }

        /// Whether bytes from `from` to `to` are held; if so the task is
        /// woken when any cut heals.
        pub(super) fn blocked(from: IpAddr, to: IpAddr, cx: &mut Context<'_>) -> bool {
            with(|c| {
                if !c.pairs.contains(&(from, to)) {
                    return false;
                }
                c.holds += 1;
                if !c.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    c.waiting.push(cx.waker().clone());
                }
                true
            })
        }
    }

    /// One end of a simulated connection, dialled or accepted: holds what
    /// this host writes while its way to the peer is cut, and what the
    /// peer wrote while the way back is cut.
    #[derive(Debug)]
    pub struct Link {
        /// Taken only when the link is dropped.
        stream: Option<turmoil::net::TcpStream>,
        local: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    }

    impl Link {
        fn new(stream: turmoil::net::TcpStream) -> io::Result<Link> {
            Ok(Link {
                local: stream.local_addr()?,
                peer: stream.peer_addr()?,
                stream: Some(stream),
            })
        }

        fn stream(&mut self) -> Pin<&mut turmoil::net::TcpStream> {
            Pin::new(self.stream.as_mut().expect("taken only on drop"))
        }
    }

    /// A close crosses the network like any byte: dropped while the way to
    /// the peer is cut, the connection is kept open (by a task of this
    /// host) until the cut heals, so the peer learns of the close then —
    /// or never, if this host crashes first.
    impl Drop for Link {
        fn drop(&mut self) {
            let Some(stream) = self.stream.take() else {
                return;
            };
            let (local, peer) = (self.local.ip(), self.peer.ip());
            if !cuts::is_cut(local, peer) {
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                cuts::open(&[(local, peer)]).await;
                drop(stream);
            });
        }
    }

    impl AsyncRead for Link {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if cuts::blocked(self.peer.ip(), self.local.ip(), cx) {
                return Poll::Pending;
            }
            self.stream().poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Link {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if cuts::blocked(self.local.ip(), self.peer.ip(), cx) {
                return Poll::Pending;
            }
            self.stream().poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.stream().poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if cuts::blocked(self.local.ip(), self.peer.ip(), cx) {
                return Poll::Pending;
            }
            self.stream().poll_shutdown(cx)
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    use super::sim;

    const PORT: u16 = 4000;
    /// How long the server waits for bytes that must not come; the cut
    /// lasts twice as long.
    const QUIET: Duration = Duration::from_secs(2);

    /// A one-way cut holds one direction's bytes (delivered, in order, when
    /// it heals) while the other direction flows.
    #[test]
    fn a_one_way_cut_holds_one_direction_and_loses_nothing() -> turmoil::Result {
        let mut sim = turmoil::Builder::new().build();
        sim.host("server", || async {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            let (mut stream, _) = listener.accept().await?;
            stream.write_all(b"to-client").await?;
            let mut got = [0u8; 10];
            let early = tokio::time::timeout(QUIET, stream.read_exact(&mut got[..1])).await;
            assert!(early.is_err(), "a byte crossed the cut");
            stream.read_exact(&mut got).await?;
            assert_eq!(&got, b"to-server!");
            stream.write_all(b"ok").await?;
            Ok(())
        });
        sim.client("client", async {
            let uri: tonic::transport::Uri = format!("http://server:{PORT}").parse()?;
            let (client, server) = (turmoil::lookup("client"), turmoil::lookup("server"));
            let stream = sim::connector().oneshot(uri).await?.into_inner();
            sim::cut_oneway(client, server);
            let (mut read, mut write) = tokio::io::split(stream);
            let writing = tokio::spawn(async move {
                write.write_all(b"to-server!").await?;
                Ok::<_, std::io::Error>(write)
            });
            // The way back still flows during the cut.
            let mut got = [0u8; 9];
            tokio::time::timeout(QUIET, read.read_exact(&mut got)).await??;
            assert_eq!(&got, b"to-client");
            tokio::time::sleep(QUIET * 2).await;
            assert!(!writing.is_finished(), "a write crossed the cut");
            assert!(sim::one_way_holds() > 0, "no poll was held");
            sim::heal_oneway(client, server);
            let _write = writing.await??;
            let mut got = [0u8; 2];
            read.read_exact(&mut got).await?;
            assert_eq!(&got, b"ok");
            Ok(())
        });
        sim.run()
    }

    /// A connection dropped while its way out is cut closes at the peer
    /// only when the cut heals.
    #[test]
    fn a_close_waits_for_a_one_way_cut_to_heal() -> turmoil::Result {
        let mut sim = turmoil::Builder::new().build();
        sim.host("server", || async {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            let (mut stream, _) = listener.accept().await?;
            let mut buf = [0u8; 1];
            let early = tokio::time::timeout(QUIET, stream.read(&mut buf)).await;
            assert!(early.is_err(), "the close crossed the cut: {early:?}");
            assert_eq!(stream.read(&mut buf).await?, 0, "a byte, not the close");
            Ok(())
        });
        sim.client("client", async {
            let uri: tonic::transport::Uri = format!("http://server:{PORT}").parse()?;
            let (client, server) = (turmoil::lookup("client"), turmoil::lookup("server"));
            let stream = sim::connector().oneshot(uri).await?;
            sim::cut_oneway(client, server);
            drop(stream);
            tokio::time::sleep(QUIET * 2).await;
            sim::heal_oneway(client, server);
            tokio::time::sleep(QUIET).await;
            Ok(())
        });
        sim.run()
    }

    /// The accepting end holds too: its close waits while its way to the
    /// dialler is cut (what it wrote before the cut arrives).
    #[test]
    fn an_accepted_link_holds_its_close() -> turmoil::Result {
        use futures::StreamExt;
        let mut sim = turmoil::Builder::new().build();
        sim.host("server", || async {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            let mut incoming = std::pin::pin!(sim::incoming(listener));
            let mut link = incoming.next().await.expect("a connection")?;
            let (server, client) = (turmoil::lookup("server"), turmoil::lookup("client"));
            link.write_all(b"sent").await?;
            sim::cut_oneway(server, client);
            drop(link);
            tokio::time::sleep(QUIET * 2).await;
            sim::heal_oneway(server, client);
            tokio::time::sleep(QUIET).await;
            Ok(())
        });
        sim.client("client", async {
            let mut stream = turmoil::net::TcpStream::connect(("server", PORT)).await?;
            let mut got = [0u8; 4];
            stream.read_exact(&mut got).await?;
            assert_eq!(&got, b"sent");
            let early = tokio::time::timeout(QUIET, stream.read(&mut got)).await;
            assert!(early.is_err(), "the close crossed the cut: {early:?}");
            assert_eq!(stream.read(&mut got).await?, 0, "a byte, not the close");
            Ok(())
        });
        sim.run()
    }
}
