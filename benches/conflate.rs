//! What does an update cost for a consumer that cannot keep up: the queue is
//! past its budget, so each update replaces its channel's pending one?

use std::hint::black_box;
use std::rc::Rc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire::channel::ChannelId;
use tickwire::worker::conflate::{Entry, OutQueue, Pushed};

fn bench(c: &mut Criterion) {
    let bytes = Bytes::from(vec![b'x'; 120]);
    let mut g = c.benchmark_group("conflate");
    g.throughput(Throughput::Elements(1));
    for channels in [10u32, 1000] {
        g.bench_function(format!("replace_pending_{channels}_channels"), |b| {
            let mut q = OutQueue::default();
            // Fill past a small budget so the queue conflates from here on.
            for ch in 0..channels {
                q.push_update(frame(&bytes, ch, 1), 0);
            }
            let mut seq = 1;
            let mut ch = 0;
            b.iter(|| {
                seq += 1;
                ch = (ch + 1) % channels;
                let r = q.push_update(frame(&bytes, ch, seq), 0);
                debug_assert_eq!(r, Pushed::Conflated);
                black_box(r)
            })
        });
    }
    g.finish();
}

fn frame(bytes: &Bytes, ch: u32, seq: u64) -> Rc<Entry> {
    Entry::update(bytes.clone(), ChannelId(ch), seq, 0)
}

criterion_group!(benches, bench);
criterion_main!(benches);
