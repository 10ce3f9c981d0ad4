//! The per-delivery CPU cost: one update frame delivered to 1,000 subscribers
//! the way a worker does it (an `Rc` bump into each connection's queue, then
//! one gathered write per connection), against a fake writer that accepts
//! everything, so the syscall is mocked out and only the engine's work is timed.
//! The coalesced cases add per-turn coalescing, as the worker does it, for
//! WebSocket subscribers and for SSE ones (framed for HTTP at write time);
//! the merged cases push as the worker does since queue entries merge.

use std::hint::black_box;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire::channel::ChannelId;
use tickwire::worker::coalesce::Coalescer;
use tickwire::worker::conflate::{Entry, Merges, OutQueue};

/// Takes every byte of every iovec, like a socket with room.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum::<usize>();
        self.0 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const SUBSCRIBERS: usize = 1000;

fn bench(c: &mut Criterion) {
    let frame = tickwire::protocol::frame::update(
        b"AAPL",
        1,
        br#"{"ch":"AAPL","bid":189.25,"ask":189.27,"bid_size":300,"ask_size":500}"#,
    );
    let mut g = c.benchmark_group("fanout");
    // Plain pushes, then the workers' push since queue entries merge
    // (`OutQueue::push_merged`): with one frame per write the tail check is
    // the whole difference; with eight frames pushed one by one before a
    // write (a blocked socket, a pass refresh), each joins the queue's
    // tail, one copy per frame shared by every queue, and the write carries
    // one buffer.
    for merged in [false, true] {
        for per_turn in [1usize, 8] {
            // One element = one delivery (a frame written to one subscriber).
            g.throughput(Throughput::Elements((SUBSCRIBERS * per_turn) as u64));
            let suffix = if merged { "_merged" } else { "" };
            g.bench_function(
                format!("1000_subscribers_{per_turn}_frames_per_write{suffix}"),
                |b| {
                    let mut queues: Vec<OutQueue> =
                        (0..SUBSCRIBERS).map(|_| OutQueue::default()).collect();
                    let mut merges = Merges::new(32 * 1024);
                    let mut sink = Sink(0);
                    let mut seq = 0;
                    b.iter(|| {
                        for _ in 0..per_turn {
                            seq += 1;
                            let f = Entry::update(Bytes::clone(&frame), ChannelId(0), seq, 0);
                            for q in queues.iter_mut() {
                                if merged {
                                    q.push_merged(&f, 256 * 1024, &mut merges);
                                } else {
                                    q.push_update(Rc::clone(&f), 256 * 1024);
                                }
                            }
                            merges.clear();
                        }
                        let mut delivered = 0u64;
                        for q in queues.iter_mut() {
                            q.flush(&mut sink, |f| delivered += f.count()).unwrap();
                        }
                        black_box(delivered)
                    })
                },
            );
        }
    }
    // The worker's path: a turn's 8 updates of the channel packed into one
    // buffer (`Coalescer`, once per turn), one `Rc` bump per subscriber.
    g.throughput(Throughput::Elements((SUBSCRIBERS * 8) as u64));
    g.bench_function("1000_subscribers_8_updates_coalesced", |b| {
        let mut queues: Vec<OutQueue> = (0..SUBSCRIBERS).map(|_| OutQueue::default()).collect();
        let mut coalescer = Coalescer::new(32 * 1024);
        let mut sink = Sink(0);
        let mut seq = 0;
        b.iter(|| {
            add_turn(&mut coalescer, &mut seq, &frame);
            for f in coalescer.drain() {
                for q in queues.iter_mut() {
                    q.push_update(Rc::clone(&f), 256 * 1024);
                }
            }
            let mut delivered = 0u64;
            for q in queues.iter_mut() {
                q.flush(&mut sink, |f| delivered += f.count()).unwrap();
            }
            black_box(delivered)
        })
    });
    // The same turn to subscribers on SSE: each entry is framed into the
    // connection's staging buffer (an `id:` with the channels' positions
    // and a copy of the payload), which the socket then takes.
    g.bench_function("1000_sse_subscribers_8_updates_coalesced", |b| {
        use tickwire::protocol::http::StreamKind;
        use tickwire::worker::stream::HttpStream;
        let channels: Vec<Box<str>> = vec!["AAPL".into(), "MSFT".into()];
        staged_turns(b, &frame, || {
            HttpStream::new(StreamKind::Sse, &channels, &[], 0, false)
        });
    });
    // And to batched WebSocket clients (`/ws?batch=1`): the turn's payloads
    // copied behind one header into the staging buffer.
    g.bench_function("1000_batched_subscribers_8_updates_coalesced", |b| {
        staged_turns(b, &frame, || tickwire::worker::batch::WsBatch::new(b""));
    });
    g.finish();
}

/// A turn's 8 updates of the channel into the coalescer (none hands out a
/// batch: 8 frames stay under its 32 KiB).
fn add_turn(coalescer: &mut Coalescer, seq: &mut u64, frame: &Bytes) {
    for _ in 0..8 {
        *seq += 1;
        assert!(
            coalescer
                .add(ChannelId(0), *seq, 0, Bytes::clone(frame))
                .is_none()
        );
    }
}

/// A turn of 8 coalesced updates to 1,000 subscribers whose queues are
/// framed on the way out (`make` builds each one's stage), the socket
/// taking every staged byte.
fn staged_turns<S: tickwire::worker::output::Stage>(
    b: &mut criterion::Bencher<'_>,
    frame: &Bytes,
    make: impl Fn() -> S,
) {
    let mut subs: Vec<(OutQueue, S)> = (0..SUBSCRIBERS)
        .map(|_| (OutQueue::default(), make()))
        .collect();
    let mut coalescer = Coalescer::new(32 * 1024);
    let mut sink = Sink(0);
    let mut seq = 0;
    b.iter(|| {
        add_turn(&mut coalescer, &mut seq, frame);
        for f in coalescer.drain() {
            for (q, _) in subs.iter_mut() {
                q.push_update(Rc::clone(&f), 256 * 1024);
            }
        }
        let mut delivered = 0u64;
        for (q, s) in subs.iter_mut() {
            while !q.is_empty() {
                s.frame_from(q, |f| delivered += f.count()).unwrap();
                let n = sink.write(s.staged()).unwrap();
                s.consume(n);
            }
        }
        black_box(delivered)
    })
}

criterion_group!(benches, bench);
criterion_main!(benches);
