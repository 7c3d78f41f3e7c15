/**
 * The ordered pass list of `edgellm quantize`, built from options in one place (as TypeScript's
 * `getScriptTransformers` does). Order constraints are checked through each pass's `requires`.
 *
 *   HF model ─ rtn (W4 group-wise) ─ calibrate (static A8 + KV8 ranges on the W4 model) ─> HAR
 *
 * Calibration runs after weight quantization so the ranges describe the model as it will execute.
 */
import type { Model } from './ir/model.js';
import type { PassContext } from './pipeline-context.js';
import { PassOrderError } from './errors.js';
import { rtn, meta as rtnMeta } from '../passes/rtn.js';
import { calibrateRanges, meta as calibrateMeta } from '../calibration/capture.js';
import type { ObserverKind } from '../calibration/observers.js';

export interface QuantizeOptions {
  /** weight group size (MatMulNBits block size), default 64 */
  groupSize: number;
  /** quantize lm_head to W4 too (default false) */
  quantizeLmHead: boolean;
  /** static 8-bit activation quantization at every linear input (default true) */
  activationQuant: boolean;
  /** static 8-bit KV-cache quantization (default true) */
  kvQuant: boolean;
  observer: ObserverKind;
}

export const DEFAULT_QUANTIZE_OPTIONS: QuantizeOptions = {
  groupSize: 64,
  quantizeLmHead: false,
  activationQuant: true,
  kvQuant: true,
  observer: 'minmax',
};

interface Step {
  meta: { name: string; requires: string[] };
  run: (m: Model) => Model | Promise<Model>;
}

/** Throws PassOrderError when a step's `requires` have not run before it. */
export function checkOrder(steps: { meta: { name: string; requires: string[] } }[], already: string[] = []): void {
  const seen = new Set(already);
  for (const s of steps) {
    for (const r of s.meta.requires) if (!seen.has(r)) throw new PassOrderError(`pass '${s.meta.name}' requires '${r}' to run before it`);
    seen.add(s.meta.name);
  }
}

/**
 * Runs the quantization pipeline on `model` with calibration `windows` (token ids).
 * @throws PassOrderError, UsageError (bad options), FormatError (unreadable weights)
 */
export async function quantizeModel(model: Model, opts: QuantizeOptions, windows: number[][], ctx: PassContext): Promise<Model> {
  const steps: Step[] = [
    { meta: rtnMeta, run: (m) => rtn(m, { groupSize: opts.groupSize, quantizeLmHead: opts.quantizeLmHead }, ctx) },
  ];
  // Ranges last: they must see the weights as quantized.
  if (opts.activationQuant || opts.kvQuant)
    steps.push({
      meta: calibrateMeta,
      run: (m) => calibrateRanges(m, windows, { observer: opts.observer, activations: opts.activationQuant, kvCache: opts.kvQuant }, ctx),
    });
  checkOrder(steps, model.passes.map((p) => p.name));
  let m = model;
  for (const s of steps) {
    ctx.log(`pass ${s.meta.name}`);
    m = await s.run(m);
  }
  return m;
}
