import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadHfModel } from '../../formats/hf.js';
import { makeCheckpoint } from '../../fixtures/make-fixture.js';
import { foldNorms } from '../../passes/fold-norms.js';
import { rtn } from '../../passes/rtn.js';
import { referenceForward } from '../../src/ir/reference.js';
import { layerLinears, layerNorms } from '../../src/ir/architectures.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import { PassOrderError } from '../../src/core/errors.js';
import { silentContext } from '../../src/core/context.js';
import type { Model } from '../../src/ir/model.js';
import { ROOT, STORIES } from '../helpers/paths.js';
import { relMaxDiff } from '../helpers/numeric.js';
import { makeTempDir, removeDir } from '../helpers/tmp.js';

/** Every tensor of `m` loaded and copied (to detect later mutation). */
function snapshot(m: Model): Map<string, number[]> {
  return new Map([...m.weights].map(([n, t]) => [n, Array.from(toFloat32(t.load()))]));
}

let tmp: string;
let qwen: Model;
let stories: Model;
beforeAll(() => {
  tmp = makeTempDir('edgellm-fold-');
  const cfg = JSON.parse(fs.readFileSync(path.join(ROOT, 'fixtures/tiny-qwen2/config.json'), 'utf8'));
  makeCheckpoint({ ...cfg, tie_word_embeddings: true }, tmp);
  qwen = loadHfModel(tmp);
  stories = loadHfModel(STORIES);
});
afterAll(() => removeDir(tmp));

describe('foldNorms', () => {
  // Folding changes only where float32 rounding happens (W·γ rounded once to float32): the
  // float64-accumulating reference then differs by ~1e-7 relative; bound 1e-5 relative.
  it.each([
    ['stories260K', () => stories, [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395]],
    ['tiny Qwen2 fixture (q/k/v biases, GQA, tied)', () => qwen, [1, 17, 250, 3, 99, 42, 7, 7, 180, 2, 64]],
  ] as const)('leaves fp32 logits unchanged on %s (1e-5 relative)', (_, get, ids) => {
    const m = get();
    const f = foldNorms(m, {}, silentContext);
    expect(relMaxDiff(referenceForward(f, [...ids]), referenceForward(m, [...ids]))).toBeLessThan(1e-5);
  });

  it('sets every γ to 1, unties lm_head and folds γ into q/k/v, gate/up and lm_head', () => {
    const m = qwen;
    const f = foldNorms(m, {}, silentContext);
    expect(m.config.tieWordEmbeddings).toBe(true);
    expect(f.config.tieWordEmbeddings).toBe(false);
    expect(m.weights.has('lm_head.weight')).toBe(false);
    const load = (x: Model, n: string) => toFloat32(x.weights.get(n)!.load());
    const H = m.config.hiddenSize;
    for (let l = 0; l < m.config.numLayers; l++) {
      const norms = layerNorms(l);
      for (const n of [norms.input, norms.postAttention]) expect(Array.from(load(f, n))).toEqual(new Array(H).fill(1));
      const gIn = load(m, norms.input);
      const q = layerLinears(m.config, l)[0];
      const w0 = load(m, `${q.name}.weight`);
      const w1 = load(f, `${q.name}.weight`);
      for (const [o, i] of [[0, 0], [3, 5], [q.outFeatures - 1, H - 1]]) expect(w1[o * H + i]).toBe(Math.fround(w0[o * H + i] * gIn[i]));
      // the biases are untouched
      expect(m.weights.has(`${q.name}.bias`)).toBe(true);
      expect(f.weights.get(`${q.name}.bias`)).toBe(m.weights.get(`${q.name}.bias`));
    }
    const gFinal = load(m, 'model.norm.weight');
    const E = load(m, 'model.embed_tokens.weight');
    const head = load(f, 'lm_head.weight');
    expect(head[5 * H + 7]).toBe(Math.fround(E[5 * H + 7] * gFinal[7]));
    // the embedding table itself is unchanged (the same lazy tensor)
    expect(f.weights.get('model.embed_tokens.weight')).toBe(m.weights.get('model.embed_tokens.weight'));
    expect(f.passes.map((p) => p.name)).toEqual(['fold-norms']);
  });

  it('does not mutate its input', () => {
    const m = qwen;
    const before = snapshot(m);
    const keys = [...m.weights.keys()];
    const config = JSON.stringify(m.config);
    const f = foldNorms(m, {}, silentContext);
    snapshot(f); // force every derived tensor
    expect([...m.weights.keys()]).toEqual(keys);
    expect(JSON.stringify(m.config)).toBe(config);
    expect(m.passes).toEqual([]);
    expect(snapshot(m)).toEqual(before);
  });

  it('refuses quantized models and a second run with PassOrderError', () => {
    expect(() => foldNorms(rtn(stories, { groupSize: 64, quantizeLmHead: false }, silentContext), {}, silentContext)).toThrow(PassOrderError);
    expect(() => foldNorms(foldNorms(stories, {}, silentContext), {}, silentContext)).toThrow(PassOrderError);
  });
});
