/**
 * The values the runtime (and the LoRA calibration) feed a graph's `lora.*` inputs (src/compiler/io-contract.ts) for one
 * adapter, or for none: how one HEF switches adapters per request without reloading.
 */
import type { Model, QParams } from '../ir/model.js';
import type { ValueSpec } from '../ir/executable.js';
import { loraMatrices, loraModuleDims, type LoraAdapterData } from '../ir/lora-storage.js';
import { loraInputNames, parseLoraInput } from './io-contract.js';
import { EdgeLLMError } from '../core/errors.js';

/** A feed: dtype, data and dims of one LoRA graph input. */
export interface LoraFeed {
  type: 'float32' | 'uint8';
  data: Float32Array | Uint8Array;
  dims: number[];
}

/**
 * The values of a graph's `lora.*` inputs for adapter `a`, or for "no adapter" (`null`: zeros, which
 * add exact zeros). A module's rank is zero-padded to the graph's rank (rows of A, columns of B).
 * A and B are fed as float32, dequantized once from the stored codes (w = q·scale rounded to float32,
 * what DequantizeLinear computes): this also covers 4-bit group-wise codes, which DequantizeLinear
 * cannot express before opset 21 (the graphs are opset 17), and keeps one graph for every storage.
 * @param inputs the graph's input specs; only `lora.*` names are used
 * @returns feeds by input name: A float32 [r, in], B float32 [out, r], act_scale float32 [], act_zero_point uint8 []
 * @throws EdgeLLMError when the adapter's rank exceeds the graph's, or the graph quantizes the
 *   intermediate but the adapter has no A8 range for it
 */
export function loraFeeds(model: Pick<Model, 'config'>, a: LoraAdapterData | null, inputs: readonly ValueSpec[]): Map<string, LoraFeed> {
  const feeds = new Map<string, LoraFeed>();
  const mods = new Map((a?.modules ?? []).map((m) => [m.linear, m]));
  const byLinear = new Map<string, string[]>();
  for (const s of inputs) {
    const p = parseLoraInput(s.name);
    if (p) byLinear.set(p.linear, [...(byLinear.get(p.linear) ?? []), p.kind]);
  }
  for (const [linear, kinds] of byLinear) {
    const n = loraInputNames(linear);
    const { inFeatures, outFeatures } = loraModuleDims(model, linear);
    const spec = inputs.find((s) => s.name === n.A);
    const mod = mods.get(linear);
    // a symbolic rank takes each module's own rank, and 0 where the adapter (or "none") has no
    // module: an empty branch, which costs next to nothing; a fixed rank is zero-padded to
    const fixed = typeof spec?.shape?.[0] === 'number' ? (spec.shape[0] as number) : null;
    const r = fixed ?? (mod && a ? mod.rank : 0);
    const A = new Float32Array(r * inFeatures);
    const B = new Float32Array(outFeatures * r);
    let act: QParams = { scale: 1, zeroPoint: 0 };
    if (mod && a) {
      if (mod.rank > r) throw new EdgeLLMError(`adapter '${a.name}': ${linear} has rank ${mod.rank}, the graph was compiled for rank ${r}`);
      const mat = loraMatrices(model, a, mod);
      A.set(mat.A); // rows beyond mod.rank stay zero
      for (let o = 0; o < outFeatures; o++) B.set(mat.B.subarray(o * mod.rank, (o + 1) * mod.rank), o * r);
      if (kinds.includes('act_scale')) {
        if (!mod.act) throw new EdgeLLMError(`adapter '${a.name}': ${linear} has no A8 range for its intermediate A·x (re-add it with calibration)`);
        act = mod.act;
      }
    }
    feeds.set(n.A, { type: 'float32', data: A, dims: [r, inFeatures] });
    feeds.set(n.B, { type: 'float32', data: B, dims: [outFeatures, r] });
    if (kinds.includes('act_scale')) {
      feeds.set(n.scale, { type: 'float32', data: Float32Array.of(act.scale), dims: [] });
      feeds.set(n.zeroPoint, { type: 'uint8', data: Uint8Array.of(act.zeroPoint), dims: [] });
    }
  }
  return feeds;
}
