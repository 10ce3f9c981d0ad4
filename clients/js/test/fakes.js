// Fake transports and a fake clock for the unit tests: no network, no real
// timers, deterministic randomness.
import { connect } from '../tickwire.js';

/** Lets pending promise callbacks and microtasks run. */
export const flush = () => new Promise((resolve) => setImmediate(resolve));

export function fakeClock() {
  let now = 0;
  let nextId = 0;
  const timers = new Map();
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      nextId += 1;
      timers.set(nextId, { at: now + Math.max(0, ms || 0), fn });
      return nextId;
    },
    clearTimeout: (id) => {
      timers.delete(id);
    },
    pending: () => timers.size,
    /** Moves time forward by `ms`, running due timers in order. */
    async advance(ms) {
      const end = now + ms;
      for (;;) {
        let best = null;
        for (const [id, t] of timers) if (t.at <= end && (!best || t.at < best[1].at)) best = [id, t];
        if (!best) break;
        timers.delete(best[0]);
        now = best[1].at;
        best[1].fn();
        await flush();
      }
      now = end;
      await flush();
    },
  };
}

export function fakeWebSocketClass() {
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      FakeWebSocket.instances.push(this);
    }
    send(text) {
      this.sent.push(JSON.parse(text));
    }
    close(code) {
      this.closedWith = code;
      this.readyState = 3;
    }
    // test side
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    receive(msg) {
      this.onmessage?.({ data: JSON.stringify(msg) });
    }
    // a batched message (`/ws?batch=1`): one message per line
    receiveBatch(msgs) {
      this.onmessage?.({ data: msgs.map((m) => JSON.stringify(m)).join('\n') });
    }
    fail() {
      this.readyState = 3;
      this.onerror?.({});
      this.onclose?.({ code: 1006, reason: '' });
    }
    // Node 22's WebSocket when the handshake fails: error, and no close
    failWithoutClose() {
      this.onerror?.({});
    }
    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
  }
  FakeWebSocket.instances = [];
  return FakeWebSocket;
}

export function fakeEventSourceClass() {
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.closed = false;
      this.listeners = new Map();
      FakeEventSource.instances.push(this);
    }
    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, new Set());
      this.listeners.get(type).add(fn);
    }
    removeEventListener(type, fn) {
      this.listeners.get(type)?.delete(fn);
    }
    close() {
      this.closed = true;
    }
    // test side
    dispatch(type, ev) {
      for (const fn of this.listeners.get(type) || []) fn(ev);
    }
    open() {
      this.dispatch('open', {});
    }
    emit(type, msg, id = '') {
      this.dispatch(type, { data: JSON.stringify(msg), lastEventId: id });
    }
    fail() {
      this.dispatch('error', {});
    }
  }
  FakeEventSource.instances = [];
  return FakeEventSource;
}

/** A fetch whose answers the test gives one by one. */
export function fakeFetch() {
  const calls = [];
  const fetch = (url, init) =>
    new Promise((resolve, reject) => {
      calls.push({ url, init, resolve, reject });
    });
  fetch.calls = calls;
  fetch.respond = (i, body, status = 200) =>
    calls[i].resolve({ ok: status >= 200 && status < 300, status, json: async () => body });
  return fetch;
}

/** A client on fakes; `events` records every emitted event in order. */
export async function setup(options = {}, url = 'ws://tw.test:8080') {
  const clock = fakeClock();
  const WebSocket = fakeWebSocketClass();
  const EventSource = fakeEventSourceClass();
  const fetch = fakeFetch();
  const tw = connect(url, {
    WebSocket,
    EventSource,
    fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    ...options,
  });
  const events = [];
  for (const name of ['state', 'gap', 'resync', 'error']) tw.on(name, (e) => events.push([name, e]));
  const of = (name) => events.filter((e) => e[0] === name).map((e) => e[1]);
  await flush();
  return { tw, clock, WebSocket, EventSource, fetch, events, of };
}
