//! Peer: the usual Node.js `ws` broadcast server, speaking the tickwire protocol so
//! the same loadgen drives it.
//!
//!   node ws-server.js --listen 127.0.0.1:0 --ingest 127.0.0.1:0
//!
//! Ingest is TCP NDJSON (each object has a string `ch`); each tick gets a per-channel
//! seq and is serialized once into a string that is `ws.send`-ed to every subscriber
//! of its channel. Clients send `{"op":"subscribe","channels":[...]}` and get
//! `{"type":"subscribed",...}` plus the last update of each channel as a snapshot.
'use strict';

const http = require('http');
const net = require('net');
const { WebSocketServer, WebSocket } = require('ws');

// Same bound as the baseline: a client this far behind is cut rather than buffered.
const MAX_BUFFERED = 64 * 1024 * 1024;

function parseArgs(argv) {
  const out = { listen: '127.0.0.1:0', ingest: '127.0.0.1:0' };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    const v = argv[i + 1];
    if (k === '--listen') out.listen = v;
    else if (k === '--ingest') out.ingest = v;
    else {
      console.error('usage: ws-server.js --listen HOST:PORT --ingest HOST:PORT');
      process.exit(2);
    }
  }
  return out;
}

function splitAddr(s) {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(s.slice(i + 1)) };
}

const args = parseArgs(process.argv.slice(2));
const subscribers = new Map(); // ch -> Set<WebSocket>
const channels = new Map(); // ch -> { seq, last }
let droppedSlow = 0;

const httpServer = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok\n');
  } else {
    res.writeHead(404);
    res.end();
  }
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

httpServer.on('upgrade', (req, socket, head) => {
  if (!req.url.startsWith('/ws')) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => onClient(ws));
});

function onClient(ws) {
  const mine = new Set();
  ws.on('message', (msg, isBinary) => {
    if (isBinary) return;
    let op;
    try {
      op = JSON.parse(msg);
    } catch {
      return;
    }
    const list = Array.isArray(op.channels) ? op.channels.filter((c) => typeof c === 'string') : [];
    if (op.op === 'subscribe') {
      for (const ch of list) {
        let set = subscribers.get(ch);
        if (!set) subscribers.set(ch, (set = new Set()));
        set.add(ws);
        mine.add(ch);
      }
      ws.send(JSON.stringify({ type: 'subscribed', channels: list }));
      for (const ch of list) {
        const c = channels.get(ch);
        if (c) ws.send(c.last);
      }
    } else if (op.op === 'unsubscribe') {
      for (const ch of list) {
        const set = subscribers.get(ch);
        if (set) set.delete(ws);
        mine.delete(ch);
      }
      ws.send(JSON.stringify({ type: 'unsubscribed', channels: list }));
    }
  });
  ws.on('close', () => {
    for (const ch of mine) {
      const set = subscribers.get(ch);
      if (set) set.delete(ws);
    }
  });
  ws.on('error', () => {});
}

function publish(line) {
  let ch;
  try {
    ch = JSON.parse(line).ch;
  } catch {
    return;
  }
  if (typeof ch !== 'string') return;
  let c = channels.get(ch);
  if (!c) channels.set(ch, (c = { seq: 0, last: '' }));
  c.seq += 1;
  // Serialized once per tick; `data` is the ingested object verbatim.
  const frame = `{"type":"update","ch":${JSON.stringify(ch)},"seq":${c.seq},"data":${line}}`;
  c.last = frame;
  const set = subscribers.get(ch);
  if (!set) return;
  for (const ws of set) {
    if (ws.readyState !== WebSocket.OPEN) continue;
    if (ws.bufferedAmount > MAX_BUFFERED) {
      droppedSlow += 1;
      console.error(`ws-peer: dropped slow client, ${droppedSlow} so far`);
      ws.terminate();
      continue;
    }
    ws.send(frame);
  }
}

const ingestServer = net.createServer((sock) => {
  let tail = '';
  sock.setEncoding('utf8');
  sock.on('data', (chunk) => {
    const parts = (tail + chunk).split('\n');
    tail = parts.pop();
    for (let line of parts) {
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line.length) publish(line);
    }
  });
  sock.on('error', () => {});
});

const l = splitAddr(args.listen);
const g = splitAddr(args.ingest);
httpServer.listen(l.port, l.host, () => {
  ingestServer.listen(g.port, g.host, () => {
    const la = httpServer.address();
    const ga = ingestServer.address();
    process.stdout.write(`ws-peer ready listen=${la.address}:${la.port} ingest=${ga.address}:${ga.port}\n`);
  });
});

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  ingestServer.close();
  httpServer.close();
  setTimeout(() => process.exit(0), 100).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
