/**
 * formats/har-model.ts: weight sets split into numbered safetensors shards (needed past 4 GiB, one
 * typed array's limit) read back as the single-member HAR, and a missing shard is named; a
 * manifest or ranges.json of the wrong shape (checksums intact) is a one-line FormatError naming
 * the HAR and the field.
 */
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar, loadModelHar } from '../../formats/har-model.js';
import { readHar, writeHar } from '../../formats/har.js';
import { rtn } from '../../passes/rtn.js';
import { silentContext } from '../../src/core/context.js';
import { FormatError } from '../../src/core/errors.js';
import { STORIES } from '../helpers/paths.js';
import { makeTempDir, removeDir, suiteTempDir } from '../helpers/tmp.js';
import { expectOneLineFormatError, rejectionOf } from '../helpers/errors.js';

const bytes = (a: ArrayBufferView) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('HAR weight shards', () => {
  it('splits weights and emulation weights past shardBytes and reads them back tensor for tensor', async () => {
    const dir = makeTempDir('edgellm-har-shards-');
    const fp = loadHfModel(STORIES);
    const q = rtn(fp, { groupSize: 64, quantizeLmHead: false }, silentContext);
    const info = { modelName: 'stories260K', sourceSha256: '' };
    const one = path.join(dir, 'one.har');
    const many = path.join(dir, 'many.har');
    await saveModelHar(one, q, info, { native: fp });
    await saveModelHar(many, q, info, { native: fp }, { shardBytes: 64 * 1024 }); // stories260K: ~1 MB of fp32

    const members = [...(await readHar(many)).files.keys()];
    const weightShards = members.filter((n) => /^weights-\d{5}-of-\d{5}\.safetensors$/.test(n));
    const nativeShards = members.filter((n) => /^emulation\/native-\d{5}-of-\d{5}\.safetensors$/.test(n));
    expect(weightShards.length).toBeGreaterThan(1);
    expect(nativeShards.length).toBeGreaterThan(1);
    expect(members).not.toContain('weights.safetensors');
    expect(weightShards[0]).toBe(`weights-00001-of-${String(weightShards.length).padStart(5, '0')}.safetensors`);

    const a = await loadModelHar(one);
    const b = await loadModelHar(many);
    for (const [x, y] of [
      [a.model, b.model],
      [a.emulation.native!, b.emulation.native!],
    ]) {
      expect([...y.weights.keys()].sort()).toEqual([...x.weights.keys()].sort());
      for (const [n, lt] of x.weights) {
        const [t, u] = [lt.load(), y.weights.get(n)!.load()];
        expect([u.dtype, u.shape]).toEqual([t.dtype, t.shape]);
        expect(bytes(u.data).equals(bytes(t.data))).toBe(true);
      }
    }

    // lazily: tensors read from the archive on load(), the same bytes (also across shards)
    const lazy = await loadModelHar(many, { lazy: true });
    for (const [x, y] of [
      [a.model, lazy.model],
      [a.emulation.native!, lazy.emulation.native!],
    ])
      for (const [n, lt] of x.weights) {
        const u = y.weights.get(n)!;
        expect([u.dtype, u.shape]).toEqual([lt.dtype, lt.shape]);
        expect(bytes(u.load().data).equals(bytes(lt.load().data))).toBe(true);
      }

    // the quantized model alone: emulation members skipped (not read, not hashed), the rest identical
    const lean = await loadModelHar(many, { emulation: false });
    expect(lean.emulation).toEqual({});
    expect([...lean.model.weights.keys()]).toEqual([...b.model.weights.keys()]);

    // drop shard 2 of the weights (re-listed, so only the shard check can catch it)
    const { manifest, files } = await readHar(many);
    const { format: _f, formatVersion: _v, files: _l, ...rest } = manifest;
    files.delete(weightShards[1]);
    const broken = path.join(dir, 'broken.har');
    await writeHar(broken, rest, files);
    await expect(loadModelHar(broken)).rejects.toThrow(FormatError);
    await expect(loadModelHar(broken)).rejects.toThrow(new RegExp(`shard 2 of ${weightShards.length} of weights is missing`));
    removeDir(dir);
  });
});

describe('HAR manifest and ranges.json shapes', () => {
  const dir = suiteTempDir('edgellm-har-shape-');
  let manifest: Record<string, unknown>;
  let files: Map<string, Uint8Array>;
  beforeAll(async () => {
    const q = rtn(loadHfModel(STORIES), { groupSize: 64, quantizeLmHead: false }, silentContext);
    const file = path.join(dir, 'base.har');
    await saveModelHar(file, q, { modelName: 'stories260K', sourceSha256: '' });
    const c = await readHar(file);
    const { format: _f, formatVersion: _v, files: _l, ...rest } = c.manifest;
    manifest = rest;
    files = c.files;
  });
  let n = 0;
  /** A HAR written by writeHar (valid checksums) with the manifest edited and members replaced. */
  async function variant(edit: (m: Record<string, any>) => void, members: Record<string, string> = {}): Promise<string> {
    const m = structuredClone(manifest);
    edit(m);
    const f = new Map(files);
    for (const [k, v] of Object.entries(members)) f.set(k, new TextEncoder().encode(v));
    const file = path.join(dir, `v${n++}.har`);
    await writeHar(file, m, f);
    return file;
  }

  it.each([
    ['adapters "abc"', (m: any) => void (m.adapters = 'abc'), /manifest field 'adapters' must be a list of \{name, member, \.\.\.\}, got "abc"/],
    ['adapters [null]', (m: any) => void (m.adapters = [null]), /manifest field 'adapters' must be a list/],
    ['an adapter without a member', (m: any) => void (m.adapters = [{ name: 'x' }]), /manifest field 'adapters'/],
    ['passes an object', (m: any) => void (m.passes = { length: 2 }), /manifest field 'passes' must be a list of \{name, options\}/],
    ['a pass without a name', (m: any) => void (m.passes = [{ options: {} }]), /manifest field 'passes'/],
    ['linears a list', (m: any) => void (m.linears = [1]), /manifest field 'linears' must be an object/],
    ['emulation levels that are not objects', (m: any) => void (m.emulation = { native: 3 }), /manifest field 'emulation'/],
    ['modelName an object whose toString is not a function', (m: any) => void (m.modelName = { toString: 1 }), /manifest field 'modelName' must be a string/],
    ['no config', (m: any) => void delete m.config, /manifest field 'config' must be an object/],
    ['config.numLayers -1', (m: any) => void (m.config.numLayers = -1), /manifest field 'config\.numLayers' must be a positive integer, got -1/],
    ['config.headDim "8"', (m: any) => void (m.config.headDim = '8'), /manifest field 'config\.headDim' must be a positive integer, got "8"/],
  ])('refuses %s', async (_name, edit, pattern) => {
    const file = await variant(edit);
    for (const lazy of [false, true]) expectOneLineFormatError(await rejectionOf(loadModelHar(file, { lazy })), file, pattern);
  });

  it.each([
    ['null', 'null', /ranges\.json: must be a JSON object, got null/],
    ['kvCache an object', '{"kvCache": {}}', /ranges\.json: kvCache must be a list/],
    ['activations a list', '{"activations": [1]}', /ranges\.json: activations must be an object/],
    ['kCacheOffset of the wrong length', '{"kCacheOffset": [[1]]}', /ranges\.json: kCacheOffset must hold 5 layers of 32 numbers/],
  ])('refuses ranges.json %s', async (_name, text, pattern) => {
    const file = await variant(() => {}, { 'ranges.json': text });
    expectOneLineFormatError(await rejectionOf(loadModelHar(file)), file, pattern);
  });

  it('names a member whose JSON.parse message quotes a newline, on one line', async () => {
    const file = await variant(() => {}, { 'ranges.json': 'z\n  "kvCache": []' });
    expectOneLineFormatError(await rejectionOf(loadModelHar(file)), file, /member 'ranges\.json' is not valid JSON: .*\\n/);
  });

  it('still reads the unedited manifest', async () => {
    const h = await loadModelHar(await variant(() => {}));
    expect(h.model.config.numLayers).toBe(5);
  });
});
