// Frame cost from Chromium's own performance timeline, installed in the page
// before its scripts run (page.addInitScript): Long Animation Frames
// ('long-animation-frame': frames over 50 ms, with their blocking time and
// the scripts in them), long tasks ('longtask': main-thread tasks over
// 50 ms) and the intervals between requestAnimationFrame callbacks, i.e. the
// frames the page actually produced, whatever made them late (script, style,
// layout, paint, or the machine).

export function installFrameProbe() {
  const p = {
    types: (window.PerformanceObserver && PerformanceObserver.supportedEntryTypes) || [],
    loaf: [],
    longtasks: [],
    intervals: [],
    from: 0,
  };
  window.__perf = p;
  const observe = (type, fn) => {
    if (!p.types.includes(type)) return;
    new PerformanceObserver((list) => { for (const e of list.getEntries()) fn(e); }).observe({ type, buffered: true });
  };
  observe('long-animation-frame', (e) => p.loaf.push({
    start: e.startTime,
    duration: e.duration,
    blocking: e.blockingDuration,
    // rendering part: from the start of rendering (rAF callbacks, style,
    // layout, paint) to the end of the frame
    render: e.renderStart ? e.startTime + e.duration - e.renderStart : 0,
    // style, layout and the rest of the rendering after the rAF callbacks
    styleLayout: e.styleAndLayoutStart ? e.startTime + e.duration - e.styleAndLayoutStart : 0,
    scripts: (e.scripts || []).map((s) => ({ d: Math.round(s.duration), f: s.sourceFunctionName || '', u: (s.sourceURL || '').split('/').pop(), inv: s.invoker || '' })).slice(0, 5),
  }));
  observe('longtask', (e) => p.longtasks.push({ start: e.startTime, duration: e.duration }));
  let last = 0;
  const tick = (ts) => {
    if (last) p.intervals.push([ts, ts - last]);
    last = ts;
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
  document.addEventListener('visibilitychange', () => { last = 0; });
}

/** Starts a measurement window now. */
export function frameWindowStart(page) {
  return page.evaluate(() => { window.__perf.from = performance.now(); return window.__perf.from; });
}

/** Summary of what the probe saw since frameWindowStart. */
export function frameWindowStats(page) {
  return page.evaluate(() => {
    const p = window.__perf;
    const from = p.from, to = performance.now();
    const iv = p.intervals.filter(([t]) => t >= from).map(([, d]) => d).sort((a, b) => a - b);
    const q = (x) => (iv.length ? iv[Math.min(iv.length - 1, Math.floor(x * (iv.length - 1) + 0.5))] : NaN);
    // a frame or task that ends in the window counts (one that began before
    // it may still have been running when the window started)
    const loaf = p.loaf.filter((e) => e.start + e.duration >= from);
    const lt = p.longtasks.filter((e) => e.start + e.duration >= from);
    return {
      windowMs: to - from,
      loafSupported: p.types.includes('long-animation-frame'),
      longtaskSupported: p.types.includes('longtask'),
      frames: iv.length,
      fps: (iv.length * 1000) / (to - from),
      p50: q(0.5),
      p95: q(0.95),
      p99: q(0.99),
      max: iv.length ? iv[iv.length - 1] : NaN,
      loafCount: loaf.length,
      loafMaxDuration: loaf.reduce((m, e) => Math.max(m, e.duration), 0),
      loafMaxBlocking: loaf.reduce((m, e) => Math.max(m, e.blocking), 0),
      loafTotalBlocking: loaf.reduce((s, e) => s + e.blocking, 0),
      loafWorst: loaf.slice().sort((a, b) => b.blocking - a.blocking).slice(0, 3),
      longtaskCount: lt.length,
      longtaskMax: lt.reduce((m, e) => Math.max(m, e.duration), 0),
      longtaskTotal: lt.reduce((s, e) => s + e.duration, 0),
    };
  });
}

/** One line of figures for the test output. */
export function frameLine(f) {
  const n = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
  return `rAF frames ${f.frames} in ${n(f.windowMs / 1000, 1)} s (${n(f.fps)} fps), interval p50 ${n(f.p50)} ms p95 ${n(f.p95)} ms ` +
    `p99 ${n(f.p99)} ms max ${n(f.max)} ms; long animation frames ${f.loafCount} (max duration ${n(f.loafMaxDuration)} ms, ` +
    `max blocking ${n(f.loafMaxBlocking)} ms, total blocking ${n(f.loafTotalBlocking)} ms); long tasks ${f.longtaskCount} ` +
    `(max ${n(f.longtaskMax)} ms, total ${n(f.longtaskTotal)} ms)`;
}
