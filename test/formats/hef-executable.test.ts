/**
 * formats/hef-executable.ts readExecutable / executableHeader on HEFs written by writeHef (valid
 * checksums) whose header lacks a sub-message the executable needs (protobufjs gives null for an
 * absent message field), has a config that is not a JSON object, or names sections with control
 * characters: each is a one-line FormatError naming the file and the field.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { readExecutable } from '../../formats/hef-executable.js';
import { writeHef, type HefSectionInput } from '../../formats/hef.js';
import { encodeSafetensors } from '../../formats/safetensors.js';
import { expectOneLineFormatError, thrownBy } from '../helpers/errors.js';
import { suiteTempDir } from '../helpers/tmp.js';

const dir = suiteTempDir('edgellm-hef-exe-');
const qp = { scale: 0.5, zeroPoint: 128 };
const header = () => ({
  modelName: 'm',
  edgellmVersion: '0.1.0',
  configJson: JSON.stringify({ hiddenSize: 8, numLayers: 1 }),
  quant: { weightBits: 4, weightGroupSize: 32, weightScheme: 'symmetric', activationScheme: 'none', kvScheme: 'static-asymmetric-per-tensor-u8', weightMethod: 'rtn' },
  kvCache: { numLayers: 1, numKvHeads: 1, headDim: 4, maxContext: 8, dtype: 'uint8', layers: [{ k: qp, v: qp }] },
  prefill: { section: 'graph.prefill', seqLen: 4, inputs: [], outputs: [] },
  decode: { section: 'graph.decode', seqLen: 1, inputs: [], outputs: [] },
  sourceSha256: '',
  createdAt: '',
});
const sections = (): HefSectionInput[] => [
  { name: 'graph.prefill', kind: 'graph', data: new Uint8Array(8) },
  { name: 'graph.decode', kind: 'graph', data: new Uint8Array(8) },
  { name: 'weights', kind: 'weights', data: encodeSafetensors([]) },
  { name: 'tokenizer.json', kind: 'tokenizer', data: new TextEncoder().encode('{}') },
];

let n = 0;
function write(edit: (h: Record<string, any>) => void): string {
  const h: Record<string, any> = header();
  edit(h);
  const file = path.join(dir, `case-${n++}.hef`);
  writeHef(file, h, sections());
  return file;
}

describe('readExecutable: header sub-messages and names', () => {
  it('reads the complete header', () => {
    const exe = readExecutable(write(() => {}));
    expect(exe.kvLayout.layers).toEqual([{ k: qp, v: qp }]);
    expect(exe.prefill.seqLen).toBe(4);
  });

  it('reads KV16 parameters (bits 16, zero points above 255) and a mixed layout whose float layer has neither k nor v', () => {
    const q16 = { scale: Math.fround(1e-4), zeroPoint: 40000, bits: 16 }; // the header's scale is a float
    const kv16 = readExecutable(write((h) => void (h.kvCache = { ...h.kvCache, dtype: 'uint16', layers: [{ k: q16, v: q16, kOffset: [1, 2, 3, 4] }] })));
    expect(kv16.kvLayout).toMatchObject({ dtype: 'uint16', layers: [{ k: q16, v: q16, kOffset: [1, 2, 3, 4] }] });
    const mixed = readExecutable(write((h) => void (h.kvCache = { ...h.kvCache, numLayers: 3, dtype: 'mixed', layers: [{ k: q16, v: q16 }, {}, { k: qp, v: qp }] })));
    expect(mixed.kvLayout.layers).toEqual([{ k: q16, v: q16 }, null, { k: qp, v: qp }]);
    // 8-bit parameters stay without `bits` (as every HEF before KV16 wrote them)
    expect(Object.keys(mixed.kvLayout.layers[2]!.k).sort()).toEqual(['scale', 'zeroPoint']);
  });

  it.each([
    ['no kv_cache', (h: any) => void delete h.kvCache, /header has no kv_cache/],
    ['a kv_cache layer without k', (h: any) => void delete h.kvCache.layers[0].k, /header has no k in kv_cache layer 0/],
    ['a kv_cache layer without v', (h: any) => void (h.kvCache.layers = [{ k: qp, v: qp }, { k: qp }]), /header has no v in kv_cache layer 1/],
    ['no quant', (h: any) => void delete h.quant, /header has no quant/],
    ['an unknown kv_cache dtype', (h: any) => void (h.kvCache.dtype = 'int4'), /header kv_cache dtype 'int4' is not one of uint8, uint16, float32, mixed/],
    ['a mixed kv_cache without an entry per layer', (h: any) => void (h.kvCache = { ...h.kvCache, numLayers: 2, dtype: 'mixed' }), /header kv_cache is 'mixed' but lists 1 layers for 2/],
    ['a mixed kv_cache layer with k but no v', (h: any) => void (h.kvCache = { ...h.kvCache, dtype: 'mixed', layers: [{ k: qp }] }), /header has no v in kv_cache layer 0/],
    ['no prefill graph', (h: any) => void delete h.prefill, /header has no prefill graph/],
    ['no decode graph', (h: any) => void delete h.decode, /header has no decode graph/],
    ['a config that is JSON null', (h: any) => void (h.configJson = 'null'), /header config is not a JSON object/],
    ['a config that is not JSON', (h: any) => void (h.configJson = '{"x":'), /header config is not valid JSON/],
    ['a graph section name with a newline', (h: any) => void (h.prefill.section = 'a\nb'), /header names graph section 'a\\nb', which the file does not hold/],
    ['an adapter section name with control characters', (h: any) => void (h.adapters = [{ name: 'x', section: 'adapter.\u001b[2J\r' }]), /adapter section 'adapter\.\\u001b\[2J\\r'/],
  ])('refuses a header with %s', (_name, edit, pattern) => {
    const file = write(edit);
    expectOneLineFormatError(thrownBy(() => readExecutable(file)), file, pattern);
  });
});
