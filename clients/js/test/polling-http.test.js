// The polling transport with the platform's own fetch and timers against a
// small in-process HTTP server that plays the engine's /poll contract.
import test from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { connect } from '../tickwire.js';

test('long-poll over real HTTP: snapshots, then since=next, token in the query', async () => {
  const seen = [];
  const server = http.createServer((req, res) => {
    const q = new URL(req.url, 'http://x').searchParams;
    seen.push({ path: req.url.split('?')[0], channels: q.get('channels'), since: q.get('since'), token: q.get('token') });
    const n = seen.length;
    const body = n === 1
      ? { messages: [{ type: 'update', ch: 'AAPL', seq: 41, data: { bid: 1 } }], next: 'AAPL~41~ab-1' }
      : { messages: [{ type: 'update', ch: 'AAPL', seq: 41 + n - 1, data: { bid: n } }], next: `AAPL~${41 + n - 1}~ab-1` };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  const got = [];
  const tw = connect(`ws://127.0.0.1:${port}`, { transports: ['polling'], token: 'a.b.c' });
  await new Promise((resolve) => {
    tw.subscribe('AAPL', (u) => {
      got.push(u.seq);
      if (got.length === 3) resolve();
    });
  });
  tw.close();
  await new Promise((r) => server.close(r));
  assert.deepEqual(got, [41, 42, 43]);
  assert.deepEqual(seen[0], { path: '/poll', channels: 'AAPL', since: null, token: 'a.b.c' });
  assert.equal(seen[1].since, 'AAPL~41~ab-1');
  assert.equal(seen[2].since, 'AAPL~42~ab-1');
  assert.deepEqual(tw.positions(), { AAPL: { seq: 43, epoch: 'ab-1' } });
});
