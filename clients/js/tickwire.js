// tickwire.js: client for the tickwire fanout engine (browser and Node >= 22).
//
// One self-contained ES module without imports: the engine serves this exact
// file at /tickwire.js. WebSocket first, Server-Sent Events and long-polling
// as fallbacks; every (re)connect resumes each channel from the last seq and
// epoch the application saw, so each update arrives once and in order, or an
// explicit `resync` says the stream started over.

export const VERSION = '0.1.0';

const TRANSPORTS = ['websocket', 'sse', 'polling'];

const DEFAULTS = {
  transports: TRANSPORTS,
  backoff: { initialMs: 250, maxMs: 10000, stableMs: 10000 },
  pingIntervalMs: 15000,
  // Fallback transports are kept once they have worked; a failed open counts
  // towards moving on only this many times in a row.
  failuresBeforeFallback: 2,
  // The server holds a poll up to 25 s; abort one that takes much longer.
  pollAbortMs: 35000,
  // Ask the server for batched WebSocket messages (`/ws?batch=1`): the
  // messages one write carries arrive as one WebSocket message, a line each.
  // A browser pays per WebSocket message; a server that does not batch
  // ignores the parameter.
  batch: true,
};

/** Opens a client. `url` may be ws://, wss://, http:// or https://. */
export function connect(url, options = {}) {
  return new TickwireClient(url, options);
}

/**
 * Full-jitter exponential backoff: a uniform random delay in
 * [0, min(maxMs, initialMs * 2^attempt)). Spreads reconnect storms after an
 * engine restart instead of synchronising every client.
 */
export function backoffDelay(attempt, backoff, random = Math.random) {
  const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** attempt);
  return Math.floor(random() * ceiling);
}

/** Resume token: `NAME~SEQ~EPOCH` entries joined by commas. */
export function encodeResumeToken(positions) {
  return Object.entries(positions)
    .map(([ch, p]) => `${ch}~${p.seq}~${p.epoch}`)
    .join(',');
}

/**
 * The `exp` claim (seconds since the epoch) of a JWT, or null when it has
 * none or is not a JWT. The signature is not checked: this only tells a
 * client that its static token cannot work any more.
 */
export function tokenExpiry(jwt) {
  const part = String(jwt || '').split('.')[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof claims.exp === 'number' ? claims.exp : null;
  } catch {
    return null;
  }
}

/** Parses a resume token into `{NAME: {seq, epoch}}`; skips malformed entries. */
export function parseResumeToken(token) {
  const out = {};
  for (const entry of String(token || '').split(',')) {
    const parts = entry.split('~');
    if (parts.length !== 3) continue;
    const seq = Number(parts[1]);
    if (!parts[0] || !Number.isFinite(seq)) continue;
    out[parts[0]] = { seq, epoch: parts[2] };
  }
  return out;
}

/** Derives the WebSocket and HTTP bases (no trailing slash) from any of the four schemes. */
export function deriveUrls(url) {
  const u = new URL(url);
  const secure = u.protocol === 'wss:' || u.protocol === 'https:';
  if (!['ws:', 'wss:', 'http:', 'https:'].includes(u.protocol)) {
    throw new TypeError(`tickwire: unsupported URL scheme ${u.protocol}`);
  }
  const rest = `//${u.host}${u.pathname.replace(/\/+$/, '')}`;
  return { ws: `${secure ? 'wss:' : 'ws:'}${rest}`, http: `${secure ? 'https:' : 'http:'}${rest}` };
}

function query(params) {
  const parts = [];
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') parts.push(`${k}=${v}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

export class TickwireClient {
  constructor(url, options = {}) {
    const o = { ...DEFAULTS, ...options };
    o.backoff = { ...DEFAULTS.backoff, ...(options.backoff || {}) };
    o.watchdogMs = options.watchdogMs ?? o.pingIntervalMs * 2.5;
    o.transports = (o.transports || TRANSPORTS).filter((t) => TRANSPORTS.includes(t));
    if (!o.transports.length) throw new TypeError('tickwire: no usable transport');
    this._o = o;
    this._urls = deriveUrls(url);
    const g = globalThis;
    this._WebSocket = o.WebSocket || g.WebSocket;
    this._EventSource = o.EventSource || g.EventSource;
    this._fetch = o.fetch || (g.fetch && g.fetch.bind(g));
    this._setTimeout = o.setTimeout || g.setTimeout.bind(g);
    this._clearTimeout = o.clearTimeout || g.clearTimeout.bind(g);
    this._now = o.now || (() => Date.now());
    this._random = o.random || Math.random;

    this._handlers = new Map(); // channel -> Set of update handlers
    this._pos = new Map(); // channel -> {seq: number|null, epoch: string|null}
    this._listeners = new Map(); // event name -> Set of listeners
    this._transportIndex = 0;
    this._failedOpens = 0; // consecutive failed opens of the current transport
    // Transports that have opened once: their later failures are network
    // trouble, not a blocked transport, so they never lead to fallback.
    this._everOpened = new Set();
    this._attempt = 0; // backoff exponent; reset once a connection stayed up stableMs
    this._conn = null;
    this._token = o.token ?? null;
    this._tokenFresh = false; // set when _refreshToken just fetched one for a reopen
    this._retryTimer = null;
    this._stableTimer = null;
    this._flushQueued = false;
    this._closed = false;
    this.state = 'connecting';
    this._lastEmitted = null;
    this.transport = o.transports[0];

    this._watchBrowser();
    // Start after the current tick so that listeners and subscriptions made
    // right after connect() go into the first open.
    queueMicrotask(() => this._open());
  }

  // ---- public API ----

  subscribe(ch, handler) {
    if (typeof handler !== 'function') throw new TypeError('tickwire: subscribe needs a handler');
    let set = this._handlers.get(ch);
    if (!set) {
      set = new Set();
      this._handlers.set(ch, set);
      this._queueFlush();
    }
    // Wrapped so that the same function may be registered twice and removed once.
    const entry = (u) => handler(u);
    set.add(entry);
    return () => {
      const cur = this._handlers.get(ch);
      if (cur && cur.delete(entry) && cur.size === 0) this.unsubscribe(ch);
    };
  }

  unsubscribe(ch) {
    if (!this._handlers.delete(ch)) return;
    this._pos.delete(ch);
    this._queueFlush();
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /** `{CH: {seq, epoch}}` for every channel that has delivered an update. */
  positions() {
    const out = {};
    for (const [ch, p] of this._pos) {
      if (p.seq !== null && p.epoch !== null) out[ch] = { seq: p.seq, epoch: p.epoch };
    }
    return out;
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    this._clearTimers();
    this._dropConn();
    this._unwatchBrowser?.();
    this._setState('closed');
  }

  // ---- events ----

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) this._call(fn, arg, event);
  }

  // A throwing user callback must not break the transport: report it instead.
  _call(fn, arg, where) {
    try {
      fn(arg);
    } catch (err) {
      if (where === 'error') return; // never loop on a throwing error listener
      this._emit('error', { code: 'callback', message: `${where} callback threw: ${err && err.message}`, error: err });
    }
  }

  // Emits on every change; a repeated state is emitted only with details
  // (each 'reconnecting' carries its own retryInMs).
  _setState(state, extra = {}) {
    const key = `${state}/${this.transport}`;
    if (key === this._lastEmitted && !Object.keys(extra).length) return;
    this._lastEmitted = key;
    this.state = state;
    this._emit('state', { state, transport: this.transport, ...extra });
  }

  // ---- connection lifecycle ----

  async _open() {
    if (this._closed || this._conn) return;
    this._retryTimer = null;
    const kind = this._o.transports[this._transportIndex];
    this.transport = kind;
    this._setState('connecting');
    const conn = { kind, opened: false, closed: false };
    this._conn = conn;
    const fresh = this._tokenFresh;
    this._tokenFresh = false;
    if (this._o.getToken && !fresh) {
      try {
        this._token = await this._o.getToken();
      } catch (err) {
        if (this._conn !== conn) return;
        this._emit('error', { code: 'token', message: `getToken failed: ${err && err.message}` });
        this._down(conn, {});
        return;
      }
      if (this._conn !== conn) return; // closed or replaced meanwhile
    } else if (!this._o.getToken && this._token && !this._saidExpired) {
      // A static token past its exp is refused on every attempt: say so
      // once, rather than retrying in silence.
      const exp = tokenExpiry(this._token);
      if (exp !== null && exp * 1000 <= this._now()) {
        this._saidExpired = true;
        this._emit('error', {
          code: 'token',
          message: `the token expired at ${new Date(exp * 1000).toISOString()}; pass getToken to renew it`,
        });
      }
    }
    const cb = {
      open: (idle) => this._up(conn, idle),
      message: (msg) => this._conn === conn && this._onMessage(msg, conn),
      down: (info) => this._down(conn, info || {}),
    };
    try {
      if (kind === 'websocket') this._openWebSocket(conn, cb);
      else if (kind === 'sse') this._openSse(conn, cb);
      else this._openPolling(conn, cb);
    } catch (err) {
      // A missing or throwing constructor counts as a failed open (and leads to fallback).
      this._emit('error', { code: 'transport', message: `${kind}: ${err && err.message}` });
      this._down(conn, {});
    }
  }

  // `idle`: SSE or polling without a channel, which has not reached the
  // server; it must not count as a transport that works (that would stop
  // the fallback from ever leaving it).
  _up(conn, idle = false) {
    if (this._conn !== conn || conn.opened) return;
    conn.opened = true;
    if (idle) return this._setState('open');
    this._everOpened.add(conn.kind);
    this._failedOpens = 0;
    this._stableTimer = this._setTimeout(() => {
      this._stableTimer = null;
      this._attempt = 0;
    }, this._o.backoff.stableMs);
    this._setState('open');
  }

  // The connection failed or closed: choose the transport and retry after backoff.
  _down(conn, info) {
    if (this._conn !== conn || conn.closed) return;
    conn.closed = true;
    conn.stop?.();
    this._conn = null;
    this._clearTimers();
    if (this._closed) return;
    if (info.code === 1008) {
      this._emit('error', { code: 'policy', message: info.reason || 'closed by server policy (1008)' });
    }
    if (!conn.opened && !this._everOpened.has(conn.kind)) {
      this._failedOpens += 1;
      if (this._failedOpens >= this._o.failuresBeforeFallback) {
        this._failedOpens = 0;
        // Move to the next transport; after the last one, start over, so a
        // server that was down at startup gets WebSocket again once it is back.
        // The backoff keeps growing across the switch, so a server that is
        // simply down is not hammered by a tour of the transports.
        this._transportIndex = (this._transportIndex + 1) % this._o.transports.length;
      }
    }
    const retryInMs = backoffDelay(this._attempt, this._o.backoff, this._random);
    this._attempt += 1;
    this._retryTimer = this._setTimeout(() => this._open(), retryInMs);
    const extra = { retryInMs, attempt: this._attempt };
    if (info.code !== undefined) extra.code = info.code;
    if (info.reason) extra.reason = info.reason;
    this._setState('reconnecting', extra);
  }

  // Replace the connection now, without backoff (channel set changed on
  // SSE/polling, token refresh on SSE, network back online).
  _reopen() {
    if (this._closed) return;
    this._dropConn();
    this._clearTimers();
    this._open();
  }

  _dropConn() {
    const conn = this._conn;
    this._conn = null;
    if (conn && !conn.closed) {
      conn.closed = true;
      conn.stop?.();
    }
  }

  _clearTimers() {
    if (this._retryTimer !== null) this._clearTimeout(this._retryTimer);
    if (this._stableTimer !== null) this._clearTimeout(this._stableTimer);
    this._retryTimer = this._stableTimer = null;
  }

  // ---- subscriptions ----

  _queueFlush() {
    if (this._flushQueued) return;
    this._flushQueued = true;
    queueMicrotask(() => {
      this._flushQueued = false;
      this._flush();
    });
  }

  // Bring the server's view of the channel set in line with the handlers.
  _flush() {
    const conn = this._conn;
    // Without a connection, or before its channel list is built, the next
    // open picks up the current set by itself.
    if (this._closed || !conn) return;
    const want = [...this._handlers.keys()];
    if (conn.kind === 'websocket') {
      if (!conn.opened) return; // onopen subscribes everything
      const add = want.filter((ch) => !conn.channels.has(ch));
      const drop = [...conn.channels].filter((ch) => !this._handlers.has(ch));
      if (add.length) this._sendSubscribe(conn, add);
      if (drop.length) {
        for (const ch of drop) conn.channels.delete(ch);
        conn.send({ op: 'unsubscribe', channels: drop });
      }
    } else if (conn.channelList !== undefined && want.join(',') !== conn.channelList) {
      this._reopen();
    }
  }

  _sendSubscribe(conn, channels) {
    const msg = { op: 'subscribe', channels };
    const since = this._sinceFor(channels);
    if (Object.keys(since).length) msg.since = since;
    for (const ch of channels) conn.channels.add(ch);
    conn.send(msg);
  }

  _sinceFor(channels) {
    const all = this.positions();
    const since = {};
    for (const ch of channels) if (all[ch]) since[ch] = all[ch];
    return since;
  }

  // ---- messages (the same JSON on every transport) ----

  _onMessage(msg, conn) {
    if (!msg || typeof msg !== 'object') return;
    this._emit('message', msg);
    switch (msg.type) {
      case 'update':
        this._onUpdate(msg);
        break;
      case 'subscribed':
        // Only the epoch is taken from the ack: its seq already covers the
        // replay that follows, which must still be delivered.
        for (const [ch, p] of Object.entries(msg.positions || {})) {
          const pos = this._pos.get(ch);
          if (this._handlers.has(ch) && (!pos || pos.epoch === null)) {
            this._pos.set(ch, { seq: pos ? pos.seq : null, epoch: p.epoch });
          }
        }
        break;
      case 'resync':
        // The stream started over: adopt the epoch and accept the next
        // update (the snapshot) whatever its seq.
        if (this._handlers.has(msg.ch)) this._pos.set(msg.ch, { seq: null, epoch: msg.epoch });
        this._emit('resync', { ch: msg.ch, epoch: msg.epoch, reason: msg.reason });
        break;
      case 'unsubscribed':
        if (msg.reason) {
          this._dropChannels(msg.channels || [], conn);
          this._emit('error', { code: msg.reason, message: `unsubscribed by the server: ${msg.reason}`, channels: msg.channels || [] });
        }
        break;
      case 'error': {
        const e = { code: msg.code, message: msg.message };
        if (Array.isArray(msg.channels)) {
          e.channels = msg.channels;
          if (msg.code === 'forbidden') this._dropChannels(msg.channels, conn);
        }
        this._emit('error', e);
        break;
      }
      case 'token_expiring':
        this._refreshToken(conn);
        break;
      default:
        break; // pong, authenticated: the watchdog already saw them
    }
  }

  _onUpdate(msg) {
    const set = this._handlers.get(msg.ch);
    if (!set) return; // a late update of a channel just unsubscribed
    const pos = this._pos.get(msg.ch) || { seq: null, epoch: null };
    if (pos.seq !== null) {
      if (msg.seq <= pos.seq) return; // duplicate at the resume seam
      if (msg.seq > pos.seq + 1) this._emit('gap', { ch: msg.ch, expected: pos.seq + 1, got: msg.seq });
    }
    this._pos.set(msg.ch, { seq: msg.seq, epoch: pos.epoch });
    const u = { ch: msg.ch, seq: msg.seq, data: msg.data };
    for (const fn of [...set]) this._call(fn, u, 'subscribe');
  }

  // Learn epochs from a resume token (SSE ids, poll `next`) for channels that
  // have none yet; seqs stay the ones delivered.
  _adoptToken(token) {
    for (const [ch, p] of Object.entries(parseResumeToken(token))) {
      const pos = this._pos.get(ch);
      if (this._handlers.has(ch) && (!pos || pos.epoch === null)) {
        this._pos.set(ch, { seq: pos ? pos.seq : null, epoch: p.epoch });
      }
    }
  }

  _dropChannels(channels, conn) {
    for (const ch of channels) {
      this._handlers.delete(ch);
      this._pos.delete(ch);
      conn?.channels?.delete(ch);
    }
    if (conn && conn.kind !== 'websocket') this._queueFlush();
  }

  _refreshToken(conn) {
    if (!this._o.getToken) return; // a static token cannot be renewed
    const done = this._fetchRefreshedToken(conn);
    // polling: the next request waits for the new token and carries it, so
    // that no poll is held with the old one across its exp
    if (conn.kind === 'polling') conn.tokenWait = done;
  }

  async _fetchRefreshedToken(conn) {
    let token;
    try {
      token = await this._o.getToken();
    } catch (err) {
      this._emit('error', { code: 'token', message: `getToken failed: ${err && err.message}` });
      return;
    }
    if (this._conn !== conn) return;
    this._token = token;
    if (conn.kind === 'websocket') conn.send({ op: 'auth', token });
    else if (conn.kind === 'sse') {
      this._tokenFresh = true; // the token lives in the URL: reopen with this one
      this._reopen();
    }
  }

  _tokenParam() {
    return this._token ? encodeURIComponent(this._token) : undefined;
  }

  _streamParams() {
    const channels = [...this._handlers.keys()];
    const since = encodeResumeToken(this.positions());
    return { channels, since: since ? encodeURIComponent(since) : undefined };
  }

  // ---- WebSocket ----

  _openWebSocket(conn, cb) {
    if (!this._WebSocket) throw new Error('no WebSocket implementation');
    const ws = new this._WebSocket(`${this._urls.ws}/ws${query({ token: this._tokenParam(), batch: this._o.batch ? 1 : undefined })}`);
    conn.channels = new Set();
    conn.send = (msg) => {
      if (ws.readyState === 1) ws.send(JSON.stringify(msg));
    };
    let pingTimer = null;
    let watchTimer = null;
    let errorTimer = null;
    let lastSeen = this._now();
    const { pingIntervalMs, watchdogMs } = this._o;
    const ping = () => {
      conn.send({ op: 'ping' });
      pingTimer = this._setTimeout(ping, pingIntervalMs);
    };
    // One timer per watchdog period, not one per message: on expiry it checks
    // when the last message came and waits again for the rest of the period.
    const watch = () => {
      const idle = this._now() - lastSeen;
      if (idle >= watchdogMs) {
        cb.down({ reason: 'watchdog: nothing received' });
        return;
      }
      watchTimer = this._setTimeout(watch, watchdogMs - idle);
    };
    conn.stop = () => {
      if (pingTimer !== null) this._clearTimeout(pingTimer);
      if (watchTimer !== null) this._clearTimeout(watchTimer);
      if (errorTimer !== null) this._clearTimeout(errorTimer);
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    };
    ws.onopen = () => {
      lastSeen = this._now();
      pingTimer = this._setTimeout(ping, pingIntervalMs);
      watchTimer = this._setTimeout(watch, watchdogMs);
      cb.open();
      const all = [...this._handlers.keys()];
      if (all.length) this._sendSubscribe(conn, all);
    };
    ws.onmessage = (ev) => {
      lastSeen = this._now();
      const text = typeof ev.data === 'string' ? ev.data : String(ev.data);
      // Batched: one server message per line (a line never holds a raw
      // newline: the server turns a payload's into spaces).
      for (const line of text.split('\n')) {
        let msg;
        try {
          msg = JSON.parse(line);
        } catch {
          this._emit('error', { code: 'bad_message', message: 'a server message is not JSON' });
          continue;
        }
        cb.message(msg);
        // A message may have stopped this connection (conn.stop clears the
        // handler): the rest of the batch is not for it, as separate
        // messages would not have been.
        if (ws.onmessage === null) return;
      }
    };
    // The close event follows an error; only the close carries the code.
    ws.onclose = (ev) => cb.down({ code: ev && ev.code, reason: ev && ev.reason });
    // Browsers fire close in the same task as error. Node 22's WebSocket
    // fires only error when the handshake fails (refused, reset, non-101)
    // and stays CONNECTING: without this the client would wait forever.
    ws.onerror = () => {
      if (errorTimer === null) errorTimer = this._setTimeout(() => cb.down({ reason: 'websocket error' }), 0);
    };
  }

  // ---- Server-Sent Events ----

  _openSse(conn, cb) {
    if (!this._EventSource) throw new Error('no EventSource implementation');
    const { channels, since } = this._streamParams();
    conn.channelList = channels.join(',');
    if (!channels.length) return cb.open(true); // nothing to stream until a subscribe
    const url = `${this._urls.http}/sse${query({ channels: conn.channelList, token: this._tokenParam(), since })}`;
    const es = new this._EventSource(url);
    const names = ['subscribed', 'update', 'resync', 'unsubscribed', 'token_expiring', 'authenticated'];
    const parse = (ev) => {
      try {
        return JSON.parse(ev.data);
      } catch {
        this._emit('error', { code: 'bad_message', message: 'an SSE event is not JSON' });
        return null;
      }
    };
    const onEvent = (ev) => {
      const msg = parse(ev);
      if (!msg) return;
      cb.message(msg);
      if (ev.lastEventId && this._conn === conn) this._adoptToken(ev.lastEventId);
    };
    for (const n of names) es.addEventListener(n, onEvent);
    // The engine ended the stream (`{"type":"close","code":1012,...}`, the
    // WebSocket close code): handle it like a WebSocket close.
    const onClose = (ev) => {
      const msg = parse(ev);
      if (msg) cb.message(msg);
      cb.down({ code: msg?.code, reason: msg?.reason });
    };
    es.addEventListener('close', onClose);
    // `error` is both the server's JSON error event and EventSource's own
    // connection failure (an Event without data).
    const onError = (ev) => {
      if (ev && typeof ev.data === 'string' && ev.data) return onEvent(ev);
      // Reopen ourselves rather than letting EventSource retry: our backoff,
      // a fresh token and exact positions in `since`.
      cb.down({ reason: 'sse connection failed' });
    };
    es.addEventListener('error', onError);
    es.addEventListener('open', () => cb.open());
    conn.stop = () => {
      for (const n of names) es.removeEventListener(n, onEvent);
      es.removeEventListener('error', onError);
      es.removeEventListener('close', onClose);
      es.close();
    };
  }

  // ---- long-polling ----

  _openPolling(conn, cb) {
    if (!this._fetch) throw new Error('no fetch implementation');
    const { channels } = this._streamParams();
    conn.channelList = channels.join(',');
    if (!channels.length) return cb.open(true);
    let next = this._streamParams().since;
    let controller = null;
    let abortTimer = null;
    conn.stop = () => {
      if (abortTimer !== null) this._clearTimeout(abortTimer);
      controller?.abort();
    };
    const poll = async () => {
      if (conn.tokenWait) {
        const wait = conn.tokenWait;
        conn.tokenWait = null;
        await wait; // never rejects: a getToken failure is reported and the old token kept
        if (conn.closed) return;
      }
      const url = `${this._urls.http}/poll${query({ channels: conn.channelList, since: next, token: this._tokenParam() })}`;
      controller = typeof AbortController === 'function' ? new AbortController() : null;
      abortTimer = this._setTimeout(() => controller?.abort(), this._o.pollAbortMs);
      let body;
      try {
        const res = await this._fetch(url, { signal: controller?.signal, headers: { accept: 'application/json' } });
        if (conn.closed) return;
        if (!res.ok) return cb.down({ code: res.status, reason: `poll answered ${res.status}` });
        body = await res.json();
      } catch (err) {
        if (!conn.closed) cb.down({ reason: `poll failed: ${err && err.message}` });
        return;
      } finally {
        this._clearTimeout(abortTimer);
        abortTimer = null;
      }
      if (conn.closed) return;
      if (!body || typeof body !== 'object' || !Array.isArray(body.messages)) {
        return cb.down({ reason: 'poll answer without a messages list' });
      }
      cb.open();
      for (const msg of body.messages) {
        if (conn.closed) return;
        cb.message(msg);
      }
      if (conn.closed) return;
      if (typeof body.next === 'string' && body.next) {
        this._adoptToken(body.next);
        next = encodeURIComponent(body.next);
      }
      poll();
    };
    poll();
  }

  // ---- browser hooks ----

  _watchBrowser() {
    const win = this._o.window ?? (typeof window !== 'undefined' ? window : null);
    const doc = this._o.document ?? (typeof document !== 'undefined' ? document : null);
    const removers = [];
    if (win && win.addEventListener) {
      const online = () => this._reopen();
      win.addEventListener('online', online);
      removers.push(() => win.removeEventListener('online', online));
    }
    if (doc && doc.addEventListener) {
      let hiddenAt = null;
      const vis = () => {
        if (doc.visibilityState === 'hidden') {
          hiddenAt = this._now();
        } else if (doc.visibilityState === 'visible' && hiddenAt !== null) {
          // Timers are throttled in hidden tabs; after a long absence the
          // connection may be dead without anyone having noticed.
          const away = this._now() - hiddenAt;
          hiddenAt = null;
          if (away > this._o.watchdogMs) this._reopen();
        }
      };
      doc.addEventListener('visibilitychange', vis);
      removers.push(() => doc.removeEventListener('visibilitychange', vis));
    }
    this._unwatchBrowser = () => removers.forEach((r) => r());
  }
}
