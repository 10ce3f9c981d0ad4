// The dashboard under the built-in demo feed, in a real Chromium: rows
// appear, quotes change, the server panel moves; the frame cost at the demo's
// 3,000 updates/s measured with Chromium's performance timeline (Long
// Animation Frames, long tasks, rAF intervals; figures in perf/DASHBOARD.md);
// and a screenshot (docs/dashboard.png with TICKWIRE_UPDATE_SCREENSHOT=1,
// else a temporary file).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { frameLine, frameWindowStart, frameWindowStats, installFrameProbe } from './support/frames.js';
import { REPO, fileWatchdog, launchBrowser, scope, sleep, startEngine, waitFor } from './support/harness.js';

const UPDATE_SCREENSHOT = process.env.TICKWIRE_UPDATE_SCREENSHOT === '1';
fileWatchdog(UPDATE_SCREENSHOT ? 260000 : 200000);

async function demoPage(t, s, viewport = { width: 1400, height: 900 }, { probe = false } = {}) {
  const engine = await startEngine({ args: ['--demo', '--demo-rate', '3000'] });
  s.add(() => engine.stop());
  const browser = await launchBrowser();
  s.add(() => browser.close());
  const page = await browser.newPage({ viewport });
  if (probe) await page.addInitScript(installFrameProbe);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) pageErrors.push('console: ' + m.text()); });
  page.on('response', (r) => { if (r.status() >= 400) pageErrors.push(`HTTP ${r.status()} ${new URL(r.url()).pathname}`); });
  await page.goto(engine.url + '/', { timeout: 15000 });
  return { engine, browser, page, pageErrors };
}

const rowCount = (page) => page.locator('#board tbody tr[data-ch]').count();

test('dashboard under --demo: rows, changing quotes, moving server panel', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const { page, pageErrors } = await demoPage(t, s);

  await waitFor(async () => (await rowCount(page)) >= 40, { timeoutMs: 15000, what: 'at least 40 demo rows' });
  await waitFor(async () => /live/i.test(await page.textContent('#state')) && /websocket/i.test(await page.textContent('#state')),
    { timeoutMs: 10000, what: '#state "live websocket"' });
  await waitFor(async () => (await page.textContent('#board tr[data-ch="AAPL"] td.bid')).trim() !== '', { timeoutMs: 10000, what: 'an AAPL bid' });

  const snapshot = () => page.evaluate(() => [...document.querySelectorAll('#board tbody tr[data-ch]')].map((tr) => ({
    ch: tr.dataset.ch, bid: tr.querySelector('td.bid').textContent, seq: tr.querySelector('td.seq').textContent,
  })));
  const a = await snapshot();
  const d1 = (await page.textContent('#stat-deliveries')).trim();
  const m1 = (await page.textContent('#hdrmeta')).trim();
  await sleep(2000);
  const b = await snapshot();
  const byCh = new Map(a.map((r) => [r.ch, r]));
  const changed = b.filter((r) => byCh.has(r.ch) && (byCh.get(r.ch).bid !== r.bid || byCh.get(r.ch).seq !== r.seq));
  assert.ok(changed.length >= Math.floor(b.length / 2), `quotes changed over 2 s on ${changed.length} of ${b.length} rows`);
  const aaplA = byCh.get('AAPL'), aaplB = b.find((r) => r.ch === 'AAPL');
  assert.ok(Number(aaplB.seq) > Number(aaplA.seq), `AAPL seq grew: ${aaplA.seq} -> ${aaplB.seq}`);

  // the server panel: a rate, and it moves
  const deliveries = [d1];
  for (let i = 0; i < 5; i++) { await sleep(1000); deliveries.push((await page.textContent('#stat-deliveries')).trim()); }
  const m2 = (await page.textContent('#hdrmeta')).trim();
  const filled = deliveries.filter((v) => v && v !== '–');
  assert.ok(filled.length >= 4, `#stat-deliveries filled: ${JSON.stringify(deliveries)}`);
  assert.ok(new Set(filled).size >= 2, `#stat-deliveries changes: ${JSON.stringify(deliveries)}`);
  const total = (m) => Number((/deliveries\s*([\d,]+)/.exec(m) || [])[1]?.replace(/,/g, ''));
  assert.ok(total(m2) > total(m1), `total deliveries in the header grew: "${m1}" -> "${m2}"`);
  for (const id of ['stat-connections', 'stat-ingest', 'stat-p50', 'stat-p99']) {
    const v = (await page.textContent('#' + id)).trim();
    assert.ok(v && v !== '–', `#${id} filled: "${v}"`);
  }

  // A page that falls behind is conflated by the engine (gaps): allowed
  // for a moment on a loaded machine, not as a habit.
  const st = await page.evaluate(() => window.__tw.stats);
  t.diagnostic(`updates ${st.updates}, gaps ${st.gaps}`);
  assert.ok(st.gaps <= st.updates / 100, `gaps ${st.gaps} <= 1% of ${st.updates} updates`);
  assert.deepEqual(pageErrors, []);
});

// Bounds of one 5 s window at the demo rate, met by at least one of
// WINDOWS windows (perf/DASHBOARD.md has the figures behind them). On the
// 2-core test machine the page renders at 50-60 fps when the machine is
// quiet, and at 20-47 fps while other jobs load it: a window spoiled by the
// machine is retried. The fps bound is the one a janky page cannot meet on
// any machine: frames are paced by vsync (16.7 ms at 60 Hz), so a page that
// needs more than one period per frame renders at 30 fps or less however
// idle the machine is (20 ms of extra script per frame measured 16-21 fps;
// 40 ms, 11-13 fps). A task over 150 ms shows as a long animation frame
// blocking more than 100 ms.
const BOUNDS = {
  minRate: 2500,          // updates/s delivered to the page
  minFps: 35,             // rAF callbacks per second
  maxP95: 67,             // ms between frames, 95th percentile: at most 4 vsync periods
  maxLoafBlocking: 100,   // ms, the worst long animation frame's blocking time (its tasks' time past 50 ms)
  maxWorkP99: 25,         // ms of the page's own rendering per frame, 99th percentile (wall time)
};
const WINDOWS = 6;

// Main-thread time from Chromium's own counters (CDP Performance.getMetrics):
// every task, and the script, layout and style parts of it.
async function mainThread(cdp) {
  const m = Object.fromEntries((await cdp.send('Performance.getMetrics')).metrics.map((x) => [x.name, x.value]));
  return { task: m.TaskDuration, script: m.ScriptDuration, layout: m.LayoutDuration, style: m.RecalcStyleDuration };
}

async function frameWindow(page, cdp, ms = 5000) {
  const u0 = await page.evaluate(() => { window.__tw.resetFrames(); return window.__tw.stats.updates; });
  const t0 = Date.now();
  const m0 = await mainThread(cdp);
  await frameWindowStart(page);
  await sleep(ms);
  const f = await frameWindowStats(page);
  const m1 = await mainThread(cdp);
  f.busy = Object.fromEntries(Object.keys(m0).map((k) => [k, (m1[k] - m0[k]) / (f.windowMs / 1000)])); // share of the window
  const u1 = await page.evaluate(() => window.__tw.stats.updates);
  f.rate = (u1 - u0) / ((Date.now() - t0) / 1000);
  f.work = (await page.evaluate(() => window.__tw.frameStats(100000))).work;
  f.misses = [];
  if (!(f.rate >= BOUNDS.minRate)) f.misses.push(`updates delivered ${f.rate.toFixed(0)}/s < ${BOUNDS.minRate}`);
  if (!(f.loafMaxBlocking <= BOUNDS.maxLoafBlocking)) f.misses.push(`a long animation frame blocked ${f.loafMaxBlocking.toFixed(0)} ms > ${BOUNDS.maxLoafBlocking}`);
  if (!(f.p95 <= BOUNDS.maxP95)) f.misses.push(`frame interval p95 ${f.p95.toFixed(1)} ms > ${BOUNDS.maxP95}`);
  if (!(f.work.p99 <= BOUNDS.maxWorkP99)) f.misses.push(`page work p99 ${f.work.p99.toFixed(2)} ms > ${BOUNDS.maxWorkP99}`);
  if (!(f.fps >= BOUNDS.minFps)) f.misses.push(`${f.fps.toFixed(1)} fps < ${BOUNDS.minFps}`);
  return f;
}

test('frame cost at 3,000 updates/s: long animation frames, long tasks, rAF intervals', { timeout: 120000 }, async (t) => {
  const s = scope(t);
  const { page, pageErrors } = await demoPage(t, s, { width: 1400, height: 900 }, { probe: true });
  await waitFor(async () => (await rowCount(page)) >= 50, { timeoutMs: 15000, what: '50 demo rows' });
  await waitFor(async () => /live websocket/i.test(await page.textContent('#state')), { timeoutMs: 10000, what: '#state live websocket' });
  const support = await page.evaluate(() => window.__perf.types);
  assert.ok(support.includes('long-animation-frame'), `Chromium reports long-animation-frame entries (${support.join(', ')})`);
  assert.ok(support.includes('longtask'), 'and longtask entries');
  await sleep(2000); // past the first render of every row and the channel list
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Performance.enable');

  const tries = [];
  let ok = null;
  for (let i = 0; i < WINDOWS && !ok; i++) {
    const f = await frameWindow(page, cdp);
    tries.push(f);
    const pct = (x) => `${(x * 100).toFixed(0)}%`;
    t.diagnostic(`window ${i + 1}: updates ${f.rate.toFixed(0)}/s; ${frameLine(f)}; page work p50 ${f.work.p50.toFixed(2)} ms ` +
      `p99 ${f.work.p99.toFixed(2)} ms max ${f.work.max.toFixed(2)} ms; main thread busy ${pct(f.busy.task)} (script ${pct(f.busy.script)}, ` +
      `layout ${pct(f.busy.layout)}, style ${pct(f.busy.style)})` + (f.misses.length ? `; MISSED: ${f.misses.join('; ')}` : ''));
    if (f.loafWorst.length) t.diagnostic(`  worst long animation frames: ${JSON.stringify(f.loafWorst)}`);
    if (!f.misses.length) ok = f;
  }
  assert.ok(ok, `every one of ${WINDOWS} 5 s windows missed a bound: ${tries.map((f) => f.misses.join(', ')).join(' | ')}`);

  // The probe sees jank when there is some: a 120 ms script in one frame
  // must show as a long animation frame blocking at least 60 ms.
  await frameWindowStart(page);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => { const end = performance.now() + 120; while (performance.now() < end); r(); })));
  const seen = await waitFor(async () => { const f = await frameWindowStats(page); return f.loafMaxBlocking >= 60 && f; },
    { timeoutMs: 5000, what: 'the injected 120 ms frame as a long animation frame' });
  t.diagnostic(`injected 120 ms frame: ${frameLine(seen)}`);
  assert.ok(seen.longtaskMax >= 100, `and as a long task (${seen.longtaskMax} ms)`);
  const st = await page.evaluate(() => window.__tw.stats);
  t.diagnostic(`updates ${st.updates}, gaps ${st.gaps}`);
  assert.ok(st.gaps <= st.updates / 100, `gaps ${st.gaps} <= 1% of ${st.updates} updates`);
  assert.deepEqual(pageErrors, []);
});

test('screenshot of the dashboard under --demo', { timeout: UPDATE_SCREENSHOT ? 150000 : 60000 }, async (t) => {
  const s = scope(t);
  const { page, pageErrors } = await demoPage(t, s, { width: 1400, height: 900 });
  await waitFor(async () => (await rowCount(page)) >= 40, { timeoutMs: 15000, what: 'demo rows' });
  // For the committed picture, a minute of feed so the charts have a history;
  // otherwise just enough to check that a screenshot works.
  await sleep(UPDATE_SCREENSHOT ? 65000 : 3000);
  if (UPDATE_SCREENSHOT) {
    // the committed picture shows the page keeping up: wait (bounded) for a
    // second in which it got the demo's rate, and take it at once
    const good = await waitFor(() => page.evaluate(() => window.__tw.stats.updatesPerSec > 2500), { timeoutMs: 30000, intervalMs: 100, what: 'a second at the demo rate' })
      .catch(() => false);
    if (!good) t.diagnostic('the page did not reach 2,500 updates/s within 30 s; taking the picture anyway');
  }
  let file;
  if (UPDATE_SCREENSHOT) {
    file = path.join(REPO, 'docs', 'dashboard.png');
  } else {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'tickwire-shot-'));
    s.add(() => rmSync(dir, { recursive: true, force: true }));
    file = path.join(dir, 'dashboard.png');
  }
  const before = UPDATE_SCREENSHOT ? null : statSync(path.join(REPO, 'docs', 'dashboard.png')).mtimeMs;
  await page.screenshot({ path: file, timeout: 15000 });
  const size = statSync(file).size;
  t.diagnostic(`wrote ${UPDATE_SCREENSHOT ? path.relative(REPO, file) : file} (${size} bytes)`);
  assert.ok(size > 20000, `a real picture, not a blank page (${size} bytes)`);
  if (!UPDATE_SCREENSHOT) assert.equal(statSync(path.join(REPO, 'docs', 'dashboard.png')).mtimeMs, before, 'docs/dashboard.png untouched');
  assert.deepEqual(pageErrors, []);
});
