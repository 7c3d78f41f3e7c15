/**
 * Merging a PEFT LoRA adapter into the float base (Hu et al. 2021, §4.1: W ← W + s·B·A): one task,
 * no run-time branch. Run before weight quantization (`quantize --merge-lora`), or on an fp32 model
 * directory for the fp32 + adapter reference of `eval --lora`.
 */
import type { Model } from '../../src/ir/model.js';
import { inMemory } from '../../src/ir/model.js';
import { toFloat32 } from '../../src/ir/tensor.js';
import type { PeftAdapter } from '../../formats/peft.js';
import type { RunContext } from '../../src/core/context.js';
import { UnsupportedModelError } from '../../src/core/errors.js';
import type { Pass } from '../pass.js';
import { transformAdapter, type TransformSources } from './transform.js';

export const meta = { name: 'merge-lora', requires: [] as string[] };

/**
 * Merges a PEFT adapter into the float base: W ← W + s·B·A for every adapted linear (after carrying
 * the base's transforms into A and B, so it also applies after fold-norms/QuaRot). Run it before
 * weight quantization (GPTQ/RTN then quantize the merged weights).
 * @returns a new Model; the input is not modified
 * @throws UnsupportedModelError when an adapted linear is already weight-quantized
 */
export function mergeLora(model: Model, peft: PeftAdapter, ctx: RunContext, src: TransformSources = {}): Model {
  const { modules } = transformAdapter(peft, model, src);
  const weights = new Map(model.weights);
  for (const m of modules) {
    if (model.quant.linears[m.linear]) throw new UnsupportedModelError(`merge-lora: ${m.linear} is already quantized; merge the adapter into the fp32 base (edgellm quantize --merge-lora)`);
    const name = `${m.linear}.weight`;
    const lt = model.weights.get(name);
    if (!lt) throw new UnsupportedModelError(`merge-lora: weight '${name}' is missing from the base`);
    const W = toFloat32(lt.load());
    const out = new Float32Array(W.length);
    const { rank: r, inFeatures: K } = m;
    for (let o = 0; o < m.outFeatures; o++)
      for (let k = 0; k < K; k++) {
        let acc = 0;
        for (let j = 0; j < r; j++) acc += m.B[o * r + j] * m.A[j * K + k];
        out[o * K + k] = W[o * K + k] + m.scaling * acc;
      }
    weights.set(name, inMemory({ dtype: 'F32', shape: [m.outFeatures, K], data: out }));
  }
  ctx.log(`merge-lora: merged ${modules.length} modules of ${peft.dir}`);
  return { ...model, weights, passes: [...model.passes, { name: meta.name, options: { adapter: peft.dir, modules: modules.length } }] };
}

export interface MergeLoraOptions {
  peft: PeftAdapter;
  sources?: TransformSources;
}

/** merge-lora as a {@link Pass} (stage source: it changes the fp32 function). */
export function mergeLoraPass(options: MergeLoraOptions): Pass<MergeLoraOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'source', options, run: async (model, ctx) => mergeLora(model, options.peft, ctx, options.sources) };
}
