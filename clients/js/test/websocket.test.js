import test from 'node:test';
import assert from 'node:assert/strict';
import { setup, flush } from './fakes.js';

const E1 = '0123456789abcdef-2';
const E2 = '0123456789abcdef-5';
const upd = (ch, seq, data = { px: seq }) => ({ type: 'update', ch, seq, data });

// An open WebSocket client subscribed to AAPL and MSFT that has seen AAPL 41 and MSFT 7.
async function subscribed(options) {
  const h = await setup(options);
  h.got = [];
  h.tw.subscribe('AAPL', (u) => h.got.push(u));
  h.tw.subscribe('MSFT', (u) => h.got.push(u));
  await flush();
  const ws = h.WebSocket.instances[0];
  ws.open();
  ws.receive({ type: 'subscribed', channels: ['AAPL', 'MSFT'], positions: { AAPL: { seq: 41, epoch: E1 }, MSFT: { seq: 7, epoch: E2 } } });
  ws.receive(upd('AAPL', 41));
  ws.receive(upd('MSFT', 7));
  return h;
}

test('subscribes made in the same tick go out as one message', async () => {
  const { tw, WebSocket } = await setup();
  WebSocket.instances[0].open();
  tw.subscribe('AAPL', () => {});
  tw.subscribe('MSFT', () => {});
  tw.subscribe('AAPL', () => {}); // a second handler: no second subscribe
  await flush();
  assert.deepEqual(WebSocket.instances[0].sent, [{ op: 'subscribe', channels: ['AAPL', 'MSFT'] }]);
});

test('the first open subscribes everything; snapshots are delivered with their seq', async () => {
  const { tw, got, WebSocket, of } = await subscribed();
  assert.match(WebSocket.instances[0].url, /^ws:\/\/tw\.test:8080\/ws\?batch=1$/);
  assert.deepEqual(WebSocket.instances[0].sent, [{ op: 'subscribe', channels: ['AAPL', 'MSFT'] }]);
  assert.deepEqual(got, [{ ch: 'AAPL', seq: 41, data: { px: 41 } }, { ch: 'MSFT', seq: 7, data: { px: 7 } }]);
  assert.deepEqual(tw.positions(), { AAPL: { seq: 41, epoch: E1 }, MSFT: { seq: 7, epoch: E2 } });
  assert.deepEqual(of('state').map((s) => s.state), ['connecting', 'open']);
  assert.equal(tw.state, 'open');
  assert.equal(tw.transport, 'websocket');
});

test('a reconnect resubscribes with since = the last seq and epoch seen', async () => {
  const { clock, WebSocket, of } = await subscribed();
  WebSocket.instances[0].serverClose(1012, 'server restarting');
  await clock.advance(of('state').at(-1).retryInMs);
  const ws = WebSocket.instances[1];
  ws.open();
  assert.deepEqual(ws.sent, [
    { op: 'subscribe', channels: ['AAPL', 'MSFT'], since: { AAPL: { seq: 41, epoch: E1 }, MSFT: { seq: 7, epoch: E2 } } },
  ]);
});

test('dedup at the seam drops seqs already seen; a jump is reported as gap and still delivered', async () => {
  const { tw, got, clock, WebSocket, of } = await subscribed();
  WebSocket.instances[0].fail();
  await clock.advance(of('state').at(-1).retryInMs);
  const ws = WebSocket.instances[1];
  ws.open();
  got.length = 0;
  ws.receive({ type: 'subscribed', channels: ['AAPL', 'MSFT'], positions: { AAPL: { seq: 43, epoch: E1 }, MSFT: { seq: 7, epoch: E2 } } });
  for (const s of [40, 41, 42, 43, 43, 46]) ws.receive(upd('AAPL', s));
  assert.deepEqual(got.map((u) => u.seq), [42, 43, 46]);
  assert.deepEqual(of('gap'), [{ ch: 'AAPL', expected: 44, got: 46 }]);
  assert.deepEqual(tw.positions().AAPL, { seq: 46, epoch: E1 });
});

test('resync adopts the new epoch and accepts the snapshot even with a lower seq', async () => {
  const { tw, got, clock, WebSocket, of } = await subscribed();
  WebSocket.instances[0].serverClose(1001, 'going away');
  await clock.advance(of('state').at(-1).retryInMs);
  const ws = WebSocket.instances[1];
  ws.open();
  got.length = 0;
  ws.receive({ type: 'subscribed', channels: ['AAPL', 'MSFT'], positions: { AAPL: { seq: 3, epoch: 'ffff-1' }, MSFT: { seq: 7, epoch: E2 } } });
  ws.receive({ type: 'resync', ch: 'AAPL', epoch: 'ffff-1', reason: 'epoch changed' });
  ws.receive(upd('AAPL', 3));
  ws.receive(upd('AAPL', 4));
  assert.deepEqual(of('resync'), [{ ch: 'AAPL', epoch: 'ffff-1', reason: 'epoch changed' }]);
  assert.deepEqual(got.map((u) => u.seq), [3, 4]);
  assert.deepEqual(of('gap'), []);
  assert.deepEqual(tw.positions().AAPL, { seq: 4, epoch: 'ffff-1' });
});

test('pings every pingIntervalMs; reconnects when nothing arrived for watchdogMs', async () => {
  const { clock, WebSocket, of } = await subscribed({ pingIntervalMs: 1000, watchdogMs: 2500 });
  const ws = WebSocket.instances[0];
  await clock.advance(1000);
  assert.deepEqual(ws.sent.at(-1), { op: 'ping' });
  ws.receive({ type: 'pong' }); // t = 1000: the watchdog now waits until 3500
  await clock.advance(2000);
  assert.equal(ws.sent.filter((m) => m.op === 'ping').length, 3);
  assert.equal(ws.closedWith, null, 'alive: a pong came 2000 ms ago');
  await clock.advance(500);
  assert.equal(ws.closedWith, 1000, 'closed by the watchdog');
  assert.equal(of('state').at(-1).state, 'reconnecting');
  await clock.advance(of('state').at(-1).retryInMs);
  assert.equal(WebSocket.instances.length, 2);
});

test('the default watchdog is 2.5 ping intervals', async () => {
  const { clock, WebSocket } = await subscribed({ pingIntervalMs: 15000 });
  await clock.advance(37499);
  assert.equal(WebSocket.instances[0].closedWith, null);
  await clock.advance(1);
  assert.equal(WebSocket.instances[0].closedWith, 1000);
});

test('token_expiring is answered with op auth and getToken\'s new token', async () => {
  let n = 0;
  const { WebSocket } = await setup({ getToken: async () => `jwt-${++n}` });
  const ws = WebSocket.instances[0];
  assert.equal(ws.url, 'ws://tw.test:8080/ws?token=jwt-1&batch=1');
  ws.open();
  ws.receive({ type: 'authenticated', sub: 'u1', exp: 100 });
  ws.receive({ type: 'token_expiring', exp: 100 });
  await flush();
  assert.deepEqual(ws.sent.at(-1), { op: 'auth', token: 'jwt-2' });
});

test('unsubscribe sends op unsubscribe; the returned off() drops one handler', async () => {
  const { tw, WebSocket } = await setup();
  const ws = WebSocket.instances[0];
  ws.open();
  const a = [];
  const b = [];
  const offA = tw.subscribe('AAPL', (u) => a.push(u.seq));
  const offB = tw.subscribe('AAPL', (u) => b.push(u.seq));
  await flush();
  ws.receive(upd('AAPL', 1));
  offA();
  ws.receive(upd('AAPL', 2));
  assert.deepEqual([a, b], [[1], [1, 2]]);
  offB();
  await flush();
  assert.deepEqual(ws.sent.at(-1), { op: 'unsubscribe', channels: ['AAPL'] });
  ws.receive(upd('AAPL', 3)); // late: ignored
  assert.deepEqual(b, [1, 2]);
  assert.deepEqual(tw.positions(), {});
});

test('a server unsubscribe with reason forbidden is an error and drops the channel', async () => {
  const { tw, got, WebSocket, of, clock } = await subscribed();
  WebSocket.instances[0].receive({ type: 'unsubscribed', channels: ['MSFT'], reason: 'forbidden' });
  assert.deepEqual(of('error').at(-1).channels, ['MSFT']);
  assert.equal(of('error').at(-1).code, 'forbidden');
  WebSocket.instances[0].receive(upd('MSFT', 8));
  assert.equal(got.filter((u) => u.ch === 'MSFT').length, 1);
  assert.deepEqual(Object.keys(tw.positions()), ['AAPL']);
  WebSocket.instances[0].serverClose(1012);
  await clock.advance(of('state').at(-1).retryInMs);
  WebSocket.instances[1].open();
  assert.deepEqual(WebSocket.instances[1].sent[0].channels, ['AAPL']);
});

test('server errors are surfaced; the connection stays open', async () => {
  const { tw, WebSocket, of } = await subscribed();
  WebSocket.instances[0].receive({ type: 'error', code: 'rate_limited', message: 'slow down' });
  assert.deepEqual(of('error').at(-1), { code: 'rate_limited', message: 'slow down' });
  assert.equal(tw.state, 'open');
});

test('a throwing user callback is reported as error and does not stop delivery', async () => {
  const { tw, WebSocket, of } = await setup();
  const ws = WebSocket.instances[0];
  ws.open();
  const seen = [];
  tw.subscribe('AAPL', () => {
    throw new Error('boom');
  });
  tw.subscribe('AAPL', (u) => seen.push(u.seq));
  tw.on('message', () => {
    throw new Error('listener boom');
  });
  await flush();
  ws.receive(upd('AAPL', 1));
  ws.receive(upd('AAPL', 2));
  assert.deepEqual(seen, [1, 2]);
  assert.ok(of('error').every((e) => e.code === 'callback'));
  assert.equal(of('error').length, 4);
  assert.equal(tw.state, 'open');
});

test('every raw message is emitted as message', async () => {
  const { tw, WebSocket } = await setup();
  const raw = [];
  tw.on('message', (m) => raw.push(m.type));
  WebSocket.instances[0].open();
  WebSocket.instances[0].receive({ type: 'pong' });
  WebSocket.instances[0].receive(upd('X', 1));
  assert.deepEqual(raw, ['pong', 'update']);
});

test('close() is final: socket closed, no timers left, no reconnect', async () => {
  const { tw, clock, WebSocket, of } = await subscribed();
  tw.close();
  assert.equal(WebSocket.instances[0].closedWith, 1000);
  assert.equal(tw.state, 'closed');
  assert.equal(of('state').at(-1).state, 'closed');
  assert.equal(clock.pending(), 0);
  await clock.advance(120000);
  assert.equal(WebSocket.instances.length, 1);
});

test('close() while waiting to reconnect cancels the retry', async () => {
  const { tw, clock, WebSocket } = await setup();
  WebSocket.instances[0].fail();
  tw.close();
  assert.equal(clock.pending(), 0);
  await clock.advance(60000);
  assert.equal(WebSocket.instances.length, 1);
});

test('browser online and a long hidden tab reconnect at once', async () => {
  const listeners = {};
  const target = (name) => ({
    addEventListener: (t, fn) => (listeners[`${name}:${t}`] = fn),
    removeEventListener: (t) => delete listeners[`${name}:${t}`],
  });
  const document = { ...target('doc'), visibilityState: 'visible' };
  let t = 0; // wall clock apart from the timers: a hidden tab's timers are throttled
  const { tw, WebSocket } = await setup({ window: target('win'), document, now: () => t });
  WebSocket.instances[0].open();
  listeners['win:online']();
  await flush();
  assert.equal(WebSocket.instances.length, 2);
  assert.equal(WebSocket.instances[0].closedWith, 1000);

  WebSocket.instances[1].open();
  document.visibilityState = 'hidden';
  listeners['doc:visibilitychange']();
  t += 1000;
  document.visibilityState = 'visible';
  listeners['doc:visibilitychange']();
  await flush();
  assert.equal(WebSocket.instances.length, 2, 'hidden briefly: keep the connection');

  document.visibilityState = 'hidden';
  listeners['doc:visibilitychange']();
  t += 60000;
  document.visibilityState = 'visible';
  listeners['doc:visibilitychange']();
  await flush();
  assert.equal(WebSocket.instances.length, 3);
  tw.close();
  assert.deepEqual(Object.keys(listeners), []);
});

test('an error without a close (Node 22 when the handshake fails) still reconnects; with a close, its code is kept', async () => {
  const { clock, WebSocket, of } = await subscribed();
  WebSocket.instances[0].fail(); // a drop of an open connection: error, then close 1006
  assert.equal(of('state').at(-1).code, 1006, 'the close code, not the error, decided');
  await clock.advance(of('state').at(-1).retryInMs);
  assert.equal(clock.pending(), 0, 'no leftover timer from the error');
  const ws = WebSocket.instances[1];
  ws.failWithoutClose();
  await clock.advance(0);
  const s = of('state').at(-1);
  assert.equal(s.state, 'reconnecting');
  assert.equal(s.reason, 'websocket error');
  assert.equal(ws.closedWith, 1000, 'the socket is closed by the client');
  await clock.advance(s.retryInMs);
  assert.equal(WebSocket.instances.length, 3, 'and a new attempt is made');
  WebSocket.instances[2].open();
  assert.deepEqual(WebSocket.instances[2].sent[0].since, { AAPL: { seq: 41, epoch: E1 }, MSFT: { seq: 7, epoch: E2 } });
});

test('a batched message is one server message per line, in order; a bad line is an error and the rest go on', async () => {
  const { tw, got, WebSocket, of } = await subscribed();
  const ws = WebSocket.instances[0];
  ws.receiveBatch([upd('AAPL', 42), upd('MSFT', 8), upd('AAPL', 43)]);
  ws.onmessage({ data: `${JSON.stringify(upd('MSFT', 9))}\nnot json\n${JSON.stringify(upd('MSFT', 10))}` });
  assert.deepEqual(got.slice(2).map((u) => `${u.ch}:${u.seq}`), ['AAPL:42', 'MSFT:8', 'AAPL:43', 'MSFT:9', 'MSFT:10']);
  assert.deepEqual(of('error').map((e) => e.code), ['bad_message']);
  assert.deepEqual(of('gap'), []);
  assert.deepEqual(tw.positions().AAPL, { seq: 43, epoch: E1 });
});

test('batch: false asks for one message per WebSocket message', async () => {
  const { WebSocket } = await setup({ batch: false });
  assert.equal(WebSocket.instances[0].url, 'ws://tw.test:8080/ws');
});
