//! Question: for a second wire format (SSE, long-poll) produced once per
//! update, is it cheaper on the write path to (A) build that format's complete
//! bytes once and write one contiguous buffer per update per connection, or
//! (B) keep the one shared payload buffer and write a per-format header and the
//! payload as two iovecs per update?
//!
//! Setup: 64 loopback TCP connections (engine side nonblocking, TCP_NODELAY;
//! subscriber side with room for what is written between drains). One round
//! writes the same K updates to every connection, one gathered write per
//! connection (at most 64 iovecs, as the worker's flush; a single iovec goes
//! out with plain `write`, as the worker does). Every few rounds, before any
//! window can fill, the subscriber sides are read out and discarded, off the
//! clock, so the writer never blocks and no reader thread races it for the
//! sockets.
//! Four shapes put byte-identical streams on the wire (checked at setup):
//!
//! - `a1_frame_per_update`: one contiguous frame per update, K iovecs.
//! - `a2_coalesced`: the K frames packed back to back in one buffer, 1 iovec.
//! - `b1_header_payload`: header + payload per update, 2K iovecs.
//! - `b2_header_coalesced_payload`: the K payloads packed in one buffer, but a
//!   separate header iovec before each (the format built per subscriber from
//!   a shared payload), 2K iovecs.
//!
//! K = 1, 8, 32 updates per round (`..._x8`); payloads of 90 B and 1 KiB
//! (2- and 4-byte headers). At K = 1, a2 equals a1 and b2 equals b1, so those
//! two are skipped. Time is the writing thread's CPU time (user + system:
//! the syscalls and the kernel work they do in that thread), not wall time,
//! so that time taken from it by other load on a shared machine is left out.
//!
//! Reading the result: criterion's time is nanoseconds per delivered update
//! (one update written to one connection, syscall included), so cases compare
//! directly. The answer is b2/a2 (the worker's coalesced path) and b1/a1
//! (separate frames) at the same size and K: above 1, design A's contiguous
//! buffers are that much cheaper per delivery; within the run-to-run spread
//! (run it twice), the choice does not matter on the write path. Caveats:
//! on loopback the writer's syscall also does the receiver's TCP processing,
//! which dilutes differences relative to a real NIC; B is measured at its
//! best (a real SSE event also needs a `\n\n` trailer, so one more iovec
//! unless folded into the next header); A's one-off cost of building the
//! bytes (once per update, not per subscriber) and its extra memory are not
//! measured here, nor is the queue work per subscriber (the same in A and B;
//! see the fanout bench). Should a write ever find a full window, a note on
//! stderr says how often; those figures then include the extra syscalls.

use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Subscriber connections written per round.
const CONNECTIONS: usize = 64;
/// Iovecs per gathered write, as the worker's flush.
const IOV_BATCH: usize = 64;
/// Updates of the channel per round.
const PER_TURN: [usize; 3] = [1, 8, 32];
/// JSON payload sizes.
const PAYLOAD_SIZES: [usize; 2] = [90, 1024];

/// A JSON update of exactly `len` bytes.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"type":"update","ch":"AAPL","seq":{seq},"data":{{"bid":189.25,"ask":189.27,"pad":""#
    );
    let tail = br#""}}"#;
    assert!(head.len() + tail.len() <= len, "payload size too small");
    let mut v = head.into_bytes();
    v.resize(len - tail.len(), b'x');
    v.extend_from_slice(tail);
    v
}

/// Server-to-client WebSocket text frame header (unmasked).
fn ws_header(len: usize) -> Vec<u8> {
    if len < 126 {
        vec![0x81, len as u8]
    } else {
        let len = u16::try_from(len).expect("payload fits a 16-bit length");
        let [hi, lo] = len.to_be_bytes();
        vec![0x81, 126, hi, lo]
    }
}

/// The four shapes of one channel's K updates, each the per-connection queue
/// of buffers handed to one gathered write.
struct Shapes {
    a1: Vec<Bytes>,
    a2: Vec<Bytes>,
    b1: Vec<Bytes>,
    b2: Vec<Bytes>,
}

impl Shapes {
    fn new(k: usize, size: usize) -> Self {
        let payloads: Vec<Vec<u8>> = (1..=k as u64).map(|seq| payload(seq, size)).collect();
        let headers: Vec<Bytes> = payloads
            .iter()
            .map(|p| Bytes::from(ws_header(p.len())))
            .collect();

        // A1: each update's complete frame in its own buffer.
        let a1: Vec<Bytes> = headers
            .iter()
            .zip(&payloads)
            .map(|(h, p)| Bytes::from([&h[..], p].concat()))
            .collect();
        // A2: the same frames back to back in one buffer.
        let a2 = vec![Bytes::from(a1.concat())];
        // B1: header and payload, each its own buffer.
        let b1: Vec<Bytes> = headers
            .iter()
            .zip(&payloads)
            .flat_map(|(h, p)| [h.clone(), Bytes::copy_from_slice(p)])
            .collect();
        // B2: payloads back to back in one buffer, a header slice before each.
        let mut packed = BytesMut::with_capacity(k * size);
        for p in &payloads {
            packed.extend_from_slice(p);
        }
        let packed = packed.freeze();
        let b2: Vec<Bytes> = headers
            .iter()
            .enumerate()
            .flat_map(|(i, h)| [h.clone(), packed.slice(i * size..(i + 1) * size)])
            .collect();

        let s = Shapes { a1, a2, b1, b2 };
        let wire = s.a1.concat();
        for (q, iovecs) in [(&s.a1, k), (&s.a2, 1), (&s.b1, 2 * k), (&s.b2, 2 * k)] {
            assert_eq!(q.len(), iovecs);
            assert!(q.len() <= IOV_BATCH, "one gathered write per connection");
            assert_eq!(
                q.concat(),
                wire,
                "every shape puts the same bytes on the wire"
            );
        }
        s
    }
}

/// One subscriber connection: the engine's end and the subscriber's end.
struct Conn {
    /// Engine side: nonblocking, TCP_NODELAY.
    w: TcpStream,
    /// Subscriber side: blocking, its receive buffer sized for the bytes left
    /// unread between drains.
    peer: TcpStream,
    /// Bytes written and not yet drained from `peer`.
    unread: usize,
    /// Bytes drained from `peer`.
    received: u64,
}

/// The connections, with byte counts to check that everything written
/// arrived.
struct Fanout {
    conns: Vec<Conn>,
    /// Bytes a connection may have unread between drains.
    unread_limit: usize,
    buf: Vec<u8>,
    sent: u64,
    /// Writes that found a connection's window full.
    stalls: u64,
}

/// Most bytes left unread on one connection between drains: small, so that
/// the kernel's buffers for all connections stay about as warm as when data
/// leaves as fast as it is written.
const UNREAD_BYTES: usize = 64 * 1024;
/// Most rounds between drains (bounds the segments queued per connection).
const ROUNDS_PER_DRAIN: u64 = 64;

impl Fanout {
    fn new(n: usize) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut conns = Vec::with_capacity(n);
        let mut unread_limit = UNREAD_BYTES;
        for _ in 0..n {
            let peer = TcpStream::connect(addr)?;
            let (w, _) = listener.accept()?;
            w.set_nodelay(true)?;
            w.set_nonblocking(true)?;
            // A quarter of what the kernel grants: room for skb overhead,
            // so the window never closes between drains.
            unread_limit = unread_limit.min(set_recv_buffer(&peer, 4 * UNREAD_BYTES)? / 4);
            conns.push(Conn {
                w,
                peer,
                unread: 0,
                received: 0,
            });
        }
        Ok(Fanout {
            conns,
            unread_limit,
            buf: vec![0; 64 * 1024],
            sent: 0,
            stalls: 0,
        })
    }

    /// Writes `queue` to every connection `rounds` times, one gathered write
    /// per connection per round, and returns the CPU time the writes took.
    /// Every few rounds the peers are drained, off the clock.
    fn run(&mut self, queue: &[Bytes], rounds: u64) -> Duration {
        let per_round: usize = queue.iter().map(Bytes::len).sum();
        let per_drain = ((self.unread_limit / per_round) as u64).clamp(1, ROUNDS_PER_DRAIN);
        let mut busy = Duration::ZERO;
        let mut left = rounds;
        while left > 0 {
            let n = left.min(per_drain);
            let mut paused = Duration::ZERO;
            let start = thread_cpu_time();
            for _ in 0..n {
                for c in &mut self.conns {
                    self.sent +=
                        write_queue(c, queue, &mut self.buf, &mut self.stalls, &mut paused)
                            .expect("loopback write");
                }
            }
            busy += thread_cpu_time() - start - paused;
            for c in &mut self.conns {
                drain(c, &mut self.buf);
            }
            left -= n;
        }
        busy
    }

    /// Checks that every byte written was read, and says if any write found
    /// a full window.
    fn finish(self) {
        let received: u64 = self.conns.iter().map(|c| c.received).sum();
        assert_eq!(received, self.sent, "every byte written was received");
        if self.stalls > 0 {
            eprintln!(
                "wire_format: {} writes found a connection's window full and waited for a \
                 drain; the figures include those extra syscalls",
                self.stalls
            );
        }
    }
}

/// Asks for a receive buffer of `bytes` and returns what the kernel granted
/// (capped by `net.core.rmem_max`, doubled for bookkeeping).
fn set_recv_buffer(s: &TcpStream, bytes: usize) -> io::Result<usize> {
    let fd = s.as_raw_fd();
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let mut got: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket owned by `s`; the option values point to
    // live c_ints whose size is passed alongside.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const want).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; `len` holds the size of `got` and receives its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw mut got).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(got).unwrap_or(0))
}

/// Gathered writes of `queue` to `c`, at most `IOV_BATCH` iovecs each, the
/// way the worker flushes a connection; returns the bytes written. Should
/// the window be full, drains `c` and adds the CPU time that took to `paused`.
fn write_queue(
    c: &mut Conn,
    queue: &[Bytes],
    buf: &mut [u8],
    stalls: &mut u64,
    paused: &mut Duration,
) -> io::Result<u64> {
    let mut total = 0u64;
    for chunk in queue.chunks(IOV_BATCH) {
        let mut iov = [IoSlice::new(&[]); IOV_BATCH];
        for (slot, b) in iov.iter_mut().zip(chunk) {
            *slot = IoSlice::new(b);
        }
        let mut iov = &mut iov[..chunk.len()];
        while !iov.is_empty() {
            let attempt = if iov.len() == 1 {
                c.w.write(&iov[0])
            } else {
                c.w.write_vectored(iov)
            };
            match attempt {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n as u64;
                    c.unread += n;
                    IoSlice::advance_slices(&mut iov, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *stalls += 1;
                    let t = thread_cpu_time();
                    drain(c, buf);
                    *paused += thread_cpu_time() - t;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(total)
}

/// Reads and discards everything written to `c` so far.
fn drain(c: &mut Conn, buf: &mut [u8]) {
    while c.unread > 0 {
        match c.peer.read(buf) {
            Ok(0) => panic!("subscriber side closed"),
            Ok(n) => {
                c.unread -= n;
                c.received += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("drain: {e}"),
        }
    }
}

/// CPU time the calling thread has used, user and system (syscalls and the
/// kernel work they do in this thread's context included); time spent
/// descheduled by other load on the machine is not in it.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a
    // constant the kernel supports for the calling thread.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn bench(c: &mut Criterion) {
    let mut fanout = Fanout::new(CONNECTIONS).expect("loopback connections");
    let mut g = c.benchmark_group("wire_format");
    for size in PAYLOAD_SIZES {
        for k in PER_TURN {
            let shapes = Shapes::new(k, size);
            let mut cases = vec![("a1_frame_per_update", &shapes.a1)];
            if k > 1 {
                cases.push(("a2_coalesced", &shapes.a2));
            }
            cases.push(("b1_header_payload", &shapes.b1));
            if k > 1 {
                cases.push(("b2_header_coalesced_payload", &shapes.b2));
            }
            for (name, queue) in cases {
                let id = BenchmarkId::new(name, format!("{size}B_x{k}"));
                g.bench_function(id, |b| {
                    // One criterion iteration = one update delivered to one
                    // connection; whole rounds run, time scaled to `iters`.
                    b.iter_custom(|iters| {
                        let per_round = (CONNECTIONS * k) as u64;
                        let rounds = iters.div_ceil(per_round).max(1);
                        let elapsed = fanout.run(queue, rounds);
                        elapsed.mul_f64(iters as f64 / (rounds * per_round) as f64)
                    })
                });
            }
        }
    }
    g.finish();
    fanout.finish();
}

criterion_group! {
    name = benches;
    // Plots are off to keep the run short (`--plotting-backend plotters`
    // brings them back); CLI options override these defaults.
    config = Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
