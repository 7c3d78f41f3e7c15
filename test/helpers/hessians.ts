/** Input Hessians of capture points, from a whole-model capture graph run on calibration windows. */
import * as ort from 'onnxruntime-node';
import { HessianAccumulator } from '../../calibration/hessian.js';
import { lowerModel } from '../../src/compiler/lower.js';
import { captureName, kvCacheDims, kvNames } from '../../src/compiler/io-contract.js';
import { CheckedSession } from '../../src/engine/session.js';
import type { Model } from '../../src/ir/model.js';

/**
 * point -> H (HessianAccumulator's mean of xxᵀ over every row of every window), in the order of `points`,
 * from the capture graph of `model` (weights as they are; an empty KV cache for each window).
 */
export async function capturedHessians(model: Model, windows: number[][], points: string[]): Promise<Map<string, Float64Array>> {
  const cfg = model.config;
  const g = lowerModel(model, { seqLen: 'dynamic', maxContext: 256, capture: true, name: 'capture' });
  const session = await CheckedSession.create(g.encode(true), 'capture');
  const accs = new Map<string, HessianAccumulator>();
  for (const w of windows) {
    const feeds: Record<string, ort.Tensor> = { input_ids: new ort.Tensor('int64', BigInt64Array.from(w.map(BigInt)), [1, w.length]) };
    for (let i = 0; i < cfg.numLayers; i++)
      for (const n of [kvNames(i).pastKey, kvNames(i).pastValue]) feeds[n] = new ort.Tensor('float32', new Float32Array(0), kvCacheDims(cfg.numKvHeads, cfg.headDim, 0));
    const res = await session.run(feeds, points.map(captureName));
    for (const p of points) {
      const t = res[captureName(p)];
      if (!accs.has(p)) accs.set(p, new HessianAccumulator(t.dims[2]));
      await accs.get(p)!.addBatch(t.data as Float32Array);
    }
  }
  await session.release();
  const out = new Map<string, Float64Array>();
  for (const [p, a] of accs) {
    out.set(p, a.H);
    await a.dispose();
  }
  return out;
}
