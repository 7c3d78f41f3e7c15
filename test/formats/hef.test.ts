import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { EdgeLLMError, FormatError } from '../../src/core/errors.js';
import { HEF_FORMAT_VERSION, HEF_MAGIC, SECTION_ALIGN, openHef, verifyHef, writeHef, type HefSectionInput } from '../../formats/hef.js';
import { writeHar } from '../../formats/har.js';
import { randomBytes } from '../helpers/random.js';
import { expectOneLineFormatError, thrownBy } from '../helpers/errors.js';
import { fileWriter, suiteTempDir } from '../helpers/tmp.js';

const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

const dir = suiteTempDir('edgellm-hef-');

const io = (name: string, dtype: string, shape: string[]) => ({ name, dtype, shape });

const sampleHeader = {
  modelName: 'tiny-qwen2',
  edgellmVersion: '0.1.0',
  configJson: JSON.stringify({ hiddenSize: 64, numLayers: 2 }),
  quant: { weightBits: 4, weightGroupSize: 32, weightScheme: 'symmetric', activationScheme: 'static-asymmetric-per-tensor-u8', kvScheme: 'static-asymmetric-per-tensor-u8', weightMethod: 'gptq' },
  kvCache: {
    numLayers: 2,
    numKvHeads: 2,
    headDim: 16,
    maxContext: 128,
    dtype: 'uint8',
    layers: [
      { k: { scale: 0.5, zeroPoint: 128 }, v: { scale: 0.25, zeroPoint: 127 } },
      { k: { scale: 0.125, zeroPoint: 120 }, v: { scale: 1, zeroPoint: 0 } },
    ],
  },
  prefill: { section: 'graph.prefill', seqLen: 16, inputs: [io('input_ids', 'int64', ['1', '16'])], outputs: [io('logits', 'float32', ['1', '16', '256'])] },
  decode: {
    section: 'graph.decode',
    seqLen: 1,
    inputs: [io('input_ids', 'int64', ['1', '1']), io('past_key_values.0.key', 'uint8', ['1', '2', 'past_sequence_length', '16'])],
    outputs: [io('logits', 'float32', ['1', '1', '256'])],
  },
  sourceSha256: 'cd'.repeat(32),
  createdAt: '2025-01-01T00:00:00Z',
};

/** Sizes chosen to exercise padding: unaligned, exactly aligned, tiny and empty. */
function sampleSections(): HefSectionInput[] {
  return [
    { name: 'weights', kind: 'weights', data: randomBytes(1000, 1) },
    { name: 'graph.prefill', kind: 'graph', data: randomBytes(256, 2) },
    { name: 'graph.decode', kind: 'graph', data: randomBytes(77, 3) },
    { name: 'empty', kind: 'json', data: new Uint8Array(0) },
    { name: 'tokenizer.json', kind: 'tokenizer', data: new TextEncoder().encode('{"model":{"type":"BPE"}}') },
  ];
}

/** Asserts `action` throws a one-line FormatError naming `file` (and matching `pattern`); closes what it opens if it does not. */
function expectFormatError(action: () => unknown, file: string, pattern?: RegExp): FormatError {
  const error = thrownBy(() => {
    const f = action();
    if (f && typeof f === 'object' && 'close' in f) (f as { close(): void }).close();
  });
  return expectOneLineFormatError(error, file, pattern);
}

describe('HEF round trip', () => {
  it('reads back the header and every section exactly, sections aligned', () => {
    const file = path.join(dir, 'round.hef');
    const sections = sampleSections();
    writeHef(file, sampleHeader, sections);
    const hef = verifyHef(file);
    try {
      expect(hef.version).toBe(HEF_FORMAT_VERSION);
      expect(hef.fileSize).toBe(fs.statSync(file).size);
      expect(hef.header).toMatchObject(sampleHeader);
      expect([...hef.sections.keys()]).toEqual(sections.map((s) => s.name));
      let previousEnd = 0;
      for (const s of sections) {
        const entry = hef.sections.get(s.name)!;
        expect(entry.kind).toBe(s.kind);
        expect(entry.length).toBe(s.data.byteLength);
        expect(entry.offset % SECTION_ALIGN).toBe(0);
        expect(entry.offset).toBeGreaterThanOrEqual(previousEnd);
        expect(entry.offset - previousEnd).toBeLessThan(previousEnd === 0 ? Infinity : SECTION_ALIGN);
        expect(Buffer.from(entry.sha256).equals(sha256(s.data))).toBe(true);
        expect(hef.readSection(s.name)).toEqual(s.data);
        previousEnd = entry.offset + entry.length;
      }
      expect(hef.fileSize).toBe(previousEnd);
    } finally {
      hef.close();
    }
  });

  it('stores a gzip section compressed, reads it back decompressed, and still reads version 1 files', () => {
    const file = path.join(dir, 'gzip.hef');
    const text = new TextEncoder().encode(JSON.stringify({ model: { vocab: Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`tok${i}`, i])) } }));
    writeHef(file, sampleHeader, [...sampleSections().filter((s) => s.name !== 'tokenizer.json'), { name: 'tokenizer.json', kind: 'tokenizer', data: text, encoding: 'gzip' }]);
    const hef = verifyHef(file);
    try {
      const entry = hef.sections.get('tokenizer.json')!;
      expect(entry.encoding).toBe('gzip');
      expect(entry.length).toBeLessThan(text.byteLength / 2); // stored compressed (27.8 KB of JSON in 9.7 KB)
      const stored = fs.readFileSync(file).subarray(entry.offset, entry.offset + entry.length);
      expect(Buffer.from(entry.sha256).equals(sha256(stored))).toBe(true); // the digest is of the stored bytes
      expect(new Uint8Array(gunzipSync(stored))).toEqual(text);
      expect(hef.readSection('tokenizer.json')).toEqual(text);
      expect(hef.sections.get('weights')!.encoding).toBe('');
    } finally {
      hef.close();
    }
    // a version 1 file (no encodings) reads as before; one claiming an encoding is refused
    writeHef(path.join(dir, 'plain.hef'), sampleHeader, sampleSections());
    const v1 = Buffer.from(fs.readFileSync(path.join(dir, 'plain.hef')));
    v1.writeUInt32LE(1, 8);
    fs.writeFileSync(path.join(dir, 'v1.hef'), v1);
    const old = verifyHef(path.join(dir, 'v1.hef'));
    expect(old.version).toBe(1);
    expect(old.readSection('graph.decode')).toEqual(sampleSections()[2].data);
    old.close();
    const v1gzip = Buffer.from(fs.readFileSync(file));
    v1gzip.writeUInt32LE(1, 8);
    fs.writeFileSync(path.join(dir, 'v1-gzip.hef'), v1gzip);
    expectFormatError(() => openHef(path.join(dir, 'v1-gzip.hef')), path.join(dir, 'v1-gzip.hef'), /section 'tokenizer.json' has encoding 'gzip' \(format version 1 allows none\)/);
  });

  it('a gzip section whose stream is corrupt but whose sha256 matches: one line naming the section', () => {
    const file = path.join(dir, 'badgzip.hef');
    // a gzip stream cut short, written as a plain section, then relabelled gzip by rewriting the header
    const truncated = gzipSync(new TextEncoder().encode('{"x": 1}'.repeat(100))).subarray(0, 20);
    writeHef(file, sampleHeader, [{ name: 'tokenizer.json', kind: 'tokenizer', data: truncated, encoding: '' }]);
    const hef = openHef(file);
    hef.sections.get('tokenizer.json')!.encoding = 'gzip';
    expectFormatError(() => hef.readSection('tokenizer.json'), file, /section 'tokenizer.json' does not decompress \(gzip\)/);
    hef.close();
  });

  it('writes identical bytes for identical input', () => {
    const a = path.join(dir, 'det-a.hef');
    const b = path.join(dir, 'det-b.hef');
    writeHef(a, sampleHeader, sampleSections());
    writeHef(b, sampleHeader, sampleSections());
    expect(fs.readFileSync(a).equals(fs.readFileSync(b))).toBe(true);
  });

  it('matches the documented layout, decoded by hand with a separately loaded schema (reference reader)', () => {
    const file = path.join(dir, 'layout.hef');
    const sections = sampleSections();
    writeHef(file, sampleHeader, sections);
    const bytes = fs.readFileSync(file);
    expect(bytes.subarray(0, 8).toString('latin1')).toBe('EDGEHEF\0');
    expect(new Uint8Array(bytes.subarray(0, 8))).toEqual(HEF_MAGIC);
    expect(bytes.readUInt32LE(8)).toBe(2);
    const headerLength = bytes.readUInt32LE(12);
    const headerBytes = bytes.subarray(48, 48 + headerLength);
    expect(sha256(headerBytes).equals(bytes.subarray(16, 48))).toBe(true);
    const protoPath = fileURLToPath(new URL('../../formats/hef.proto', import.meta.url));
    const HefHeader = protobuf.loadSync(protoPath).lookupType('edgellm.hef.HefHeader');
    const header = HefHeader.toObject(HefHeader.decode(headerBytes), { longs: Number });
    expect(header.modelName).toBe('tiny-qwen2');
    expect(header.kvCache.layers[1].k.zeroPoint).toBe(120);
    const firstOffset = header.sections[0].offset;
    expect(firstOffset).toBe(Math.ceil((48 + headerLength) / SECTION_ALIGN) * SECTION_ALIGN);
    expect(bytes.subarray(48 + headerLength, firstOffset).every((b) => b === 0)).toBe(true);
    sections.forEach((s, i) => {
      const { offset, length } = header.sections[i];
      expect(new Uint8Array(bytes.subarray(offset, offset + length))).toEqual(s.data);
    });
  });

  it('handles a header-only file and large offsets (section table grows the header)', () => {
    const empty = path.join(dir, 'empty.hef');
    writeHef(empty, { modelName: 'x' }, []);
    const e = verifyHef(empty);
    expect(e.sections.size).toBe(0);
    expect(e.fileSize % SECTION_ALIGN).toBe(0);
    e.close();

    const big = path.join(dir, 'big.hef');
    const sections = Array.from({ length: 40 }, (_, i) => ({ name: `blob.${i}`, kind: 'json', data: randomBytes(3000 + i, i) }));
    writeHef(big, sampleHeader, sections);
    const hef = verifyHef(big);
    expect(hef.readSection('blob.39')).toEqual(sections[39].data);
    hef.close();
  });

  it('openHef reads sections lazily and readSection verifies them', () => {
    const file = path.join(dir, 'lazy.hef');
    writeHef(file, sampleHeader, sampleSections());
    const bytes = fs.readFileSync(file);
    const { offset } = openHefSection(file, 'graph.decode');
    bytes[offset + 3] ^= 0x01;
    const corrupt = path.join(dir, 'lazy-corrupt.hef');
    fs.writeFileSync(corrupt, bytes);
    const hef = openHef(corrupt); // framing and header are intact
    try {
      expect(hef.readSection('weights')).toEqual(sampleSections()[0].data);
      expectFormatError(() => hef.readSection('graph.decode'), corrupt, /section 'graph\.decode' is corrupt: sha256 mismatch/);
      expectFormatError(() => hef.readSection('nope'), corrupt, /has no section 'nope'/);
    } finally {
      hef.close();
    }
    expect(() => hef.readSection('weights')).toThrow(/closed/);
  });
});

function openHefSection(file: string, name: string): { offset: number; length: number } {
  const hef = openHef(file);
  const s = hef.sections.get(name)!;
  hef.close();
  return { offset: s.offset, length: s.length };
}

describe('HEF writer', () => {
  it('rejects duplicate section names and leaves neither target nor temp file', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'dup-'));
    const sections = [...sampleSections(), { name: 'weights', kind: 'weights', data: new Uint8Array(4) }];
    expect(() => writeHef(path.join(sub, 'out.hef'), sampleHeader, sections)).toThrow(/duplicate section name 'weights'/);
    expect(fs.readdirSync(sub)).toEqual([]);
  });

  it('rejects unknown header fields, wrong types and a caller-supplied sections table', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'badheader-'));
    const target = path.join(sub, 'out.hef');
    expect(() => writeHef(target, { ...sampleHeader, kvCache: { ...sampleHeader.kvCache, numLayer: 2 } }, [])).toThrow(/unknown HefHeader field\(s\): kvCache\.numLayer/);
    expect(() => writeHef(target, { modelName: 42 }, [])).toThrow(EdgeLLMError);
    expect(() => writeHef(target, { sections: [] }, [])).toThrow(/filled in by the writer/);
    expect(fs.readdirSync(sub)).toEqual([]);
  });

  it('leaves no temporary file when the final rename fails', () => {
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    const target = path.join(sub, 'occupied.hef');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'keep'), 'x');
    expect(() => writeHef(target, sampleHeader, sampleSections())).toThrow();
    expect(fs.readdirSync(sub)).toEqual(['occupied.hef']);
  });
});

describe('HEF reader rejects', () => {
  let good: Buffer;
  let headerLength: number;
  const sections = new Map<string, { offset: number; length: number }>();

  beforeAll(() => {
    const file = path.join(dir, 'good.hef');
    writeHef(file, sampleHeader, sampleSections());
    good = fs.readFileSync(file);
    headerLength = good.readUInt32LE(12);
    for (const s of sampleSections()) sections.set(s.name, openHefSection(file, s.name));
  });

  /** Writes `bytes` to `<dir>/<name>` and returns that path. */
  const variant = fileWriter(dir);

  /** Rewrites the header (keeping its encoded length, so the data stays put) with a fresh sha256. */
  function reframe(name: string, edit: (header: Record<string, any>) => void): string {
    const HefHeader = protobuf.loadSync(fileURLToPath(new URL('../../formats/hef.proto', import.meta.url))).lookupType('edgellm.hef.HefHeader');
    const header = HefHeader.toObject(HefHeader.decode(good.subarray(48, 48 + headerLength)), { longs: Number });
    edit(header);
    const encoded = HefHeader.encode(HefHeader.fromObject(header)).finish();
    expect(encoded.length).toBe(headerLength);
    const bytes = Buffer.from(good);
    bytes.set(encoded, 48);
    bytes.set(sha256(encoded), 16);
    return variant(name, bytes);
  }

  it('an overwritten magic, and a HAR passed as a HEF', async () => {
    const bytes = Buffer.from(good);
    bytes.write('NOTAHEF!', 0, 'latin1');
    const file = variant('magic.hef', bytes);
    expectFormatError(() => openHef(file), file, /not an edgellm HEF \(bad magic\)/);
    const har = path.join(dir, 'model.har');
    await writeHar(har, {}, new Map([['weights.safetensors', randomBytes(100, 5)]]));
    expectFormatError(() => openHef(har), har, /not an edgellm HEF \(bad magic\)/);
    expectFormatError(() => verifyHef(har), har, /bad magic/);
  });

  it('a bumped format version, naming found and supported versions', () => {
    const bytes = Buffer.from(good);
    bytes.writeUInt32LE(3, 8);
    const file = variant('v3.hef', bytes);
    expectFormatError(() => openHef(file), file, /unsupported HEF format version 3 \(this edgellm reads versions 1 and 2\)/);
  });

  it('a header length past the end of the file, and a corrupt header', () => {
    const long = Buffer.from(good);
    long.writeUInt32LE(good.length, 12);
    const f1 = variant('hlen.hef', long);
    expectFormatError(() => openHef(f1), f1, /header length \d+ runs past end of file/);
    const flipped = Buffer.from(good);
    flipped[48 + 5] ^= 0x20;
    const f2 = variant('header.hef', flipped);
    expectFormatError(() => openHef(f2), f2, /header is corrupt/);
  });

  it('a header that is not a HefHeader (with a valid sha256)', () => {
    const bytes = Buffer.from(good);
    const junk = Buffer.alloc(headerLength, 0xff); // field 31, wire type 7: invalid
    bytes.set(junk, 48);
    bytes.set(sha256(junk), 16);
    const file = variant('undecodable.hef', bytes);
    expectFormatError(() => openHef(file), file, /header is not a decodable HefHeader/);
  });

  it('a misaligned section and overlapping sections', () => {
    const misaligned = reframe('misaligned.hef', (h) => (h.sections[1].offset += 1));
    expectFormatError(() => openHef(misaligned), misaligned, /section 'graph\.prefill' is misaligned: offset \d+ is not a multiple of 64/);
    const overlap = reframe('overlap.hef', (h) => (h.sections[1].offset = h.sections[0].offset));
    expectFormatError(() => openHef(overlap), overlap, /sections 'weights' .* and 'graph\.prefill' .* overlap/);
    const intoHeader = reframe('into-header.hef', (h) => (h.sections[0].offset -= SECTION_ALIGN));
    expectFormatError(() => openHef(intoHeader), intoHeader, /overlaps the header/);
  });

  it('one flipped byte at every position (preamble, header, padding, every section)', () => {
    const end = (name: string): number => sections.get(name)!.offset + sections.get(name)!.length;
    // Named regions first, so a failure says what was hit.
    const must: Array<[string, number, RegExp]> = [
      ['magic', 3, /bad magic/],
      ['version', 8, /unsupported HEF format version/],
      ['header length', 12, /header length|header is corrupt/],
      ['header sha256', 20, /header is corrupt/],
      ['header', 48 + (headerLength >> 1), /header is corrupt/],
      ['padding after the header', 48 + headerLength, /non-zero padding/],
      ['padding after weights', end('weights'), /non-zero padding before section 'graph\.prefill'/],
      ['padding after graph.decode', end('graph.decode') + 1, /non-zero padding/],
    ];
    for (const [name, { offset, length }] of sections) {
      if (length > 0) must.push([name, offset + (length >> 1), new RegExp(`section '${name.replace('.', '\\.')}' is corrupt: sha256 mismatch`)]);
    }
    for (const [what, pos, pattern] of must) {
      const bytes = Buffer.from(good);
      bytes[pos] ^= 0x01;
      const file = variant('flip.hef', bytes);
      const error = expectFormatError(() => verifyHef(file), file);
      expect(error.message, `${what} (byte ${pos})`).toMatch(pattern);
    }
    const missed: string[] = [];
    for (let pos = 0; pos < good.length; pos++) {
      for (const mask of [0x01, 0x80]) {
        const bytes = Buffer.from(good);
        bytes[pos] ^= mask;
        const file = variant('flip.hef', bytes);
        try {
          verifyHef(file).close();
          missed.push(`byte ${pos} ^ 0x${mask.toString(16)}: accepted`);
        } catch (e) {
          if (!(e instanceof FormatError) || !e.message.includes(file)) missed.push(`byte ${pos} ^ 0x${mask.toString(16)}: ${String(e)}`);
        }
      }
    }
    expect(missed).toEqual([]);
  });

  it('a truncated file, at many lengths', () => {
    const w = sections.get('weights')!;
    const lengths = [0, 4, 8, 20, 47, 48, 48 + headerLength - 1, 48 + headerLength, w.offset, w.offset + 10, w.offset + w.length, good.length - 1];
    for (const n of lengths) {
      const file = variant(`cut-${n}.hef`, good.subarray(0, n));
      expectFormatError(() => verifyHef(file), file);
    }
    const cut = variant('cut-weights.hef', good.subarray(0, w.offset + 10));
    expectFormatError(() => openHef(cut), cut, new RegExp(`truncated: section 'weights' ends at byte ${w.offset + w.length} but file has ${w.offset + 10} bytes`));
    const short = variant('cut-short.hef', good.subarray(0, 20));
    expectFormatError(() => openHef(short), short, /file too short: 20 bytes/);
  });

  it('bytes appended after the last section', () => {
    const file = variant('appended.hef', Buffer.concat([good, Buffer.alloc(64)]));
    openHef(file).close(); // framing is fine
    expectFormatError(() => verifyHef(file), file, /64 unexpected bytes after the last section/);
  });
});
