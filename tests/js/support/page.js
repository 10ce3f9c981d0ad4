// Opening the dashboard in Chromium and reading its test hooks (window.__tw).

import { launchBrowser } from './harness.js';

/** A browser and a page; both closed by the scope. `problems` collects page errors. */
export async function openBrowserPage(s, { viewport = { width: 1400, height: 900 } } = {}) {
  const browser = await launchBrowser();
  s.add(() => browser.close());
  const page = await browser.newPage({ viewport });
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  return { browser, page, problems };
}

export const stateText = (page) => page.textContent('#state', { timeout: 5000 }).then((x) => x.replace(/\s+/g, ' ').trim());
export const seqsOf = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.__tw.seqs)));
export const eventsOf = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.__tw.events)));
export const lastSeqs = (page) => page.evaluate(() => Object.fromEntries(Object.entries(window.__tw.seqs).map(([k, v]) => [k, v[v.length - 1]])));
