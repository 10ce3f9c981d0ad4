// Shared helpers of the browser and EventSource tests: the engine process
// (start, stop, SIGKILL, restart on the same ports), a feed writer for the
// ingest port, a TCP proxy that can be cut, restored and told to refuse
// WebSocket upgrades or some paths, HS256 JWT minting, Chromium, and bounded
// waits. Everything listens on loopback ephemeral ports.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BIN = process.env.TICKWIRE_BIN || path.join(REPO, 'target', 'debug', 'tickwire');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Everything started by this process, killed on exit whatever happens.
const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** Polls `fn` until it returns a truthy value; rejects after `timeoutMs` with `what`. */
export async function waitFor(fn, { timeoutMs = 10000, intervalMs = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(intervalMs);
  }
}

/** Rejects if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what = 'operation') {
  let t;
  return Promise.race([
    promise,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`${what} did not finish within ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

/** A port that was free a moment ago (bound on 127.0.0.1:0, then released). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ------------------------------------------------------------------ engine

/**
 * Starts the engine. `listenPort` / `ingestPort` default to 0 (ephemeral);
 * pass fixed ones to restart on the same ports. Resolves once the
 * `tickwire ready` line was printed.
 */
export async function startEngine({ args = [], env = {}, listenPort = 0, ingestPort = 0, workers = 1, readyTimeoutMs = 15000, config } = {}) {
  const argv = ['--listen', `127.0.0.1:${listenPort}`, '--ingest', `127.0.0.1:${ingestPort}`, '--workers', String(workers), ...args];
  if (config !== undefined) argv.push('--config', writeConfig(config));
  const proc = spawn(BIN, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let stderr = '';
  let stdout = '';
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-20000); });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => { live.delete(proc); resolve({ code, signal }); }));
  const ready = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      stdout += d;
      const m = /tickwire ready listen=(\S+):(\d+) ingest=(\S+):(\d+)/.exec(stdout);
      if (m) resolve({ listen: Number(m[2]), ingest: Number(m[4]) });
    });
    proc.on('error', reject);
    exited.then((e) => reject(new Error(`engine exited before ready (${JSON.stringify(e)}): ${stderr.slice(-2000)}`)));
  });
  let ports;
  try {
    ports = await withTimeout(ready, readyTimeoutMs, 'engine start');
  } catch (err) {
    proc.kill('SIGKILL');
    throw err;
  }
  const engine = {
    proc,
    argv,
    env,
    listenPort: ports.listen,
    ingestPort: ports.ingest,
    url: `http://127.0.0.1:${ports.listen}`,
    exited,
    get stderr() { return stderr; },
    /** SIGINT, then SIGKILL if it has not exited after `graceMs`. */
    async stop(graceMs = 5000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill('SIGINT');
      const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
    async kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      return exited;
    },
  };
  return engine;
}

/**
 * Fetches the engine's `/api/stats` (deliveries, conflated, ...): the
 * figures a test prints beside a failure.
 */
export async function engineStats(engine) {
  const r = await fetch(`${engine.url}/api/stats`, { signal: AbortSignal.timeout(3000) });
  return r.json();
}

/**
 * A config file that puts `pattern`'s channels in a never-conflating class
 * (README, "Channel classes"): a client that falls behind is closed and
 * resumes from history, so every seq reaches it once, in order, however
 * slow the machine. A conflating channel may skip seqs for a slow page
 * (README, "Slow consumers and conflation"), so a test asserting strictly
 * +1 steps uses this class.
 */
export function neverConflating(pattern, historySize) {
  return `[[classes]]\nname = "notify"\npattern = "${pattern}"\nconflate = false\nhistory_size = ${historySize}\n`;
}

// Config files written for engines of this process, removed on exit.
const configDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tickwire-js-'));
process.on('exit', () => fs.rmSync(configDir, { recursive: true, force: true }));
let configs = 0;
function writeConfig(text) {
  const file = path.join(configDir, `config-${++configs}.toml`);
  fs.writeFileSync(file, text);
  return file;
}

/** SIGKILLs `engine` and starts a new one with the same arguments on the same ports (retrying the bind for a few seconds). */
export async function restartEngine(engine, { killFirst = true } = {}) {
  if (killFirst) await engine.kill();
  const extra = engine.argv.slice(6); // after --listen A --ingest B --workers N
  const deadline = Date.now() + 10000;
  for (;;) {
    try {
      return await startEngine({ args: extra, env: engine.env, listenPort: engine.listenPort, ingestPort: engine.ingestPort });
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(200);
    }
  }
}

// ------------------------------------------------------------------ feed

/**
 * A feed connection to the ingest port. `send(ch, data)` writes one line;
 * `run(channels, perSecond)` keeps writing round-robin until `stop()`.
 * `sent[ch]` counts the lines written per channel. With `reconnect`, a lost
 * ingest connection is reopened (lines produced meanwhile are not written
 * and not counted).
 */
export function openFeed(ingestPort, { reconnect = false } = {}) {
  const feed = {
    sent: Object.create(null),
    connected: false,
    closed: false,
    sock: null,
    timer: null,
    send(ch, data = {}) {
      if (!feed.connected) return false;
      const ok = feed.sock.write(JSON.stringify({ ch, ...data }) + '\n');
      feed.sent[ch] = (feed.sent[ch] || 0) + 1;
      return ok;
    },
    run(channels, perSecond, makeData = (ch, n) => ({ i: n, t: Date.now() * 1000 })) {
      const tickMs = 10;
      let credit = 0;
      let rr = 0;
      let last = Date.now();
      feed.timer = setInterval(() => {
        const now = Date.now();
        credit += ((now - last) * perSecond) / 1000;
        last = now;
        while (credit >= 1) {
          credit -= 1;
          const ch = channels[rr++ % channels.length];
          if (feed.connected) feed.send(ch, makeData(ch, (feed.sent[ch] || 0) + 1));
        }
      }, tickMs);
    },
    pause() {
      if (feed.timer) clearInterval(feed.timer);
      feed.timer = null;
    },
    async close() {
      feed.pause();
      feed.closed = true;
      if (feed.sock && !feed.sock.destroyed) {
        await withTimeout(new Promise((r) => feed.sock.end(r)), 2000, 'feed close').catch(() => feed.sock.destroy());
      }
    },
  };
  let everConnected = false;
  const dial = () => {
    const sock = net.connect(ingestPort, '127.0.0.1');
    sock.setNoDelay(true);
    sock.on('connect', () => { feed.sock = sock; feed.connected = true; everConnected = true; });
    sock.on('data', () => {}); // error lines, if any
    sock.on('error', () => {});
    sock.on('close', () => {
      if (feed.sock === sock) feed.connected = false;
      if (!feed.closed && (reconnect || !everConnected)) setTimeout(dial, 100);
    });
  };
  dial();
  feed.ready = waitFor(() => feed.connected, { timeoutMs: 10000, intervalMs: 20, what: 'feed connection' });
  return feed;
}

// ------------------------------------------------------------------ proxy

/**
 * A TCP proxy in front of the engine's listen port. It reads the HTTP
 * request heads going upstream (GET requests; a WebSocket upgrade switches
 * the connection to plain piping) so that it can refuse WebSocket upgrades
 * (`blockWebSocket`) or paths (`blockPaths`) with a 403 and a close, even on
 * keep-alive connections. `cut()` drops every connection and resets new ones
 * until `restore()`.
 */
export async function startProxy(upstreamPort, { port = 0 } = {}) {
  const conns = new Set();
  const proxy = {
    port: 0,
    url: '',
    refusing: false,
    blockWebSocket: false,
    blockPaths: new Set(),
    log: [], // {path, upgrade, blocked, at}
    refused: 0,
    cut() {
      proxy.refusing = true;
      proxy.dropAll();
    },
    restore() { proxy.refusing = false; },
    dropAll() {
      for (const c of conns) c();
      conns.clear();
    },
    close() {
      proxy.dropAll();
      return new Promise((r) => server.close(() => r()));
    },
  };

  const server = net.createServer((client) => {
    if (proxy.refusing) {
      proxy.refused++;
      client.resetAndDestroy();
      return;
    }
    client.setNoDelay(true);
    const up = net.connect(upstreamPort, '127.0.0.1');
    up.setNoDelay(true);
    const kill = () => {
      if (!client.destroyed) client.resetAndDestroy();
      if (!up.destroyed) up.destroy();
    };
    conns.add(kill);
    const done = () => { conns.delete(kill); kill(); };
    client.on('error', done);
    up.on('error', done);
    client.on('close', done);
    up.on('close', done);
    up.on('data', (d) => { if (!client.destroyed) client.write(d); });

    let buf = Buffer.alloc(0);
    let raw = false; // after an upgrade (or a request we cannot parse): pipe as is
    let bodyLeft = 0;
    client.on('data', (d) => {
      if (raw) return void up.write(d);
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (bodyLeft > 0) {
          const n = Math.min(bodyLeft, buf.length);
          if (n === 0) return;
          up.write(buf.subarray(0, n));
          buf = buf.subarray(n);
          bodyLeft -= n;
          continue;
        }
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buf.length > 65536) { raw = true; up.write(buf); buf = Buffer.alloc(0); }
          return;
        }
        const head = buf.subarray(0, end + 4);
        const text = head.toString('latin1');
        const [requestLine, ...lines] = text.split('\r\n');
        const target = requestLine.split(' ')[1] || '';
        const p = target.split('?')[0];
        const headers = {};
        for (const l of lines) {
          const i = l.indexOf(':');
          if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
        }
        const upgrade = /websocket/i.test(headers.upgrade || '');
        const blocked = (upgrade && proxy.blockWebSocket) || proxy.blockPaths.has(p);
        proxy.log.push({ path: p, upgrade, blocked, at: Date.now() });
        if (blocked) {
          client.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nforbidden\n');
          up.destroy();
          raw = true; // ignore anything else
          client.removeAllListeners('data');
          return;
        }
        up.write(head);
        buf = buf.subarray(end + 4);
        if (upgrade) { raw = true; if (buf.length) up.write(buf); buf = Buffer.alloc(0); return; }
        if (headers['transfer-encoding']) { raw = true; if (buf.length) up.write(buf); buf = Buffer.alloc(0); return; }
        bodyLeft = Number(headers['content-length'] || 0) || 0;
      }
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  proxy.port = server.address().port;
  proxy.url = `http://127.0.0.1:${proxy.port}`;
  return proxy;
}

// ------------------------------------------------------------------ JWT

const b64url = (b) => Buffer.from(b).toString('base64url');

/** An HS256 JWT with `claims` (exp etc. given by the caller). */
export function mintJwt(secret, claims) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// ------------------------------------------------------------------ browser

/**
 * Chromium through playwright-core, the system browser (no download). A
 * browser that dies while starting (seen once: SIGSEGV before its first
 * page, nothing of ours loaded yet) is started once more; a second failure
 * fails the test.
 */
export async function launchBrowser() {
  const { chromium } = await import('playwright-core');
  const launch = () => chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: 30000 });
  try {
    return await launch();
  } catch (e) {
    console.error(`# chromium failed to start (${String(e.message).split('\n')[0]}); starting it once more`);
    return launch();
  }
}

/**
 * Checks that each channel's seq list has strictly +1 steps (no gap, no
 * duplicate, no reordering). Returns a list of problems (empty when fine).
 */
export function seqProblems(seqs, channels) {
  const problems = [];
  for (const ch of channels) {
    const a = seqs[ch] || [];
    if (!a.length) { problems.push(`${ch}: no updates`); continue; }
    for (let i = 1; i < a.length; i++) {
      if (a[i] !== a[i - 1] + 1) {
        problems.push(`${ch}: seq ${a[i - 1]} followed by ${a[i]} at index ${i}`);
        if (problems.length > 20) return problems;
      }
    }
  }
  return problems;
}

/**
 * A per-test set of cleanups, run in reverse order, each bounded in time, so
 * that a failed or timed-out test still stops its engine, proxy and browser.
 */
export function scope(t) {
  const fns = [];
  const s = {
    add(fn) { fns.push(fn); return fn; },
    async close() {
      while (fns.length) {
        const fn = fns.pop();
        try { await withTimeout(Promise.resolve().then(fn), 8000, 'cleanup'); } catch { /* keep going */ }
      }
    },
  };
  if (t && t.after) t.after(() => s.close());
  return s;
}

/**
 * A watchdog for a whole test file: if the file is still running after
 * `ms`, kill what it started and exit non-zero instead of hanging.
 */
export function fileWatchdog(ms) {
  const t = setTimeout(() => {
    console.error(`test file watchdog: still running after ${ms} ms, exiting`);
    process.exit(1);
  }, ms);
  t.unref();
}
