//! Sends batched per write pass: the plain-TCP writes a pass has due go to
//! the kernel together, up to [`BATCH`] in one `io_uring_enter`, instead of
//! one `send`/`writev` syscall each.
//!
//! Why: at low tick rates every delivery is a write of its own, and a
//! syscall's entry and exit alone cost about 0.65 µs on the machines we
//! measure on (speculation mitigations), a tenth of the CPU per delivery
//! (perf/DEFAULTS.md, "Batched sends").
//!
//! The contract is that of a non-blocking write, so the write path does not
//! change: each send carries `MSG_DONTWAIT`, so the kernel runs it inline and
//! a full socket completes at once with `EAGAIN`, as `send` would return.
//! [`SendBatch::submit`] returns only once every send has completed: the
//! buffers a send points to are borrowed for that call and no longer.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, squeue, types};

/// Sends per submission. A pass refreshes (takes fresh updates off the
/// ring) between batches, so a batch is as long as the refresh stride.
pub const BATCH: usize = crate::worker::output::REFRESH_EVERY;

/// Buffers per send: what one gathered write offers.
pub const MAX_BUFS: usize = crate::worker::conflate::IOV_BATCH;

/// One queued send: the connection it writes and what it offered.
#[derive(Debug, Clone, Copy)]
struct Queued {
    slot: u32,
    offered: usize,
    result: i32,
}

/// Up to [`BATCH`] sends waiting for one submission.
pub struct SendBatch {
    ring: IoUring,
    queued: Vec<Queued>,
    /// Iovecs of gathered sends, [`MAX_BUFS`] per send, and their message
    /// headers: fixed arrays, so what the kernel is given stays put until
    /// the submission returns.
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::msghdr]>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("queued", &self.queued.len())
            .finish_non_exhaustive()
    }
}

impl SendBatch {
    /// Sets up the ring. Fails where io_uring is not allowed (old kernels,
    /// seccomp filters): the caller writes with one syscall per write.
    ///
    /// # Errors
    /// The kernel refused the ring.
    pub fn new() -> io::Result<Self> {
        let entries = BATCH as u32;
        // Newest flags first (6.1+): the worker is the ring's only user,
        // and no completion work runs outside its own submissions.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .build(entries)
            .or_else(|_| IoUring::builder().setup_submit_all().build(entries))
            .or_else(|_| IoUring::new(entries))?;
        // SAFETY: iovec is a plain C struct (a pointer and a length): all
        // zero bytes are a valid, empty value.
        let empty_iov: libc::iovec = unsafe { std::mem::zeroed() };
        // SAFETY: msghdr is a plain C struct of pointers and integers: all
        // zero bytes are a valid, empty header (no name, iovecs or control).
        let empty_hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        Ok(SendBatch {
            ring,
            queued: Vec::with_capacity(BATCH),
            iovecs: vec![empty_iov; BATCH * MAX_BUFS].into_boxed_slice(),
            headers: vec![empty_hdr; BATCH].into_boxed_slice(),
        })
    }

    /// Sends queued.
    #[inline]
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether another send would not fit: submit first.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.queued.len() == BATCH
    }

    /// Queues a send of `bufs` to `fd` on behalf of connection `slot`.
    ///
    /// # Safety
    /// The memory `bufs` points to must stay allocated and unchanged until
    /// the next [`SendBatch::submit`] returns, and `fd` must stay open that
    /// long. The batch must not be full, and `bufs` holds 1 to
    /// [`MAX_BUFS`] slices.
    pub unsafe fn push(&mut self, fd: RawFd, slot: u32, bufs: &[IoSlice<'_>]) {
        assert!(!self.is_full() && (1..=MAX_BUFS).contains(&bufs.len()));
        let i = self.queued.len();
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        let entry = if let [one] = bufs {
            // No iovec for the kernel to import: the common case, a client
            // that keeps up has one frame due.
            opcode::Send::new(types::Fd(fd), one.as_ptr(), one.len() as u32)
                .flags(libc::MSG_DONTWAIT)
                .build()
        } else {
            let iov = &mut self.iovecs[i * MAX_BUFS..i * MAX_BUFS + bufs.len()];
            for (v, b) in iov.iter_mut().zip(bufs) {
                *v = libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                };
            }
            let hdr = &mut self.headers[i];
            hdr.msg_iov = iov.as_mut_ptr();
            hdr.msg_iovlen = bufs.len() as _;
            opcode::SendMsg::new(types::Fd(fd), hdr as *const libc::msghdr)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
        };
        let entry = entry.user_data(i as u64).flags(squeue::Flags::empty());
        // SAFETY: the entry points to `bufs` (valid until submit returns, by
        // this function's contract) and to this batch's own iovec and header
        // arrays, which are neither moved nor rewritten before then. The
        // queue has room: it holds BATCH entries and at most BATCH are
        // pushed between submissions.
        unsafe {
            self.ring
                .submission()
                .push(&entry)
                .expect("the submission queue holds a batch");
        }
        self.queued.push(Queued {
            slot,
            offered,
            result: 0,
        });
    }

    /// Submits every queued send and waits until each has completed.
    /// Returns the sends' slots, bytes offered and results, in the order
    /// they were queued; the next [`SendBatch::push`] starts a new batch.
    pub fn submit(&mut self) -> impl Iterator<Item = (u32, usize, io::Result<usize>)> + '_ {
        let want = self.queued.len();
        let mut done = 0;
        while done < want {
            match self.ring.submit_and_wait(want - done) {
                Ok(_) => {}
                // A signal, or the completion queue full (it is twice the
                // submission queue, so not expected): reap and go on.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                // The kernel may still hold pointers into buffers the
                // caller is about to release: no way to go on safely.
                Err(e) => panic!("io_uring submission failed: {e}"),
            }
            for cqe in self.ring.completion() {
                let q = &mut self.queued[cqe.user_data() as usize];
                q.result = cqe.result();
                done += 1;
            }
        }
        self.queued.drain(..).map(|q| {
            let r = if q.result >= 0 {
                Ok(q.result as usize)
            } else {
                Err(io::Error::from_raw_os_error(-q.result))
            };
            (q.slot, q.offered, r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        a.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// A batch, or a failure that says why: a kernel that refuses io_uring
    /// leaves the batched write path untested, which must not pass.
    fn ring() -> SendBatch {
        SendBatch::new().unwrap_or_else(|e| {
            panic!("io_uring is refused on this kernel ({e}): the batched write path is untested")
        })
    }

    #[test]
    fn a_batch_sends_single_and_gathered_writes_in_order_of_queueing() {
        let mut batch = ring();
        let (a, mut b) = pair();
        let (c, mut d) = pair();
        let one = b"hello".to_vec();
        let (x, y) = (b"gath".to_vec(), b"ered".to_vec());
        // SAFETY: the buffers and sockets live until submit returns.
        unsafe {
            batch.push(a.as_raw_fd(), 7, &[IoSlice::new(&one)]);
            batch.push(c.as_raw_fd(), 9, &[IoSlice::new(&x), IoSlice::new(&y)]);
        }
        assert_eq!(batch.len(), 2);
        let got: Vec<_> = batch.submit().map(|(s, o, r)| (s, o, r.unwrap())).collect();
        assert_eq!(got, vec![(7, 5, 5), (9, 8, 8)]);
        assert!(batch.is_empty());
        let mut buf = [0u8; 16];
        let n = b.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let n = d.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"gathered");
    }

    #[test]
    fn a_full_socket_completes_at_once_with_would_block() {
        let mut batch = ring();
        let (a, _b) = pair();
        let chunk = vec![0u8; 1 << 20];
        // Fill the socket (and the peer's receive buffer) with plain sends.
        let mut filled = false;
        for _ in 0..1000 {
            // SAFETY: `chunk` and the socket outlive the submission.
            unsafe { batch.push(a.as_raw_fd(), 1, &[IoSlice::new(&chunk)]) };
            let (_, _, r) = batch.submit().next().unwrap();
            match r {
                Ok(n) => assert!(n > 0),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                    filled = true;
                    break;
                }
            }
        }
        assert!(filled, "the socket never filled");
        // A gathered send to the full socket: would block too, and returns.
        let start = std::time::Instant::now();
        // SAFETY: as above.
        unsafe {
            batch.push(
                a.as_raw_fd(),
                2,
                &[IoSlice::new(&chunk[..10]), IoSlice::new(&chunk[..10])],
            )
        };
        let (slot, offered, r) = batch.submit().next().unwrap();
        assert_eq!((slot, offered), (2, 20));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_hang() {
        let mut batch = ring();
        let (a, b) = pair();
        drop(b);
        let data = vec![1u8; 4096];
        let mut failed = false;
        for _ in 0..10 {
            // SAFETY: `data` and the socket outlive the submission.
            unsafe { batch.push(a.as_raw_fd(), 3, &[IoSlice::new(&data)]) };
            if let Err(e) = batch.submit().next().unwrap().2 {
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ),
                    "{e}"
                );
                failed = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(failed, "sends to a closed peer kept succeeding");
    }

    #[test]
    fn a_batch_holds_batch_sends() {
        let mut batch = ring();
        let (a, mut b) = pair();
        let byte = [b'x'];
        for _ in 0..BATCH {
            // SAFETY: `byte` and the socket outlive the submission.
            unsafe { batch.push(a.as_raw_fd(), 0, &[IoSlice::new(&byte)]) };
        }
        assert!(batch.is_full());
        assert_eq!(batch.submit().filter(|r| r.2.is_ok()).count(), BATCH);
        let mut buf = [0u8; BATCH];
        b.read_exact(&mut buf).unwrap();
    }
}
