// The dashboard under the built-in demo feed, in a real Chromium: rows
// appear, quotes change, the server panel moves, frame times stay sane; and
// a screenshot for docs/dashboard.png.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { REPO, fileWatchdog, launchBrowser, scope, sleep, startEngine, waitFor } from './support/harness.js';

fileWatchdog(150000);

async function demoPage(t, s, viewport = { width: 1400, height: 900 }) {
  const engine = await startEngine({ args: ['--demo', '--demo-rate', '3000'] });
  s.add(() => engine.stop());
  const browser = await launchBrowser();
  s.add(() => browser.close());
  const page = await browser.newPage({ viewport });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) pageErrors.push('console: ' + m.text()); });
  page.on('response', (r) => { if (r.status() >= 400) pageErrors.push(`HTTP ${r.status()} ${new URL(r.url()).pathname}`); });
  await page.goto(engine.url + '/', { timeout: 15000 });
  return { engine, browser, page, pageErrors };
}

const rowCount = (page) => page.locator('#board tbody tr[data-ch]').count();

test('dashboard under --demo: rows, changing quotes, moving server panel, frame times', { timeout: 60000 }, async (t) => {
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

  // frame time at the demo's 3000 updates/s, over 5 s
  await page.evaluate(() => window.__tw.resetFrames());
  const u0 = await page.evaluate(() => window.__tw.stats.updates);
  await sleep(5000);
  const f = await page.evaluate(() => window.__tw.frameStats(100000));
  const u1 = await page.evaluate(() => window.__tw.stats.updates);
  const rate = (u1 - u0) / 5;
  t.diagnostic(`frames n=${f.n} p50=${f.p50.toFixed(2)}ms p99=${f.p99.toFixed(2)}ms max=${f.max.toFixed(2)}ms; ` +
    `work p50=${f.work.p50.toFixed(3)}ms p99=${f.work.p99.toFixed(3)}ms max=${f.work.max.toFixed(3)}ms; updates ${rate.toFixed(0)}/s`);
  assert.ok(f.n >= 100, `frames recorded: ${f.n}`);
  assert.ok(f.p99 < 100, `frame p99 ${f.p99} ms < 100 ms`);
  assert.ok(f.work.p99 < 16, `page work p99 ${f.work.p99} ms < 16 ms`);
  assert.ok(rate > 1000, `updates delivered to the page ${rate}/s`);
  const st = await page.evaluate(() => window.__tw.stats);
  assert.equal(st.gaps, 0, 'no gaps at the demo rate');
  assert.deepEqual(pageErrors, []);
});

test('screenshot of the dashboard under --demo (docs/dashboard.png)', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const { page, pageErrors } = await demoPage(t, s, { width: 1400, height: 900 });
  await waitFor(async () => (await rowCount(page)) >= 40, { timeoutMs: 15000, what: 'demo rows' });
  await sleep(3000);
  const file = path.join(REPO, 'docs', 'dashboard.png');
  await page.screenshot({ path: file, timeout: 15000 });
  t.diagnostic(`wrote ${path.relative(REPO, file)}`);
  assert.deepEqual(pageErrors, []);
});
