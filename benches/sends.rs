//! A write pass's sends on real loopback sockets: one 92-byte frame to each
//! of 1,000 connections, written with one `send` syscall each (the path with
//! `--batch-sends false`) or handed to the kernel 64 at a time through the
//! worker's io_uring batch. The kernel's TCP work is the same in both; the
//! difference is the syscall entry and exit per write. The receivers are
//! drained between passes, outside the timed part, and nobody sleeps in
//! epoll on them, so no wake-up is timed either.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire::worker::send_batch::{BATCH, SendBatch};

const CONNECTIONS: usize = 1000;

fn pairs() -> Vec<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    (0..CONNECTIONS)
        .map(|_| {
            let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (b, _) = l.accept().unwrap();
            a.set_nonblocking(true).unwrap();
            a.set_nodelay(true).unwrap();
            b.set_nonblocking(true).unwrap();
            (a, b)
        })
        .collect()
}

fn drain(pairs: &mut [(TcpStream, TcpStream)], buf: &mut [u8]) {
    for (_, b) in pairs.iter_mut() {
        while matches!(b.read(buf), Ok(n) if n > 0) {}
    }
}

fn bench(c: &mut Criterion) {
    let frame = tickwire::protocol::frame::update(
        b"AAPL",
        1,
        br#"{"ch":"AAPL","bid":189.25,"ask":189.27,"bid_size":300,"ask_size":500}"#,
    );
    let mut pairs = pairs();
    let mut buf = vec![0u8; 64 * 1024];
    let mut g = c.benchmark_group("sends");
    g.throughput(Throughput::Elements(CONNECTIONS as u64));
    g.bench_function("1000_connections_one_syscall_each", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for (a, _) in pairs.iter_mut() {
                    assert_eq!(a.write(&frame).unwrap(), frame.len());
                }
                timed += start.elapsed();
                drain(&mut pairs, &mut buf);
            }
            timed
        })
    });
    let mut batch = SendBatch::new().expect("io_uring");
    g.bench_function("1000_connections_batched", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for chunk in pairs.chunks(BATCH) {
                    for (i, (a, _)) in chunk.iter().enumerate() {
                        // SAFETY: the frame and the sockets outlive the
                        // submission just below.
                        unsafe { batch.push(a.as_raw_fd(), i as u32, &[IoSlice::new(&frame)]) };
                    }
                    for (_, _, r) in batch.submit() {
                        assert_eq!(r.unwrap(), frame.len());
                    }
                }
                timed += start.elapsed();
                drain(&mut pairs, &mut buf);
            }
            timed
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
