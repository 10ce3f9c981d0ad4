// The npm `eventsource` package (a real EventSource under Node) against the
// engine's /sse stream, through a proxy that drops the connection while the
// feed goes on: the EventSource reconnects by itself with Last-Event-ID and
// every seq of every channel arrives exactly once, in order.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventSource } from 'eventsource';
import { fileWatchdog, neverConflating, openFeed, scope, seqProblems, sleep, startEngine, startProxy, waitFor } from './support/harness.js';

fileWatchdog(90000);

test('EventSource resumes with Last-Event-ID across a dropped connection: every seq once, in order', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const engine = await startEngine({ config: neverConflating('E*', 1000) });
  s.add(() => engine.stop());
  const proxy = await startProxy(engine.listenPort);
  s.add(() => proxy.close());

  const channels = ['E1', 'E2', 'E3'];
  const requests = []; // {url, lastEventId}
  const got = Object.fromEntries(channels.map((c) => [c, []]));
  const ids = [];
  let subscribedAcks = 0;
  let errors = 0;
  const es = new EventSource(`${proxy.url}/sse?channels=${channels.join(',')}`, {
    fetch: (input, init) => {
      const h = new Headers(init && init.headers);
      requests.push({ url: String(input), lastEventId: h.get('last-event-id') });
      return fetch(input, init);
    },
  });
  s.add(() => es.close());
  es.addEventListener('subscribed', () => { subscribedAcks++; });
  es.addEventListener('error', () => { errors++; });
  es.addEventListener('update', (ev) => {
    const m = JSON.parse(ev.data);
    assert.equal(m.type, 'update');
    got[m.ch].push(m.seq);
    ids.push(ev.lastEventId);
  });
  await waitFor(() => subscribedAcks >= 1, { timeoutMs: 10000, what: 'the SSE subscribed event' });

  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  feed.run(channels, 300);

  const count = () => channels.reduce((n, c) => n + got[c].length, 0);
  await waitFor(() => count() >= 150, { timeoutMs: 10000, what: '150 updates before the cut' });
  const beforeCut = count();
  proxy.cut();
  await sleep(1500); // the feed goes on; the EventSource retries against a refusing proxy
  proxy.restore();
  await waitFor(() => subscribedAcks >= 2, { timeoutMs: 15000, what: 'the EventSource to reconnect by itself' });
  await waitFor(() => count() > beforeCut + 300, { timeoutMs: 10000, what: 'updates after the reconnect' });
  feed.pause();
  await waitFor(() => channels.every((c) => got[c].length && got[c][got[c].length - 1] === feed.sent[c]), {
    timeoutMs: 10000,
    what: 'the last seq of every channel',
  });

  // Every seq exactly once, in order, from 1 to what the feed sent.
  for (const c of channels) {
    assert.deepEqual(got[c], Array.from({ length: feed.sent[c] }, (_, i) => i + 1), `${c}: seqs 1..${feed.sent[c]}`);
  }
  assert.deepEqual(seqProblems(got, channels), []);

  // It was a real cut of a live stream, healed by the EventSource's own retry
  // carrying the last id it saw.
  assert.ok(errors >= 1, 'the EventSource saw the connection fail');
  assert.ok(requests.length >= 2, `requests: ${JSON.stringify(requests)}`);
  const resumed = requests.slice(1).filter((r) => r.lastEventId);
  assert.ok(resumed.length >= 1, `a reconnect carried Last-Event-ID: ${JSON.stringify(requests)}`);
  const last = resumed[resumed.length - 1].lastEventId;
  assert.ok(ids.includes(last), 'Last-Event-ID is an id the stream sent');
  for (const c of channels) assert.match(last, new RegExp(`(^|,)${c}~\\d+~[^,]+`), `Last-Event-ID names ${c}: ${last}`);
  assert.ok(beforeCut < channels.reduce((n, c) => n + feed.sent[c], 0), 'updates were published during the cut');
  t.diagnostic(`sent ${JSON.stringify(feed.sent)}; ${requests.length} requests, ${proxy.refused} refused during the cut; Last-Event-ID ${last}`);
});
