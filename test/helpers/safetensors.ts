/** Shared by the safetensors tests: random tensors of every dtype, exact comparison, hand-built files. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import { DTYPES, numel } from '../../src/ir/tensor.js';
import type { DType, Tensor } from '../../src/ir/tensor.js';
import { mulberry32 } from '../../src/core/rng.js';
import { STORIES as STORIES_DIR } from './paths.js';
import { expectFormatErrorNaming, thrownBy } from './errors.js';
import { suiteTempDir } from './tmp.js';

/** stories260K's real model.safetensors. */
export const STORIES_FILE = path.join(STORIES_DIR, 'model.safetensors');
export const ALL_DTYPES = Object.keys(DTYPES) as DType[];

/** A suite temp directory (removed after the suite) and a maker of fresh sub-directories in it. */
export function suiteSubdirs(prefix: string): (name: string) => string {
  const dir = suiteTempDir(prefix);
  return (name: string) => {
    const d = path.join(dir, name);
    fs.mkdirSync(d, { recursive: true });
    return d;
  };
}

/** Deterministic uint32 stream: mulberry32's words (u / 2³² · 2³² is exact). */
export function rng(seed: number): () => number {
  const r = mulberry32(seed);
  return () => r() * 2 ** 32;
}

/** Random data of `dtype` covering its range (raw bits for F16/BF16, negative and > 2^53 values for I64). */
export function randomTensor(dtype: DType, shape: number[], seed: number): Tensor {
  const r = rng(seed);
  const n = numel(shape);
  const data = new DTYPES[dtype].array(n);
  for (let i = 0; i < n; i++) {
    const u = r();
    switch (dtype) {
      case 'F64':
      case 'F32':
        (data as Float64Array)[i] = (u / 2 ** 32 - 0.5) * 2 ** ((u % 40) - 20);
        break;
      case 'I64':
        (data as BigInt64Array)[i] = BigInt.asIntN(64, (BigInt(u) << 32n) | BigInt(r()));
        break;
      case 'BOOL':
        (data as Uint8Array)[i] = u & 1;
        break;
      default: // integer kinds and F16/BF16 bits: the typed array wraps u to its width
        (data as Int32Array)[i] = u | 0;
    }
  }
  return { dtype, shape, data };
}

export function expectSameTensor(got: Tensor, want: Tensor): void {
  expect(got.dtype).toBe(want.dtype);
  expect(got.shape).toEqual(want.shape);
  expect(got.data.constructor).toBe(want.data.constructor);
  expect(got.data.length).toBe(want.data.length);
  // compare raw bytes: exact for every dtype (NaN bit patterns included)
  expect(Buffer.from(got.data.buffer, got.data.byteOffset, got.data.byteLength).equals(Buffer.from(want.data.buffer, want.data.byteOffset, want.data.byteLength))).toBe(true);
}

/** Builds a safetensors file by hand (independent of the encoder): u64 N, header text as given, data. */
export function rawSafetensors(header: string | object, data: Uint8Array = new Uint8Array(0), headerLength?: bigint): Buffer {
  const text = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(headerLength ?? BigInt(text.length));
  return Buffer.concat([prefix, text, data]);
}

/** Parses a header by hand: N and the JSON object. */
export function parseByHand(bytes: Buffer): { n: number; header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> } {
  const n = Number(bytes.readBigUInt64LE(0));
  return { n, header: JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) };
}

/** Asserts `fn` throws a FormatError whose message names `file` and matches every pattern. */
export function expectFormatError(fn: () => unknown, file: string, ...patterns: RegExp[]): void {
  expectFormatErrorNaming(thrownBy(fn), file, ...patterns);
}
