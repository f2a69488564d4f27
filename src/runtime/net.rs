//! The I/O engine seam: the socket types and operations the flows use. Today they are
//! tokio's epoll-driven types; the io_uring engine swaps what is behind these names, and the
//! flows (`proxy`) do not change.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A connected data-path socket.
pub type Stream = tokio::net::TcpStream;
/// A listening data-path socket.
pub type Listener = tokio::net::TcpListener;

/// Registers a listener made elsewhere (e.g. inside a pod netns) with this shard's engine.
pub fn listener_from_std(l: std::net::TcpListener) -> io::Result<Listener> {
    Listener::from_std(l)
}

/// Connects an unconnected socket made elsewhere (e.g. inside a pod netns), with a timeout.
pub async fn connect(
    sock: std::net::TcpStream,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<Stream, String> {
    let sock = tokio::net::TcpSocket::from_std_stream(sock);
    match tokio::time::timeout(timeout, sock.connect(dst)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect to {dst} failed: {e}")),
        Err(_) => Err(format!("connect to {dst} timed out after {timeout:?}")),
    }
}
