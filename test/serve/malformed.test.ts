/**
 * 500 generated malformed requests (fast-check) against the real server: wrong types, missing
 * fields, huge numbers, invalid UTF-8, truncated JSON, oversized bodies, unknown fields, non-object
 * bodies, prototype poisoning — on every POST route of both APIs and the context routes. Each gets
 * a 4xx with a JSON error body in its API's shape, and /health still answers 200 afterwards.
 * Every base request is valid (checked first) and asks for one token, so a mutation that slipped
 * through as valid would show up as a 200.
 *
 *   EDGELLM_FUZZ_SEED   seed of the generated requests (default 20250101)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { suiteTempDir } from '../helpers/tmp.js';
import { buildTestModel, startServer, type TestServer } from './helpers.js';

const SEED = Number(process.env.EDGELLM_FUZZ_SEED ?? 20250101);
const COUNT = 500;
const BODY_LIMIT = 64 << 10;
const dir = suiteTempDir('edgellm-serve-fuzz-');
let srv: TestServer;

beforeAll(async () => {
  const m = buildTestModel(dir);
  srv = await startServer(m.hef, { chatTemplateFile: m.template, bodyLimit: BODY_LIMIT, contextsDir: dir, maxQueue: 64 });
});
afterAll(async () => srv?.close());

type Json = Record<string, any>;
interface Route {
  path: string;
  style: 'openai' | 'ollama';
  base: Json;
  required: string[];
  /** field path -> values that are invalid there */
  bad: Record<string, fc.Arbitrary<unknown>>;
}

const notString = fc.oneof(fc.integer(), fc.boolean(), fc.array(fc.integer(), { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 3 }), fc.integer(), { maxKeys: 2 }));
const notNumber = fc.oneof(fc.string({ maxLength: 8 }), fc.boolean(), fc.array(fc.integer(), { maxLength: 3 }), fc.constant({}));
const notInt = fc.oneof(notNumber, fc.double({ min: 0.01, max: 1000, noNaN: true }).filter((x) => !Number.isInteger(x)));
const huge = fc.constantFrom(1e308, -1e308, 1e20, -1e20, 2 ** 53 + 2, -(2 ** 40));
const above = (max: number) => fc.oneof(fc.double({ min: max + 0.001, max: 1e300, noNaN: true }), huge.filter((x) => x > max));
const below = (min: number) => fc.oneof(fc.double({ min: -1e300, max: min - 0.001, noNaN: true }), huge.filter((x) => x < min));
const unknownModel = fc.string({ maxLength: 12 }).map((s) => `nope-${s}`);
const badMessages = fc.oneof(
  notString.filter((v) => !Array.isArray(v)),
  fc.constant([]),
  fc.array(fc.oneof(fc.constant({}), fc.record({ role: fc.string({ maxLength: 6 }).map((s) => `r_${s}`), content: fc.constant('x') }), fc.record({ role: fc.constant('user'), content: fc.oneof(fc.integer(), fc.boolean()) })), { minLength: 1, maxLength: 3 }),
);

const openaiSampling = {
  model: fc.oneof(notString, unknownModel),
  max_tokens: fc.oneof(notInt, below(1), above(1 << 20)),
  temperature: fc.oneof(notNumber, below(0), above(100)),
  top_p: fc.oneof(notNumber, below(0), above(1)),
  top_k: fc.oneof(notInt, below(0)),
  frequency_penalty: fc.oneof(notNumber, below(-2), above(2)),
  seed: fc.oneof(notInt, below(0), above(2 ** 32)),
  stop: fc.oneof(fc.integer(), fc.array(fc.integer(), { minLength: 1, maxLength: 3 }), fc.constant(['']), fc.array(fc.constant('s'), { minLength: 17, maxLength: 20 })),
  stream: fc.oneof(fc.string({ maxLength: 4 }), fc.integer()),
  n: fc.integer({ min: 2, max: 100 }),
  logprobs: fc.constant(true),
  context_id: fc.oneof(notString, fc.constantFrom('../x', '.hidden', '', 'a/b', 'x'.repeat(65))),
};
const ollamaOptions = {
  model: fc.oneof(notString, unknownModel),
  stream: fc.oneof(fc.string({ maxLength: 4 }), fc.integer()),
  'options.temperature': fc.oneof(notNumber, below(0), above(100)),
  'options.num_predict': fc.oneof(notInt, fc.constant(0), below(-2), above(1 << 20)),
  'options.top_k': fc.oneof(notInt, below(0)),
  'options.num_ctx': fc.oneof(notInt, fc.constant(0), above(512)),
  'options.seed': fc.oneof(notInt, below(0), above(2 ** 32)),
  'options.stop': fc.oneof(fc.integer(), fc.constant([''])),
  options: fc.oneof(fc.string({ maxLength: 4 }), fc.integer(), fc.array(fc.integer(), { maxLength: 2 })),
  format: fc.constantFrom('json', { type: 'object' }),
};

const ROUTES: Route[] = [
  {
    path: '/v1/chat/completions',
    style: 'openai',
    base: { model: 'stories', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1 },
    required: ['model', 'messages'],
    bad: { ...openaiSampling, messages: badMessages, max_completion_tokens: fc.oneof(notInt, below(1)), tools: fc.constant([{ type: 'function' }]) },
  },
  {
    path: '/v1/completions',
    style: 'openai',
    base: { model: 'stories', prompt: 'Hi', max_tokens: 1 },
    required: ['model', 'prompt'],
    bad: { ...openaiSampling, prompt: fc.oneof(fc.integer(), fc.boolean(), fc.constant([]), fc.constant(['a', 'b']), fc.constant([-1]), fc.constant([100000]), fc.constant({})), echo: fc.constant(true) },
  },
  {
    path: '/api/generate',
    style: 'ollama',
    base: { model: 'stories', prompt: 'Hi', stream: false, options: { num_predict: 1 } },
    required: ['model'],
    bad: { ...ollamaOptions, prompt: notString, raw: fc.oneof(fc.string({ maxLength: 3 }), fc.integer()), context: fc.oneof(fc.string({ maxLength: 3 }), fc.constant([-1]), fc.constant([1.5]), fc.constant([99999])), system: notString },
  },
  {
    path: '/api/chat',
    style: 'ollama',
    base: { model: 'stories', messages: [{ role: 'user', content: 'Hi' }], stream: false, options: { num_predict: 1 } },
    required: ['model'],
    bad: { ...ollamaOptions, messages: badMessages.filter((v) => !(Array.isArray(v) && v.length === 0)), tools: fc.constant([{ type: 'function' }]) },
  },
  { path: '/api/show', style: 'ollama', base: { model: 'stories' }, required: [], bad: { model: fc.oneof(notString, unknownModel), verbose: fc.string({ maxLength: 3 }) } },
  { path: '/slots/nosuch?action=save', style: 'openai', base: { filename: 'x.ctx' }, required: [], bad: { filename: fc.oneof(notString, fc.constantFrom('../x', '/etc/passwd', '.x', 'a/b', '')) } },
];

interface Case {
  route: Route;
  kind: string;
  body: Uint8Array;
}

const enc = (s: string) => new TextEncoder().encode(s);
const setPath = (o: Json, p: string, v: unknown) => {
  const keys = p.split('.');
  let t = o;
  for (const k of keys.slice(0, -1)) t = t[k] = typeof t[k] === 'object' && t[k] !== null ? t[k] : {};
  t[keys.at(-1)!] = v;
};
const clone = (o: Json): Json => JSON.parse(JSON.stringify(o));
const INVALID_UTF8 = [[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0xe2, 0x82], [0xf8, 0x88, 0x80, 0x80, 0x80]];

function caseArb(route: Route): fc.Arbitrary<Case> {
  const make = (kind: string, body: Uint8Array | string): Case => ({ route, kind, body: typeof body === 'string' ? enc(body) : body });
  const fields = Object.keys(route.bad);
  const wrong = fc.constantFrom(...fields).chain((f) => route.bad[f].map((v) => {
    const b = clone(route.base);
    setPath(b, f, v);
    return make(`wrong ${f}`, JSON.stringify(b));
  }));
  const kinds: fc.Arbitrary<Case>[] = [
    wrong,
    fc.constantFrom(...fields.filter((f) => !f.includes('.'))).chain((f) => huge.map((v) => {
      const b = clone(route.base);
      b[f] = v;
      // a number where a string is wanted is wrong too; 1e999 parses to Infinity
      return make(`huge ${f}`, JSON.stringify(b).replace(String(v), v === 1e308 ? '1e999' : String(v)));
    })),
    fc.nat({ max: 10_000 }).map((i) => {
      const s = JSON.stringify(route.base);
      return make('truncated', s.slice(0, i % s.length));
    }),
    fc.tuple(fc.constantFrom(...INVALID_UTF8), fc.nat()).map(([bad, i]) => {
      const s = JSON.stringify({ ...route.base, ...(route.path.startsWith('/slots') ? { filename: 'x@@y' } : 'prompt' in route.base ? { prompt: 'x@@y' } : { model: 'stor@@ies' }) });
      const [a, b] = s.split('@@');
      return make('invalid utf-8', new Uint8Array([...enc(a), ...bad, ...(i % 2 ? bad : []), ...enc(b)]));
    }),
    fc.nat({ max: 3 * BODY_LIMIT }).map((extra) => make('oversized', JSON.stringify({ ...route.base, prompt: 'x'.repeat(BODY_LIMIT + extra) }))),
    fc.tuple(fc.string({ minLength: 1, maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), fc.boolean()).map(([k, v, nested]) => {
      const b = clone(route.base);
      if (nested && b.options) b.options[`zz_${k}`] = v;
      else if (nested && b.messages) b.messages[0][`zz_${k}`] = v;
      else b[`zz_${k}`] = v;
      return make('unknown field', JSON.stringify(b));
    }),
    fc.oneof(fc.constant('null'), fc.constant('[]'), fc.constant('"text"'), fc.constant('42'), fc.constant('{"__proto__":{"x":1}}'), fc.constant('{"constructor":{"prototype":{"x":1}}}'), fc.constant('{,}'))
      .filter((s) => !(route.path.startsWith('/slots') && s === 'null'))
      .map((s) => make('not an object', s)),
  ];
  if (route.required.length) kinds.push(fc.constantFrom(...route.required).map((f) => {
    const b = clone(route.base);
    delete b[f];
    return make(`missing ${f}`, JSON.stringify(b));
  }));
  return fc.oneof(...kinds);
}

async function send(c: Case): Promise<{ status: number; type: string; body: any }> {
  const r = await fetch(srv.url + c.route.path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: new Uint8Array(c.body) });
  const text = await r.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status: r.status, type: r.headers.get('content-type') ?? '', body };
}

describe('malformed requests', () => {
  it('every base request is valid', async () => {
    for (const route of ROUTES) {
      const r = await send({ route, kind: 'valid', body: enc(JSON.stringify(route.base)) });
      expect(r.status, `${route.path}: ${JSON.stringify(r.body)}`).toBe(route.path.startsWith('/slots') ? 404 : 200);
    }
  });

  it(`answers ${COUNT} generated malformed requests with a 4xx and a JSON error body, and keeps serving`, async () => {
    const cases = fc.sample(fc.constantFrom(...ROUTES).chain(caseArb), { numRuns: COUNT, seed: SEED });
    const t0 = performance.now();
    const failures: string[] = [];
    const kinds = new Map<string, number>();
    for (let i = 0; i < cases.length; i += 8)
      await Promise.all(
        cases.slice(i, i + 8).map(async (c) => {
          kinds.set(c.kind.split(' ')[0], (kinds.get(c.kind.split(' ')[0]) ?? 0) + 1);
          const r = await send(c);
          const shaped = c.route.style === 'ollama' ? typeof r.body?.error === 'string' : typeof r.body?.error?.message === 'string';
          if (r.status < 400 || r.status > 499 || !r.type.includes('application/json') || !shaped)
            failures.push(`${c.route.path} [${c.kind}] ${Buffer.from(c.body).toString('utf8').slice(0, 160)} -> ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`);
        }),
      );
    const ms = performance.now() - t0;
    expect(failures, failures.slice(0, 10).join('\n')).toEqual([]);
    expect(kinds.size).toBeGreaterThanOrEqual(8);
    expect(ms).toBeLessThan(60_000);
    const h = await fetch(`${srv.url}/health`);
    expect([h.status, (await h.json()).status]).toEqual([200, 'ok']);
    console.log(`[fuzz] serve: ${COUNT} malformed requests in ${(ms / 1000).toFixed(1)} s (seed ${SEED}): ${[...kinds].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  });
});
