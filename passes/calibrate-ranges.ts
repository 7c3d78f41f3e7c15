/**
 * Static A8/KV8 range calibration: runs the model as it will execute (quantized weights, float
 * activations) on calibration windows through a capture graph (src/compiler/lower.ts `capture`),
 * feeds every quantization point's activations to an observer, and returns the model with
 * `quant.activations` and `quant.kvCache` filled in, and the SQNR (dB) of every point in
 * `report.points`.
 */
import type { Model, QParams, QuantReport } from '../src/ir/model.js';
import { lowerModel } from '../src/compiler/lower.js';
import { captureName, kvPoints } from '../src/compiler/io-contract.js';
import { activationPoints } from '../src/ir/architectures.js';
import { captureWindows } from '../src/engine/capture.js';
import { windowFeeds } from '../calibration/window-feeds.js';
import { OBSERVERS, type ObserverKind, type Observer } from '../calibration/observers.js';
import type { RunContext } from '../src/core/context.js';
import type { Pass } from './pass.js';

export interface CalibrateOptions {
  observer: ObserverKind;
  /** quantize activations at linear inputs (A8) */
  activations: boolean;
  /** quantize the KV cache (KV8) */
  kvCache: boolean;
}

export const meta = { name: 'calibrate', requires: [] as string[] };

/**
 * Calibrates static ranges on `windows` (token ids, each evaluated from position 0).
 * @returns a new Model with the ranges; the input is not modified
 */
export async function calibrateRanges(model: Model, windows: readonly number[][], opts: CalibrateOptions, ctx: RunContext): Promise<Model> {
  const cfg = model.config;
  const maxLen = Math.max(...windows.map((w) => w.length));
  const g = lowerModel({ ...model, quant: { ...model.quant, activations: {}, kvCache: [] } }, {
    seqLen: 'dynamic',
    maxContext: Math.max(maxLen, 1),
    capture: true,
    name: 'calibration',
  });
  const points = activationPoints(cfg);
  const kvPts = Array.from({ length: cfg.numLayers }, (_, i) => kvPoints(i));
  const all = [...points, ...kvPts.flatMap((p) => [p.k, p.v])];
  const observers = new Map<string, Observer>(all.map((p) => [p, OBSERVERS[opts.observer]()]));
  const run = { graph: g.toModelProto(true), label: 'calibration graph', count: windows.length, feeds: (w: number) => windowFeeds(cfg, windows[w]), fetches: all.map(captureName), progress: 'calibrate' };
  await captureWindows(run, ctx, (_w, res) => {
    for (const p of all) observers.get(p)!.observe(res[captureName(p)].data as Float32Array);
  });
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

/** Static A8/KV8 range calibration as a {@link Pass} (on `ctx.windows`). */
export function calibrateRangesPass(options: CalibrateOptions): Pass<CalibrateOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'calibrate', options, run: (model, ctx) => calibrateRanges(model, ctx.windows, options, ctx) };
}
