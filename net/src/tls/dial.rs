//! The client half: dials TCP, then the TLS handshake with the process's
//! identity, the server checked against the cluster CA under the host name
//! or IP address of the URI.

use std::io;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

/// A connector for `Endpoint::connect_with_connector`: TLS with the
/// process's installed identity as of each dial (so that installing a new
/// one reaches long-lived channels at their next reconnect), `config`
/// when none is installed (the tests' own servers and clients).
pub(crate) fn connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<TlsStream<TcpStream>>,
    Error = io::Error,
    Future = impl std::future::Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let config = super::current()
            .map(|identity| identity.client_config())
            .unwrap_or_else(|| config.clone());
        async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}"))
                })?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no port in {uri}"))
            })?;
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{host}` cannot name a TLS server: {e}"),
                )
            })?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("TLS handshake with {host}:{port} failed: {e}"),
                    )
                })?;
            Ok(TokioIo::new(tls))
        }
    })
}
