/**
 * formats/har-model.ts: weight sets split into numbered safetensors shards (needed past 4 GiB, one
 * typed array's limit) read back as the single-member HAR, and a missing shard is named.
 */
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { saveModelHar, loadModelHar } from '../../formats/har-model.js';
import { readHar, writeHar } from '../../formats/har.js';
import { rtn } from '../../passes/rtn.js';
import { silentContext } from '../../src/core/context.js';
import { FormatError } from '../../src/core/errors.js';
import { STORIES } from '../helpers/paths.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

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
