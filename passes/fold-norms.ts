/**
 * fold-norms: folds every RMSNorm γ into the linears that read the normalised activation, so the
 * norms become plain RMS normalisations (γ = 1) that commute with orthogonal rotations — the step
 * QuaRot needs before rotating the residual stream (the "computational invariance" of SliceGPT,
 * Ashkboos et al. 2024a, §3.1-3.2; QuaRot, Ashkboos et al. 2024b, §4).
 *
 *   (rmsnorm(x) ⊙ γ)·Wᵀ + b  =  rmsnorm(x)·(W·diag(γ))ᵀ + b
 *
 * - q/k/v_proj  ← W·diag(γ_input_layernorm)        (biases unchanged)
 * - gate/up     ← W·diag(γ_post_attention_layernorm)
 * - lm_head     ← W·diag(γ_model.norm)
 * - every γ     ← 1
 *
 * A tied lm_head is untied first: `lm_head.weight` becomes its own tensor (the embedding times
 * diag(γ_final)), the embedding table itself is left as is, and `config.tieWordEmbeddings` is set
 * false.
 *
 * Before → after:  `model.layers.0.self_attn.q_proj.weight = W` → `W·diag(γ_in)`.
 *
 * The pass is pure: it returns a Model whose changed tensors are new lazy tensors computed from the
 * input's on `load()` (nothing is materialised up front, so a large model streams), in Float64 and
 * cast back to F32.
 */
import type { LazyTensor, Model } from '../src/ir/model.js';
import { architectureOf, type LinearSpec } from '../src/ir/architectures.js';
import { toFloat32, type Tensor } from '../src/ir/tensor.js';
import { PassOrderError, ShapeMismatchError, UsageError } from '../src/core/errors.js';
import type { RunContext } from '../src/core/context.js';
import type { Pass } from './pass.js';

export type FoldNormsOptions = Record<string, never>;

export const meta = { name: 'fold-norms', requires: [] as string[] };

/** A lazy F32 tensor of `shape` computed by `make` at every `load()` (not cached: streams). */
export function derived(shape: number[], make: () => Float32Array): LazyTensor {
  return {
    dtype: 'F32',
    shape,
    load: (): Tensor => {
      const data = make();
      return { dtype: 'F32', shape, data };
    },
  };
}

/** The tensor `name` of `model`. @throws UsageError when missing (e.g. the weight is already quantized) */
export function need(model: Model, name: string, pass: string): LazyTensor {
  const t = model.weights.get(name);
  if (!t) throw new UsageError(`${pass}: weight '${name}' is missing (already quantized, or not a float checkpoint?)`);
  return t;
}

/**
 * W·diag(γ) for W: [out, in] and γ: [in], as a new lazy F32 tensor.
 * @throws ShapeMismatchError when γ's length differs from W's input width
 */
function scaleColumns(W: LazyTensor, gamma: LazyTensor, label: string): LazyTensor {
  const [out, inF] = W.shape;
  if (W.shape.length !== 2 || gamma.shape.length !== 1 || gamma.shape[0] !== inF)
    throw new ShapeMismatchError(`fold-norms: ${label}: W [${W.shape}] · diag(γ [${gamma.shape}]) needs γ of length W's input width`);
  return derived([out, inF], () => {
    const w = toFloat32(W.load());
    const g = toFloat32(gamma.load());
    const y = new Float32Array(out * inF);
    for (let o = 0; o < out; o++) for (let i = 0; i < inF; i++) y[o * inF + i] = w[o * inF + i] * g[i];
    return y;
  });
}

/** True when `model` has had its norms folded. */
export function normsFolded(model: Model): boolean {
  return model.passes.some((p) => p.name === meta.name);
}

/**
 * Folds RMSNorm γ into the following linears (see the file header).
 * @param model a float model (no weight-quantized linear yet)
 * @returns a new Model: same tensors except the folded linears (F32), γ = ones, an untied lm_head
 * @throws PassOrderError when a linear is already weight-quantized; UsageError for a missing weight;
 *   ShapeMismatchError for inconsistent shapes
 */
export function foldNorms(model: Model, opts: FoldNormsOptions, ctx: RunContext): Model {
  if (Object.keys(model.quant.linears).length > 0) throw new PassOrderError('fold-norms must run before weight quantization (rtn/gptq): the model already has quantized linears');
  if (normsFolded(model)) throw new PassOrderError('fold-norms has already run on this model');
  const cfg = model.config;
  const H = cfg.hiddenSize;
  const weights = new Map(model.weights);
  const ones = (): LazyTensor => derived([H], () => new Float32Array(H).fill(1));
  const bar = ctx.progress('fold-norms', cfg.numLayers + 1);
  const arch = architectureOf(cfg);
  const fold = (specs: LinearSpec[], gamma: LazyTensor) => {
    for (const s of specs) {
      const name = `${s.name}.weight`;
      weights.set(name, scaleColumns(need(model, name, meta.name), gamma, name));
    }
  };
  for (let l = 0; l < cfg.numLayers; l++) {
    const norms = arch.layerNorms(l);
    fold(arch.attentionInputs(cfg, l), need(model, norms.input, meta.name)); // q/k/v read rmsnorm(x)·γ_in
    fold(arch.mlpInputs(cfg, l), need(model, norms.postAttention, meta.name)); // gate/up read rmsnorm(h)·γ_post
    weights.set(norms.input, ones());
    weights.set(norms.postAttention, ones());
    bar.tick();
  }
  // lm_head: untie (a copy of the embedding) before folding the final norm into it
  const head = arch.lmHead(cfg);
  const headW = model.weights.get(`${head.name}.weight`) ?? need(model, arch.embedding, meta.name);
  weights.set(`${head.name}.weight`, scaleColumns(headW, need(model, arch.finalNorm, meta.name), `${head.name}.weight`));
  weights.set(arch.finalNorm, ones());
  bar.tick();
  bar.done();
  ctx.log(`fold-norms: folded ${2 * cfg.numLayers + 1} RMSNorm γ into their linears${cfg.tieWordEmbeddings ? ' (lm_head untied)' : ''}`);
  return {
    ...model,
    config: { ...cfg, tieWordEmbeddings: false },
    weights,
    passes: [...model.passes, { name: meta.name, options: { ...opts } }],
  };
}

/** fold-norms as a {@link Pass} (stage transform: the fp32 function is unchanged). */
export function foldNormsPass(options: FoldNormsOptions = {}): Pass<FoldNormsOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'transform', options, run: async (model, ctx) => foldNorms(model, options, ctx) };
}
