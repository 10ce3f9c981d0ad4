//! The transport seam: every byte a worker reads from or writes to a client
//! goes through [`Transport`], which is a plain TCP stream today and will be
//! a TLS session (rustls) without the rest of the worker changing.
//!
//! The contract the write path relies on (`OutQueue::flush`):
//! - `write`/`write_vectored` returning `Ok(n)`, n > 0: n bytes taken.
//! - `Ok(0)` for a non-empty buffer, or `Err(WouldBlock)`: the transport's
//!   buffer is full (rustls takes 0 bytes when its own record buffer is
//!   full). That is backpressure: the connection conflates and waits for a
//!   writable event. It never means the peer is gone.
//! - Any other error: the peer is gone; close the connection.
//! - `read` returning `Ok(0)`: the peer closed its side.
//!
//! [`Transport::shutdown_write`] ends the byte stream after the last queued
//! frame (a FIN, or a TLS close_notify then FIN), so that closing a socket
//! with unread client input does not turn into a reset that could discard
//! the frames still in flight.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// A client's byte stream.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// A rustls server session over TCP.
    Tls(Box<TlsStream>),
}

/// Ciphertext rustls may hold for one connection before a write takes 0
/// bytes (backpressure, like a full socket buffer).
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// A TLS session driven non-blocking by the worker's event loop.
#[derive(Debug)]
pub struct TlsStream {
    conn: rustls::ServerConnection,
    tcp: TcpStream,
    /// Set when the session ended before its handshake completed.
    pub handshake_failed: bool,
}

impl TlsStream {
    /// Wraps an accepted socket in a server session.
    ///
    /// # Errors
    /// rustls refused to start a session.
    pub fn new(config: Arc<rustls::ServerConfig>, tcp: TcpStream) -> io::Result<Self> {
        let mut conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(TlsStream {
            conn,
            tcp,
            handshake_failed: false,
        })
    }

    /// Writes pending ciphertext until the socket would block. Ok(true):
    /// nothing is left.
    fn push_tls(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        if self.conn.is_handshaking() {
            self.handshake_failed = true;
        }
        e
    }

    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(self.fail(e)),
            }
            match self.conn.read_tls(&mut self.tcp) {
                Ok(0) => {
                    if self.conn.is_handshaking() {
                        self.handshake_failed = true;
                    }
                    return Ok(0);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(e)),
            }
            let processed = self.conn.process_new_packets();
            // Handshake replies (and alerts) go out now, whether or not the
            // worker has anything to write; the rest waits for writable.
            let pushed = self.push_tls();
            if let Err(e) = processed {
                return Err(self.fail(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            pushed.map_err(|e| self.fail(e))?;
        }
    }

    fn write_plain(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Old ciphertext first: a connection blocked with only ciphertext
        // left is drained by its next flush.
        if !self.push_tls()? {
            return Ok(0);
        }
        // One vectored write: rustls packs it into as few records as fit.
        let n = self.conn.writer().write_vectored(bufs)?;
        self.push_tls()?;
        Ok(n)
    }

    /// Whether ciphertext waits for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }
}

impl Transport {
    /// Ends our side of the stream: what was written is still delivered,
    /// then the peer reads EOF. Errors are ignored (the peer may be gone).
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            Transport::Tls(t) => {
                t.conn.send_close_notify();
                let _ = t.push_tls();
                let _ = t.tcp.shutdown(Shutdown::Write);
            }
        }
    }

    /// The TCP stream underneath (socket options, peer address).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.tcp,
        }
    }

    /// Whether bytes taken earlier still wait inside the transport (TLS
    /// ciphertext): the connection is not drained until they are written.
    #[inline]
    pub fn has_pending(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.wants_write(),
        }
    }

    /// Writes what waits inside the transport. Ok(true): nothing is left.
    ///
    /// # Errors
    /// The peer is gone.
    #[inline]
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            Transport::Plain(_) => Ok(true),
            Transport::Tls(t) => t.push_tls(),
        }
    }

    /// Whether a TLS session ended before its handshake completed.
    pub fn tls_handshake_failed(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.handshake_failed,
        }
    }
}

impl Transport {
    /// The peer's address (one syscall; asked once per upgrade).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        let tcp = match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.tcp,
        };
        tcp.peer_addr().ok().map(|a| a.ip())
    }
}

impl Read for Transport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read_plain(buf),
        }
    }
}

impl Write for Transport {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write_plain(&[IoSlice::new(buf)]),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(bufs),
            Transport::Tls(t) => t.write_plain(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.push_tls().map(|_| ()),
        }
    }
}

impl mio::event::Source for Transport {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.register(registry, token, interests),
            Transport::Tls(t) => t.tcp.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.reregister(registry, token, interests),
            Transport::Tls(t) => t.tcp.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.deregister(registry),
            Transport::Tls(t) => t.tcp.deregister(registry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// shutdown_write delivers what was written, then EOF, even though the
    /// peer's own bytes were never read.
    #[test]
    fn shutdown_write_delivers_the_tail_then_eof() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut t = Transport::Plain(TcpStream::from_std(server));
        std::io::Write::write_all(&mut client, &[7u8; 4096]).unwrap();
        let mut sent = 0;
        while sent < 3 {
            sent += t.write(&b"end"[sent..]).unwrap();
        }
        t.shutdown_write();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"end");
    }

    /// A TLS session completes its handshake through non-blocking reads,
    /// carries data both ways, and ends with close_notify then EOF.
    #[test]
    fn tls_round_trip_non_blocking() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let tcp = std::net::TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let name = "localhost".try_into().unwrap();
            let conn = rustls::ClientConnection::new(Arc::new(client_cfg), name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(b"ping").unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut t = Transport::Tls(Box::new(
            TlsStream::new(Arc::new(server_cfg), TcpStream::from_std(server)).unwrap(),
        ));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 4 {
            assert!(std::time::Instant::now() < deadline, "no ping");
            match t.read(&mut buf) {
                Ok(0) => panic!("eof"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"ping");
        let mut sent = 0;
        while sent < 5 {
            sent += t.write(&b"pong!"[sent..]).unwrap();
        }
        while !t.flush_pending().unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!t.has_pending());
        t.shutdown_write();
        assert_eq!(client.join().unwrap(), b"pong!");
    }
}
