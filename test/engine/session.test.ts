/**
 * runtime/session: the external-data path ORT needs for graphs of 2 GB or more, forced on the
 * stories260K fp32 graph by a low threshold: same logits as the in-memory session, temp files gone.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import { loadHfModel } from '../../formats/hf.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { kvCacheDims, kvNames } from '../../src/compiler/io-contract.js';
import { CheckedSession } from '../../src/engine/session.js';
import { EdgeLLMError } from '../../src/core/errors.js';
import { STORIES } from '../helpers/paths.js';

describe('CheckedSession external data', () => {
  it('loads a graph through weights.bin + model.onnx with the in-memory logits, and removes them', async () => {
    const model = loadHfModel(STORIES);
    const cfg = model.config;
    const g = lowerModel(model, { seqLen: 'dynamic', maxContext: 16, capture: false, activationQuant: false, kvQuant: false, name: 'fp32' });
    const bytes = g.encode(true);
    const ids = [1, 403, 407, 261, 378, 26];
    const feeds: Record<string, ort.Tensor> = { input_ids: new ort.Tensor('int64', BigInt64Array.from(ids.map(BigInt)), [1, ids.length]) };
    for (let i = 0; i < cfg.numLayers; i++) {
      const n = kvNames(i);
      feeds[n.pastKey] = new ort.Tensor('float32', new Float32Array(0), kvCacheDims(cfg.numKvHeads, cfg.headDim, 0));
      feeds[n.pastValue] = new ort.Tensor('float32', new Float32Array(0), kvCacheDims(cfg.numKvHeads, cfg.headDim, 0));
    }
    const before = new Set(fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith('edgellm-ort-')));
    const inMemory = await CheckedSession.create(bytes, 'in memory');
    const external = await CheckedSession.create(bytes, 'external', { externalDataBytes: 1 });
    // the message form (what large graphs use: no 2 GB encode/decode) leaves the caller's message intact
    const proto = g.toModelProto(true);
    const fromProto = await CheckedSession.create(proto, 'external message', { externalDataBytes: 1 });
    expect(proto.graph!.initializer!.every((t) => (t.rawData?.byteLength ?? 0) > 0 && !t.externalData?.length)).toBe(true);
    const after = fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith('edgellm-ort-') && !before.has(f));
    expect(after).toEqual([]); // the temporary directories are gone once the session exists

    const a = (await inMemory.run(feeds, ['logits'])).logits.data as Float32Array;
    const b = (await external.run(feeds, ['logits'])).logits.data as Float32Array;
    expect(b.length).toBe(ids.length * cfg.vocabSize);
    // the same weights and graph: bit-identical
    const c = (await fromProto.run(feeds, ['logits'])).logits.data as Float32Array;
    const buf = (x: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength);
    expect(buf(b).equals(buf(a))).toBe(true);
    expect(buf(c).equals(buf(a))).toBe(true);
    await fromProto.release();
    await inMemory.release();
    await external.release();
    // a broken graph is still one clear error through the external path
    const cut = CheckedSession.create(bytes.subarray(0, 100), 'cut graph', { externalDataBytes: 1 });
    await expect(cut).rejects.toThrow(EdgeLLMError);
    await expect(cut).rejects.toThrow(/cut graph/);
  });
});
