/**
 * The ordered pass list of `edgellm quantize`, built from options in one place (as TypeScript's
 * `getScriptTransformers` does). Order constraints are checked through each pass's `requires`.
 *
 *   HF model ─ fold-norms ─ quarot (R1, R2 [+ online R3/R4]) ─ gptq | rtn (W4) ─ calibrate (A8 + KV8) ─> HAR
 *              └──────── only with `rotate` ────────┘
 *
 * - fold-norms before quarot: R1 commutes with RMSNorm only once γ is folded into the linears.
 * - Weights are quantized after rotation (GPTQ/RTN see the rotated weights, QuaRot §4).
 * - Ranges are calibrated last, on the model as it will execute (rotated, W4 weights).
 *
 * The model after fold/rotate (fp32, the "optimized" emulation level) is returned beside the
 * quantized one so the HAR can keep it for `eval --emulate optimized`.
 */
import type { Model } from '../src/ir/model.js';
import type { RunContext } from '../src/core/context.js';
import { PassOrderError } from '../src/core/errors.js';
import { rtn, meta as rtnMeta } from './rtn.js';
import { gptqModel, meta as gptqMeta } from './gptq-sequential.js';
import { foldNorms, meta as foldMeta } from './fold-norms.js';
import { quarot, meta as quarotMeta } from './quarot.js';
import { calibrateRanges, meta as calibrateMeta } from './calibrate-ranges.js';
import { centerKCache, meta as kCenteringMeta } from './k-centering.js';
import type { ObserverKind } from '../calibration/observers.js';
import { compile } from '../src/compiler/compile.js';
import { SimulatorBackend } from '../src/runtime/simulator.js';
import { perplexity } from '../src/eval/ppl.js';

export interface QuantizeOptions {
  /** weight group size (MatMulNBits block size) */
  groupSize: number;
  /** weight quantizer: GPTQ (default) or round-to-nearest */
  method: 'gptq' | 'rtn';
  /** quantize lm_head to W4 too (default false) */
  quantizeLmHead: boolean;
  /** static 8-bit activation quantization at every linear input (default true) */
  activationQuant: boolean;
  /** static 8-bit KV-cache quantization (default true) */
  kvQuant: boolean;
  /** range observer of A8/KV8 */
  observer: ObserverKind;
  /** K-cache centering before the KV8 ranges (calibration/k-centering.ts; default true, only with kvQuant) */
  kCentering: boolean;
  /** apply fold-norms + QuaRot before quantizing */
  rotate: boolean;
  /** first QuaRot seed */
  rotationSeed: number;
  /** try this many seeds (rotationSeed, +1, …) and keep the one with the lowest calibration loss */
  rotationSeeds: number;
  /** online Hadamards emitted as graph ops */
  onlineHadamard: { r3: boolean; r4: boolean };
  /** GPTQ: damping fraction of mean(diag H) */
  percDamp: number;
  /** GPTQ: act-order with static groups */
  actOrder: boolean;
}

/**
 * The default recipe. On stories260K (TinyStories ppl, fp32 6.237): GPTQ W4 g32 + K-cache centering +
 * MSE-clipped A8/KV8 6.737, against 6.785 without K-centering, 6.832 with min/max ranges and 6.913
 * with g64 (see docs/quantization.md).
 */
export const DEFAULT_QUANTIZE_OPTIONS: QuantizeOptions = {
  groupSize: 32,
  method: 'gptq',
  quantizeLmHead: false,
  activationQuant: true,
  kvQuant: true,
  observer: 'mse',
  kCentering: true,
  rotate: false,
  rotationSeed: 0,
  rotationSeeds: 1,
  onlineHadamard: { r3: false, r4: false },
  percDamp: 0.01,
  actOrder: false,
};

/** Throws PassOrderError when a step's `requires` have not run before it. */
export function checkOrder(steps: { meta: { name: string; requires: string[] } }[], already: string[] = []): void {
  const seen = new Set(already);
  for (const s of steps) {
    for (const r of s.meta.requires) if (!seen.has(r)) throw new PassOrderError(`pass '${s.meta.name}' requires '${r}' to run before it`);
    seen.add(s.meta.name);
  }
}

export interface QuantizeResult {
  /** the quantized model (W4 + ranges) */
  quantized: Model;
  /** the fp32 model after fold-norms/QuaRot (the input itself when not rotating) */
  optimized: Model;
  /** rotation seed search: seed -> calibration NLL (nats/token) of its RTN proxy */
  seedSearch?: { seed: number; meanNll: number }[];
}

/**
 * Calibration loss of a rotation: NLL (nats/token) of the W4-RTN-quantized rotated model on
 * `windows`. A cheap proxy of the final recipe used to rank seeds; never looks at evaluation text.
 */
async function rotationLoss(rotated: Model, opts: QuantizeOptions, windows: number[][], ctx: RunContext): Promise<number> {
  const w4 = rtn(rotated, { groupSize: opts.groupSize, quantizeLmHead: opts.quantizeLmHead }, ctx);
  const backend = await SimulatorBackend.load(compile(w4, { prefillLen: Math.max(...windows.map((w) => w.length)) }));
  const r = await perplexity(backend, windows);
  await backend.dispose();
  return r.meanNll;
}

/**
 * Runs the quantization pipeline on `model` with calibration `windows` (token ids).
 * @throws PassOrderError, UsageError (bad options), FormatError (unreadable weights)
 */
export async function quantizeModel(model: Model, opts: QuantizeOptions, windows: number[][], ctx: RunContext): Promise<QuantizeResult> {
  const steps = [
    ...(opts.rotate ? [foldMeta, quarotMeta] : []),
    opts.method === 'gptq' ? gptqMeta : rtnMeta,
    ...(opts.kvQuant && opts.kCentering ? [kCenteringMeta] : []),
    ...(opts.activationQuant || opts.kvQuant ? [calibrateMeta] : []),
  ];
  checkOrder(
    steps.map((meta) => ({ meta })),
    model.passes.map((p) => p.name),
  );
  let optimized = model;
  let seedSearch: QuantizeResult['seedSearch'];
  if (opts.rotate) {
    ctx.log('pass fold-norms');
    const folded = foldNorms(model, {}, ctx);
    const rotate = (seed: number) => quarot(folded, { seed, online: opts.onlineHadamard }, ctx);
    if (opts.rotationSeeds > 1) {
      // Choose the seed on calibration loss (a subset of the calibration windows, RTN proxy).
      const probe = windows.slice(0, Math.min(windows.length, 32));
      seedSearch = [];
      const bar = ctx.progress('seeds', opts.rotationSeeds);
      for (let s = opts.rotationSeed; s < opts.rotationSeed + opts.rotationSeeds; s++) {
        seedSearch.push({ seed: s, meanNll: await rotationLoss(rotate(s), opts, probe, ctx) });
        bar.tick();
      }
      bar.done();
      const best = seedSearch.reduce((a, b) => (b.meanNll < a.meanNll ? b : a));
      ctx.log(`rotation seed ${best.seed} (calibration NLL ${best.meanNll.toFixed(4)})`);
      optimized = rotate(best.seed);
    } else {
      ctx.log('pass quarot');
      optimized = rotate(opts.rotationSeed);
    }
  }
  ctx.log(`pass ${opts.method}`);
  let q: Model;
  if (opts.method === 'gptq') {
    q = await gptqModel(
      optimized,
      windows,
      { groupSize: opts.groupSize, quantizeLmHead: opts.quantizeLmHead, percDamp: opts.percDamp, actOrder: opts.actOrder },
      ctx,
    );
  } else q = rtn(optimized, { groupSize: opts.groupSize, quantizeLmHead: opts.quantizeLmHead }, ctx);
  if (opts.kvQuant && opts.kCentering) {
    ctx.log('pass k-centering');
    q = await centerKCache(q, windows, ctx);
  }
  if (opts.activationQuant || opts.kvQuant) {
    ctx.log('pass calibrate');
    q = await calibrateRanges(q, windows, { observer: opts.observer, activations: opts.activationQuant, kvCache: opts.kvQuant }, ctx);
  }
  return { quantized: q, optimized, seedSearch };
}
