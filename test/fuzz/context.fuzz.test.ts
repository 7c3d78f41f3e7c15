/**
 * Fuzzing context files (formats/context-file.ts readContextFile + checkContextFits): byte mutations
 * of a real saved file, and files re-written with a valid checksum around a mutated header JSON.
 * Property: the file is read (and then it fits its model or is refused by checkContextFits with a
 * FormatError), or refused with a one-line FormatError naming the file.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkContextFits, readContextFile, writeContextFile, CONTEXT_MAGIC } from '../../formats/context-file.js';
import { sha256 } from '../../src/core/digest.js';
import type { KvLayout } from '../../src/ir/executable.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { anyJson, anyString, applyAll, byteMutation, expectTypedSync, Outcomes, runProperty, tally, TEST_TIMEOUT_MS, withField, writeCase } from './fuzz-helpers.js';
import * as fs from 'node:fs';
import * as path from 'node:path';

const dir = suiteTempDir('edgellm-fuzz-ctx-');
const MODEL = 'ab'.repeat(32);
const layout: KvLayout = { numLayers: 2, numKvHeads: 2, headDim: 4, maxContext: 64, dtype: 'uint8', layers: [] };

function realFile(): Uint8Array {
  const file = path.join(dir, 'real.ctx');
  const layer = () => ({ key: Uint8Array.from({ length: 2 * 5 * 4 }, (_, i) => i), value: Uint8Array.from({ length: 2 * 5 * 4 }, (_, i) => 255 - i) });
  writeContextFile(file, { model: MODEL, tokens: [1, 2, 3, 4, 5], kv: layout, snapshot: { length: 5, adapter: 'wiki', layers: [layer(), layer()] }, edgellm: 'test', meta: { messages: [] }, transcript: { text: 'hi', ids: [1, 2, 3, 4, 5, 6] } });
  return new Uint8Array(fs.readFileSync(file));
}

/** Reads and fits a case; the FormatError of either must name the file. */
function readAndFit(file: string) {
  const c = readContextFile(file);
  checkContextFits(file, c, MODEL, layout);
  expect(c.tokens.length).toBe(c.snapshot.length);
  return c;
}

describe('fuzz: context files', () => {
  const bytes = realFile();

  it('byte mutations of a saved context', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    await runProperty(
      'context bytes',
      fc.property(fc.array(byteMutation(bytes.length, bytes.length), { minLength: 1, maxLength: 3 }), (ms) => {
        const file = writeCase(dir, 'bytes.ctx', applyAll(bytes, ms));
        expectTypedSync(tally(out, () => readAndFit(file)), { file });
      }),
      { seedOffset: 901, outcomes: out },
    );
  });

  it('header JSON edits re-written with a valid checksum', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const hLen = Buffer.from(bytes).readUInt32LE(12);
    const header = JSON.parse(Buffer.from(bytes.subarray(16, 16 + hLen)).toString('utf8')) as Record<string, unknown>;
    const body = bytes.subarray(16 + hLen, bytes.length - 32);
    const keys = ['model', 'adapter', 'tokens', 'kv', 'edgellm', 'meta', 'transcript', 'extra'];
    const edit = fc.record({ key: fc.oneof(fc.constantFrom(...keys), anyString), value: anyJson, remove: fc.boolean() });
    const kvEdit = fc.record({ key: fc.constantFrom('numLayers', 'numKvHeads', 'headDim', 'dtype'), value: fc.oneof(anyJson, fc.constantFrom(0, 1, 2, 4, 5, 2 ** 40, 'float32', 'uint8')) });
    await runProperty(
      'context header',
      fc.property(fc.array(edit, { maxLength: 3 }), fc.option(kvEdit, { nil: undefined }), fc.option(fc.integer({ min: -4, max: 4 }), { nil: undefined }), (edits, kv, bodyCut) => {
        let h: Record<string, unknown> = structuredClone(header);
        for (const e of edits) h = withField(h, e.key, structuredClone(e.value), e.remove);
        if (kv && typeof h.kv === 'object' && h.kv !== null && !Array.isArray(h.kv)) h.kv = withField(h.kv as Record<string, unknown>, kv.key, kv.value);
        const hb = Buffer.from(JSON.stringify(h) ?? 'null', 'utf8');
        const pre = Buffer.alloc(16);
        CONTEXT_MAGIC.copy(pre, 0);
        pre.writeUInt32LE(1, 8);
        pre.writeUInt32LE(hb.length, 12);
        const b = bodyCut === undefined ? body : bodyCut < 0 ? body.subarray(0, body.length + bodyCut) : Buffer.concat([body, Buffer.alloc(bodyCut)]);
        const all = Buffer.concat([pre, hb, b]);
        const file = writeCase(dir, 'header.ctx', Buffer.concat([all, sha256(all)]));
        expectTypedSync(tally(out, () => readAndFit(file)), { file });
      }),
      { seedOffset: 902, outcomes: out },
    );
  });
});
