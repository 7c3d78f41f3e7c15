import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tar from 'tar';
import { beforeAll, describe, expect, it } from 'vitest';
import { EdgeLLMError, FormatError } from '../../src/core/errors.js';
import { HAR_FORMAT, HAR_FORMAT_VERSION, readHar, readHarManifest, writeHar } from '../../formats/har.js';
import { writeHef } from '../../formats/hef.js';
import { randomBytes } from '../helpers/random.js';
import { expectOneLineFormatError, rejectionOf } from '../helpers/errors.js';
import { fileWriter, suiteTempDir } from '../helpers/tmp.js';

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const sha256Hex = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const dir = suiteTempDir('edgellm-har-');

const sampleManifest = { model: 'tiny-qwen2', quant: { weightBits: 4, method: 'gptq' }, sourceSha256: 'ab'.repeat(32) };

/** Member sizes chosen to exercise tar padding: not a multiple of 512, exactly 512, and empty. */
function sampleFiles(): Map<string, Uint8Array> {
  return new Map<string, Uint8Array>([
    ['config.json', utf8(JSON.stringify({ hidden_size: 64, num_hidden_layers: 2 }))],
    ['weights.safetensors', randomBytes(1300, 1)],
    ['tokenizer/tokenizer.json', randomBytes(512, 2)],
    ['calibration/empty.bin', new Uint8Array(0)],
  ]);
}

/** Writes a tar of the given members (in order) with tar.create from a staging directory. */
async function handTar(target: string, members: Array<[string, Uint8Array | string]>): Promise<void> {
  const stage = fs.mkdtempSync(path.join(dir, 'stage-'));
  for (const [name, data] of members) {
    fs.mkdirSync(path.dirname(path.join(stage, name)), { recursive: true });
    fs.writeFileSync(path.join(stage, name), data);
  }
  await tar.create({ file: target, cwd: stage, portable: true }, members.map(([name]) => name));
}

/** A manifest.json + manifest.sha256 pair, as a HAR writer would make it. */
function manifestMembers(manifest: unknown): Array<[string, string]> {
  const text = JSON.stringify(manifest);
  return [['manifest.json', text], ['manifest.sha256', sha256Hex(utf8(text))]];
}

/** Asserts readHar rejects `file` with a one-line FormatError naming it (and matching `pattern`). */
async function expectFormatError(file: string, pattern?: RegExp): Promise<FormatError> {
  return expectOneLineFormatError(await rejectionOf(readHar(file)), file, pattern);
}

describe('HAR round trip', () => {
  it('reads back the manifest and every member exactly', async () => {
    const file = path.join(dir, 'round.har');
    const files = sampleFiles();
    await writeHar(file, sampleManifest, files);
    const back = await readHar(file);
    expect(back.manifest).toMatchObject({ format: HAR_FORMAT, formatVersion: HAR_FORMAT_VERSION, ...sampleManifest });
    expect(Object.keys(back.manifest.files as object)).toEqual([...files.keys()]);
    expect([...back.files.keys()]).toEqual([...files.keys()]);
    for (const [name, data] of files) expect(back.files.get(name)).toEqual(data);
    expect(await readHarManifest(file)).toEqual(back.manifest);
  });

  it('writes the same bytes for the same input (mtime 0, mode 0644, portable)', async () => {
    const a = path.join(dir, 'det-a.har');
    const b = path.join(dir, 'det-b.har');
    await writeHar(a, sampleManifest, sampleFiles());
    await new Promise((r) => setTimeout(r, 1100)); // a wall-clock mtime would differ by now
    await writeHar(b, sampleManifest, sampleFiles());
    expect(fs.readFileSync(a).equals(fs.readFileSync(b))).toBe(true);

    const entries: Array<{ path: string; mode?: number; mtime?: Date; uid?: number; size: number }> = [];
    await tar.t({ file: a, strict: true, onReadEntry: (e) => entries.push({ path: e.path, mode: e.mode, mtime: e.mtime, uid: e.uid, size: e.size }) });
    expect(entries.map((e) => e.path)).toEqual(['manifest.json', ...sampleFiles().keys(), 'manifest.sha256']);
    for (const e of entries) {
      expect(e.mode).toBe(0o644);
      expect(e.mtime?.getTime()).toBe(0);
      expect(e.uid ?? 0).toBe(0);
    }
  });

  it('is a standard tar that GNU tar extracts byte for byte (reference reader)', async () => {
    let hasTar = true;
    try {
      execFileSync('tar', ['--version'], { stdio: 'ignore' });
    } catch {
      hasTar = false;
    }
    if (!hasTar) return;
    const file = path.join(dir, 'gnu.har');
    const files = sampleFiles();
    await writeHar(file, sampleManifest, files);
    for (const [name, data] of files) {
      const extracted = execFileSync('tar', ['-xOf', file, name]);
      expect(new Uint8Array(extracted)).toEqual(data);
    }
    const manifestText = execFileSync('tar', ['-xOf', file, 'manifest.json']);
    expect(execFileSync('tar', ['-xOf', file, 'manifest.sha256']).toString()).toBe(sha256Hex(manifestText));
  });

  it('records bytes and sha256 of every member in the manifest', async () => {
    const file = path.join(dir, 'listing.har');
    const files = sampleFiles();
    await writeHar(file, {}, files);
    const manifest = await readHarManifest(file);
    const expected = Object.fromEntries([...files].map(([name, data]) => [name, { bytes: data.byteLength, sha256: sha256Hex(data) }]));
    expect(manifest.files).toEqual(expected);
  });
});

describe('HAR writer', () => {
  it.each([
    ['../escape.bin', /'\.\.'/],
    ['/etc/passwd', /absolute/],
    ['a//b.bin', /empty/],
    ['./a.bin', /'\.'/],
    ['', /empty/],
    ['manifest.json', /reserved/],
    ['manifest.sha256', /reserved/],
    ['back\\slash', /only letters/],
    ['x'.repeat(100), /99 bytes/],
  ])('rejects member name %j and leaves no file behind', async (name, pattern) => {
    const sub = fs.mkdtempSync(path.join(dir, 'badname-'));
    const error = await writeHar(path.join(sub, 'out.har'), {}, new Map([[name, new Uint8Array(1)]])).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EdgeLLMError);
    expect((error as Error).message).toMatch(pattern);
    expect(fs.readdirSync(sub)).toEqual([]);
  });

  it.each(['format', 'formatVersion', 'files'])('rejects the reserved manifest key %s', async (key) => {
    const sub = fs.mkdtempSync(path.join(dir, 'reserved-'));
    await expect(writeHar(path.join(sub, 'out.har'), { [key]: 1 }, new Map())).rejects.toThrow(/reserved/);
    expect(fs.readdirSync(sub)).toEqual([]);
  });

  it('leaves no temporary file when the final rename fails', async () => {
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    const target = path.join(sub, 'occupied.har');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'keep'), 'x');
    await expect(writeHar(target, sampleManifest, sampleFiles())).rejects.toThrow();
    expect(fs.readdirSync(sub)).toEqual(['occupied.har']);
  });
});

describe('HAR reader rejects', () => {
  let good: Buffer;
  /** [start, end) byte ranges of each member's data in `good`, from a tar listing. */
  const ranges = new Map<string, [number, number]>();

  beforeAll(async () => {
    const file = path.join(dir, 'good.har');
    await writeHar(file, sampleManifest, sampleFiles());
    good = fs.readFileSync(file);
    let offset = 0;
    await tar.t({
      file,
      onReadEntry: (e) => {
        ranges.set(e.path, [offset + 512, offset + 512 + e.size]);
        offset += 512 + Math.ceil(e.size / 512) * 512;
      },
    });
  });

  /** Writes `bytes` to `<dir>/<name>` and returns that path. */
  const variant = fileWriter(dir);

  it('a file whose tar magic is overwritten', async () => {
    const bytes = Buffer.from(good);
    bytes.write('XXXXX', 257, 'latin1');
    await expectFormatError(variant('magic.har', bytes), /not a tar archive \(bad magic/);
  });

  it('random bytes, an empty file and a HEF passed as a HAR', async () => {
    await expectFormatError(variant('random.har', randomBytes(4096, 9)), /not a tar archive/);
    await expectFormatError(variant('empty.har', new Uint8Array(0)), /not a tar archive/);
    const hef = path.join(dir, 'model.hef');
    writeHef(hef, { modelName: 'tiny' }, [{ name: 'weights', kind: 'weights', data: randomBytes(2000, 3) }]);
    await expectFormatError(hef, /not a tar archive \(bad magic/);
  });

  it('an unsupported formatVersion, naming the supported one', async () => {
    const file = path.join(dir, 'v99.har');
    await handTar(file, manifestMembers({ format: HAR_FORMAT, formatVersion: 99, files: {} }));
    await expectFormatError(file, /unsupported HAR format version 99 \(this edgellm reads version 1\)/);
  });

  it('a tar that is not an edgellm HAR', async () => {
    const foreign = path.join(dir, 'foreign.har');
    await handTar(foreign, manifestMembers({ format: 'something-else', formatVersion: 1, files: {} }));
    await expectFormatError(foreign, /not an edgellm HAR/);
    const plain = path.join(dir, 'plain.har');
    await handTar(plain, [['readme.txt', 'hello']]);
    await expectFormatError(plain, /no manifest\.json member/);
  });

  it('a manifest that is not JSON', async () => {
    const file = path.join(dir, 'notjson.har');
    await handTar(file, [['manifest.json', '{"format": "edgellm-har",'], ['manifest.sha256', sha256Hex(utf8('{"format": "edgellm-har",'))]]);
    await expectFormatError(file, /manifest\.json is not valid JSON/);
  });

  it('a missing manifest.sha256', async () => {
    const file = path.join(dir, 'nosha.har');
    await handTar(file, [['manifest.json', JSON.stringify({ format: HAR_FORMAT, formatVersion: 1, files: {} })]]);
    await expectFormatError(file, /missing member manifest\.sha256/);
  });

  it('a listed member that is missing and a member that is not listed', async () => {
    const data = randomBytes(100, 4);
    const listing = { files: { 'weights.safetensors': { bytes: 100, sha256: sha256Hex(data) } } };
    const missing = path.join(dir, 'missing.har');
    await handTar(missing, manifestMembers({ format: HAR_FORMAT, formatVersion: 1, ...listing }));
    await expectFormatError(missing, /member weights\.safetensors listed in the manifest is missing/);
    const extra = path.join(dir, 'extra.har');
    await handTar(extra, [['weights.safetensors', data], ['stowaway.bin', 'x'], ...manifestMembers({ format: HAR_FORMAT, formatVersion: 1, ...listing })]);
    await expectFormatError(extra, /member stowaway\.bin is not listed in the manifest/);
  });

  it('a member whose content does not match its sha256', async () => {
    const [start] = ranges.get('weights.safetensors')!;
    const bytes = Buffer.from(good);
    bytes[start + 700] ^= 0x01;
    await expectFormatError(variant('member.har', bytes), /member weights\.safetensors is corrupt: sha256 mismatch/);
  });

  it('one flipped byte at every position in the file (member data, headers, padding, manifest, end marker)', async () => {
    // Named regions first, so a failure says what was hit.
    const must: Array<[string, number, RegExp]> = [];
    for (const [name, [start, end]] of ranges) {
      if (end > start) must.push([`${name} data`, start + ((end - start) >> 1), name === 'manifest.sha256' ? /manifest\.json is corrupt/ : /corrupt/]);
      must.push([`${name} header`, start - 512 + 10, /corrupt tar header|unexpected tar layout/]);
      if (end % 512 !== 0) must.push([`${name} padding`, end, /non-zero tar padding/]);
    }
    must.push(['header checksum field', 148 + 6, /checksum/]);
    must.push(['end-of-archive marker', good.length - 10, /end-of-archive|corrupt tar header/]);
    for (const [what, pos, pattern] of must) {
      const bytes = Buffer.from(good);
      bytes[pos] ^= 0x01;
      const error = await expectFormatError(variant('flip.har', bytes));
      expect(error.message, `${what} (byte ${pos})`).toMatch(pattern);
    }
    // Then every byte; the checksum fields (which tar's checksum does not cover) with more masks, to
    // turn digits, the space and the NUL terminator into each other and into non-octal characters.
    const flips: Array<[number, number]> = [];
    for (let pos = 0; pos < good.length; pos++) flips.push([pos, 0x01]);
    for (const [start] of ranges.values()) {
      for (let pos = start - 512 + 148; pos < start - 512 + 156; pos++) for (const mask of [0x10, 0x20, 0x30, 0xff]) flips.push([pos, mask]);
    }
    const missed: string[] = [];
    for (const [pos, mask] of flips) {
      const bytes = Buffer.from(good);
      bytes[pos] ^= mask;
      const file = variant('flip.har', bytes);
      const error = await readHar(file).then(() => undefined, (e: unknown) => e);
      if (!(error instanceof FormatError) || !error.message.includes(file)) missed.push(`byte ${pos} ^ 0x${mask.toString(16)}: ${String(error)}`);
    }
    expect(missed).toEqual([]);
  });

  it('a truncated archive, at many lengths', async () => {
    const [wStart, wEnd] = ranges.get('weights.safetensors')!;
    const lengths = [1, 100, 300, 511, 512, 1000, wStart, wStart + 200, wEnd, good.length - 1024, good.length - 512, good.length - 1];
    for (const n of lengths) {
      await expectFormatError(variant(`cut-${n}.har`, good.subarray(0, n)));
    }
    await expectFormatError(variant('cut-mid.har', good.subarray(0, wStart + 200)), /truncated/);
    await expectFormatError(variant('cut-eof.har', good.subarray(0, good.length - 512)), /end-of-archive marker is missing/);
  });

  it('also in readHarManifest (structure and manifest, without hashing members)', async () => {
    const bytes = Buffer.from(good);
    bytes[ranges.get('manifest.json')![0] + 5] ^= 0x01;
    const file = variant('manifest-flip.har', bytes);
    await expect(readHarManifest(file)).rejects.toThrow(FormatError);
    await expect(readHarManifest(file)).rejects.toThrow(/manifest\.json is corrupt: sha256 mismatch/);
    await expect(readHarManifest(variant('cut-m.har', good.subarray(0, good.length - 600)))).rejects.toThrow(FormatError);
  });
});
