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

use tonic::transport::{Channel, Endpoint};

/// A channel that connects on first use (and reconnects after failures).
pub fn lazy(endpoint: Endpoint) -> Channel {
    #[cfg(feature = "sim")]
    if turmoil::in_simulation() {
        return endpoint.connect_with_connector_lazy(sim::connector());
    }
    endpoint.connect_lazy()
}

/// A channel connected now: fails if the peer cannot be reached within the
/// endpoint's connect timeout.
pub async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    #[cfg(feature = "sim")]
    if turmoil::in_simulation() {
        return endpoint.connect_with_connector(sim::connector()).await;
    }
    endpoint.connect().await
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

    /// A simulated connection the gRPC server can serve.
    #[derive(Debug)]
    pub struct Stream(turmoil::net::TcpStream);

    impl Connected for Stream {
        type ConnectInfo = TcpConnectInfo;

        fn connect_info(&self) -> TcpConnectInfo {
            TcpConnectInfo {
                local_addr: self.0.local_addr().ok(),
                remote_addr: self.0.peer_addr().ok(),
            }
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// Accepted connections of `listener`, for `serve_with_incoming`. Ends
    /// when accepting fails (the host is going away).
    pub fn incoming(
        listener: turmoil::net::TcpListener,
    ) -> impl futures::Stream<Item = io::Result<Stream>> + Send + 'static {
        futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| Stream(stream));
            Some((accepted, listener))
        })
    }

    /// Dials `host:port` of the URI on the simulated network.
    pub(crate) fn connector() -> impl tower::Service<
        Uri,
        Response = TokioIo<turmoil::net::TcpStream>,
        Error = io::Error,
        Future = impl std::future::Future<Output = io::Result<TokioIo<turmoil::net::TcpStream>>> + Send,
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
            let stream = turmoil::net::TcpStream::connect((host.to_string(), port)).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
