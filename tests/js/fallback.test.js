// A proxy that refuses WebSocket upgrades (403): the dashboard falls back to
// SSE and gets every update; with /sse refused too, a page moves on to
// long-polling, still without a gap or a duplicate.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileWatchdog, neverConflating, openFeed, scope, seqProblems, startEngine, startProxy, waitFor } from './support/harness.js';
import { eventsOf, lastSeqs, openBrowserPage, seqsOf, stateText } from './support/page.js';

fileWatchdog(100000);

test('WebSocket refused: SSE fallback; SSE refused too: long-polling; every update once', { timeout: 75000 }, async (t) => {
  const s = scope(t);
  const engine = await startEngine({ config: neverConflating('F*', 2000) });
  s.add(() => engine.stop());
  const proxy = await startProxy(engine.listenPort);
  s.add(() => proxy.close());
  proxy.blockWebSocket = true;
  const channels = ['F1', 'F2', 'F3'];
  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  feed.run(channels, 150);

  const { page, problems } = await openBrowserPage(s);
  const t0 = Date.now();
  await page.goto(`${proxy.url}/?ch=${channels.join(',')}`, { timeout: 15000 });
  await waitFor(async () => /live sse/i.test(await stateText(page)), { timeoutMs: 20000, what: '#state live sse' });
  const sseAfterMs = Date.now() - t0;
  await waitFor(async () => { const l = await lastSeqs(page); return channels.every((c) => l[c] > 100); }, { timeoutMs: 10000, what: 'updates on SSE' });
  const onSse = await lastSeqs(page);
  assert.ok(proxy.log.some((r) => r.upgrade && r.blocked), 'WebSocket upgrades were refused');
  assert.ok(!proxy.log.some((r) => r.upgrade && !r.blocked), 'no WebSocket upgrade got through');

  // A page that got SSE keeps it (a transport that worked is not left for
  // network trouble). A new page behind a proxy that refuses both
  // WebSocket and SSE walks on to long-polling.
  proxy.blockPaths.add('/sse');
  const second = await openBrowserPage(s);
  const t1 = Date.now();
  await second.page.goto(`${proxy.url}/?ch=${channels.join(',')}`, { timeout: 15000 });
  await waitFor(async () => /live polling/i.test(await stateText(second.page)), { timeoutMs: 30000, what: '#state live polling' });
  const pollAfterMs = Date.now() - t1;
  const firstOnPoll = await lastSeqs(second.page);
  await waitFor(async () => { const l = await lastSeqs(second.page); return channels.every((c) => l[c] > firstOnPoll[c] + 100); }, { timeoutMs: 15000, what: 'updates on polling' });
  feed.pause();
  for (const p of [page, second.page]) {
    await waitFor(async () => { const l = await lastSeqs(p); return channels.every((c) => l[c] === feed.sent[c]); }, { timeoutMs: 35000, what: 'the last seq of every channel' });
    const seqs = await seqsOf(p);
    assert.deepEqual(seqProblems(seqs, channels), [], 'strictly +1 steps on the fallback');
    const ev = await eventsOf(p);
    assert.deepEqual(ev.gaps, []);
  }
  assert.match(await stateText(page), /live sse/i, 'the first page stayed on SSE');
  const ev = await eventsOf(second.page);
  assert.ok(proxy.log.some((r) => r.path === '/sse' && r.blocked), '/sse was refused');
  assert.ok(proxy.log.some((r) => r.path === '/poll' && !r.blocked), '/poll was used');
  assert.deepEqual(problems, []);
  assert.deepEqual(second.problems, []);
  const counts = {};
  for (const r of proxy.log) { const k = `${r.upgrade ? 'ws' : r.path}${r.blocked ? ' 403' : ''}`; counts[k] = (counts[k] || 0) + 1; }
  t.diagnostic(`live on SSE ${sseAfterMs} ms after load; a second page on polling ${pollAfterMs} ms after its load with /sse refused; sent ${JSON.stringify(feed.sent)}; requests ${JSON.stringify(counts)}`);
  t.diagnostic('states: ' + ev.states.map((x) => `${x.state}/${x.transport}`).join(' '));
});
