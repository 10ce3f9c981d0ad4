//! What does one update cost to hand from the ingest thread to a worker
//! through the SPSC ring (push on one thread, pop on another)?

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire::channel::ChannelId;
use tickwire::ring::ToWorker;
use tickwire::update::Update;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_pop_across_threads", |b| {
        b.iter_custom(|iters| {
            let (mut tx, mut rx) = rtrb::RingBuffer::<ToWorker>::new(4096);
            let barrier = Arc::new(Barrier::new(2));
            let b2 = Arc::clone(&barrier);
            let consumer = std::thread::spawn(move || {
                b2.wait();
                let mut got = 0;
                while got < iters {
                    if rx.pop().is_ok() {
                        got += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            });
            let frame = Bytes::from_static(b"0123456789abcdef");
            barrier.wait();
            let start = Instant::now();
            for seq in 0..iters {
                let mut msg = ToWorker::Update(Update {
                    channel: ChannelId(0),
                    seq,
                    ingest_ns: 0,
                    frame: frame.clone(),
                });
                loop {
                    match tx.push(msg) {
                        Ok(()) => break,
                        Err(rtrb::PushError::Full(m)) => {
                            msg = m;
                            std::hint::spin_loop();
                        }
                    }
                }
            }
            consumer.join().unwrap();
            start.elapsed().max(Duration::from_nanos(1))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
