/**
 * Shared pieces of the fast-check fuzz suites (test/fuzz/*.fuzz.test.ts): run counts and seeds from
 * the environment, the property every reader must satisfy (it returns, or it throws one of edgellm's
 * typed errors; a FormatError names the file on one line), byte-level mutations of valid files, and
 * a runner that logs `[fuzz] <reader>: <n> cases ...` for `npm run fuzz`.
 *
 *   EDGELLM_FUZZ_RUNS     cases per property (default 200; `npm run fuzz` uses 10000)
 *   EDGELLM_FUZZ_SEED     base seed (default 20250101); each property adds a fixed offset, so a
 *                         failure's logged seed reproduces it alone
 *   EDGELLM_FUZZ_TIME_MS  wall-time cap per property (default 4 s, or 170 s when RUNS > 1000);
 *                         fast-check stops early (not a failure) and the log says how far it got
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { EdgeLLMError, FormatError } from '../../src/core/errors.js';

export const RUNS = Math.max(1, Number(process.env.EDGELLM_FUZZ_RUNS ?? 200));
export const BASE_SEED = Number(process.env.EDGELLM_FUZZ_SEED ?? 20250101);
export const TIME_LIMIT_MS = Number(process.env.EDGELLM_FUZZ_TIME_MS ?? (RUNS > 1000 ? 170_000 : 4_000));
/** One case slower than this is a failure ("never a hang"). */
export const SLOW_CASE_MS = Number(process.env.EDGELLM_FUZZ_SLOW_MS ?? 5_000);
/** vitest timeout for one fuzz test: the time cap plus slack for setup and one slow last case. */
export const TEST_TIMEOUT_MS = TIME_LIMIT_MS + 60_000;

type ErrorClass = abstract new (...args: any[]) => EdgeLLMError;

/**
 * A reader bug the fuzzers found and reported but that is not fixed yet (fixing is the reader
 * owner's call). Outside strict mode (EDGELLM_FUZZ_STRICT=1) a failure it matches is counted and
 * logged as `known:<id>` instead of failing the property, so the suite stays green while the rest
 * of the input space is still explored; strict mode turns them back into failures.
 */
export interface KnownIssue {
  id: string;
  matches: (e: unknown) => boolean;
}

export const STRICT = process.env.EDGELLM_FUZZ_STRICT === '1';

/** known-issue hits of the property running now (reset and printed by runProperty) */
const knownHits = new Map<string, number>();

export interface Expectation {
  /** the path or label a FormatError's message must contain (and start with) */
  file: string;
  /** typed errors besides FormatError the reader documents (e.g. UnsupportedModelError) */
  also?: ErrorClass[];
  /** reported, unfixed bugs tolerated outside strict mode */
  known?: KnownIssue[];
}

/** Describes an error for a counterexample report: class, message and the top of its stack. */
function show(e: unknown): string {
  if (e instanceof Error) return `${e.constructor.name}: ${e.message}\n${(e.stack ?? '').split('\n').slice(1, 8).join('\n')}`;
  return `non-Error thrown: ${String(e)}`;
}

/** Characters a one-line message must not hold (src/core/errors.ts escapes them in every typed error). */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/**
 * The reader property: `e` (what the call threw) is a FormatError whose message names
 * `expect.file`, or an instance of one of `expect.also`; either way its message holds no newline or
 * other control character. Throws (failing the property) otherwise.
 */
export function checkThrown(e: unknown, expect: Expectation): void {
  const known = STRICT ? undefined : expect.known?.find((k) => k.matches(e));
  if (known) {
    knownHits.set(known.id, (knownHits.get(known.id) ?? 0) + 1);
    return;
  }
  const typed = e instanceof FormatError || expect.also?.some((C) => e instanceof C);
  if (typed && CONTROL.test((e as Error).message)) throw new Error(`message is not one line: ${JSON.stringify((e as Error).message.slice(0, 300))}\n${show(e)}`);
  if (e instanceof FormatError) {
    if (!e.message.includes(expect.file)) throw new Error(`FormatError does not name ${expect.file}: ${show(e)}`);
    return;
  }
  if (typed) return;
  if (e instanceof EdgeLLMError) throw new Error(`unexpected EdgeLLMError subclass: ${show(e)}`);
  throw new Error(`untyped error: ${show(e)}`);
}

/** Runs `fn` (sync) and applies {@link checkThrown} to what it throws; returns its result or undefined. */
export function expectTypedSync<T>(fn: () => T, expect: Expectation): T | undefined {
  const t0 = performance.now();
  try {
    return fn();
  } catch (e) {
    checkThrown(e, expect);
    return undefined;
  } finally {
    checkCaseTime(t0);
  }
}

/** "Never a hang": one case slower than SLOW_CASE_MS fails. */
function checkCaseTime(t0: number): void {
  const ms = performance.now() - t0;
  if (ms > SLOW_CASE_MS) throw new Error(`one case took ${ms.toFixed(0)} ms (> ${SLOW_CASE_MS} ms)`);
}

/** Async {@link expectTypedSync}. */
export async function expectTyped<T>(fn: () => Promise<T>, expect: Expectation): Promise<T | undefined> {
  const t0 = performance.now();
  try {
    return await fn();
  } catch (e) {
    checkThrown(e, expect);
    return undefined;
  } finally {
    checkCaseTime(t0);
  }
}

/** Per-reader tallies kept by the properties (how many cases returned, threw which error). */
export class Outcomes {
  private counts = new Map<string, number>();
  ok(): void {
    this.add('ok');
  }
  add(key: string): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }
  /** `<outcome> <count>, ...`, most frequent first. */
  summary(): string {
    return [...this.counts].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ${n}`).join(', ');
  }
}

/** Tallies outcome classes: wraps fn so the Outcomes record ok / the thrown class name. */
export function tally<A extends unknown[], R>(out: Outcomes, fn: (...a: A) => R): (...a: A) => R {
  return (...a: A) => {
    try {
      const r = fn(...a);
      out.ok();
      return r;
    } catch (e) {
      out.add((e as Error)?.constructor?.name ?? typeof e);
      throw e;
    }
  };
}

export interface RunOptions {
  /** offset added to BASE_SEED, fixed per property so seeds do not depend on run order */
  seedOffset: number;
  /** cases (default RUNS) */
  numRuns?: number;
  /** wall-time cap (default TIME_LIMIT_MS) */
  timeLimitMs?: number;
  /** outcome tallies to print with the summary line */
  outcomes?: Outcomes;
}

/** Cases per fast-check call; between calls the worker's event loop runs (vitest's RPC answers). */
const BATCH_RUNS = 1000;
/** Longest one call may block the event loop (vitest's worker RPC times out after 60 s). */
const BATCH_MS = 15_000;

/**
 * Checks `property` with a fixed seed, a run count and a time cap, prints one summary line
 * (`[fuzz] <name>: <n>/<asked> cases in <t> s, seed <s> ...`) and fails with fast-check's report
 * (seed, path, counterexample) if a case broke the property. The cases run in batches of
 * {@link BATCH_RUNS} (batch i with seed + i·1,000,003), yielding to the event loop in between: a
 * synchronous property would otherwise block the vitest worker for minutes. A failing batch's seed
 * is printed; EDGELLM_FUZZ_SEED = that seed − the property's seedOffset makes it the first batch.
 */
export async function runProperty(name: string, property: fc.IProperty<any> | fc.IAsyncProperty<any>, opts: RunOptions): Promise<void> {
  const seed = BASE_SEED + opts.seedOffset;
  const numRuns = opts.numRuns ?? RUNS;
  const limit = opts.timeLimitMs ?? TIME_LIMIT_MS;
  const t0 = performance.now();
  knownHits.clear();
  let done = 0;
  let interrupted = false;
  let failed: { details: fc.RunDetails<any>; seed: number } | null = null;
  for (let i = 0; done < numRuns && !failed; i++) {
    const left = limit - (performance.now() - t0);
    if (left <= 0) {
      interrupted = true;
      break;
    }
    const batchSeed = seed + i * 1_000_003;
    const runs = Math.min(BATCH_RUNS, numRuns - done);
    const details = await fc.check(property as fc.IAsyncProperty<any>, { seed: batchSeed, numRuns: runs, interruptAfterTimeLimit: Math.min(left, BATCH_MS), markInterruptAsFailure: false, includeErrorInReport: true });
    done += details.numRuns;
    if (details.failed) failed = { details, seed: batchSeed };
    else if (details.interrupted && details.numRuns === 0) {
      interrupted = true;
      break;
    }
    await new Promise((r) => setImmediate(r));
  }
  const secs = ((performance.now() - t0) / 1000).toFixed(1);
  const status = failed ? `FAILED (seed ${failed.seed}, path ${failed.details.counterexamplePath})` : interrupted || done < numRuns ? 'stopped at the time limit' : 'ok';
  const known = [...knownHits].map(([id, n]) => `known:${id} ${n}`);
  const tallies = opts.outcomes || known.length ? ` [${[opts.outcomes?.summary(), ...known].filter(Boolean).join(', ')}]` : '';
  console.log(`[fuzz] ${name}: ${done}/${numRuns} cases in ${secs} s, seed ${seed}, ${status}${tallies}`);
  if (failed) throw new Error(`[fuzz] ${name}\n${fc.defaultReportMessage(failed.details)}`);
}

// ---------------------------------------------------------------------------------------------
// Byte-level mutations of a valid file
// ---------------------------------------------------------------------------------------------

export type ByteMutation =
  | { kind: 'flip'; flips: { pos: number; xor: number }[] }
  | { kind: 'set'; pos: number; bytes: number[] }
  | { kind: 'truncate'; length: number }
  | { kind: 'extend'; bytes: number[] }
  | { kind: 'splice'; pos: number; remove: number; insert: number[] };

/**
 * Mutations of a file of `length` bytes: XOR flips, overwrites, truncation, appended bytes, and
 * removing/inserting bytes. Positions favour the first `hot` bytes (headers) half of the time.
 */
export function byteMutation(length: number, hot = 4096): fc.Arbitrary<ByteMutation> {
  const pos = fc.oneof(fc.nat({ max: Math.max(0, Math.min(hot, length) - 1) }), fc.nat({ max: Math.max(0, length - 1) }));
  const byte = fc.integer({ min: 0, max: 255 });
  const bytes = (max: number) => fc.array(byte, { minLength: 1, maxLength: max });
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('flip' as const), flips: fc.array(fc.record({ pos, xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 4 }) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('set' as const), pos, bytes: bytes(16) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('truncate' as const), length: fc.oneof(fc.nat({ max: Math.max(0, length - 1) }), fc.nat({ max: Math.min(length, 1100) })) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('extend' as const), bytes: fc.oneof(bytes(1100), fc.integer({ min: 1, max: 2048 }).map((n) => new Array(n).fill(0))) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('splice' as const), pos, remove: fc.nat({ max: 600 }), insert: fc.array(byte, { maxLength: 600 }) }) },
  );
}

/** A fresh copy of `src` with `m` applied. */
export function applyMutation(src: Uint8Array, m: ByteMutation): Uint8Array {
  switch (m.kind) {
    case 'flip': {
      const out = Uint8Array.from(src);
      for (const f of m.flips) if (f.pos < out.length) out[f.pos] ^= f.xor;
      return out;
    }
    case 'set': {
      const out = Uint8Array.from(src);
      m.bytes.forEach((b, i) => {
        if (m.pos + i < out.length) out[m.pos + i] = b;
      });
      return out;
    }
    case 'truncate':
      return src.slice(0, m.length);
    case 'extend': {
      const out = new Uint8Array(src.length + m.bytes.length);
      out.set(src);
      out.set(m.bytes, src.length);
      return out;
    }
    case 'splice': {
      const at = Math.min(m.pos, src.length);
      return Uint8Array.from([...src.subarray(0, at), ...m.insert, ...src.subarray(Math.min(src.length, at + m.remove))]);
    }
  }
}

/** `src` with every mutation of `ms` applied in order. */
export function applyAll(src: Uint8Array, ms: readonly ByteMutation[]): Uint8Array {
  let b = src;
  for (const m of ms) b = applyMutation(b, m);
  return b;
}

/** Writes `bytes` to `<dir>/<name>` and returns the path. */
export function writeCase(dir: string, name: string, bytes: Uint8Array | string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, bytes);
  return file;
}

// ---------------------------------------------------------------------------------------------
// Nasty JSON values
// ---------------------------------------------------------------------------------------------

/**
 * JSON values that break careless readers: objects whose own `toString`/`valueOf` are not functions
 * (String()/Number()/template literals on them throw TypeError), `__proto__` keys, huge/negative/
 * fractional numbers, strings with newlines and control characters, deep nesting.
 */
export const nastyJson: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(
    ...[
      '{"toString":1}',
      '{"valueOf":1,"toString":1}',
      '{"__proto__":{"x":1}}',
      '[{"toString":null}]',
      '"a\\nb"',
      '"\\u0000"',
      '"\\ud800"',
      '1e308',
      '-1e308',
      '1.5',
      '-1',
      '0',
      '-0',
      '9007199254740993',
      '18446744073709551616',
      '""',
      '[]',
      '{}',
      'null',
      'true',
      '[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]',
    ].map((s) => JSON.parse(s) as unknown),
  ),
  fc.integer(),
  fc.double(),
  fc.string({ unit: 'binary', maxLength: 20 }),
);

/** Arbitrary JSON values, mostly plain jsonValue, sometimes {@link nastyJson}. */
export const anyJson: fc.Arbitrary<unknown> = fc.oneof({ weight: 3, arbitrary: fc.jsonValue({ maxDepth: 3 }) }, { weight: 2, arbitrary: nastyJson });

/** Arbitrary strings, including newlines, control characters and lone surrogates. */
export const anyString: fc.Arbitrary<string> = fc.oneof(fc.string({ maxLength: 24 }), fc.string({ unit: 'binary', maxLength: 24 }), fc.constantFrom('', 'a\nb', '__metadata__', '..', '\u0000'));

/**
 * Sets (or, with `value` undefined, deletes) `key` of a copy of `obj`; `JSON.stringify` of the copy
 * keeps the change.
 */
export function withField(obj: Record<string, unknown>, key: string, value: unknown, remove = false): Record<string, unknown> {
  const out: Record<string, unknown> = { ...obj };
  if (remove) delete out[key];
  else Object.defineProperty(out, key, { value, enumerable: true, writable: true, configurable: true });
  return out;
}
