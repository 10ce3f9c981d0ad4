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

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// A client's byte stream.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
}

impl Transport {
    /// Ends our side of the stream: what was written is still delivered,
    /// then the peer reads EOF. Errors are ignored (the peer may be gone).
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }

    /// The TCP stream underneath (socket options, peer address).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
        }
    }
}

impl Read for Transport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Transport {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
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
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.deregister(registry),
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
}
