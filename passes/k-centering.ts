/**
 * K-cache centering: a static per-channel offset c (per layer, [numKvHeads, headDim]) subtracted from
 * the post-RoPE K before the KV8 cache, chosen as the midrange (min + max)/2 of each channel over the
 * calibration windows.
 *
 * Why it is exact: the attention scores of one query q are q·kⱼ for every cached key kⱼ; with the
 * cache holding kⱼ − c they become q·kⱼ − q·c, the same shift for every key of that query, and a
 * softmax row is invariant to adding a constant, so the float model's output is unchanged. Why it
 * helps: post-RoPE K has channels with large offsets of their own (the low-frequency rotary channels
 * keep the pre-RoPE bias), so one per-tensor uint8 range must span all of them; after centering each
 * channel straddles 0 and the per-tensor range shrinks to the widest channel's own spread
 * (stories260K: 31-59 → 18-35 per layer). Smoothing K by its mean is the static form of the "smooth
 * K" step of SageAttention (Zhang et al. 2024, "SageAttention: Accurate 8-bit attention for
 * plug-and-play inference acceleration", §3.2), which subtracts the mean over tokens before an 8-bit
 * QKᵀ; the midrange centres the range itself, which is what a min/max-style range needs.
 *
 * Run it before `calibrateRanges` (passes/calibrate-ranges.ts): the lowering subtracts the offsets, so the
 * K observers then see K − c.
 */
import type { Model } from '../src/ir/model.js';
import { lowerModel } from '../src/compiler/lower.js';
import { captureName, kvPoints } from '../src/compiler/io-contract.js';
import { windowFeeds } from '../calibration/window-feeds.js';
import { captureWindows } from '../src/engine/capture.js';
import type { RunContext } from '../src/core/context.js';
import { UsageError } from '../src/core/errors.js';
import type { Pass } from './pass.js';

export const meta = { name: 'k-centering', requires: [] as string[] };

/**
 * Per-channel [min, max] of the post-RoPE K of every layer over `windows` (token ids, each run from
 * position 0), with the model as it runs (quantized weights, float activations, no offsets).
 * @returns per layer { min, max }, float64 [numKvHeads·headDim] each
 */
export async function kChannelRanges(model: Model, windows: readonly number[][], ctx: RunContext): Promise<{ min: Float64Array; max: Float64Array }[]> {
  const cfg = model.config;
  const { numLayers: nL, numKvHeads: nKv, headDim: hd } = cfg;
  if (windows.length === 0) throw new UsageError('k-centering: no calibration windows');
  const maxLen = Math.max(...windows.map((w) => w.length));
  const base: Model = { ...model, adapters: [], quant: { ...model.quant, activations: {}, kvCache: [], kCacheOffset: undefined } };
  const g = lowerModel(base, { seqLen: 'dynamic', maxContext: Math.max(maxLen, 1), capture: true, name: 'k-centering' });
  const ranges = Array.from({ length: nL }, () => ({ min: new Float64Array(nKv * hd).fill(Infinity), max: new Float64Array(nKv * hd).fill(-Infinity) }));
  const fetches = Array.from({ length: nL }, (_, i) => captureName(kvPoints(i).k));
  const run = { graph: g.toModelProto(true), label: 'K-centering capture graph', count: windows.length, feeds: (w: number) => windowFeeds(cfg, windows[w]), fetches, progress: 'k-centering' };
  await captureWindows(run, ctx, (w, res) => {
    const S = windows[w].length;
    for (let i = 0; i < nL; i++) {
      const k = res[fetches[i]].data as Float32Array; // [1, S, nKv, hd]
      const { min, max } = ranges[i];
      for (let h = 0; h < nKv; h++)
        for (let s = 0; s < S; s++) {
          const row = (s * nKv + h) * hd;
          for (let j = 0; j < hd; j++) {
            const v = k[row + j];
            const c = h * hd + j;
            if (v < min[c]) min[c] = v;
            if (v > max[c]) max[c] = v;
          }
        }
    }
  });
  return ranges;
}

/**
 * Sets `quant.kCacheOffset` to the per-channel midrange of the post-RoPE K on `windows` (values
 * rounded to float32, as the graph stores them).
 * @returns a new Model; the input is not modified
 * @throws UsageError with no windows
 */
export async function centerKCache(model: Model, windows: readonly number[][], ctx: RunContext): Promise<Model> {
  const ranges = await kChannelRanges(model, windows, ctx);
  const kCacheOffset = ranges.map(({ min, max }) => Array.from(min, (lo, c) => Math.fround((lo + max[c]) / 2)));
  return {
    ...model,
    quant: { ...model.quant, kCacheOffset },
    passes: [...model.passes, { name: meta.name, options: { statistic: 'midrange', windows: windows.length } }],
  };
}

/** K-cache centering as a {@link Pass} (stage calibrate: offsets measured on `ctx.windows`). */
export function kCenteringPass(): Pass<Record<string, never>> {
  return { name: meta.name, requires: meta.requires, stage: 'calibrate', options: {}, run: (model, ctx) => centerKCache(model, ctx.windows, ctx) };
}
