// The engine is SIGKILLed mid-stream and started again on the same ports:
// the dashboard reconnects by itself, reports a resync (new epoch) and shows
// live updates of the new engine.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileWatchdog, openFeed, restartEngine, scope, sleep, startEngine, waitFor } from './support/harness.js';
import { eventsOf, lastSeqs, openBrowserPage, seqsOf, stateText } from './support/page.js';

fileWatchdog(100000);

test('dashboard survives an engine SIGKILL and restart on the same port: resync, then live again', { timeout: 75000 }, async (t) => {
  const s = scope(t);
  let engine = await startEngine();
  s.add(() => engine.stop());
  const channels = ['R1', 'R2'];
  const feed = openFeed(engine.ingestPort, { reconnect: true });
  s.add(() => feed.close());
  await feed.ready;
  feed.run(channels, 100);

  const { page, problems } = await openBrowserPage(s);
  await page.goto(`${engine.url}/?ch=${channels.join(',')}`, { timeout: 15000 });
  await waitFor(async () => /live websocket/i.test(await stateText(page)), { timeoutMs: 15000, what: '#state live websocket' });
  await waitFor(async () => { const l = await lastSeqs(page); return channels.every((c) => l[c] > 60); }, { timeoutMs: 10000, what: 'updates before the kill' });
  const before = await lastSeqs(page);

  const killedAt = Date.now();
  engine = await restartEngine(engine); // SIGKILL, then the same arguments on the same ports
  const restartedMs = Date.now() - killedAt;

  await waitFor(async () => { const ev = await eventsOf(page); return channels.every((c) => ev.resyncs.some((r) => r.ch === c)); },
    { timeoutMs: 25000, what: 'a resync of every channel' });
  await waitFor(async () => /live/i.test(await stateText(page)), { timeoutMs: 10000, what: 'the page to be live again' });
  const ev = await eventsOf(page);
  const liveAgainMs = Math.max(...ev.states.filter((x) => x.at > killedAt && x.state === 'open').map((x) => x.at)) - killedAt;

  // live updates of the new engine: after the resync point, seqs grow again
  await sleep(1500);
  const seqs = await seqsOf(page);
  for (const c of channels) {
    const r = ev.resyncs.filter((x) => x.ch === c).pop();
    const after = seqs[c].slice(r.index);
    assert.ok(after.length >= 20, `${c}: ${after.length} updates after the resync`);
    assert.ok(after[0] < before[c], `${c}: the new engine's stream starts over (${after[0]} after ${before[c]})`);
    for (let i = 1; i < after.length; i++) assert.equal(after[i], after[i - 1] + 1, `${c}: +1 steps after the resync`);
    assert.ok(r.epoch, `${c}: the resync carries the new epoch`);
  }
  const notices = await page.textContent('#notices');
  assert.match(notices, /resync/i, '#notices mentions the resync');
  assert.deepEqual(problems, []);
  t.diagnostic(`restart took ${restartedMs} ms; page live again ${liveAgainMs} ms after the kill on ${(await stateText(page))}; ` +
    `resyncs ${JSON.stringify(ev.resyncs.map((r) => ({ ch: r.ch, reason: r.reason })))}`);
});
