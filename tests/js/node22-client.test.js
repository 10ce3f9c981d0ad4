// tickwire.js under Node >= 22 (its global WebSocket, no polyfill) against
// the real engine: subscribe, receive every update with consecutive seqs,
// and survive a connection cut by a proxy in front of the engine (every
// connection dropped, new ones refused for 2 s, while the feed goes on)
// with no gap and no duplicate. tools/js-tests.sh provides a Node 22 binary
// in TICKWIRE_NODE22 when the system node is older.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { test } from 'node:test';
import { REPO, fileWatchdog, neverConflating, openFeed, scope, seqProblems, sleep, startEngine, startProxy, waitFor } from './support/harness.js';

fileWatchdog(100000);

function node22() {
  const major = Number(process.versions.node.split('.')[0]);
  const bin = process.env.TICKWIRE_NODE22 || (major >= 22 ? process.execPath : '');
  if (!bin) {
    throw new Error(`this test needs Node >= 22 (system node is ${process.version}): run it with tools/js-tests.sh, which installs one, or set TICKWIRE_NODE22`);
  }
  return bin;
}

/** Starts the Node client; `log` collects its events as they arrive. */
function startClient(s, url, channels) {
  const child = spawn(node22(), [path.join(REPO, 'tests', 'js', 'support', 'node-client.mjs'), url, channels.join(',')],
    { stdio: ['pipe', 'pipe', 'pipe'] });
  const log = { env: null, states: [], seqs: Object.create(null), gaps: [], resyncs: [], errors: [], stderr: '', exit: null };
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const m = JSON.parse(line);
    if (m.k === 'env') log.env = m;
    else if (m.k === 'state') log.states.push({ ...m, at: Date.now() });
    else if (m.k === 'u') (log.seqs[m.ch] ||= []).push(m.seq);
    else if (m.k === 'gap') log.gaps.push(m);
    else if (m.k === 'resync') log.resyncs.push(m);
    else if (m.k === 'error') log.errors.push(m);
  });
  child.stderr.on('data', (d) => { log.stderr = (log.stderr + d).slice(-4000); });
  child.on('exit', (code, signal) => { log.exit = { code, signal }; });
  s.add(async () => {
    if (log.exit) return;
    child.stdin.end(); // the client closes and exits
    await waitFor(() => log.exit, { timeoutMs: 3000, what: 'client exit' }).catch(() => child.kill('SIGKILL'));
  });
  return log;
}

const last = (log, ch) => { const a = log.seqs[ch]; return a ? a[a.length - 1] : 0; };

test('tickwire.js on Node >= 22: live updates, a 2 s cut, every seq once and in order', { timeout: 75000 }, async (t) => {
  const s = scope(t);
  const engine = await startEngine({ config: neverConflating('N*', 2000) });
  s.add(() => engine.stop());
  const proxy = await startProxy(engine.listenPort);
  s.add(() => proxy.close());
  const channels = ['N1', 'N2', 'N3'];
  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  feed.run(channels, 300);

  const log = startClient(s, proxy.url.replace('http:', 'ws:'), channels);
  await waitFor(() => log.env || log.exit, { timeoutMs: 10000, what: 'the client to start' });
  assert.ok(log.env, `client started (exit ${JSON.stringify(log.exit)}; stderr ${log.stderr})`);
  assert.ok(Number(log.env.node.slice(1).split('.')[0]) >= 22, `client runs on Node >= 22: ${log.env.node}`);
  assert.equal(log.env.ws, 'function', 'global WebSocket');
  await waitFor(() => log.states.some((x) => x.state === 'open'), { timeoutMs: 10000, what: 'state open' });
  await waitFor(() => channels.every((c) => last(log, c) > 50), { timeoutMs: 10000, what: 'updates before the cut' });

  const cutAt = Date.now();
  proxy.cut();
  await waitFor(() => log.states.some((x) => x.at >= cutAt && x.state === 'reconnecting'), { timeoutMs: 5000, what: 'state reconnecting' });
  const during = Object.fromEntries(channels.map((c) => [c, last(log, c)]));
  await sleep(2000);
  proxy.restore();
  await waitFor(() => log.states.some((x) => x.at > cutAt && x.state === 'open'), { timeoutMs: 20000, what: 'open again after the cut' })
    .catch((err) => { throw new Error(`${err.message}; states ${JSON.stringify(log.states.slice(-12))}; errors ${JSON.stringify(log.errors)}; stderr ${log.stderr}`); });
  await waitFor(() => channels.every((c) => last(log, c) > during[c] + 100), { timeoutMs: 10000, what: 'updates after the reconnect' });
  feed.pause();
  await waitFor(() => channels.every((c) => last(log, c) === feed.sent[c]), { timeoutMs: 10000, what: 'the last seq of every channel' });

  const after = log.states.filter((x) => x.at >= cutAt);
  t.diagnostic(`node ${log.env.node}; states after the cut: ${after.map((x) => `${x.state}/${x.transport}${x.retryInMs != null ? `(${x.retryInMs}ms)` : ''}`).join(' ')}; ` +
    `${proxy.refused} refused connects; sent ${JSON.stringify(feed.sent)}; first seqs ${JSON.stringify(Object.fromEntries(channels.map((c) => [c, log.seqs[c][0]])))}`);
  assert.deepEqual(seqProblems(log.seqs, channels), [], 'strictly +1 steps across the cut');
  for (const c of channels) {
    // the feed began before the subscribe: the first update is the snapshot,
    // then every later seq up to the last one sent
    assert.equal(log.seqs[c].length, feed.sent[c] - log.seqs[c][0] + 1, `${c}: every update from the snapshot on`);
    assert.ok(log.seqs[c].some((x) => x <= during[c]) && log.seqs[c].some((x) => x > during[c] + 100), `${c}: updates on both sides of the cut`);
  }
  assert.deepEqual(log.gaps, [], 'no gap events');
  assert.deepEqual(log.resyncs, [], 'no resync events');
  assert.deepEqual(log.errors, [], 'no error events');
  assert.ok(proxy.refused >= 1, `the client retried during the cut (${proxy.refused} refused)`);
  assert.ok(log.states.filter((x) => x.state === 'open').every((x) => x.transport === 'websocket'), 'on WebSocket throughout');
  assert.ok(log.states.filter((x) => x.state === 'open').length >= 2, 'opened again after the cut');
  assert.ok(proxy.log.filter((x) => x.upgrade).length >= 2, 'at least two WebSocket upgrades through the proxy');
});
