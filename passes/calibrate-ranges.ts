/**
 * Static activation and KV-cache range calibration: runs the model as it will execute (quantized
 * weights, float activations) on calibration windows through a capture graph (src/compiler/lower.ts
 * `capture`), feeds every quantization point's activations to an observer, and returns the model
 * with `quant.activations` and `quant.kvCache` filled in, and the SQNR (dB) of every point in
 * `report.points`.
 *
 * Widths: uniform A8/KV8 from the flags (`activations`, `kvCache`, one `observer`), or per point from
 * a recipe's precision table (`precision`, src/ir/precision.ts): an activation point at 8 bits gets
 * uint8 parameters, at 16 bits uint16 ones (scale = range/65535, zero point in [0, 65535], stored with
 * `bits: 16`; src/ir/quant.ts asymmetricQParams), at 32 bits (float) none; every point is observed
 * with its own observer. KV caches likewise, layer by layer (K and V of a layer at one width): KV8
 * uint8 ranges, KV16 uint16 ones (`bits: 16`), a float layer a null entry; no entry at all when every
 * layer is float (src/ir/kv-quant.ts states the layout of `quant.kvCache`).
 *
 *   precision.activations['model.layers.1.down_proj_in'] = {bits: 16, observer: 'mse'}
 *     → quant.activations['model.layers.1.down_proj_in'] = {scale: 1.56e-4, zeroPoint: 31843, bits: 16}
 *   precision.activations['lm_head_in'] = {bits: 32, …}  → no entry (no QDQ at lm_head's input)
 *   precision.kvCache[0] = {k: {bits: 16, …}, v: {bits: 16, …}}  → quant.kvCache[0] = {k: {…, bits: 16}, v: {…, bits: 16}}
 *   precision.kvCache[1] = {k: {bits: 32, …}, v: {bits: 32, …}}  → quant.kvCache[1] = null (other layers quantized)
 */
import type { Model, QParams, QuantReport } from '../src/ir/model.js';
import type { PointPrecision, PrecisionTable } from '../src/ir/precision.js';
import { lowerModel } from '../src/compiler/lower.js';
import { captureName, kvPoints } from '../src/compiler/io-contract.js';
import { activationPoints } from '../src/ir/architectures.js';
import { UsageError } from '../src/core/errors.js';
import { storedKvRanges, type KvRangeEntry } from '../src/ir/kv-quant.js';
import { captureWindows } from '../src/engine/capture.js';
import { windowFeeds } from '../calibration/window-feeds.js';
import { OBSERVERS, type ObserverKind, type Observer } from '../calibration/observers.js';
import type { RunContext } from '../src/core/context.js';
import type { Pass } from './pass.js';

export interface CalibrateOptions {
  /** range observer of every point (without `precision`) */
  observer: ObserverKind;
  /** quantize activations at linear inputs (A8; without `precision`) */
  activations: boolean;
  /** quantize the KV cache (KV8; without `precision`) */
  kvCache: boolean;
  /**
   * per-point widths and observers (a recipe's resolved table, passes/pipeline.ts withPrecision):
   * when given it decides every point and the three fields above are not read; it is not recorded
   * in the pass's options (the manifest's `precision` holds it)
   */
  precision?: Pick<PrecisionTable, 'activations' | 'kvCache'>;
}

export const meta = { name: 'calibrate', requires: [] as string[] };

/** Every point's precision: from the table, or uniform from the flags (8-bit where quantized, else float). */
function pointPrecisions(model: Model, opts: CalibrateOptions): { act: Map<string, PointPrecision>; kv: { k: PointPrecision; v: PointPrecision }[] } {
  const cfg = model.config;
  const uniform = (on: boolean): PointPrecision => ({ bits: on ? 8 : 32, observer: opts.observer });
  const t = opts.precision;
  const act = new Map(activationPoints(cfg).map((p): [string, PointPrecision] => [p, t ? t.activations[p] : uniform(opts.activations)]));
  const kv = Array.from({ length: cfg.numLayers }, (_, i) => (t ? t.kvCache[i] : { k: uniform(opts.kvCache), v: uniform(opts.kvCache) }));
  for (const [p, pp] of act) if (!pp) throw new UsageError(`calibrate: the precision table has no entry for activation point '${p}'`);
  kv.forEach((l, i) => {
    if (!l?.k || !l.v) throw new UsageError(`calibrate: the precision table has no KV-cache entry for layer ${i}`);
    if (l.k.bits !== l.v.bits) throw new UsageError(`calibrate: layer ${i}'s K cache is ${l.k.bits}-bit and its V cache ${l.v.bits}-bit (a layer's cache has one width)`);
  });
  return { act, kv };
}

/**
 * Calibrates static ranges on `windows` (token ids, each evaluated from position 0).
 * @returns a new Model with the ranges (`quant.activations`: QParams of every quantized activation
 *   point, with `bits: 16` for uint16 ones; `quant.kvCache`: per layer a K/V pair, `bits: 16` for
 *   KV16, or null for a float layer; empty when every layer's cache is float) and `report.points`;
 *   the input is not modified
 * @throws UsageError when `opts.precision` lacks an activation point or a layer's KV entry, or gives
 *   a layer's K and V caches different widths
 */
export async function calibrateRanges(model: Model, windows: readonly number[][], opts: CalibrateOptions, ctx: RunContext): Promise<Model> {
  const cfg = model.config;
  const { act, kv } = pointPrecisions(model, opts);
  const maxLen = Math.max(...windows.map((w) => w.length));
  const g = lowerModel({ ...model, quant: { ...model.quant, activations: {}, kvCache: [] } }, {
    seqLen: 'dynamic',
    maxContext: Math.max(maxLen, 1),
    capture: true,
    name: 'calibration',
  });
  const kvPts = Array.from({ length: cfg.numLayers }, (_, i) => kvPoints(i));
  const precisions = new Map<string, PointPrecision>([...act, ...kvPts.flatMap((p, i): [string, PointPrecision][] => [[p.k, kv[i].k], [p.v, kv[i].v]])]);
  const all = [...precisions.keys()].filter((p) => precisions.get(p)!.bits !== 32); // float points get no range: not captured
  const observers = new Map<string, Observer>(all.map((p) => [p, OBSERVERS[precisions.get(p)!.observer](precisions.get(p)!.bits === 16 ? 16 : 8)]));
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
  for (const [p, pp] of act) if (pp.bits !== 32) activations[p] = qparamsOf(p);
  const anyKv = kv.some((l) => l.k.bits !== 32);
  const kvCache = anyKv ? storedKvRanges(kvPts.map((p, i): KvRangeEntry => (kv[i].k.bits === 32 ? null : { k: qparamsOf(p.k), v: qparamsOf(p.v) }))) : [];
  const report: QuantReport = { linears: model.report?.linears ?? {}, points: reportPoints };
  const { precision: _table, ...recorded } = opts;
  return {
    ...model,
    report,
    quant: { ...model.quant, activations, kvCache },
    passes: [...model.passes, { name: meta.name, options: { ...recorded, windows: windows.length } }],
  };
}

/** Static range calibration as a {@link Pass} (on `ctx.windows`). */
export function calibrateRangesPass(options: CalibrateOptions): Pass<CalibrateOptions> {
  return { name: meta.name, requires: meta.requires, stage: 'calibrate', options, run: (model, ctx) => calibrateRanges(model, ctx.windows, options, ctx) };
}
