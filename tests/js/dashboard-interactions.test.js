// What a user does with the dashboard, in a real Chromium: sort by a column
// (click, and Enter on a focused header), the keyboard shortcuts the page
// names in its header ("/" search, Esc clear), the channel picker's search,
// the up/down flash of a changing cell, the reconnect countdown while the
// engine is unreachable, and the "how to feed" help of an engine without
// channels (shown, then gone once a channel exists).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { fileWatchdog, openFeed, scope, sleep, startEngine, waitFor } from './support/harness.js';
import { openBrowserPage, stateText } from './support/page.js';

fileWatchdog(170000);

// Fixed quotes whose orders by symbol, bid and ask all differ.
const QUOTES = {
  'Q.AAA': { bid: 30, ask: 90 },
  'Q.BBB': { bid: 10, ask: 70 },
  'Q.CCC': { bid: 50, ask: 60 },
  'Q.DDD': { bid: 20, ask: 80 },
  'X.EEE': { bid: 40, ask: 50 },
};
const NAMES = Object.keys(QUOTES);

async function quotePage(t, s, { ch = NAMES } = {}) {
  const engine = await startEngine();
  s.add(() => engine.stop());
  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  for (const n of NAMES) feed.send(n, QUOTES[n]);
  const { page, problems } = await openBrowserPage(s);
  await page.goto(`${engine.url}/?ch=${ch.join(',')}`, { timeout: 15000 });
  await waitFor(async () => /live websocket/i.test(await stateText(page)), { timeoutMs: 15000, what: '#state live websocket' });
  await waitFor(() => page.evaluate((names) => names.every((n) => {
    const td = document.querySelector(`#board tr[data-ch="${n}"] td.bid`);
    return td && td.textContent.trim() !== '';
  }), ch), { timeoutMs: 10000, what: 'a bid in every row' });
  return { engine, feed, page, problems };
}

const boardOrder = (page) => page.evaluate(() => [...document.querySelectorAll('#board tbody tr[data-ch]')].map((tr) => tr.dataset.ch));
const ariaSort = (page) => page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#board thead th[data-k]')]
  .map((th) => [th.dataset.k, th.getAttribute('aria-sort')]).filter(([, v]) => v !== 'none')));
const by = (k, dir) => NAMES.slice().sort((a, b) => (QUOTES[a][k] - QUOTES[b][k]) * dir);

test('sorting: click and Enter on a column header reorder the rows and set aria-sort', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const { page, problems } = await quotePage(t, s);
  await waitFor(async () => JSON.stringify(await boardOrder(page)) === JSON.stringify(NAMES), { timeoutMs: 5000, what: 'symbol order at start' });
  assert.deepEqual(await ariaSort(page), { sym: 'ascending' });

  await page.click('#board thead button[data-k="bid"]');
  await waitFor(async () => JSON.stringify(await boardOrder(page)) === JSON.stringify(by('bid', -1)), { timeoutMs: 5000, what: `bid descending ${by('bid', -1)}` });
  assert.deepEqual(await ariaSort(page), { bid: 'descending' });
  await page.click('#board thead button[data-k="bid"]');
  await waitFor(async () => JSON.stringify(await boardOrder(page)) === JSON.stringify(by('bid', 1)), { timeoutMs: 5000, what: 'bid ascending after a second click' });
  assert.deepEqual(await ariaSort(page), { bid: 'ascending' });

  // keyboard only: focus the Ask header and press Enter
  await page.focus('#board thead button[data-k="ask"]');
  await page.keyboard.press('Enter');
  await waitFor(async () => JSON.stringify(await boardOrder(page)) === JSON.stringify(by('ask', -1)), { timeoutMs: 5000, what: 'ask descending after Enter' });
  assert.deepEqual(await ariaSort(page), { ask: 'descending' });
  await page.keyboard.press('Enter');
  await waitFor(async () => JSON.stringify(await boardOrder(page)) === JSON.stringify(by('ask', 1)), { timeoutMs: 5000, what: 'ask ascending after a second Enter' });
  // back to symbols, descending
  await page.focus('#board thead button[data-k="sym"]');
  await page.keyboard.press('Enter');
  await page.keyboard.press('Enter');
  await waitFor(async () => JSON.stringify(await boardOrder(page)) === JSON.stringify(NAMES.slice().reverse()), { timeoutMs: 5000, what: 'symbols descending' });
  assert.deepEqual(await ariaSort(page), { sym: 'descending' });
  assert.deepEqual(problems, []);
});

test('keyboard shortcuts and the channel picker: "/" focuses search, typing filters, Esc clears, Enter subscribes', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const { page, feed, problems } = await quotePage(t, s, { ch: ['Q.AAA'] });
  const listed = () => page.evaluate(() => [...document.querySelectorAll('#chlist button[data-ch]')].map((b) => b.dataset.ch).sort());
  await waitFor(async () => JSON.stringify(await listed()) === JSON.stringify(NAMES), { timeoutMs: 15000, what: `the picker to list ${NAMES}` });
  // the header names the shortcuts
  assert.match(await page.textContent('header .kbd'), /\/\s*search.*Esc\s*clear/);

  await page.evaluate(() => document.activeElement?.blur()); // focus on no input
  await page.keyboard.press('/');
  assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.id), 'picker', '"/" focuses the search box');
  assert.equal(await page.inputValue('#picker'), '', 'the "/" is not typed into it');
  await page.keyboard.type('x.e');
  await waitFor(async () => JSON.stringify(await listed()) === JSON.stringify(['X.EEE']), { timeoutMs: 5000, what: 'the list filtered to X.EEE' });
  await page.keyboard.press('Escape');
  assert.equal(await page.inputValue('#picker'), '', 'Esc clears the search');
  await waitFor(async () => (await listed()).length === NAMES.length, { timeoutMs: 5000, what: 'the full list again' });
  await page.keyboard.type('BBB');
  await waitFor(async () => JSON.stringify(await listed()) === JSON.stringify(['Q.BBB']), { timeoutMs: 5000, what: 'the list filtered to Q.BBB' });
  await page.keyboard.press('Enter'); // the only match: subscribe to it
  await waitFor(() => page.evaluate(() => document.querySelector('#board tr[data-ch="Q.BBB"] td.bid')?.textContent.trim() === '10.00'),
    { timeoutMs: 5000, what: 'Q.BBB on the board with its bid' });
  assert.equal(await page.inputValue('#picker'), '');
  // ArrowDown moves into the list; Enter on a channel button toggles it
  await page.keyboard.press('ArrowDown');
  const focused = await page.evaluate(() => document.activeElement?.dataset?.ch);
  assert.ok(NAMES.includes(focused), `focus on a channel button (${focused})`);
  assert.ok(feed.connected);
  assert.deepEqual(problems, []);
});

test('a changing cell flashes up, then down', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const { page, feed, problems } = await quotePage(t, s, { ch: ['Q.CCC'] });
  // record every class the bid and change cells take (a flash lasts 300 ms)
  await page.evaluate(() => {
    window.__classes = [];
    const tr = document.querySelector('#board tr[data-ch="Q.CCC"]');
    const mo = new MutationObserver((ms) => { for (const m of ms) window.__classes.push(m.target.className); });
    for (const td of tr.querySelectorAll('td.bid, td.chg')) mo.observe(td, { attributes: true, attributeFilter: ['class'] });
  });
  const classes = () => page.evaluate(() => window.__classes.slice());
  feed.send('Q.CCC', { bid: 51, ask: 61 });
  await waitFor(async () => { const c = await classes(); return c.includes('bid fu') && c.includes('chg up fu'); }, { timeoutMs: 5000, what: 'bid and change cells flash up' });
  await waitFor(async () => (await classes()).at(-1) && !/\bf[ud]\b/.test(await page.getAttribute('#board tr[data-ch="Q.CCC"] td.bid', 'class')),
    { timeoutMs: 3000, what: 'the up flash to end' });
  assert.match(await page.textContent('#board tr[data-ch="Q.CCC"] td.chg'), /▲/);
  await sleep(400); // past the flash and its rest
  feed.send('Q.CCC', { bid: 49, ask: 59 });
  await waitFor(async () => { const c = await classes(); return c.includes('bid fd') && c.includes('chg dn fd'); }, { timeoutMs: 5000, what: 'bid and change cells flash down' });
  assert.match(await page.textContent('#board tr[data-ch="Q.CCC"] td.chg'), /▼/);
  assert.equal((await page.textContent('#board tr[data-ch="Q.CCC"] td.bid')).trim(), '49.00');
  t.diagnostic(`class changes: ${JSON.stringify(await classes())}`);
  assert.deepEqual(problems, []);
});

test('engine unreachable: #state shows reconnecting with a countdown that runs down', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const { page, engine, problems } = await quotePage(t, s, { ch: ['Q.AAA'] });
  await engine.kill();
  const seen = [];
  const ticking = await waitFor(async () => {
    const txt = await stateText(page);
    const m = /reconnecting .*\bin (\d+\.\d)s/i.exec(txt);
    if (m) {
      const v = Number(m[1]);
      const prev = seen[seen.length - 1];
      if (!prev || prev.v !== v) seen.push({ v, txt });
      // two readings of one wait, counting down
      return prev && v > 0 && v < prev.v && prev.v - v < 2 && txt;
    }
    return false;
  }, { timeoutMs: 30000, intervalMs: 100, what: 'a countdown in #state' });
  t.diagnostic(`#state: "${ticking}"; readings ${seen.map((x) => x.v).join(' ')}`);
  assert.match(ticking, /attempt \d+/);
  assert.equal(await page.getAttribute('#state', 'data-s'), 'reconnecting');
  assert.deepEqual(problems, []);
});

test('without --demo and without channels the "how to feed" help is visible; it goes once a channel exists', { timeout: 60000 }, async (t) => {
  const s = scope(t);
  const engine = await startEngine();
  s.add(() => engine.stop());
  const { page, problems } = await openBrowserPage(s);
  await page.goto(engine.url + '/', { timeout: 15000 });
  await waitFor(() => page.isVisible('#help'), { timeoutMs: 10000, what: '#help visible' });
  const box = await page.locator('#help').boundingBox();
  assert.ok(box && box.width > 200 && box.height > 60, `#help has a real size on screen: ${JSON.stringify(box)}`);
  const help = await page.textContent('#help');
  assert.match(help, /No feed yet/);
  assert.ok(help.includes(`nc 127.0.0.1 ${engine.ingestPort}`), `the help names this engine's ingest port ${engine.ingestPort}: ${help}`);
  assert.match(help, /--demo/);
  await sleep(1500);
  assert.ok(await page.isVisible('#help'), 'still visible while there are no channels');

  const feed = openFeed(engine.ingestPort);
  s.add(() => feed.close());
  await feed.ready;
  feed.send('FED.1', { bid: 1.25, ask: 1.27 });
  await waitFor(async () => !(await page.isVisible('#help')), { timeoutMs: 15000, what: '#help hidden once a channel exists' });
  await waitFor(() => page.evaluate(() => document.querySelector('#board tr[data-ch="FED.1"]') !== null), { timeoutMs: 15000, what: 'FED.1 on the board (follow new channels)' });
  assert.deepEqual(problems, []);
});
