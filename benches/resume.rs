//! What does a resume cost per replayed update: the ingest thread taking
//! the missed updates out of the channel's history (a refcount each), and
//! the worker queueing them for the client (an `Entry` each)?

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire::ingest::Sequencer;
use tickwire::ingest::history::{ClassRule, HistoryLimits, Position, Start};
use tickwire::worker::conflate::{Entry, OutQueue};

const LINE: &[u8] = br#"{"ch":"A","bid":189.25,"ask":189.27,"bid_size":300,"ask_size":500}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("resume");
    for missed in [16u64, 256] {
        let rule = ClassRule {
            pattern: "A".into(),
            size: 256,
            ttl_ns: 0,
            conflate: false,
        };
        let mut s = Sequencer::with_classes(10, HistoryLimits::default(), vec![rule]);
        for _ in 0..256 {
            s.accept("A", LINE, 0).unwrap();
        }
        let id = s.resolve("A").unwrap();
        let since = Position {
            seq: 256 - missed,
            epoch: s.epoch(id),
        };
        g.throughput(Throughput::Elements(missed));
        g.bench_function(format!("replay_{missed}_missed_updates"), |b| {
            let mut q = OutQueue::default();
            b.iter(|| {
                let (start, _, _) = s.start(id, Some(&since), 0);
                let Start::Replay(updates) = start else {
                    panic!("a resume within the history replays");
                };
                for u in updates {
                    q.push_replay(Entry::from_update(u));
                }
                black_box(q.queued_bytes());
                q.clear();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
