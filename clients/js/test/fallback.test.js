import test from 'node:test';
import assert from 'node:assert/strict';
import { setup, flush } from './fakes.js';

const E1 = '0123456789abcdef-2';
const E2 = '0123456789abcdef-5';
const upd = (ch, seq) => ({ type: 'update', ch, seq, data: { px: seq } });
const sinceParam = (url) => new URL(url).searchParams.get('since');

async function retry(h) {
  await h.clock.advance(h.of('state').at(-1).retryInMs);
}

test('fallback order websocket -> sse -> polling after two failed opens each', async () => {
  const h = await setup();
  h.tw.subscribe('AAPL', () => {});
  await flush();
  h.WebSocket.instances[0].fail();
  await retry(h);
  h.WebSocket.instances[1].fail();
  await retry(h);
  assert.equal(h.WebSocket.instances.length, 2);
  assert.equal(h.EventSource.instances.length, 1);
  assert.equal(h.tw.transport, 'sse');
  h.EventSource.instances[0].fail();
  await retry(h);
  h.EventSource.instances[1].fail();
  assert.equal(h.EventSource.instances[1].closed, true);
  await retry(h);
  assert.equal(h.fetch.calls.length, 1);
  assert.equal(h.tw.transport, 'polling');
  const seq = h.of('state').map((s) => `${s.state}:${s.transport}`);
  assert.deepEqual(seq, [
    'connecting:websocket', 'reconnecting:websocket', 'connecting:websocket', 'reconnecting:websocket',
    'connecting:sse', 'reconnecting:sse', 'connecting:sse', 'reconnecting:sse',
    'connecting:polling',
  ]);
});

test('one failed open then success does not fall back; a transport that worked is kept', async () => {
  const h = await setup({ transports: ['websocket', 'sse'] });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  h.WebSocket.instances[0].fail();
  await retry(h);
  h.WebSocket.instances[1].open();
  h.WebSocket.instances[1].fail(); // was open: a network drop
  // Failed opens of a transport that has worked are network trouble (a
  // cut, a server restart), not a blocked transport: it stays.
  for (let i = 2; i < 6; i++) {
    await retry(h);
    h.WebSocket.instances[i].fail();
  }
  await retry(h);
  assert.equal(h.WebSocket.instances.length, 7);
  assert.equal(h.EventSource.instances.length, 0, 'no fallback after WebSocket had worked');
  assert.equal(h.tw.transport, 'websocket');
});

test('a fallback that worked is kept when it drops', async () => {
  const h = await setup({ transports: ['websocket', 'sse'] });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  h.WebSocket.instances[0].fail();
  await retry(h);
  h.WebSocket.instances[1].fail();
  await retry(h);
  const es = h.EventSource.instances[0];
  es.open();
  es.fail(); // drops after having worked: reconnect on SSE
  await retry(h);
  assert.equal(h.EventSource.instances.length, 2);
  h.EventSource.instances[1].fail();
  await retry(h);
  h.EventSource.instances[2].fail();
  await retry(h);
  assert.equal(h.EventSource.instances.length, 4);
  assert.equal(h.WebSocket.instances.length, 2);
});

test('a missing transport implementation counts as a failed open', async () => {
  const h = await setup({ WebSocket: null, EventSource: undefined });
  globalThis.WebSocket === undefined || assert.fail('test expects no global WebSocket');
  h.tw.subscribe('AAPL', () => {});
  await flush();
  assert.equal(h.of('error')[0].code, 'transport');
  for (let i = 0; i < 4; i++) await retry(h);
  assert.equal(h.tw.transport, 'polling');
  assert.equal(h.fetch.calls.length, 1);
});

test('SSE: channels, token and since built from the positions seen', async () => {
  let n = 0;
  const h = await setup({ transports: ['sse'], getToken: async () => `t${++n}` }, 'https://tw.test');
  const got = [];
  h.tw.subscribe('AAPL', (u) => got.push(u));
  h.tw.subscribe('MSFT', (u) => got.push(u));
  await flush();
  // no stream while there was no channel; then one for both subscribes
  assert.equal(h.EventSource.instances.length, 1);
  const es = h.EventSource.instances[0];
  const u0 = new URL(es.url);
  assert.equal(`${u0.origin}${u0.pathname}`, 'https://tw.test/sse');
  assert.equal(u0.searchParams.get('channels'), 'AAPL,MSFT');
  assert.equal(u0.searchParams.get('token'), 't2'); // getToken runs on every open
  assert.equal(sinceParam(es.url), null);
  es.open();
  es.emit('subscribed', { type: 'subscribed', channels: ['AAPL', 'MSFT'], positions: { AAPL: { seq: 41, epoch: E1 }, MSFT: { seq: 7, epoch: E2 } } });
  es.emit('update', upd('AAPL', 41), `AAPL~41~${E1}`);
  es.emit('update', upd('MSFT', 7), `AAPL~41~${E1},MSFT~7~${E2}`);
  es.emit('update', upd('MSFT', 7)); // duplicate
  assert.deepEqual(got.map((u) => `${u.ch}${u.seq}`), ['AAPL41', 'MSFT7']);
  // a server error event carries data; it is not a connection failure
  es.emit('error', { type: 'error', code: 'forbidden', message: 'no', channels: ['MSFT'] });
  assert.equal(h.tw.state, 'open');
  assert.deepEqual(h.of('error').at(-1), { code: 'forbidden', message: 'no', channels: ['MSFT'] });
  await flush();
  // dropping MSFT changes the channel set: a new stream for AAPL resumes at 41
  const es2 = h.EventSource.instances[1];
  assert.equal(es.closed, true);
  assert.equal(new URL(es2.url).searchParams.get('channels'), 'AAPL');
  assert.equal(sinceParam(es2.url), `AAPL~41~${E1}`);
  assert.ok(es2.url.includes(`since=${encodeURIComponent(`AAPL~41~${E1}`)}`), 'since is URL-encoded');
  es2.open();
  es2.emit('update', upd('AAPL', 42));
  es2.fail(); // connection failure: our own reconnect with a fresh token
  assert.equal(es2.closed, true);
  await retry(h);
  const es3 = h.EventSource.instances[2];
  assert.equal(sinceParam(es3.url), `AAPL~42~${E1}`);
  assert.equal(new URL(es3.url).searchParams.get('token'), 't4');
});

test('SSE: subscribing a new channel reopens with since for the known ones', async () => {
  const h = await setup({ transports: ['sse'] });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  const es = h.EventSource.instances[0];
  es.open();
  es.emit('update', upd('AAPL', 5), `AAPL~5~${E1}`); // epoch learned from the event id
  h.tw.subscribe('MSFT', () => {});
  h.tw.subscribe('NVDA', () => {});
  await flush();
  assert.equal(h.EventSource.instances.length, 2, 'one reopen for the batch');
  const u = new URL(h.EventSource.instances[1].url);
  assert.equal(u.searchParams.get('channels'), 'AAPL,MSFT,NVDA');
  assert.equal(u.searchParams.get('since'), `AAPL~5~${E1}`);
});

test('SSE: token_expiring reopens the stream with a fresh token', async () => {
  let n = 0;
  const h = await setup({ transports: ['sse'], getToken: async () => `t${++n}` });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  const es = h.EventSource.instances[0];
  es.open();
  es.emit('update', upd('AAPL', 9), `AAPL~9~${E1}`);
  es.emit('token_expiring', { type: 'token_expiring', exp: 1000 });
  await flush();
  const u = new URL(h.EventSource.instances[1].url);
  // t1 for the empty start, t2 for the AAPL stream, t3 from token_expiring
  assert.equal(u.searchParams.get('token'), 't3');
  assert.equal(u.searchParams.get('since'), `AAPL~9~${E1}`);
});

test('SSE: the engine\'s close event is a close: 1008 reported, reconnect after backoff', async () => {
  const h = await setup({ transports: ['sse'] });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  const es = h.EventSource.instances[0];
  es.open();
  es.emit('update', upd('AAPL', 3), `AAPL~3~${E1}`);
  es.emit('close', { type: 'close', code: 1008, reason: 'slow consumer' });
  assert.equal(es.closed, true);
  assert.deepEqual(h.of('error').at(-1), { code: 'policy', message: 'slow consumer' });
  const s = h.of('state').at(-1);
  assert.equal(s.state, 'reconnecting');
  assert.equal(s.code, 1008);
  await retry(h);
  assert.equal(sinceParam(h.EventSource.instances[1].url), `AAPL~3~${E1}`);
});

test('polling: first poll without since, then again at once with since = next', async () => {
  const h = await setup({ transports: ['polling'] }, 'ws://tw.test:8080');
  const got = [];
  h.tw.subscribe('AAPL', (u) => got.push(u.seq));
  h.tw.subscribe('MSFT', (u) => got.push(u.seq));
  await flush();
  const first = new URL(h.fetch.calls[0].url);
  assert.equal(`${first.origin}${first.pathname}`, 'http://tw.test:8080/poll');
  assert.equal(first.searchParams.get('channels'), 'AAPL,MSFT');
  assert.equal(first.searchParams.get('since'), null);
  const next1 = `AAPL~41~${E1},MSFT~7~${E2}`;
  h.fetch.respond(0, { messages: [upd('AAPL', 41), upd('MSFT', 7)], next: next1 });
  await flush();
  assert.equal(h.tw.state, 'open');
  assert.equal(h.fetch.calls.length, 2);
  assert.equal(sinceParam(h.fetch.calls[1].url), next1);
  assert.ok(h.fetch.calls[1].url.includes(encodeURIComponent(next1)));
  assert.deepEqual(h.tw.positions(), { AAPL: { seq: 41, epoch: E1 }, MSFT: { seq: 7, epoch: E2 } });
  // an empty answer (the hold timed out) polls again with the same since
  h.fetch.respond(1, { messages: [], next: next1 });
  await flush();
  assert.equal(sinceParam(h.fetch.calls[2].url), next1);
  const next2 = `AAPL~43~${E1},MSFT~7~${E2}`;
  h.fetch.respond(2, { messages: [upd('AAPL', 41), upd('AAPL', 43)], next: next2 });
  await flush();
  assert.deepEqual(got, [41, 7, 43]);
  assert.deepEqual(h.of('gap'), [{ ch: 'AAPL', expected: 42, got: 43 }]);
  assert.equal(sinceParam(h.fetch.calls[3].url), next2);
});

test('polling: a failed poll backs off and resumes from the positions', async () => {
  const h = await setup({ transports: ['polling'], token: 'static' });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  h.fetch.respond(0, { messages: [upd('AAPL', 41)], next: `AAPL~41~${E1}` });
  await flush();
  h.fetch.respond(1, null, 503);
  await flush();
  const s = h.of('state').at(-1);
  assert.equal(s.state, 'reconnecting');
  assert.equal(s.code, 503);
  assert.equal(h.fetch.calls.length, 2);
  await retry(h);
  const u = new URL(h.fetch.calls[2].url);
  assert.equal(u.searchParams.get('since'), `AAPL~41~${E1}`);
  assert.equal(u.searchParams.get('token'), 'static');
  h.fetch.calls[2].reject(new TypeError('network down'));
  await flush();
  assert.equal(h.tw.state, 'reconnecting');
});

test('polling: a resync in the messages adopts the new epoch', async () => {
  const h = await setup({ transports: ['polling'] });
  const got = [];
  h.tw.subscribe('AAPL', (u) => got.push(u.seq));
  await flush();
  h.fetch.respond(0, { messages: [upd('AAPL', 41)], next: `AAPL~41~${E1}` });
  await flush();
  h.fetch.respond(1, { messages: [{ type: 'resync', ch: 'AAPL', epoch: 'beef-1', reason: 'epoch changed' }, upd('AAPL', 2)], next: 'AAPL~2~beef-1' });
  await flush();
  assert.deepEqual(got, [41, 2]);
  assert.deepEqual(h.tw.positions(), { AAPL: { seq: 2, epoch: 'beef-1' } });
  assert.equal(h.of('resync').length, 1);
});

test('close() stops polling and SSE', async () => {
  const h = await setup({ transports: ['polling'] });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  const aborted = h.fetch.calls[0].init.signal;
  h.tw.close();
  assert.equal(aborted.aborted, true);
  h.fetch.respond(0, { messages: [upd('AAPL', 1)], next: `AAPL~1~${E1}` });
  await flush();
  assert.equal(h.fetch.calls.length, 1);
  assert.equal(h.clock.pending(), 0);

  const s = await setup({ transports: ['sse'] });
  s.tw.subscribe('AAPL', () => {});
  await flush();
  s.tw.close();
  assert.equal(s.EventSource.instances[0].closed, true);
  assert.equal(s.clock.pending(), 0);
});

test('a custom order [polling, sse]: polling first, SSE after two failed polls, never WebSocket, then round again', async () => {
  const h = await setup({ transports: ['polling', 'sse'] });
  const got = [];
  h.tw.subscribe('AAPL', (u) => got.push(u.seq));
  await flush();
  assert.equal(h.tw.transport, 'polling');
  assert.equal(h.fetch.calls.length, 1);
  h.fetch.calls[0].reject(new TypeError('connection refused'));
  await flush();
  await retry(h);
  assert.equal(h.tw.transport, 'polling', 'one failed open is not enough to move on');
  assert.equal(h.fetch.calls.length, 2);
  h.fetch.respond(1, null, 403);
  await flush();
  await retry(h);
  assert.equal(h.tw.transport, 'sse');
  assert.equal(h.EventSource.instances.length, 1);
  assert.equal(h.fetch.calls.length, 2, 'no more polls once on SSE');
  h.EventSource.instances[0].fail();
  await retry(h);
  h.EventSource.instances[1].fail();
  await retry(h);
  // past the last transport of the list: back to its first
  assert.equal(h.tw.transport, 'polling');
  assert.equal(h.fetch.calls.length, 3);
  h.fetch.respond(2, { messages: [upd('AAPL', 5)], next: `AAPL~5~${E1}` });
  await flush();
  assert.equal(h.tw.state, 'open');
  assert.deepEqual(got, [5]);
  assert.equal(h.WebSocket.instances.length, 0, 'WebSocket is not in the list: never tried');
  assert.deepEqual(h.of('state').map((s) => `${s.state}:${s.transport}`), [
    'connecting:polling', 'open:polling', // the empty start (no channel yet)
    'connecting:polling', 'reconnecting:polling', 'connecting:polling', 'reconnecting:polling',
    'connecting:sse', 'reconnecting:sse', 'connecting:sse', 'reconnecting:sse',
    'connecting:polling', 'open:polling',
  ]);
});

test('polling: token_expiring in a poll answer; the next poll waits for getToken and carries the new token', async () => {
  let n = 0;
  let release;
  const h = await setup({
    transports: ['polling'],
    getToken: () => {
      n += 1;
      // the third token (the refresh) comes only when the test says so
      return n === 3 ? new Promise((r) => { release = () => r(`t${n}`); }) : Promise.resolve(`t${n}`);
    },
  });
  const got = [];
  h.tw.subscribe('AAPL', (u) => got.push(u.seq));
  await flush();
  const tokenOf = (i) => new URL(h.fetch.calls[i].url).searchParams.get('token');
  // t1 for the empty start, t2 for the AAPL poll
  assert.equal(tokenOf(0), 't2');
  h.fetch.respond(0, { messages: [upd('AAPL', 41), { type: 'token_expiring', exp: 1000 }], next: `AAPL~41~${E1}` });
  await flush();
  assert.equal(n, 3, 'getToken called on token_expiring');
  assert.equal(h.fetch.calls.length, 1, 'no poll with the old token while the new one is coming');
  release();
  await flush();
  assert.equal(h.fetch.calls.length, 2);
  assert.equal(tokenOf(1), 't3');
  assert.equal(sinceParam(h.fetch.calls[1].url), `AAPL~41~${E1}`);
  h.fetch.respond(1, { messages: [upd('AAPL', 42)], next: `AAPL~42~${E1}` });
  await flush();
  assert.equal(tokenOf(2), 't3', 'later polls keep the new token');
  assert.deepEqual(got, [41, 42]);
  assert.deepEqual(h.of('state').map((s) => s.state), ['connecting', 'open', 'connecting', 'open'], 'no reconnect for a refresh');
});

test('polling: a getToken failure on token_expiring keeps polling with the old token and reports it', async () => {
  let n = 0;
  const h = await setup({ transports: ['polling'], getToken: async () => { n += 1; if (n === 3) throw new Error('idp down'); return `t${n}`; } });
  h.tw.subscribe('AAPL', () => {});
  await flush();
  h.fetch.respond(0, { messages: [{ type: 'token_expiring', exp: 1000 }], next: `AAPL~41~${E1}` });
  await flush();
  assert.equal(h.fetch.calls.length, 2);
  assert.equal(new URL(h.fetch.calls[1].url).searchParams.get('token'), 't2');
  assert.deepEqual(h.of('error').at(-1), { code: 'token', message: 'getToken failed: idp down' });
});

test('polling: a poll refused with 401 (token expired) reconnects with a fresh token from the same position', async () => {
  let n = 0;
  const h = await setup({ transports: ['polling'], getToken: async () => `t${++n}` });
  const got = [];
  h.tw.subscribe('AAPL', (u) => got.push(u.seq));
  await flush();
  h.fetch.respond(0, { messages: [upd('AAPL', 41)], next: `AAPL~41~${E1}` });
  await flush();
  h.fetch.respond(1, null, 401);
  await flush();
  const s = h.of('state').at(-1);
  assert.equal(s.state, 'reconnecting');
  assert.equal(s.code, 401);
  await retry(h);
  const u = new URL(h.fetch.calls[2].url);
  assert.equal(u.searchParams.get('token'), 't3');
  assert.equal(u.searchParams.get('since'), `AAPL~41~${E1}`);
  assert.equal(h.tw.transport, 'polling', 'a transport that worked is kept');
  h.fetch.respond(2, { messages: [upd('AAPL', 41), upd('AAPL', 42)], next: `AAPL~42~${E1}` });
  await flush();
  assert.deepEqual(got, [41, 42], 'the seam duplicate dropped');
});
