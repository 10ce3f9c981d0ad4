//! How long does it take to build one update frame, and to take one ingest
//! line from bytes to a sequenced frame (simd-json validation included)?

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickwire::ingest::history::HistoryLimits;
use tickwire::ingest::{LineParser, Sequencer, accept_line};
use tickwire::protocol::frame;

const LINE: &[u8] = br#"{"ch":"AAPL","bid":189.25,"ask":189.27,"bid_size":300,"ask_size":500,"t":1732200000000000000}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("build_update_100B", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            black_box(frame::update(black_box(b"AAPL"), seq, black_box(LINE)))
        })
    });
    g.bench_function("ingest_line_parse_sequence_build", |b| {
        let mut p = LineParser::default();
        let mut s = Sequencer::new(1000);
        b.iter(|| black_box(accept_line(&mut p, &mut s, black_box(LINE), 0).unwrap()))
    });
    // The same with no history kept: what keeping 16 updates per channel
    // costs the ingest thread.
    g.bench_function("ingest_line_parse_sequence_build_no_history", |b| {
        let mut p = LineParser::default();
        let limits = HistoryLimits {
            size: 0,
            ..HistoryLimits::default()
        };
        let mut s = Sequencer::with_history(1000, limits);
        b.iter(|| black_box(accept_line(&mut p, &mut s, black_box(LINE), 0).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
