/**
 * Static A8/KV8 range calibration: runs the model as it will execute (quantized weights, float
 * activations) on calibration windows through a capture graph (src/compiler/lower.ts `capture`),
 * feeds every quantization point's activations to an observer, and returns the model with
 * `quant.activations` and `quant.kvCache` filled in, and the SQNR (dB) of every point in
 * `report.points`.
 */
import * as ort from 'onnxruntime-node';
import type { Model, ModelConfig, QParams, QuantReport } from '../src/ir/model.js';
import { lowerModel, captureName, kvNames, kvPoints } from '../src/compiler/lower.js';
import { activationPoints } from '../src/ir/architectures.js';
import { CheckedSession } from '../src/engine/session.js';
import { OBSERVERS, type ObserverKind, type Observer } from '../calibration/observers.js';
import type { PassContext } from '../src/core/context.js';

export interface CalibrateOptions {
  observer: ObserverKind;
  /** quantize activations at linear inputs (A8) */
  activations: boolean;
  /** quantize the KV cache (KV8) */
  kvCache: boolean;
}

export const meta = { name: 'calibrate', requires: [] as string[] };

/**
 * Feeds of a capture graph for one calibration window run from position 0: `input_ids` int64
 * [1, S] and every layer's past K/V as empty float32 [1, numKvHeads, 0, headDim].
 */
export function windowFeeds(cfg: ModelConfig, window: number[]): Record<string, ort.Tensor> {
  const feeds: Record<string, ort.Tensor> = { input_ids: new ort.Tensor('int64', BigInt64Array.from(window.map(BigInt)), [1, window.length]) };
  for (let i = 0; i < cfg.numLayers; i++) {
    const n = kvNames(i);
    feeds[n.pastKey] = new ort.Tensor('float32', new Float32Array(0), [1, cfg.numKvHeads, 0, cfg.headDim]);
    feeds[n.pastValue] = new ort.Tensor('float32', new Float32Array(0), [1, cfg.numKvHeads, 0, cfg.headDim]);
  }
  return feeds;
}

/**
 * Calibrates static ranges on `windows` (token ids, each evaluated from position 0).
 * @returns a new Model with the ranges; the input is not modified
 */
export async function calibrateRanges(model: Model, windows: number[][], opts: CalibrateOptions, ctx: PassContext): Promise<Model> {
  const cfg = model.config;
  const maxLen = Math.max(...windows.map((w) => w.length));
  const g = lowerModel({ ...model, quant: { ...model.quant, activations: {}, kvCache: [] } }, {
    seqLen: 'dynamic',
    maxContext: Math.max(maxLen, 1),
    capture: true,
    name: 'calibration',
  });
  const session = await CheckedSession.create(g.toModelProto(true), 'calibration graph');
  const points = activationPoints(cfg);
  const kvPts = Array.from({ length: cfg.numLayers }, (_, i) => kvPoints(i));
  const all = [...points, ...kvPts.flatMap((p) => [p.k, p.v])];
  const observers = new Map<string, Observer>(all.map((p) => [p, OBSERVERS[opts.observer]()]));
  const bar = ctx.progress('calibrate', windows.length);
  for (const w of windows) {
    const res = await session.run(windowFeeds(cfg, w), all.map(captureName));
    for (const p of all) observers.get(p)!.observe(res[captureName(p)].data as Float32Array);
    bar.tick();
  }
  bar.done();
  await session.release();
  const activations: Record<string, QParams> = {};
  const reportPoints: QuantReport['points'] = {};
  const qparamsOf = (point: string): QParams => {
    const obs = observers.get(point)!;
    const p = obs.qparams();
    reportPoints[point] = { sqnrDb: obs.sqnrDb(p), ...p };
    return p;
  };
  if (opts.activations) for (const p of points) activations[p] = qparamsOf(p);
  const kvCache = opts.kvCache ? kvPts.map((p) => ({ k: qparamsOf(p.k), v: qparamsOf(p.v) })) : [];
  const report: QuantReport = { linears: model.report?.linears ?? {}, points: reportPoints };
  return {
    ...model,
    report,
    quant: { ...model.quant, activations, kvCache },
    passes: [...model.passes, { name: meta.name, options: { ...opts, windows: windows.length } }],
  };
}
