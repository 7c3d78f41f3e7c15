/**
 * Fuzzing the HEF readers, formats/hef.ts openHef / verifyHef and formats/hef-executable.ts
 * readExecutable, on a small HEF compiled from stories260K (built in beforeAll):
 *  - byte flips, overwrites, truncations, extensions and splices of the file;
 *  - structure-aware: the header decoded, its fields mutated (values of the right protobuf type),
 *    and the file re-written by writeHef with the original sections, so the checksums are right.
 * Property: returns, or throws a one-line FormatError naming the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, it } from 'vitest';
import { openHef, verifyHef, writeHef, type HefSectionInput } from '../../formats/hef.js';
import { readExecutable } from '../../formats/hef-executable.js';
import { EdgeLLMError } from '../../src/core/errors.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { makeHef } from './fuzz-fixtures.js';
import { anyString, applyAll, applyMutation, byteMutation, expectTypedSync, Outcomes, runProperty, TEST_TIMEOUT_MS } from './fuzz-helpers.js';

const dir = suiteTempDir('edgellm-fuzz-hef-');
let hefBytes: Uint8Array;
let header: Record<string, any>;
let sections: HefSectionInput[];

beforeAll(() => {
  const file = makeHef(dir);
  hefBytes = new Uint8Array(fs.readFileSync(file));
  const h = openHef(file);
  try {
    const { sections: table, ...rest } = h.header;
    header = rest;
    sections = [...h.sections.values()].map((s) => ({ name: s.name, kind: s.kind, data: h.readSection(s.name) }));
  } finally {
    h.close();
  }
});

type Variant = 'open' | 'verify' | 'exe';
function readAll(file: string, variant: Variant, out: Outcomes): void {
  expectTypedSync(() => {
    try {
      if (variant === 'exe') readExecutable(file);
      else (variant === 'open' ? openHef(file) : verifyHef(file)).close();
      out.add(`${variant} ok`);
    } catch (e) {
      out.add(`${variant} ${(e as Error)?.constructor?.name}`);
      throw e;
    }
  }, { file });
}
const variantArb = fc.constantFrom<Variant>('open', 'verify', 'exe');
let caseNo = 0;

describe('fuzz: HEF readers', () => {
  it('byte mutations of a real HEF', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    await runProperty(
      'hef bytes',
      fc.property(fc.array(byteMutation(hefBytes.length, 3456), { minLength: 1, maxLength: 3 }), variantArb, (ms, variant) => {
        const file = path.join(dir, `bytes-${caseNo++ % 4}.hef`);
        fs.writeFileSync(file, applyAll(hefBytes, ms));
        readAll(file, variant, out);
      }),
      { seedOffset: 701, outcomes: out },
    );
  });

  it('re-written HEFs with mutated header fields and sections (checksums valid)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const u32 = fc.oneof(fc.nat({ max: 80 }), fc.constantFrom(0, 2 ** 32 - 1, 2 ** 31));
    const str = fc.oneof(anyString, fc.constantFrom('graph.prefill', 'graph.decode', 'weights', 'tokenizer.json', 'nope', ''));
    type Edit = { path: string; value: unknown } | { drop: string } | { section: number; kind: 'drop' | 'bytes'; mutation?: Parameters<typeof applyMutation>[1] };
    const editArb: fc.Arbitrary<Edit> = fc.oneof(
      fc.record({ path: fc.constantFrom('modelName', 'configJson', 'sourceSha256', 'edgellmVersion', 'createdAt'), value: fc.oneof(str, fc.constantFrom('null', '{}', '[]', '{"hiddenSize":1}', '{"x":')) }),
      fc.record({ path: fc.constantFrom('prefill.section', 'decode.section'), value: str }),
      fc.record({ path: fc.constantFrom('prefill.seqLen', 'decode.seqLen', 'kvCache.numLayers', 'kvCache.numKvHeads', 'kvCache.headDim', 'kvCache.maxContext', 'quant.weightBits', 'quant.weightGroupSize'), value: u32 }),
      fc.record({ path: fc.constantFrom('kvCache.dtype', 'quant.weightScheme', 'quant.kvScheme'), value: str }),
      fc.record({ path: fc.constantFrom('kvCache.layers', 'prefill.inputs', 'decode.outputs', 'adapters'), value: fc.constantFrom([], [{}], [{ k: {} }], [{ section: 'weights', name: 'a' }], [{ section: 'nope' }], [{ name: 'x', dtype: 'float32', shape: ['1'] }]) }),
      fc.record({ drop: fc.constantFrom('kvCache', 'prefill', 'decode', 'quant', 'adapters', 'kvCache.layers') }),
      fc.record({ section: fc.nat({ max: 5 }), kind: fc.constantFrom('drop' as const, 'bytes' as const), mutation: byteMutation(2048, 2048) }),
    );
    await runProperty(
      'hef rewritten',
      fc.property(fc.array(editArb, { minLength: 1, maxLength: 3 }), variantArb, (edits, variant) => {
        const h: Record<string, any> = structuredClone(header);
        let secs = [...sections];
        for (const e of edits) {
          if ('section' in e) {
            const i = e.section % secs.length;
            if (e.kind === 'drop') secs = secs.filter((_, j) => j !== i);
            else secs[i] = { ...secs[i], data: applyMutation(secs[i].data, e.mutation!) };
          } else {
            const keys = ('drop' in e ? e.drop : e.path).split('.');
            let o = h;
            for (const k of keys.slice(0, -1)) o = o[k] ?? (o[k] = {});
            if ('drop' in e) delete o[keys[keys.length - 1]];
            else o[keys[keys.length - 1]] = structuredClone(e.value);
          }
        }
        const file = path.join(dir, `rewritten-${caseNo++ % 4}.hef`);
        try {
          writeHef(file, h, secs);
        } catch (e) {
          if (e instanceof EdgeLLMError) return; // the writer refused the header (wrong field types): nothing to read
          throw e;
        }
        readAll(file, variant, out);
      }),
      { seedOffset: 702, outcomes: out },
    );
  });
});
