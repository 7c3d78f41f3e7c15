/**
 * Fuzzing the calibration readers of calibration/datasets.ts: loadTokenWindows on mutated
 * `.tokens.json` files (the real C4 windows and small generated ones), loadTextFile on mutated
 * `.jsonl` and `.txt` files. Property: returns (and then the result has the documented shape), or
 * throws a one-line FormatError naming the file.
 */
import * as fs from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadTextFile, loadTokenWindows } from '../../calibration/datasets.js';
import { CALIB } from '../helpers/paths.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { anyJson, anyString, applyAll, applyMutation, byteMutation, expectTypedSync, Outcomes, runProperty, tally, TEST_TIMEOUT_MS, writeCase } from './fuzz-helpers.js';

const dir = suiteTempDir('edgellm-fuzz-calib-');
const enc = new TextEncoder();

describe('fuzz: calibration files', () => {
  const real = JSON.parse(fs.readFileSync(CALIB, 'utf8')) as number[][];
  const small = real.slice(0, 4).map((w) => w.slice(0, 16)); // a small real file, so byte mutations hit structure often
  const smallText = JSON.stringify(small);

  it('loadTokenWindows: JSON-level edits of windows and ids, vocabSize option', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    type Edit = { window: number; pos: number; value: unknown; what: 'id' | 'window' | 'insert' | 'root' };
    const editArb: fc.Arbitrary<Edit> = fc.record({
      window: fc.nat({ max: 200 }),
      pos: fc.nat({ max: 300 }),
      value: fc.oneof(anyJson, fc.constantFrom(-1, 0.5, 2 ** 53, 1e300, 512, 511, '1', [], [[]], null)),
      what: fc.constantFrom('id' as const, 'window' as const, 'insert' as const, 'root' as const),
    });
    await runProperty(
      'tokens.json edits',
      fc.property(fc.boolean(), fc.array(editArb, { minLength: 1, maxLength: 3 }), fc.option(fc.oneof(fc.integer({ min: -2, max: 600 }), fc.constantFrom(0.5, Infinity)), { nil: undefined }), (useReal, edits, vocabSize) => {
        let v: unknown = structuredClone(useReal ? real : small);
        for (const edit of edits) {
          const e = { ...edit, value: structuredClone(edit.value) }; // constants are shared between cases: never alias them
          if (!Array.isArray(v)) break;
          const w = v.length ? e.window % v.length : 0;
          if (e.what === 'root') v = e.value;
          else if (e.what === 'window') v[w] = e.value;
          else if (e.what === 'insert') v.splice(w, 0, e.value);
          else if (Array.isArray(v[w]) && (v[w] as unknown[]).length) (v[w] as unknown[])[e.pos % (v[w] as unknown[]).length] = e.value;
        }
        const file = writeCase(dir, 'case.tokens.json', JSON.stringify(v) ?? '');
        const windows = expectTypedSync(tally(out, () => loadTokenWindows(file, vocabSize === undefined ? {} : { vocabSize })), { file });
        if (windows) {
          expect(windows.length).toBeGreaterThan(0);
          for (const w of windows) {
            expect(w.length).toBeGreaterThan(0);
            for (const id of w) expect(Number.isSafeInteger(id) && id >= 0 && (vocabSize === undefined || id < vocabSize)).toBe(true);
          }
        }
      }),
      { seedOffset: 401, outcomes: out },
    );
  });

  it('loadTokenWindows: byte mutations of a real .tokens.json', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const bytes = enc.encode(smallText);
    await runProperty(
      'tokens.json bytes',
      fc.property(fc.array(byteMutation(bytes.length, bytes.length), { minLength: 1, maxLength: 3 }), (ms) => {
        const file = writeCase(dir, 'bytes.tokens.json', applyAll(bytes, ms));
        expectTypedSync(tally(out, () => loadTokenWindows(file, { vocabSize: 512 })), { file });
      }),
      { seedOffset: 402, outcomes: out },
    );
  });

  it('loadTextFile: .jsonl lines of arbitrary JSON and bytes, .txt of arbitrary bytes', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const line = fc.oneof(
      fc.record({ text: fc.oneof(fc.string({ maxLength: 30 }), anyJson) }).map((o) => JSON.stringify(o)),
      fc.dictionary(anyString, anyJson, { maxKeys: 3 }).map((o) => JSON.stringify(o)),
      anyJson.map((v) => JSON.stringify(v) ?? ''),
      fc.string({ unit: 'binary', maxLength: 30 }),
      fc.constantFrom('', '   ', '\r', '{"text":"a"}\r', '{"text": "x"', '{"text":"\\ud800"}'),
    );
    const jsonl = fc.array(line, { maxLength: 6 }).chain((lines) => {
      const b = enc.encode(lines.join('\n'));
      return fc.option(byteMutation(Math.max(1, b.length)), { nil: undefined }).map((m) => (m ? applyMutation(b, m) : b));
    });
    await runProperty(
      'jsonl/txt',
      fc.property(jsonl, fc.uint8Array({ maxLength: 200 }), (jbytes, tbytes) => {
        const jfile = writeCase(dir, 'case.jsonl', jbytes);
        const t = expectTypedSync(tally(out, () => loadTextFile(jfile)), { file: jfile });
        if (t !== undefined) expect(typeof t).toBe('string');
        const tfile = writeCase(dir, 'case.txt', tbytes);
        expect(typeof expectTypedSync(tally(out, () => loadTextFile(tfile)), { file: tfile })).toBe('string');
      }),
      { seedOffset: 403, outcomes: out },
    );
  });
});
