/**
 * Fuzzing formats/safetensors.ts: decodeSafetensors(bytes, label) and SafetensorsFile.open(path)
 * (+ read of every entry) on valid files from encodeSafetensors whose header JSON, u64 length field
 * or bytes were mutated. Property: the reader returns, or throws a one-line FormatError naming the
 * label / path.
 */
import * as fs from 'node:fs';
import fc from 'fast-check';
import { describe, it } from 'vitest';
import { decodeSafetensors, encodeSafetensors, SafetensorsFile } from '../../formats/safetensors.js';
import { DTYPES, type DType, type Tensor } from '../../src/ir/tensor.js';
import { STORIES } from '../helpers/paths.js';
import { suiteTempDir } from '../helpers/tmp.js';
import { anyJson, anyString, applyMutation, byteMutation, expectTypedSync, Outcomes, runProperty, tally, TEST_TIMEOUT_MS, writeCase, withField } from './fuzz-helpers.js';

const LABEL = 'fuzz.safetensors';
const dir = suiteTempDir('edgellm-fuzz-st-');
const DTYPE_NAMES = Object.keys(DTYPES) as DType[];

/** A small valid tensor list (names from anyString, every dtype, shapes up to 3-D with zeros). */
const tensorsArb: fc.Arbitrary<[string, Tensor][]> = fc
  .uniqueArray(
    fc.record({
      name: anyString.filter((n) => n !== '__metadata__'),
      dtype: fc.constantFrom(...DTYPE_NAMES),
      shape: fc.array(fc.nat({ max: 4 }), { maxLength: 3 }),
    }),
    { selector: (t) => t.name, minLength: 0, maxLength: 4 },
  )
  .map((specs) =>
    specs.map(({ name, dtype, shape }): [string, Tensor] => {
      const n = shape.reduce((a, b) => a * b, 1);
      const info = DTYPES[dtype];
      const data = new info.array(n);
      return [name, { dtype, shape, data } as Tensor];
    }),
  );

const metadataArb = fc.option(fc.dictionary(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 }), { maxKeys: 3 }), { nil: undefined });

/** Values for header fields: plus the interesting numbers (huge, negative, fractional, unsafe). */
const fieldValue: fc.Arbitrary<unknown> = fc.oneof(
  anyJson,
  fc.constantFrom(...DTYPE_NAMES, 'f32', 'F128', 'Q4', ''),
  fc.array(fc.oneof(fc.integer({ min: -5, max: 10 }), fc.constantFrom(2 ** 53, 2 ** 53 + 2, 1e300, 0.5, -0, 2 ** 31, 2 ** 32)), { maxLength: 4 }),
  fc.tuple(fc.nat({ max: 200 }), fc.nat({ max: 200 })).map(([a, b]) => [a, b]),
);

type HeaderEdit =
  | { op: 'set'; tensor: number; field: 'dtype' | 'shape' | 'data_offsets'; value: unknown }
  | { op: 'drop'; tensor: number; field: 'dtype' | 'shape' | 'data_offsets' }
  | { op: 'extraKey'; tensor: number; key: string; value: unknown }
  | { op: 'entry'; name: string; value: unknown }
  | { op: 'metadata'; value: unknown }
  | { op: 'replace'; value: unknown };

const editArb: fc.Arbitrary<HeaderEdit> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('set' as const), tensor: fc.nat({ max: 3 }), field: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const), value: fieldValue }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('drop' as const), tensor: fc.nat({ max: 3 }), field: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('extraKey' as const), tensor: fc.nat({ max: 3 }), key: anyString, value: anyJson }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('entry' as const), name: anyString, value: fc.oneof(anyJson, fc.record({ dtype: fieldValue, shape: fieldValue, data_offsets: fieldValue })) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('metadata' as const), value: fc.oneof(anyJson, fc.dictionary(anyString, anyJson, { maxKeys: 3 })) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('replace' as const), value: anyJson }) },
);

/** Splits encodeSafetensors output into header object and data bytes. */
function split(bytes: Uint8Array): { header: Record<string, any>; data: Uint8Array } {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return { header: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))), data: bytes.subarray(8 + n) };
}

function applyEdit(header: Record<string, any>, e: HeaderEdit): unknown {
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const pick = (i: number) => (names.length ? names[i % names.length] : undefined);
  switch (e.op) {
    case 'set':
    case 'drop': {
      const t = pick(e.tensor);
      if (t === undefined) return header;
      return withField(header, t, withField(header[t], e.field, e.op === 'set' ? e.value : undefined, e.op === 'drop'));
    }
    case 'extraKey': {
      const t = pick(e.tensor);
      return t === undefined ? header : withField(header, t, withField(header[t], e.key, e.value));
    }
    case 'entry':
      return withField(header, e.name, e.value);
    case 'metadata':
      return withField(header, '__metadata__', e.value);
    case 'replace':
      return e.value;
  }
}

/** Reassembles [u64 length][header JSON][data], the length as given or the true one. */
function assemble(headerJson: string, data: Uint8Array, lengthField?: bigint, pad = 0): Uint8Array {
  const h = new TextEncoder().encode(headerJson + ' '.repeat(pad));
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthField ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

/** Both entry points on the same bytes: the in-memory decoder, and open + read every tensor. */
function readBoth(bytes: Uint8Array, out: Outcomes): void {
  expectTypedSync(tally(out, () => decodeSafetensors(bytes, LABEL)), { file: LABEL });
  const file = writeCase(dir, 'case.safetensors', bytes);
  expectTypedSync(
    tally(out, () => {
      const f = SafetensorsFile.open(file);
      try {
        for (const name of f.entries.keys()) f.read(name);
      } finally {
        f.close();
      }
    }),
    { file },
  );
}

describe('fuzz: safetensors reader', () => {
  it('header JSON mutations (dtype, shape, data_offsets, extra keys, __metadata__)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    await runProperty(
      'safetensors header-json',
      fc.property(tensorsArb, metadataArb, fc.array(editArb, { minLength: 1, maxLength: 3 }), fc.nat({ max: 9 }), (tensors, metadata, edits, pad) => {
        const { header, data } = split(encodeSafetensors(tensors, metadata));
        let h: unknown = header;
        for (const e of edits) h = typeof h === 'object' && h !== null && !Array.isArray(h) ? applyEdit(h as Record<string, any>, e) : h;
        const json = JSON.stringify(h) ?? 'undefined';
        readBoth(assemble(json, data, undefined, pad), out);
      }),
      { seedOffset: 101, outcomes: out },
    );
  });

  it('raw header text (non-JSON numbers, invalid UTF-8, truncated JSON)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const numberText = fc.constantFrom('1e400', '-1', '1.5', '9007199254740993', '1e21', '-0', '0x10', 'NaN', '[]', '[0]', '[0,1,2]', '[1,0]', '"8"', 'null');
    await runProperty(
      'safetensors header-text',
      fc.property(
        tensorsArb.filter((t) => t.length > 0),
        fc.constantFrom('shape', 'data_offsets'),
        numberText,
        fc.option(fc.uint8Array({ minLength: 1, maxLength: 8 }), { nil: undefined }),
        (tensors, field, text, garbage) => {
          const { header, data } = split(encodeSafetensors(tensors));
          const first = Object.keys(header)[0];
          const marker = '"@@FIELD@@"';
          const json = JSON.stringify(withField(header, first, withField(header[first], field, '@@FIELD@@'))).replace(marker, text);
          let bytes = assemble(json, data);
          if (garbage) bytes = Uint8Array.from([...bytes.subarray(0, 9), ...garbage, ...bytes.subarray(9)]); // garbage inside the header, length field left stale
          readBoth(bytes, out);
        },
      ),
      { seedOffset: 102, outcomes: out },
    );
  });

  it('u64 header length field set to random and huge values', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    const u64 = fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.bigInt({ min: 0n, max: 4096n }), fc.constantFrom(0n, 1n, 7n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n, 2n ** 64n - 1n, 100_000_001n, 2n ** 32n));
    await runProperty(
      'safetensors length-field',
      fc.property(tensorsArb, u64, (tensors, n) => {
        const bytes = Uint8Array.from(encodeSafetensors(tensors));
        new DataView(bytes.buffer).setBigUint64(0, n, true);
        readBoth(bytes, out);
      }),
      { seedOffset: 103, outcomes: out },
    );
  });

  it('byte flips, truncations and extensions of valid files (generated and stories260K)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const out = new Outcomes();
    // the real checkpoint's header plus its first 4 KiB of data, length field fixed up: a real header, small file
    const real = fs.readFileSync(`${STORIES}/model.safetensors`);
    const realN = Number(real.readBigUInt64LE(0));
    const realHead = Uint8Array.from(real.subarray(0, 8 + realN));
    const base = fc.oneof(
      tensorsArb.chain((t) => fc.constant(encodeSafetensors(t))),
      fc.constant(realHead), // header only: decoding fails (data_offsets past end), flips explore the header
      fc.constant(new Uint8Array(real.buffer, real.byteOffset, real.length)),
    );
    await runProperty(
      'safetensors bytes',
      fc.property(base.chain((b) => fc.tuple(fc.constant(b), fc.array(byteMutation(b.length, 8 + realN), { minLength: 1, maxLength: 2 }))), ([bytes, muts]) => {
        let b = bytes;
        for (const m of muts) b = applyMutation(b, m);
        readBoth(b, out);
      }),
      { seedOffset: 104, outcomes: out },
    );
  });
});
