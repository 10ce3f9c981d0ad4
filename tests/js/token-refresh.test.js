// Token refresh in a real browser: every token lives 5 s; the server asks
// for a new one 3 s before it expires (`token_expiring`), tickwire.js calls
// getToken() and sends {"op":"auth"}, and the page stays connected on one
// WebSocket past several expiries, with every update once and in order.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileWatchdog, mintJwt, neverConflating, openFeed, scope, seqProblems, sleep, startEngine, waitFor } from './support/harness.js';
import { openBrowserPage } from './support/page.js';

fileWatchdog(60000);

const SECRET = 'browser-refresh-test-secret-of-some-length';

test('token refresh keeps a page connected past the first token\'s expiry', { timeout: 45000 }, async (t) => {
  const s = scope(t);
  const engine = await startEngine({
    args: ['--token-refresh-lead', '3s', '--jwt-leeway', '0s'],
    env: { TICKWIRE_JWT_SECRET: SECRET },
    config: neverConflating('K*', 256),
  });
  s.add(() => engine.stop());
  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  feed.run(['K1'], 50);

  const { page, problems } = await openBrowserPage(s);
  let minted = 0;
  await page.exposeFunction('freshToken', () => {
    minted += 1;
    return mintJwt(SECRET, { sub: 'u1', exp: Math.floor(Date.now() / 1000) + 5, channels: ['K*'] });
  });
  // Same origin as the engine, so the module import is allowed.
  await page.goto(`${engine.url}/healthz`, { timeout: 15000 });
  const firstExp = Math.floor(Date.now() / 1000) + 5;
  await page.evaluate(async () => {
    const { connect } = await import('/tickwire.js');
    window.got = [];
    window.states = [];
    window.auth = [];
    const tw = connect(location.origin, { getToken: () => window.freshToken(), transports: ['websocket'] });
    tw.on('state', (x) => window.states.push(x.state));
    tw.on('message', (m) => { if (m.type === 'token_expiring' || m.type === 'authenticated') window.auth.push(m.type); });
    tw.subscribe('K1', (u) => window.got.push(u.seq));
  });
  await waitFor(async () => (await page.evaluate(() => window.got.length)) > 20, { timeoutMs: 10000, what: 'first updates' });
  // Past two expiries of five-second tokens.
  while (Date.now() / 1000 < firstExp + 7) await sleep(250);
  const { got, states, auth } = await page.evaluate(() => ({ got: window.got, states: window.states, auth: window.auth }));
  const lastBefore = got.length;
  await sleep(500);
  const after = await page.evaluate(() => window.got.length);
  assert.ok(after > lastBefore, 'updates still arrive after the expiries');
  assert.equal(states.filter((x) => x === 'open').length, 1, `one connection throughout: ${states.join(' ')}`);
  assert.ok(!states.includes('reconnecting'), `never reconnected: ${states.join(' ')}`);
  assert.ok(auth.filter((x) => x === 'token_expiring').length >= 2, `refresh asked: ${auth.join(' ')}`);
  assert.ok(auth.filter((x) => x === 'authenticated').length >= 2, `refresh accepted: ${auth.join(' ')}`);
  assert.ok(minted >= 3, `getToken called on connect and each refresh (${minted})`);
  assert.deepEqual(seqProblems({ K1: got }, ['K1']), []);
  assert.deepEqual(problems, []);
  t.diagnostic(`${got.length} updates over ${minted} tokens; auth messages: ${auth.join(' ')}`);
});
