/**
 * Fuzzing the HAR readers, formats/har.ts readHar / readHarManifest and formats/har-model.ts
 * loadModelHar, on a small real HAR (stories260K, RTN, built in beforeAll):
 *  - byte flips, overwrites, truncations, extensions and splices of the archive;
 *  - structure-aware: the archive re-packed by writeHar (so every checksum is right) with its
 *    manifest fields and members (ranges.json, weights, tokenizer, report, adapters, shards) mutated.
 * Property: returns, or throws a one-line FormatError naming the archive.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { beforeAll, describe, it } from 'vitest';
import { readHar, readHarManifest, writeHar } from '../../formats/har.js';
import { loadModelHar } from '../../formats/har-model.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { makeHar } from './fuzz-fixtures.js';
import { anyJson, anyString, applyAll, applyMutation, byteMutation, expectTyped, Outcomes, runProperty, TEST_TIMEOUT_MS, withField, type ByteMutation } from './fuzz-helpers.js';

const dir = suiteTempDir('edgellm-fuzz-har-');
let harBytes: Uint8Array;
let manifest: Record<string, unknown>;
let members: Map<string, Uint8Array>;

beforeAll(async () => {
  const file = await makeHar(dir);
  harBytes = new Uint8Array(fs.readFileSync(file));
  const c = await readHar(file);
  const { format: _f, formatVersion: _v, files: _l, ...rest } = c.manifest;
  manifest = rest;
  members = c.files;
});

let caseNo = 0;
type Variant = 'readHar' | 'manifest' | 'model' | 'lazy';
async function readAll(file: string, variant: Variant, out: Outcomes): Promise<void> {
  const t = <T>(name: string, p: () => Promise<T>) => async () => {
    try {
      const r = await p();
      out.add(`${name} ok`);
      return r;
    } catch (e) {
      out.add(`${name} ${(e as Error)?.constructor?.name}`);
      throw e;
    }
  };
  const fn: () => Promise<unknown> =
    variant === 'readHar' ? t('readHar', () => readHar(file)) : variant === 'manifest' ? t('readHarManifest', () => readHarManifest(file)) : t(`loadModelHar${variant === 'lazy' ? '(lazy)' : ''}`, async () => {
      const h = await loadModelHar(file, { lazy: variant === 'lazy' });
      for (const w of h.model.weights.values()) w.load(); // lazy tensors are read here
      return h;
    });
  await expectTyped(fn, { file });
}

const variantArb = fc.constantFrom<Variant>('readHar', 'manifest', 'model', 'lazy');

describe('fuzz: HAR readers', () => {
  it('byte mutations of a real HAR', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    await runProperty(
      'har bytes',
      fc.asyncProperty(fc.array(byteMutation(harBytes.length, 4096), { minLength: 1, maxLength: 3 }), variantArb, async (ms, variant) => {
        const file = path.join(dir, `bytes-${caseNo++ % 4}.har`);
        fs.writeFileSync(file, applyAll(harBytes, ms));
        await readAll(file, variant, out);
      }),
      { seedOffset: 601, outcomes: out },
    );
  });

  it('re-packed HARs with mutated manifest fields and members (checksums valid)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const MANIFEST_KEYS = ['config', 'passes', 'quantScheme', 'linears', 'emulation', 'adapters', 'online', 'modelName', 'sourceSha256', 'edgellmVersion'];
    const CONFIG_KEYS = ['hiddenSize', 'numLayers', 'numKvHeads', 'headDim', 'numHeads', 'vocabSize', 'family'];
    type Edit =
      | { op: 'manifest'; key: string; value: unknown; remove: boolean }
      | { op: 'config'; key: string; value: unknown }
      | { op: 'member'; name: string; text: string }
      | { op: 'memberBytes'; name: string; from: string; mutation: ByteMutation }
      | { op: 'dropMember'; name: string };
    const memberNames = ['weights.safetensors', 'ranges.json', 'tokenizer/tokenizer.json', 'tokenizer/tokenizer_config.json', 'report.json', 'adapters/x.safetensors', 'weights-00001-of-00002.safetensors', 'weights-00002-of-00001.safetensors', 'emulation/native.safetensors'];
    const rangesText = fc.oneof(
      anyJson.map((v) => JSON.stringify(v) ?? ''),
      fc.record({ activations: anyJson, kvCache: anyJson, kCacheOffset: fc.oneof(anyJson, fc.array(fc.array(fc.oneof(fc.double(), anyJson), { maxLength: 33 }), { maxLength: 6 })) }, { requiredKeys: [] }).map((o) => JSON.stringify(o)),
    );
    const editArb: fc.Arbitrary<Edit> = fc.oneof(
      { weight: 4, arbitrary: fc.record({ op: fc.constant('manifest' as const), key: fc.oneof(fc.constantFrom(...MANIFEST_KEYS), anyString.filter((k) => !['format', 'formatVersion', 'files'].includes(k))), value: fc.oneof(anyJson, fc.array(fc.record({ name: anyString, member: fc.constantFrom(...memberNames) }), { maxLength: 2 }), fc.constantFrom('abc', { length: 2 }, [null], [1], { native: {} })), remove: fc.boolean() }) },
      { weight: 3, arbitrary: fc.record({ op: fc.constant('config' as const), key: fc.constantFrom(...CONFIG_KEYS), value: fc.oneof(anyJson, fc.integer({ min: -1, max: 100 })) }) },
      { weight: 3, arbitrary: fc.record({ op: fc.constant('member' as const), name: fc.constantFrom(...memberNames), text: fc.oneof(rangesText, anyJson.map((v) => JSON.stringify(v) ?? '')) }) },
      { weight: 3, arbitrary: fc.record({ op: fc.constant('memberBytes' as const), name: fc.constantFrom(...memberNames), from: fc.constantFrom('weights.safetensors', 'tokenizer/tokenizer.json'), mutation: byteMutation(273424, 2048) }) },
      { weight: 1, arbitrary: fc.record({ op: fc.constant('dropMember' as const), name: fc.constantFrom(...memberNames) }) },
    );
    await runProperty(
      'har repacked',
      fc.asyncProperty(fc.array(editArb, { minLength: 1, maxLength: 3 }), fc.constantFrom<Variant>('model', 'lazy'), async (edits, variant) => {
        let m: Record<string, unknown> = { ...manifest };
        const files = new Map(members);
        for (const e of edits) {
          if (e.op === 'manifest') m = withField(m, e.key, structuredClone(e.value), e.remove);
          else if (e.op === 'config') m = withField(m, 'config', withField((m.config ?? {}) as Record<string, unknown>, e.key, structuredClone(e.value)));
          else if (e.op === 'member') files.set(e.name, new TextEncoder().encode(e.text));
          else if (e.op === 'memberBytes') files.set(e.name, applyMutation(members.get(e.from)!, e.mutation));
          else files.delete(e.name);
        }
        const file = path.join(dir, `repack-${caseNo++ % 4}.har`);
        await writeHar(file, m, files);
        await readAll(file, variant, out);
      }),
      { seedOffset: 602, outcomes: out },
    );
  });
});
