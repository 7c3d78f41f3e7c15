import * as fs from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { slidingWindows } from '../../calibration/windows.js';
import { mulberry32 } from '../../src/core/rng.js';
import { loadHfModel } from '../../formats/hf.js';
import { TextTokenizer } from '../../formats/tokenizer.js';
import { UsageError } from '../../src/core/errors.js';
import { layerLinears } from '../../src/ir/architectures.js';
import { emptyQuantState, inMemory, type LazyTensor, type Model, type ModelConfig } from '../../src/ir/model.js';
import { referenceForward, referencePerplexity } from '../../src/ir/reference.js';
import { bf16ToFloat, f32, floatToBf16, floatToHalf, halfToFloat, type Tensor } from '../../src/ir/tensor.js';
import { STORIES, TINYSTORIES } from '../helpers/paths.js';
import { maxAbsDiff } from '../helpers/numeric.js';

/**
 * Greedy ids from BOS, 60 steps, as referenceForward produced them; they decode to "Once upon a time,
 * there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big,
 * red ball. She wanted to play with it, but it was too high" and re-encode to themselves.
 */
const GREEDY_IDS = [
  1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411,
  322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312,
  432, 398, 312, 286, 267, 414, 270, 333, 415,
];

// ---------------------------------------------------------------------------------------------
// A tiny random model: GQA (4 query heads, 2 KV heads), q/k/v biases as in Qwen2.

const TINY: ModelConfig = {
  family: 'qwen2',
  modelType: 'qwen2',
  hiddenSize: 16,
  intermediateSize: 24,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 4,
  vocabSize: 32,
  maxPositionEmbeddings: 64,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  hiddenAct: 'silu',
  tieWordEmbeddings: true,
  qkvBias: true,
  oBias: false,
  mlpBias: false,
  bosTokenId: null,
  eosTokenIds: [],
};

function randomTensor(shape: number[], rng: () => number, scale: number, offset = 0): Tensor & { data: Float32Array } {
  const t = f32(shape);
  for (let i = 0; i < t.data.length; i++) t.data[i] = offset + (rng() * 2 - 1) * scale;
  return t;
}

/** Random weights for `cfg` (seeded), tied embeddings. */
function tinyModel(cfg: ModelConfig, seed = 1): Model {
  const rng = mulberry32(seed);
  const w = new Map<string, LazyTensor>();
  const put = (name: string, t: Tensor): void => void w.set(name, inMemory(t));
  const H = cfg.hiddenSize;
  put('model.embed_tokens.weight', randomTensor([cfg.vocabSize, H], rng, 1));
  for (let i = 0; i < cfg.numLayers; i++) {
    put(`model.layers.${i}.input_layernorm.weight`, randomTensor([H], rng, 0.2, 1));
    put(`model.layers.${i}.post_attention_layernorm.weight`, randomTensor([H], rng, 0.2, 1));
    for (const s of layerLinears(cfg, i)) {
      put(`${s.name}.weight`, randomTensor([s.outFeatures, s.inFeatures], rng, 1 / Math.sqrt(s.inFeatures)));
      if (s.hasBias) put(`${s.name}.bias`, randomTensor([s.outFeatures], rng, 0.5));
    }
  }
  put('model.norm.weight', randomTensor([H], rng, 0.2, 1));
  return { config: { ...cfg }, weights: w, quant: emptyQuantState(), passes: [], tokenizer: { tokenizerJson: '{}', tokenizerConfigJson: null, generationConfigJson: null } };
}

describe('referenceForward on a tiny random model', () => {
  const model = tinyModel(TINY);
  const V = TINY.vocabSize;

  it('returns finite logits [T, vocab]', () => {
    const logits = referenceForward(model, [3, 1, 4, 1, 5]);
    expect(logits.length).toBe(5 * V);
    expect(logits.every(Number.isFinite)).toBe(true);
  });

  it('is causal: logits at position t do not depend on later tokens', () => {
    const a = referenceForward(model, [3, 1, 4, 1, 5, 9, 2, 6]);
    const b = referenceForward(model, [3, 1, 4, 1, 7, 0, 30, 8]);
    // positions 0..3 share their prefix: identical to the last bit
    expect(maxAbsDiff(a.subarray(0, 4 * V), b.subarray(0, 4 * V))).toBe(0);
    // position 4 differs in its own token
    expect(maxAbsDiff(a.subarray(4 * V, 5 * V), b.subarray(4 * V, 5 * V))).toBeGreaterThan(1e-3);
    // a prefix run gives the same logits as the longer run
    expect(maxAbsDiff(referenceForward(model, [3, 1, 4]), a.subarray(0, 3 * V))).toBe(0);
  });

  it('gives equal logits for a tied lm_head and an untied one holding the embedding', () => {
    const untied: Model = { ...model, config: { ...model.config, tieWordEmbeddings: false }, weights: new Map(model.weights) };
    untied.weights.set('lm_head.weight', inMemory(model.weights.get('model.embed_tokens.weight')!.load()));
    const tokens = [7, 0, 31, 2, 2, 9];
    expect(maxAbsDiff(referenceForward(model, tokens), referenceForward(untied, tokens))).toBe(0);
    // and a different lm_head changes them
    untied.weights.set('lm_head.weight', inMemory(randomTensor([V, TINY.hiddenSize], mulberry32(5), 1)));
    expect(maxAbsDiff(referenceForward(model, tokens), referenceForward(untied, tokens))).toBeGreaterThan(1e-3);
  });

  it('maps query head h to KV head floor(h / group): GQA equals MHA with repeated K/V heads', () => {
    // Expand k_proj/v_proj (and their biases) from 2 KV heads to 4 by repeating each head's rows.
    const mha: Model = { ...model, config: { ...model.config, numKvHeads: TINY.numHeads }, weights: new Map(model.weights) };
    const D = TINY.headDim;
    const group = TINY.numHeads / TINY.numKvHeads;
    for (let l = 0; l < TINY.numLayers; l++)
      for (const proj of ['k_proj', 'v_proj'])
        for (const suffix of ['weight', 'bias']) {
          const name = `model.layers.${l}.self_attn.${proj}.${suffix}`;
          const t = model.weights.get(name)!.load();
          const cols = suffix === 'weight' ? TINY.hiddenSize : 1;
          const out = f32(suffix === 'weight' ? [TINY.numHeads * D, cols] : [TINY.numHeads * D]);
          for (let h = 0; h < TINY.numHeads; h++)
            out.data.set(t.data.subarray(Math.floor(h / group) * D * cols, (Math.floor(h / group) + 1) * D * cols) as Float32Array, h * D * cols);
          mha.weights.set(name, inMemory(out));
        }
    const tokens = [1, 2, 3, 4, 5, 6, 7];
    expect(maxAbsDiff(referenceForward(model, tokens), referenceForward(mha, tokens))).toBeLessThan(1e-6);
  });

  it('dequantizes 4-bit linears as (q − 8)·scale, padding columns dropped', () => {
    // groupSize 16: hidden-input linears have 1 block; down_proj (in 24) has 2 blocks, 8 padding columns.
    const G = 16;
    const rng = mulberry32(11);
    const quant: Model = { ...model, quant: emptyQuantState(), weights: new Map(model.weights) };
    const dense: Model = { ...model, weights: new Map(model.weights) };
    for (let l = 0; l < TINY.numLayers; l++)
      for (const s of layerLinears(TINY, l)) {
        const nBlocks = Math.ceil(s.inFeatures / G);
        const q = new Uint8Array(s.outFeatures * nBlocks * (G / 2));
        for (let i = 0; i < q.length; i++) q[i] = Math.floor(rng() * 256);
        const scales = randomTensor([s.outFeatures, nBlocks], rng, 0.02, 0.05);
        const w = f32([s.outFeatures, s.inFeatures]);
        for (let o = 0; o < s.outFeatures; o++)
          for (let c = 0; c < s.inFeatures; c++) {
            const b = Math.floor(c / G);
            const byte = q[(o * nBlocks + b) * (G / 2) + Math.floor((c % G) / 2)];
            const nibble = c % 2 === 0 ? byte & 15 : byte >> 4;
            w.data[o * s.inFeatures + c] = (nibble - 8) * scales.data[o * nBlocks + b];
          }
        quant.weights.delete(`${s.name}.weight`);
        quant.weights.set(`${s.name}.qweight`, inMemory({ dtype: 'U8', shape: [s.outFeatures, nBlocks, G / 2], data: q }));
        quant.weights.set(`${s.name}.scales`, inMemory(scales));
        quant.quant.linears[s.name] = { bits: 4, groupSize: G, scheme: 'symmetric', method: 'rtn' };
        dense.weights.set(`${s.name}.weight`, inMemory(w));
      }
    const tokens = [4, 8, 15, 16, 23, 31];
    expect(maxAbsDiff(referenceForward(quant, tokens), referenceForward(dense, tokens))).toBe(0);
  });

  it('reads F16 and BF16 weights as their float values', () => {
    const emb = model.weights.get('model.embed_tokens.weight')!.load();
    const codecs = [
      { dtype: 'F16' as const, encode: floatToHalf, decode: halfToFloat },
      { dtype: 'BF16' as const, encode: floatToBf16, decode: bf16ToFloat },
    ];
    for (const { dtype, encode, decode } of codecs) {
      const bits = new Uint16Array(emb.data.length);
      const rounded = f32(emb.shape);
      for (let i = 0; i < bits.length; i++) {
        bits[i] = encode(emb.data[i] as number);
        rounded.data[i] = decode(bits[i]);
      }
      const a: Model = { ...model, weights: new Map(model.weights) };
      const b: Model = { ...model, weights: new Map(model.weights) };
      a.weights.set('model.embed_tokens.weight', inMemory({ dtype, shape: emb.shape, data: bits }));
      b.weights.set('model.embed_tokens.weight', inMemory(rounded));
      expect(maxAbsDiff(referenceForward(a, [1, 2, 3]), referenceForward(b, [1, 2, 3]))).toBe(0);
    }
  });

  it('rejects empty sequences and out-of-vocabulary ids', () => {
    expect(() => referenceForward(model, [])).toThrow(UsageError);
    expect(() => referenceForward(model, [1, 32])).toThrow(/outside the vocabulary/);
    expect(() => referenceForward(model, [1, -1])).toThrow(UsageError);
  });
});

describe('referencePerplexity', () => {
  const model = tinyModel(TINY);

  it('averages the NLL of every next-token prediction of independent windows', () => {
    const windows = [
      [1, 2, 3, 4],
      [5, 6, 7],
    ];
    const V = TINY.vocabSize;
    let sum = 0;
    for (const w of windows) {
      const logits = referenceForward(model, w);
      for (let t = 0; t + 1 < w.length; t++) {
        const row = Array.from(logits.subarray(t * V, (t + 1) * V));
        const lse = Math.log(row.reduce((s, z) => s + Math.exp(z), 0));
        sum += lse - row[w[t + 1]];
      }
    }
    const r = referencePerplexity(model, windows);
    expect(r.count).toBe(5);
    expect(r.meanNll).toBeCloseTo(sum / 5, 5);
    expect(r.ppl).toBeCloseTo(Math.exp(r.meanNll), 10);
  });

  it('throws UsageError when there is nothing to predict', () => {
    expect(() => referencePerplexity(model, [[1], []])).toThrow(UsageError);
  });
});

// ---------------------------------------------------------------------------------------------
// The real stories260K checkpoint.

describe.skipIf(!fs.existsSync(STORIES))('referenceForward on stories260K', () => {
  let model: Model;
  let tok: TextTokenizer;
  let V: number;
  beforeAll(() => {
    model = loadHfModel(STORIES);
    tok = new TextTokenizer(model.tokenizer);
    V = model.config.vocabSize;
  });

  function argmax(row: Float32Array): number {
    let best = 0;
    for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
    return best;
  }

  it('greedy-decodes the story llama2.c publishes for this checkpoint', async () => {
    const ids = [1]; // BOS
    for (let step = 0; step < 60; step++) {
      const logits = referenceForward(model, ids);
      ids.push(argmax(logits.subarray((ids.length - 1) * V, ids.length * V)));
    }
    const text = await tok.decode(ids);
    expect(text.startsWith('Once upon a time, there was a little girl named Lily. She loved to play outside in the park')).toBe(true);
    expect(text).toBe(
      'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high',
    );
    // the ids are the tokenizer's own segmentation of the text: re-encoding (BOS added) gives them back
    expect(await tok.encode(text, true)).toEqual(ids);
    expect(ids).toEqual(GREEDY_IDS);
  });

  it('has perplexity 6.237 on TinyStories-valid.txt (60 windows of 256, tail dropped)', async () => {
    const text = fs.readFileSync(TINYSTORIES, 'utf8');
    const tokens = await tok.encode(text, true);
    expect(tokens[0]).toBe(1); // BOS from the post-processor
    expect(tokens[1]).not.toBe(1);
    const windows = slidingWindows(tokens, 256);
    expect(windows.length).toBe(60);
    const r = referencePerplexity(model, windows);
    expect(r.count).toBe(60 * 255);
    expect(Math.abs(r.ppl - 6.237)).toBeLessThan(0.005);
  });
});
