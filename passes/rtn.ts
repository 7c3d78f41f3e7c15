/**
 * RTN: round-to-nearest 4-bit symmetric group-wise weight quantization of every linear
 * (the baseline of the GPTQ paper, Frantar et al. 2022, §5). The grid is src/ir/quant.ts's.
 *
 *   `<linear>.weight` F32 [out, in]  ->  `<linear>.qweight` U8 [out, n_blocks, group/2] + `<linear>.scales` F32 [out, n_blocks]
 *
 * The tied lm_head reads `model.embed_tokens.weight`; its quantized copy is `lm_head.*` and the
 * embedding table itself stays float (the token lookup is a gather, not a matmul).
 */
import type { Model, LazyTensor } from '../src/ir/model.js';
import { inMemory } from '../src/ir/model.js';
import { allLinears, type LinearSpec } from '../src/ir/architectures.js';
import { toFloat32 } from '../src/ir/tensor.js';
import { quantizeRtnW4, dequantizeW4 } from '../src/ir/quant.js';
import { UsageError } from '../src/core/errors.js';
import type { RunContext } from '../src/core/context.js';
import type { Pass } from './pass.js';

export interface RtnOptions {
  /** input columns per scale (MatMulNBits block size: a power of two ≥ 16) */
  groupSize: number;
  /** also quantize lm_head (default false, as in the GPTQ reference code, which keeps the head in float) */
  quantizeLmHead: boolean;
  /** lm_head's group size (default: `groupSize`) */
  lmHeadGroupSize?: number;
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
 * The dequantized W4 weight W_q float32 [out, in] of a linear quantized by rtn/gptq: (q − 8)·scale
 * from its `.qweight` / `.scales`.
 * @throws UsageError when the linear is not weight-quantized or its tensors are missing
 */
export function dequantizedWeight(model: Model, spec: LinearSpec): Float32Array {
  const q = model.quant.linears[spec.name];
  const qweight = model.weights.get(`${spec.name}.qweight`);
  const scales = model.weights.get(`${spec.name}.scales`);
  if (!q || !qweight || !scales) throw new UsageError(`${spec.name} is not a W4-quantized linear (no qweight/scales)`);
  return dequantizeW4({ qweight: qweight.load().data as Uint8Array, scales: toFloat32(scales.load()), outFeatures: spec.outFeatures, inFeatures: spec.inFeatures, groupSize: q.groupSize });
}

/** Checks a group size for MatMulNBits. @throws UsageError */
export function checkGroupSize(g: number): void {
  if (!Number.isInteger(g) || g < 16 || (g & (g - 1)) !== 0) throw new UsageError(`--group-size ${g}: must be a power of two ≥ 16 (MatMulNBits block size)`);
}

/** Quantizes the linears selected by `opts` with RTN; returns a new Model (the input is not modified). */
export function rtn(model: Model, opts: RtnOptions, ctx: RunContext): Model {
  checkGroupSize(opts.groupSize);
  const weights = new Map(model.weights);
  const linears = { ...model.quant.linears };
  const specs = allLinears(model.config).filter((s) => opts.quantizeLmHead || s.role !== 'lm_head');
  const bar = ctx.progress('rtn', specs.length);
  if (opts.lmHeadGroupSize !== undefined) checkGroupSize(opts.lmHeadGroupSize);
  for (const spec of specs) {
    const gs = spec.role === 'lm_head' ? (opts.lmHeadGroupSize ?? opts.groupSize) : opts.groupSize;
    const W = toFloat32(linearWeight(model, spec).load());
    const p = quantizeRtnW4(W, spec.outFeatures, spec.inFeatures, gs);
    const nb = p.scales.length / spec.outFeatures;
    weights.delete(`${spec.name}.weight`);
    weights.set(`${spec.name}.qweight`, inMemory({ dtype: 'U8', shape: [spec.outFeatures, nb, gs / 2], data: p.qweight }));
    weights.set(`${spec.name}.scales`, inMemory({ dtype: 'F32', shape: [spec.outFeatures, nb], data: p.scales }));
    linears[spec.name] = { bits: 4, groupSize: gs, scheme: 'symmetric', method: 'rtn' };
    bar.tick();
  }
  bar.done();
  return { ...model, weights, quant: { ...model.quant, linears }, passes: [...model.passes, { name: meta.name, options: { ...opts } }] };
}

/** RTN W4 as a {@link Pass}. */
export function rtnPass(options: RtnOptions): Pass<RtnOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'quantize', options, run: async (model, ctx) => rtn(model, options, ctx) };
}
