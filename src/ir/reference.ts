/**
 * A plain TypeScript reference forward pass of a decoder-only LLM (HF LlamaForCausalLM,
 * Qwen2ForCausalLM, MistralForCausalLM in fp32): the independent check for the ONNX lowering and
 * for every pass that claims to leave the logits unchanged.
 *
 * Written to be read, not to be fast: one sequence, no KV cache, the whole prompt recomputed per
 * call. Dot products accumulate in JS numbers (float64) and activations are kept in Float64Array;
 * only the returned logits are rounded to float32.
 *
 * Per layer (x: the residual stream, [T, hidden]):
 *   h = x + o_proj(attn(rmsnorm(x)·γ_in))
 *   x = h + down_proj(silu(gate_proj(n)) · up_proj(n)),   n = rmsnorm(h)·γ_post
 * with rmsnorm(x) = x / sqrt(mean(x²) + eps), RoPE in HF's rotate-half layout, GQA and a causal
 * softmax scaled by 1/sqrt(head_dim). Then the final `model.norm` and lm_head (`lm_head.weight`,
 * or the embedding when tied). QuaRot's online rotations (model.online) are applied where the
 * lowering applies them: R3 on q and k after RoPE, R4 on the down_proj input.
 *
 * Weight-quantized linears (model.quant.linears, 4 or 8 bits) are dequantized,
 * w = (q − 2^(bits−1))·scale, which emulates "weights only" quantization; a tied model with a
 * quantized lm_head also looks its tokens up in the dequantized lm_head table (the compiled graphs
 * share that one copy).
 *
 * Activation and KV-cache quantization: ignored by default (`quantization: 'weights'`). With
 * `quantization: 'static'` every static activation point (A8 or A16, float points skipped) and the
 * KV cache (KV8 or KV16 per layer) are applied as the compiled graphs apply them (src/ir/reference-quant.ts):
 * the float64 value entering a QDQ point is rounded to float32 and quantized with the ONNX
 * QuantizeLinear definition of src/ir/quant.ts at the point's width, and
 * the graphs' float32 constants are used (RoPE tables, eps, 1/sqrt(head_dim), K offsets). Between
 * QDQ points the arithmetic stays float64: the values entering a QDQ point differ from ORT's float32
 * ones by about one float32 ulp, so a value that close to a rounding boundary x/s = k + ½ can get
 * the neighbouring code (a "flip"; test/ir/reference-static.test.ts measures how often and what it
 * does to the logits).
 */
import { EdgeLLMError, ShapeMismatchError, UsageError } from '../core/errors.js';
import { layerLinears, layerNorms, lmHead, sharesQuantizedEmbedding, type LinearSpec } from './architectures.js';
import type { LinearQuant, Model, ModelConfig, OnlineRotation } from './model.js';
import { toFloat32, type Tensor } from './tensor.js';
import { linearCodec } from './codecs.js';
import { blobBytes } from './quant.js';
import { StaticQdq, type QdqRecord, type ReferenceQuantization } from './reference-quant.js';

export type { QdqRecord, ReferenceQuantization } from './reference-quant.js';

export interface ReferenceOptions {
  /** 'weights' (default): dequantized W4/W8 only; 'static': also the static A8/A16 points and the KV8/KV16 cache ({@link ReferenceQuantization}) */
  quantization?: ReferenceQuantization;
  /**
   * 'static' only: called at every QDQ point, in execution order, with the float32 values entering
   * it and their codes, before they are dequantized (codes it overwrites are the ones used)
   */
  onQdq?: (r: QdqRecord) => void;
}

/**
 * Reference logits of one sequence starting at position 0 (no KV cache).
 * @param model any Model whose weights are fp (F32/F16/BF16) or 4/8-bit weight-quantized; with
 *   `quantization: 'static'` its activation ranges (model.quant.activations, 8 or 16 bits; points
 *   the precision table makes float have none), KV ranges (model.quant.kvCache: 8 or 16 bits per
 *   layer, null for a float layer) and K-cache offsets (model.quant.kCacheOffset) are applied too
 * @param tokens token ids, each in [0, vocabSize)
 * @param opts see {@link ReferenceOptions}; default: weights only
 * @returns logits, Float32Array [tokens.length, vocabSize] row-major
 * @throws UsageError for an empty sequence, an out-of-range token id or an unknown quantization
 *   mode; ShapeMismatchError when a weight's shape (or a K offset's length) disagrees with the
 *   config; EdgeLLMError when a weight the config needs is missing, or (UnsupportedModelError) an
 *   activation range is missing or of another width than model.precision gives its point
 */
export function referenceForward(model: Model, tokens: number[], opts: ReferenceOptions = {}): Float32Array {
  return Float32Array.from(forward64(model, tokens, new WeightCache(model), staticQdq(model, opts)));
}

/**
 * Perplexity as the GPTQ paper computes it for one set of windows: each window is evaluated on its
 * own (starting at position 0), and every next-token prediction inside a window counts, i.e. a
 * window of T tokens gives T − 1 negative log-likelihoods.
 * @param windows token-id windows (e.g. from `slidingWindows`)
 * @param opts as {@link referenceForward}
 * @returns meanNll: mean NLL in nats; ppl = exp(meanNll); count: number of predictions averaged
 * @throws UsageError when the windows hold no prediction at all (every window shorter than 2);
 *   otherwise as {@link referenceForward}
 */
export function referencePerplexity(model: Model, windows: number[][], opts: ReferenceOptions = {}): { meanNll: number; ppl: number; count: number } {
  const V = model.config.vocabSize;
  const weights = new WeightCache(model); // weights are read once for all windows
  const qdq = staticQdq(model, opts);
  let sum = 0;
  let count = 0;
  for (const w of windows) {
    if (w.length < 2) continue;
    const logits = forward64(model, w, weights, qdq); // [T, V]
    for (let t = 0; t + 1 < w.length; t++) {
      const row = logits.subarray(t * V, (t + 1) * V);
      sum += logSumExp(row) - row[w[t + 1]];
      count++;
    }
  }
  if (count === 0) throw new UsageError('referencePerplexity: no window has 2 or more tokens, so there is nothing to predict');
  const meanNll = sum / count;
  return { meanNll, ppl: Math.exp(meanNll), count };
}

/** The static QDQ points of `opts.quantization: 'static'`, or null ('weights'). @throws UsageError for another mode */
function staticQdq(model: Model, opts: ReferenceOptions): StaticQdq | null {
  const mode = opts.quantization ?? 'weights';
  if (mode !== 'weights' && mode !== 'static') throw new UsageError(`referenceForward: quantization '${String(mode)}' is not 'weights' or 'static'`);
  return mode === 'static' ? new StaticQdq(model, opts.onQdq) : null;
}

/**
 * The forward pass proper; logits as Float64Array [T, vocabSize]. With `qdq` (the 'static' mode)
 * the static activation and KV points are applied and the graphs' float32 constants used (fl32 = Math.fround).
 */
function forward64(model: Model, tokens: number[], weights: WeightCache, qdq: StaticQdq | null): Float64Array {
  const cfg = model.config;
  const T = tokens.length;
  const H = cfg.hiddenSize;
  const V = cfg.vocabSize;
  if (T === 0) throw new UsageError('referenceForward: the token sequence is empty');
  for (let t = 0; t < T; t++)
    if (!Number.isInteger(tokens[t]) || tokens[t] < 0 || tokens[t] >= V)
      throw new UsageError(`referenceForward: token ${t} is ${tokens[t]}, outside the vocabulary [0, ${V})`);

  if (cfg.numHeads % cfg.numKvHeads !== 0)
    throw new ShapeMismatchError(`referenceForward: ${cfg.numHeads} query heads cannot be grouped over ${cfg.numKvHeads} KV heads`);

  // embedding lookup. embed: [V, H]; x: [T, H]. A tied model whose lm_head is weight-quantized looks
  // its tokens up in that quantized table (one shared copy, as the lowering does)
  const head = lmHead(cfg);
  const embed = sharesQuantizedEmbedding(model) ? weights.dequantized(head, model.quant.linears[head.name]) : weights.get('model.embed_tokens.weight', [V, H]);
  const x = new Float64Array(T * H);
  for (let t = 0; t < T; t++) for (let i = 0; i < H; i++) x[t * H + i] = embed[tokens[t] * H + i];

  const c32 = qdq ? Math.fround : (v: number) => v; // the graphs' float32 constants, in 'static' mode
  const eps = c32(cfg.rmsNormEps);
  const rope = ropeTables(cfg, T, c32);
  for (let l = 0; l < cfg.numLayers; l++) {
    const lin = Object.fromEntries(layerLinears(cfg, l).map((s) => [s.role, s])) as Record<LinearSpec['role'], LinearSpec>;
    const norms = layerNorms(l);

    // attention block
    const a = rmsNorm(x, weights.get(norms.input, [H]), T, eps); // a: [T, H]
    qdq?.activation(a, l, 'attn_in');
    const q = linear(weights, lin.q_proj, a, T); // q: [T, numHeads*headDim]
    const k = linear(weights, lin.k_proj, a, T); // k: [T, numKvHeads*headDim]
    const v = linear(weights, lin.v_proj, a, T); // v: [T, numKvHeads*headDim]
    applyRope(q, T, cfg.numHeads, cfg.headDim, rope);
    applyRope(k, T, cfg.numKvHeads, cfg.headDim, rope);
    if (model.online?.r3) {
      // online R3 (QuaRot): q and k rotated per head after RoPE; q·kᵀ is unchanged
      applyOnlineRotation(q, model.online.r3, weights);
      applyOnlineRotation(k, model.online.r3, weights);
    }
    if (qdq) {
      // the cache holds the KV8/KV16 codes of K − c (K after RoPE and R3) and of V; attention reads them dequantized
      qdq.center(k, l);
      qdq.cache(k, l, 'k');
      qdq.cache(v, l, 'v');
    }
    const attn = causalAttention(q, k, v, T, cfg, c32(1 / Math.sqrt(cfg.headDim))); // attn: [T, numHeads*headDim]
    qdq?.activation(attn, l, 'o_proj_in');
    const o = linear(weights, lin.o_proj, attn, T); // o: [T, H]
    for (let i = 0; i < T * H; i++) x[i] += o[i];

    // MLP block
    const n = rmsNorm(x, weights.get(norms.postAttention, [H]), T, eps); // n: [T, H]
    qdq?.activation(n, l, 'mlp_in');
    const gate = linear(weights, lin.gate_proj, n, T); // gate: [T, intermediate]
    const up = linear(weights, lin.up_proj, n, T); // up: [T, intermediate]
    for (let i = 0; i < gate.length; i++) gate[i] = silu(gate[i]) * up[i];
    if (model.online?.r4) applyOnlineRotation(gate, model.online.r4, weights); // online R4 on the down_proj input
    qdq?.activation(gate, l, 'down_proj_in');
    const down = linear(weights, lin.down_proj, gate, T); // down: [T, H]
    for (let i = 0; i < T * H; i++) x[i] += down[i];
  }

  const final = rmsNorm(x, weights.get('model.norm.weight', [H]), T, eps); // final: [T, H]
  qdq?.activation(final, -1, 'lm_head_in');
  const untied = model.weights.has(`${head.name}.weight`) || model.quant.linears[head.name] !== undefined;
  if (untied) return linear(weights, head, final, T); // logits: [T, V]
  return matmulT(final, embed, T, H, V, null); // tied: logits = final · embedᵀ, [T, V]
}

/** Reads each weight once per referenceForward/referencePerplexity call and keeps it as float32. */
class WeightCache {
  private readonly cache = new Map<string, Float32Array>();
  constructor(readonly model: Model) {}

  /**
   * The weight `name` as a flat Float32Array, checked against `shape` when given.
   * @throws EdgeLLMError when missing; ShapeMismatchError when the shape differs
   */
  get(name: string, shape?: number[]): Float32Array {
    let data = this.cache.get(name);
    if (!data) {
      data = toFloat32(this.raw(name, shape));
      this.cache.set(name, data);
    }
    return data;
  }

  /**
   * The tensor `name` as stored (codes keep their integer dtype), checked against `shape` when given.
   * @throws EdgeLLMError when missing; ShapeMismatchError when the shape differs
   */
  raw(name: string, shape?: number[]): Tensor {
    const lazy = this.model.weights.get(name);
    if (!lazy) throw new EdgeLLMError(`referenceForward: the model has no tensor '${name}'`);
    if (shape && (lazy.shape.length !== shape.length || lazy.shape.some((d, i) => d !== shape[i])))
      throw new ShapeMismatchError(`referenceForward: tensor '${name}' has shape [${lazy.shape}], the config implies [${shape}]`);
    return lazy.load();
  }

  /** The dequantized weight W: [out, in] of a weight-quantized linear (4 or 8 bits, `q`), computed once per call. */
  dequantized(spec: LinearSpec, q: Pick<LinearQuant, 'bits' | 'groupSize'>): Float32Array {
    const key = `${spec.name}#dequantized`;
    const cached = this.cache.get(key);
    if (cached) return cached;
    const w = dequantizeLinearWeights(spec, q, this);
    this.cache.set(key, w);
    return w;
  }
}

/**
 * W: [out, in] of a b-bit symmetric group-wise linear (b = q.bits, 4 or 8), decoded with its codec
 * (src/ir/codecs.ts linearCodec: w4-groupwise or w8-groupwise, the MatMulNBits layout):
 * qweight U8 [out, n_blocks, groupSize·b/8] (src/ir/quant.ts blobBytes), scales F32 [out, n_blocks],
 * w = (q − 2^(b−1))·scale; columns ≥ in in the last block are padding and dropped.
 * @throws ShapeMismatchError for a group size the packing cannot hold (4 bits: odd) or tensors of
 *   the wrong shape
 */
function dequantizeLinearWeights(spec: LinearSpec, q: Pick<LinearQuant, 'bits' | 'groupSize'>, weights: WeightCache): Float32Array {
  const { bits, groupSize } = q;
  if (!Number.isInteger(groupSize) || groupSize < 1 || (bits === 4 && groupSize % 2 !== 0))
    throw new ShapeMismatchError(`referenceForward: ${spec.name} has group size ${groupSize}; ${bits}-bit packing needs a positive${bits === 4 ? ', even' : ''} integer group size`);
  const nBlocks = Math.ceil(spec.inFeatures / groupSize);
  const codes = weights.raw(`${spec.name}.qweight`, [spec.outFeatures, nBlocks, blobBytes(groupSize, bits)]).data as Uint8Array;
  const scales = weights.get(`${spec.name}.scales`, [spec.outFeatures, nBlocks]);
  return linearCodec(bits).decode({ codes, scales }, spec.outFeatures, spec.inFeatures, groupSize);
}

/** y = x·Wᵀ (+ b) for one linear. x: [T, in] -> y: [T, out]. */
function linear(weights: WeightCache, spec: LinearSpec, x: Float64Array, T: number): Float64Array {
  const { inFeatures: inF, outFeatures: out } = spec;
  if (x.length !== T * inF)
    throw new ShapeMismatchError(`referenceForward: ${spec.name} reads ${inF} features, its input has ${x.length / T}`);
  const q = weights.model.quant.linears[spec.name];
  const W = q ? weights.dequantized(spec, q) : weights.get(`${spec.name}.weight`, [out, inF]); // W: [out, in]
  const b = spec.hasBias ? weights.get(`${spec.name}.bias`, [out]) : null; // b: [out]
  return matmulT(x, W, T, inF, out, b);
}

/** y[t, o] = Σ_i x[t, i]·W[o, i] + b[o], accumulated in float64. x: [T, K], W: [N, K] -> y: [T, N]. */
function matmulT(x: Float64Array, W: Float32Array, T: number, K: number, N: number, b: Float32Array | null): Float64Array {
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++)
    for (let o = 0; o < N; o++) {
      let acc = b ? b[o] : 0;
      for (let i = 0; i < K; i++) acc += x[t * K + i] * W[o * K + i];
      y[t * N + o] = acc;
    }
  return y;
}

/**
 * Online rotation (src/ir/model.ts OnlineRotation), in place on every consecutive segment of
 * length n = K·P of x: x ← x·(Q ⊗ H_P/√P), written as plain double sums,
 *   y[c·P + d] = Σ_a Q[a, c] · Σ_b x[a·P + b] · (−1)^popcount(b & d) / √P.
 */
function applyOnlineRotation(x: Float64Array, rot: OnlineRotation, weights: WeightCache): void {
  const { size: n, k: K } = rot;
  const P = n / K;
  if (!Number.isInteger(P) || (P & (P - 1)) !== 0 || x.length % n !== 0)
    throw new ShapeMismatchError(`referenceForward: online rotation of size ${n} = ${K}·${P} (P must be a power of two) on a tensor of ${x.length} elements`);
  const Q = rot.factor ? weights.get(rot.factor, [K, K]) : Float32Array.of(1); // Q: [K, K]
  const sign = (b: number, d: number): number => {
    let parity = 0;
    for (let v = b & d; v; v &= v - 1) parity ^= 1;
    return parity ? -1 : 1;
  };
  const mid = new Float64Array(n);
  for (let off = 0; off < x.length; off += n) {
    mid.fill(0);
    for (let a = 0; a < K; a++)
      for (let d = 0; d < P; d++) {
        let acc = 0;
        for (let b = 0; b < P; b++) acc += x[off + a * P + b] * sign(b, d);
        mid[a * P + d] = acc / Math.sqrt(P);
      }
    for (let c = 0; c < K; c++)
      for (let d = 0; d < P; d++) {
        let acc = 0;
        for (let a = 0; a < K; a++) acc += Q[a * K + c] * mid[a * P + d];
        x[off + c * P + d] = acc;
      }
  }
}

/** rmsnorm(x)·γ per row: x / sqrt(mean(x²) + eps) · γ. x: [T, H] -> [T, H]. */
function rmsNorm(x: Float64Array, gamma: Float32Array, T: number, eps: number): Float64Array {
  const H = gamma.length;
  const y = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    let ss = 0;
    for (let i = 0; i < H; i++) ss += x[t * H + i] * x[t * H + i];
    const inv = 1 / Math.sqrt(ss / H + eps);
    for (let i = 0; i < H; i++) y[t * H + i] = x[t * H + i] * inv * gamma[i];
  }
  return y;
}

function silu(z: number): number {
  return z / (1 + Math.exp(-z));
}

/**
 * cos/sin of position·inv_freq[j], inv_freq[j] = θ^(−2j/head_dim), j < head_dim/2. Each [T, head_dim/2];
 * every entry passed through `round` (identity, or Math.fround for the graphs' float32 tables).
 */
function ropeTables(cfg: ModelConfig, T: number, round: (v: number) => number): { cos: Float64Array; sin: Float64Array; half: number } {
  const half = cfg.headDim / 2;
  if (!Number.isInteger(half)) throw new ShapeMismatchError(`referenceForward: RoPE needs an even head_dim, got ${cfg.headDim}`);
  const cos = new Float64Array(T * half);
  const sin = new Float64Array(T * half);
  for (let j = 0; j < half; j++) {
    const invFreq = Math.pow(cfg.ropeTheta, (-2 * j) / cfg.headDim);
    for (let p = 0; p < T; p++) {
      cos[p * half + j] = round(Math.cos(p * invFreq));
      sin[p * half + j] = round(Math.sin(p * invFreq));
    }
  }
  return { cos, sin, half };
}

/**
 * RoPE in HF's rotate-half layout, in place: within each head the pairs are (j, j + head_dim/2),
 * out_j = x_j·cos − x_{j+half}·sin and out_{j+half} = x_{j+half}·cos + x_j·sin.
 * x: [T, nHeads*headDim].
 */
function applyRope(x: Float64Array, T: number, nHeads: number, headDim: number, rope: { cos: Float64Array; sin: Float64Array; half: number }): void {
  const { cos, sin, half } = rope;
  for (let p = 0; p < T; p++)
    for (let h = 0; h < nHeads; h++) {
      const base = p * nHeads * headDim + h * headDim;
      for (let j = 0; j < half; j++) {
        const c = cos[p * half + j];
        const s = sin[p * half + j];
        const x1 = x[base + j];
        const x2 = x[base + j + half];
        x[base + j] = x1 * c - x2 * s;
        x[base + j + half] = x2 * c + x1 * s;
      }
    }
}

/**
 * Causal scaled-dot-product attention with grouped KV heads: query head h reads KV head
 * floor(h / (numHeads/numKvHeads)); scores are q·k times `scale` (1/sqrt(head_dim)).
 * q: [T, numHeads*headDim], k, v: [T, numKvHeads*headDim] -> [T, numHeads*headDim].
 */
function causalAttention(q: Float64Array, k: Float64Array, v: Float64Array, T: number, cfg: ModelConfig, scale: number): Float64Array {
  const { numHeads, numKvHeads, headDim: D } = cfg;
  const group = numHeads / numKvHeads;
  const out = new Float64Array(T * numHeads * D);
  const scores = new Float64Array(T); // scores: [T] of one (query position, head)
  for (let h = 0; h < numHeads; h++) {
    const g = Math.floor(h / group);
    for (let t = 0; t < T; t++) {
      const qOff = t * numHeads * D + h * D;
      let max = -Infinity;
      for (let s = 0; s <= t; s++) {
        const kOff = s * numKvHeads * D + g * D;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[qOff + d] * k[kOff + d];
        scores[s] = dot * scale;
        if (scores[s] > max) max = scores[s];
      }
      let denom = 0;
      for (let s = 0; s <= t; s++) {
        scores[s] = Math.exp(scores[s] - max);
        denom += scores[s];
      }
      for (let s = 0; s <= t; s++) {
        const p = scores[s] / denom;
        const vOff = s * numKvHeads * D + g * D;
        for (let d = 0; d < D; d++) out[qOff + d] += p * v[vOff + d];
      }
    }
  }
  return out;
}

/** log Σ exp(row), stable. */
function logSumExp(row: Float64Array): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return max + Math.log(sum);
}
