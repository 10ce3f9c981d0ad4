// The dashboard behind a proxy that drops every connection and refuses new
// ones for 3 s while the feed goes on: the page reconnects by itself and its
// seqs show no gap and no duplicate.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { engineStats, fileWatchdog, neverConflating, openFeed, scope, seqProblems, sleep, startEngine, startProxy, waitFor } from './support/harness.js';
import { eventsOf, lastSeqs, openBrowserPage, seqsOf, stateText } from './support/page.js';

fileWatchdog(100000);

test('dashboard reconnects by itself after a 3 s cut; every seq once, in order', { timeout: 75000 }, async (t) => {
  const s = scope(t);
  const engine = await startEngine({ config: neverConflating('C*', 2000) });
  s.add(() => engine.stop());
  const proxy = await startProxy(engine.listenPort);
  s.add(() => proxy.close());
  const channels = ['C1', 'C2', 'C3', 'C4'];
  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  feed.run(channels, 200);

  const { page, problems } = await openBrowserPage(s);
  await page.goto(`${proxy.url}/?ch=${channels.join(',')}`, { timeout: 15000 });
  await waitFor(async () => /live websocket/i.test(await stateText(page)), { timeoutMs: 15000, what: '#state live websocket' });
  await waitFor(async () => { const l = await lastSeqs(page); return channels.every((c) => l[c] > 50); }, { timeoutMs: 10000, what: 'updates before the cut' });

  const cutAt = Date.now();
  proxy.cut();
  await waitFor(async () => /reconnecting/i.test(await stateText(page)), { timeoutMs: 5000, what: '#state reconnecting' });
  const during = await lastSeqs(page);
  await sleep(3000);
  proxy.restore();
  const reconnected = await waitFor(async () => {
    const ev = await eventsOf(page);
    return ev.states.some((x) => x.at > cutAt && x.state === 'open') && /live/i.test(await stateText(page)) && Date.now();
  }, { timeoutMs: 20000, what: 'the page to be live again' });
  const after = await eventsOf(page);
  t.diagnostic('states after the cut: ' + after.states.filter((x) => x.at >= cutAt).map((x) => `${x.state}/${x.transport}${x.retryInMs != null ? '(' + x.retryInMs + 'ms)' : ''}`).join(' '));
  const stateAfter = await stateText(page);
  t.diagnostic('#state: ' + stateAfter);
  await waitFor(async () => { const l = await lastSeqs(page); return channels.every((c) => l[c] > during[c] + 100); }, { timeoutMs: 10000, what: 'updates after the reconnect' });
  feed.pause();
  await waitFor(async () => { const l = await lastSeqs(page); return channels.every((c) => l[c] === feed.sent[c]); }, { timeoutMs: 10000, what: 'the last seq of every channel' });

  const seqs = await seqsOf(page);
  const ev = await eventsOf(page);
  const stats = await engineStats(engine);
  t.diagnostic(`engine: ${stats.deliveries} deliveries, ${stats.conflated} conflated; seqs at the cut ${JSON.stringify(during)}; ` +
    `gap events ${JSON.stringify(ev.gaps.slice(0, 8))}`);
  assert.deepEqual(seqProblems(seqs, channels), [], 'strictly +1 steps');
  assert.deepEqual(ev.gaps, [], 'no gap events');
  assert.deepEqual(ev.resyncs, [], 'no resync events');
  assert.ok(proxy.refused >= 1, `the page retried during the cut (${proxy.refused} refused)`);
  assert.deepEqual(problems, []);
  // clients/js/README.md, Fallback: a transport that has opened once is
  // kept, also through failed reconnects during a cut.
  assert.match(stateAfter, /live websocket/i, 'back on WebSocket after the cut');
  t.diagnostic(`sent ${JSON.stringify(feed.sent)}; live again ${reconnected - cutAt} ms after the cut (3000 ms of refusal, ${proxy.refused} refused connects); ` +
    `first seqs ${JSON.stringify(Object.fromEntries(channels.map((c) => [c, seqs[c][0]])))}`);
});
