//! Write-pass pacing for workers whose cores are contended.
//!
//! A write pass costs a fixed amount per connection written (on loopback a
//! `write` also runs the receiver's TCP input, about 3 µs here) plus a part per
//! byte. When the workers have the cores to themselves they write as soon as
//! updates arrive: the batch per write is whatever arrived during the last pass.
//! When other threads wait for the same cores (the clients on a shared box, a
//! feed handler, a noisy neighbour), every pass a worker starts also takes CPU
//! from them, and W workers each writing a shard make W times as many small
//! writes as one would. So while the scheduler makes this thread wait for a
//! core, the worker waits `W - 1` times its own pass cost before the next pass:
//! together the workers then take about one core's worth of write passes, each
//! write carries W times the batch, and the cost per delivered update falls to
//! what a single loop pays. With one worker, or free cores, nothing waits.
//!
//! Sans-io: the event loop feeds it the thread's CPU and run-queue wait
//! (Linux schedstat) and asks whether a pass may start.
//!
//! [`BatchHold`] applies to any number of workers, contended or not: once
//! updates arrive faster than a pass writes them (a turn took a batch of
//! [`BATCH_GATE_UPDATES`] or more off the ring), the next pass waits a fifth
//! of the last one, so each write carries a bigger batch: fewer writes per
//! delivery for the same bytes. Slower feeds are written at once.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Length of a measurement window.
pub const WINDOW_NS: u64 = 20_000_000;
/// Contended when the thread waited for a core this fraction of a window...
const ENGAGE: f64 = 0.10;
/// ...and no longer once it waits less than this (hysteresis).
const RELEASE: f64 = 0.03;
/// The longest wait between two passes, whatever a pass costs.
pub const MAX_LINGER_NS: u64 = 5_000_000;

/// Decides when a worker may start its next write pass.
#[derive(Debug)]
pub struct Pacer {
    /// Other workers whose passes this one leaves room for (W - 1).
    others: u64,
    contended: bool,
    /// A first sample set the window's start.
    primed: bool,
    window_start_ns: u64,
    cpu0_ns: u64,
    wait0_ns: u64,
    passes: u64,
    /// CPU per write pass in the last window.
    pass_cost_ns: u64,
    /// No pass before this time.
    resume_at_ns: u64,
}

impl Pacer {
    /// A pacer for one of `workers` workers; `enabled = false` never waits.
    pub fn new(workers: usize, enabled: bool) -> Self {
        Pacer {
            others: if enabled {
                workers.saturating_sub(1) as u64
            } else {
                0
            },
            contended: false,
            primed: false,
            window_start_ns: 0,
            cpu0_ns: 0,
            wait0_ns: 0,
            passes: 0,
            pass_cost_ns: 0,
            resume_at_ns: 0,
        }
    }

    /// Whether pacing can ever apply (more than one worker, enabled).
    pub fn active(&self) -> bool {
        self.others > 0
    }

    /// Whether the last window found the thread waiting for a core.
    pub fn contended(&self) -> bool {
        self.contended
    }

    /// Whether a window has ended and [`Pacer::sample`] is due. Windows are
    /// sampled also when pacing cannot apply, so that contention is counted
    /// (`tickwire_worker_contended_windows_total`) whatever the setting.
    pub fn sample_due(&self, now_ns: u64) -> bool {
        now_ns >= self.window_start_ns + WINDOW_NS
    }

    /// Closes a window: `cpu_ns` and `wait_ns` are the thread's cumulative
    /// on-CPU and runnable-but-waiting times.
    pub fn sample(&mut self, now_ns: u64, cpu_ns: u64, wait_ns: u64) {
        let wall = now_ns.saturating_sub(self.window_start_ns);
        if self.primed && wall > 0 {
            let waited = wait_ns.saturating_sub(self.wait0_ns) as f64 / wall as f64;
            self.contended = if self.contended {
                waited >= RELEASE
            } else {
                waited >= ENGAGE
            };
            if let Some(cost) = cpu_ns.saturating_sub(self.cpu0_ns).checked_div(self.passes) {
                self.pass_cost_ns = cost;
            }
        }
        self.window_start_ns = now_ns;
        self.cpu0_ns = cpu_ns;
        self.wait0_ns = wait_ns;
        self.passes = 0;
        self.primed = true;
    }

    /// A write pass (at least one connection written) ended at `now_ns`.
    /// Returns how long the next one is held back (0: not at all).
    pub fn pass_done(&mut self, now_ns: u64) -> u64 {
        self.passes += 1;
        if !self.contended || !self.active() {
            return 0;
        }
        let linger = (self.pass_cost_ns * self.others).min(MAX_LINGER_NS);
        self.resume_at_ns = now_ns + linger;
        linger
    }

    /// How long to wait before the next pass may start (0: now).
    pub fn wait_ns(&self, now_ns: u64) -> u64 {
        if !self.contended || !self.active() {
            return 0;
        }
        self.resume_at_ns.saturating_sub(now_ns)
    }
}

/// A turn that took at least this many updates off the ring saw them arrive
/// faster than it writes (at 1,000 subscribers, from about 1,600 updates/s
/// on 2 cores)...
pub const BATCH_GATE_UPDATES: u64 = 8;
/// ...so its next write pass waits the last pass's duration over this.
/// Without the gate every fraction tried (a tenth, a fifth, a third) raised
/// p99 somewhere from 100 to 1,600 ticks/s; with a gate of 4-5 updates a
/// fifth still did at 800-1,600; with 8 the hold engages from about 1,600
/// (perf/DEFAULTS.md).
pub const BATCH_HOLD_DIVISOR: u64 = 5;

/// Holds a write pass back after a pass that carried a batch (see the module
/// header). Sans-io: the worker reports each pass and asks when the next
/// may start.
#[derive(Debug, Default)]
pub struct BatchHold {
    enabled: bool,
    /// No pass before this time.
    resume_at_ns: u64,
}

impl BatchHold {
    /// A hold that, with `enabled = false`, never waits.
    pub fn new(enabled: bool) -> Self {
        BatchHold {
            enabled,
            resume_at_ns: 0,
        }
    }

    /// A write pass ran from `start_ns` to `end_ns` after a turn that took
    /// `taken` updates off the ring. Returns how long the next pass
    /// is held back (0: not at all).
    pub fn pass_done(&mut self, taken: u64, start_ns: u64, end_ns: u64) -> u64 {
        if !self.enabled || taken < BATCH_GATE_UPDATES {
            self.resume_at_ns = 0;
            return 0;
        }
        let hold = (end_ns.saturating_sub(start_ns) / BATCH_HOLD_DIVISOR).min(MAX_LINGER_NS);
        self.resume_at_ns = end_ns + hold;
        hold
    }

    /// How long to wait before the next pass may start (0: now).
    pub fn wait_ns(&self, now_ns: u64) -> u64 {
        self.resume_at_ns.saturating_sub(now_ns)
    }
}

/// The calling thread's scheduler statistics (`/proc/thread-self/schedstat`).
pub struct SchedStat(File);

impl SchedStat {
    /// Opens the calling thread's file; `None` where the kernel has none.
    pub fn open() -> Option<Self> {
        File::open("/proc/thread-self/schedstat")
            .ok()
            .map(SchedStat)
    }

    /// (on-CPU ns, runnable-but-waiting ns) since the thread started.
    pub fn read(&self) -> Option<(u64, u64)> {
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        parse_schedstat(&buf[..n])
    }
}

fn parse_schedstat(text: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    let cpu = fields.next()?.ok()?;
    let wait = fields.next()?.ok()?;
    Some((cpu, wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs one window in which the thread spent `cpu` ns on a core over
    /// `passes` passes and waited `wait` ns for one; returns the new totals.
    fn window(p: &mut Pacer, t: &mut u64, tot: &mut (u64, u64), cpu: u64, wait: u64, passes: u64) {
        for _ in 0..passes {
            p.pass_done(*t);
        }
        *t += WINDOW_NS;
        tot.0 += cpu;
        tot.1 += wait;
        p.sample(*t, tot.0, tot.1);
    }

    /// A pacer of `workers` workers after its first sample at t = 1 ms.
    fn primed(workers: usize) -> (Pacer, u64, (u64, u64)) {
        let mut p = Pacer::new(workers, true);
        p.sample(MS, 0, 0);
        (p, MS, (0, 0))
    }

    #[test]
    fn free_cores_never_wait() {
        let (mut p, mut t, mut tot) = primed(2);
        for _ in 0..10 {
            window(&mut p, &mut t, &mut tot, 10 * MS, MS / 10, 20);
            assert!(!p.contended());
            p.pass_done(t);
            assert_eq!(p.wait_ns(t), 0);
        }
    }

    #[test]
    fn contended_worker_waits_its_pass_cost_times_the_others() {
        let (mut p, mut t, mut tot) = primed(3);
        // 10 passes of 0.5 ms CPU each, 5 ms waited for a core: 25 %.
        window(&mut p, &mut t, &mut tot, 5 * MS, 5 * MS, 10);
        assert!(p.contended());
        assert_eq!(p.pass_done(t), MS, "2 others x 0.5 ms");
        assert_eq!(p.wait_ns(t), MS);
        assert_eq!(p.wait_ns(t + MS / 4), 3 * MS / 4);
        assert_eq!(p.wait_ns(t + 2 * MS), 0);
    }

    #[test]
    fn wait_is_capped_and_released_with_hysteresis() {
        let (mut p, mut t, mut tot) = primed(2);
        window(&mut p, &mut t, &mut tot, 18 * MS, 4 * MS, 1);
        assert!(p.contended());
        p.pass_done(t);
        assert_eq!(p.wait_ns(t), MAX_LINGER_NS);
        // 5 % waited: below the engage level, above the release level.
        window(&mut p, &mut t, &mut tot, 10 * MS, MS, 5);
        assert!(p.contended());
        window(&mut p, &mut t, &mut tot, 10 * MS, MS / 2, 5);
        assert!(!p.contended());
        p.pass_done(t);
        assert_eq!(p.wait_ns(t), 0);
    }

    #[test]
    fn one_worker_or_disabled_never_waits() {
        for mut p in [Pacer::new(1, true), Pacer::new(4, false)] {
            assert!(!p.active());
            // Still sampled, so contention is counted whatever the setting.
            assert!(p.sample_due(u64::MAX));
            p.sample(MS, 0, 0);
            p.sample(MS + WINDOW_NS, MS, 15 * MS);
            assert!(p.contended(), "75% waiting is contention");
            assert_eq!(p.pass_done(MS + WINDOW_NS), 0);
            assert_eq!(p.wait_ns(MS + WINDOW_NS), 0);
        }
    }

    #[test]
    fn batch_hold_waits_a_fifth_of_a_pass_that_carried_a_batch() {
        let mut h = BatchHold::new(true);
        // Fewer updates than the gate: written at once, whatever the pass cost.
        assert_eq!(h.pass_done(BATCH_GATE_UPDATES - 1, 0, 10 * MS), 0);
        assert_eq!(h.wait_ns(10 * MS), 0);
        // A batch: the next pass waits a fifth of this one's 2 ms.
        assert_eq!(
            h.pass_done(BATCH_GATE_UPDATES, 10 * MS, 12 * MS),
            2 * MS / 5
        );
        assert_eq!(h.wait_ns(12 * MS), 2 * MS / 5);
        assert_eq!(h.wait_ns(12 * MS + MS / 5), MS / 5);
        assert_eq!(h.wait_ns(13 * MS), 0);
        // Capped like the pacer's wait.
        assert_eq!(h.pass_done(1_000, 0, 100 * MS), MAX_LINGER_NS);
        // A small turn after a batch releases the hold at once.
        assert_eq!(h.pass_done(1, 100 * MS, 101 * MS), 0);
        assert_eq!(h.wait_ns(101 * MS), 0);
    }

    #[test]
    fn batch_hold_disabled_never_waits() {
        let mut h = BatchHold::new(false);
        assert_eq!(h.pass_done(1_000, 0, 10 * MS), 0);
        assert_eq!(h.wait_ns(10 * MS), 0);
    }

    #[test]
    fn schedstat_parses_and_reads_this_thread() {
        assert_eq!(parse_schedstat(b"123 456 7\n"), Some((123, 456)));
        assert_eq!(parse_schedstat(b"x 1 2"), None);
        assert_eq!(parse_schedstat(b""), None);
        if let Some(s) = SchedStat::open() {
            // The kernel folds a running thread's time in at scheduler ticks
            // and switches, so a fresh thread may read 0 for a while: spin
            // and yield until the figure moves.
            let (cpu0, _) = s.read().expect("readable");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut cpu1 = cpu0;
            let mut x = 0u64;
            while cpu1 <= cpu0 && std::time::Instant::now() < deadline {
                for i in 0..200_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
                std::thread::yield_now();
                cpu1 = s.read().expect("readable").0;
            }
            assert!(
                cpu1 > cpu0,
                "CPU time never advanced in 5 s: {cpu0} -> {cpu1}"
            );
        }
    }
}
