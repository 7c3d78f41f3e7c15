/**
 * QuaRot (Ashkboos et al. 2024, "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs", §4 and
 * Appendix): orthogonal rotations that leave the fp32 function unchanged but spread outliers, so
 * weights, activations and the KV cache quantize better. Rotations here are randomized Hadamard
 * matrices built by passes/hadamard.ts (R = (H_K/√K ⊗ H_P/√P)·diag(s)); all math in Float64.
 *
 * Offline (fused into weights, free at run time), with x the residual stream as a row vector:
 *
 * - R1 [H, H] on the residual stream, x ← x·R1 (needs fold-norms: RMSNorm without γ commutes with R1):
 *     embed ← E·R1;  q/k/v/gate/up/lm_head ← W·R1   (inputs; W: [out, in])
 *     o_proj/down_proj ← R1ᵀ·W,  bias ← R1ᵀ·b       (outputs)
 * - R2 [hd, hd] per layer, per attention head (SpinQuant's R2 form): v = a·W_vᵀ + b_v gets
 *     v_proj rows of each KV head g ← R2ᵀ·W_v[g],  b_v[g] ← b_v[g]·R2   (Qwen2's v bias)
 *     o_proj columns of each query head h ← W_o[:, h]·R2
 *   Every head uses the layer's one R2, so a query head reading any KV head (GQA) sees the same
 *   rotation: softmax(q·kᵀ)·v·R2·(W_o,h·R2)ᵀ = softmax(q·kᵀ)·v·W_o,hᵀ.
 *
 * Online (run-time graph ops, src/compiler/lower-layer.ts; `model.online`):
 *
 * - R4 = H_m (normalised, intermediate size m): down_proj ← W·R4 offline, and the down_proj input
 *   u is multiplied by R4 at run time: (u·R4)·(W·R4)ᵀ = u·Wᵀ.
 * - R3 = H_hd per head on Q and K after RoPE: (q·R3)·(k·R3)ᵀ = q·kᵀ, so no weight changes; the KV
 *   cache then stores (and KV8 quantizes) rotated K.
 *
 * Before → after: `model.layers.0.self_attn.q_proj.weight = W` → `W·R1`.
 *
 * The pass is pure and lazy: rotated tensors are computed from the input's on `load()`. The seed and
 * options are recorded in `model.passes`; {@link rotationOf} rebuilds R1/R2 (e.g. to rotate LoRA
 * adapters the same way).
 */
import type { LazyTensor, Model, ModelConfig, OnlineRotation, OnlineRotations } from '../src/ir/model.js';
import { architectureOf, type LinearSpec } from '../src/ir/architectures.js';
import { toFloat32 } from '../src/ir/tensor.js';
import { PassOrderError, UsageError } from '../src/core/errors.js';
import type { RunContext } from '../src/core/context.js';
import { derived, need, normsFolded } from './fold-norms.js';
import { denseRotation, hadamardRotation, rotateVector, rotationRng, type KronRotation } from './hadamard.js';
import type { Pass } from './pass.js';

export interface QuarotOptions {
  /** seed of the random signs of R1 and R2 (an integer in [0, 2^32)) */
  seed: number;
  /** online rotations emitted as graph ops: R3 on Q/K after RoPE, R4 on the down_proj input */
  online: { r3: boolean; r4: boolean };
}

export const DEFAULT_QUAROT_OPTIONS: QuarotOptions = { seed: 0, online: { r3: false, r4: false } };

export const meta = { name: 'quarot', requires: ['fold-norms'] };

/** The rotations of one QuaRot run, rebuilt deterministically from the config and the seed. */
export interface QuarotRotations {
  /** residual stream, size hidden_size, with random signs */
  r1: KronRotation;
  /** per layer, size head_dim, with random signs */
  r2: KronRotation[];
  /** online, per head on Q/K (size head_dim), no signs; present when enabled */
  r3?: KronRotation;
  /** online, down_proj input (size intermediate_size), no signs; present when enabled */
  r4?: KronRotation;
}

/** Builds the rotations for `cfg` from `opts` (each from its own seeded stream, see rotationRng). */
export function quarotRotations(cfg: ModelConfig, opts: QuarotOptions): QuarotRotations {
  const { seed } = opts;
  return {
    r1: hadamardRotation(cfg.hiddenSize, rotationRng(seed, 'r1'), true),
    r2: Array.from({ length: cfg.numLayers }, (_, l) => hadamardRotation(cfg.headDim, rotationRng(seed, `r2.${l}`), true)),
    r3: opts.online.r3 ? hadamardRotation(cfg.headDim, rotationRng(seed, 'r3'), false) : undefined,
    r4: opts.online.r4 ? hadamardRotation(cfg.intermediateSize, rotationRng(seed, 'r4'), false) : undefined,
  };
}

/** The options QuaRot ran with on `model`, or null when it has not run. */
export function quarotOptionsOf(model: Model): QuarotOptions | null {
  const rec = model.passes.find((p) => p.name === meta.name);
  return rec ? (rec.options as unknown as QuarotOptions) : null;
}

/**
 * The rotations QuaRot applied to `model`, rebuilt from the recorded seed: dense R1 [H, H] and R2
 * [head_dim, head_dim] per layer (Float64Array, row-major; x ← x·R), plus the structured forms
 * (R3/R4 too, when online; R4 is not densified: intermediate_size² may be large).
 * @throws PassOrderError when QuaRot has not run on `model`
 */
export function rotationOf(model: Model): { r1: Float64Array; r2: Float64Array[]; rotations: QuarotRotations } {
  const opts = quarotOptionsOf(model);
  if (!opts) throw new PassOrderError('rotationOf: quarot has not run on this model');
  const rotations = quarotRotations(model.config, opts);
  return { r1: denseRotation(rotations.r1), r2: rotations.r2.map(denseRotation), rotations };
}

type VecOp = (v: Float64Array) => void;

/** x ← x·R on a contiguous vector, with a reusable scratch buffer. */
function op(R: KronRotation): VecOp {
  const tmp = new Float64Array(R.n);
  return (v) => rotateVector(R, v, tmp);
}

/** x ← x·R on each consecutive segment of length R.n (per-head rotation). */
function perSegment(R: KronRotation): VecOp {
  const f = op(R);
  return (v) => {
    for (let o = 0; o < v.length; o += R.n) f(v.subarray(o, o + R.n));
  };
}

/**
 * Lazily rotated matrix W: [rows, cols]: W ← Lᵀ·W·R, with `left` applied to each column as a row
 * vector (colᵀ ← colᵀ·L) and `right` to each row (row ← row·R); either may be null.
 */
function rotated(src: LazyTensor, left: VecOp | null, right: VecOp | null): LazyTensor {
  const [rows, cols] = src.shape;
  return derived([rows, cols], () => {
    const w = toFloat32(src.load());
    const out = new Float32Array(rows * cols);
    if (!left) {
      // row streaming: only one Float64 row at a time (embeddings, lm_head)
      const row = new Float64Array(cols);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) row[c] = w[r * cols + c];
        right?.(row);
        out.set(row, r * cols);
      }
      return out;
    }
    const full = Float64Array.from(w);
    const col = new Float64Array(rows);
    for (let c = 0; c < cols; c++) {
      for (let r = 0; r < rows; r++) col[r] = full[r * cols + c];
      left(col);
      for (let r = 0; r < rows; r++) full[r * cols + c] = col[r];
    }
    if (right) for (let r = 0; r < rows; r++) right(full.subarray(r * cols, (r + 1) * cols));
    out.set(full);
    return out;
  });
}

/** A lazily rotated vector b ← b·R (biases). */
function rotatedVector(src: LazyTensor, f: VecOp): LazyTensor {
  return derived([...src.shape], () => {
    const v = Float64Array.from(toFloat32(src.load()));
    f(v);
    return Float32Array.from(v);
  });
}

/** The online rotation record for `R` and the F32 weight holding its K×K factor (when K > 1). */
function onlineRecord(R: KronRotation, name: string, weights: Map<string, LazyTensor>): OnlineRotation {
  if (R.k === 1) return { size: R.n, k: 1, factor: null };
  const factor = `online.${name}.factor`;
  weights.set(factor, derived([R.k, R.k], () => Float32Array.from(R.qk)));
  return { size: R.n, k: R.k, factor };
}

/**
 * Rotates `model` (see the file header).
 * @param model a model after fold-norms, with float weights
 * @returns a new Model with rotated (lazy, F32) weights, `online` set when R3/R4 are enabled, and
 *   a `quarot` record {seed, online} in `passes`
 * @throws PassOrderError when fold-norms has not run, quarot already ran or a linear is already
 *   quantized; UsageError for a bad seed or a missing weight
 */
export function quarot(model: Model, opts: QuarotOptions, ctx: RunContext): Model {
  if (!Number.isInteger(opts.seed) || opts.seed < 0 || opts.seed >= 2 ** 32) throw new UsageError(`quarot: seed must be an integer in [0, 2^32), got ${opts.seed}`);
  if (!normsFolded(model)) throw new PassOrderError("pass 'quarot' requires 'fold-norms' to run before it (RMSNorm γ must be folded before rotating)");
  if (quarotOptionsOf(model) || model.online) throw new PassOrderError('quarot has already run on this model');
  if (Object.keys(model.quant.linears).length > 0) throw new PassOrderError('quarot must run before weight quantization (rtn/gptq): the model already has quantized linears');
  const cfg = model.config;
  const R = quarotRotations(cfg, opts);
  const weights = new Map(model.weights);
  const w = (name: string) => need(model, name, meta.name);
  const r1 = () => op(R.r1);
  const r2 = (l: number) => perSegment(R.r2[l]);
  const bar = ctx.progress('quarot', cfg.numLayers + 1);
  const arch = architectureOf(cfg);
  const set = (s: LinearSpec, out: VecOp | null, inp: VecOp | null, bias: VecOp | null) => {
    weights.set(`${s.name}.weight`, rotated(w(`${s.name}.weight`), out, inp));
    if (s.hasBias && bias) weights.set(`${s.name}.bias`, rotatedVector(w(`${s.name}.bias`), bias));
  };
  weights.set(arch.embedding, rotated(w(arch.embedding), null, r1()));
  for (let l = 0; l < cfg.numLayers; l++) {
    // q/k/v read the residual (R1 on inputs); v_proj's output and bias take R2 per KV head
    for (const s of arch.attentionInputs(cfg, l)) set(s, s.role === 'v_proj' ? r2(l) : null, r1(), s.role === 'v_proj' ? r2(l) : null);
    set(arch.attentionOutput(cfg, l), r1(), r2(l), r1()); // o_proj: R2 on its input, R1 on its output
    for (const s of arch.mlpInputs(cfg, l)) set(s, null, r1(), null); // gate/up read the residual
    set(arch.mlpOutput(cfg, l), r1(), R.r4 ? op(R.r4) : null, r1()); // down_proj: online R4 on its input, R1 out
    bar.tick();
  }
  const head = arch.lmHead(cfg);
  weights.set(`${head.name}.weight`, rotated(w(`${head.name}.weight`), null, r1()));
  bar.tick();
  bar.done();
  const online: OnlineRotations = {};
  if (R.r3) online.r3 = onlineRecord(R.r3, 'r3', weights);
  if (R.r4) online.r4 = onlineRecord(R.r4, 'r4', weights);
  const desc = (name: string, r: KronRotation) => `${name} ${r.n} = ${r.k}·${r.p} (${r.construction})`;
  ctx.log(`quarot: seed ${opts.seed}; ${[desc('R1', R.r1), desc('R2', R.r2[0]), R.r3 && desc('online R3', R.r3), R.r4 && desc('online R4', R.r4)].filter(Boolean).join('; ')}`);
  return {
    ...model,
    weights,
    ...(R.r3 || R.r4 ? { online } : {}),
    passes: [...model.passes, { name: meta.name, options: { seed: opts.seed, online: { ...opts.online } } }],
  };
}

/** QuaRot as a {@link Pass} (stage transform: the fp32 function is unchanged). */
export function quarotPass(options: QuarotOptions): Pass<QuarotOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'transform', options, run: async (model, ctx) => quarot(model, options, ctx) };
}
