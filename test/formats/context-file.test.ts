/**
 * formats/context-file: write -> read round trip on generated caches (uint8, uint16, float32 and
 * mixed per-layer layouts), and every
 * corruption refused with a FormatError naming the file: each single flipped byte (all of them, for a
 * small file), truncation, another model, another KV layout.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { checkContextFits, readContextFile, writeContextFile } from '../../formats/context-file.js';
import { FormatError } from '../../src/core/errors.js';
import { kvSnapshotLayerBytes, type KvLayout } from '../../src/ir/executable.js';
import { mulberry32 } from '../../src/core/rng.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

const dir = makeTempDir('edgellm-ctxfile-');
afterAll(() => removeDir(dir));
const MODEL = 'ab'.repeat(32);

function layout(dtype: 'uint8' | 'uint16' | 'float32'): KvLayout {
  return { numLayers: 2, numKvHeads: 2, headDim: 4, maxContext: 64, dtype, layers: [] };
}

const qp = { scale: 0.01, zeroPoint: 3 };
const qp16 = { scale: 1e-4, zeroPoint: 40000, bits: 16 as const };
/** Three layers: KV16, float32, KV8. */
const MIXED: KvLayout = { numLayers: 3, numKvHeads: 2, headDim: 4, maxContext: 64, dtype: 'mixed', layers: [{ k: qp16, v: qp16 }, null, { k: qp, v: qp }] };

function randomFile(file: string, l: KvLayout, n: number, seed: number) {
  const r = mulberry32(seed);
  const bytes = (i: number) => Uint8Array.from({ length: kvSnapshotLayerBytes(l, n, i) }, () => Math.floor(r() * 256));
  const snapshot = { length: n, adapter: 'wiki', layers: Array.from({ length: l.numLayers }, (_, i) => ({ key: bytes(i), value: bytes(i) })) };
  const tokens = Array.from({ length: n }, () => Math.floor(r() * 50000));
  writeContextFile(file, { model: MODEL, tokens, kv: l, snapshot, edgellm: '0.1.0', meta: { messages: [{ role: 'user', content: 'hi' }] } });
  return { snapshot, tokens };
}

describe('context files', () => {
  it('round-trips tokens, adapter, KV bytes and metadata (uint8, uint16 and float32 layouts)', () => {
    for (const dtype of ['uint8', 'uint16', 'float32'] as const) {
      const f = path.join(dir, `${dtype}.ctx`);
      const { snapshot, tokens } = randomFile(f, layout(dtype), 7, 3);
      const c = readContextFile(f);
      expect(c.model).toBe(MODEL);
      expect(c.tokens).toEqual(tokens);
      expect(c.snapshot.adapter).toBe('wiki');
      expect(c.snapshot.layers).toEqual(snapshot.layers);
      expect(c.meta).toEqual({ messages: [{ role: 'user', content: 'hi' }] });
      checkContextFits(f, c, MODEL, layout(dtype));
    }
    // an empty context is a valid file too
    const e = path.join(dir, 'empty.ctx');
    randomFile(e, layout('uint8'), 0, 4);
    expect(readContextFile(e).tokens).toEqual([]);
  });

  it('a mixed layout records each layer dtype and sizes each layer by it (2, 4 and 1 bytes an element)', () => {
    const f = path.join(dir, 'mixed.ctx');
    const { snapshot } = randomFile(f, MIXED, 5, 9);
    expect(snapshot.layers.map((l) => l.key.byteLength)).toEqual([5 * 8 * 2, 5 * 8 * 4, 5 * 8]);
    const c = readContextFile(f);
    expect(c.kv).toEqual({ numLayers: 3, numKvHeads: 2, headDim: 4, dtype: 'mixed', layerDtypes: ['uint16', 'float32', 'uint8'] });
    expect(c.snapshot.layers).toEqual(snapshot.layers);
    checkContextFits(f, c, MODEL, MIXED);
    const other: KvLayout = { ...MIXED, layers: [{ k: qp, v: qp }, null, { k: qp, v: qp }] }; // layer 0 KV8 instead of KV16
    expect(() => checkContextFits(f, c, MODEL, other)).toThrow(/KV layout differs: layerDtypes uint16,float32,uint8, the model has uint8,float32,uint8/);
    expect(() => checkContextFits(f, c, MODEL, { ...layout('uint16'), numLayers: 3 })).toThrow(/KV layout differs: dtype mixed, the model has uint16/);
  });

  it('refuses every single flipped byte, truncation and junk, naming the file', () => {
    const f = path.join(dir, 'flip.ctx');
    randomFile(f, layout('uint8'), 3, 5);
    const good = fs.readFileSync(f);
    const bad = path.join(dir, 'bad.ctx');
    for (let i = 0; i < good.length; i++) {
      const b = Buffer.from(good);
      b[i] ^= 1 << (i % 8);
      fs.writeFileSync(bad, b);
      expect(() => readContextFile(bad), `byte ${i}`).toThrow(FormatError);
    }
    for (const cut of [0, 10, 40, good.length - 1]) {
      fs.writeFileSync(bad, good.subarray(0, cut));
      expect(() => readContextFile(bad)).toThrow(new RegExp(`^${bad.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: `));
    }
    expect(() => readContextFile(path.join(dir, 'missing.ctx'))).toThrow(/missing\.ctx: cannot read: ENOENT/);
  });

  it('refuses a context from another model or KV layout in one line', () => {
    const f = path.join(dir, 'fit.ctx');
    randomFile(f, layout('uint8'), 2, 6);
    const c = readContextFile(f);
    expect(() => checkContextFits(f, c, 'cd'.repeat(32), layout('uint8'))).toThrow(/saved from another model \(sha256 abababababab…, this model is cdcdcdcdcdcd…\)/);
    expect(() => checkContextFits(f, c, MODEL, layout('float32'))).toThrow(/KV layout differs: dtype uint8, the model has float32/);
    expect(() => checkContextFits(f, c, MODEL, { ...layout('uint8'), numKvHeads: 4 })).toThrow(/numKvHeads 2, the model has 4/);
  });
});
