import test from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, deriveUrls, encodeResumeToken, parseResumeToken, tokenExpiry } from '../tickwire.js';
import { setup } from './fakes.js';

const B = { initialMs: 250, maxMs: 10000, stableMs: 10000 };

test('full jitter stays in [0, min(max, initial * 2^attempt))', () => {
  assert.equal(backoffDelay(0, B, () => 0), 0);
  assert.equal(backoffDelay(0, B, () => 0.999999), 249);
  assert.equal(backoffDelay(3, B, () => 0.5), 1000);
  assert.equal(backoffDelay(3, B, () => 0.999999), 1999);
  // capped at maxMs however many attempts
  assert.equal(backoffDelay(6, B, () => 0.999999), 9999);
  assert.equal(backoffDelay(60, B, () => 0.999999), 9999);
});

test('reconnect delays grow, cap, and reset after a connection stayed up stableMs', async () => {
  const { clock, WebSocket, of } = await setup({ transports: ['websocket'], random: () => 0.999999 });
  const delays = [];
  for (let i = 0; i < 8; i++) {
    WebSocket.instances.at(-1).fail();
    const s = of('state').at(-1);
    assert.equal(s.state, 'reconnecting');
    assert.equal(s.attempt, i + 1);
    delays.push(s.retryInMs);
    await clock.advance(s.retryInMs);
  }
  assert.deepEqual(delays, [249, 499, 999, 1999, 3999, 7999, 9999, 9999]);
  assert.equal(WebSocket.instances.length, 9);

  // Open but drop before stableMs: the schedule goes on.
  WebSocket.instances.at(-1).open();
  await clock.advance(B.stableMs - 1);
  WebSocket.instances.at(-1).serverClose(1012, 'restart');
  assert.equal(of('state').at(-1).retryInMs, 9999);
  await clock.advance(9999);

  // Open for stableMs: back to the first step.
  WebSocket.instances.at(-1).open();
  await clock.advance(B.stableMs);
  WebSocket.instances.at(-1).serverClose(1012, 'restart');
  const s = of('state').at(-1);
  assert.deepEqual(s, { state: 'reconnecting', transport: 'websocket', retryInMs: 249, attempt: 1, code: 1012, reason: 'restart' });
});

test('a 1008 close is retried after backoff, not at once, and getToken is asked again', async () => {
  const tokens = ['bad', 'good'];
  const { clock, WebSocket, of } = await setup({ getToken: async () => tokens.shift() });
  assert.match(WebSocket.instances[0].url, /\?token=bad&batch=1$/);
  WebSocket.instances[0].open();
  WebSocket.instances[0].serverClose(1008, 'bad signature');
  assert.equal(of('error').at(-1).code, 'policy');
  const s = of('state').at(-1);
  assert.ok(s.retryInMs > 0);
  await clock.advance(s.retryInMs - 1);
  assert.equal(WebSocket.instances.length, 1, 'no retry before the backoff');
  await clock.advance(1);
  assert.match(WebSocket.instances[1].url, /\?token=good&batch=1$/);
});

test('URLs: any scheme gives the matching ws and http bases', () => {
  assert.deepEqual(deriveUrls('ws://h:1'), { ws: 'ws://h:1', http: 'http://h:1' });
  assert.deepEqual(deriveUrls('https://h/base/'), { ws: 'wss://h/base', http: 'https://h/base' });
  assert.deepEqual(deriveUrls('wss://h:2'), { ws: 'wss://h:2', http: 'https://h:2' });
  assert.throws(() => deriveUrls('ftp://h'));
});

test('resume token round trip', () => {
  const p = { AAPL: { seq: 41, epoch: '0123456789abcdef-2' }, 'FX.EUR:USD': { seq: 7, epoch: 'ab-5' } };
  const t = encodeResumeToken(p);
  assert.equal(t, 'AAPL~41~0123456789abcdef-2,FX.EUR:USD~7~ab-5');
  assert.deepEqual(parseResumeToken(t), p);
  assert.deepEqual(parseResumeToken('junk,,A~x~e'), {});
});

const jwt = (claims) =>
  `e30.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.sig`;

test('tokenExpiry reads exp, and null for anything else', () => {
  assert.equal(tokenExpiry(jwt({ sub: 'u', exp: 1700000000 })), 1700000000);
  assert.equal(tokenExpiry(jwt({ sub: 'u' })), null);
  assert.equal(tokenExpiry('not a jwt'), null);
  assert.equal(tokenExpiry('a.!!!.c'), null);
  assert.equal(tokenExpiry(null), null);
});

test('a static token past its exp is reported once, and retried as documented', async () => {
  // The fake clock starts at 0 ms: exp 2 s is in the future at first.
  const { clock, WebSocket, of } = await setup({ token: jwt({ sub: 'u', exp: 2 }) });
  assert.equal(of('error').length, 0);
  WebSocket.instances[0].open();
  await clock.advance(2000);
  WebSocket.instances[0].serverClose(1008, 'token expired');
  assert.deepEqual(of('error').map((e) => e.code), ['policy']);
  for (let i = 0; i < 3; i++) {
    await clock.advance(of('state').at(-1).retryInMs);
    WebSocket.instances.at(-1).fail();
  }
  assert.equal(WebSocket.instances.length, 4, 'still retried');
  const tokenErrors = of('error').filter((e) => e.code === 'token');
  assert.equal(tokenErrors.length, 1);
  assert.match(tokenErrors[0].message, /expired at 1970-01-01T00:00:02.000Z; pass getToken/);
});
