//! A client connection's byte stream: plain TCP, or a rustls client session
//! over TCP driven non-blocking by the worker's edge-triggered loop.
//!
//! The contract the worker relies on, the same for both:
//! - `read` → `Ok(0)`: the peer closed; `Err(WouldBlock)`: nothing to read.
//! - `read` → `Ok(n)` with `n < buf.len()`: the socket is drained, so the
//!   next data raises a fresh readiness edge (the worker skips the read that
//!   would only return `WouldBlock`).
//! - `write` → `Err(WouldBlock)`: nothing was taken (backpressure); retry on
//!   a writable event. Bytes taken but not yet on the wire (TLS ciphertext)
//!   are reported by [`Stream::has_pending`] and sent by
//!   [`Stream::flush_pending`].

use anyhow::{Context, Result, bail};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Ciphertext rustls may hold before a write is refused (the engine's limit).
const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// What every TLS connection of a run shares.
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the certificates in `ca` (PEM) and verifies the server as `host`
    /// (a DNS name or an IP address, as written in the URL).
    pub fn new(ca: &Path, host: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .with_context(|| format!("--tls-ca {}", ca.display()))?;
        if certs.is_empty() {
            bail!("--tls-ca {}: no certificate in the file", ca.display());
        }
        for c in certs {
            roots
                .add(c)
                .with_context(|| format!("--tls-ca {}", ca.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Each connection stands for a different client: full handshakes,
        // no session shared between them.
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
        Ok(Self {
            config: Arc::new(config),
            server_name,
        })
    }
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub struct TlsStream {
    conn: rustls::ClientConnection,
    tcp: TcpStream,
}

/// Remembers whether the last socket read came back short, which on a
/// stream socket means its receive queue is empty.
struct Probe<'a> {
    tcp: &'a mut TcpStream,
    short: bool,
}

impl Read for Probe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

impl TlsStream {
    fn new(tls: &TlsClient, tcp: TcpStream) -> io::Result<Self> {
        let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())
            .map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Self { conn, tcp })
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

    /// Fills `buf` with plaintext until it is full or the socket is drained,
    /// so that a short read means the same as on a plain socket.
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        let mut drained = false;
        loop {
            match self.conn.reader().read(&mut buf[n..]) {
                // close_notify: the stream ends after what we already have.
                Ok(0) => return Ok(n),
                Ok(k) => {
                    n += k;
                    if n == buf.len() {
                        return Ok(n);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // Deliver what was decrypted; the error comes back next call.
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
            if drained {
                return if n > 0 {
                    Ok(n)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let mut probe = Probe {
                tcp: &mut self.tcp,
                short: false,
            };
            match self.conn.read_tls(&mut probe) {
                Ok(0) => return Ok(n),
                Ok(_) => drained = probe.short,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if n > 0 { Ok(n) } else { Err(e) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let processed = self.conn.process_new_packets();
            // Handshake messages (and the request held back until the
            // handshake is done) go out now; alerts too, before an error.
            let pushed = self.push_tls();
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            pushed?;
        }
    }

    fn write_plain(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.push_tls()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Before the handshake completes rustls keeps this as plaintext and
        // sends it once it can.
        let n = self.conn.writer().write(buf)?;
        self.push_tls()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Stream {
    pub fn new(tcp: TcpStream, tls: Option<&TlsClient>) -> io::Result<Self> {
        Ok(match tls {
            None => Stream::Plain(tcp),
            Some(t) => Stream::Tls(Box::new(TlsStream::new(t, tcp)?)),
        })
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.tcp,
        }
    }

    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.tcp().take_error()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Whether bytes taken earlier still wait for the socket.
    #[inline]
    pub fn has_pending(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.conn.wants_write(),
        }
    }

    /// Writes what waits inside the stream; errors mean the peer is gone.
    #[inline]
    pub fn flush_pending(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.push_tls().map(|_| ()),
        }
    }
}

impl Read for Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read_plain(buf),
        }
    }
}

impl Write for Stream {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write_plain(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()
    }
}

impl mio::event::Source for Stream {
    fn register(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.register(r, token, interests),
            Stream::Tls(t) => t.tcp.register(r, token, interests),
        }
    }

    fn reregister(&mut self, r: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.reregister(r, token, interests),
            Stream::Tls(t) => t.tcp.reregister(r, token, interests),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.deregister(r),
            Stream::Tls(t) => t.tcp.deregister(r),
        }
    }
}
