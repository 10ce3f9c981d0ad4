// Run by node22-client.test.js under Node >= 22: tickwire.js with the
// platform's own WebSocket (no WebSocket option passed), against a real
// engine. Prints one JSON line per event on stdout:
//   {"k":"env","node":"v22...","ws":"function"}
//   {"k":"state","state":"open","transport":"websocket"}
//   {"k":"u","ch":"C1","seq":17}
//   {"k":"gap"|"resync"|"error", ...}
// Arguments: URL CH1,CH2,...
import { connect } from '../../../clients/js/tickwire.js';

const [url, chs] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
out({ k: 'env', node: process.version, ws: typeof globalThis.WebSocket });
if (typeof globalThis.WebSocket !== 'function') process.exit(3);

// default options: WebSocket first, fallbacks as a user gets them
const tw = connect(url);
tw.on('state', (s) => out({ k: 'state', ...s }));
tw.on('gap', (g) => out({ k: 'gap', ...g }));
tw.on('resync', (r) => out({ k: 'resync', ...r }));
tw.on('error', (e) => out({ k: 'error', code: e.code, message: e.message }));
for (const ch of chs.split(',')) tw.subscribe(ch, (u) => out({ k: 'u', ch: u.ch, seq: u.seq }));
// stdin closing (the test ending) closes the client and exits
process.stdin.on('end', () => { tw.close(); process.exit(0); });
process.stdin.resume();
