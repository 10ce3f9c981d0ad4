// Live token refresh in Chromium: short-lived HS256 tokens from getToken();
// the server's token_expiring is answered with {"op":"auth"} and the
// WebSocket stays open past every expiry. Control: a static token is closed
// with 1008 at its exp.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileWatchdog, mintJwt, openFeed, scope, sleep, startEngine, waitFor } from './support/harness.js';
import { openBrowserPage } from './support/page.js';

fileWatchdog(100000);

test('getToken refresh keeps the WebSocket open past each token exp; a static token is closed with 1008', { timeout: 75000 }, async (t) => {
  const s = scope(t);
  const secret = 'test-secret-' + Math.random().toString(36).slice(2);
  const engine = await startEngine({ env: { TICKWIRE_JWT_SECRET: secret }, args: ['--token-refresh-lead', '3s', '--jwt-leeway', '0s'] });
  s.add(() => engine.stop());
  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  feed.run(['K1'], 50);

  const lifeS = 5;
  const mint = () => mintJwt(secret, { sub: 'u1', exp: Math.floor(Date.now() / 1000) + lifeS, channels: ['*'] });
  const issued = [];
  const { page, problems } = await openBrowserPage(s);
  await page.exposeFunction('freshToken', () => { const tok = mint(); issued.push({ at: Date.now(), exp: JSON.parse(Buffer.from(tok.split('.')[1], 'base64url')).exp }); return tok; });
  await page.goto(`${engine.url}/healthz`, { timeout: 15000 });
  const staticToken = mint();
  const startedAt = Date.now();
  await page.evaluate(async (staticToken) => {
    const { connect } = await import('/tickwire.js');
    const mk = (opts) => {
      const log = { states: [], types: {}, updates: [] };
      const tw = connect(location.origin, opts);
      tw.on('state', (x) => log.states.push({ at: Date.now(), ...x }));
      tw.on('message', (m) => { log.types[m.type] = (log.types[m.type] || 0) + 1; });
      tw.subscribe('K1', (u) => log.updates.push({ at: Date.now(), seq: u.seq }));
      return { tw, log };
    };
    window.__refresh = mk({ getToken: () => window.freshToken() });
    window.__static = mk({ token: staticToken });
  }, staticToken);

  // run through three token lifetimes
  await sleep(lifeS * 3000 + 1000);
  const r = await page.evaluate(() => JSON.parse(JSON.stringify({ refresh: window.__refresh.log, stat: window.__static.log })));
  const firstExpMs = issued[0].exp * 1000;
  const refreshStates = r.refresh.states.map((x) => x.state + (x.code ? `(${x.code})` : ''));
  t.diagnostic(`tokens issued ${issued.length}; refresh client states ${refreshStates.join(' ')}; messages ${JSON.stringify(r.refresh.types)}`);
  t.diagnostic(`static-token client states ${r.stat.states.map((x) => `${x.state}${x.code ? '(' + x.code + ')' : ''}@${x.at - startedAt}ms`).join(' ')}`);

  assert.ok(r.refresh.states.some((x) => x.state === 'open' && x.transport === 'websocket'), 'the refreshing client opened a WebSocket');
  assert.ok(!r.refresh.states.some((x) => x.state === 'reconnecting'), `the refreshing client never dropped: ${refreshStates.join(' ')}`);
  assert.ok((r.refresh.types.token_expiring || 0) >= 2, `token_expiring received ${r.refresh.types.token_expiring || 0} times`);
  assert.ok(issued.length >= 3, `getToken called ${issued.length} times (connect + refreshes)`);
  const late = r.refresh.updates.filter((u) => u.at > firstExpMs + 5000);
  assert.ok(late.length >= 50, `${late.length} updates more than 5 s past the first token's exp`);
  const last = r.refresh.updates[r.refresh.updates.length - 1];
  assert.ok(Date.now() - last.at < 2000, 'updates still arriving at the end');
  for (let i = 1; i < r.refresh.updates.length; i++) assert.equal(r.refresh.updates[i].seq, r.refresh.updates[i - 1].seq + 1, 'no gap on the refreshing client');

  // control: without getToken the server closes at exp with 1008
  assert.ok(r.stat.states.some((x) => x.state === 'reconnecting' && x.code === 1008), 'the static-token client was closed with 1008');
  assert.deepEqual(problems, []);
});
