/**
 * The chat web page at `/` (src/serve/web-page.ts), in a real headless Chromium (Debian's
 * `chromium`, driven by playwright-core) against the real server on 127.0.0.1: the model list shows
 * the base model and its adapter; a greedy message streams the same text the API gives non-streamed;
 * TTFT and tokens/s get numbers; Stop aborts a long answer and the server stays healthy; a saved
 * conversation loads back after a reload; the API key field authorizes the page's requests.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { suiteTempDir } from '../helpers/tmp.js';
import { webPage } from '../../src/serve/web-page.js';
import { buildTestModel, post, startServer, type TestModel, type TestServer } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const WAIT = { timeout: 30_000 };
const dir = suiteTempDir('edgellm-serve-web-');
let m: TestModel;
let server: TestServer;
const logLines: string[] = [];
let browser: BrowserContext | undefined;
let page: Page;
const servers: TestServer[] = [];
/** console errors and uncaught exceptions of the pages (a CSP violation would be one) */
const pageErrors: string[] = [];

beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium`);
  m = buildTestModel(dir);
  server = await startServer(m.hef, { chatTemplateFile: m.template, plugins: [webPage], log: (l) => logLines.push(l) });
  servers.push(server);
  browser = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    acceptDownloads: true,
    timeout: 60_000,
  });
  browser.setDefaultTimeout(30_000);
  browser.on('page', watch);
  page = browser.pages()[0] ?? (await browser.newPage());
  if (browser.pages().length === 1) watch(page);
});
afterAll(async () => {
  await browser?.close();
  for (const s of servers) await s.close();
});

function watch(p: Page): void {
  p.on('pageerror', (e) => pageErrors.push(String(e)));
  p.on('console', (msg) => {
    // the 401 of the keyed server's model list before the key is typed in is expected
    if (msg.type() === 'error' && !/401/.test(msg.text())) pageErrors.push(msg.text());
  });
}

/** The texts of the conversation's messages, as shown. */
const shown = (p: Page) =>
  p.$$eval('#messages .msg', (els) => els.map((e) => ({ role: e.getAttribute('data-role'), content: e.querySelector('.content')!.textContent })));
const idle = (p: Page) => p.waitForSelector('body[data-state=idle]', WAIT);
const setField = (p: Page, id: string, v: string) => p.fill(`#${id}`, v);

const PROMPT = 'Tell me a story about a cat.';
const GREEDY = { temperature: 0, top_p: 0.95, top_k: 40, max_tokens: 16, seed: 7 };

describe('the web page', () => {
  it('loads, public, and lists the base model and its adapter', async () => {
    const res = await page.goto(server.url + '/', WAIT);
    expect(res?.status()).toBe(200);
    expect(res?.headers()['content-type']).toMatch(/^text\/html/);
    expect(await page.title()).toBe('edgellm chat');
    await page.waitForFunction(() => (document.querySelector('#model') as HTMLSelectElement).options.length >= 2, null, WAIT);
    const models = await page.$$eval('#model option', (os) => os.map((o) => (o as HTMLOptionElement).value));
    expect(models).toEqual(expect.arrayContaining(['stories', 'stories:wiki']));
  });

  it('streams a greedy answer equal to the API\'s non-streamed one, with TTFT and tokens/s', async () => {
    await page.selectOption('#model', 'stories:wiki');
    for (const [k, v] of Object.entries(GREEDY)) await setField(page, k, String(v));
    await setField(page, 'prompt', PROMPT);
    await page.click('#send');
    await idle(page);
    expect(await page.textContent('#status')).toBe('done');
    const direct = await post(`${server.url}/v1/chat/completions`, { model: 'stories:wiki', messages: [{ role: 'user', content: PROMPT }], ...GREEDY });
    expect(direct.status, direct.text).toBe(200);
    const want = direct.body.choices[0].message.content as string;
    expect(want.length).toBeGreaterThan(0);
    expect(await shown(page)).toEqual([
      { role: 'user', content: PROMPT },
      { role: 'assistant', content: want },
    ]);
    const ttft = Number(await page.textContent('#ttft'));
    const tps = Number(await page.textContent('#tps'));
    expect(Number.isFinite(ttft) && ttft >= 0, `ttft ${ttft}`).toBe(true);
    expect(Number.isFinite(tps) && tps > 0, `tps ${tps}`).toBe(true);
    expect(await page.textContent('#messages .msg[data-role=assistant] .meta')).toMatch(/^TTFT \d+(\.\d)? ms · \d+(\.\d)? tok\/s$/);
  });

  it('Stop aborts a long answer and the server stays healthy', async () => {
    const before = (await shown(page)).length;
    await setField(page, 'temperature', '0.8');
    await setField(page, 'max_tokens', String(1 << 20));
    await setField(page, 'prompt', 'Once upon a time');
    logLines.length = 0;
    await page.click('#send');
    // stop once the first token has arrived
    await page.waitForFunction(() => !!document.querySelector('#messages .msg[data-role=assistant]:last-child .content')?.textContent, null, { ...WAIT, polling: 'raf' });
    await page.click('#stop');
    await idle(page);
    expect(await page.textContent('#status')).toBe('stopped');
    const after = await shown(page);
    expect(after.length).toBe(before + 2);
    expect(after[after.length - 1].content!.length).toBeGreaterThan(0);
    expect(await page.textContent('#messages .msg[data-role=assistant]:last-child .meta')).toMatch(/stopped$/);
    // the server saw the client go (499) and aborted the generation before the context was full
    await expect.poll(() => logLines.find((l) => l.includes('POST /v1/chat/completions')), WAIT).toBeDefined();
    const line = logLines.find((l) => l.includes('POST /v1/chat/completions'))!;
    expect(line).toMatch(/ 499 /);
    const generated = Number(/generated=(\d+)/.exec(line)?.[1]);
    expect(generated).toBeLessThan(server.state.model!.session.capacity);
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
    expect((await health.json()).slots_processing).toBe(0);
    const again = await post(`${server.url}/v1/chat/completions`, { model: 'stories', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 });
    expect(again.status, again.text).toBe(200);
  });

  it('saves the conversation, and loads it back after a reload', async () => {
    const conversation = await shown(page);
    expect(conversation.length).toBe(4);
    const [download] = await Promise.all([page.waitForEvent('download', WAIT), page.click('#save')]);
    expect(download.suggestedFilename()).toBe('conversation.json');
    const file = path.join(dir, 'conversation.json');
    await download.saveAs(file);
    const saved = JSON.parse(fs.readFileSync(file, 'utf8'));
    expect(saved.model).toBe('stories:wiki');
    expect(saved.messages.map((x: { role: string; content: string }) => ({ role: x.role, content: x.content }))).toEqual(conversation);

    await page.reload(WAIT);
    await page.waitForFunction(() => (document.querySelector('#model') as HTMLSelectElement).options.length >= 2, null, WAIT);
    expect(await shown(page)).toEqual([]);
    await page.setInputFiles('#load-file', file);
    await page.waitForFunction((n) => document.querySelectorAll('#messages .msg').length === n, conversation.length, WAIT);
    expect(await shown(page)).toEqual(conversation);
    expect(await page.inputValue('#model')).toBe('stories:wiki');
    expect(await page.inputValue('#max_tokens')).toBe(String(1 << 20));
  });

  it('with --api-key: the page itself is public, its requests send the key typed in', async () => {
    const keyed = await startServer(m.hef, { chatTemplateFile: m.template, plugins: [webPage], apiKey: 'sekret' });
    servers.push(keyed);
    const p = await browser!.newPage();
    try {
      expect((await p.goto(keyed.url + '/', WAIT))?.status()).toBe(200);
      await p.waitForFunction(() => /401/.test(document.querySelector('#status')!.textContent!), null, WAIT);
      await p.fill('#apikey', 'sekret');
      await p.locator('#apikey').dispatchEvent('change');
      await p.waitForFunction(() => (document.querySelector('#model') as HTMLSelectElement).options.length >= 2, null, WAIT);
      await setField(p, 'temperature', '0');
      await setField(p, 'max_tokens', '4');
      await setField(p, 'prompt', 'Hi');
      await p.click('#send');
      await idle(p);
      expect(await p.textContent('#status')).toBe('done');
      expect((await shown(p)).length).toBe(2);
    } finally {
      await p.close();
    }
  });

  it('raised no script errors or CSP violations', () => {
    expect(pageErrors).toEqual([]);
  });
});
