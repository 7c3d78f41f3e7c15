/**
 * RTN: round-to-nearest symmetric group-wise weight quantization of every linear (the baseline of
 * the GPTQ paper, Frantar et al. 2022, §5), 4 bits by default and 4 or 8 per linear from a recipe's
 * precision table. The grid is src/ir/quant.ts's.
 *
 *   `<linear>.weight` F32 [out, in]  ->  `<linear>.qweight` U8 [out, n_blocks, group·bits/8] + `<linear>.scales` F32 [out, n_blocks]
 *
 * The tied lm_head reads `model.embed_tokens.weight`; its quantized copy is `lm_head.*` and the
 * embedding table itself stays float (the token lookup is a gather, not a matmul).
 */
import type { Model, LazyTensor } from '../src/ir/model.js';
import { inMemory } from '../src/ir/model.js';
import { allLinears, type LinearSpec } from '../src/ir/architectures.js';
import { toFloat32 } from '../src/ir/tensor.js';
import { quantizeRtn, dequantizeWeights, blobBytes, type PackedWeights, type WeightBits } from '../src/ir/quant.js';
import type { LinearPrecision } from '../src/ir/precision.js';
import { UsageError } from '../src/core/errors.js';
import type { RunContext } from '../src/core/context.js';
import type { Pass } from './pass.js';

/** The precision options rtn and gptq share: a uniform W4 group size, the head, and per-linear exceptions. */
export interface LinearPrecisionOptions {
  /** input columns per scale (MatMulNBits block size: a power of two ≥ 16) */
  groupSize: number;
  /** also quantize lm_head */
  quantizeLmHead?: boolean;
  /** lm_head's group size (default: `groupSize`) */
  lmHeadGroupSize?: number;
  /**
   * linear name -> its precision where it differs from the uniform W4 at `groupSize` (lm_head:
   * `lmHeadGroupSize`): bits 4 or 8 at its own group size and method, or bits 32 (left float). The
   * pipeline fills it from a recipe's precision table (passes/pipeline.ts); absent: uniform W4.
   */
  linears?: Record<string, LinearPrecision>;
}

export interface RtnOptions extends LinearPrecisionOptions {
  /** also quantize lm_head (default false, as in the GPTQ reference code, which keeps the head in float) */
  quantizeLmHead: boolean;
}

export const meta = { name: 'rtn', requires: [] as string[] };

/** The float weight tensor of a linear (handles the tied lm_head). */
export function linearWeight(model: Model, spec: LinearSpec): LazyTensor {
  const name = spec.role === 'lm_head' && !model.weights.has('lm_head.weight') ? 'model.embed_tokens.weight' : `${spec.name}.weight`;
  const t = model.weights.get(name);
  if (!t) throw new UsageError(`rtn: weight '${name}' is missing (already quantized?)`);
  return t;
}

/**
 * The dequantized weight W_q float32 [out, in] of a linear quantized by rtn/gptq:
 * (q − 2^(bits−1))·scale from its `.qweight` / `.scales` at its bits (4 or 8).
 * @throws UsageError when the linear is not weight-quantized or its tensors are missing
 */
export function dequantizedWeight(model: Model, spec: LinearSpec): Float32Array {
  const q = model.quant.linears[spec.name];
  const qweight = model.weights.get(`${spec.name}.qweight`);
  const scales = model.weights.get(`${spec.name}.scales`);
  if (!q || !qweight || !scales) throw new UsageError(`${spec.name} is not a weight-quantized linear (no qweight/scales)`);
  return dequantizeWeights({
    qweight: qweight.load().data as Uint8Array,
    scales: toFloat32(scales.load()),
    outFeatures: spec.outFeatures,
    inFeatures: spec.inFeatures,
    groupSize: q.groupSize,
    bits: q.bits,
  });
}

/** Checks a group size for MatMulNBits. @throws UsageError */
export function checkGroupSize(g: number): void {
  if (!Number.isInteger(g) || g < 16 || (g & (g - 1)) !== 0) throw new UsageError(`--group-size ${g}: must be a power of two ≥ 16 (MatMulNBits block size)`);
}

/**
 * Checks the shared precision options: group sizes, and bits 4, 8 or 32 in `linears`.
 * @throws UsageError naming the pass and the linear
 */
export function checkPrecisionOptions(pass: string, opts: LinearPrecisionOptions): void {
  checkGroupSize(opts.groupSize);
  if (opts.lmHeadGroupSize !== undefined) checkGroupSize(opts.lmHeadGroupSize);
  for (const [name, p] of Object.entries(opts.linears ?? {})) {
    if (p.bits === 32) continue;
    if (p.bits !== 4 && p.bits !== 8) throw new UsageError(`${pass}: ${name}: bits ${p.bits} must be 4, 8 or 32 (float)`);
    checkGroupSize(p.groupSize);
  }
}

/**
 * The precision `spec` is quantized at: its entry in `opts.linears`, else W4 at `groupSize`
 * (lm_head: `lmHeadGroupSize`) with `method`; bits 32 when lm_head is not to be quantized.
 */
export function linearPrecision(spec: LinearSpec, opts: LinearPrecisionOptions, method: 'gptq' | 'rtn'): LinearPrecision {
  const head = spec.role === 'lm_head';
  if (head && !opts.quantizeLmHead) return { bits: 32, groupSize: 0, method: 'none' };
  return opts.linears?.[spec.name] ?? { bits: 4, groupSize: head ? (opts.lmHeadGroupSize ?? opts.groupSize) : opts.groupSize, method };
}

/**
 * Replaces a linear's float weight by its quantized tensors in `weights` (`.qweight` U8
 * [out, n_blocks, group·bits/8], `.scales` F32 [out, n_blocks], appended in that order) and records
 * it in `linears`. Both maps are the caller's copies.
 */
export function setQuantized(weights: Map<string, LazyTensor>, linears: Model['quant']['linears'], name: string, p: PackedWeights, method: 'gptq' | 'rtn'): void {
  const bits: WeightBits = p.bits ?? 4;
  const nb = p.scales.length / p.outFeatures;
  weights.delete(`${name}.weight`);
  weights.set(`${name}.qweight`, inMemory({ dtype: 'U8', shape: [p.outFeatures, nb, blobBytes(p.groupSize, bits)], data: p.qweight }));
  weights.set(`${name}.scales`, inMemory({ dtype: 'F32', shape: [p.outFeatures, nb], data: p.scales }));
  linears[name] = { bits, groupSize: p.groupSize, scheme: 'symmetric', method };
}

/**
 * Quantizes the linears selected by `opts` with RTN, each at its {@link linearPrecision} (`method`
 * in `opts.linears` is ignored: every linear is rounded to nearest; the pipeline runs the gptq pass
 * when any linear asks for GPTQ). Returns a new Model (the input is not modified).
 * @throws UsageError for a bad group size or bits
 */
export function rtn(model: Model, opts: RtnOptions, ctx: RunContext): Model {
  checkPrecisionOptions('rtn', opts);
  const weights = new Map(model.weights);
  const linears = { ...model.quant.linears };
  const specs = allLinears(model.config)
    .map((spec) => ({ spec, p: linearPrecision(spec, opts, 'rtn') }))
    .filter(({ p }) => p.bits !== 32);
  const bar = ctx.progress('rtn', specs.length);
  for (const { spec, p } of specs) {
    const W = toFloat32(linearWeight(model, spec).load());
    setQuantized(weights, linears, spec.name, quantizeRtn(W, spec.outFeatures, spec.inFeatures, p.groupSize, p.bits as WeightBits), 'rtn');
    bar.tick();
  }
  bar.done();
  return { ...model, weights, quant: { ...model.quant, linears }, passes: [...model.passes, { name: meta.name, options: { ...opts } }] };
}

/** RTN as a {@link Pass}. */
export function rtnPass(options: RtnOptions): Pass<RtnOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'quantize', options, run: async (model, ctx) => rtn(model, options, ctx) };
}
