//! Port forwarding over `direct-tcpip` channels: in-process streams ([`SshStream`]) and local
//! listeners ([`Tunnel`], like `ssh -L 127.0.0.1:0:host:port`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use russh::ChannelStream;
use russh::client::Msg;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use super::connection::SshConnection;
use super::error::SshError;

/// Longest wait for the server to open a forwarding channel.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream to `remote_host:remote_port` as seen from the SSH host, carried by one
/// `direct-tcpip` channel. Keeps its connection alive while it exists.
pub struct SshStream {
    inner: ChannelStream<Msg>,
    _conn: Arc<SshConnection>,
}

impl std::fmt::Debug for SshStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshStream")
            .field("via", &self._conn.target_label())
            .finish()
    }
}

impl AsyncRead for SshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl SshConnection {
    /// Opens a `direct-tcpip` channel to `remote_host:remote_port` (resolved on the SSH host;
    /// `localhost` is the host's loopback) and returns it as a stream.
    pub async fn open_stream(
        self: &Arc<Self>,
        remote_host: &str,
        remote_port: u16,
    ) -> Result<SshStream, SshError> {
        let span = tracing::debug_span!(
            "ssh",
            host = %self.target_label(),
            step = "tunnel",
            remote = %format!("{remote_host}:{remote_port}")
        );
        let open = self.handle().channel_open_direct_tcpip(
            remote_host.to_string(),
            u32::from(remote_port),
            "127.0.0.1",
            0,
        );
        let res = tokio::time::timeout(OPEN_TIMEOUT, open)
            .instrument(span)
            .await;
        let tunnel_err = |reason: String| SshError::Tunnel {
            target: self.target_label().to_string(),
            remote: format!("{remote_host}:{remote_port}"),
            reason,
        };
        let channel = match res {
            Ok(Ok(ch)) => ch,
            Ok(Err(e)) => return Err(tunnel_err(format!("channel open: {e}"))),
            Err(_) => {
                return Err(tunnel_err(format!(
                    "the server did not open the channel within {}s",
                    OPEN_TIMEOUT.as_secs()
                )));
            }
        };
        self.touch();
        Ok(SshStream {
            inner: channel.into_stream(),
            _conn: self.clone(),
        })
    }

    /// Listens on `127.0.0.1:0` and forwards every accepted connection to
    /// `remote_host:remote_port` through its own channel of this connection. Drop the
    /// [`Tunnel`] to stop (open forwarded connections are cut too).
    pub async fn forward_local(
        self: &Arc<Self>,
        remote_host: &str,
        remote_port: u16,
    ) -> Result<Tunnel, SshError> {
        let conn = self.clone();
        let source: ConnectionSource = Arc::new(move || {
            let conn = conn.clone();
            Box::pin(async move { Ok(conn) })
        });
        Tunnel::start(source, self.target_label(), remote_host, remote_port).await
    }
}

/// Produces the connection a tunnel should use now (a fixed one, or the pool's current one).
pub(crate) type ConnectionSource = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<SshConnection>, SshError>> + Send>>
        + Send
        + Sync,
>;

/// A local TCP listener on `127.0.0.1` whose connections are forwarded to a remote
/// `host:port` over SSH. Stops (listener and forwarded connections) when dropped.
#[derive(Debug)]
pub struct Tunnel {
    local_addr: SocketAddr,
    remote: String,
    task: JoinHandle<()>,
}

impl Tunnel {
    pub(crate) async fn start(
        source: ConnectionSource,
        label: &str,
        remote_host: &str,
        remote_port: u16,
    ) -> Result<Tunnel, SshError> {
        let remote = format!("{remote_host}:{remote_port}");
        let tunnel_err = |reason: String| SshError::Tunnel {
            target: label.to_string(),
            remote: remote.clone(),
            reason,
        };
        // Fail early when the SSH side is not usable at all.
        source().await?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| tunnel_err(format!("cannot listen on 127.0.0.1: {e}")))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| tunnel_err(format!("listener address: {e}")))?;
        let span = tracing::debug_span!(
            "ssh",
            host = %label,
            step = "tunnel",
            remote = %remote,
            local = %local_addr
        );
        let host = remote_host.to_string();
        let task = tokio::spawn(accept_loop(listener, source, host, remote_port).instrument(span));
        Ok(Tunnel {
            local_addr,
            remote,
            task,
        })
    }

    /// The local address to connect to (`127.0.0.1:<port>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The local port.
    pub fn local_port(&self) -> u16 {
        self.local_addr.port()
    }

    /// `http://127.0.0.1:<port>`, for HTTP clients.
    pub fn http_base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The forwarded destination, `host:port` as seen from the SSH host.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// Stops the tunnel now (same as dropping it).
    pub fn close(self) {}
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    source: ConnectionSource,
    remote_host: String,
    remote_port: u16,
) {
    // Dropping the set (when this task is aborted) aborts every forwarded connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    let source = source.clone();
                    let host = remote_host.clone();
                    conns.spawn(
                        forward_one(sock, source, host, remote_port)
                            .instrument(tracing::debug_span!("conn", %peer)),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward_one(
    mut sock: TcpStream,
    source: ConnectionSource,
    remote_host: String,
    remote_port: u16,
) {
    let _ = sock.set_nodelay(true);
    let mut stream = match open_via(&source, &remote_host, remote_port).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "forwarded connection dropped");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut sock, &mut stream).await {
        Ok((up, down)) => tracing::trace!(up, down, "forwarded connection closed"),
        Err(e) => tracing::debug!(error = %e, "forwarded connection ended with an error"),
    }
}

/// Opens a channel on the source's connection; if that connection turns out to be dead, asks
/// the source again once (a pool then reconnects).
async fn open_via(
    source: &ConnectionSource,
    remote_host: &str,
    remote_port: u16,
) -> Result<SshStream, SshError> {
    let conn = source().await?;
    match conn.open_stream(remote_host, remote_port).await {
        Ok(s) => Ok(s),
        Err(e) if conn.is_closed() => {
            tracing::debug!(error = %e, "connection lost; retrying on a fresh one");
            let conn = source().await?;
            conn.open_stream(remote_host, remote_port).await
        }
        Err(e) => Err(e),
    }
}
