/** formats/safetensors-writer.ts: the streaming writer (declared specs, tensors in order, atomic rename) against the in-memory encoder. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { EdgeLLMError, ShapeMismatchError } from '../../src/core/errors.js';
import type { DType, TypedArray } from '../../src/ir/tensor.js';
import { randomTensor, expectSameTensor, suiteSubdirs } from '../helpers/safetensors.js';
import { SafetensorsFile, encodeSafetensors } from '../../formats/safetensors.js';
import { SafetensorsWriter, writeSafetensors } from '../../formats/safetensors-writer.js';
import { thrownBy } from '../helpers/errors.js';

const subdir = suiteSubdirs('edgellm-safetensors-writer-');

describe('SafetensorsWriter', () => {
  const specs = [
    { name: 'a', dtype: 'F32' as DType, shape: [2, 3] },
    { name: 'b', dtype: 'I8' as DType, shape: [5] },
  ];
  const a = randomTensor('F32', [2, 3], 31);
  const b = randomTensor('I8', [5], 32);

  function expectThrows(fn: () => unknown, kind: new (...args: never[]) => Error, ...patterns: RegExp[]): void {
    const err = thrownBy(fn);
    expect(err).toBeInstanceOf(kind);
    for (const p of patterns) expect((err as Error).message).toMatch(p);
  }

  it('goes HEADER_WRITTEN -> TENSOR_DATA -> DONE and writes a file the reader accepts', () => {
    const d = subdir('writer-ok');
    const out = path.join(d, 'o.safetensors');
    const w = new SafetensorsWriter(out, specs, { k: 'v' });
    expect(w.state).toBe('HEADER_WRITTEN');
    expect(fs.existsSync(out)).toBe(false); // only the temp file exists until finish
    w.write('a', a.data);
    expect(w.state).toBe('TENSOR_DATA');
    w.write('b', b.data);
    w.finish();
    expect(w.state).toBe('DONE');
    expect(fs.readdirSync(d)).toEqual(['o.safetensors']);
    expect(fs.readFileSync(out).equals(Buffer.from(encodeSafetensors([['a', a], ['b', b]], { k: 'v' })))).toBe(true);
    expectThrows(() => w.write('a', a.data), EdgeLLMError, /writer is DONE/);
    expectThrows(() => w.finish(), EdgeLLMError, /writer is DONE/);
    w.abort(); // no-op after finish: the output stays
    expect(fs.existsSync(out)).toBe(true);
  });

  it('rejects an out-of-order write and stays usable', () => {
    const d = subdir('writer-order');
    const out = path.join(d, 'o.safetensors');
    const w = new SafetensorsWriter(out, specs);
    expectThrows(() => w.write('b', b.data), EdgeLLMError, /'b' \(#2 of 2\) written out of order/, /expected 'a' \(#1\)/);
    w.write('a', a.data);
    w.write('b', b.data);
    w.finish();
    const f = SafetensorsFile.open(out);
    expectSameTensor(f.read('a'), a);
    expectSameTensor(f.read('b'), b);
    f.close();
  });

  it('rejects a duplicate write and an undeclared name', () => {
    const w = new SafetensorsWriter(path.join(subdir('writer-dup'), 'o.safetensors'), specs);
    w.write('a', a.data);
    expectThrows(() => w.write('a', a.data), EdgeLLMError, /duplicate write of tensor 'a'/);
    expectThrows(() => w.write('zzz', a.data), EdgeLLMError, /'zzz' was not declared/);
    w.abort();
  });

  it('rejects duplicate names in the specs before creating any file', () => {
    const d = subdir('writer-dupspec');
    expectThrows(() => new SafetensorsWriter(path.join(d, 'o.safetensors'), [specs[0], specs[1], specs[0]]), EdgeLLMError, /duplicated tensor name 'a'/);
    expectThrows(() => writeSafetensors(path.join(d, 'o.safetensors'), [['x', a], ['x', a]]), EdgeLLMError, /duplicated tensor name 'x'/);
    expectThrows(() => new SafetensorsWriter(path.join(d, 'o.safetensors'), [{ name: '__metadata__', dtype: 'F32', shape: [1] }]), EdgeLLMError, /reserved/);
    expect(fs.readdirSync(d)).toEqual([]);
  });

  it('rejects wrong byte length and wrong array kind', () => {
    const w = new SafetensorsWriter(path.join(subdir('writer-len'), 'o.safetensors'), specs);
    expectThrows(() => w.write('a', new Float32Array(5)), ShapeMismatchError, /tensor 'a' has 20 bytes \(5 elements\)/, /shape \[2, 3\] × F32 \(4 bytes\) needs 24/);
    expectThrows(() => w.write('a', new Int32Array(6)), ShapeMismatchError, /needs a Float32Array, got Int32Array/);
    expect(w.state).toBe('HEADER_WRITTEN');
    w.abort();
  });

  it('finish with tensors missing throws and names them; abort leaves no output and no temp file', () => {
    const d = subdir('writer-abort');
    const out = path.join(d, 'o.safetensors');
    const w = new SafetensorsWriter(out, specs);
    w.write('a', a.data);
    expect(fs.readdirSync(d)).toHaveLength(1); // the temp file
    expectThrows(() => w.finish(), EdgeLLMError, /1 of 2 declared tensors not written \('b'\)/);
    w.abort();
    expect(w.state).toBe('ABORTED');
    expect(fs.readdirSync(d)).toEqual([]);
    expectThrows(() => w.write('b', b.data as TypedArray), EdgeLLMError, /writer is ABORTED/);
  });

  it('writeSafetensors is atomic: a failed write leaves an existing file untouched and no temp file', () => {
    const d = subdir('writer-atomic');
    const out = path.join(d, 'o.safetensors');
    writeSafetensors(out, [['a', a]]);
    const before = fs.readFileSync(out);
    expectThrows(() => writeSafetensors(out, [['a', a], ['b', { dtype: 'I8', shape: [6], data: new Int8Array(5) }]]), ShapeMismatchError, /tensor 'b'/);
    expect(fs.readFileSync(out).equals(before)).toBe(true);
    expect(fs.readdirSync(d)).toEqual(['o.safetensors']);
  });
});
