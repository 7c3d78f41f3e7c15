import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FormatError } from '../../src/core/errors.js';
import { numel } from '../../src/ir/tensor.js';
import type { Tensor } from '../../src/ir/tensor.js';
import { ALL_DTYPES, randomTensor, expectSameTensor, rawSafetensors, parseByHand, expectFormatError, STORIES_FILE as STORIES, suiteSubdirs } from '../helpers/safetensors.js';
import { SafetensorsCheckpoint } from '../../formats/safetensors-checkpoint.js';
import { SafetensorsFile, decodeSafetensors, encodeSafetensors } from '../../formats/safetensors.js';
import { writeSafetensors } from '../../formats/safetensors-writer.js';

const subdir = suiteSubdirs('edgellm-safetensors-');

describe('safetensors round trip', () => {
  it.each(ALL_DTYPES)('writes and reads back %s tensors (matrix, scalar, empty)', (dtype) => {
    const d = subdir(`rt-${dtype}`);
    const file = path.join(d, 'x.safetensors');
    const tensors: [string, Tensor][] = [
      ['matrix', randomTensor(dtype, [7, 5], 1)],
      ['scalar', randomTensor(dtype, [], 2)],
      ['empty', randomTensor(dtype, [0, 4], 3)],
      ['vector', randomTensor(dtype, [13], 4)],
    ];
    writeSafetensors(file, tensors, { dtype });
    const f = SafetensorsFile.open(file);
    try {
      expect(f.metadata).toEqual({ dtype });
      expect([...f.entries.keys()]).toEqual(tensors.map(([n]) => n));
      for (const [name, t] of tensors) expectSameTensor(f.read(name), t);
      // the tensor's typed array is aligned and owns its buffer
      expect(f.read('matrix').data.byteOffset).toBe(0);
    } finally {
      f.close();
    }
    expect(fs.readdirSync(d)).toEqual(['x.safetensors']); // no temp file left
  });

  it('encode -> decode -> encode is byte-identical, and the file writer writes the same bytes', () => {
    const tensors: [string, Tensor][] = ALL_DTYPES.map((dt, i) => [`t.${dt}`, randomTensor(dt, [3, i + 1], 100 + i)]);
    const meta = { format: 'pt', note: 'ünïcode ✓' };
    const a = encodeSafetensors(tensors, meta);
    const { tensors: back, metadata } = decodeSafetensors(a, 'mem');
    expect(metadata).toEqual(meta);
    expect([...back.keys()]).toEqual(tensors.map(([n]) => n));
    for (const [name, t] of tensors) expectSameTensor(back.get(name)!, t);
    const b = encodeSafetensors(back, metadata);
    expect(Buffer.from(b).equals(Buffer.from(a))).toBe(true);

    const file = path.join(subdir('rt-all'), 'all.safetensors');
    writeSafetensors(file, new Map(tensors), meta);
    expect(fs.readFileSync(file).equals(Buffer.from(a))).toBe(true);
  });

  it('pads the header with spaces to a multiple of 8 and lays tensors out in the given order', () => {
    // integer-like names would be reordered by JSON.stringify of an object; the layout must not be
    const names = ['zeta', '10', '2', 'alpha'];
    for (let extra = 0; extra < 8; extra++) {
      const tensors: [string, Tensor][] = names.map((n, i) => [n + 'x'.repeat(extra * (i === 0 ? 1 : 0)), randomTensor('F32', [i + 1], i)]);
      const bytes = Buffer.from(encodeSafetensors(tensors));
      const { n, header } = parseByHand(bytes);
      expect(n % 8).toBe(0);
      const text = bytes.subarray(8, 8 + n).toString('utf8');
      expect(text.trimEnd().endsWith('}')).toBe(true);
      expect(/^ *$/.test(text.slice(text.trimEnd().length))).toBe(true);
      expect(n - text.trimEnd().length).toBeLessThan(8);
      let end = 0;
      for (const [name, t] of tensors) {
        expect(header[name].data_offsets).toEqual([end, end + t.data.byteLength]);
        end += t.data.byteLength;
      }
      expect(bytes.length).toBe(8 + n + end);
    }
  });

  it('reads files from other writers: unpadded header, unaligned data, trailing bytes', () => {
    const file = path.join(subdir('foreign'), 'foreign.safetensors');
    const w = randomTensor('F32', [2, 3], 7);
    const h = randomTensor('F16', [3], 8);
    const data = Buffer.concat([Buffer.from(h.data.buffer), Buffer.from(w.data.buffer), Buffer.from([9, 9, 9])]);
    // header length 111 (not a multiple of 8): the F32 data start at an odd absolute offset
    const header = JSON.stringify({ h: { dtype: 'F16', shape: [3], data_offsets: [0, 6] }, w: { dtype: 'F32', shape: [2, 3], data_offsets: [6, 30] } }) + ' ';
    const bytes = rawSafetensors(header, data);
    expect((8 + header.length + 6) % 2).toBe(1);
    fs.writeFileSync(file, bytes);
    const f = SafetensorsFile.open(file);
    expectSameTensor(f.read('w'), w);
    expectSameTensor(f.read('h'), h);
    f.close();
    expectSameTensor(f.read('w'), w); // reopens after close
    f.close();
    expectSameTensor(decodeSafetensors(bytes, 'foreign').tensors.get('w')!, w);
  });
});

describe('real checkpoint: stories260K', () => {
  it('reads model.embed_tokens.weight as F32 [512, 64] and agrees with a hand-parsed header', () => {
    const bytes = fs.readFileSync(STORIES);
    const { n, header } = parseByHand(bytes);
    const f = SafetensorsFile.open(STORIES);
    try {
      const handNames = Object.keys(header).filter((k) => k !== '__metadata__');
      expect([...f.entries.keys()].sort()).toEqual([...handNames].sort());
      expect(f.metadata).toEqual(header.__metadata__ ?? {});
      for (const name of handNames) {
        const e = f.entries.get(name)!;
        expect(e.dtype).toBe(header[name].dtype);
        expect(e.shape).toEqual(header[name].shape);
        expect(e.offset).toBe(8 + n + header[name].data_offsets[0]);
        expect(e.byteLength).toBe(header[name].data_offsets[1] - header[name].data_offsets[0]);
        expect(e.file).toBe(STORIES);
      }

      const emb = f.read('model.embed_tokens.weight');
      expect(emb.dtype).toBe('F32');
      expect(emb.shape).toEqual([512, 64]);
      const data = emb.data as Float32Array;
      expect(data).toBeInstanceOf(Float32Array);
      expect(data.every(Number.isFinite)).toBe(true);
      expect(data.some((x) => x !== 0)).toBe(true);
      // decode the same bytes by hand with a DataView
      const begin = 8 + n + header['model.embed_tokens.weight'].data_offsets[0];
      const view = new DataView(bytes.buffer, bytes.byteOffset + begin, 512 * 64 * 4);
      for (let i = 0; i < 512 * 64; i++) expect(data[i]).toBe(view.getFloat32(i * 4, true));
    } finally {
      f.close();
    }
  });

  it('SafetensorsCheckpoint on the directory and decodeSafetensors agree with the file reader', () => {
    const ckpt = SafetensorsCheckpoint.open(path.dirname(STORIES));
    const { tensors } = decodeSafetensors(fs.readFileSync(STORIES), STORIES);
    try {
      expect(ckpt.names().sort()).toEqual([...tensors.keys()].sort());
      expect(ckpt.names().length).toBeGreaterThan(10);
      for (const name of ckpt.names()) expectSameTensor(ckpt.read(name), tensors.get(name)!);
      expectFormatError(() => ckpt.entry('nope'), STORIES, /no tensor 'nope'/);
    } finally {
      ckpt.close();
    }
  });
});

describe('lazy reading', () => {
  it('reads one tensor without touching the bytes of the others', () => {
    const file = path.join(subdir('lazy'), 'lazy.safetensors');
    const a = randomTensor('F32', [16, 4], 11);
    const b = randomTensor('F32', [16, 4], 12);
    const c = randomTensor('I64', [9], 13);
    writeSafetensors(file, [['a', a], ['b', b], ['c', c]]);
    const f = SafetensorsFile.open(file);
    try {
      // overwrite b's bytes on disk after opening
      const e = f.entries.get('b')!;
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.alloc(e.byteLength, 0xff), 0, e.byteLength, e.offset);
      fs.closeSync(fd);
      expectSameTensor(f.read('a'), a);
      expectSameTensor(f.read('c'), c);
      // the corruption is real: b now reads as NaNs
      expect(Array.from(f.read('b').data as Float32Array).every(Number.isNaN)).toBe(true);
    } finally {
      f.close();
    }
  });

  it('reports a file truncated after opening, naming the tensor', () => {
    const file = path.join(subdir('trunc'), 'trunc.safetensors');
    writeSafetensors(file, [['a', randomTensor('F32', [4], 1)], ['b', randomTensor('F32', [1000], 2)]]);
    const f = SafetensorsFile.open(file);
    try {
      fs.truncateSync(file, fs.statSync(file).size - 100);
      expectSameTensor(f.read('a'), decodeSafetensors(encodeSafetensors([['a', randomTensor('F32', [4], 1)]]), 'x').tensors.get('a')!);
      expectFormatError(() => f.read('b'), file, /tensor 'b'/, /end of file/);
    } finally {
      f.close();
    }
  });
});

describe('bad files -> FormatError naming the file', () => {
  const f32x4 = new Uint8Array(16);
  const cases: { name: string; bytes: () => Buffer; patterns: RegExp[] }[] = [
    { name: 'shorter than 8 bytes', bytes: () => Buffer.from([1, 2, 3, 4, 5]), patterns: [/5 bytes/, /shorter than the 8-byte/] },
    { name: 'empty file', bytes: () => Buffer.alloc(0), patterns: [/0 bytes/] },
    {
      name: 'header length past end of file',
      bytes: () => rawSafetensors('{}', new Uint8Array(0), 1000n),
      patterns: [/header length 1000/, /past end of file \(10 bytes/],
    },
    {
      name: 'header length near 2^64 (u64 read as BigInt)',
      bytes: () => rawSafetensors('{}', new Uint8Array(0), 2n ** 64n - 1n),
      patterns: [/18446744073709551615/, /past end of file/],
    },
    { name: 'header not JSON', bytes: () => rawSafetensors('{"a": {'), patterns: [/not valid UTF-8 JSON/] },
    { name: 'header JSON but not an object', bytes: () => rawSafetensors('[1, 2]'), patterns: [/must be a JSON object/, /\[1,2\]/] },
    { name: 'header null', bytes: () => rawSafetensors('null'), patterns: [/must be a JSON object/] },
    {
      name: 'unknown dtype',
      bytes: () => rawSafetensors({ w: { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4)),
      patterns: [/tensor 'w'/, /unknown dtype "F8_E4M3"/],
    },
    {
      name: 'negative shape entry',
      bytes: () => rawSafetensors({ w: { dtype: 'F32', shape: [-1, 4], data_offsets: [0, 16] } }, f32x4),
      patterns: [/tensor 'w'/, /shape must be an array of non-negative integers/, /\[-1,4\]/],
    },
    {
      name: 'fractional shape entry',
      bytes: () => rawSafetensors({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 4] } }, f32x4),
      patterns: [/tensor 'w'/, /shape must be/],
    },
    {
      name: 'shape not an array',
      bytes: () => rawSafetensors({ w: { dtype: 'F32', shape: '4', data_offsets: [0, 16] } }, f32x4),
      patterns: [/tensor 'w'/, /shape must be/],
    },
    {
      name: 'data_offsets past end of data',
      bytes: () => rawSafetensors({ w: { dtype: 'F32', shape: [250], data_offsets: [0, 1000] } }, f32x4),
      patterns: [/tensor 'w'/, /\[0, 1000\]/, /past the end of the data buffer \(16 bytes\)/],
    },
    {
      name: 'data_offsets reversed',
      bytes: () => rawSafetensors({ w: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, f32x4),
      patterns: [/tensor 'w'/, /data_offsets must be/],
    },
    {
      name: 'overlapping tensors',
      bytes: () =>
        rawSafetensors(
          { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
          f32x4,
        ),
      patterns: [/'a' \[0, 8\)/, /'b' \[4, 12\)/, /overlap/],
    },
    {
      name: 'tensor nested inside another',
      bytes: () =>
        rawSafetensors(
          { big: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, small: { dtype: 'U8', shape: [2], data_offsets: [4, 6] }, last: { dtype: 'U8', shape: [2], data_offsets: [8, 10] } },
          f32x4,
        ),
      patterns: [/'big'/, /'small'/, /overlap/],
    },
    {
      name: 'byte length != numel x dtype size',
      bytes: () => rawSafetensors({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, f32x4),
      patterns: [/tensor 'w'/, /span 8 bytes/, /shape \[3\] × F32 \(4 bytes\) needs 12/],
    },
    {
      name: 'metadata not strings',
      bytes: () => rawSafetensors({ __metadata__: { n: 3 } }),
      patterns: [/__metadata__/, /'n'/],
    },
    // names from the file are escaped so that the message stays on one line
    {
      name: 'a tensor name with a newline',
      bytes: () => rawSafetensors({ 'a\nb': { dtype: 'F8_E4M3', shape: [4], data_offsets: [0, 4] } }, new Uint8Array(4)),
      patterns: [/tensor 'a\\nb': unknown dtype/, /^[^\n]*$/],
    },
    {
      name: 'a metadata key with control characters',
      bytes: () => rawSafetensors({ __metadata__: { 'k\r\n\u001b': 3 } }),
      patterns: [/key 'k\\r\\n\\u001b' has 3/, /^[^\n\r\u001b]*$/],
    },
    {
      name: 'header JSON whose parse error quotes a newline',
      bytes: () => rawSafetensors('z\n  "w": {'),
      patterns: [/not valid UTF-8 JSON: .*\\n/, /^[^\n]*$/],
    },
  ];

  it.each(cases)('$name (file reader and in-memory decoder)', ({ name, bytes, patterns }) => {
    const file = path.join(subdir('bad'), `${name.replace(/[^a-z0-9]+/gi, '_')}.safetensors`);
    const b = bytes();
    fs.writeFileSync(file, b);
    expectFormatError(() => SafetensorsFile.open(file), file, ...patterns);
    expectFormatError(() => SafetensorsCheckpoint.open(file), file, ...patterns);
    expectFormatError(() => decodeSafetensors(b, 'label.safetensors'), 'label.safetensors', ...patterns);
  });

  it('the hand-built good file the bad cases derive from does read', () => {
    const data = new Float32Array([1, 2, 3, 4]);
    const bytes = rawSafetensors({ w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } }, new Uint8Array(data.buffer));
    expect(Array.from(decodeSafetensors(bytes, 'ok').tensors.get('w')!.data as Float32Array)).toEqual([1, 2, 3, 4]);
  });
});
